"""Fused residual add + LayerNorm (GT-015, GT-011) vs the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import add_layernorm_module as mod

from ._bench import free, gbps, mark, nbytes
from ._util import DEVICES, DTYPES, TOL_NAME, assert_nmse, f64, randn

SHAPES = [(1, 1), (3, 7), (5, 768), (4, 1023), (3, 1600), (2, 4097), (1, 8192), (2, 2, 96), (1, 12289)]


@pytest.mark.story("GT-015", "GT-011")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_layernorm_vs_float64(device, dtype, shape):
    c = shape[-1]
    x, r = randn(shape, dtype, device, 2.0), randn(shape, dtype, device, 3.0, 1.0)
    while not (x.double() + r.double()).any():  # x = -r exactly: at (1, 1) about 1 draw in 1,250 in
        r = randn(shape, dtype, device, 3.0, 1.0)  # bf16, and the NMSE of an all-zero sum is undefined
    w, b = randn((c,), dtype, device), randn((c,), dtype, device)
    h, y = ops.add_layernorm(x, r, w, b, 1e-5)
    # oracle: the sum in float64, rounded to the dtype as the engine's residual stream is, then LN in float64
    h_ref = (f64(x) + f64(r)).to(dtype)
    assert_nmse(h, f64(h_ref), TOL_NAME[dtype], "h")
    y_ref = F.layer_norm(f64(h_ref), (c,), *f64(w, b), 1e-5)
    assert_nmse(y, y_ref, TOL_NAME[dtype], "layernorm(h)")


@pytest.mark.story("GT-015")
def test_add_layernorm_reference_is_add_then_layernorm():
    x, r = torch.randn(3, 64, dtype=torch.float64), torch.randn(3, 64, dtype=torch.float64)
    w, b = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    h, y = mod.reference(x, r, w, b, 1e-5)
    assert torch.equal(h, x + r)
    assert_nmse(y, F.layer_norm(x + r, (64,), w, b, 1e-5), "nmse_float64_same_math")


@pytest.mark.story("GT-015")
@pytest.mark.parametrize("device", DEVICES)
def test_add_layernorm_bad_inputs(device):
    x = torch.randn(2, 8, device=device)
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    with pytest.raises(ops.OpError, match="residual has shape"):
        ops.add_layernorm(x, x[:1], w, b, 1e-5)
    with pytest.raises(ops.OpError, match="residual has dtype"):
        ops.add_layernorm(x, x.half(), w, b, 1e-5)


@mark("GT-015", "GT-011")
def test_add_layernorm_bandwidth(bench):
    """262144 x 1024 fp16: read x and residual, write h and y (4 x 512 MiB; sizes:
    tests/ops/_bench.py); torch: x + r, F.layer_norm."""
    n, c = 262144, 1024
    x, r = (torch.randn(n, c, device="cuda", dtype=torch.float16) for _ in range(2))
    w, b = torch.randn(c, device="cuda", dtype=torch.float16), torch.randn(c, device="cuda", dtype=torch.float16)
    moved = nbytes(x) * 4 + nbytes(w, b)

    def torch_ref():
        h = x + r
        return h, F.layer_norm(h, (c,), w, b, 1e-5)

    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t, t_torch = bench.cuda_time_pair(lambda: ops.add_layernorm(x, r, w, b, 1e-5), torch_ref)
    bench.record("add_layernorm.fp16", gbps(moved, t), "GB/s", kind="bandwidth",
                 references={"torch": gbps(moved, t_torch)}, params={"rows": n, "cols": c, "bytes": moved,
                                                                     "time_s": t, "torch_time_s": t_torch})
    free()
