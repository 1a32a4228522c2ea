"""GT-042: text in, text out. A prompt string goes through ``Model.generate`` (tokenize, prefill,
greedy decode, detokenize) and through the ``gpt-engine generate`` command line; the ids equal
transformers' greedy generation on the same file from tiktoken's ids of the prompt, and the text
equals tiktoken's decoding of those ids (invalid UTF-8 replaced, as bytes.decode does)."""
from __future__ import annotations

import json

import pytest

import gpt_engine
from tests.test_tokenizer_oracles import tiktoken_encode, tiktoken_r50k

from ._util import DEVICES, cli, model_file, oracle_greedy, prompt_ids

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time,"
N_NEW = 24


def _oracle_text(ids: list[int]) -> str:
    return tiktoken_r50k().decode_bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
def test_prompt_to_text_equals_transformers_greedy(models, device):
    path = models.path("gpt2", "F16", vocab="gpt2")
    m = gpt_engine.load(path, device=device)
    out = m.generate(PROMPT, max_new_tokens=N_NEW, stop_at_eos=False)
    want_prompt = tiktoken_encode(PROMPT)
    assert out.prompt_ids == want_prompt  # GPT-2 adds no BOS to a non-empty prompt
    want = oracle_greedy(models, path, want_prompt, N_NEW, m.tokenizer.eos_id)
    assert out.token_ids == want
    assert out.finish_reason == "length"
    assert out.text == _oracle_text(want)
    # streamed pieces are the same text
    assert "".join(m.stream(PROMPT, max_new_tokens=N_NEW, stop_at_eos=False)) == out.text


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,qtype", [("gpt2", "Q8_0"), ("llama", "Q4_K"), ("llama", "MXFP4")])
def test_quantized_greedy_ids_equal_transformers(models, arch, qtype, device):
    path = model_file(models, arch, qtype)
    m = gpt_engine.load(path, device=device)
    prompt = prompt_ids(11, m.config.vocab_size, seed=4)
    out = m.generate(prompt, max_new_tokens=N_NEW, stop_at_eos=False)
    assert out.token_ids == oracle_greedy(models, path, prompt, N_NEW, m.tokenizer.eos_id)
    assert out.text == m.tokenizer.decode(out.token_ids)


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
def test_command_line_generate_equals_transformers_greedy(models, device):
    path = models.path("gpt2", "F16", vocab="gpt2")
    r = cli("generate", str(path), "--prompt", PROMPT, "--max-new-tokens", str(N_NEW), "--device", device, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = oracle_greedy(models, path, tiktoken_encode(PROMPT), N_NEW, tiktoken_r50k().eot_token)
    assert got["token_ids"] == want
    assert got["text"] == _oracle_text(want)
    assert got["finish_reason"] == "length"
