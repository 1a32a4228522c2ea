"""Our quantizer (gpt_engine.quantize), validated by decoding with gguf-py's dequantizer.

For the types gguf-py can write it *is* gguf-py's quantizer (checked byte for byte). For the
K-quants (ours) the bound is comparative and independent of our code: on zero-mean data, ours
must not be worse than gguf-py's own quantizer of the same code width (Q4_K vs Q4_1, Q5_K vs
Q5_1), and Q6_K must beat gguf-py's Q5_0 by the margin one more bit gives.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from gpt_engine.errors import GGUFError
from gpt_engine.quantize import quantize
from gpt_engine.quants import SUPPORTED
from tests.tolerances import tol


def gguf_decode(raw, qtype) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32)


def nmse(x, y) -> float:
    return float(((x.astype(np.float64) - y) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


def data(kind: str, rng, shape=(32, 1024)) -> np.ndarray:
    if kind == "gauss":
        x = rng.standard_normal(shape)
    elif kind == "laplace":  # heavier tails, like trained weights
        x = rng.laplace(size=shape)
    else:  # rows whose scales span ~e^±6: each super-block must pick its own fp16 factors
        x = rng.standard_normal(shape) * np.exp(3 * rng.standard_normal((shape[0], 1)))
    return x.astype(np.float32)


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_bytes_decode_with_gguf_py(qtype):
    bs, ts = GGML_QUANT_SIZES[qtype]
    x = data("gauss", np.random.default_rng(int(qtype)), (3, 2, 512))
    raw = quantize(torch.from_numpy(x), qtype)  # torch input as well as numpy
    assert raw.dtype == np.uint8 and raw.shape == (3, 2, 512 // bs * ts)
    back = gguf_decode(raw, qtype)
    assert back.shape == x.shape and np.isfinite(back).all()
    assert nmse(x, back) < 0.02  # every type keeps >= 4 bits: a wrong layout decodes to noise (NMSE ~ 1)
    if qtype not in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        want = np.ascontiguousarray(gguf.quants.quantize(x, qtype)).view(np.uint8).reshape(raw.shape)
        assert np.array_equal(raw, want)  # gguf-py's quantizer, byte for byte


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("kind", ["gauss", "laplace", "scaled"])
@pytest.mark.parametrize("ours, peer", [(QT.Q4_K, QT.Q4_1), (QT.Q5_K, QT.Q5_1)], ids=["Q4_K", "Q5_K"])
def test_k_quant_error_vs_gguf_py_same_width(kind, ours, peer):
    x = data(kind, np.random.default_rng(42))
    e_ours = nmse(x, gguf_decode(quantize(x, ours), ours))
    e_peer = nmse(x, gguf_decode(gguf.quants.quantize(x, peer), peer))
    assert e_ours <= tol("kquant_nmse_vs_same_width") * e_peer, (e_ours, e_peer)


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("kind", ["gauss", "laplace", "scaled"])
def test_q6_k_error_vs_gguf_py_q5_0(kind):
    x = data(kind, np.random.default_rng(43))
    e_ours = nmse(x, gguf_decode(quantize(x, QT.Q6_K), QT.Q6_K))
    e_q5 = nmse(x, gguf_decode(gguf.quants.quantize(x, QT.Q5_0), QT.Q5_0))
    assert e_ours <= tol("q6_k_nmse_vs_q5_0") * e_q5, (e_ours, e_q5)


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q5_K, QT.Q6_K], ids=lambda t: t.name)
def test_k_quant_special_blocks(qtype):
    # zeros stay exact zeros; a constant sub-block and a single spike survive; tiny and positive rows
    x = np.zeros((6, 256), dtype=np.float32)
    x[1] = 0.25
    x[2, 7] = -3.0
    x[3] = np.linspace(1e-3, 2e-3, 256)                 # fp16 super-block factors go subnormal
    x[4] = np.linspace(0.5, 1.5, 256)                    # all positive: Q4_K/Q5_K offset is 0
    x[5, ::2], x[5, 1::2] = 1.0, -1.0
    back = gguf_decode(quantize(x, qtype), qtype)
    assert np.array_equal(back[0], x[0])
    step = {QT.Q4_K: 1 / 15, QT.Q5_K: 1 / 31, QT.Q6_K: 1 / 32}[qtype]
    for r in range(1, 6):
        span = float(np.abs(x[r]).max()) if qtype == QT.Q6_K else float(x[r].max() - min(x[r].min(), 0))
        assert np.abs(back[r] - x[r]).max() <= span * step, r  # within one code step of the row's range


@pytest.mark.story("GT-042")
def test_bad_input_is_one_clear_error():
    with pytest.raises(GGUFError, match="block size 256"):
        quantize(np.zeros((2, 100), np.float32), QT.Q4_K)
    with pytest.raises(GGUFError, match="NaN or inf"):
        quantize(np.full((1, 256), np.nan, np.float32), QT.Q6_K)
    with pytest.raises(GGUFError, match="fp16's range"):
        quantize(np.full((1, 256), 1e9, np.float32), QT.Q5_K)
    with pytest.raises(GGUFError, match="not supported"):
        quantize(np.zeros((1, 256), np.float32), QT.Q3_K)
