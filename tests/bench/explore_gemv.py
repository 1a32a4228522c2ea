"""The decode GEMV alone, per model shape (exploration, not evidence): M rows of fp16 activations
times an fp16 weight, calls captured in a CUDA graph, each on a different weight so >= 512 MiB
are read per replay (nothing from L2). Prints us per call, GB/s, the ratio to a same-run copy
and to cuBLAS (F.linear on the same calls). The recorded benchmark is
tests/ops/test_linear.py::test_gemv_bandwidth.

    python tests/bench/explore_gemv.py [--quant]
"""
from __future__ import annotations

import gguf
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.qweight import QWeight

SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1600, 1600), (4800, 1600), (6400, 1600),
          (1600, 6400), (4096, 4096), (2880, 2880), (50257, 768), (50257, 1600)]


def graphed(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def time_us(fn, reps=20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return sorted(ts)[len(ts) // 2]


def packed(n: int, k: int, qtype) -> torch.Tensor:
    """Random weight bytes of a packed type, quantized by gguf-py on the CPU (one matrix)."""
    import numpy as np
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.02
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.quantize(w, qtype)).reshape(n, -1)).cuda()


def quant_table(copy_gbs: float) -> None:
    Q = gguf.GGMLQuantizationType
    for t in (Q.Q8_0, Q.MXFP4, Q.Q4_0):
        print(f"\n{t.name}, M = 1\n{'N x K':>14}{'us':>8}{'GB/s':>8}{'/copy':>7}{'F16 us':>8}")
        for n, k in [(1600, 6400), (6400, 1600), (4096, 4096), (2880, 2880), (4800, 1600), (1600, 1600)]:
            raw = packed(n, k, t)
            nbytes = raw.numel()
            reps = max(4, (512 << 20) // nbytes)
            qs = [QWeight(raw.clone(), t, (n, k)) for _ in range(reps)]
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            t_q = time_us(graphed(lambda: [ops.linear(x, q) for q in qs])) / reps
            gbs = nbytes / t_q / 1e3
            print(f"{n:>7}x{k:<6}{t_q:>8.2f}{gbs:>8.0f}{gbs / copy_gbs:>7.2f}")
            del qs


def main() -> None:
    src = torch.randn(1 << 28, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * 2 / time_us(lambda: dst.copy_(src)) / 1e3
    print(f"copy {copy_gbs:.0f} GB/s")
    del src, dst
    import sys
    if "--quant" in sys.argv:
        quant_table(copy_gbs)
        return
    for m in (1, 4):
        print(f"\nM = {m}\n{'N x K':>14}{'us':>8}{'GB/s':>8}{'/copy':>7}{'cuBLAS us':>11}")
        for n, k in SHAPES:
            nbytes = n * k * 2
            reps = max(4, (512 << 20) // nbytes)
            ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(reps)]
            qs = [QWeight(w.view(torch.uint8), gguf.GGMLQuantizationType.F16, (n, k)) for w in ws]
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            err = (ops.linear(x, qs[0]).double() - x.double() @ ws[0].double().T).abs().max().item()
            t = time_us(graphed(lambda: [ops.linear(x, q) for q in qs])) / reps
            tc = time_us(graphed(lambda: [F.linear(x, w) for w in ws])) / reps
            gbs = nbytes / t / 1e3
            print(f"{n:>7}x{k:<6}{t:>8.2f}{gbs:>8.0f}{gbs / copy_gbs:>7.2f}{tc:>11.2f}   maxerr {err:.1e}")
            del ws, qs


if __name__ == "__main__":
    main()
