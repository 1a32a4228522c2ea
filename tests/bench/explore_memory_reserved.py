"""Where reserved GPU memory goes beyond the allocated peak (exploration, not evidence; for
GT-044's fit half, which caps reserved memory at memory_estimate() x 1.05). For one model and
the budget test's request (a 1,000-token prompt, 24 new tokens), on the GPU machine:

    python tests/bench/explore_memory_reserved.py MODEL.gguf

prints the allocated and reserved peaks, then the allocator's segments at the end of the request
grouped by pool (the general pool or a CUDA graph's private pool) and by size class (small:
2 MiB segments for requests <= 1 MiB; large: 20 MiB segments for 1-10 MiB requests, rounded
to 2 MiB above that: torch's CUDACachingAllocator), with the bytes each holds unused, and the
largest unused pieces: the slack a per-process memory fraction sees and memory_estimate() does
not count."""
from __future__ import annotations

import collections
import gc
import sys

import torch

import gpt_engine

T, N = 1000, 24  # tests/test_memory_budget_cuda.py's request


def main(path: str) -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before_a, before_r = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    m = gpt_engine.load(path, device="cuda")
    after_load = torch.cuda.memory_allocated() - before_a, torch.cuda.memory_reserved() - before_r
    m.generate(list(range(1, T + 1)), max_new_tokens=N, stop_at_eos=False)
    torch.cuda.synchronize()
    cap = m.decoder(1, T + N, m.cuda_graphs).state.capacity
    est = m.memory_estimate(n_ctx=cap, prompt_tokens=T)["total"]
    mib = 2 ** 20
    print(f"## {path.split('/')[-1]}: estimate {est / mib:.1f} MiB; after load allocated {after_load[0] / mib:.1f} / "
          f"reserved {after_load[1] / mib:.1f} MiB; peak allocated {(torch.cuda.max_memory_allocated() - before_a) / mib:.1f}, "
          f"peak reserved {(torch.cuda.max_memory_reserved() - before_r) / mib:.1f} MiB (budget at x1.05: {est * 1.05 / mib:.1f})")
    groups = collections.defaultdict(lambda: [0, 0, 0])  # (pool, class) -> segments, bytes, unused bytes
    unused = []
    for seg in torch.cuda.memory_snapshot():
        pool = "graph pool" if seg.get("segment_pool_id", (0, 0)) != (0, 0) else "general"
        cls = "small" if seg["segment_type"] == "small" else ("large<=20MiB" if seg["total_size"] <= 20 * mib else "large")
        free = sum(b["size"] for b in seg["blocks"] if b["state"] != "active_allocated")
        g = groups[(pool, cls)]
        g[0] += 1
        g[1] += seg["total_size"]
        g[2] += free
        unused += [(b["size"], pool, cls) for b in seg["blocks"] if b["state"] != "active_allocated"]
    print(f"{'pool':<12}{'class':<14}{'segments':>9}{'MiB':>10}{'unused MiB':>12}")
    for (pool, cls), (n, tot, free) in sorted(groups.items()):
        print(f"{pool:<12}{cls:<14}{n:>9}{tot / mib:>10.1f}{free / mib:>12.1f}")
    print("largest unused pieces (MiB):", [(round(s / mib, 2), p, c) for s, p, c in sorted(unused, reverse=True)[:12]])
    stats = torch.cuda.memory_stats()
    print("inactive_split_bytes.all.peak MiB:", round(stats.get("inactive_split_bytes.all.peak", 0) / mib, 1),
          "num_alloc_retries:", stats.get("num_alloc_retries"))


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
