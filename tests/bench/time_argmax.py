"""The greedy argmax (csrc/sample_greedy.cu) alone, v1 against v2 (exploration, not evidence;
GX-003): one fp32 row of 50,257 (GPT-2) and of 201,088 (gpt-oss) logits per call, as a batch-1
decode step samples. The switch GPTE_AB_ARGMAX_V1 (TEMPORARY) is read once per process, so this
script starts one child per version and round (v1, v2, v1, v2, ...) and prints each measurement
and a v1 / v2 table of the medians over rounds.

Per version and row length (random N(0, 9) logits; a pool of distinct rows of >= 192 MiB, more
than the H200's L2, so "cold" calls read HBM):
  - single: each call on its own next row, alone between two CUDA events, behind a
    torch.cuda._sleep so that the host's launch is never inside the timed span; median of 300
    calls after 20 warm-up calls (event resolution ~0.5 us: the graph figures are the finer ones).
  - graph-cold: every row of the pool in turn, one call per row, captured in one CUDA graph (the
    kernels' PDL overlaps each launch with the call before, as in the decode graph); us per call
    = replay time / calls; median of 200 replays after 3.
  - graph-hot: one row 100 times per graph (the decode step's case: the LM head has just written
    the logits, so they sit in L2); median of 200 replays.

    python tests/bench/time_argmax.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

AB_V1 = "GPTE_AB_ARGMAX_V1"
LENGTHS = (50257, 201088)
POOL_BYTES = 192 << 20


def _child() -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root
    import torch

    from gpt_engine.ops import _ext

    ext = _ext.load()
    version = "v1" if os.environ.get(AB_V1) else "v2"
    nxt = torch.zeros(1, dtype=torch.int64, device="cuda")
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")
    status = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = []

    def emit(v: int, mode: str, ts: list[float]) -> None:
        q = statistics.quantiles(ts, n=10)
        rec = {"version": version, "v": v, "mode": mode, "median_us": statistics.median(ts), "p10_us": q[0],
               "p90_us": q[-1], "n": len(ts)}
        out.append(rec)
        print(f"SUMMARY argmax {version} 1x{v} {mode}: median {rec['median_us']:.2f} us per call "
              f"(p10 {q[0]:.2f}, p90 {q[-1]:.2f}, {len(ts)} samples)", flush=True)

    for v in LENGTHS:
        rows = max(16, POOL_BYTES // (4 * v))
        pool = torch.randn(rows, v, device="cuda") * 3
        call = lambda r: ext.sample_greedy(pool[r:r + 1], v, nxt, pos, status)  # noqa: E731
        # correctness on a few rows (the tests are the real check)
        for r in (0, rows // 2, rows - 1):
            call(r)
            assert int(nxt) == int(pool[r].argmax()), f"{version} 1x{v} row {r}: {int(nxt)} != torch.argmax"
        # single calls, events around each, the GPU queue kept ahead of the host
        for r in range(20):
            call(r % rows)
        torch.cuda.synchronize()
        n = 300
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for i, (a, b) in enumerate(ev):
            torch.cuda._sleep(40_000)  # ~20 us at 1.98 GHz
            a.record()
            call((20 + i) % rows)
            b.record()
        torch.cuda.synchronize()
        emit(v, "single-cold", [a.elapsed_time(b) * 1e3 for a, b in ev])
        # graphs
        for mode, order in (("graph-cold", list(range(rows))), ("graph-hot", [0] * 100)):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                call(0)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for r in order:
                    call(r)
            for _ in range(3):
                g.replay()
            torch.cuda.synchronize()
            reps = 200
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for a, b in ev:
                a.record()
                g.replay()
                b.record()
            torch.cuda.synchronize()
            emit(v, mode, [a.elapsed_time(b) * 1e3 / len(order) for a, b in ev])
            del g
        del pool
        torch.cuda.empty_cache()
    assert int(status) == 0, "a NaN flagged on randn rows"
    print("JSON " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child()
        return
    recs = []
    for rnd in range(args.rounds):
        for version in ("v1", "v2"):
            env = {k: val for k, val in os.environ.items() if k != AB_V1}
            if version == "v1":
                env[AB_V1] = "1"
            print(f"== round {rnd + 1}, {version}", flush=True)
            r = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                               timeout=120)
            for line in r.stdout.splitlines():
                if line.startswith("JSON "):
                    recs += json.loads(line[5:])
                else:
                    print(line, flush=True)
            if r.returncode != 0:
                print(f"child {version} failed (rc {r.returncode}):\n{r.stderr[-4000:]}", flush=True)
    print("\nmedians over rounds, us per call:")
    for v in LENGTHS:
        for mode in ("single-cold", "graph-cold", "graph-hot"):
            m = {ver: [x["median_us"] for x in recs if x["version"] == ver and x["v"] == v and x["mode"] == mode]
                 for ver in ("v1", "v2")}
            if m["v1"] and m["v2"]:
                a, b = statistics.median(m["v1"]), statistics.median(m["v2"])
                print(f"SUMMARY argmax 1x{v} {mode}: v1 {a:.2f} us, v2 {b:.2f} us, v1/v2 {a / b:.2f}x "
                      f"({len(m['v1'])} + {len(m['v2'])} rounds)")


if __name__ == "__main__":
    main()
