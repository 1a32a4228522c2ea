"""GT-042: bad input gives one clear line, through the API (an ``EngineError`` subclass) and the
command line (exit status 2, one ``error:`` line on stderr, nothing on stdout): a malformed file,
a token id outside the vocabulary, a prompt longer than the context. After each refusal the
model still serves a good request with the same result as before."""
from __future__ import annotations

import pytest

import gpt_engine
from gpt_engine import ContextOverflowError, EngineError, GGUFError

from ._util import DEVICES, cli, prompt_ids


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def malformed(tmp_path_factory, models):
    """Files that are not valid GGUF models: garbage, a truncated valid file, a wrong version."""
    d = tmp_path_factory.mktemp("malformed")
    good = models.path("gpt2", "F32").read_bytes()
    files = {"garbage.gguf": b"this is not a model file at all" * 4,
             "truncated.gguf": good[: len(good) // 2],
             "header-only.gguf": good[:24],
             "version-99.gguf": good[:4] + (99).to_bytes(4, "little") + good[8:]}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["garbage.gguf", "truncated.gguf", "header-only.gguf", "version-99.gguf"])
def test_a_malformed_file_is_one_clear_error(malformed, name, device):
    path = malformed[name]
    with pytest.raises(GGUFError) as err:
        gpt_engine.load(path, device=device)
    msg = _one_line(err.value)
    assert str(path) in msg or path.name in msg, msg
    r = cli("generate", str(path), "--prompt", "Hello", "--device", device)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout[:200])
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0], r.stderr


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_tokens_and_long_prompts_are_refused(models, device):
    path = models.path("llama", "F16")  # n_ctx 128, vocabulary 512
    m = gpt_engine.load(path, device=device)
    vocab, n_ctx = m.config.vocab_size, m.config.n_ctx
    good = prompt_ids(7, vocab, seed=1)
    want = m.generate(good, max_new_tokens=8, stop_at_eos=False).token_ids
    for bad in ([vocab], [-1], good + [vocab + 1000]):
        for call in (lambda: m.logits(bad), lambda: m.generate(bad, max_new_tokens=2)):
            with pytest.raises(EngineError, match="out of range") as err:
                call()
            _one_line(err.value)
    # longer than the context: the prompt alone, and the prompt plus the tokens asked for
    with pytest.raises(ContextOverflowError) as err:
        m.logits(prompt_ids(n_ctx + 1, vocab, seed=2))
    assert str(n_ctx) in _one_line(err.value)
    with pytest.raises(ContextOverflowError) as err:
        m.generate(prompt_ids(n_ctx + 5, vocab, seed=3), max_new_tokens=1)
    _one_line(err.value)
    with pytest.raises(ContextOverflowError) as err:
        m.generate(prompt_ids(n_ctx - 4, vocab, seed=3), max_new_tokens=10)
    _one_line(err.value)
    with pytest.raises(ContextOverflowError) as err:
        m.generate("word " * (2 * n_ctx), max_new_tokens=1)
    _one_line(err.value)
    # the model is unharmed
    assert m.generate(good, max_new_tokens=8, stop_at_eos=False).token_ids == want


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
def test_command_line_refuses_a_prompt_longer_than_the_context(models, device):
    path = models.path("llama", "F16")  # n_ctx 128
    r = cli("generate", str(path), "--prompt", "word " * 300, "--max-new-tokens", "4", "--device", device)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout[:200])
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "context length 128" in lines[0], r.stderr
