"""Where the decode loop's host time per token goes (exploration, not evidence).

``Decoder.stats.host_per_step_us`` (the loop's own work per token, waits excluded) is bimodal from
one ``generate`` call to the next in the same process (~26-47 us or ~100-150 us for a whole run:
docs/kernels/decode.md, session 9). This script times the loop's parts per run by wrapping them
(the graph replay, the queued copy + event record, the read after the wait, and the rest: status
check, bookkeeping, the consumer), and A/Bs the thread's CPU affinity: unpinned (the default) or
pinned to one core with ``os.sched_setaffinity``, alternated, RUNS runs each.

    python tests/bench/explore_host_time.py MODEL.gguf [...]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import gpt_engine
from gpt_engine import bench, cuda_graph

RUNS = 4
PARTS = ("replay", "copy_out", "read_after_wait")
acc: dict[str, list[float]] = {p: [] for p in PARTS}


def _timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[name].append((time.perf_counter() - t) * 1e6)
    return wrapper


def install() -> None:
    torch.cuda.CUDAGraph.replay = _timed("replay", torch.cuda.CUDAGraph.replay)
    cuda_graph.Decoder._copy_out = _timed("copy_out", cuda_graph.Decoder._copy_out)
    orig_read = cuda_graph.Decoder._read

    def read(self, i):  # the wait itself is excluded, as in the loop's own figure
        j = i % 2
        if self._events is not None:
            self._events[j].synchronize()
        t = time.perf_counter()
        try:
            return orig_read(self, i)  # its synchronize now returns at once
        finally:
            acc["read_after_wait"].append((time.perf_counter() - t) * 1e6)
    cuda_graph.Decoder._read = read


def main(paths: list[str]) -> None:
    install()
    everything = os.sched_getaffinity(0)
    core = sorted(everything)[len(everything) // 2]
    print(f"cores {sorted(everything)}; pinned runs use core {core}")
    for path in paths:
        m = gpt_engine.load(path, device="cuda")
        name = path.split("/")[-1]
        for r in range(RUNS):
            for pinned in (False, True):
                os.sched_setaffinity(0, {core} if pinned else everything)
                for v in acc.values():
                    v.clear()
                tg = bench.time_decode(m, 128, 1)
                n = 127  # the warm-up generate inside time_decode adds its own samples: keep the timed run's
                parts = {p: statistics.median(v[-n:]) for p, v in acc.items() if v}
                print(f"{name} run {r} {'pinned' if pinned else 'unpinned'}: tg128 {tg['mean']:.1f} tok/s, host "
                      f"{tg['host_us_per_token']:.1f} us/token; medians "
                      + ", ".join(f"{p} {x:.1f}" for p, x in parts.items()))
        os.sched_setaffinity(0, everything)
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
