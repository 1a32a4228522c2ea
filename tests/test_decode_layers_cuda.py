"""GX-003: the one-launch decode layers (gpt_engine/decode_layers.py, csrc/decode_layers.cu)
compute the per-op step's bits. Models whose heads the kernel serves (head dim 64 or 128; 1 or
3-4 query heads per KV head), F16 weights, batch 1: the same greedy ids, bit-equal last logits
and bit-equal KV caches as the per-op step (GPT_ENGINE_DECODE_LAYERS=0), past 256 keys so the
attention's split + reduce stage runs as well as the one-split stage; graph replay too. Where
the kernel does not apply (batch > 1, a packed type, an unserved head layout) the per-op step
runs."""
from __future__ import annotations

import pytest
import torch

import gpt_engine
from gpt_engine import decode_layers
from gpt_engine.cuda_graph import Decoder
from gpt_engine.generate import SamplingParams

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")]

# (arch, file keyword arguments): head dim 64 with 1 query head per KV head (GPT-2), 3 (the
# SmolLM2 layout: tile 4) and 4 (Llama ~1B), and head dim 128
SHAPES = {
    "gpt2-d64": ("gpt2", dict(n_embd=256, n_head=4, n_layer=3)),
    "llama-d64-g3": ("llama", dict(n_embd=384, n_head=6, n_head_kv=2, n_ff=1024, n_layer=3, n_ctx=512)),
    "llama-d64-g4": ("llama", dict(n_embd=256, n_head=4, n_head_kv=1, n_ff=768, n_layer=2, n_ctx=512)),
    "llama-d128-g1": ("llama", dict(n_embd=256, n_head=2, n_head_kv=2, n_ff=512, n_layer=2, n_ctx=512)),
}


def _prompt(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def _decoder(monkeypatch, m, on: bool, graphs: bool, batch: int = 1):
    monkeypatch.setenv(decode_layers.ENV, "1" if on else "0")
    return Decoder(m, batch, 512, graphs=graphs)


def _run(dec, prompts, n):
    return [list(x) for x in zip(*dec.run(prompts, n, [SamplingParams()] * len(prompts), stop_at_eos=False))]


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("shape", list(SHAPES))
def test_one_launch_equals_the_per_op_step_bit_for_bit(models, monkeypatch, shape):
    arch, kw = SHAPES[shape]
    m = gpt_engine.load(models.path(arch, "F16", **kw), device="cuda")
    prompt = _prompt(23, m.config.vocab_size, 11)
    ref = _decoder(monkeypatch, m, False, graphs=False)
    eager = _decoder(monkeypatch, m, True, graphs=False)
    graph = _decoder(monkeypatch, m, True, graphs=True)
    assert ref.state.layers is None and eager.state.layers is not None and graph.state.layers is not None
    # 23 + 260 tokens: past short_keys (256) keys, so both attention stages run
    a, b, c = _run(ref, [prompt], 260), _run(eager, [prompt], 260), _run(graph, [prompt], 260)
    assert a == b == c
    assert torch.equal(ref.logits, eager.logits) and torch.equal(ref.logits, graph.logits)
    n = len(prompt) + 260
    for s in (eager.state, graph.state):
        assert torch.equal(ref.state.cache.k[:, :, :, :n], s.cache.k[:, :, :, :n])
        assert torch.equal(ref.state.cache.v[:, :, :, :n], s.cache.v[:, :, :, :n])
        assert torch.equal(ref.state.lens, s.lens)


@pytest.mark.story("GX-003")
def test_the_per_op_step_runs_where_the_launch_does_not_apply(models, monkeypatch):
    arch, kw = SHAPES["gpt2-d64"]
    f16 = gpt_engine.load(models.path(arch, "F16", **kw), device="cuda")
    q8 = gpt_engine.load(models.path(arch, "Q8_0", **kw), device="cuda")
    tiny = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")  # head dim 16
    assert _decoder(monkeypatch, f16, True, graphs=False).state.layers is not None
    assert _decoder(monkeypatch, f16, True, graphs=False, batch=2).state.layers is None
    assert _decoder(monkeypatch, q8, True, graphs=False).state.layers is None
    assert _decoder(monkeypatch, tiny, True, graphs=False).state.layers is None


@pytest.mark.story("GX-003")
def test_a_position_outside_the_cache_raises_the_same_status_bit(models, monkeypatch):
    """The QKV epilogue's status bit (a position outside the cache) is set by the one launch as
    by the per-op step; the loop turns it into the same error (test_cuda_graph.py)."""
    arch, kw = SHAPES["gpt2-d64"]
    m = gpt_engine.load(models.path(arch, "F16", **kw), device="cuda")
    for on in (False, True):
        dec = _decoder(monkeypatch, m, on, graphs=False)
        assert (dec.state.layers is not None) == on
        dec.state.ids.fill_(3)
        dec.state.pos.fill_(512)  # one past the cache
        dec.step("greedy")
        assert int(dec.state.status) == 2
