"""Residual add (GT-015) vs float64."""
import pytest
import torch

from gpt_engine import ops

from ._bench import free, gbps, mark, nbytes
from ._util import DEVICES, DTYPES, TOL_NAME, assert_nmse, f64, randn

SHAPES = [(1,), (7,), (3, 768), (5, 1023), (2, 3, 4097), (1 << 20,), ((1 << 20) + 3,)]


@pytest.mark.story("GT-015")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_residual_add_vs_float64(device, dtype, shape):
    x, y = randn(shape, dtype, device), randn(shape, dtype, device, 2.0)
    while not (x.double() + y.double()).any():  # x = -y exactly: at (1,) about 1 draw in 1,400 in bf16,
        y = randn(shape, dtype, device, 2.0)     # and the NMSE of an all-zero sum is undefined
    out = ops.residual_add(x, y)
    assert out.dtype == dtype and out.shape == x.shape
    assert_nmse(out, f64(x) + f64(y), TOL_NAME[dtype])


@pytest.mark.story("GT-015")
@pytest.mark.parametrize("device", DEVICES)
def test_residual_add_unaligned_view(device):
    """A view starting one element in: the kernel must take its unvectorised path."""
    base = randn((4097,), torch.float16, device)
    x, y = base[1:], randn((4096,), torch.float16, device)
    assert_nmse(ops.residual_add(x, y), f64(x) + f64(y), "nmse_fp16")


@pytest.mark.story("GT-015")
@pytest.mark.parametrize("device", DEVICES)
def test_residual_add_bad_inputs(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(ops.OpError, match="y has shape"):
        ops.residual_add(x, x.T)
    with pytest.raises(ops.OpError, match="y has dtype"):
        ops.residual_add(x, x.double())


@mark("GT-015")
def test_residual_add_bandwidth(bench):
    """2^28 fp16 elements per tensor (512 MiB each, 1.5 GiB moved; sizes: tests/ops/_bench.py)
    vs torch's x + y."""
    n = 1 << 28
    x, y = (torch.randn(n, device="cuda", dtype=torch.float16) for _ in range(2))
    moved = nbytes(x) * 3
    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t, t_torch = bench.cuda_time_pair(lambda: ops.residual_add(x, y), lambda: x + y)
    bench.record("residual_add.fp16", gbps(moved, t), "GB/s", kind="bandwidth",
                 references={"torch": gbps(moved, t_torch)}, params={"n": n, "bytes": moved, "time_s": t,
                                                                     "torch_time_s": t_torch})
    free()
