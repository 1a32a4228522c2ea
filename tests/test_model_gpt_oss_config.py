"""GX-002: gpt-oss hyper-parameters, tensor layout, inspect output and memory estimate.

Checked against the HF config that wrote each file, against llama.cpp's own figures for a
gpt-oss-20b-shaped file (llama.cpp: 20.91 B parameters, 12.83 GiB with experts MXFP4 and the rest
F16; ~3.70 GB read per decode token), and bad metadata is refused with one clear line.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import gguf
import pytest
import torch
from gguf.constants import GGMLQuantizationType as QT, GGUFValueType as VT

import gpt_engine
from gpt_engine import ops, quants, testmodels
from gpt_engine.cli import main as cli_main
from gpt_engine.config import ModelConfig, YarnScaling
from gpt_engine.errors import ModelError
from gpt_engine.gguf_file import GGUFFile, TensorInfo
from gpt_engine.models.gpt_oss import bytes_read_per_token, estimate_memory
from gpt_engine.tensor_map import check_tensors, expected_tensors
from tests.test_config import build
from tests.test_gguf_reader import RawGGUF

STORY = pytest.mark.story("GX-002")


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt-oss-cfg") / "oss.gguf"
    hf = testmodels.make_gpt_oss(path, n_layer=3, n_head=8, n_head_kv=2, n_expert=8, n_expert_used=3,
                                 n_ff=32, sliding_window=6, rope_theta=150000.0, yarn=(32.0, 4096, 30.0, 2.0))
    return path, hf.config


@STORY
def test_config_matches_the_hf_model_that_wrote_it(three_layers):
    path, hf = three_layers
    with GGUFFile(path) as f:
        c = ModelConfig.from_gguf(f)
    assert c.architecture == "gpt-oss" and c.tied_output is False
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim)
    assert (c.n_expert, c.n_expert_used, c.n_ff_expert) == (
        hf.num_local_experts, hf.num_experts_per_tok, hf.intermediate_size)
    assert c.sliding_window == hf.sliding_window
    assert [c.is_sliding(i) for i in range(c.n_layer)] == [t == "sliding_attention" for t in hf.layer_types]
    rp = hf.rope_parameters
    assert c.rope_theta == rp["rope_theta"] and c.rope_dim == hf.head_dim
    assert c.yarn == YarnScaling(factor=rp["factor"], original_context=rp["original_max_position_embeddings"],
                                 beta_fast=rp["beta_fast"], beta_slow=rp["beta_slow"])
    assert c.vocab_size == hf.vocab_size


@STORY
def test_inspect_shows_the_moe_and_attention_layout(three_layers, capsys):
    path, hf = three_layers
    assert cli_main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    layout = info["layout"]
    assert layout["attention"]["sinks"] is True
    assert layout["attention"]["sliding_window"] == 6
    assert layout["attention"]["sliding_layers"] == [0, 2] and layout["attention"]["full_layers"] == [1]
    assert layout["attention"]["rope"]["scaling"] == "yarn"
    assert {k: v for k, v in layout["ffn"].items() if k != "tensors"} == {"kind": "moe", "experts": 8, "experts_per_token": 3, "expert_ff": 32,
                             "router": "softmax over the top 3", "activation": "clamped SwiGLU (alpha 1.702, limit 7)"}
    assert cli_main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "moe: 8 experts, top 3" in text and "sliding window 6 on layers [0, 2]" in text


def _metadata(path) -> dict:
    """The file's gpt-oss.* keys as gguf-py reads them (not our reader)."""
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("gpt-oss.")}, r.tensors


