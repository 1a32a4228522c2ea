"""GX-002: gpt-oss from its GGUF file vs transformers' GptOssForCausalLM on the same weights (CPU).

Oracle: a seeded random ``GptOssForCausalLM`` (eager attention: the sink column written out;
eager experts) whose weights were replaced by gguf-py's dequantization of what the generator
wrote (testmodels.make_gpt_oss, following llama.cpp's converter). Inputs are at least 4x the
sliding window so the window decides logits. The mutant tests prove the oracle test catches each
way of getting the architecture wrong that bit earlier attempts.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import gpt_engine
from gpt_engine import quants, testmodels
from gpt_engine.models import gpt_oss
from gpt_engine.ops.qkv_rope import ROPE_MODES
from gpt_engine.qweight import QWeight
from tests.tolerances import tol

STORY = pytest.mark.story("GX-002")

# name -> generator arguments. Several layer counts, head ratios (2, 8 = MQA, 1 = MHA, 4), expert
# counts and top-k (1 to 4), window smaller than the input, YaRN with gpt-oss's own parameters (theta
# 150000, factor 32, original context 4096, betas 32/1) and one file without scaling.
SHAPES = {
    "L2-h4kv2-e4k2": {},
    "L3-h8kv1-e8k4-f16": {"n_layer": 3, "n_head": 8, "n_head_kv": 1, "n_expert": 8, "n_expert_used": 4,
                          "n_ff": 32, "sliding_window": 4, "qtype": "F16"},
    "L4-h4kv4-e16k2-d32": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_head_kv": 4, "head_dim": 32,
                           "n_expert": 16, "n_expert_used": 2, "n_ff": 96, "sliding_window": 16},
    "L2-h4kv1-e32k4-d64": {"n_embd": 96, "n_head": 4, "n_head_kv": 1, "head_dim": 64, "n_expert": 32,
                           "n_expert_used": 4, "n_ff": 64, "sliding_window": 16},
    "L2-h8kv2-e4k1-d64": {"n_head": 8, "n_head_kv": 2, "head_dim": 64, "n_expert": 4, "n_expert_used": 1,
                          "sliding_window": 8, "seed": 5},
    "L2-noyarn-q8": {"yarn": None, "qtype": "Q8_0", "seed": 3},
}


class GptOssModels:
    """Each shape written once per session, with its oracle."""

    def __init__(self, root):
        self.root = root
        self._made: dict[str, tuple] = {}

    def get(self, name: str):
        if name not in self._made:
            path = self.root / f"gpt-oss-{name}.gguf"
            hf = testmodels.make_gpt_oss(path, **SHAPES[name])
            self._made[name] = (path, hf)
        return self._made[name]


@pytest.fixture(scope="module")
def oss(tmp_path_factory) -> GptOssModels:
    return GptOssModels(tmp_path_factory.mktemp("gpt-oss"))


def long_ids(m, seed: int, windows: int = 5) -> list[int]:
    n = max(64, windows * m.config.sliding_window)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, m.config.vocab_size, (n,), generator=g).tolist()


def reference_logits(hf, ids) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def max_err(m, hf, ids) -> float:
    return (m.logits(ids) - reference_logits(hf, ids)).abs().max().item()


# --------------------------------------------------------------------------- oracles

@STORY
@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_match_transformers(oss, shape):
    path, hf = oss.get(shape)
    m = gpt_engine.load(path)
    ids = long_ids(m, seed=len(shape))
    assert len(ids) >= 4 * m.config.sliding_window
    ours = m.logits(ids)
    ref = reference_logits(hf, ids)
    assert ours.shape == ref.shape == (len(ids), m.config.vocab_size)
    assert torch.isfinite(ours).all()
    err = (ours - ref).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"{shape}: max |ours - transformers| = {err:.3g}"


@STORY
@pytest.mark.parametrize("shape", ["L2-h4kv2-e4k2", "L3-h8kv1-e8k4-f16", "L2-h4kv1-e32k4-d64"])
def test_greedy_continuation_matches_transformers(oss, shape):
    """Prompt of 4+ windows, then 12 greedy tokens through our KV-cache decode path; transformers
    generates with its own cache (sliding layers keep only the window)."""
    path, hf = oss.get(shape)
    m = gpt_engine.load(path)
    prompt = long_ids(m, seed=7, windows=4)
    ours = m.generate(prompt, max_new_tokens=12, stop_at_eos=False).token_ids
    x = torch.tensor([prompt])
    with torch.no_grad():  # an explicit mask: generate would otherwise treat pad-id tokens as padding
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()
    # transformers stops after its EOS; we were told not to
    assert len(ref) == 12 or ref[-1] == hf.generation_config.eos_token_id
    assert ours[:len(ref)] == ref


@STORY
def test_cache_paths_equal_the_full_forward(oss):
    """Prefill, a multi-token continuation of a non-empty cache, then one-token steps past
    several windows: the same logits as one full forward."""
    path, _ = oss.get("L2-h4kv2-e4k2")
    m = gpt_engine.load(path)
    ids = long_ids(m, seed=5)
    full = m.logits(ids)
    cache = m.new_cache(len(ids))
    with torch.inference_mode():
        first = m.net.forward(torch.tensor([ids[:20]]), cache)[0]
        chunk = m.net.forward(torch.tensor([ids[20:30]]), cache)[0]
    stepped = [m.step([t], cache) for t in ids[30:]]
    got = torch.cat((first, chunk, torch.stack(stepped)))
    assert cache.length == len(ids)
    err = (got - full).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"cached paths vs full forward: {err:.3g}"


@STORY
def test_batched_decode_equals_each_prompts_own_generation(oss):
    """generate_batch runs decode_logits: each sequence at its own position, one step for all.
    Greedy ids equal each prompt's own generate and transformers' full-forward argmax."""
    path, hf = oss.get("L2-h8kv2-e4k1-d64")
    m = gpt_engine.load(path)
    prompts = [long_ids(m, seed=11, windows=4), long_ids(m, seed=12, windows=5)[:37]]
    outs = m.generate_batch(prompts, max_new_tokens=6, stop_at_eos=False)
    last_step = m.decoder(len(prompts), len(prompts[0]) + 6, m.cuda_graphs).logits  # [B, V] of the last step
    for b, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.token_ids == m.generate(prompt, max_new_tokens=6, stop_at_eos=False).token_ids
        seq = list(prompt)
        for _ in range(6):
            seq.append(int(reference_logits(hf, seq)[-1].argmax()))
        assert out.token_ids == seq[len(prompt):]
        err = (last_step[b] - reference_logits(hf, seq[:-1])[-1]).abs().max().item()
        assert err <= tol("logits_max_abs_f32"), f"sequence {b}: decode step vs transformers {err:.3g}"


@STORY
def test_experts_stay_packed(oss):
    """Expert stacks are held as the file's MXFP4 bytes; nothing dense is kept for them."""
    path, _ = oss.get("L2-h4kv2-e4k2")
    m = gpt_engine.load(path)
    for i, layer in enumerate(m.net.layers):
        for kind, stack in (("gate", layer.gate), ("up", layer.up), ("down", layer.down)):
            info = m.gguf.tensors[f"blk.{i}.ffn_{kind}_exps.weight"]
            assert stack.weight.qtype == info.qtype == quants.Q.MXFP4
            assert stack.weight.raw.dtype == torch.uint8 and stack.weight.nbytes == info.nbytes
            assert np.shares_memory(stack.weight.raw.numpy(), m.gguf.tensor_data(info.name))


