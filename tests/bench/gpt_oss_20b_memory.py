"""gpt-oss-20b-shaped file on one GPU: memory_estimate() against the measured peak, and pp512 /
tg128 with MBU (GX-002; tests/bench/test_gpt_oss_20b.py asserts on the same measurement).

    python tests/bench/gpt_oss_20b_memory.py [PATH]

PATH (else $GPT_ENGINE_GPT_OSS_20B, else $GPT_ENGINE_BENCH_MODELS/gpt-oss-20b-MXFP4.gguf with
GPT_ENGINE_BENCH_MODELS defaulting to /tmp/gpt-engine-bench-models) is reused when it exists and
written by benchmodels.make_gpt_oss (random weights, ~12.8 GiB, o200k vocabulary: needs
bpe-openai or $GPT_ENGINE_O200K_FILE) when it does not. Prints one JSON object; with $OUT set it
is also written to $OUT/gpt_oss_20b.json.

Peak: torch.cuda.max_memory_allocated() from before the load through a 512-token prompt and 128
greedy decode tokens (Model.generate: graph-captured prefill and decode), less what was allocated
before the load. The estimate is taken at n_ctx = the KV capacity the decoder allocated for that
run (Model.decoder rounds prompt + new tokens up to a multiple of 256, at least 512).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

SHAPE, QTYPE = "gpt-oss-20b", "MXFP4"
N_PROMPT, N_GEN = 512, 128
TOLERANCE = 0.05   # GX-002: the estimate within 5% of the measured peak


def model_path(arg: str | None = None) -> Path:
    """The 20b-shaped file: the argument, else $GPT_ENGINE_GPT_OSS_20B (which must exist: a wrong
    path is an error, not a reason to write 12 GiB elsewhere), else written into the benchmark
    model cache when absent."""
    from gpt_engine import benchmodels

    named = arg or os.environ.get("GPT_ENGINE_GPT_OSS_20B")
    if named:
        p = Path(named)
        if not p.is_file():
            if arg is None:
                raise FileNotFoundError(f"GPT_ENGINE_GPT_OSS_20B={named}: no such file")
            p.parent.mkdir(parents=True, exist_ok=True)
            benchmodels.make_gpt_oss(p, SHAPE, QTYPE)
        return p
    cache = os.environ.get("GPT_ENGINE_BENCH_MODELS", "/tmp/gpt-engine-bench-models")
    return benchmodels.ensure(cache, SHAPE, QTYPE)


def measure(path: Path, reps: int = 3) -> dict:
    """Load on CUDA, generate N_PROMPT + N_GEN, compare the estimate with the peak; then time
    pp512 and tg128 (gpt_engine.bench) and compute MBU from the bytes one decode step reads."""
    import gpt_engine
    from gpt_engine import bench

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    m = gpt_engine.load(path, device="cuda")
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    loaded = torch.cuda.memory_allocated() - base
    ids = bench._ids(m, N_PROMPT, 1)
    out = m.generate(ids, max_new_tokens=N_GEN, stop_at_eos=False)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    capacity = m.decoder(1, N_PROMPT + N_GEN, m.cuda_graphs).state.capacity  # the decoder just used
    est = m.memory_estimate(n_ctx=capacity)
    rel = (est["total"] - peak) / peak
    r = {"file": str(path), "size_bytes": path.stat().st_size, "load_s": load_s,
         "generated": len(out.token_ids), "kv_capacity": capacity,
         "estimate": est, "allocated_after_load": loaded, "peak_allocated": peak,
         "estimate_minus_peak_over_peak": rel, "within_tolerance": abs(rel) <= TOLERANCE,
         "peak_reserved": torch.cuda.max_memory_reserved()}
    bw = bench.copy_bandwidth("cuda")
    pp = bench.time_prefill(m, N_PROMPT, reps)
    tg = bench.time_decode(m, N_GEN, reps)
    wb = bench.weight_bytes_per_token(m)
    r.update(copy_gbps=bw, weight_bytes_per_token=wb, reps=reps,
             pp512=pp, tg128={**tg, "mbu": wb * tg["mean"] / (bw * 1e9), "roofline_tok_s": bw * 1e9 / wb})
    return r


def main(argv: list[str]) -> int:
    path = model_path(argv[0] if argv else None)
    r = measure(path)
    text = json.dumps(r, indent=2, default=str)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpt_oss_20b.json").write_text(text + "\n")
    e = r["estimate"]
    print(f"estimate {e['total'] / 2**30:.3f} GiB (weights {e['weights'] / 2**30:.3f}, KV {e['kv_cache'] / 2**20:.1f} MiB "
          f"at n_ctx {e['n_ctx']}, transient {e['transient'] / 2**20:.1f} MiB) vs peak {r['peak_allocated'] / 2**30:.3f} GiB: "
          f"{100 * r['estimate_minus_peak_over_peak']:+.2f}%; after load {r['allocated_after_load'] / 2**30:.3f} GiB",
          file=sys.stderr)
    print(f"pp512 {r['pp512']['mean']:.1f} tok/s, tg128 {r['tg128']['mean']:.1f} tok/s, MBU {r['tg128']['mbu']:.3f} "
          f"({r['weight_bytes_per_token']:,} B per token at {r['copy_gbps']:.0f} GB/s copy)", file=sys.stderr)
    return 0 if r["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
