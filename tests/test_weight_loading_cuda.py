"""GT-025 on the GPU: weights move to the device in their GGUF encoding. Every matrix of a
quantized model is the file's packed bytes on the GPU (byte for byte what gguf-py reads from the
file), the device memory a load takes is the packed size that ``memory_estimate()`` states, and a
load that does not fit gives the one-line ``OutOfMemoryError`` and releases what it took."""
from __future__ import annotations

import gc

import pytest
import torch

import gpt_engine
from gpt_engine import OutOfMemoryError
from tests.test_oom import memory_limit
from tests.tolerances import tol

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]

GPT2_MATRICES = {"qkv_w": "attn_qkv", "o_w": "attn_output", "up_w": "ffn_up", "down_w": "ffn_down"}


def _settle() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


@pytest.mark.story("GT-025")
@pytest.mark.parametrize("qtype,kw", [("Q8_0", {}), ("Q4_1", {}), ("MXFP4", {}), ("Q4_K", {"n_embd": 256}),
                                      ("Q6_K", {"n_embd": 256})], ids=lambda v: v if isinstance(v, str) else "")
def test_packed_bytes_on_the_gpu_are_the_files(models, qtype, kw):
    import gguf

    path = models.path("gpt2", qtype, **kw)
    m = gpt_engine.load(path, device="cuda")
    file = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for i, layer in enumerate(m.net.layers):
        for key, name in GPT2_MATRICES.items():
            w, t = layer[key], file[f"blk.{i}.{name}.weight"]
            assert w.raw.device.type == "cuda" and w.raw.dtype == torch.uint8
            assert w.qtype.name == qtype == t.tensor_type.name
            assert w.nbytes == int(t.n_bytes)  # packed: the file's size, not a dequantized copy
            want = torch.from_numpy(t.data.view("uint8").reshape(-1).copy())
            assert torch.equal(w.raw.reshape(-1).cpu(), want), f"blk.{i}.{name}.weight"


@pytest.mark.story("GT-025")
@pytest.mark.parametrize("shape,qtype", [("llama-1b", "Q8_0"), ("gpt2-1.5b", "MXFP4")])
def test_device_memory_of_a_load_is_the_packed_size(tmp_path_factory, shape, qtype):
    """A real-shaped random file (gpt_engine.benchmodels: written in seconds): the device memory
    the load allocates is the file's tensor bytes within memory_estimate_rel (measured +2.0% and
    +2.7% on an H200: norms and biases converted to fp16 beside their F32 file copies); a
    dequantized fp16 copy would be 1.9x (Q8_0) or 3.8x (MXFP4)."""
    from gpt_engine import benchmodels

    path = benchmodels.ensure(tmp_path_factory.mktemp("bench-models"), shape, qtype)
    before = _settle()
    m = gpt_engine.load(path, device="cuda")
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    est = m.memory_estimate()
    assert est["weights"] == sum(t.nbytes for t in m.gguf.tensors.values())
    rel = grown / est["weights"] - 1
    assert 0 <= rel <= tol("memory_estimate_rel"), f"load allocated {grown:,} B for {est['weights']:,} B of weights"
    del m
    assert _settle() <= before  # nothing of the model stays behind


@pytest.mark.story("GT-025")
def test_weights_that_do_not_fit_are_a_clear_error(models):
    path = models.path("gpt2", "F16", n_embd=1024, n_layer=8)  # ~200 MiB of weights (test_oom.py's file)
    before = _settle()
    with memory_limit(32 << 20):
        with pytest.raises(OutOfMemoryError) as err:
            gpt_engine.load(path, device="cuda")
        assert torch.cuda.memory_allocated() <= before  # the half-built model is released
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("out of memory on cuda"), msg
    assert f"while loading {path.name} (" in msg and "of weights)" in msg and "memory_estimate()" in msg, msg
    m = gpt_engine.load(path, device="cuda")  # without the limit it loads and runs
    assert torch.isfinite(m.logits([1, 2, 3])).all()