# --------------------------------------------------------------------------- mutants

def _odd_layers_slide(m):
    for i, L in enumerate(m.net.layers):
        L.window = m.config.sliding_window if i % 2 else None


def _no_window(m):
    for L in m.net.layers:
        L.window = None


def _window_one_wider(m):
    for L in m.net.layers:
        L.window = L.window + 1 if L.window else None


def _no_sinks(m):
    for L in m.net.layers:
        L.sinks = torch.full_like(L.sinks, float("-inf"))


def _yarn_rounded(m):
    c = m.config
    m.net.set_rope(*gpt_oss.yarn_inv_freq(c.head_dim, c.rope_theta, c.yarn, round_ends=True))


def _no_yarn_attention_factor(m):
    m.net.set_rope(m.net.inv_freq, 1.0)


def _gate_up_swapped(m):
    for L in m.net.layers:
        L.gate, L.up = L.up, L.gate


def _no_router_bias(m):
    for L in m.net.layers:
        L.router_bias = torch.zeros_like(L.router_bias)


def _one_expert_fewer(m):
    m.net.cfg = dataclasses.replace(m.net.cfg, n_expert_used=m.config.n_expert_used - 1)


def _no_attention_bias(m):
    """Zero the q and k parts of the QKV bias (separate q, k, v biases on the CPU)."""
    c = m.config
    for L in m.net.layers:
        assert len(L.qkv_bias) == 3
        L.qkv_bias = [torch.zeros_like(L.qkv_bias[0]), torch.zeros_like(L.qkv_bias[1]), L.qkv_bias[2]]
        assert L.qkv_bias[1].shape == (c.n_head_kv * c.head_dim,)


