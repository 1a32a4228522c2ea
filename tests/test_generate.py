"""GT-027 basic generation: greedy output identical to transformers' generate;
seeded sampling reproducible; different prompts give different outputs; the
sampling filters keep exactly the tokens they should."""
from __future__ import annotations

import pytest
import torch

import gpt_engine
from gpt_engine.errors import ContextOverflowError, EngineError
from gpt_engine.generate import SamplingParams, sample


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("arch,qtype", [("gpt2", "F32"), ("gpt2", "Q8_0"), ("llama", "F32"), ("llama", "MXFP4")])
def test_greedy_32_tokens_identical_to_transformers(models, arch, qtype):
    path = models.path(arch, qtype)
    m = gpt_engine.load(path)
    prompt = [7, 300, 41, 12, 99]
    ours = m.generate(prompt, max_new_tokens=32, stop_at_eos=False).token_ids
    hf = models.oracle(path)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32, min_new_tokens=32,
                          pad_token_id=m.tokenizer.eos_id)
    assert ours == out[0, len(prompt):].tolist()
    assert len(ours) == 32


@pytest.mark.story("GT-027")
def test_seeded_sampling_is_reproducible_and_seed_dependent(models):
    m = gpt_engine.load(models.path("gpt2", "F32"))
    kw = dict(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, stop_at_eos=False)
    a = m.generate("Hello there", seed=1234, **kw).token_ids
    b = m.generate("Hello there", seed=1234, **kw).token_ids
    c = m.generate("Hello there", seed=4321, **kw).token_ids
    assert a == b
    assert a != c


@pytest.mark.story("GT-027")
def test_different_prompts_give_different_outputs(models):
    m = gpt_engine.load(models.path("llama", "F32"))
    a = m.generate("the cat sat", max_new_tokens=16, stop_at_eos=False).token_ids
    b = m.generate("quantum fields", max_new_tokens=16, stop_at_eos=False).token_ids
    assert a != b


class _ScriptedModel:
    """Drives the generation loop with logits whose argmax follows a script, so
    the stopping rule is checked exactly (the loop, not a network, is under test)."""

    def __init__(self, script, vocab=8, eos=7):
        self.script, self.vocab, self.calls = list(script), vocab, 0
        self.tokenizer = type("T", (), {"eos_id": eos, "vocab_size": vocab})()

    def new_cache(self, max_len):
        return object()

    def step(self, ids, cache):
        logits = torch.zeros(self.vocab)
        logits[self.script[self.calls]] = 1.0
        self.calls += 1
        return logits


@pytest.mark.story("GT-027")
def test_stops_at_eos_and_at_the_token_limit():
    from gpt_engine import generate as gen

    out = gen.run(_ScriptedModel([3, 4, 7, 5, 5]), [1, 2], 10, SamplingParams())
    assert out.token_ids == [3, 4, 7] and out.finish_reason == "eos"
    out = gen.run(_ScriptedModel([3, 4, 7, 5, 5]), [1, 2], 5, SamplingParams(), stop_at_eos=False)
    assert out.token_ids == [3, 4, 7, 5, 5] and out.finish_reason == "length"
    m = _ScriptedModel([3, 4, 5, 6])
    out = gen.run(m, [1], 2, SamplingParams())
    assert out.token_ids == [3, 4] and out.finish_reason == "length"
    assert m.calls == 2  # no wasted step after the last token


def _logits(vals):
    return torch.tensor(vals, dtype=torch.float32)


@pytest.mark.story("GT-027")
def test_greedy_is_argmax_and_filters_keep_the_right_tokens():
    logits = _logits([0.0, 3.0, 1.0, 2.9, -5.0])
    assert sample(logits, SamplingParams(temperature=0.0), None) == 1
    g = torch.Generator().manual_seed(0)
    # top_k=2 keeps ids 1 and 3 only
    seen = {sample(logits, SamplingParams(temperature=5.0, top_k=2), g) for _ in range(300)}
    assert seen == {1, 3}
    # probabilities (T=1) ~ [.022, .45, .061, .41, .0001]: top_p=0.5 needs ids 1 and 3 (0.45 < 0.5)
    seen = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), g) for _ in range(300)}
    assert seen == {1, 3}
    # top_p=0.4 is reached by id 1 alone
    seen = {sample(logits, SamplingParams(temperature=1.0, top_p=0.4), g) for _ in range(100)}
    assert seen == {1}


@pytest.mark.story("GT-027")
def test_sampling_frequencies_follow_the_softmax():
    logits = _logits([0.0, 1.0, 2.0])
    g = torch.Generator().manual_seed(7)
    n = 6000
    counts = torch.bincount(torch.tensor([sample(logits, SamplingParams(temperature=1.0), g)
                                          for _ in range(n)]), minlength=3).double()
    p = torch.softmax(logits.double(), 0)
    # 5 standard deviations of a binomial count: fails only if the draw is biased
    assert ((counts - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt()).all(), counts


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-3), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(max_new_tokens=-1)])
def test_bad_sampling_arguments_are_refused(models, bad):
    m = gpt_engine.load(models.path("gpt2", "F32"))
    with pytest.raises(EngineError):
        m.generate("hi", **{"max_new_tokens": 4, **bad})


@pytest.mark.story("GT-027")
def test_generation_past_the_context_is_refused(models):
    m = gpt_engine.load(models.path("llama", "F32"))  # n_ctx = 128
    with pytest.raises(ContextOverflowError):
        m.generate([1] * 100, max_new_tokens=29)


@pytest.mark.story("GT-027")
def test_ids_beyond_the_tokenizer_vocabulary_are_never_generated():
    from gpt_engine import generate as gen

    m = _ScriptedModel([7, 7, 7], vocab=8)
    m.tokenizer.vocab_size = 6  # embedding padded past the tokenizer (tokenizer.json case)
    out = gen.run(m, [1], 3, SamplingParams(), stop_at_eos=False)
    assert all(t < 6 for t in out.token_ids)


