"""Where a decode step's time goes, on the GPU machine (exploration, not evidence):

1. per model: one graph-captured decode step timed by replaying it (CUDA events, 100 replays),
   and the profiler's per-kernel GPU times over 20 replays;
2. the linear op's GEMV alone on each model width, in a CUDA graph over enough distinct weights
   that nothing stays in L2, against cuBLAS (F.linear at M = 1) and the copy bandwidth.

    python tests/bench/explore_decode_step.py [MODEL.gguf ...]
"""
from __future__ import annotations

import sys

import gguf
import torch
import torch.nn.functional as F

import gpt_engine
from gpt_engine import ops
from gpt_engine.bench import copy_bandwidth
from gpt_engine.qweight import QWeight


def replay_us(fn, n=100) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n * 1e3


def step_breakdown(path: str) -> None:
    m = gpt_engine.load(path, device="cuda")
    m.generate(list(range(100, 132)), max_new_tokens=4, stop_at_eos=False)
    dec = m._decoders[(1, True)]
    g = dec.graphs["greedy"]
    t = replay_us(g.replay)
    print(f"\n## {path.split('/')[-1]}: graph step {t:.1f} us ({1e6 / t:.0f} tok/s), capacity {dec.state.capacity}, "
          f"splits {dec.state.splits}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            g.replay()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name[:60]
            r = rows.setdefault(name, [0, 0.0])
            r[0] += 1
            r[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(r[1] for r in rows.values())
    print(f"{'kernel':<62}{'calls/step':>11}{'us/call':>9}{'us/step':>9}{'share':>7}")
    for name, (n, us) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"{name:<62}{n / 20:>11.1f}{us / n:>9.2f}{us / 20:>9.1f}{us / total:>7.1%}")
    print(f"kernel time per step {total / 20:.1f} us of {t:.1f} us replay")
    del m, dec, g
    torch.cuda.empty_cache()


def gemv_table(bw: float) -> None:
    print(f"\n## GEMV, M = 1, fp16 weights (copy {bw:.0f} GB/s); graph of calls over distinct weights")
    print(f"{'N x K':<14}{'ours us':>9}{'GB/s':>8}{'/copy':>7}{'cuBLAS us':>11}{'GB/s':>8}")
    for n, k in [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1600, 1600), (4800, 1600), (6400, 1600),
                 (1600, 6400), (4096, 4096), (2880, 2880), (50257, 768), (50257, 1600)]:
        nbytes = n * k * 2
        reps = max(4, (512 << 20) // nbytes)
        ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(reps)]
        qs = [QWeight(w.view(torch.uint8), gguf.GGMLQuantizationType.F16, (n, k)) for w in ws]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)

        def ours():
            for q in qs:
                ops.linear(x, q)

        def cublas():
            for w in ws:
                F.linear(x, w)
        res = []
        for fn in (ours, cublas):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                fn()
            res.append(replay_us(gr.replay, 20) / reps)
        (a, b) = res
        print(f"{f'{n}x{k}':<14}{a:>9.2f}{nbytes / a / 1e3:>8.0f}{nbytes / a / 1e3 / bw:>7.2f}{b:>11.2f}"
              f"{nbytes / b / 1e3:>8.0f}")
        del ws, qs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    bw = copy_bandwidth("cuda")
    for p in sys.argv[1:]:
        step_breakdown(p)
    gemv_table(bw)
