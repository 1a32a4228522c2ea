"""The CPU dense cache behind ``QWeight.dense()`` and ``Model.memory_estimate()``.

The cache must change nothing but speed: cached values are the dequantizer's own (bit for bit);
the all-or-nothing budget decision is the one the estimate states; the estimate is checked
against the peak resident memory measured in a fresh process.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
import torch

import gpt_engine
from gpt_engine import qweight
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.qweight import CACHE_ENV, QWeight, cache_policy, dense_cache_bytes
from gpt_engine.quants import dequantize
from tests.tolerances import tol

QT = gguf.GGMLQuantizationType


def _cached(m) -> int:
    ws = [w for L in m.net.layers for v in L.values() for w in (v if isinstance(v, list) else [v])
          if isinstance(w, QWeight)]
    ws += [w for w in vars(m.net).values() if isinstance(w, QWeight)]
    return sum(w.cached_nbytes for w in {id(w): w for w in ws}.values())


@pytest.mark.story("GT-025", "GX-001")
def test_dense_is_cached_once_and_bit_identical(models, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    # Q5_0: float32 Q4_0/Q4_1/Q8_0 matrices have no dense copy (their product reads the blocks:
    # tests/test_cpu_q4.py)
    path = models.path("llama", "Q5_0")
    m = gpt_engine.load(path)
    w = m.net.layers[0]["down"]
    first = w.dense(torch.float32)
    assert w.dense(torch.float32) is first  # kept: no second dequantization
    ref = dequantize(m.gguf.tensor_data("blk.0.ffn_down.weight"), QT.Q5_0)
    assert torch.equal(first.view(torch.int32), ref.view(torch.int32))
    # rows() of a cached table reads the cache, same values as dequantizing just those rows
    ids = torch.tensor([[0, 5], [7, 0]])
    e = m.net.embd
    e.dense(torch.float32)
    want = dequantize(m.gguf.tensor_data("token_embd.weight"), m.gguf.tensors["token_embd.weight"].qtype)[ids]
    assert torch.equal(e.rows(ids), want)


@pytest.mark.story("GT-025", "GX-001")
def test_whole_model_cached_after_one_step_and_nothing_more(models, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    m = gpt_engine.load(models.path("llama", "Q5_0"))  # a dense-cached type (not read packed)
    m.generate([1, 2, 3], max_new_tokens=3, stop_at_eos=False)
    want = dense_cache_bytes(m.gguf.tensors, torch.float32)
    assert _cached(m) == want == cache_policy(m.gguf).nbytes
    assert m.memory_estimate()["dense_cache"] == want
    m.generate([4, 5], max_new_tokens=2, stop_at_eos=False)
    assert _cached(m) == want  # later steps add nothing


@pytest.mark.story("GT-025", "GX-001")
def test_over_budget_caches_nothing_and_estimate_says_so(models, monkeypatch):
    path = models.path("llama", "Q5_0")  # a dense-cached type (not read packed)
    with GGUFFile(path) as f:
        need = dense_cache_bytes(f.tensors, torch.float32)
    monkeypatch.setenv(CACHE_ENV, str(need - 1))  # one byte short: all or nothing
    m = gpt_engine.load(path)
    out = m.generate([1, 2, 3], max_new_tokens=3, stop_at_eos=False).token_ids
    assert _cached(m) == 0
    w = m.net.layers[0]["down"]
    assert w.dense() is not w.dense()  # dequantized per use
    est = m.memory_estimate()
    assert est["dense_cache"] == 0 and not est["dense_cache_used"] and est["dequant"] > 0
    monkeypatch.setenv(CACHE_ENV, str(need))  # exactly enough
    m2 = gpt_engine.load(path)
    assert m2.generate([1, 2, 3], max_new_tokens=3, stop_at_eos=False).token_ids == out  # same tokens
    assert _cached(m2) == need == m2.memory_estimate()["dense_cache"]


@pytest.mark.story("GT-025")
def test_budget_env_is_checked(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "lots")
    with pytest.raises(ValueError, match=CACHE_ENV):
        qweight.cpu_cache_budget()
    monkeypatch.setenv(CACHE_ENV, "-1")
    with pytest.raises(ValueError, match=">= 0"):
        qweight.cpu_cache_budget()
    monkeypatch.delenv(CACHE_ENV)
    assert qweight.cpu_cache_budget() == qweight.DEFAULT_CPU_CACHE_BYTES == 4 << 30


@pytest.mark.story("GT-025")
def test_views_are_not_cached():
    raw = torch.from_numpy(np.arange(8, dtype=np.float32).view(np.uint8).reshape(2, 16).copy())
    pol = qweight.DenseCachePolicy({}, 1 << 30)
    w = QWeight(raw, QT.F32, (2, 4), pol)
    assert w.dense().data_ptr() == raw.data_ptr() and w.cached_nbytes == 0 and pol.nbytes == 0
    assert w.dense(torch.float16) is w.dense(torch.float16)  # a converted copy is worth keeping


# ----------------------------------------------------------------------------- memory_estimate

_MEASURE = textwrap.dedent('''
    import json, pathlib, sys, tempfile
    import gpt_engine
    from gpt_engine import testmodels

    def status():
        d = {}
        for line in open("/proc/self/status"):
            k, v = line.split(":", 1)
            if k in ("VmRSS", "VmHWM"):
                d[k] = int(v.split()[0]) * 1024
        return d

    T, n_new = int(sys.argv[1]), int(sys.argv[2])
    # warm the runtime first (torch/MKL one-time buffers, library pages) on a tiny model of the
    # same architecture, so the growth measured below is the engine's own memory
    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "warm.gguf"
        testmodels.make_llama(p, qtype="Q4_1", n_embd=64, n_ff=128)
        w = gpt_engine.load(p)
        w.generate([1, 2, 3] * 30, max_new_tokens=4, stop_at_eos=False)
        del w
    m = gpt_engine.load()
    loaded = status()
    m.generate([1, 2, 3], max_new_tokens=2, stop_at_eos=False)  # the cache is built on first use
    ids = [m.tokenizer.bos_id] + list(range(1000, 1000 + T - 1))
    m.generate(ids, max_new_tokens=n_new, stop_at_eos=False)   # steady state: the peak to estimate
    peak = status()["VmHWM"] - loaded["VmRSS"]
    print(json.dumps({"peak_growth": peak, "estimate": m.memory_estimate(n_ctx=T + n_new, prompt_tokens=T)}))
''')


def _measure(T: int, n_new: int, env: dict) -> dict:
    import os

    # glibc keeps freed heap blocks below its (dynamic, up to 32 MiB) mmap threshold for reuse, so
    # the resident peak would include the allocator's retention; a fixed 128 KiB threshold (glibc's
    # default before it adapts) returns every tensor-sized block when it is freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", **env}
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(T), str(n_new)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.story("GT-025", "GT-044", "GX-001")
@pytest.mark.slow
@pytest.mark.parametrize("T, cache", [(16, True), (1024, True), (16, False)],
                         ids=["short-prompt-cached", "1k-prompt-cached", "short-prompt-uncached"])
def test_memory_estimate_matches_measured_peak_on_cpu(T, cache):
    # Peak resident growth (VmHWM) of a fresh process from load to the end of a generation with
    # SmolLM2: the mmapped weights become resident as they are read, plus the dense cache, the KV
    # cache and the temporaries of the prompt's prefill.
    r = _measure(T, 2, {CACHE_ENV: str(4 << 30 if cache else 0)})
    est, peak = r["estimate"], r["peak_growth"]
    assert est["dense_cache_used"] is cache
    rel = abs(peak / est["total"] - 1)
    assert rel <= tol("memory_estimate_rel"), (
        f"measured peak growth {peak / 2**20:.1f} MiB vs estimate {est['total'] / 2**20:.1f} MiB "
        f"({rel:.1%}); estimate terms: { {k: round(est[k] / 2**20, 1) for k in ('weights', 'dense_cache', 'kv_cache', 'activations', 'attention_scores', 'logits', 'dequant')} }")


# ----------------------------------------------------------------------------- QWeight.linear

@pytest.mark.story("GT-025", "GX-001")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q5_0"])
@pytest.mark.parametrize("rows", [192, 40])  # 40: not a multiple of 16, the int4 kernel's need
def test_linear_matches_float64_product(qtype, rows):
    from gpt_engine.quantize import quantize

    rng = np.random.default_rng(rows)
    w = (0.05 * rng.standard_normal((rows, 576)) + 0.01).astype(np.float32)
    raw = torch.from_numpy(quantize(w, qtype))
    pol = qweight.DenseCachePolicy({}, 1 << 30)
    qw = QWeight(raw, QT[qtype], (rows, 576), pol, "blk.0.ffn_up.weight")
    x = torch.randn(2, 3, 576, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(rows, generator=torch.Generator().manual_seed(1))
    exact = torch.nn.functional.linear(x.double(), qw.dense().double(), bias.double())
    packed = qweight.packed_product(QT[qtype], (rows, 576), torch.float32)
    from gpt_engine import cpu_q4

    assert packed == (qtype != "Q5_0" and cpu_q4.available())  # tests/test_cpu_q4.py
    y = qw.linear(x, bias)
    if packed:  # float32 Q4_x / Q8_0: the packed-block kernel, float32 rounding apart from the exact product
        nmse = float(((y.double() - exact) ** 2).sum() / (exact ** 2).sum())
        assert nmse <= tol("nmse_fp32"), nmse
    else:  # float32: the reference path, F.linear on the cached dense weight, nothing else
        assert torch.equal(y, torch.nn.functional.linear(x, qw.dense(), bias))
    # bfloat16: int4 kernel where it applies (Q4_x, rows % 16 == 0), else the dense bf16 product
    y = qw.linear(x.bfloat16(), bias.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, rows)
    nmse = float(((y.double() - exact) ** 2).sum() / (exact ** 2).sum())
    assert nmse <= tol("nmse_bf16"), nmse
    int4 = qtype in ("Q4_0", "Q4_1") and rows % 16 == 0
    assert (qw._int4 is not None) is int4
    dense_f32 = 0 if packed else qw.dense().numel() * 4  # a packed-product weight has no float32 copy
    if int4:  # packed codes + bf16 scale/zero pairs, counted in the cache: 4.5 bits per weight
        assert qw.cached_nbytes - dense_f32 == rows * 576 // 2 + rows * 576 // 32 * 4
