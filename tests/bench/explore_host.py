"""Where the decode loop's host time goes, on the GPU machine (exploration, not evidence).

The evidence's `decode_host` (median host time per token inside Decoder.run, waits for the GPU
excluded) went from 25 to 127 us on GPT-2 1.5B F16 between two H200 runs of the same code, with
tok/s unchanged. This splits one loop iteration the way Decoder.run does it: graph replay, the
copy-out, the read's wait, the read itself. It runs the loop twice per model: as Decoder.run
does (replay i+1 queued while step i runs), and with the GPU drained before each replay, so a
replay that blocks behind the running step shows as the difference between the two.

    python tests/bench/explore_host.py MODEL.gguf [...]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import gpt_engine


def loop(dec, g, n: int, drain: bool) -> dict[str, float]:
    t = {"replay": [], "copy_out": [], "wait": [], "read": []}
    dec._copy_out(0)
    for i in range(n):
        if drain:
            torch.cuda.synchronize()
        h0 = time.perf_counter()
        g.replay()
        h1 = time.perf_counter()
        dec._copy_out(i + 1)
        h2 = time.perf_counter()
        j = i % 2
        if dec._events is not None:
            dec._events[j].synchronize()
        h3 = time.perf_counter()
        dec._host[j].tolist()
        h4 = time.perf_counter()
        for k, a, b in (("replay", h0, h1), ("copy_out", h1, h2), ("wait", h2, h3), ("read", h3, h4)):
            t[k].append((b - a) * 1e6)
    torch.cuda.synchronize()
    return {k: statistics.median(v) for k, v in t.items()}


def main(paths: list[str]) -> None:
    for path in paths:
        m = gpt_engine.load(path, device="cuda")
        out = m.generate(list(range(100, 132)), max_new_tokens=64, stop_at_eos=False)
        dec = m._decoders[(1, True)]
        print(f"## {path.split('/')[-1]}: generate {len(out.token_ids) / out.decode_s:.0f} tok/s, "
              f"decode_host median {statistics.median(dec.stats.host_per_step_us):.1f} us")
        # the bimodal host time: several generate calls in one process, then the same with the
        # thread pinned to one core (os.sched_setaffinity), to see whether migration explains it
        cores = sorted(os.sched_getaffinity(0))
        for pin in (False, True):
            if pin:
                os.sched_setaffinity(0, {cores[len(cores) // 2]})
            cells = []
            for _ in range(5):
                o = m.generate(list(range(100, 132)), max_new_tokens=64, stop_at_eos=False)
                cells.append(f"{statistics.median(dec.stats.host_per_step_us):.0f} us / "
                             f"{len(o.token_ids) / o.decode_s:.0f} tok/s")
            print(f"  generate x5, {'pinned to one core' if pin else f'{len(cores)} cores'}: " + ", ".join(cells))
        os.sched_setaffinity(0, set(cores))
        st = dec.state
        start = [x.clone() for x in (st.ids, st.pos, st.lens, st.status)]
        # each loop replays N steps from the same position: replay k reads pos0 + k + 1 keys, so the
        # last reads pos0 + N (~95 + 100 here: inside the short graph's range and the capacity)
        n, pos0 = 100, int(st.pos.max())
        if pos0 + n > st.capacity:
            raise SystemExit(f"{pos0 + n} keys exceed the decoder's capacity {st.capacity}")
        short = 0 < pos0 + n <= st.short_keys
        g = dec._graph("greedy", short=short)
        print(f"  graph {'greedy:short' if short else 'greedy'}, keys {pos0 + 1}..{pos0 + n}")
        for drain in (False, True, False):
            for x, s in zip((st.ids, st.pos, st.lens, st.status), start):
                x.copy_(s)
            r = loop(dec, g, n, drain)
            print(f"  {'drained ' if drain else 'queued  '} " + "  ".join(f"{k} {v:7.1f}" for k, v in r.items()))
        del m, dec, g, st, start  # the decoder (cache, graphs) goes before the next model loads
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