MUTANTS = {
    "nibbles swapped": lambda m, mp: mp.setattr(quants, "_MXFP4_PAIRS", quants._MXFP4_PAIRS.flip(1)),
    "sinks dropped": lambda m, mp: _no_sinks(m),
    "yarn ends rounded (llama.cpp)": lambda m, mp: _yarn_rounded(m),
    "yarn attention factor dropped": lambda m, mp: _no_yarn_attention_factor(m),
    "sliding on odd layers": lambda m, mp: _odd_layers_slide(m),
    "no sliding window": lambda m, mp: _no_window(m),
    "window one wider": lambda m, mp: _window_one_wider(m),
    # llama.cpp's normal rope mode (pairs 2i, 2i+1): right for llama's permuted q/k, wrong here
    "rope on adjacent pairs": lambda m, mp: mp.setattr(gpt_oss, "ROPE_MODE", ROPE_MODES["adjacent"]),
    "swiglu unclamped": lambda m, mp: mp.setattr(gpt_oss, "SWIGLU_LIMIT", math.inf),
    "swiglu alpha 1": lambda m, mp: mp.setattr(gpt_oss, "SWIGLU_ALPHA", 1.0),
    "gate and up swapped": lambda m, mp: _gate_up_swapped(m),
    "router bias dropped": lambda m, mp: _no_router_bias(m),
    "one expert fewer": lambda m, mp: _one_expert_fewer(m),
    "q/k biases dropped": lambda m, mp: _no_attention_bias(m),
}


@STORY
@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_oracle_catches_a_wrong_architecture(oss, monkeypatch, mutant):
    """Each mutant of the model moves the logits by far more than the tolerance on the same
    input test_logits_match_transformers uses: that test fails for every one of them."""
    shape = "L2-h4kv2-e4k2"
    path, hf = oss.get(shape)
    m = gpt_engine.load(path)
    ids = long_ids(m, seed=len(shape))
    MUTANTS[mutant](m, monkeypatch)
    err = max_err(m, hf, ids)
    assert err > 10 * tol("logits_max_abs_f32"), f"{mutant}: max error only {err:.3g}"


# --------------------------------------------------------------------------- pieces against their sources

