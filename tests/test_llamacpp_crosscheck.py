"""GX-004: the same GGUF file through llama.cpp (``llama-cpp-python``, CPU) and through our engine.

Compared: token ids of several prompts (identical), the logits of a prompt (one full forward on
both sides: NMSE within the tolerance of the file's weight type, tests/tolerances.py says where
each difference comes from) and greedy continuations through both engines' KV-cache decode paths
(identical ids). Files: the embedded SmolLM2-135M Q4_1, and seeded GPT-2, Llama and gpt-oss files
from the generator in F32, F16 and quantized types.

llama.cpp runs as deterministically as its CPU path allows, and as close to fp32 as it goes, so
that what remains is the documented arithmetic of its kernels and not a setting: 2 threads, a
float32 KV cache (its default fp16 cache rounds every key and value), no flash attention (its CPU
kernel rounds Q to fp16), and no extra weight buffer types (``use_extra_bufts``: the repacked and
AMX layouts). The AMX one also crashes (SIGSEGV on ``ldtilecfg``) on machines whose CPU reports
AMX but whose kernel or sandbox does not let a process use it. docs/llamacpp.md has the measured
errors.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

import gpt_engine
from gpt_engine import testmodels
from gpt_engine.models import gpt_oss
from tests.conftest import SMOLLM2_PROMPT
from tests.tolerances import tol

STORY = pytest.mark.story("GX-004")

GGML_TYPE_F32 = 0   # ggml_type of the KV cache we ask for

# Text that exercises the pre-tokenizers: contractions, digit runs, punctuation runs, repeated
# spaces, newlines and tabs, accented letters, CJK and an emoji (multi-byte UTF-8).
PROMPTS = [
    SMOLLM2_PROMPT,
    "Hello, world! It's 2024: don't we've 1234567 numbers... and $3.50?",
    "  two leading spaces\n\nthen lines\tand\ttabs   and   runs",
    "naïve café Ünïcode, 東京 and an emoji 🙂 at the end",
]
GREEDY_TOKENS = 32


@contextlib.contextmanager
def _no_extra_buffer_types():
    """llama-cpp-python's ``Llama`` takes no ``use_extra_bufts`` argument; it reads the model
    defaults from ``llama_model_default_params``, so that is what we wrap, only while loading."""
    import llama_cpp

    lib = llama_cpp.llama_cpp
    original = lib.llama_model_default_params

    def defaults():
        p = original()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = defaults
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def llamacpp(path, n_ctx: int = 256, vocab_only: bool = False):
    from llama_cpp import Llama

    with _no_extra_buffer_types():
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                     n_threads=2, n_threads_batch=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                     flash_attn=False, vocab_only=vocab_only, verbose=False)


def llamacpp_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))


def llamacpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    """Greedy ids through llama.cpp's decode path: the prompt in one batch, then one token per
    step, each the argmax of the last logits (llama.cpp's own greedy sampler is argmax too)."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def nmse(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((ours.double() - ref.double()) ** 2).sum() / (ref.double() ** 2).sum())


def _tie_report(m, prompt: list[int], ours: list[int], theirs: list[int]) -> str:
    """Where two greedy runs part: position and our logit gap between the two picks there."""
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    row = m.logits(prompt + ours[:k])[-1]
    gap = float(row[ours[k]] - row[theirs[k]])
    kind = "an EXACT tie" if gap == 0.0 else f"our logit gap {gap:.3g} (logit std {float(row.std()):.3g})"
    return f"greedy ids part at step {k}: ours {ours[k]}, llama.cpp {theirs[k]}; {kind}"


# --------------------------------------------------------------------------- files

# name -> (generator, arguments, tolerance name). Dense types: GPT-2 and Llama with both
# vocabularies (small and the real 50k GPT-2 one); every quantized type the generator writes with
# 32-value blocks. gpt-oss: F32 everywhere (the architecture; k < E routing, sinks, sliding window,
# YaRN and none), F16, and MXFP4 experts with every expert used (see test_logits docstring).
FILES = {
    "gpt2-F32-gpt2": ("gpt2", {"qtype": "F32", "vocab": "gpt2"}, "llamacpp_nmse_f32_gelu"),
    "gpt2-F32-small": ("gpt2", {"qtype": "F32"}, "llamacpp_nmse_f32_gelu"),
    "gpt2-F16-gpt2": ("gpt2", {"qtype": "F16", "vocab": "gpt2"}, "llamacpp_nmse_f16"),
    "gpt2-Q8_0-small": ("gpt2", {"qtype": "Q8_0"}, "llamacpp_nmse_q8_activations"),
    "gpt2-Q4_0-small": ("gpt2", {"qtype": "Q4_0"}, "llamacpp_nmse_q8_activations"),
    "gpt2-MXFP4-gpt2": ("gpt2", {"qtype": "MXFP4", "vocab": "gpt2"}, "llamacpp_nmse_q8_activations"),
    "llama-F32-gpt2": ("llama", {"qtype": "F32", "vocab": "gpt2"}, "llamacpp_nmse_f32"),
    "llama-F32-small": ("llama", {"qtype": "F32"}, "llamacpp_nmse_f32"),
    "llama-F16-small": ("llama", {"qtype": "F16"}, "llamacpp_nmse_f16"),
    "llama-Q8_0-gpt2": ("llama", {"qtype": "Q8_0", "vocab": "gpt2"}, "llamacpp_nmse_q8_activations"),
    "llama-Q4_1-small": ("llama", {"qtype": "Q4_1"}, "llamacpp_nmse_q8_activations"),
    "llama-MXFP4-small": ("llama", {"qtype": "MXFP4"}, "llamacpp_nmse_q8_activations"),
    # Llama 3.1's rope scaling as the rope_freqs.weight tensor (original context 32: the test
    # prompt reaches the scaled frequencies)
    "llama-F32-llama3": ("llama", {"qtype": "F32", "llama3_orig_ctx": 32}, "llamacpp_nmse_f32"),
    "gpt-oss-F32-yarn": ("gpt-oss", {"expert_qtype": "F32"}, "llamacpp_nmse_f32"),
    "gpt-oss-F32-noyarn-h8kv1-e8k4": ("gpt-oss", {"expert_qtype": "F32", "yarn": None, "n_head": 8, "n_head_kv": 1,
                                                  "n_expert": 8, "n_expert_used": 4, "n_ff": 32, "sliding_window": 4,
                                                  "seed": 3}, "llamacpp_nmse_f32"),
    "gpt-oss-F16": ("gpt-oss", {"qtype": "F16", "expert_qtype": "F16", "seed": 1}, "llamacpp_nmse_f16"),
    "gpt-oss-MXFP4-experts-all-used": ("gpt-oss", {"n_expert": 4, "n_expert_used": 4, "seed": 2},
                                       "llamacpp_nmse_q8_activations"),
}
# Greedy: the files whose logits agree to ~1e-3 of their spread or better. Random-weight files have
# flat logits (std ~0.4 over 512-50k tokens, top-2 gaps often < 1e-3), and q8 activations move
# them by ~2e-2: greedy ids on quantized random files compare that noise, not the engines. The
# quantized greedy check is SmolLM2 Q4_1 (a real model, peaked logits).
GREEDY_FILES = ["gpt2-F32-gpt2", "gpt2-F16-gpt2", "llama-F32-gpt2", "llama-F16-small", "gpt-oss-F32-yarn",
                "gpt-oss-F32-noyarn-h8kv1-e8k4"]


class Files:
    """GPT-2 and Llama files from the session's ``models`` factory (tests/conftest.py: the same
    seeded files other tests write, made once per session); the gpt-oss ones written here."""

    def __init__(self, root, models):
        self.root, self.models = root, models
        self._made: dict[str, object] = {}

    def path(self, name: str):
        arch, kw, _ = FILES[name]
        if arch != "gpt-oss":
            return self.models.path(arch, **kw)
        if name not in self._made:
            p = self.root / f"{name}.gguf"
            testmodels.make_gpt_oss(p, **kw)
            self._made[name] = p
        return self._made[name]


@pytest.fixture(scope="module")
def files(tmp_path_factory, models) -> Files:
    return Files(tmp_path_factory.mktemp("llamacpp"), models)


def load_ours(path):
    """Our model; gpt-oss with llama.cpp's rounded YaRN ramp ends (docs/gpt_oss.md: we keep
    transformers' unrounded ones by default, which differ on purpose)."""
    m = gpt_engine.load(path)
    c = m.config
    if c.architecture == "gpt-oss" and c.yarn is not None:
        m.net.set_rope(*gpt_oss.yarn_inv_freq(c.head_dim, c.rope_theta, c.yarn, round_ends=True))
    return m


def prompt_ids(m, n: int = 64) -> list[int]:
    """Text for the real vocabularies; seeded random ids (no special tokens) for the small one and
    for gpt-oss, whose inputs must span several sliding windows."""
    if m.config.vocab_size >= 49152 and m.config.architecture != "gpt-oss":
        text = " ".join(PROMPTS[:2]) + " The river flows past the old mill, and the miller's daughter counts"
        return m.tokenizer.encode(text)[:n]
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, m.config.vocab_size - 1, (n,), generator=g).tolist()


