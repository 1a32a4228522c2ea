"""GT-031 / GT-046: streamed text never splits a UTF-8 character, and invalid bytes come out
exactly as Python's whole-stream ``bytes.decode("utf-8", "replace")``.

Oracles (none of them ours):
* token bytes: tiktoken's ``decode_single_token_bytes`` with the r50k ranks (GPT-2 vocabulary),
* whole stream: ``bytes.decode("utf-8", errors="replace")`` of all token bytes,
* per push: CPython's incremental UTF-8 decoder (``codecs``) fed the same bytes token by token:
  it emits exactly the characters that are complete, and holds only an unfinished sequence.
Our side is the tokenizer built from a GGUF with the real GPT-2 vocabulary.
"""
from __future__ import annotations

import codecs
import functools

import numpy as np
import pytest

from gpt_engine.errors import TokenizerError
from gpt_engine.streaming import Utf8Stream, incomplete_tail
from gpt_engine.tokenizer import load_tokenizer
from tests.test_tokenizer_oracles import (gguf_metadata, load_cases, smollm2_path, smollm2_transformers,
                                          tiktoken_encode, tiktoken_r50k, write_gpt2_vocab_gguf)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = write_gpt2_vocab_gguf(tmp_path_factory.getbasetemp() / "gpt2-vocab.gguf")
    return load_tokenizer(path, gguf_metadata(path))


def byte_token(b: int) -> int:
    """The GPT-2 id of the one-byte token for byte ``b`` (every byte has one), per tiktoken."""
    return tiktoken_r50k().encode_single_token(bytes([b]))


@functools.cache
def unfinished_prefixes() -> frozenset[bytes]:
    """Every proper prefix of the UTF-8 encoding of every Unicode scalar value, by brute force:
    exactly the byte tails that may still become a character and so must be held back."""
    out = set()
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        e = chr(cp).encode("utf-8")
        out.update(e[:k] for k in range(1, len(e)))
    return frozenset(out)


def oracle_hold(buf: bytes) -> int:
    p = unfinished_prefixes()
    return next((t for t in (3, 2, 1) if len(buf) >= t and buf[-t:] in p), 0)


def stream_vs_oracle(tok, ids):
    """Push ``ids`` one by one (token bytes from tiktoken). After each push the text emitted so far
    must be the decode of all bytes except a held unfinished character (brute-force rule above), and
    never behind CPython's incremental decoder; the total must equal the whole-stream decode."""
    enc = tiktoken_r50k()
    cpython = codecs.getincrementaldecoder("utf-8")(errors="replace")
    s = Utf8Stream(tok)
    pieces, seen, lower = [], b"", ""
    for i in ids:
        b = enc.decode_single_token_bytes(i)
        piece = s.push(i)
        pieces.append(piece)
        seen += b
        lower += cpython.decode(b)
        emitted = "".join(pieces)
        assert emitted == seen[:len(seen) - oracle_hold(seen)].decode("utf-8", errors="replace"), (ids, i)
        assert emitted.startswith(lower), (ids, i)
    tail = s.flush()
    whole = enc.decode_bytes(ids).decode("utf-8", errors="replace")
    assert "".join(pieces) + tail == whole
    assert lower + cpython.decode(b"", final=True) == whole
    return pieces + [tail]


def splits_a_character(ids) -> bool:
    """True when some token boundary falls inside a character (tiktoken's bytes)."""
    enc = tiktoken_r50k()
    return any(_invalid_alone(enc.decode_single_token_bytes(i)) for i in ids)


