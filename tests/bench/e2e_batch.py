"""Batched decode end to end through the public API (exploration, not evidence): for each file and
batch size, ``load(device="cuda")`` then ``generate_batch`` of B copies of a 32-token prompt,
tokens per second by the wall clock. The decode time is a 129-token call's minus a 1-token call's
(the prompt's prefill and first token), median of REPS pairs; every sequence's 128 generated tokens
count. Same-run references: the weight-bytes roofline (one step reads every weight once, whatever
B: copy bandwidth measured here over gpt_engine.bench.weight_bytes_per_token, times B) and the
same model's batch-1 ``generate`` rate (gpt_engine.bench.time_decode).

    python tests/bench/e2e_batch.py FILE.gguf [FILE ...]          (DEVICE=cpu: a smoke run)
    BATCHES="1 4 8 16" REPS=3 HOOK=linear_scatter_force VALUES="0 1" python tests/bench/e2e_batch.py ...

HOOK / VALUES: an extension test hook (ext.<HOOK>) set to each value in turn, every batch timed
under each; the hook's first value is restored at the end.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import gpt_engine
from gpt_engine import bench

N_GEN = 128


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def decode_tok_s(m, prompt: list[int], batch: int, reps: int) -> float:
    def wall(n: int) -> float:
        sync(m.device)
        t0 = time.perf_counter()
        m.generate_batch([prompt] * batch, max_new_tokens=n, stop_at_eos=False)
        sync(m.device)
        return time.perf_counter() - t0
    wall(N_GEN + 1), wall(1)  # warm-up: the batch's graphs captured
    ts = [wall(N_GEN + 1) - wall(1) for _ in range(reps)]
    return batch * N_GEN / statistics.median(ts)


def main() -> None:
    batches = [int(b) for b in os.environ.get("BATCHES", "1 4 8 16").split()]
    reps = int(os.environ.get("REPS", "3"))
    hook, values = os.environ.get("HOOK"), os.environ.get("VALUES", "").split()
    force = None
    if hook:
        from gpt_engine.ops import _ext
        force = getattr(_ext.load(), hook)
    dev = torch.device(os.environ.get("DEVICE", "cuda"))  # (DEVICE=cpu: a smoke run of the script)
    bw = bench.copy_bandwidth(dev)
    print(f"{bench._device_name(dev)}, copy {bw:.0f} GB/s")
    for path in sys.argv[1:]:
        m = gpt_engine.load(path, device=dev)
        wb = bench.weight_bytes_per_token(m)
        step_roof = bw * 1e9 / wb  # steps a second if a step cost its weight bytes at copy speed
        tg1 = bench.time_decode(m, N_GEN, reps)["mean"]
        prompt = bench._ids(m, bench.TG_PROMPT, 2)
        print(f"\n{os.path.basename(path)}: weights {wb / 1e9:.3f} GB a step; generate() tg{N_GEN} {tg1:.1f} tok/s "
              f"(roofline {step_roof:.1f})")
        print(f"{'setting':>10}{'B':>4}{'tok/s':>10}{'/roofline':>10}{'/batch-1':>10}{'step us':>10}")
        for v in values or [None]:
            if force is not None and force(int(v)) != int(v):
                sys.exit(f"{hook} {v}: not a setting of this build")
            for b in batches:
                r = decode_tok_s(m, prompt, b, reps)
                print(f"{v or '-':>10}{b:>4}{r:>10.1f}{r / (b * step_roof):>10.3f}{r / tg1:>10.2f}"
                      f"{b / r * 1e6:>10.1f}")
        if force is not None:
            force(int(values[0]))
        del m
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
