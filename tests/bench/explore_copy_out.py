"""What the decode loop's copy-out costs the host, and what the alternatives cost (exploration,
not evidence; plain torch, no extension). `Decoder._copy_out` queues a non-blocking copy_ of the
readback buffer (ids + status) into pinned memory and records an event; explore_host.py measured
15-76 us of host time for it on the H200. Each variant below runs while the GPU is busy with
queued work (as in the loop, where the copy is queued behind the next step), host time per call
by perf_counter, median of 400:
  copy+event  today's _copy_out;  copy  the copy_ alone;  event  the record alone;
  graph+event  a CUDA graph holding only that copy (one per buffer parity), replayed, then the event;
  tiny graph  a graph of one small kernel, for the replay cost alone.
It also checks that the graphed copy lands (the pinned buffer equals the device one).

    python tests/bench/explore_copy_out.py
"""
from __future__ import annotations

import statistics
import time

import torch


def host_us(fn, busy, n: int = 400) -> float:
    ts = []
    for i in range(n):
        busy()
        h0 = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - h0) * 1e6)
        if i % 16 == 15:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(ts)


def main() -> None:
    dev = torch.arange(129, dtype=torch.int64, device="cuda")  # a readback of 128 ids + a status word
    host = [torch.zeros(129, dtype=torch.int64, pin_memory=True) for _ in range(2)]
    ev = [torch.cuda.Event() for _ in range(2)]
    work = torch.randn(1 << 24, device="cuda")  # 64 MB: ~30 us of GPU time per busy() call

    def busy():
        work.mul_(1.0)

    graphs = []
    side = torch.cuda.Stream()
    try:
        for j in range(2):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
                host[j].copy_(dev, non_blocking=True)
            graphs.append(g)
        torch.cuda.synchronize()
        for j in range(2):
            host[j].zero_()
            dev.add_(j + 1)
            graphs[j].replay()
            torch.cuda.synchronize()
            print(f"graphed copy lands in parity {j}: {torch.equal(host[j], dev.cpu())}")
    except Exception as e:  # the capture itself is one of the questions
        print(f"graphed copy: capture failed: {type(e).__name__}: {e}")
        graphs = []
    tiny = torch.cuda.CUDAGraph()
    x = torch.zeros(1, device="cuda")
    with torch.cuda.stream(side), torch.cuda.graph(tiny, stream=side):
        x.add_(1)
    torch.cuda.synchronize()

    def copy_event(i):
        host[i % 2].copy_(dev, non_blocking=True)
        ev[i % 2].record()

    cur = torch.cuda.current_stream()  # Event.record() without a stream looks the stream up each call

    def copy_event_stream(i):
        host[i % 2].copy_(dev, non_blocking=True)
        ev[i % 2].record(cur)

    variants = {
        "copy+event": copy_event,
        "copy+event(stream)": copy_event_stream,
        "event(stream)": lambda i: ev[i % 2].record(cur),
        "copy": lambda i: host[i % 2].copy_(dev, non_blocking=True),
        "event": lambda i: ev[i % 2].record(),
        "tiny graph": lambda i: tiny.replay(),
    }
    if graphs:
        variants["graph+event"] = lambda i: (graphs[i % 2].replay(), ev[i % 2].record())
    for rnd in range(2):  # twice, to see the host's speed drift
        print(f"round {rnd}: " + ", ".join(f"{k} {host_us(f, busy):.1f} us" for k, f in variants.items()))


if __name__ == "__main__":
    main()
