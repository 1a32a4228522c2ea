"""GELU kernel (GT-012) and its tests (GT-013): tanh and erf forms vs float64."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import gelu_module as mod

from ._bench import free, gbps, mark, nbytes
from ._util import DEVICES, DTYPES, TOL_NAME, assert_nmse, f64, randn

SHAPES = [(1,), (7,), (3, 3072), (5, 1023), (2, 3, 4099), ((1 << 20) + 5,)]


@pytest.mark.story("GT-012", "GT-013")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gelu_vs_float64(device, approximate, dtype, shape):
    # Inputs below -4 are clamped: there |GELU| < 1.3e-4 falls into fp16 subnormals, where even a
    # correctly rounded result is off by up to 50%, and on a one-element tensor NMSE would read
    # that rounding as a kernel error (seen: NMSE 1.0 at shape (1,)). The tails are checked
    # value by value in test_gelu_extremes.
    x = randn(shape, dtype, device, scale=3.0).clamp(min=-4.0)
    out = ops.gelu(x, approximate)
    assert out.dtype == dtype and out.shape == x.shape
    # oracle: the float64 reference (its cancellation-free form is exact where F.gelu's tanh
    # form rounds 1 + tanh(u) to 0 even in float64; both agree elsewhere, see the test below)
    assert_nmse(out, mod.reference(f64(x), approximate), TOL_NAME[dtype])


@pytest.mark.story("GT-013")
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_reference_matches_torch_gelu(approximate):
    x = torch.randn(1000, dtype=torch.float64) * 4
    assert torch.allclose(mod.reference(x, approximate), F.gelu(x, approximate=approximate), rtol=1e-13, atol=1e-13)
    # in the far negative tail, where F.gelu's 1 + tanh(u) cancels, the reference keeps the
    # correct sign and magnitude (tiny negative values, not 0)
    tail = mod.reference(torch.tensor([-9.0, -12.0], dtype=torch.float64), approximate)
    assert (tail < 0).all() and (tail > -1e-15).all()


@pytest.mark.story("GT-013")
@pytest.mark.parametrize("device", DEVICES)
def test_gelu_extremes(device):
    """Saturated tails: gelu(x) -> x for large x, -> 0 for very negative x, finite everywhere."""
    x = torch.tensor([-60000.0, -30.0, -8.0, 0.0, 8.0, 30.0, 60000.0], device=device, dtype=torch.float16)
    for approximate in ("tanh", "none"):
        out = ops.gelu(x, approximate).float().cpu()
        assert torch.isfinite(out).all()
        assert out[-1] == 60000.0 and out[-2] == 30.0 and out[0] == 0.0 and out[3] == 0.0


@pytest.mark.story("GT-012")
def test_gelu_bad_approximate():
    with pytest.raises(ops.OpError, match="approximate"):
        ops.gelu(torch.randn(4), "sigmoid")


@mark("GT-013", "GT-012")
@pytest.mark.parametrize("approximate,name", [("tanh", "gelu_tanh.fp16"), ("none", "gelu_erf.fp16")])
def test_gelu_bandwidth(bench, approximate, name):
    """2^28 fp16 elements (512 MiB in, 512 MiB out; sizes: tests/ops/_bench.py) vs F.gelu."""
    n = 1 << 28
    x = torch.randn(n, device="cuda", dtype=torch.float16) * 3
    moved = nbytes(x) * 2
    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t, t_torch = bench.cuda_time_pair(lambda: ops.gelu(x, approximate),
                                      lambda: F.gelu(x, approximate=approximate))
    bench.record(name, gbps(moved, t), "GB/s", kind="bandwidth", references={"torch": gbps(moved, t_torch)},
                 params={"n": n, "bytes": moved, "time_s": t, "torch_time_s": t_torch})
    free()
