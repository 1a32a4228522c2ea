"""What one graph launch costs the host, by node count and node kind (exploration, not evidence).

Session 15 measured the decode loop's replay + copy-out at ~0.2-0.25 us of host time per kernel
node (docs/kernels/decode.md, "Decode loop"), the same with the GPU drained. This separates the
candidates, each a straight-line graph of N kernels on one stream, replayed with the GPU drained
before each launch (host time of `replay()` alone, median of 200):
  - torch: N in-place adds (plain launches);
  - ours: N `ops.residual_add` calls, launched with the PDL attribute unless GPTE_NO_PDL=1
    (csrc/common.cuh reads it once per process, so the script runs itself again with it set);
and, per model file given, the decode step's own graph: its node kinds and edge count (from
`CUDAGraph.debug_dump`), and its replay's host time.

    python tests/bench/explore_graph_launch.py [MODEL.gguf ...]
"""
from __future__ import annotations

import collections
import os
import re
import statistics
import subprocess
import sys
import time

import torch

import gpt_engine
from gpt_engine import ops
from tests.bench.explore_device_loop import KeptGraph, graphs_as


def host_us(g: torch.cuda.CUDAGraph, n: int = 200) -> float:
    for _ in range(5):
        g.replay()
    t = []
    for _ in range(n):
        torch.cuda.synchronize()
        h0 = time.perf_counter()
        g.replay()
        t.append((time.perf_counter() - h0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(t)


def synthetic(kind: str, n: int) -> float:
    x = torch.randn(4096, device="cuda", dtype=torch.float16)
    y = torch.randn(4096, device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up outside the capture (allocations, the extension's first call)
            ops.residual_add(x, y) if kind == "ours" else x.add_(1.0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        z = y
        for _ in range(n):
            if kind == "ours":
                z = ops.residual_add(x, z)
            else:
                x.add_(1.0)
    return host_us(g)


def node_kinds(path: str) -> str:
    """Node kinds and edge count of a cudaGraphDebugDotPrint file."""
    text = open(path).read()
    kinds = collections.Counter(re.findall(r"\b(KERNEL|MEMCPY|MEMSET|EVENT_RECORD|WAIT_EVENT|HOST|EMPTY|"
                                           r"CHILD_GRAPH|MEM_ALLOC|MEM_FREE|CONDITIONAL)\b", text))
    edges = len(re.findall(r"->", text))
    prog = len(re.findall(r"(?i)programmatic", text))
    return f"{dict(kinds)}, {edges} edges, {prog} mentions of 'programmatic'"


class DebugGraph(KeptGraph):  # kept for the dump, with torch's graph debug mode on
    def __init__(self, *a, **k):
        super().__init__()
        self.enable_debug_mode()


def model(path: str) -> None:
    with graphs_as(DebugGraph):  # every graph the decoder captures
        m = gpt_engine.load(path, device="cuda")
        m.generate(list(range(100, 132)), max_new_tokens=8, stop_at_eos=False)
    dec = m._decoders[(1, True)]
    g = dec._graph("greedy", short=True)
    dot = f"/tmp/step-{os.getpid()}.dot"
    g.debug_dump(dot)
    print(f"  {os.path.basename(path)}: step graph {node_kinds(dot)}; replay host {host_us(g):.1f} us")
    del m, dec, g
    torch.cuda.empty_cache()


def main(paths: list[str]) -> None:
    pdl = "GPTE_NO_PDL" not in os.environ
    print(f"## {'with PDL' if pdl else 'GPTE_NO_PDL=1'} (torch {torch.__version__}, "
          f"driver {torch.cuda.get_device_name()})")
    for n in (16, 64, 256):
        print(f"  N={n:3d}: torch adds {synthetic('torch', n):6.1f} us, ours {synthetic('ours', n):6.1f} us")
    if pdl:  # the same graphs without the PDL attribute first, then the models of both builds
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, *paths], env={**os.environ, "GPTE_NO_PDL": "1"}, check=False)
    for p in paths:
        try:
            model(p)
        except Exception as e:  # noqa: BLE001 (an exploration: report and go on)
            print(f"  {os.path.basename(p)}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
