"""GX-002 on one GPU: a gpt-oss-20b-shaped file (24 layers, 32 experts top-4, hidden 2880, 64/8
heads of 64, vocabulary 201,088; random weights, experts MXFP4, ~12.8 GiB) loads, and
memory_estimate() is within 5% of the measured peak over a 512-token prompt and 128 decode
tokens; pp512 and tg128 with MBU (bytes read per decode token: 4 of 32 experts per layer,
attention, the output matrix) are recorded as evidence.

The file is $GPT_ENGINE_GPT_OSS_20B when set (it must exist), else written once per machine into
$GPT_ENGINE_BENCH_MODELS (default /tmp/gpt-engine-bench-models) by benchmodels.ensure, as
test_e2e.py does for its models: a machine without it writes it (~12.8 GiB of disk; the o200k
vocabulary needs bpe-openai or $GPT_ENGINE_O200K_FILE, else the test errors, it never passes
without measuring). The measurement is tests/bench/gpt_oss_20b_memory.py's.
"""
import pytest
import torch

from .gpt_oss_20b_memory import N_GEN, N_PROMPT, TOLERANCE, measure, model_path

pytestmark = [pytest.mark.cuda, pytest.mark.benchmark,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]


@pytest.mark.story("GX-002")
def test_gpt_oss_20b_memory_estimate_and_throughput(bench):
    path = model_path()
    r = measure(path, reps=3)
    e, peak = r["estimate"], r["peak_allocated"]
    params = {"file_bytes": r["size_bytes"], "kv_capacity": r["kv_capacity"], "estimate": e,
              "allocated_after_load": r["allocated_after_load"], "peak_reserved": r["peak_reserved"],
              "what": f"max_memory_allocated over load + {N_PROMPT}-token prompt + {N_GEN} decode tokens"}
    bench.record("memory.gpt-oss-20b.peak", peak, "B", kind="memory", references={"estimate": e["total"]},
                 params=params)
    bench.record("memory.gpt-oss-20b.estimate_over_peak", e["total"] / peak, "x", kind="ratio", params=params)
    common = {"model": "gpt-oss-20b", "type": "MXFP4 experts, F16 matrices", "copy_gbps": r["copy_gbps"],
              "weight_bytes_per_token": r["weight_bytes_per_token"], "reps": r["reps"]}
    tg, pp = r["tg128"], r["pp512"]
    bench.record("perf.decode.gpt-oss-20b.MXFP4", tg["mean"], "tok/s", kind="throughput",
                 references={"roofline": tg["roofline_tok_s"]},
                 params={**common, "test": f"tg{N_GEN}", "sd": tg["sd"], "samples": tg["samples"], "mbu": tg["mbu"],
                         "host_us_per_token": tg.get("host_us_per_token")})
    bench.record("perf.prefill.gpt-oss-20b.MXFP4", pp["mean"], "tok/s", kind="throughput",
                 params={**common, "test": f"pp{N_PROMPT}", "sd": pp["sd"], "samples": pp["samples"]})
    assert r["generated"] == N_GEN
    assert abs(r["estimate_minus_peak_over_peak"]) <= TOLERANCE, (
        f"estimate {e['total']:,} B vs measured peak {peak:,} B ({100 * r['estimate_minus_peak_over_peak']:+.2f}%)")
