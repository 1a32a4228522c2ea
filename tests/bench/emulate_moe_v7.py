"""MoE decode v7's arithmetic emulated on the CPU (exploration, not evidence): the inputs as the
kernel stages them (16-bit codes per 32-value group, csrc/moe.cu stage_codes) and the products
in exact integers (group_dot), against the fp64 products on the unquantized inputs, at the
shapes of tests/ops/test_moe.py::test_decode_v7_matches_v3 with the test's weights (tests/ops/_util.py
moe_layer) and fp16 inputs. Prints the NMSE of gate, up, act (gpt-oss's clamped SwiGLU) and of the
down product, against nmse_moe_v7_vs_v3.

    python tests/bench/emulate_moe_v7.py
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpt_engine import quants  # noqa: E402
from tests.ops._util import moe_layer  # noqa: E402
from tests.tolerances import tol  # noqa: E402


def codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [n] (n % 32 == 0) float32 -> (d per group, q int per value): stage_codes' formula, the
    packed GEMV's quantize8_v3 (csrc/quant_blocks.cuh) in fp32: amax = mant 2^e (frexp), q =
    rint(RN(x RN(32767 / mant) 2^-e)), d = RN(mant / 32767) 2^e."""
    g = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(g).max(axis=1).astype(np.float32)
    mant, e = np.frexp(amax)  # mant in [0.5, 1) for finite nonzero amax, 0 for 0
    mant = mant.astype(np.float32)
    inv = np.where(mant > 0, np.float32(32767) / np.where(mant > 0, mant, 1), 0).astype(np.float32)
    c = np.ldexp(inv, -e).astype(np.float32)  # exact: a power-of-two scaling of a normal float
    q = np.rint((g * c[:, None]).astype(np.float32)).astype(np.int64)  # rint: ties to even
    assert np.abs(q).max() <= 32767
    d = np.ldexp((mant / np.float32(32767)).astype(np.float32), e).astype(np.float32)
    return d, q


def int_products(w: np.ndarray, d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """rows of w [N, K] (exact dequantized MXFP4 values, fp64) dotted with the codes: per group the
    exact integer sum of doubled E2M1 values times q, times the block scale, times d (fp64 here:
    the kernel's fp32 steps add ~1e-14, far below the codes' error)."""
    n = w.shape[0]
    wg = w.reshape(n, -1, 32)
    return np.einsum("ngk,gk->ng", wg, q.astype(np.float64)) @ d.astype(np.float64)


def swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    g = np.minimum(g, 7.0)
    u = np.clip(u, -7.0, 7.0)
    return g / (1 + np.exp(-1.702 * g)) * (u + 1)


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(((a - ref) ** 2).sum() / (ref ** 2).sum())


def main() -> None:
    torch.manual_seed(0)
    bound = tol("nmse_moe_v7_vs_v3")
    for e, c, f in ((4, 64, 64), (32, 96, 160), (32, 160, 96), (32, 2880, 2880)):
        L = moe_layer(e, 4, c, f, torch.float16, "cpu")
        x = torch.randn(c).half().float().numpy()
        ex = 0  # one expert: the statistics are per product
        def deq(raw: torch.Tensor, rows: int) -> np.ndarray:  # expert ex's rows, exact values
            return quants.dequantize(raw[ex * rows:(ex + 1) * rows], quants.Q.MXFP4).double().numpy()
        wg, wu, wd = deq(L.gate.weight.raw, f), deq(L.up.weight.raw, f), deq(L.down.weight.raw, c)
        bg, bu = L.gate.bias[ex].double().numpy(), L.up.bias[ex].double().numpy()
        g64, u64 = wg @ x + bg, wu @ x + bu
        d, q = codes(x)
        gi, ui = int_products(wg, d, q) + bg, int_products(wu, d, q) + bu
        a64, ai = swiglu(g64, u64), swiglu(gi, ui)
        a32 = a64.astype(np.float32)
        dd, dq = codes(a32)
        y64, yi = wd @ a32.astype(np.float64), int_products(wd, dd, dq)
        print(f"E={e} C={c} F={f}: NMSE gate {nmse(gi, g64):.2e} up {nmse(ui, u64):.2e} act {nmse(ai, a64):.2e} "
              f"down {nmse(yi, y64):.2e} (bound {bound:.0e})")


if __name__ == "__main__":
    main()