@STORY
def test_yarn_frequencies_match_transformers():
    """Our YaRN table (float64) against transformers' _compute_yarn_parameters for gpt-oss's
    configuration, unrounded and (for llama.cpp's variant) truncated."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from gpt_engine.config import YarnScaling

    yarn = YarnScaling(factor=32.0, original_context=4096, beta_fast=32.0, beta_slow=1.0)
    for truncate in (False, True):
        cfg = testmodels.gpt_oss_hf_config(n_vocab=8, n_layer=2, n_embd=64, n_head=2, n_head_kv=1, head_dim=64,
                                           n_expert=2, n_expert_used=1, n_ff=32, sliding_window=128,
                                           n_ctx=131072, rope_theta=150000.0, yarn=(32.0, 4096, 32.0, 1.0),
                                           truncate=truncate)
        ref, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        ours, factor = gpt_oss.yarn_inv_freq(64, 150000.0, yarn, round_ends=truncate)
        assert factor == pytest.approx(ref_factor, rel=1e-12) and factor == pytest.approx(1 + 0.1 * math.log(32))
        assert torch.allclose(ours.float(), ref, rtol=1e-6, atol=0)
    plain, one = gpt_oss.yarn_inv_freq(64, 150000.0, yarn)
    rounded, _ = gpt_oss.yarn_inv_freq(64, 150000.0, yarn, round_ends=True)
    assert one > 1 and not torch.equal(plain, rounded)


@STORY
def test_swiglu_oai_against_its_definition():
    gate = torch.tensor([-20.0, -1.0, 0.0, 2.0, 7.0, 9.0])
    up = torch.tensor([-9.0, -0.5, 3.0, 7.5, 1.0, -8.0])
    g = torch.tensor([-20.0, -1.0, 0.0, 2.0, 7.0, 7.0])      # gate <= 7
    u = torch.tensor([-7.0, -0.5, 3.0, 7.0, 1.0, -7.0])      # up in [-7, 7]
    want = g / (1 + torch.exp(-1.702 * g)) * (u + 1)
    assert torch.allclose(gpt_oss.swiglu_oai(gate, up), want, rtol=1e-6, atol=1e-7)


@STORY
def test_hf_checkpoint_mxfp4_repacked_reads_as_transformers_reads_it():
    """The HF gpt-oss checkpoint packs MXFP4 as (element 2i low, 2i+1 high); llama.cpp's converter
    repacks to ggml's (j low, j + 16 high). Our dequantization of the repacked blocks equals
    transformers' own dequantization of the checkpoint layout (integrations/mxfp4.py); reading the
    checkpoint bytes as if they were GGUF does not."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    rng = np.random.default_rng(0)
    E, rows, groups = 3, 8, 4                                   # 3 experts, 8 output rows, 128 inputs
    blocks = rng.integers(0, 256, size=(E, rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(120, 133, size=(E, rows, groups), dtype=np.uint8)
    hf = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    hf = hf.transpose(1, 2)                                     # [E, in, out] -> [E, out, in]
    gguf_rows = testmodels.hf_mxfp4_to_gguf(blocks, scales)     # [E, rows, groups * 17]
    ours = quants.dequantize(gguf_rows, quants.Q.MXFP4)
    assert torch.equal(ours, hf)
    naive = np.concatenate((scales[..., None], blocks), axis=-1).reshape(E, rows, groups * 17)
    assert not torch.equal(quants.dequantize(naive, quants.Q.MXFP4), hf)


@STORY
@pytest.mark.parametrize("shape", ["L2-h8kv2-e4k1-d64", "L2-h4kv1-e32k4-d64"])
def test_gpu_path_wiring_on_the_cpu(oss, shape):
    """The GPU path's calls (q/k/v stacked into one weight as the GPU loader does, so one
    ops.linear / ops.linear_qkv per layer; ops.attention_prefill / attention_decode with sinks
    and window; ops.moe_route + moe_experts, and grouped_experts for the 64-token prompt) run
    here through the ops' CPU references: the same logits and greedy ids as the CPU model's own
    path (separate q/k/v, sink_attention, GptOss.moe), for a full forward, a batched decode
    through DecodeState (st.lens set by the QKV op before the attention reads it) and
    single-token cache steps."""
    path, _ = oss.get(shape)
    m = gpt_engine.load(path)
    prompts = [long_ids(m, seed=21, windows=4), long_ids(m, seed=22, windows=5)[:45]]
    want_logits = m.logits(prompts[0])
    want = [o.token_ids for o in m.generate_batch(prompts, max_new_tokens=5, stop_at_eos=False)]
    m._decoders.clear()
    m.net.on_gpu = m.net.moe_kernels = True
    assert len(prompts[0]) >= gpt_oss.MOE_GROUPED_MIN_TOKENS
    for L in m.net.layers:
        L.qkv, L.qkv_bias = [QWeight.stack_rows(L.qkv)], [torch.cat(L.qkv_bias)]
    got_logits = m.logits(prompts[0])
    got = [o.token_ids for o in m.generate_batch(prompts, max_new_tokens=5, stop_at_eos=False)]
    err = (got_logits - want_logits).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"{shape}: GPU-path wiring vs CPU path {err:.3g}"
    assert got == want