def _invalid_alone(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# --------------------------------------------------------------------------- GT-031

MULTIBYTE_TEXTS = {
    "cjk": "日本語のテキストと中文和한국어",
    "rare_cjk": "𠀀𠀁𪚥龍",
    "emoji": "Hello 😀🎉🦀🐍🫠 world",
    "skin_tones": "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "zwj": "👨‍👩‍👧‍👦 👩‍💻 🧑🏽‍🚀 🏳️‍🌈 ❤️‍🔥",
    "flags": "🇺🇸🇯🇵🇫🇷🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "two_byte": "café naïve Straße Привет Ελληνικά שלום مرحبا",
    "three_byte": "नमस्ते ภาษาไทย €₹ ∀x∈ℝ",
    "combining": "e\u0301 Z\u0351\u0363a\u0336",
}


@pytest.mark.story("GT-031")
@pytest.mark.parametrize("name", sorted(MULTIBYTE_TEXTS))
def test_multibyte_text_streams_whole_characters(tok, name):
    text = MULTIBYTE_TEXTS[name]
    ids = tiktoken_encode(text)
    assert tok.encode(text) == ids
    pieces = stream_vs_oracle(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.story("GT-031")
def test_token_boundaries_do_split_characters_in_these_texts():
    """The texts above really exercise the hold-back path: GPT-2 cuts their characters."""
    split = [n for n, t in MULTIBYTE_TEXTS.items() if splits_a_character(tiktoken_encode(t))]
    assert {"cjk", "rare_cjk", "emoji", "skin_tones", "zwj", "flags"} <= set(split)


@pytest.mark.story("GT-031")
def test_every_conformance_string_streams(tok):
    held = 0
    for case in load_cases():
        ids = tiktoken_encode(case["text"])
        pieces = stream_vs_oracle(tok, ids)
        assert "".join(pieces) == case["text"]
        held += sum(1 for p in pieces[:-1] if p == "")
    assert held > 50  # many pushes had to wait for the rest of a character


@pytest.mark.story("GT-031")
def test_pushes_wait_for_the_last_byte(tok):
    """A 4-byte emoji fed byte by byte: nothing until the fourth byte."""
    raw = "😀".encode()
    s = Utf8Stream(tok)
    assert [s.push(byte_token(b)) for b in raw] == ["", "", "", "😀"]
    assert s.flush() == ""


# --------------------------------------------------------------------------- GT-046

# Boundary code points of every UTF-8 length class (Unicode Table 3-7).
CODE_POINTS = [0x00, 0x41, 0x7F,                      # 1 byte
               0x80, 0xE9, 0x7FF,                     # 2 bytes
               0x800, 0xFFF, 0x1000, 0xD7FF, 0xE000, 0xFFFD, 0xFFFF,   # 3 bytes (no surrogates)
               0x10000, 0x1F600, 0x3FFFF, 0x40000, 0xFFFFF, 0x100000, 0x10FFFF]  # 4 bytes


@pytest.mark.story("GT-046")
@pytest.mark.parametrize("cp", CODE_POINTS, ids=lambda c: f"U+{c:04X}")
def test_every_length_class_byte_by_byte(tok, cp):
    ch = chr(cp)
    raw = ch.encode("utf-8")
    ids = [byte_token(b) for b in raw]
    pieces = stream_vs_oracle(tok, ids)
    assert pieces[:len(raw)] == [""] * (len(raw) - 1) + [ch]
    assert tok.decode(ids) == ch


# Ill-formed sequences; each one is fed one byte per token, then followed by ASCII.
INVALID = {
    "stray_continuation": b"\x80",
    "stray_continuations": b"\x80\xbf\x9f",
    "lone_lead_c2": b"\xc2",
    "lead_lead": b"\xc2\xc2\xa9",
    "overlong_2": b"\xc0\xaf",
    "overlong_2_c1": b"\xc1\xbf",
    "overlong_3": b"\xe0\x80\xaf",
    "overlong_3_edge": b"\xe0\x9f\xbf",
    "overlong_4": b"\xf0\x80\x80\xaf",
    "overlong_4_edge": b"\xf0\x8f\xbf\xbf",
    "surrogate_high": b"\xed\xa0\x80",
    "surrogate_low": b"\xed\xbf\xbf",
    "surrogate_pair": b"\xed\xa0\xbd\xed\xb8\x80",
    "above_10ffff": b"\xf4\x90\x80\x80",
    "f5_lead": b"\xf5\x80\x80\x80",
    "ff_byte": b"\xff",
    "fe_ff": b"\xfe\xff",
    "truncated_3_then_ascii": b"\xe2\x82A",
    "truncated_4_then_ascii": b"\xf0\x9f\x98A",
    "truncated_4_then_emoji": b"\xf0\x9f\xf0\x9f\x98\x80",
    "truncated_at_end_2": b"ok\xc3",
    "truncated_at_end_3": b"ok\xe6\x97",
    "truncated_at_end_4": b"ok\xf0\x9f\x98",
    "bad_second_e0": b"\xe0\x80",
    "bad_second_f4": b"\xf4\x90",
    "valid_then_stray": "é".encode() + b"\xa9",
    "five_byte_pattern": b"\xf8\x88\x80\x80\x80",
}


@pytest.mark.story("GT-046")
@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_sequences_like_python_replace(tok, name):
    raw = INVALID[name]
    for tail in (b"", b"xyz"):
        ids = [byte_token(b) for b in raw + tail]
        stream_vs_oracle(tok, ids)
        assert tok.decode(ids) == (raw + tail).decode("utf-8", errors="replace")


@pytest.mark.story("GT-046")
def test_flush_releases_an_unfinished_character_as_replacement(tok):
    s = Utf8Stream(tok)
    assert s.push(byte_token(0xE6)) == "" and s.push(byte_token(0x97)) == ""
    assert s.pending == b"\xe6\x97"
    assert s.flush() == b"\xe6\x97".decode("utf-8", errors="replace")
    assert s.pending == b"" and s.flush() == ""  # flushed streams start over
    assert s.push(byte_token(0x41)) == "A"


@pytest.mark.story("GT-031", "GT-046")
def test_random_token_sequences_property(tok):
    """Random ids, biased towards byte tokens and tokens that are not valid UTF-8 alone."""
    enc = tiktoken_r50k()
    partial = [i for i in range(enc.n_vocab) if _invalid_alone(enc.decode_single_token_bytes(i))]
    bytes_ids = [byte_token(b) for b in range(256)]
    assert len(partial) > 100
    rng = np.random.default_rng(2024)
    for _ in range(1500):
        n = int(rng.integers(0, 25))
        pools = rng.integers(0, 3, size=n)
        ids = [int(rng.integers(0, enc.n_vocab)) if p == 0 else
               partial[int(rng.integers(0, len(partial)))] if p == 1 else
               bytes_ids[int(rng.integers(0, 256))] for p in pools]
        stream_vs_oracle(tok, ids)


@pytest.mark.story("GT-046")
def test_random_byte_strings_hold_back_rule():
    """incomplete_tail vs the brute-force set of unfinished prefixes on random byte strings."""
    rng = np.random.default_rng(7)
    alphabet = np.array([0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF,
                         0xF0, 0xF1, 0xF4, 0xF5, 0xFF], dtype=np.uint8)
    for _ in range(20000):
        raw = bytes(rng.choice(alphabet, size=int(rng.integers(1, 7))).tolist())
        assert incomplete_tail(raw) == oracle_hold(raw), raw


@pytest.mark.story("GT-046")
def test_surrogate_lead_is_released_at_once(tok):
    """ED A0 can never become a character (after ED the next byte must be 80..9F, Unicode Table
    3-7), so both bytes are replaced at once. CPython's incremental decoder only notices at the
    third byte; the text is the same, ours just is not late."""
    s = Utf8Stream(tok)
    assert s.push(byte_token(0xED)) == ""
    assert s.push(byte_token(0xA0)) == b"\xed\xa0".decode("utf-8", errors="replace")
    assert s.push(byte_token(0x80)) + s.flush() == "\ufffd"
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert dec.decode(b"\xed\xa0") == ""  # the difference described above, still there


@pytest.mark.story("GT-046")
def test_out_of_range_token_is_refused(tok):
    s = Utf8Stream(tok)
    with pytest.raises(TokenizerError):
        s.push(tok.vocab_size)
    with pytest.raises(TokenizerError):
        s.push(-1)


@pytest.mark.story("GT-031")
def test_smollm2_streaming_with_transformers_bytes():
    """The SmolLM2 vocabulary: ids and token bytes from transformers' tokenizer of the same GGUF."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = smollm2_path()
    tok = load_tokenizer(path, gguf_metadata(path))
    hf = smollm2_transformers()
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    split = 0
    for text in MULTIBYTE_TEXTS.values():
        ids = hf.encode(text, add_special_tokens=False)
        s = Utf8Stream(tok)
        seen, emitted = b"", ""
        for i in ids:
            seen += bytes(to_byte[c] for c in hf.convert_ids_to_tokens(i))
            piece = s.push(i)
            split += piece == ""
            emitted += piece
            assert emitted == seen[:len(seen) - oracle_hold(seen)].decode("utf-8", errors="replace"), (text, i)
        assert emitted + s.flush() == text == seen.decode("utf-8")
    assert split > 10