# --------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def smollm2_pair(smollm2_path):
    return gpt_engine.load(smollm2_path), llamacpp(smollm2_path, n_ctx=256)


@STORY
def test_smollm2_tokenization_matches(smollm2_pair):
    m, llm = smollm2_pair
    for text in PROMPTS:
        assert m.tokenizer.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), text


@STORY
def test_smollm2_logits_match(smollm2_pair):
    m, llm = smollm2_pair
    for text in (SMOLLM2_PROMPT + " a city with a long history, and its people", PROMPTS[1]):
        ids = m.encode_prompt(text)
        ours, ref = m.logits(ids), llamacpp_logits(llm, ids)
        err = nmse(ours, ref)
        assert err <= tol("llamacpp_nmse_smollm2"), f"{text!r}: NMSE {err:.3g}"


def _same_or_near_tie(m, llm, ids: list[int], ours: list[int], theirs: list[int]) -> None:
    """Identical ids, or identical up to a parting step where each engine's full forward over the
    common prefix picks what its own decode path picked (neither decode path is at fault) and the
    two rows agree within llamacpp_nmse_smollm2_row: a near-tie inside the documented tolerance,
    reported as a warning, never hidden; an exact tie is named as such."""
    if ours == theirs:
        return
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    prefix = ids + ours[:k]
    row_ours, row_theirs = m.logits(prefix)[-1], llamacpp_logits(llm, prefix)[-1]
    assert int(row_ours.argmax()) == ours[k] and int(row_theirs.argmax()) == theirs[k]
    err = nmse(row_ours[None], row_theirs[None])
    assert err <= tol("llamacpp_nmse_smollm2_row"), f"step {k}: NMSE {err:.3g}; " + _tie_report(m, ids, ours, theirs)
    warnings.warn(_tie_report(m, ids, ours, theirs) + f"; the rows there agree to NMSE {err:.3g}")


