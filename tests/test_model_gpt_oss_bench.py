"""GX-002: the gpt-oss benchmark file (benchmodels.make_gpt_oss), `gpt-engine bench` on a gpt-oss
file, and the memory the CPU model holds against memory_estimate().

The 20b-shaped file (12.8 GiB) is written on the GPU machine (tests/bench/test_gpt_oss_20b.py);
here the same writer runs on the tiny shape, and the 20b tensor plan is checked against the
tensor map and llama.cpp's figures without writing it.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

import gpt_engine
from gpt_engine import benchmodels, quants
from gpt_engine.cli import main as cli_main
from gpt_engine.config import ModelConfig, YarnScaling
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.models.gpt_oss import GptOss, bytes_read_per_token
from gpt_engine.qweight import cache_policy
from gpt_engine.tensor_map import expected_tensors

STORY = pytest.mark.story("GX-002")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return benchmodels.ensure(tmp_path_factory.mktemp("oss-bench"), "gpt-oss-tiny", "MXFP4")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the writer

@STORY
def test_20b_plan_is_the_tensor_map_with_llama_cpps_sizes():
    """The 20b shape's tensors are exactly what the loader expects for its config (names and
    shapes), with the converter's types, 20.91 B parameters and 12.83 GiB (llama.cpp's figures)."""
    s = benchmodels.GPT_OSS_SHAPES["gpt-oss-20b"]
    cfg = ModelConfig(architecture="gpt-oss", n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
                      n_ff=2880, n_ctx=131072, norm_eps=1e-5, vocab_size=201088, rope_theta=150000.0, rope_dim=64,
                      tied_output=False, name="x", n_expert=32, n_expert_used=4, n_ff_expert=2880,
                      sliding_window=128, sliding_period=2,
                      yarn=YarnScaling(factor=32.0, original_context=4096, beta_fast=32.0, beta_slow=1.0))
    assert (s["n_layer"], s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_expert"],
            s["n_expert_used"], s["sliding_window"]) == (24, 2880, 64, 8, 64, 32, 4, 128)
    plan = benchmodels.gpt_oss_tensors("gpt-oss-20b")
    assert {n: tuple(shape) for n, shape, _ in plan} == {n: tuple(v) for n, v in expected_tensors(cfg).items()}
    for name, shape, qt in plan:
        want = "MXFP4" if "_exps.weight" in name else "F32" if len(shape) == 1 or name.endswith(".bias") or \
            "ffn_gate_inp" in name else "F16"
        assert qt == want, name
    params = sum(int(np.prod(shape)) for _, shape, _ in plan)
    size = sum(quants.tensor_nbytes(shape, gguf.GGMLQuantizationType[qt]) for _, shape, qt in plan)
    assert round(params / 1e9, 2) == 20.91 and round(size / 2**30, 2) == 12.83
    assert size == 13_779_630_336  # docs/gpt_oss.md


@STORY
def test_tiny_file_has_the_converters_metadata_and_valid_random_weights(tiny):
    r = gguf.GGUFReader(tiny)
    md = {k: f.contents() for k, f in r.fields.items()}
    s = benchmodels.GPT_OSS_SHAPES["gpt-oss-tiny"]
    assert md["general.architecture"] == "gpt-oss"
    assert md["general.file_type"] == gguf.LlamaFileType.MOSTLY_MXFP4_MOE
    assert md["tokenizer.ggml.pre"] == "gpt-4o" and len(md["tokenizer.ggml.tokens"]) == 201088
    assert (md["gpt-oss.block_count"], md["gpt-oss.embedding_length"], md["gpt-oss.expert_count"],
            md["gpt-oss.expert_used_count"], md["gpt-oss.attention.sliding_window"]) == (
        s["n_layer"], s["n_embd"], s["n_expert"], s["n_expert_used"], s["sliding_window"])
    assert md["gpt-oss.rope.scaling.type"] == "yarn" and md["gpt-oss.rope.freq_base"] == 150000.0
    with GGUFFile(tiny) as f:
        plan = benchmodels.gpt_oss_tensors("gpt-oss-tiny")
        assert [n for n, _, _ in plan] == list(f.tensors)
        for name, shape, qt in plan:
            t = f.tensors[name]
            assert (tuple(t.shape), t.qtype.name) == (tuple(shape), qt), name
        experts = quants.dequantize_tensor(f, "blk.1.ffn_up_exps.weight")
        scales = torch.from_numpy(f.tensor_data("blk.1.ffn_up_exps.weight").copy()).reshape(-1, 17)[:, 0]
        head = quants.dequantize_tensor(f, "output.weight")
    assert torch.isfinite(experts).all() and 0.005 < float(experts.std()) < 0.2
    assert set(scales.unique().tolist()) == {118, 119, 120, 121, 122}
    assert torch.isfinite(head).all() and 2 ** -7 <= float(head.abs().min()) and float(head.abs().max()) < 2 ** -5


@STORY
def test_writer_is_deterministic_whatever_the_thread_count(tiny, tmp_path, monkeypatch):
    """Pieces carry their own seeds: one thread or three write the same bytes; pieces smaller
    than a tensor (a small _CHUNK) change nothing in what is written but the piece seeds."""
    one = benchmodels.make_gpt_oss(tmp_path / "a.gguf", "gpt-oss-tiny", threads=1)
    assert _sha(one) == _sha(tiny)
    monkeypatch.setattr(benchmodels, "_CHUNK", 1 << 12)   # many pieces per tensor
    a = benchmodels.make_gpt_oss(tmp_path / "b.gguf", "gpt-oss-tiny", threads=1)
    b = benchmodels.make_gpt_oss(tmp_path / "c.gguf", "gpt-oss-tiny", threads=3)
    assert _sha(a) == _sha(b) and a.stat().st_size == tiny.stat().st_size
    with pytest.raises(ValueError, match="MXFP4 experts only"):
        benchmodels.make(tmp_path / "d.gguf", "gpt-oss-tiny", "F16")


@STORY
def test_tiny_file_loads_and_generates(tiny):
    m = gpt_engine.load(tiny)
    assert m.config.architecture == "gpt-oss" and m.config.vocab_size == 201088
    lg = m.logits(list(range(1000, 1040)))
    assert torch.isfinite(lg).all()
    out = m.generate("Hello world", max_new_tokens=6, stop_at_eos=False)
    assert len(out.token_ids) == 6 and all(0 <= t < 201088 for t in out.token_ids)


# --------------------------------------------------------------------------- bench

@STORY
def test_bench_runs_gpt_oss_and_counts_only_the_chosen_experts(tiny, capsys):
    """`gpt-engine bench -p 16 -n 4 -r 1` on a gpt-oss file: both tests timed, MBU from the bytes
    one decode step reads (k of E experts per layer, attention, the output matrix), never the
    whole file; the type column names the expert type."""
    assert cli_main(["bench", str(tiny), "-p", "16", "-n", "4", "-r", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["architecture"] == "gpt-oss" and r["type"] == "F16+F32+MXFP4"  # matrices F16, routers and expert biases F32, experts MXFP4
    assert set(r["tests"]) == {"pp16", "tg4"}
    for t in r["tests"].values():
        assert t["mean"] > 0 and len(t["samples"]) == 1
    tg = r["tests"]["tg4"]
    wb = r["weight_bytes_per_token"]
    assert tg["mbu"] == pytest.approx(wb * tg["mean"] / (r["copy_gbps"] * 1e9))
    # on the CPU the dense cache holds the F16 matrices (attention, output) as float32: read at 4 bytes
    with GGUFFile(tiny) as f:
        s = benchmodels.GPT_OSS_SHAPES["gpt-oss-tiny"]
        file_figure = bytes_read_per_token(f, SimpleNamespace(n_expert=s["n_expert"], n_expert_used=s["n_expert_used"]))
        f16 = [t for n, t in f.tensors.items() if t.qtype.name == "F16" and n != "token_embd.weight"]
        assert wb == file_figure + sum(t.n_elements * 2 for t in f16)
        experts = sum(t.nbytes for n, t in f.tensors.items() if "_exps.weight" in n)
        skipped = experts * (s["n_expert"] - s["n_expert_used"]) // s["n_expert"]
        assert file_figure <= sum(t.nbytes for t in f.tensors.values()) - skipped
    assert cli_main(["bench", str(tiny), "-p", "16", "-n", "4", "-r", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | size | params | type | test | t/s | MBU |"
    assert "| F16+F32+MXFP4 | pp16 |" in table[2] and "| F16+F32+MXFP4 | tg4 |" in table[3]
    assert f"weights read per token {wb / 1e6:.1f} MB" in table[-1]


@STORY
def test_on_the_gpu_mbu_counts_the_files_bytes_for_the_chosen_experts(tiny):
    """The CUDA branch of GptOss.bytes_read_per_token (no GPU needed): the file figure, which for
    the 20b shape is 3,714,842,496 B (test_20b_shape_matches_llama_cpps_figures)."""
    with GGUFFile(tiny) as f:
        cfg = ModelConfig.from_gguf(f)
        gpu = SimpleNamespace(device=torch.device("cuda"), _file=f, cfg=cfg, dtype=torch.float16)
        assert GptOss.bytes_read_per_token(gpu) == bytes_read_per_token(f, cfg)


# --------------------------------------------------------------------------- memory on the CPU

@STORY
def test_cpu_dense_cache_is_what_the_estimate_says(tiny):
    """After a generation on the CPU the dense cache holds exactly the estimate's dense_cache
    (the F16 attention and output matrices as float32; experts and the embedding are never
    cached), the KV cache
    of n positions is the estimate's kv_cache at n_ctx = n, and the total adds up."""
    m = gpt_engine.load(tiny)
    est0 = m.memory_estimate()
    m.generate("Hello world", max_new_tokens=4, stop_at_eos=False)
    held = cache_policy(m.gguf).nbytes
    f16 = [t for n, t in m.gguf.tensors.items() if t.qtype.name == "F16" and n != "token_embd.weight"]
    assert held == est0["dense_cache"] == sum(t.n_elements * 4 for t in f16)
    for L in m.net.layers:
        assert all(st.weight.cached_nbytes == 0 for st in (L.gate, L.up, L.down))
    assert m.net.embd.cached_nbytes == 0
    est = m.memory_estimate(n_ctx=64)
    assert est["kv_cache"] == m.new_cache(64).nbytes()
    assert est["total"] == est["weights"] + est["dense_cache"] + est["kv_cache"] + est["transient"]


