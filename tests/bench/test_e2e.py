"""End-to-end throughput through the public API (GT-048, GX-003): ``gpt_engine.load(...,
device="cuda")`` then ``generate()``, timed by the wall clock (gpt_engine/bench.py), on random
GGUFs of real shapes with the real GPT-2 vocabulary (gpt_engine/benchmodels.py). References
measured in this run: the roofline (weight bytes per token at the copy bandwidth measured here;
for prefill, 2 FLOP per weight per token at the matmul rate measured here), our eager decode
path (same kernels, no graph), transformers fp16 eager on the same weights, and for the GPT-2
shapes a gpt-fast-style static-cache decoder under torch.compile(mode="reduce-overhead").
llama.cpp's figures (same card kind, measured in an earlier session) ride along in params: they
were not measured in this run, so they are not references.

The model files are written once per machine into $GPT_ENGINE_BENCH_MODELS (default
/tmp/gpt-engine-bench-models) and reused by later runs on a warm machine.
"""
import math
import os

import pytest
import torch

import gpt_engine
from gpt_engine import bench as e2e
from gpt_engine import benchmodels

from . import _peers

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.benchmark, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")]
CACHE = os.environ.get("GPT_ENGINE_BENCH_MODELS", "/tmp/gpt-engine-bench-models")
REPS = 5
N_PROMPT, N_GEN = 512, 128
# llama.cpp CUDA on an H200 (measured 2026-12-01 by an earlier session): tg128, pp512
LLAMACPP = {("gpt2-124m", "F16"): (1661, 164e3), ("gpt2-1.5b", "F16"): (330, 34.4e3),
            ("gpt2-1.5b", "Q8_0"): (367, 22.4e3), ("gpt2-1.5b", "MXFP4"): (415, None),
            ("gpt2-124m", "Q8_0"): (1951, None), ("gpt2-124m", "MXFP4"): (1769, None),
            ("smollm2-135m", "F16"): (948, 83e3), ("smollm2-135m", "Q8_0"): (935, 50e3),
            ("llama-1b", "F16"): (864, 65e3)}
COMPILED_PEER = {"gpt2-124m"}  # compiling costs ~1 min of GPU time per model; the peer bar is set on 124M
MODELS = [("gpt2-124m", "F16"), ("gpt2-1.5b", "F16"), ("smollm2-135m", "F16"), ("llama-1b", "F16"),
          # the quantized weights' figures (the packed GEMV through the public API)
          ("gpt2-124m", "Q8_0"), ("gpt2-124m", "MXFP4"), ("gpt2-1.5b", "Q8_0"), ("gpt2-1.5b", "MXFP4"),
          # the Q4_K_M-style mix (benchmodels.plan: on GPT-2 1.5B's 1600-wide rows mostly the Q5_0 / Q5_1
          # fallbacks, Q4_K / Q6_K on the 6400-wide ffn_down, the tied head Q8_0)
          ("gpt2-1.5b", "Q4_K_M")]


def _matmul_params(m) -> int:
    """Weights multiplied per token: every weight except the tables a token only gathers a row
    from (position_embd; token_embd unless it is also the LM head)."""
    skip = {"position_embd.weight"} | (set() if m.config.tied_output else {"token_embd.weight"})
    return sum(math.prod(t.shape) for name, t in m.gguf.tensors.items() if name not in skip)


@pytest.mark.story("GT-048", "GX-003")
@pytest.mark.parametrize("shape,qtype", MODELS, ids=lambda v: str(v))
def test_end_to_end_throughput(bench, shape, qtype):
    path = benchmodels.ensure(CACHE, shape, qtype)
    torch.cuda.reset_peak_memory_stats()
    m = gpt_engine.load(path, device="cuda")
    bw = bench.copy_bandwidth()  # GB/s, this run, this card
    wb = e2e.weight_bytes_per_token(m)
    roofline = bw * 1e9 / wb

    pp = e2e.time_prefill(m, N_PROMPT, REPS)
    tg = e2e.time_decode(m, N_GEN, REPS)
    peak = torch.cuda.max_memory_allocated()
    prompt = e2e._ids(m, e2e.TG_PROMPT, 2)
    ours_ids = m.generate(prompt, max_new_tokens=N_GEN, stop_at_eos=False).token_ids

    m.cuda_graphs = False  # the eager path: same step, no graph
    eager = e2e.time_decode(m, 32, 2)
    m.cuda_graphs = True

    hf = _peers.hf_model(m)
    hf_tg, hf_ids = _peers.hf_decode(hf, prompt, N_GEN)
    hf_pp = _peers.hf_prefill(hf, e2e._ids(m, N_PROMPT, 1))
    del hf
    refs = {"roofline": roofline, "eager": eager["mean"], "hf": hf_tg}
    agree = {"hf_greedy_agree": sum(a == b for a, b in zip(ours_ids, hf_ids)) / N_GEN}
    compiled_warm = None
    if shape in COMPILED_PEER:
        c_tg, c_ids, compiled_warm = _peers.compiled_decode(m, prompt, N_GEN)
        refs["compiled"] = c_tg
        agree["compiled_greedy_agree"] = sum(a == b for a, b in zip(ours_ids, c_ids)) / N_GEN
    torch.cuda.empty_cache()

    llama_tg, llama_pp = LLAMACPP.get((shape, qtype), (None, None))
    common = {"model": shape, "type": qtype, "params": e2e.n_params(m), "weight_bytes_per_token": wb,
              "copy_gbps": bw, "reps": REPS, "peak_memory_bytes": peak, "llamacpp_same_card_kind_earlier_run": None}
    bench.record(f"perf.decode.{shape}.{qtype}", tg["mean"], "tok/s", kind="throughput", references=refs,
                 params={**common, "test": f"tg{N_GEN}", "prompt": e2e.TG_PROMPT, "sd": tg["sd"],
                         "samples": tg["samples"], "mbu": tg["mean"] / roofline,
                         "host_us_per_token": tg.get("host_us_per_token"), **agree,
                         "compiled_warmup_s": compiled_warm, "llamacpp_same_card_kind_earlier_run": llama_tg})
    flops_rate = bench.matmul_rate() * 1e12  # FLOP/s, bf16 8192^3, this run
    prefill_refs = {"hf": hf_pp, "roofline": flops_rate / (2 * _matmul_params(m))}
    bench.record(f"perf.prefill.{shape}.{qtype}", pp["mean"], "tok/s", kind="throughput", references=prefill_refs,
                 params={**common, "test": f"pp{N_PROMPT}", "sd": pp["sd"], "samples": pp["samples"],
                         "matmul_params": _matmul_params(m), "llamacpp_same_card_kind_earlier_run": llama_pp})
    # GX-003: the graph against the eager step and the roofline; host work per token
    bench.record(f"decode_graph.{shape}.{qtype}", tg["mean"], "tok/s", kind="throughput",
                 references={"eager": eager["mean"], "roofline": roofline},
                 params={"eager_sd": eager["sd"], "graph_sd": tg["sd"], "weight_bytes_per_token": wb})
    if tg.get("host_us_per_token") is not None:
        bench.record(f"decode_host.{shape}.{qtype}", tg["host_us_per_token"], "us", kind="time",
                     params={"what": "median host time per decode token inside Decoder.run, waits for the GPU "
                                     "excluded: the device loop (the default) reads the token's ring row, "
                                     "checks it and yields; the host loop also replays and queues the copy"})
    assert tg["mean"] > 0 and pp["mean"] > 0
    assert agree["hf_greedy_agree"] > 0  # the peer computes the same model (random-weight near-ties aside)