@STORY
def test_inspect_values_are_the_files_metadata_and_tensors(three_layers, capsys):
    """Every MoE and attention figure inspect shows, against gguf-py's reading of the same file:
    the metadata keys, the expert/router tensors' shapes, types and bytes, the sliding layers
    from the window pattern rule, and the bytes a decode step reads (k of E experts)."""
    path, _ = three_layers
    md, tensors = _metadata(path)
    by_name = {t.name: t for t in tensors}
    assert cli_main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    a, ffn = info["layout"]["attention"], info["layout"]["ffn"]
    assert (a["heads"], a["kv_heads"], a["head_dim"]) == (
        md["gpt-oss.attention.head_count"], md["gpt-oss.attention.head_count_kv"], md["gpt-oss.attention.key_length"])
    assert a["sliding_window"] == md["gpt-oss.attention.sliding_window"]
    n_layer = md["gpt-oss.block_count"]
    assert a["sliding_layers"] == [i for i in range(n_layer) if i % 2 == 0]   # no pattern key: period 2
    assert a["sinks"] is True and all(f"blk.{i}.attn_sinks.weight" in by_name for i in range(n_layer))
    r = a["rope"]
    assert r["theta"] == pytest.approx(md["gpt-oss.rope.freq_base"])
    assert (r["scaling"], r["factor"], r["original_context"], r["beta_fast"], r["beta_slow"]) == (
        md["gpt-oss.rope.scaling.type"], pytest.approx(md["gpt-oss.rope.scaling.factor"]),
        md["gpt-oss.rope.scaling.original_context_length"], pytest.approx(md["gpt-oss.rope.scaling.yarn_beta_fast"]),
        pytest.approx(md["gpt-oss.rope.scaling.yarn_beta_slow"]))
    assert (ffn["experts"], ffn["experts_per_token"], ffn["expert_ff"]) == (
        md["gpt-oss.expert_count"], md["gpt-oss.expert_used_count"], md["gpt-oss.expert_feed_forward_length"])
    t = ffn["tensors"]
    E, k = md["gpt-oss.expert_count"], md["gpt-oss.expert_used_count"]
    for kind in ("gate", "up", "down"):
        layers = [by_name[f"blk.{i}.ffn_{kind}_exps.weight"] for i in range(n_layer)]
        e = t["experts"][kind]
        assert e["shape"] == [int(x) for x in reversed(layers[0].shape)]        # gguf-py gives ggml order
        assert e["type"] == layers[0].tensor_type.name == "MXFP4"
        assert e["bytes"] == sum(int(x.n_bytes) for x in layers)
        assert e["bytes_per_expert"] * E == int(layers[0].n_bytes)
        assert e["bias_type"] == by_name[f"blk.0.ffn_{kind}_exps.bias"].tensor_type.name
    router = by_name["blk.0.ffn_gate_inp.weight"]
    assert t["router"]["shape"] == [int(x) for x in reversed(router.shape)] and t["router"]["type"] == router.tensor_type.name
    total = sum(int(x.n_bytes) for x in tensors)
    stacks = sum(int(x.n_bytes) for x in tensors if "_exps.weight" in x.name)
    assert t["expert_bytes"] == stacks and t["other_bytes"] == total - stacks
    # a decode step: k of E of every expert tensor (weights and biases), one embedding row, the rest
    emb = by_name["token_embd.weight"]
    per_layer_expert = [int(x.n_bytes) for x in tensors if "_exps." in x.name]
    want = (total - sum(per_layer_expert) + sum(n * k // E for n in per_layer_expert)
            - int(emb.n_bytes) + int(emb.n_bytes) // int(emb.shape[1]))
    assert t["bytes_read_per_token"] == want
    assert cli_main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    line = {ln[:14].strip(): ln[14:] for ln in text.splitlines() if ln[:1].isalpha()}
    assert "8 heads, 2 kv heads, head dim 16, sinks, sliding window 6 on layers [0, 2], rope theta 150000 " \
           "with yarn x32 (original context 4096, beta 30/2, attention factor 1.34657)" == line["attention"]
    assert line["experts"].startswith("gate 8x32x64 MXFP4 (1.06 KiB per expert per layer, bias F32), up 8x32x64 MXFP4")
    assert line["router"] == "8x64 F32 (bias F32) per layer"
    assert line["per token"].startswith(f"{want / 1e6:.1f} MB of weights read per decoded token (3 of 8 experts")


# --------------------------------------------------------------------------- bad metadata

OSS_KEYS = {
    "gpt-oss.block_count": 2, "gpt-oss.embedding_length": 8, "gpt-oss.feed_forward_length": 32,
    "gpt-oss.context_length": 64, "gpt-oss.attention.head_count": 4, "gpt-oss.attention.head_count_kv": 2,
    "gpt-oss.expert_count": 4, "gpt-oss.expert_used_count": 2, "gpt-oss.expert_feed_forward_length": 32,
    "gpt-oss.attention.sliding_window": 8,
}
EPS = {"gpt-oss.attention.layer_norm_rms_epsilon": 1e-5}


def s(text: str):
    return RawGGUF.s(text)


@STORY
@pytest.mark.parametrize("missing", ["gpt-oss.expert_count", "gpt-oss.expert_used_count",
                                     "gpt-oss.expert_feed_forward_length", "gpt-oss.attention.sliding_window"])
def test_missing_moe_or_window_key_is_named(tmp_path, missing):
    ints = {k: v for k, v in OSS_KEYS.items() if k != missing}
    with pytest.raises(ModelError, match=f"required metadata key '{missing}' is missing"):
        ModelConfig.from_gguf(build(tmp_path, "gpt-oss", ints, EPS))


@STORY
def test_defaults_follow_llama_cpp(tmp_path):
    c = ModelConfig.from_gguf(build(tmp_path, "gpt-oss", OSS_KEYS, EPS))
    assert c.sliding_period == 2 and [c.is_sliding(i) for i in range(4)] == [True, False, True, False]
    assert c.yarn is None and c.rope_theta == 10000.0
    yarn = [("gpt-oss.rope.scaling.type", VT.STRING, s("yarn"))]
    c = ModelConfig.from_gguf(build(tmp_path, "gpt-oss", {**OSS_KEYS, "gpt-oss.rope.scaling.original_context_length": 4096},
                                    {**EPS, "gpt-oss.rope.scaling.factor": 32.0}, extra=yarn))
    assert c.yarn == YarnScaling(factor=32.0, original_context=4096, beta_fast=32.0, beta_slow=1.0)


@STORY
@pytest.mark.parametrize("ints,floats,extra,match", [
    ({"gpt-oss.expert_used_count": 5}, {}, [], "expert_used_count' is 5, more than the 4 experts"),
    ({"gpt-oss.attention.key_length": 4, "gpt-oss.rope.dimension_count": 2}, {}, [],
     "rope.dimension_count' is 2; gpt-oss rotates the whole head"),
    ({"gpt-oss.attention.key_length": 2, "gpt-oss.attention.value_length": 4}, {}, [], "value_length' is 4"),
    ({}, {"gpt-oss.rope.freq_base_swa": 5.0}, [], "separate rope base for sliding layers"),
    ({}, {}, [("gpt-oss.rope.scaling.type", VT.STRING, s("linear"))], "scaling.type' is 'linear'"),
    ({"gpt-oss.rope.scaling.original_context_length": 64}, {"gpt-oss.rope.scaling.factor": 4.0,
                                                          "gpt-oss.rope.scaling.yarn_ext_factor": 0.5},
     [("gpt-oss.rope.scaling.type", VT.STRING, s("yarn"))], "yarn_ext_factor' = 0.5 is not supported"),
    ({}, {"gpt-oss.rope.scaling.factor": 4.0}, [("gpt-oss.rope.scaling.type", VT.STRING, s("yarn"))],
     "original_context_length' is missing"),
    ({"gpt-oss.rope.scaling.original_context_length": 64}, {"gpt-oss.rope.scaling.factor": 0.5},
     [("gpt-oss.rope.scaling.type", VT.STRING, s("yarn"))], "factor >= 1"),
])
def test_unsupported_metadata_is_refused(tmp_path, ints, floats, extra, match):
    with pytest.raises(ModelError, match=match) as ei:
        ModelConfig.from_gguf(build(tmp_path, "gpt-oss", {**OSS_KEYS, **ints}, {**EPS, **floats}, extra=extra))
    assert "\n" not in str(ei.value)


@STORY
def test_missing_and_misshaped_tensors_are_named(three_layers):
    path, _ = three_layers
    with GGUFFile(path) as f:
        c = ModelConfig.from_gguf(f)
        tensors = dict(f.tensors)
    check_tensors(c, tensors, path)  # the generated file is complete
    del tensors["blk.1.attn_sinks.weight"], tensors["output.weight"]
    with pytest.raises(ModelError, match="missing tensors: blk.1.attn_sinks.weight, output.weight"):
        check_tensors(c, tensors, path)
    with GGUFFile(path) as f:
        tensors = dict(f.tensors)
    t = tensors["blk.0.ffn_down_exps.weight"]
    tensors[t.name] = TensorInfo(t.name, (8, 32, 64), t.qtype, t.offset, t.nbytes)
    with pytest.raises(ModelError, match=r"blk.0.ffn_down_exps.weight has shape \(8, 32, 64\), expected \(8, 64, 32\)"):
        check_tensors(c, tensors, path)


# --------------------------------------------------------------------------- memory

def gpt_oss_20b_table():
    """A gpt-oss-20b-shaped file's tensor table, types as llama.cpp's converter writes them:
    experts MXFP4, other matrices F16, the router, norms, sinks and every bias F32."""
    cfg = ModelConfig(architecture="gpt-oss", n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
                      n_ff=2880, n_ctx=131072, norm_eps=1e-5, vocab_size=201088, rope_theta=150000.0, rope_dim=64,
                      tied_output=False, name="gpt-oss-20b-shape", n_expert=32, n_expert_used=4, n_ff_expert=2880,
                      sliding_window=128, sliding_period=2,
                      yarn=YarnScaling(factor=32.0, original_context=4096, beta_fast=32.0, beta_slow=1.0))

    def qtype(name, shape):
        if "_exps.weight" in name:
            return QT.MXFP4
        if len(shape) == 1 or name.endswith(".bias") or "ffn_gate_inp" in name:
            return QT.F32
        return QT.F16

    tensors = {}
    for name, shape in expected_tensors(cfg).items():
        qt = qtype(name, shape)
        tensors[name] = TensorInfo(name, shape, qt, 0, quants.tensor_nbytes(shape, qt))

    class Table:
        pass

    f = Table()
    f.tensors = tensors
    return f, cfg


@STORY
def test_20b_shape_matches_llama_cpps_figures():
    """llama.cpp reports 20.91 B parameters and 12.83 GiB for this file; about 3.70 GB
    are read per decode token (four experts per layer, attention, the whole output matrix)."""
    f, cfg = gpt_oss_20b_table()
    params = sum(t.n_elements for t in f.tensors.values())
    size = sum(t.nbytes for t in f.tensors.values())
    assert round(params / 1e9, 2) == 20.91
    assert round(size / 2**30, 2) == 12.83
    assert bytes_read_per_token(f, cfg) == pytest.approx(3.70e9, rel=0.01)


@STORY
def test_20b_memory_estimate_components():
    """The estimate for fp16 on the GPU, from the table: weights at file size except biases
    and the norms fused into ops.linear (attn_norm, output_norm) held in fp16, sinks and
    post_attention_norm fp32, plus the fp32 RoPE tables over 131,072 positions; KV for every
    layer at n_ctx; one expert matrix dequantized through fp32 plus the logits row (on the GPU
    the grouped prefill MoE's temporaries when larger)."""
    f, cfg = gpt_oss_20b_table()
    est = estimate_memory(f, cfg, torch.float16, n_ctx=4096)
    biases = sum(t.n_elements for n, t in f.tensors.items() if n.endswith(".bias") and "ffn_gate_inp" not in n)
    fused_norms = 25 * 2880
    file_size = sum(t.nbytes for t in f.tensors.values())
    # F32 biases and fused norms held as fp16; cos and sin [131072, 32] fp32
    assert est["weights"] == file_size - (biases + fused_norms) * 2 + 2 * 131072 * 32 * 4
    assert est["kv_cache"] == 2 * 24 * 8 * 64 * 4096 * 2
    assert est["transient"] == 2880 * 2880 * (4 + 2) + 201088 * (2 + 4)
    assert est["total"] == est["weights"] + est["kv_cache"] + est["transient"]
    # on the GPU: a 2048-token pass of the grouped-GEMM MoE (ops.moe_grouped): 2048 x 4 pairs,
    # their order and dest (int32 each), 32 expert counts (int32), the pairs' fp32 down rows
    # [8192, 2880] and their fp16 SwiGLU activations [8192, 2880]
    gpu = estimate_memory(f, cfg, torch.float16, n_ctx=4096, device="cuda")
    pairs = 2048 * 4
    assert gpu["transient"] == pairs * 8 + 32 * 4 + pairs * 2880 * 4 + pairs * 2880 * 2
    # with the grouped GEMM off, the all-experts path: fp32 sums and their fp16 copy, routing
    # [rows, 32] fp32 + bool, the down phase (SwiGLU and y in fp16 with 2 fp32 copies of y) and
    # one expert matrix in fp16
    from gpt_engine.models import gpt_oss
    old = gpt_oss.MOE_GROUPED_GEMM
    try:
        gpt_oss.MOE_GROUPED_GEMM = False
        off = estimate_memory(f, cfg, torch.float16, n_ctx=4096, device="cuda")
    finally:
        gpt_oss.MOE_GROUPED_GEMM = old
    assert off["transient"] == 2048 * (2880 * 6 + 32 * 5 + 2 * 2880 * 2 + 2 * 2880 * 4) + 2880 * 2880 * 2
    assert gpu["weights"] == est["weights"] and gpu["kv_cache"] == est["kv_cache"]


@STORY
def test_estimated_weights_are_what_the_loaded_model_holds(three_layers):
    path, _ = three_layers
    m = gpt_engine.load(path)
    held = 0
    objs = [m.net.embd, m.net.head, m.net.norm.weight, m.net.rope_cos, m.net.rope_sin]
    for L in m.net.layers:
        for v in vars(L).values():
            objs += list(v) if isinstance(v, list) else [v.weight] if isinstance(v, ops.Norm) else [v]
    for obj in objs:
        if hasattr(obj, "weight") and hasattr(obj, "bias"):  # an expert stack
            held += obj.weight.nbytes + obj.bias.numel() * obj.bias.element_size()
        elif hasattr(obj, "nbytes") and hasattr(obj, "qtype"):
            held += obj.nbytes
        elif isinstance(obj, torch.Tensor):
            held += obj.numel() * obj.element_size()
    assert m.memory_estimate()["weights"] == held
    assert m.memory_estimate(n_ctx=100)["kv_cache"] == m.new_cache(100).nbytes()
