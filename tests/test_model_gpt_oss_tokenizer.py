"""GX-002: gpt-oss's tokenizer as its GGUF stores it (o200k BPE, tokenizer.ggml.pre "gpt-4o"),
id for id against offline o200k oracles.

The test file carries the real vocabulary: OpenAI's o200k_base ranks (bundled by the bpe-openai
package; sha256 checked against tiktoken's pin) written as GGUF tokens + merges, plus gpt-oss's
special tokens up to id 201087 (testmodels.write_o200k_vocab_gguf, generated per session, ~12 MB).

Oracles: (1) tiktoken's own o200k_harmony encoding (tiktoken_ext.openai_public: gpt-oss's
pattern and specials) built from those ranks instead of a download; (2) the bpe-openai package's
Rust o200k_base encoder, on texts without special tokens.
"""
from __future__ import annotations

import functools
from unittest import mock

import pytest

from gpt_engine import testmodels
from gpt_engine.tokenizer import load_tokenizer
from tests.test_tokenizer_oracles import case_id, gguf_metadata, load_cases

STORY = pytest.mark.story("GX-002")

# o200k's split differs from GPT-2's on letter case, apostrophes, digit runs, punctuation and
# line breaks; these strings exercise each branch of the pattern (tokenizer.O200K_PATTERN).
O200K_CASES = [
    "HelloWorld", "camelCaseIdentifierName", "XMLHttpRequest", "ALLCAPS words", "McDonald's",
    "I'M HERE, YOU'RE THERE, THEY'LL SEE", "don't DON'T Don'T", "12345678901", "3.14159 and 1,000,000",
    "a/b/c\n/d", "foo();\r\n\tbar();", "...!!!???\n\n\n", "   leading and trailing   ", "tab\tseparated\tvalues",
    "Ünïcödé ÀÉÎÕÜ straße", "Привет, Мир! ПРИВЕТ", "日本語のテキスト、漢字とカタカナ", "한국어 텍스트",
    "emoji 👩‍👩‍👧‍👦 and 🏳️‍🌈 flags", "mixed123abc456DEF", "x = y**2 + z_1 // 3", "<|start|>user<|message|>hi<|end|>",
    "<|startoftext|><|return|><|channel|>analysis<|call|><|constrain|><|endofprompt|><|reserved_200013|>",
    "ǅungla ǈudi ǋeto (title-case letters)", "mark\u0301ed combi\u0308ning", "\u00a0non\u2009breaking\u3000spaces",
]


@functools.cache
def harmony():
    """tiktoken's o200k_harmony encoding with the ranks read from the sha-checked local file."""
    import tiktoken
    import tiktoken_ext.openai_public as openai_public

    def local_ranks(url, expected_hash=None):
        assert url.endswith("/o200k_base.tiktoken") and expected_hash == testmodels.O200K_BASE_SHA256
        return dict(testmodels.o200k_ranks())

    with mock.patch.object(openai_public, "load_tiktoken_bpe", local_ranks):
        spec = openai_public.o200k_harmony()
    return tiktoken.Encoding(**spec)


@functools.cache
def rust_o200k():
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = testmodels.write_o200k_vocab_gguf(tmp_path_factory.mktemp("o200k") / "gpt-oss-vocab.gguf")
    return load_tokenizer(path, gguf_metadata(path))


CASES = [c["text"] for c in load_cases()] + O200K_CASES
IDS = [case_id(i, c) for i, c in enumerate(load_cases())] + [f"o200k-{i:02d}" for i in range(len(O200K_CASES))]


@STORY
def test_vocabulary_is_gpt_oss(tok):
    """201,088 ids; every special of tiktoken's o200k_harmony sits at its id as one control token."""
    enc = harmony()
    assert tok.vocab_size == enc.n_vocab == testmodels.GPT_OSS_N_VOCAB == 201088
    assert len(enc._special_tokens) == 1091  # 1090 special ids; 200018 has two names in tiktoken
    for name, i in enc._special_tokens.items():
        if name == "<|reserved_200018|>":
            continue  # the alias of <|endofprompt|>; a GGUF token list holds one name per id
        assert tok.encode(name) == [i], name
        assert tok.decode([i]) == name
    assert (tok.bos_id, tok.eos_id) == (enc._special_tokens["<|startoftext|>"], enc._special_tokens["<|return|>"])


@STORY
@pytest.mark.parametrize("text", CASES, ids=IDS)
def test_encoding_matches_tiktoken_o200k_harmony(tok, text):
    expected = harmony().encode(text, allowed_special="all")
    ids = tok.encode(text)
    assert ids == expected
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@STORY
def test_encoding_matches_the_rust_o200k_encoder(tok):
    rust = rust_o200k()
    checked = 0
    for text in CASES:
        if "<|" in text:
            continue
        assert tok.encode(text) == rust.encode_ordinary(text), text
        checked += 1
    assert checked >= 200


@STORY
def test_the_split_is_not_gpt2s(tok):
    """The pre-tokenizer matters on this vocabulary: GPT-2's split gives different ids."""
    from gpt_engine import tokenizer as tk

    saved = tok.hf.pre_tokenizer
    try:
        tok.hf.pre_tokenizer = tk._gpt2_split()
        differ = [t for t in O200K_CASES if tok.encode(t) != harmony().encode(t, allowed_special="all")]
    finally:
        tok.hf.pre_tokenizer = saved
    assert len(differ) >= 5


@STORY
@pytest.mark.slow
def test_a_model_with_the_real_vocabulary_runs_from_text(tmp_path):
    """End to end from a string: a gpt-oss file carrying the 201,088-token vocabulary (embedding and
    head of that height) tokenizes a harmony-formatted prompt as tiktoken does and matches
    transformers on the logits."""
    import torch

    import gpt_engine
    from tests.tolerances import tol

    path = tmp_path / "oss-o200k.gguf"
    hf = testmodels.make_gpt_oss(path, vocab="o200k", n_embd=32, n_head=2, n_head_kv=1, head_dim=16,
                                 n_expert=4, n_expert_used=2, n_ff=32, sliding_window=4)
    m = gpt_engine.load(path)
    assert m.config.vocab_size == m.tokenizer.vocab_size == 201088
    prompt = "<|start|>user<|message|>What is the capital of France? Answer in one word.<|end|><|start|>assistant"
    ids = m.encode_prompt(prompt)
    assert ids == harmony().encode(prompt, allowed_special="all") and len(ids) >= 4 * 4
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    err = (m.logits(ids) - ref).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"max |ours - transformers| = {err:.3g}"
    out = m.generate(prompt, max_new_tokens=4, stop_at_eos=False)
    assert len(out.token_ids) == 4 and out.token_ids[0] == int(ref[-1].argmax())