@STORY
def test_smollm2_greedy_matches(smollm2_pair):
    """The " Paris" prompt. Its 32 ids were identical on the machines before 2026-12-02; the same
    pinned llama-cpp-python built on an AMD EPYC with AVX2 (its q8_1 matmuls take another SIMD
    path) parts from us at step 26, where our two candidates are 0.09 apart (logit std 2.6; a
    float64 run of our model picks ours too) and the rows agree to NMSE ~1e-4. So the ids must be
    identical or part only as a near-tie, checked as the next test checks its prompt."""
    m, llm = smollm2_pair
    ids = m.encode_prompt(SMOLLM2_PROMPT)
    ours = m.generate(ids, max_new_tokens=GREEDY_TOKENS, stop_at_eos=False).token_ids
    theirs = llamacpp_greedy(llm, ids, GREEDY_TOKENS)
    assert m.tokenizer.decode(ours[:1]) == " Paris"
    _same_or_near_tie(m, llm, ids, ours, theirs)


@STORY
def test_smollm2_greedy_parts_only_within_the_tolerance(smollm2_pair):
    """A second prompt, where the runs DO part (measured: at step 9, our two candidates 0.25
    apart with the logit std at 4.0; llama.cpp's q8_1 activations move this model's logits by up
    to 1.3). Identical ids up to the parting step, and there: each engine's full forward over the
    common prefix picks what its own decode path picked (neither decode path is at fault), and the
    two rows agree within llamacpp_nmse_smollm2_row, so the parting is a near-tie inside the
    documented tolerance. Reported as a warning, never hidden; an exact tie is named as such."""
    m, llm = smollm2_pair
    ids = m.encode_prompt("Once upon a time, in a small village by the sea,")
    ours = m.generate(ids, max_new_tokens=GREEDY_TOKENS, stop_at_eos=False).token_ids
    theirs = llamacpp_greedy(llm, ids, GREEDY_TOKENS)
    _same_or_near_tie(m, llm, ids, ours, theirs)


