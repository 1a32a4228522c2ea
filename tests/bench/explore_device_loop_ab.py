"""The device decode loop against the host loop, same process, same decoder (exploration, not
evidence): per model file, `bench.time_decode` (tg128 after the benchmark prompt, the timing the
evidence uses) with Decoder.device_loop off and on, alternated, ROUNDS rounds (default 2); tok/s and the
median host time per token of each run. The decoder is made with the device loop on so that its
graphs are kept (the device loop clones them); turned off, the same graphs replay from the host.

    python tests/bench/explore_device_loop_ab.py MODEL.gguf [...]
"""
from __future__ import annotations

import os
import sys

import torch

import gpt_engine
from gpt_engine import bench


def main(paths: list[str]) -> None:
    os.environ["GPT_ENGINE_DEVICE_LOOP"] = "1"
    print(f"## device loop A/B (torch {torch.__version__}, {torch.cuda.get_device_name()})")
    for p in paths:
        m = gpt_engine.load(p, device="cuda")
        bench.time_decode(m, 128, 1)  # captures, builds the loop
        dec = m._decoders[(1, m.cuda_graphs)]
        if not dec.device_loop:
            print(f"  {os.path.basename(p)}: the device loop was refused (see the warning above)")
            continue
        cells = {False: [], True: []}
        for _ in range(int(os.environ.get("ROUNDS", "2"))):
            for on in (False, True):
                dec.device_loop = on
                r = bench.time_decode(m, 128, 3)
                cells[on].append(f"{r['mean']:.1f} tok/s host {r.get('host_us_per_token', float('nan')):.1f} us")
        dec.device_loop = True
        print(f"  {os.path.basename(p)}:\n    host loop:   " + " | ".join(cells[False]) +
              "\n    device loop: " + " | ".join(cells[True]))
        del m, dec
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
