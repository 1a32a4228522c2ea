"""GX-003 / GT-027: the decode loop of gpt_engine/cuda_graph.py. Graph replay equals the eager
step (ids over 256 tokens, logits); greedy ids equal transformers' on every architecture and
weight type covered; every sequence of a batch equals its batch-1 run; EOS stops within one
extra step; the step neither syncs nor reads back; device status bits become errors; the
full context can be generated. The eager decoder runs on the CPU too (same code, reference
ops), so the loop logic is also checked without a GPU."""
from __future__ import annotations

import pytest
import torch

import gpt_engine
from gpt_engine.cuda_graph import Decoder
from gpt_engine.errors import ContextOverflowError, EngineError
from gpt_engine.generate import SamplingParams
from tests.tolerances import tol

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")])
DEVICES = ["cpu", CUDA]


def _nmse(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def _prompt(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def _run(dec, prompts, n, params=None):
    params = params or [SamplingParams()] * len(prompts)
    return [list(x) for x in zip(*dec.run(prompts, n, params, stop_at_eos=False))]


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_graph_replay_equals_eager_256_tokens(models, arch, qtype):
    m = gpt_engine.load(models.path(arch, qtype, n_ctx=512), device="cuda")
    prompt = _prompt(23, m.config.vocab_size, 3)
    eager, graph = Decoder(m, 1, 512, graphs=False), Decoder(m, 1, 512, graphs=True)
    a, b = _run(eager, [prompt], 256), _run(graph, [prompt], 256)
    assert a == b
    assert len(a[0]) == 256
    # both decode graphs ran: the one without the attention's reduce launch while every
    # sequence had at most short_keys keys (23 + r <= 256), then the full one
    assert set(graph.graphs) == {"greedy", "greedy:short"}
    # the last step's logits (same history on both sides)
    assert _nmse(graph.logits, eager.logits) <= tol("nmse_fp16_model")


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_short_graph_off_replays_one_graph(models, monkeypatch):
    """GPT_ENGINE_ATTN_SHORT_KEYS=0 turns the one-split path off: one decode graph, every
    attention with its reduce launch, and still the eager path's ids."""
    monkeypatch.setenv("GPT_ENGINE_ATTN_SHORT_KEYS", "0")
    m = gpt_engine.load(models.path("gpt2", "F16", n_ctx=512), device="cuda")
    prompt = _prompt(23, m.config.vocab_size, 5)
    eager, graph = Decoder(m, 1, 512, graphs=False), Decoder(m, 1, 512, graphs=True)
    assert graph.state.short_keys == 0
    assert _run(eager, [prompt], 40) == _run(graph, [prompt], 40)
    assert set(graph.graphs) == {"greedy"}


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch,qtype", [("gpt2", "F16"), ("gpt2", "Q8_0"), ("gpt2", "F32"), ("llama", "F16"),
                                        ("llama", "Q4_1"), ("llama", "MXFP4"), ("llama", "BF16")])
def test_greedy_64_tokens_identical_to_transformers_on_gpu(models, arch, qtype):
    path = models.path(arch, qtype)
    m = gpt_engine.load(path, device="cuda")
    prompt = [7, 300, 41, 12, 99]
    ours = m.generate(prompt, max_new_tokens=64, stop_at_eos=False).token_ids
    hf = models.oracle(path)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=64, min_new_tokens=64,
                          pad_token_id=m.tokenizer.eos_id)
    ref = out[0, len(prompt):].tolist()
    if ours != ref:
        j = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
        with torch.no_grad():
            lg = hf(torch.tensor([prompt + ref[:j]])).logits[0, -1]
        top = lg.topk(2)
        pytest.fail(f"first difference at token {j}: ours {ours[j]}, transformers {ref[j]}; transformers' "
                    f"logits there: {ref[j]} -> {float(lg[ref[j]]):.6f}, ours' pick -> {float(lg[ours[j]]):.6f} "
                    f"(top-2 margin {float(top.values[0] - top.values[1]):.3g})")
    assert len(ours) == 64


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_sequences_equal_their_batch1_runs(models, device, arch):
    check_batch_sequences_equal_their_batch1_runs(gpt_engine.load(models.path(arch, "F16"), device=device), device)


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch,qtype,n_ff", [("gpt2", "Q8_0", None), ("llama", "MXFP4", 6400), ("llama", "Q4_1", 6400)])
def test_packed_batch_sequences_equal_their_batch1_runs_on_gpu(models, arch, qtype, n_ff):
    """The same for packed weights on the GPU, where the packed GEMV serves every product of the
    step: its 1-, 4- and 16-row kernels give a row the same bits (csrc/linear_q_impl.cuh), so a
    sequence of a batch decodes as it does alone. The Llamas' 6,400-wide down product takes
    batch 16 in two slices of 8 (16 rows' activation codes do not fit the kernel's shared memory:
    ops.linear.packed_gemv_rows, tests/ops/test_linear_q.py's k6400 case)."""
    m = gpt_engine.load(models.path(arch, qtype, **({} if n_ff is None else {"n_ff": n_ff})), device="cuda")
    check_batch_sequences_equal_their_batch1_runs(m, "cuda")


