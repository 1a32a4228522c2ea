"""The decode GEMV alone, per model shape (exploration, not evidence): M rows of fp16 activations
times an fp16 weight, calls captured in a CUDA graph, each on a different weight so >= 512 MiB
are read per replay (nothing from L2). Prints us per call, GB/s, the ratio to a same-run copy
and to cuBLAS (F.linear on the same calls). The recorded benchmark is
tests/ops/test_linear.py::test_gemv_bandwidth.

    python tests/bench/explore_gemv.py [--quant [--types Q8_0,MXFP4] [--shapes 1x1600x6400,4x1600x6400]
                                        [--norm layernorm|rmsnorm]] [--l2] [--m1 | --ms 1,4,16]
                                        [--dense-shapes 5120x2880,...]
    GEMV_RING="1 0 4" python tests/bench/explore_gemv.py --m1 --dense-shapes 201088x2880,5120x2880

--quant: the packed types (csrc/linear_q.cu); --types / --shapes (M x N x K) pick a subset,
--norm fuses that norm into every call (the activation staging then computes it).
--l2: every call reads the SAME weight (after the first, from L2: 50 MB on the H200), so the time
left is the call's own chain (launch, wait, x staging, the dot products, the epilogue) and not
DRAM; the GB/s column then counts the bytes as if read.
--dense-shapes (N x K) picks the dense table's shapes, --ms its row counts (default 1 and 4; --m1: 1). GEMV_RING="modes": the dense table times each
shape once per mode of the extension's ring-rule hook (ext.linear_ring_force, + 8 for the ring
kernel's bulk copies, v20; a mode whose output is not the first mode's bits is flagged; when the build has
it: which dense kernel takes which rows; csrc/linear_impl.cuh launch_mt says what each mode does),
one column per mode, then the hook's default (0) again.
QGEMV_ZIP="0 1" with --quant: each packed shape once per setting of ext.qgemv_zip_force (MXFP4's
code order, csrc/linear_q_impl.cuh v3.3; other types ignore it), one row each; a setting whose
output is not the first setting's bits is flagged; then the default (1) again.
"""
from __future__ import annotations

import os
import sys

import gguf
import numpy as np
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops.linear import apply_norm
from gpt_engine.qweight import QWeight
from tests.ops._bench import event_times_ms, graphed

SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1600, 1600), (4800, 1600), (6400, 1600),
          (1600, 6400), (4096, 4096), (2880, 2880), (5120, 2880), (2880, 4096), (50257, 768), (50257, 1600),
          (201088, 2880)]
# (5120 x 2880 and 2880 x 4096: gpt-oss-20b's QKV and output products, docs/gpt_oss.md session 20;
# 201088 x 2880: its untied LM head, 1.16 GB, never timed alone before session 26)


