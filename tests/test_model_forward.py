"""GT-026: full-model forward vs transformers on the same weights.

Oracle: transformers loading the same GGUF file with its own loader (gguf-py
dequantization for quantized files), run in float32 on the CPU.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import gpt_engine
from gpt_engine import testmodels
from gpt_engine.errors import ContextOverflowError, EngineError
from tests.tolerances import tol

# (arch, qtype, extra generator args): K-quants need rows that are multiples of 256
CASES = [
    ("gpt2", "F32", {}), ("gpt2", "F16", {}), ("gpt2", "Q8_0", {}), ("gpt2", "Q4_0", {}),
    ("gpt2", "Q4_1", {}), ("gpt2", "MXFP4", {}), ("gpt2", "Q4_K", {"n_embd": 256}),
    ("gpt2", "Q6_K", {"n_embd": 256}), ("gpt2", "F32", {"tied": False}),
    ("llama", "F32", {}), ("llama", "F16", {}), ("llama", "Q8_0", {}), ("llama", "Q4_1", {}),
    ("llama", "MXFP4", {}), ("llama", "Q4_K", {"n_embd": 256, "n_ff": 512}),
    ("llama", "Q6_K", {"n_embd": 256, "n_ff": 512}), ("llama", "F32", {"tied": True}),
    ("llama", "F32", {"n_head": 4, "n_head_kv": 4}),  # MHA layout through the same GQA path
]


def _ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


@pytest.mark.story("GT-026")
@pytest.mark.parametrize("arch,qtype,kw", CASES, ids=[f"{a}-{q}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
                                                      for a, q, kw in CASES])
def test_logits_match_transformers(models, arch, qtype, kw):
    path = models.path(arch, qtype, **kw)
    m = gpt_engine.load(path)
    ids = _ids(37, m.config.vocab_size, seed=zlib.crc32(f"{arch}-{qtype}".encode()) % 1000)  # hash() of a str is salted per process
    ours = m.logits(ids)
    with torch.no_grad():
        ref = models.oracle(path)(torch.tensor([ids])).logits[0]
    assert ours.shape == (len(ids), m.config.vocab_size) and ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    err = (ours - ref).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"max |ours - transformers| = {err:.3g}"


@pytest.mark.story("GX-001", "GT-026")
def test_llama3_rope_factors_match_transformers(tmp_path):
    """A Llama 3.1-style file: ``rope_freqs.weight`` holds the per-pair factors llama.cpp's converter
    writes for rope_type "llama3" (testmodels.llama3_rope_factors), with an original context of 32
    so that 60 positions reach the scaled frequencies. Our logits against transformers'
    LlamaForCausalLM with that rope on the same weights (its own llama3 frequencies; transformers'
    GGUF loader does not read the tensor, so the model the file was written from is the oracle),
    and the factors are in effect: without them the logits move by far more than the bound."""
    hf = testmodels.make_llama(tmp_path / "l3.gguf", llama3_orig_ctx=32)
    testmodels.make_llama(tmp_path / "plain.gguf")  # the same weights, plain RoPE
    m = gpt_engine.load(tmp_path / "l3.gguf")
    ids = _ids(60, m.config.vocab_size, seed=7)
    ours = m.logits(ids)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    err = (ours - ref).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"max |ours - transformers| = {err:.3g}"
    plain = gpt_engine.load(tmp_path / "plain.gguf").logits(ids)
    assert (plain - ref).abs().max().item() > 100 * tol("logits_max_abs_f32")


@pytest.mark.story("GT-026")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefill_then_decode_equals_full_forward(models, arch):
    m = gpt_engine.load(models.path(arch, "F32"))
    ids = _ids(20, m.config.vocab_size, seed=3)
    full = m.logits(ids)
    cache = m.new_cache(len(ids))
    got = [m.step(ids[:8], cache)]
    for t in ids[8:]:
        got.append(m.step([t], cache))
    stepped = torch.stack(got)
    assert cache.length == len(ids)
    err = (stepped - full[7:]).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"prefill+decode vs full forward: {err:.3g}"


@pytest.mark.story("GT-026")
def test_context_overflow_is_a_clear_error(models):
    m = gpt_engine.load(models.path("llama", "F32"))  # n_ctx = 128
    with pytest.raises(ContextOverflowError, match="context length 128"):
        m.logits([1] * 129)
    cache = m.new_cache(4)
    m.step([1, 2, 3, 4], cache)
    with pytest.raises(ContextOverflowError, match="KV cache full"):
        m.step([5], cache)
    with pytest.raises(ContextOverflowError):
        m.new_cache(129)


@pytest.mark.story("GT-026")
def test_bad_token_ids_are_refused(models):
    m = gpt_engine.load(models.path("gpt2", "F32"))
    with pytest.raises(EngineError, match="out of range"):
        m.logits([0, m.config.vocab_size])
    with pytest.raises(EngineError, match="out of range"):
        m.logits([-1])
    with pytest.raises(EngineError, match="empty"):
        m.logits([])


@pytest.mark.story("GT-026")
def test_weights_stay_quantized_until_used(models):
    """A Q8_0 model keeps its projection weights as the file's raw blocks."""
    import gguf

    m = gpt_engine.load(models.path("gpt2", "Q8_0"))
    w = m.net.layers[0]["qkv_w"]
    assert w.qtype == gguf.GGMLQuantizationType.Q8_0
    assert w.raw.dtype == torch.uint8
    assert w.nbytes == m.gguf.tensors["blk.0.attn_qkv.weight"].nbytes
