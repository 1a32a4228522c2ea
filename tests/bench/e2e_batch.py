"""Batched decode end to end through the public API (exploration, not evidence): for each file and
batch size, ``load(device="cuda")`` then ``generate_batch`` of B copies of a 32-token prompt,
tokens per second by the wall clock. The decode time is a 129-token call's minus a 1-token call's
(the prompt's prefill and first token); every sequence's 128 generated tokens count. Same-run
references: the weight-bytes roofline (one step reads every weight once, whatever B: copy
bandwidth measured here over gpt_engine.bench.weight_bytes_per_token, times B) and the same
model's batch-1 ``generate`` rate (gpt_engine.bench.time_decode).

    python tests/bench/e2e_batch.py FILE.gguf [FILE ...]          (DEVICE=cpu: a smoke run)
    BATCHES="1 4 8 16" REPS=5 HOOK=linear_scatter_force VALUES="1 0" python tests/bench/e2e_batch.py ...

HOOK / VALUES: an extension test hook (ext.<HOOK>) and its settings. A model keeps its decoders,
and with them the CUDA graphs captured at its first request of a batch size, for every later
request: a hook's setting is read by the launchers at capture, so a setting changed under an
already-captured model changes nothing it replays (session 49: the first version of this script
did that, and its "A/B"s timed one setting's graphs twice). So each setting gets its own model,
loaded and captured under that setting, and the hook is set again before each of that model's
calls (anything run outside a graph reads it then); the settings' reps interleave (A B A B ...),
so drift of the card's clocks falls on each alike. Printed: the median step and the spread
(min-max) of the reps, so a difference can be read against the run's own noise.
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


def wall(m, prompt: list[int], batch: int, n: int) -> float:
    sync(m.device)
    t0 = time.perf_counter()
    m.generate_batch([prompt] * batch, max_new_tokens=n, stop_at_eos=False)
    sync(m.device)
    return time.perf_counter() - t0


def main() -> None:
    batches = [int(b) for b in os.environ.get("BATCHES", "1 4 8 16").split()]
    reps = int(os.environ.get("REPS", "5"))
    hook, values = os.environ.get("HOOK"), [int(v) for v in os.environ.get("VALUES", "").split()]
    dev = torch.device(os.environ.get("DEVICE", "cuda"))  # (DEVICE=cpu: a smoke run of the script)

    def setting(v):
        """Set the hook to v (a no-op without a hook)."""
        if hook and force(v) != v:
            sys.exit(f"{hook} {v}: not a setting of this build")

    force = None
    if hook:
        from gpt_engine.ops import _ext
        force = getattr(_ext.load(), hook)
        default = force(-1)  # (every hook ignores a value it does not know and returns its setting)
    bw = bench.copy_bandwidth(dev)
    print(f"{bench._device_name(dev)}, copy {bw:.0f} GB/s; {reps} reps a setting, interleaved")
    for path in sys.argv[1:]:
        models = {}
        for v in values or [None]:
            setting(v)
            models[v] = gpt_engine.load(path, device=dev)
        m0 = next(iter(models.values()))
        setting(next(iter(models)))
        wb = bench.weight_bytes_per_token(m0)
        step_roof = bw * 1e9 / wb  # steps a second if a step cost its weight bytes at copy speed
        tg1 = bench.time_decode(m0, N_GEN, 3)["mean"]
        prompt = bench._ids(m0, bench.TG_PROMPT, 2)
        print(f"\n{os.path.basename(path)}: weights {wb / 1e9:.3f} GB a step; generate() tg{N_GEN} {tg1:.1f} tok/s "
              f"(first setting; roofline {step_roof:.1f})")
        print(f"{'setting':>10}{'B':>4}{'tok/s':>10}{'/roofline':>10}{'/batch-1':>10}{'step us':>10}{'min-max us':>18}")
        for b in batches:
            for v, m in models.items():  # warm-up: each model's graphs captured under its setting
                setting(v)
                wall(m, prompt, b, N_GEN + 1), wall(m, prompt, b, 1)
            steps = {v: [] for v in models}
            for _ in range(reps):
                for v, m in models.items():
                    setting(v)
                    steps[v].append((wall(m, prompt, b, N_GEN + 1) - wall(m, prompt, b, 1)) / N_GEN)
            for v, s in steps.items():
                step = statistics.median(s)
                r = b / step
                print(f"{'-' if v is None else v:>10}{b:>4}{r:>10.1f}{r / (b * step_roof):>10.3f}{r / tg1:>10.2f}"
                      f"{step * 1e6:>10.1f}{f'{min(s) * 1e6:.0f}-{max(s) * 1e6:.0f}':>18}")
        del models, m0
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if force is not None:
        force(default)


if __name__ == "__main__":
    main()