def check_batch_sequences_equal_their_batch1_runs(m, device):
    sizes = (1, 4, 16) if device == "cuda" else (1, 4)
    n = 24 if device == "cuda" else 8
    for bsz in sizes:
        prompts = [_prompt(3 + 5 * b % 37, m.config.vocab_size, 100 + b) for b in range(bsz)]
        batch = m.generate_batch(prompts, max_new_tokens=n, stop_at_eos=False)
        singles = [m.generate(p, max_new_tokens=n, stop_at_eos=False).token_ids for p in prompts]
        assert [o.token_ids for o in batch] == singles, f"batch {bsz}"


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_eos_stops_within_one_extra_step(models, device):
    m = gpt_engine.load(models.path("gpt2", "F16"), device=device)
    prompt = _prompt(9, m.config.vocab_size, 7)
    full = m.generate(prompt, max_new_tokens=30, stop_at_eos=False).token_ids
    eos = full[6]
    j = full.index(eos)
    m.tokenizer.eos_id = eos
    out = m.generate(prompt, max_new_tokens=30)
    assert out.token_ids == full[:j + 1] and out.finish_reason == "eos"
    if device == "cuda":
        dec = m.decoder(1, len(prompt) + 30)
        assert dec.stats.steps == j + 1
        assert dec.stats.replays <= j + 1, f"{dec.stats.replays} steps ran for {j + 1} tokens"


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_device_status_bits_become_errors(models, device):
    m = gpt_engine.load(models.path("llama", "F16"), device=device)
    dec = Decoder(m, 2, 32, graphs=device == "cuda")
    st = dec.state
    st.ids.fill_(3)
    st.pos.copy_(torch.tensor([5, 32]))  # sequence 1 is one past the cache
    dec.step("greedy")
    assert int(st.status) == 2
    # the loop turns a bit into an error naming it
    dec2 = Decoder(m, 1, 64, graphs=device == "cuda")
    real = dec2._sample

    def nan_sample(logits, kind):
        real(logits, kind)
        dec2.state.status.fill_(4)
    dec2._sample = nan_sample
    with pytest.raises(EngineError, match="NaN logits"):
        _run(dec2, [[1, 2, 3]], 5)


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decode_step_never_syncs(models, arch):
    """torch's sync debug mode raises on any synchronizing call inside the step (a .item(),
    a host read-back, a blocking copy)."""
    m = gpt_engine.load(models.path(arch, "F16"), device="cuda")
    dec = Decoder(m, 4, 128, graphs=False)
    dec.state.ids.fill_(5)
    dec.state.pos.copy_(torch.tensor([0, 3, 9, 1]))
    dec.step("greedy")  # first call: lazy inits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dec.step("greedy")
        dec.step("sample")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_generation_up_to_the_full_context(models, device):
    m = gpt_engine.load(models.path("llama", "F16"), device=device)  # n_ctx 128
    prompt = _prompt(100, m.config.vocab_size, 9)
    out = m.generate(prompt, max_new_tokens=28, stop_at_eos=False)
    assert len(out.token_ids) == 28
    with pytest.raises(ContextOverflowError, match="129 tokens exceed the context length 128"):
        m.generate(prompt, max_new_tokens=29, stop_at_eos=False)
    with pytest.raises(ContextOverflowError):
        m.generate(_prompt(140, m.config.vocab_size, 1), max_new_tokens=1)


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_seeded_gpu_sampling_is_reproducible_and_seed_dependent(models):
    m = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")
    kw = dict(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, stop_at_eos=False)
    a = m.generate("Hello there", seed=1234, **kw).token_ids
    b = m.generate("Hello there", seed=1234, **kw).token_ids
    c = m.generate("Hello there", seed=4321, **kw).token_ids
    assert a == b and a != c


# ---------------------------------------------------------------- the device loop (decode_loop.cu)

