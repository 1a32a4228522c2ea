"""Benchmark helpers for the ops suites (timing itself is the harness's `bench` fixture).

Sizes are several times the H100/H200 L2 (50-60 MB) so every run reads from HBM; inputs are
random (never zeros); bandwidth counts the fewest bytes the op must move (each input read
once, each output written once), the same byte count for our kernel and torch's. The
bandwidth benchmarks write 400-512 MiB per output: up to an L2's worth (50 MB) of a kernel's
writes can still sit in L2 when its end event fires, and up to an L2's worth of someone
else's dirty lines can be written back during it; at these sizes either moves the figure by
under ~5% (at 64-128 MiB outputs it was 10-20%: docs/kernels/README.md).

Ratios to torch are timed in pairs (bench.cuda_time_pair: ours, torch, ours, torch, ... each
rep after an L2 flush, each series' median): where both ops run at the copy ceiling their
times differ by ~1%, less than the drift between two separate 50-rep blocks (clocks, HBM
temperature), so block-by-block timing made a >= 1.0x-torch bar a coin flip. The recorded
values keep their meaning: our median time, torch's median time, same bytes.
"""
import pytest
import torch

from ._util import HAS_CUDA, capture_graph

# A benchmark: CUDA-only, recorded as evidence through the bench fixture.
cuda_bench = [pytest.mark.cuda, pytest.mark.benchmark,
              pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")]


def mark(*stories):
    def deco(fn):
        for m in (*cuda_bench, pytest.mark.story(*stories)):
            fn = m(fn)
        return fn
    return deco


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def free():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def graphed(fn, warmup: int = 3):
    """fn captured in a CUDA graph; returns the replay callable. Decode steps run as graph
    replays in the engine (no Python dispatch, no host syncs), so the per-step ops are timed
    that way; the torch/SDPA references are captured the same way, for the same reason."""
    g, _ = capture_graph(fn, warmup)
    torch.cuda.synchronize()
    return g.replay


def event_times_ms(fn, reps: int, warmup: int, *, before=None, sync_after_warmup: bool = True) -> list[float]:
    """Milliseconds of each of `reps` calls of fn, each between its own pair of CUDA events and
    waited for before the next, after `warmup` untimed calls (then a device synchronize unless
    sync_after_warmup is False). before(), when given, runs before each timed call's start event
    (an L2 flush, a host-lead spin). For the exploration scripts, which each reduce the list
    their own way (median, upper middle, units); the evidence timings are the harness's `bench`."""
    for _ in range(warmup):
        fn()
    if sync_after_warmup:
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        if before is not None:
            before()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return ts