@pytest.mark.story("GT-027", "GT-031")
def test_stream_yields_pieces_lazily_and_matches_generate(models):
    m = gpt_engine.load(models.path("gpt2", "F32", vocab="gpt2"))
    kw = dict(max_new_tokens=20, temperature=0.9, seed=5, stop_at_eos=False)
    steps = []
    real_step = m.step
    m.step = lambda ids, cache: (steps.append(len(ids)), real_step(ids, cache))[1]
    it = m.stream("Hello", **kw)
    first = next(it)
    assert isinstance(first, str) and first
    assert len(steps) < 20  # the first piece arrived before the 20 tokens were all decoded
    del m.step
    assert first + "".join(it) == m.generate("Hello", **kw).text


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("t", [float("inf"), float("nan"), -0.5])
def test_non_finite_or_negative_temperature_is_refused(t):
    with pytest.raises(EngineError, match="temperature must be a finite number >= 0"):
        SamplingParams(temperature=t).check()


@pytest.mark.story("GT-025")
def test_load_names_what_the_path_is(tmp_path):
    with pytest.raises(EngineError, match="is a directory, not a GGUF model file"):
        gpt_engine.load(tmp_path)
    with pytest.raises(EngineError, match="not a regular file"):
        gpt_engine.load("/dev/null")
    with pytest.raises(EngineError, match="model file not found"):
        gpt_engine.load(tmp_path / "absent.gguf")


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("bad", ["12", b"hi", [1.7], [True], None, 5, [[1, 2]], torch.tensor([1.0]),
                                 torch.tensor([[1, 2]]), [float("nan")]], ids=repr)
def test_token_ids_of_the_wrong_kind_are_refused_not_converted(models, bad):
    """'12' is not [1, 2] and 1.7 is not token 1: ids must be integers (a list, tuple, or 1-D
    integer tensor or array); anything else is an EngineError naming it."""
    m = gpt_engine.load(models.path("gpt2", "F32"))
    with pytest.raises(EngineError, match="token ids must be"):
        m.logits(bad)
    assert m.logits(torch.tensor([1, 2])).shape == m.logits((1, 2)).shape == (2, m.config.vocab_size)


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("kw,needle", [
    ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer"), ({"max_new_tokens": "3"}, "max_new_tokens must be"),
    ({"seed": "x", "temperature": 1.0}, "seed must be None or an integer"), ({"seed": 2**64}, "seed must be"),
    ({"seed": -1}, "seed must be"), ({"top_k": 1.5}, "top_k must be an integer"),
    ({"temperature": "1"}, "temperature must be"), ({"top_p": None}, "top_p must be")], ids=str)
def test_sampling_arguments_of_the_wrong_kind_are_refused(models, kw, needle):
    m = gpt_engine.load(models.path("gpt2", "F32"))
    with pytest.raises(EngineError, match=needle):
        m.generate([1, 2], **{"max_new_tokens": 2, **kw})
    with pytest.raises(EngineError, match="got bytes"):
        m.generate(b"hi", max_new_tokens=2)


@pytest.mark.story("GT-027")
def test_a_tiny_temperature_is_the_greedy_limit_not_a_crash():
    """logits / 1e-300 overflowed to inf / inf = NaN probabilities (a raw multinomial error); the
    sampler shifts by the maximum first, so the limit is the argmax."""
    logits = torch.tensor([0.5, 2.0, -1.0, 1.9])
    for t in (1e-300, 1e-40):
        p = SamplingParams(temperature=t, seed=1)
        assert sample(logits, p, torch.Generator().manual_seed(1)) == 1


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_logits_are_an_error_not_token_0(temperature):
    """A model whose weights overflow gives NaN logits; the argmax of NaNs is token 0 and a draw
    from NaN probabilities a raw torch error: both are an EngineError naming the cause. -inf (an id
    masked past the tokenizer's vocabulary) is fine."""
    p = SamplingParams(temperature=temperature, seed=1)
    with pytest.raises(EngineError, match="non-finite logits"):
        sample(torch.tensor([0.1, float("nan"), 0.3]), p, torch.Generator().manual_seed(1))
    assert sample(torch.tensor([0.1, float("-inf"), 0.3]), p, torch.Generator().manual_seed(1)) in (0, 2)


@pytest.mark.story("GT-027")
def test_a_lone_surrogate_and_bad_load_arguments_are_named():
    """A str holding a lone surrogate made the tokenizers library say 'TextInputSequence must be
    str'; load() took a path of 123 or '' and a dtype of 'float32' or torch.int8 to raw torch errors
    (or a model that failed later); dequantize read a type of 2.5 as Q4_0."""
    import numpy as np

    from gpt_engine.errors import GGUFError, ModelError, TokenizerError

    m = gpt_engine.load()
    with pytest.raises(TokenizerError, match="lone surrogate U\\+DCFF at offset 1"):
        m.tokenizer.encode("a\udcffb")
    for bad in (123, ""):
        with pytest.raises(ModelError, match="model path must be a non-empty str or path"):
            gpt_engine.load(bad)
    for bad in ("float32", torch.int8):
        with pytest.raises(ModelError, match="dtype must be torch.float32, torch.float16 or torch.bfloat16"):
            gpt_engine.load(dtype=bad)
    for bad in (2.5, True, None):
        with pytest.raises(GGUFError, match="unknown ggml type"):
            gpt_engine.dequantize(np.zeros(18, np.uint8), bad)
    assert gpt_engine.dequantize(np.zeros(18, np.uint8), np.int64(2)).shape == (32,)  # Q4_0 by its id