def _device_loop(m, batch, capacity):
    dec = Decoder(m, batch, capacity, graphs=True, device_loop=True)
    assert dec.device_loop, "the device loop was not enabled"
    return dec


def _loop_built(dec, kind="greedy"):
    """The request really ran as a device loop (no fallback warning turned it off)."""
    return dec.device_loop and dec._loop_buffers is not None and kind in dec._loop_buffers.execs


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch,qtype", [("gpt2", "F16"), ("gpt2", "Q8_0"), ("llama", "F16")])
def test_device_loop_equals_host_loop_256_tokens(models, arch, qtype):
    """Both WHILE loops run (23 + r keys cross short_keys): the same ids as host replays."""
    m = gpt_engine.load(models.path(arch, qtype, n_ctx=512), device="cuda")
    prompt = _prompt(23, m.config.vocab_size, 3)
    host, dev = Decoder(m, 1, 512, graphs=True, device_loop=False), _device_loop(m, 1, 512)
    a, b = _run(host, [prompt], 256), _run(dev, [prompt], 256)
    assert _loop_built(dev)
    assert a == b and len(b[0]) == 256
    assert dev.stats.replays == 255 and dev.stats.steps == 256
    assert set(dev.graphs) == {"greedy", "greedy:short"}
    # a second request on the same loop (the control words reset per request)
    assert _run(dev, [prompt[:7]], 40) == _run(host, [prompt[:7]], 40)


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("sampled", [False, True])
def test_device_loop_batch_equals_host_loop(models, sampled):
    m = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")
    prompts = [_prompt(3 + 7 * b, m.config.vocab_size, 50 + b) for b in range(4)]
    params = [SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=11 + b) if sampled else SamplingParams()
              for b in range(4)]
    host, dev = Decoder(m, 4, 128, graphs=True, device_loop=False), _device_loop(m, 4, 128)
    assert _run(dev, prompts, 30, params) == _run(host, prompts, 30, params)
    assert _loop_built(dev, "sample" if sampled else "greedy")


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_device_loop_stops_on_eos_and_on_cancel(models):
    m = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")
    prompt = _prompt(9, m.config.vocab_size, 7)
    host = Decoder(m, 1, 64, graphs=True, device_loop=False)
    full = _run(host, [prompt], 30)[0]
    eos = full[6]
    j = full.index(eos)
    dev = _device_loop(m, 1, 64)
    got = [t[0] for t in dev.run([prompt], 30, [SamplingParams()], stop_at_eos=True, eos=eos)]
    assert got == full[:j + 1]
    assert dev.stats.replays == j, f"{dev.stats.replays} device steps for {j + 1} tokens (EOS at token {j})"
    # the consumer stops reading after 5 tokens: the loop is cancelled, the next request runs whole
    gen = dev.run([prompt], 30, [SamplingParams()], stop_at_eos=False)
    assert [next(gen)[0] for _ in range(5)] == full[:5]
    gen.close()
    assert dev.stats.replays < 29
    assert _run(dev, [prompt], 30)[0] == full


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_device_loop_status_bit_becomes_the_error_after_one_step(models):
    """A status bit raised by the step whose sample moves to position 10 ends both loops at the same token
    with the same named error."""
    m = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")

    def poisoned(dec):
        real = dec._sample

        def sample(logits, kind):
            real(logits, kind)
            st = dec.state
            st.status.bitwise_or_((st.pos[:1] == 10).to(torch.int32) * 4)
        dec._sample = sample
        return dec

    seen = []
    for dec in (poisoned(Decoder(m, 1, 64, graphs=True, device_loop=False)), poisoned(_device_loop(m, 1, 64))):
        toks = []
        with pytest.raises(EngineError, match="NaN logits"):
            for out in dec.run([[1, 2, 3]], 20, [SamplingParams()], stop_at_eos=False):
                toks.append(out[0])
        seen.append(toks)
    assert seen[0] == seen[1] and len(seen[0]) == 7, seen  # tokens 0-6; token 7 came from the step that set the bit


@pytest.mark.story("GX-003")
def test_device_loop_is_off_without_graphs(models):
    """The device loop is a CUDA-graph feature: on the CPU (or with graphs off) the host loop runs."""
    m = gpt_engine.load(models.path("gpt2", "F32"), device="cpu")
    dec = Decoder(m, 1, 32, graphs=True, device_loop=True)
    assert not dec.device_loop
    assert len(_run(dec, [[1, 2, 3]], 4)[0]) == 4