# --------------------------------------------------------------------------- generated files

@STORY
@pytest.mark.parametrize("vocab", ["small", "gpt2"])
def test_tokenization_matches_gpt2_vocabularies(files, vocab):
    name = f"gpt2-F32-{vocab}"
    m, llm = gpt_engine.load(files.path(name)), llamacpp(files.path(name), vocab_only=True)
    for text in PROMPTS:
        assert m.tokenizer.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), text


@STORY
def test_tokenization_matches_gpt_oss_vocabulary(tmp_path):
    """gpt-oss's o200k vocabulary (201,088 tokens, pre-tokenizer "gpt-4o") in a metadata-only file."""
    from gpt_engine.tokenizer import load_tokenizer
    from tests.test_tokenizer_oracles import gguf_metadata

    path = testmodels.write_o200k_vocab_gguf(tmp_path / "o200k.gguf")
    ours = load_tokenizer(path, gguf_metadata(path))
    llm = llamacpp(path, vocab_only=True)
    for text in PROMPTS:
        assert ours.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), text


@STORY
@pytest.mark.parametrize("name", list(FILES))
def test_logits_match(files, name):
    """NMSE of our logits vs llama.cpp's over 64 positions. gpt-oss files with k < E experts per
    token are F32: with q8 activations llama.cpp's router logits move by ~1e-2, and where two
    experts' router logits lie that close the other one gets picked (measured: a 0.0045 top-k
    margin flipped one position's logits by 0.45), a discrete difference no NMSE bound describes.
    MXFP4 experts are therefore compared with every expert used, where routing cannot flip."""
    path = files.path(name)
    m = load_ours(path)
    ids = prompt_ids(m)
    llm = llamacpp(path, n_ctx=max(256, len(ids)))
    for text in PROMPTS:
        assert m.tokenizer.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), text
    ours, ref = m.logits(ids), llamacpp_logits(llm, ids)
    assert ours.shape == ref.shape and torch.isfinite(ref).all()
    err = nmse(ours, ref)
    bound = FILES[name][2]
    assert err <= tol(bound), f"{name}: NMSE {err:.3g} > {bound} {tol(bound):.3g}"


@STORY
@pytest.mark.parametrize("name", GREEDY_FILES)
def test_greedy_matches(files, name):
    path = files.path(name)
    m = load_ours(path)
    ids = prompt_ids(m, n=32)
    llm = llamacpp(path, n_ctx=256)
    ours = m.generate(ids, max_new_tokens=GREEDY_TOKENS, stop_at_eos=False).token_ids
    theirs = llamacpp_greedy(llm, ids, GREEDY_TOKENS)
    assert ours == theirs, f"{name}: " + _tie_report(m, ids, ours, theirs)
