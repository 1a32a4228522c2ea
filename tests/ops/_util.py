"""Helpers of the ops tests: devices, dtypes, NMSE against float64 references."""
import pytest
import torch

from gpt_engine import ops
from tests.tolerances import tol

HAS_CUDA = torch.cuda.is_available() and ops.cuda_kernels_available()

CUDA = pytest.param("cuda", id="cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")])
CPU = pytest.param("cpu", id="cpu")
DEVICES = [CPU, CUDA]


def device_cases(cases, cpu=lambda case: True, ids=str):
    """(device, case) parameters for every device of DEVICES, the CPU getting only the cases
    `cpu` accepts: a case the CPU does not run is not generated at all (a skip is not a pass).
    Use with @pytest.mark.parametrize("device,<case>", device_cases(...))."""
    out = []
    for d in DEVICES:
        dev = d.values[0]
        out += [pytest.param(dev, c, marks=d.marks, id=f"{dev}-{ids(c)}") for c in cases if dev != "cpu" or cpu(c)]
    return out
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL_NAME = {torch.float32: "nmse_fp32", torch.float64: "nmse_fp32", torch.float16: "nmse_fp16",
            torch.bfloat16: "nmse_bf16"}


def nmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """sum((a - b)^2) / sum(b^2) in float64 on the CPU."""
    a = out.detach().to("cpu", torch.float64)
    b = ref.detach().to("cpu", torch.float64)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    den = float((b * b).sum())
    assert den > 0, "reference is all zeros: the test input is degenerate"
    return float(((a - b) ** 2).sum()) / den


def assert_nmse(out: torch.Tensor, ref: torch.Tensor, tol_name: str, what: str = "output") -> float:
    assert torch.isfinite(out).all(), f"{what}: {int((~torch.isfinite(out)).sum())} non-finite elements (NaN = unwritten)"
    err = nmse(out, ref)
    bound = tol(tol_name)
    assert err <= bound, f"{what}: NMSE {err:.3e} > {tol_name} = {bound:.1e}"
    return err


def f64(*ts):
    """CPU float64 copies: the oracle's inputs are the test inputs exactly as rounded."""
    out = tuple(t.detach().to("cpu", torch.float64) if t.is_floating_point() else t.detach().cpu() for t in ts)
    return out if len(out) > 1 else out[0]


def randn(shape, dtype, device, scale=1.0, offset=0.0):
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale + offset).to(dtype)


def mxfp4_rows(rows: int, cols: int, device) -> torch.Tensor:
    """Random MXFP4 bytes [rows, cols/32*17]: any nibbles, E8M0 scale bytes spread over three
    binades around the one that makes a row's dot product with unit-variance input of order
    one (|value| averages 4.5 x 2^(e - 128) after ggml's table doubling), so fp16 outputs of
    wide layers stay far from overflow."""
    import math
    e0 = 128 - round(math.log2(4.5 * math.sqrt(cols)))
    raw = torch.randint(0, 256, (rows, cols // 32, 17), dtype=torch.uint8)
    raw[..., 0] = torch.randint(e0 - 2, e0 + 1, (rows, cols // 32), dtype=torch.uint8)
    return raw.reshape(rows, cols // 32 * 17).to(device)