@STORY
def test_cpu_dense_cache_leaves_out_packed_q4_matrices(tmp_path):
    """With Q4_0 attention and output matrices (a Q4_0 file's non-expert tensors), the float32
    CPU products read those blocks packed (gpt_engine/cpu_q4.py) and the dense cache holds none
    of them: the estimate's dense_cache is what the cache holds after a generation, and the bytes
    a decode step reads count them packed."""
    from gpt_engine import cpu_q4, testmodels
    from gpt_engine.models.gpt_oss import _dense_cached

    if cpu_q4._compiler() is None:  # only a missing compiler skips: a failed build fails below
        pytest.skip("no C compiler: the float32 Q4 CPU kernel cannot be built")
    assert cpu_q4.available(), "a C compiler is here but the float32 Q4 CPU kernel did not build or load"
    path = tmp_path / "oss-q4_0.gguf"
    testmodels.make_gpt_oss(path, qtype="Q4_0", n_embd=64, n_ff=64, head_dim=32)
    m = gpt_engine.load(path)
    q4 = [n for n, t in m.gguf.tensors.items() if t.qtype.name == "Q4_0" and "_exps." not in n]
    assert q4, "the file has no Q4_0 non-expert matrix to check"
    assert not any(_dense_cached(n, m.gguf.tensors[n], m.gguf.tensors, torch.float32) for n in q4)
    est0 = m.memory_estimate()
    m.generate("Hello world", max_new_tokens=4, stop_at_eos=False)
    assert cache_policy(m.gguf).nbytes == est0["dense_cache"]
    assert all(L.o.cached_nbytes == 0 for L in m.net.layers)
