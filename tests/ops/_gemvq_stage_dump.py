"""Outputs of the packed GEMV (csrc/linear_q_impl.cuh) on a fixed set of inputs, for comparing
its two activation stagings bit for bit: test_linear_q_stage.py runs this module twice, with
GPTE_AB_GEMVQ_STAGE=2 (v2) and without (v3), and compares the files.

    python -m tests.ops._gemvq_stage_dump SEED OUT.pt [cpu]

Cases: every packed type, M in {1, 2, 3, 4, 8, 16}, no norm / LayerNorm / RMSNorm, fp16 and
bf16 activations, K with odd tile counts and K past v3's first register chunk (2,048 U values:
8,192 at M <= 2, 4,096 at M <= 8, 2,048 at 16), x and the norm weights at 2- and 8-byte (not
16-byte) aligned addresses, rows with inf, NaN, subnormal, tiny (< 2^-100), huge and zero groups.
Each case is run with activation-dtype and with fp32 outputs (the latter keep every bit of the
accumulated sums)."""
from __future__ import annotations

import sys

import gguf
import torch

from gpt_engine import ops
from gpt_engine.ops.linear import packed_gemv_ok

from .test_linear import make_weight

PACKED = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4"]
MS = [1, 2, 3, 4, 8, 16]
N = 40


def _ks(qk: int, m: int) -> list[int]:
    """K: odd tile counts (tiles of 1,024 values), and past v3's first chunk where the shared
    memory allows it (M = 16: K <= 4,096)."""
    if qk == 32:
        ks = [2080, 4160 if m < 16 else 4096]   # 65 groups (3 tiles; > 64), 130 (5 tiles; > 128)
        if m <= 2:
            ks.append(9216)                     # 288 groups (9 tiles; > 256)
    else:
        ks = [2304, 4352 if m < 16 else 4096]   # 72 groups (3 tiles), 136 (5 tiles)
        if m <= 2:
            ks.append(8448)                     # 264 groups (9 tiles)
    return ks


def _aligned_view(t: torch.Tensor, offset: int) -> torch.Tensor:
    """t's values at `offset` elements into a fresh buffer (2-byte elements: offset 1 gives a
    2-byte, 4 an 8-byte aligned address)."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    v = buf[offset:].view(t.shape)
    v.copy_(t)
    return v


def _specials(x: torch.Tensor) -> torch.Tensor:
    """Rows with special groups (32 values each); row r of x gets pattern r % 6."""
    x = x.clone()
    bf = x.dtype == torch.bfloat16
    tiny = 2.0 ** -110 if bf else 2.0 ** -20        # bf16: e < -100; fp16: near the subnormals
    sub = 1e-40 if bf else 6e-8                     # subnormal in each dtype
    huge = 1e38 if bf else 6e4                      # bf16: quad sums overflow fp32
    big = 2.0 ** 126 if bf else 3e4                 # finite quad sums, exponent near the top
    for r in range(x.shape[0]):
        g = 3 * (r % 4) + 1
        pat = r % 6
        s = slice(32 * g, 32 * g + 32)
        if pat == 0:
            x[r, 32 * g + 5] = float("nan")
        elif pat == 1:
            x[r, 32 * g + 7] = float("inf")
            x[r, 32 * (g + 1):32 * (g + 2)] = 0.0
        elif pat == 2:
            x[r, s] = x[r, s].float().mul(tiny).to(x.dtype)
            x[r, 32 * (g + 1):32 * (g + 2)] = x[r, 32 * (g + 1):32 * (g + 2)].float().sign().mul(sub).to(x.dtype)
        elif pat == 3:
            x[r, s] = x[r, s].float().sign().mul(huge).to(x.dtype)
        elif pat == 4:
            x[r, s] = x[r, s].float().mul(big / 4).to(x.dtype)
            x[r, 32 * g + 2] = big
        else:
            x[r, s] = 0.0
            x[r, 32 * (g + 1) + 31] = -sub
    return x


def run(seed: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for wtype in PACKED:
        qk = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wtype]][0]
        weights = {}
        for m in MS:
            for k in _ks(qk, m):
                if k not in weights:
                    weights[k] = make_weight(N, k, wtype, device)[0]
                w = weights[k]
                assert device == "cpu" or all(packed_gemv_ok(w.raw, int(w.qtype), dt, m, k)
                                              for dt in (torch.float16, torch.bfloat16)), (wtype, m, k)
                for dtype in (torch.float16, torch.bfloat16):
                    x0 = torch.randn(m, k, device=device).to(dtype)
                    nw = (torch.randn(k, device=device) * 0.2 + 1.0).to(dtype)
                    nb = (torch.randn(k, device=device) * 0.2).to(dtype)
                    xs = _specials(x0)
                    variants = [("plain", x0, 0), ("special", xs, 0), ("x2B", x0, 1), ("x8B", x0, 4)]
                    for norm in (None, "layernorm", "rmsnorm"):
                        for tag, x, off in variants:
                            if off and m not in (1, 3, 16):
                                continue
                            xv = _aligned_view(x, off) if off else x
                            w_n = _aligned_view(nw, off) if off else nw
                            b_n = _aligned_view(nb, off) if off else nb
                            nm = None if norm is None else ops.Norm(norm, w_n, b_n if norm == "layernorm" else None, 1e-5)
                            key = f"{wtype}/M{m}/K{k}/{str(dtype)[6:]}/{norm}/{tag}"
                            out[key + "/x"] = x.float().sum().reshape(1).cpu()
                            out[key] = ops.linear(xv, w, norm=nm).cpu()
                            out[key + "/f32"] = ops.linear(xv, w, norm=nm, float_out=True).cpu()
    return out


def main() -> None:
    seed, path = int(sys.argv[1]), sys.argv[2]
    torch.save(run(seed, *sys.argv[3:4]), path)  # a third argument "cpu": a dry run of the cases


if __name__ == "__main__":
    main()
