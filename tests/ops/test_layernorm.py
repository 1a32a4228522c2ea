"""LayerNorm (GT-009 mean, GT-010 variance/normalise, GT-011 tests): kernel and reference vs float64."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import layernorm_module as mod

from ._bench import free, gbps, mark, nbytes
from ._util import DEVICES, DTYPES, TOL_NAME, assert_nmse, f64, randn

# odd and even widths; GPT-2 sizes (768, 1600); > 8192 for the block-per-row and looping paths
SHAPES = [(1, 1), (3, 7), (5, 768), (4, 1023), (2, 1024), (3, 1600), (2, 4097), (2, 8192), (1, 8200), (2, 3, 96),
          (1, 12289), (1, 40000)]


@pytest.mark.story("GT-009", "GT-010", "GT-011")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layernorm_vs_float64(device, dtype, shape):
    c = shape[-1]
    x = randn(shape, dtype, device, scale=2.0, offset=0.5)
    w, b = randn((c,), dtype, device), randn((c,), dtype, device)
    out = ops.layernorm(x, w, b, 1e-5)
    assert out.dtype == dtype and out.shape == x.shape and out.device.type == device
    assert_nmse(out, mod.reference(*f64(x, w, b), 1e-5), TOL_NAME[dtype])


@pytest.mark.story("GT-009", "GT-011")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,scale,offset", [(torch.float32, 1.0, 1e4), (torch.float16, 1e3, 0.0),
                                                (torch.bfloat16, 1e4, 3e4), (torch.float32, 1e-4, 0.0)], ids=str)
def test_layernorm_extreme_values(device, dtype, scale, offset):
    """Large offsets (mean subtraction must not cancel), large and tiny magnitudes."""
    x = randn((4, 2048), dtype, device, scale=scale, offset=offset)
    w, b = randn((2048,), dtype, device), randn((2048,), dtype, device)
    out = ops.layernorm(x, w, b, 1e-12 if scale < 1 else 1e-5)
    assert_nmse(out, mod.reference(*f64(x, w, b), 1e-12 if scale < 1 else 1e-5), TOL_NAME[dtype])


@pytest.mark.story("GT-010")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_variance_rows_stay_finite(device, dtype):
    """A constant row normalises to 0, so the output is exactly the bias."""
    x = torch.full((3, 770), 7.25, dtype=dtype, device=device)
    w, b = randn((770,), dtype, device), randn((770,), dtype, device)
    out = ops.layernorm(x, w, b, 1e-5)
    assert torch.isfinite(out).all()
    assert torch.equal(out, b.expand_as(out))


@pytest.mark.story("GT-009", "GT-010")
@pytest.mark.parametrize("shape", [(3, 7), (4, 768)], ids=str)
def test_reference_matches_torch_layer_norm(shape):
    """The oracle itself against torch's independent implementation, in float64."""
    x = torch.randn(shape, dtype=torch.float64)
    w, b = torch.randn(shape[-1], dtype=torch.float64), torch.randn(shape[-1], dtype=torch.float64)
    assert_nmse(mod.reference(x, w, b, 1e-5), F.layer_norm(x, (shape[-1],), w, b, 1e-5), "nmse_float64_same_math")


@pytest.mark.story("GT-011")
@pytest.mark.parametrize("device", DEVICES)
def test_layernorm_bad_inputs(device):
    x = torch.randn(2, 8, device=device)
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    with pytest.raises(ops.OpError, match="weight has shape"):
        ops.layernorm(x, w[:4], b, 1e-5)
    with pytest.raises(ops.OpError, match="bias has dtype"):
        ops.layernorm(x, w, b.half(), 1e-5)
    with pytest.raises(ops.OpError, match="dtype torch.int64"):
        ops.layernorm(x.long(), w, b, 1e-5)
    with pytest.raises(ops.OpError, match="eps"):
        ops.layernorm(x, w, b, 0.0)


@mark("GT-011", "GT-009")
def test_layernorm_bandwidth(bench):
    """262144 x 1024 fp16 (512 MiB in, 512 MiB out; sizes: tests/ops/_bench.py): ours vs
    F.layer_norm, same byte count."""
    n, c = 262144, 1024
    x = torch.randn(n, c, device="cuda", dtype=torch.float16)
    w, b = torch.randn(c, device="cuda", dtype=torch.float16), torch.randn(c, device="cuda", dtype=torch.float16)
    moved = nbytes(x) * 2 + nbytes(w, b)
    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t, t_torch = bench.cuda_time_pair(lambda: ops.layernorm(x, w, b, 1e-5),
                                      lambda: F.layer_norm(x, (c,), w, b, 1e-5))
    bench.record("layernorm.fp16", gbps(moved, t), "GB/s", kind="bandwidth",
                 references={"torch": gbps(moved, t_torch)}, params={"rows": n, "cols": c, "bytes": moved,
                                                                     "time_s": t, "torch_time_s": t_torch})
    free()