def time_us(fn, reps=20) -> float:
    ts = [t * 1e3 for t in event_times_ms(fn, reps, warmup=3)]
    return sorted(ts)[len(ts) // 2]


def packed(n: int, k: int, qtype) -> torch.Tensor:
    """Random weight bytes of a packed type (one matrix): gguf-py's quantizer, ours for the
    K-quants (gguf-py has none). 256 distinct rows repeated to n (the timing does not depend on
    the values; the quantizers take ~1 s per million weights on the CPU)."""
    r = min(n, 256)
    w = np.random.default_rng(0).standard_normal((r, k)).astype(np.float32) * 0.02
    if qtype.name.endswith("_K"):
        from gpt_engine.quantize import quantize
        raw = quantize(w, qtype)
    else:
        raw = gguf.quants.quantize(w, qtype)
    raw = np.tile(np.ascontiguousarray(raw).reshape(r, -1), ((n + r - 1) // r, 1))[:n]
    return torch.from_numpy(np.ascontiguousarray(raw)).cuda()


QUANT_TYPES = ["Q8_0", "MXFP4", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


QUANT_SHAPES = [(1, 1600, 6400), (1, 6400, 1600), (1, 4096, 4096), (1, 2880, 2880), (1, 4800, 1600),
                (1, 1600, 1600), (4, 1600, 6400)]


def calls(make, reps: int) -> list:
    """The weights of `reps` timed calls: distinct (each from DRAM), or with --l2 one weight
    repeated (from L2 after the first call)."""
    return [make()] * reps if "--l2" in sys.argv else [make() for _ in range(reps)]


def _arg(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def quant_table(copy_gbs: float) -> None:
    """Every packed type at M = 1 (and M = 4 for the first shape); K rounded down to whole
    super-blocks for the K-quants. nmse: the first call's output against the float64 product
    with gguf-py's dequantized weight (tests/tolerances.py nmse_fp16 = 1e-5 is the ops tests' bar)."""
    Q = gguf.GGMLQuantizationType
    types = _arg("--types").split(",") if _arg("--types") else QUANT_TYPES
    shapes = ([tuple(int(v) for v in s.split("x")) for s in _arg("--shapes").split(",")] if _arg("--shapes")
              else QUANT_SHAPES)
    norm_kind = _arg("--norm")
    zips = os.environ.get("QGEMV_ZIP", "").split()
    ext = None
    if zips:
        from gpt_engine.ops import _ext
        ext = _ext.load()
    for name in types:
        t = Q[name]
        qk = gguf.GGML_QUANT_SIZES[t][0]
        print(f"\n{t.name}\n{'M':>3}{'N x K':>14}{'us':>8}{'GB/s':>8}{'/copy':>7}{'nmse':>10}")
        for m, n, k in shapes:
            k = k // qk * qk
            raw = packed(n, k, t)
            nbytes = raw.numel()
            reps = max(4, (512 << 20) // nbytes)
            qs = calls(lambda: QWeight(raw.clone(), t, (n, k)), reps)
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            nm = None
            xn = x
            if norm_kind:
                nw = (torch.randn(k, device="cuda") * 0.2 + 1).half()
                nb = (torch.randn(k, device="cuda") * 0.2).half() if norm_kind == "layernorm" else None
                nm = ops.Norm(norm_kind, nw, nb, 1e-5)
                xn = apply_norm(x, nm)
            w64 = torch.from_numpy(gguf.quants.dequantize(raw.cpu().numpy(), t).astype(np.float64)).reshape(n, k)
            ref = xn.cpu().double() @ w64.T
            first = None
            for z in zips or [None]:
                if z is not None and ext.qgemv_zip_force(int(z)) != int(z):
                    sys.exit(f"QGEMV_ZIP {z}: not a setting of this build")
                out = ops.linear(x, qs[0], norm=nm)
                first = out if first is None else first
                err = float(((out.cpu().double() - ref) ** 2).sum() / (ref ** 2).sum())
                t_q = time_us(graphed(lambda: [ops.linear(x, q, norm=nm) for q in qs])) / reps
                gbs = nbytes / t_q / 1e3
                print(f"{m:>3}{n:>7}x{k:<6}{t_q:>8.2f}{gbs:>8.0f}{gbs / copy_gbs:>7.2f}{err:>10.1e}"
                      + (f"  zip {z}" if z is not None else "") + ("" if torch.equal(out, first) else "  BITS DIFFER"))
            if ext is not None:
                ext.qgemv_zip_force(1)  # the default
            del qs


def main() -> None:
    src = torch.randn(1 << 28, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * 2 / time_us(lambda: dst.copy_(src)) / 1e3
    print(f"copy {copy_gbs:.0f} GB/s")
    del src, dst
    if "--quant" in sys.argv:
        quant_table(copy_gbs)
        return
    rings = os.environ.get("GEMV_RING", "").split()
    ext = None
    if rings:
        from gpt_engine.ops import _ext
        ext = _ext.load()
        if not hasattr(ext, "linear_ring_force"):
            sys.exit("GEMV_RING: this build has no ext.linear_ring_force")
    shapes = ([tuple(int(v) for v in s.split("x")) for s in _arg("--dense-shapes").split(",")]
              if _arg("--dense-shapes") else SHAPES)
    ms = (1,) if "--m1" in sys.argv else (1, 4)
    if _arg("--ms"):
        ms = tuple(int(v) for v in _arg("--ms").split(","))
    for m in ms:
        cols = "".join(f"{'ring ' + r + ' us':>12}{'/copy':>7}" for r in rings) if rings else f"{'us':>8}{'GB/s':>8}{'/copy':>7}"
        print(f"\nM = {m}\n{'N x K':>14}{cols}{'cuBLAS us':>11}")
        for n, k in shapes:
            nbytes = n * k * 2
            reps = max(4, (512 << 20) // nbytes)
            ws = calls(lambda: torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02, reps)
            qs = [QWeight(w.view(torch.uint8), gguf.GGMLQuantizationType.F16, (n, k)) for w in ws]
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.double() @ ws[0].double().T
            line, errs, first, same = f"{n:>7}x{k:<6}", [], None, []
            for r in rings or [None]:
                if r is not None and ext.linear_ring_force(int(r)) != int(r):
                    sys.exit(f"GEMV_RING {r}: not a mode of this build")
                out = ops.linear(x, qs[0])
                errs.append((out.double() - ref).abs().max().item())
                first = out if first is None else first
                same.append(torch.equal(out, first))  # every mode sums the same chunks in the same order
                t = time_us(graphed(lambda: [ops.linear(x, q) for q in qs])) / reps
                gbs = nbytes / t / 1e3
                line += f"{t:>12.2f}{gbs / copy_gbs:>7.2f}" if rings else f"{t:>8.2f}{gbs:>8.0f}{gbs / copy_gbs:>7.2f}"
            if ext is not None:
                ext.linear_ring_force(0)
            del ref
            tc = time_us(graphed(lambda: [F.linear(x, w) for w in ws])) / reps
            print(f"{line}{tc:>11.2f}   maxerr {' '.join(f'{e:.1e}' for e in errs)}"
                  + ("" if all(same) else f"   BITS DIFFER from mode {rings[0]}: {same}"))
            del ws, qs


if __name__ == "__main__":
    main()
