"""End-to-end A/B of a kernel hook through the public API, on the GPU machine: one file loaded with
gpt_engine.load(device="cuda"), tg128 after a 32-token prompt timed by gpt_engine.bench.time_decode
(the wall clock, as `gpt-engine bench`), the hook's settings alternated over ROUNDS rounds (each
setting's captured decode graphs dropped before its round, so the step is captured anew with that
kernel), against the same-run roofline (weight bytes a token at the copy bandwidth measured here).

    HOOK=qgemv_zip_force SETTINGS="0 1" python3 tests/bench/e2e_hook_ab.py FILE.gguf
    HOOK=moe_ab_force SETTINGS="7 72" python3 tests/bench/e2e_hook_ab.py gpt-oss-20b-MXFP4.gguf
"""
from __future__ import annotations

import os
import statistics
import sys

import gpt_engine
from gpt_engine import bench
from gpt_engine.ops import _ext

hook = getattr(_ext.load(), os.environ["HOOK"])
settings = [int(v) for v in os.environ["SETTINGS"].split()]
rounds = int(os.environ.get("ROUNDS", "3"))
m = gpt_engine.load(sys.argv[1], device="cuda")
roofline = bench.copy_bandwidth(m.device) * 1e9 / bench.weight_bytes_per_token(m)
rates = {s: [] for s in settings}
for _ in range(rounds):
    for s in settings:
        if hook(s) != s:
            sys.exit(f"{os.environ['HOOK']}({s}): not a setting")
        m._decoders.clear()  # graphs captured under another setting hold its kernels
        rates[s].append(bench.time_decode(m, 128, 3)["mean"])
for s in settings:
    r = statistics.median(rates[s])
    print(f"{os.path.basename(sys.argv[1])} {os.environ['HOOK']}({s}): tg128 {r:.1f} tok/s (rounds "
          f"{', '.join(f'{x:.1f}' for x in rates[s])}), MBU {r / roofline:.3f} of the same-run roofline "
          f"{roofline:.0f} tok/s")
