"""GT-040: a model file's SHA-256 is known and can be pinned; a file that does not match its pin
is refused before anything of it is loaded; an MXFP4 model, pinned, generates end to end on the
GPU. The oracle for every hash is hashlib over the file's bytes as read from disk."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

import gpt_engine
from gpt_engine import gguf_file, provenance
from gpt_engine.errors import EngineError, GGUFError
from tests.test_cli import run_cli
from tests.test_model_gpt_oss import oss  # noqa: F401  (a fixture)

STORY = pytest.mark.story("GT-040")
HAS_CUDA = torch.cuda.is_available()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def opened(monkeypatch):
    """Counts GGUFFile constructions: the first thing load() does with a file's contents."""
    calls = []
    real = gguf_file.GGUFFile.__init__

    def spy(self, *a, **k):
        calls.append(a)
        real(self, *a, **k)
    monkeypatch.setattr(gguf_file.GGUFFile, "__init__", spy)
    return calls


@STORY
def test_a_matching_pin_loads_the_same_model_in_either_case(models):
    path = models.path("gpt2", "Q8_0")
    want = _sha256(path)
    ids = [7, 300, 41, 12]
    ref = gpt_engine.load(path).logits(ids)
    for pin in (want, want.upper()):
        m = gpt_engine.load(path, sha256=pin)
        assert m.sha256 == want
        assert torch.equal(m.logits(ids), ref)


@STORY
def test_a_mismatched_file_is_refused_before_anything_is_loaded(models, tmp_path, opened):
    """One byte of tensor data changed: the pin of the original refuses it, with one line naming
    the file, the expected and the actual hash, and the file is never parsed."""
    src = models.path("gpt2", "Q8_0")
    want = _sha256(src)
    path = tmp_path / "tampered.gguf"
    shutil.copyfile(src, path)
    with gguf_file.GGUFFile(src) as f:
        at = f.tensors["blk.0.attn_qkv.weight"].offset + 5
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 1]))
    got = _sha256(path)
    assert got != want
    opened.clear()   # count from the load on
    with pytest.raises(GGUFError) as e:
        gpt_engine.load(path, sha256=want)
    msg = str(e.value)
    assert isinstance(e.value, EngineError) and "\n" not in msg
    assert str(path) in msg and want in msg and got in msg and "sha256 mismatch" in msg
    assert opened == [], "the file was parsed before its hash was checked"
    m = gpt_engine.load(path, sha256=got)   # its own hash is accepted
    assert m.sha256 == got and len(opened) == 1


@STORY
@pytest.mark.parametrize("pin", ["", "abc", "0" * 63, "0" * 65, "g" * 64, " " + "0" * 63, "0" * 64 + "\n",
                                 b"0" * 64, 0], ids=repr)
def test_a_malformed_pin_is_an_error_before_the_file_is_read(models, opened, pin):
    path = models.path("gpt2", "Q8_0")
    opened.clear()   # count from the load on
    with pytest.raises(EngineError) as e:
        gpt_engine.load(path, sha256=pin)
    msg = str(e.value)
    assert "64 hexadecimal digits" in msg and "\n" not in msg
    assert opened == []


@STORY
def test_unpinned_the_hash_is_computed_on_first_use_from_the_mapped_bytes(models, tmp_path, monkeypatch):
    """load() without a pin reads nothing to hash; Model.sha256 hashes once and caches. It is
    the hash of the bytes the model was mapped from, even once the name points at another file."""
    path = tmp_path / "model.gguf"
    shutil.copyfile(models.path("gpt2", "Q8_0"), path)
    want = _sha256(path)
    calls = []
    real = provenance.sha256_buffer
    monkeypatch.setattr(provenance, "sha256_buffer", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(provenance, "sha256_fd", lambda *a, **k: pytest.fail("an unpinned load hashed the file"))
    m = gpt_engine.load(path)
    assert calls == []
    other = tmp_path / "other.gguf"
    shutil.copyfile(models.path("gpt2", "F32"), other)
    os.replace(other, path)
    assert [m.sha256, m.sha256] == [want, want]
    assert calls == [1], "the hash was not cached"


@STORY
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_hashing_streams_in_chunks(tmp_path, size):
    """Digests over chunk boundaries equal hashlib's over the whole; the real chunk is 8-16 MiB."""
    assert 8 << 20 <= provenance.CHUNK_BYTES <= 16 << 20
    data = os.urandom(size)
    p = tmp_path / "blob"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.lseek(fd, size // 2, os.SEEK_SET)   # the descriptor's position does not matter
        assert provenance.sha256_fd(fd, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    assert provenance.sha256_buffer(data, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- GPU, end to end

@STORY
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_pinned_mxfp4_llama_generates_on_gpu_like_transformers(models, capsys):
    """Dense MXFP4 weights: a wrong pin leaves the device untouched; the right one loads, and
    greedy ids equal transformers' fp32 generate on the same file (the oracle of the MXFP4 GPU
    decode tests). The CLI, end to end on the GPU, logs the hash it was pinned to."""
    path = models.path("llama", "MXFP4")
    pin = _sha256(path)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(GGUFError, match="sha256 mismatch"):
        gpt_engine.load(path, device="cuda", sha256="0" * 64)
    assert torch.cuda.memory_allocated() == before, "a refused file put something on the GPU"
    m = gpt_engine.load(path, device="cuda", sha256=pin)
    assert m.sha256 == pin
    assert {t.qtype.name for n, t in m.gguf.tensors.items() if n.startswith("blk.") and len(t.shape) == 2} == {"MXFP4"}
    prompt = [7, 300, 41, 12, 99]
    ours = m.generate(prompt, max_new_tokens=16, stop_at_eos=False).token_ids
    with torch.no_grad():
        out = models.oracle(path).generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16,
                                           min_new_tokens=16, pad_token_id=m.tokenizer.eos_id)
    assert ours == out[0, len(prompt):].tolist()

    code, out, err = run_cli(capsys, "generate", str(path), "--device", "cuda", "--sha256", pin.upper(),
                             "--prompt", "Hello", "--max-new-tokens", "8", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["sha256"], got["device"]) == (pin, "cuda")
    assert got["token_ids"] == m.generate(got["prompt_ids"], max_new_tokens=8).token_ids


@STORY
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_pinned_gpt_oss_with_mxfp4_experts_generates_on_gpu(oss):
    """gpt-oss, experts as MXFP4 bytes on the device (the MoE kernels), pinned: greedy ids are
    transformers' fp32 argmax after each prefix (the gpt-oss GPU tests' oracle and prompt)."""
    from tests.test_model_gpt_oss_cuda import _greedy_vs_transformers, well_routed_ids

    path, hf = oss.get("L2-h8kv2-e4k1-d64")
    pin = _sha256(path)
    m = gpt_engine.load(path, device="cuda", sha256=pin)
    assert m.sha256 == pin and m.net.moe_kernels
    prompt = well_routed_ids(hf, 5 * m.config.sliding_window, m.config.vocab_size)
    ours = m.generate(prompt, max_new_tokens=12, stop_at_eos=False).token_ids
    assert len(ours) == 12
    _greedy_vs_transformers(hf, prompt, ours)
