"""The float32 CPU product with Q4_0/Q4_1/Q8_0 weights read packed (csrc_cpu/q4_gemv.c, gpt_engine/cpu_q4.py).

Oracle: the float64 product of x with gguf-py's dequantized weights (``gguf.quants.dequantize``,
an independent decoder); the kernel differs from it only by float32 rounding (``nmse_fp32``).
The prefill path's dequantization is gguf-py's bit for bit. Without a C compiler the weights keep
the dense float32 path (one warning, the same numbers as before the kernel).
"""
from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt_engine
from gpt_engine import cpu_q4, qweight
from gpt_engine.qweight import CACHE_ENV, QWeight, cache_policy, dense_cache_bytes, lookup_only
from tests.tolerances import tol

QT = gguf.GGMLQuantizationType
BLOCK = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}

# the kernel's tests need a C compiler; the fallback test runs everywhere. Only a missing compiler
# skips them: with one, a kernel that fails to build or load fails them (load() returns None).
needs_kernel = pytest.mark.skipif(cpu_q4._compiler() is None, reason="no C compiler: the kernel cannot be built")


def _x86_avx2() -> bool:
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return any(line.startswith("flags") and "avx2" in line.split() for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def _f16_bits(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float16).view(np.uint8).reshape(*np.shape(v), 2)


def _blocks(qtype: str, n: int, k: int, rng, d=None, m=None) -> np.ndarray:
    """[n, k/32 * block bytes] random codes with the given (or random) f16 d and m per block."""
    nb = k // 32
    raw = rng.integers(0, 256, size=(n, nb, BLOCK[qtype]), dtype=np.uint8)
    d = rng.normal(0, 0.01, size=(n, nb)) if d is None else np.broadcast_to(d, (n, nb))
    raw[..., 0:2] = _f16_bits(d)
    if qtype == "Q4_1":
        m = rng.normal(0, 0.05, size=(n, nb)) if m is None else np.broadcast_to(m, (n, nb))
        raw[..., 2:4] = _f16_bits(m)
    return raw.reshape(n, -1)


def _nmse(y: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((y.double() - exact) ** 2).sum() / (exact ** 2).sum())


def _check(raw: np.ndarray, qtype: str, n: int, k: int, rows: int, seed: int = 0) -> torch.Tensor:
    w = torch.from_numpy(gguf.quants.dequantize(raw, QT[qtype]).reshape(n, k).astype(np.float64))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    y = cpu_q4.gemv(x, torch.from_numpy(raw), int(QT[qtype]), n)
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    exact = x.double() @ w.T
    assert _nmse(y, exact) <= tol("nmse_fp32"), _nmse(y, exact)
    return y


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("n, k", [(1, 32), (5, 32), (13, 96), (37, 160), (200, 576), (67, 1536)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_gemv_matches_float64_product_of_gguf_py_weights(qtype, n, k, rows):
    # K = 32: one block; N = 1, 5, 13, 37, 67: not multiples of 8/16, nor of the thread count;
    # K = 160, 1536: 5 and 48 blocks (the 4-way block unroll with and without a remainder)
    rng = np.random.default_rng(n * 1000 + k)
    _check(_blocks(qtype, n, k, rng), qtype, n, k, rows)


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gemv_edge_blocks(qtype):
    rng = np.random.default_rng(7)
    n, k = 24, 256
    # d per block: zero, negative, the smallest and largest f16 subnormals, a normal; Q4_1's m:
    # large beside d (an offset-dominated block), zero, negative
    ds = np.array([0.0, -0.02, 2 ** -24, 1023 * 2 ** -24, 0.01, -3e-5, 0.5, 2 ** -14])
    ms = np.array([100.0, 0.0, -7.5, 1e-3, -0.25, 60000.0, 0.0, 2 ** -20])
    d = np.tile(ds, (n, 1))
    m = np.tile(ms, (n, 1))
    raw = _blocks(qtype, n, k, rng, d=d, m=m)
    _check(raw, qtype, n, k, 1)
    _check(raw, qtype, n, k, 3, seed=1)
    # an all-zero row (d = 0, m = 0 everywhere) gives exactly 0
    z = _blocks(qtype, 3, 64, rng, d=0.0, m=0.0)
    assert torch.equal(cpu_q4.gemv(torch.randn(2, 64), torch.from_numpy(z), int(QT[qtype]), 3), torch.zeros(2, 3))


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_threads_split_rows_and_give_the_same_bits(qtype):
    raw = torch.from_numpy(_blocks(qtype, 301, 576, np.random.default_rng(3)))
    x = torch.randn(2, 576)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_q4.gemv(x, raw, int(QT[qtype]), 301)
        torch.set_num_threads(2)
        two = cpu_q4.gemv(x, raw, int(QT[qtype]), 301)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each output is computed by one thread, in one order


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_dequantize_is_gguf_py_bit_for_bit(qtype):
    rng = np.random.default_rng(11)
    raw = _blocks(qtype, 40, 320, rng)
    raw[:, 0:2] = _f16_bits(np.full(40, 2 ** -24))  # a subnormal d in the first block of each row
    want = gguf.quants.dequantize(raw, QT[qtype]).reshape(40, 320)
    got = cpu_q4.dequantize(torch.from_numpy(raw), int(QT[qtype]), 40, 320)
    assert torch.equal(got.view(torch.int32), torch.from_numpy(want).view(torch.int32))


@pytest.fixture
def rebuilt(monkeypatch, tmp_path):
    """cpu_q4 rebuilt with other flags (the AVX2 and scalar paths, on this AVX-512 machine)."""
    def build(flags):
        monkeypatch.setattr(cpu_q4, "FLAGS", flags)
        monkeypatch.setattr(cpu_q4, "BUILD_DIR", tmp_path / "build")
        cpu_q4.load.cache_clear()
        return cpu_q4.load()
    yield build
    monkeypatch.undo()
    cpu_q4.load.cache_clear()


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.skipif(not _x86_avx2(), reason="the AVX2 and scalar builds use x86 flags and need an AVX2 CPU")
@pytest.mark.parametrize("isa, width", [("avx2", 256), ("scalar", 0)])
def test_other_vector_paths(rebuilt, isa, width):
    common = ["-O3", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
    arch = ["-mavx2", "-mfma", "-mf16c"] if isa == "avx2" else ["-mno-avx", "-mno-f16c"]
    lib = rebuilt(arch + common)
    assert lib is not None and lib.q4_simd_width() == width
    rng = np.random.default_rng(5)
    for qtype in ("Q4_0", "Q4_1", "Q8_0"):
        for n, k, rows in [(1, 32, 1), (37, 160, 3), (67, 576, 8)]:
            _check(_blocks(qtype, n, k, rng), qtype, n, k, rows)
        raw = _blocks(qtype, 24, 256, rng, d=np.array([0.0, -0.02, 2 ** -24, 1023 * 2 ** -24, 0.01, -3e-5, 0.5, 2 ** -14]),
                      m=np.array([100.0, 0.0, -7.5, 1e-3, -0.25, 60000.0, 0.0, 2 ** -20]))
        _check(raw, qtype, 24, 256, 2)  # subnormal d through the portable f16 conversion (scalar)
        want = gguf.quants.dequantize(raw, QT[qtype]).reshape(24, 256)
        got = cpu_q4.dequantize(torch.from_numpy(raw), int(QT[qtype]), 24, 256)
        assert torch.equal(got.view(torch.int32), torch.from_numpy(want).view(torch.int32))


@needs_kernel
@pytest.mark.story("GX-001")
def test_bad_input_is_refused():
    raw = torch.from_numpy(_blocks("Q4_1", 4, 64, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="1..8 rows"):
        cpu_q4.gemv(torch.randn(9, 64), raw, int(QT.Q4_1), 4)
    with pytest.raises(ValueError, match="float32"):
        cpu_q4.gemv(torch.randn(1, 64, dtype=torch.float64), raw, int(QT.Q4_1), 4)
    with pytest.raises(ValueError, match="raw must be"):
        cpu_q4.gemv(torch.randn(1, 64), raw, int(QT.Q4_0), 4)  # 20-byte blocks read as Q4_0's 18
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_q4.gemv(torch.randn(1, 48), raw, int(QT.Q4_1), 4)
    with pytest.raises(ValueError, match="raw must be"):
        cpu_q4.gemv(torch.randn(1, 64), raw, int(QT.Q8_0), 4)  # 20-byte blocks read as Q8_0's 34
    with pytest.raises(ValueError, match="not Q4_0/Q4_1/Q8_0"):
        cpu_q4.gemv(torch.randn(1, 64), raw, int(QT.Q5_0), 4)


# ----------------------------------------------------------------------------- QWeight.linear

def _qweight(qtype: str, n: int, k: int, seed: int = 0) -> QWeight:
    raw = torch.from_numpy(_blocks(qtype, n, k, np.random.default_rng(seed)))
    return QWeight(raw, QT[qtype], (n, k), qweight.DenseCachePolicy({}, 1 << 30), "blk.0.ffn_up.weight")


@needs_kernel
@pytest.mark.story("GX-001", "GT-025")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_linear_reads_packed_blocks_and_caches_nothing(qtype):
    qw = _qweight(qtype, 72, 576)
    bias = torch.randn(72)
    exact_w = qw.dense().double()
    for shape in [(1, 576), (1, 3, 576), (2, 4, 576)]:  # 1, 3 and 8 rows: the kernel
        x = torch.randn(*shape)
        y = qw.linear(x, bias)
        assert y.shape == (*shape[:-1], 72)
        assert _nmse(y, F.linear(x.double(), exact_w, bias.double())) <= tol("nmse_fp32")
    # 12 rows: the prefill path, the matrix dequantized for that use: F.linear on the same bits
    x = torch.randn(3, 4, 576)
    assert torch.equal(qw.linear(x, bias), F.linear(x, qw.dense(), bias))
    assert qw.cached_nbytes == 0 and qw._policy.nbytes == 0  # no dense copy, ever
    assert qw.dense() is not qw.dense()


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """cpu_q4 as on a machine without a C compiler (a fresh load, nothing prebuilt)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu_q4, "BUILD_DIR", tmp_path / "build")
    cpu_q4.load.cache_clear()
    yield
    monkeypatch.undo()
    cpu_q4.load.cache_clear()


@pytest.mark.story("GX-001", "GT-025")
def test_without_a_compiler_the_dense_path_is_kept(no_compiler, models, monkeypatch):
    with pytest.warns(RuntimeWarning, match="unavailable.*dense float32"):
        assert not cpu_q4.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning: later calls stay quiet
        assert not cpu_q4.available()
        qw = _qweight("Q4_1", 40, 64)
        x = torch.randn(1, 64)
        assert torch.equal(qw.linear(x), F.linear(x, qw.dense()))  # today's dense path
        assert qw.cached_nbytes == 40 * 64 * 4 and qw.dense() is qw.dense()
        # the whole model: every Q4_1 matrix in the dense cache, as the estimate says
        monkeypatch.delenv(CACHE_ENV, raising=False)
        m = gpt_engine.load(models.path("llama", "Q4_1"))
        m.generate([1, 2, 3], max_new_tokens=2, stop_at_eos=False)
        want = dense_cache_bytes(m.gguf.tensors, torch.float32)
        t = m.gguf.tensors
        assert want == sum(v.n_elements * 4 for k, v in t.items() if v.qtype == QT.Q4_1 and not lookup_only(k, t)) > 0
        assert cache_policy(m.gguf).nbytes == want == m.memory_estimate()["dense_cache"]


@needs_kernel
@pytest.mark.story("GX-001", "GT-025")
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("tied", [False, True])
def test_q4_model_caches_only_its_other_weights(models, monkeypatch, qtype, tied):
    # tied: the packed token table is also the LM head; its product reads the blocks, and a lookup
    # dequantizes just the rows it needs, so it has no dense copy either
    monkeypatch.delenv(CACHE_ENV, raising=False)
    path = models.path("llama", qtype, tied=tied)
    m = gpt_engine.load(path)
    out = m.generate([1, 2, 3], max_new_tokens=4, stop_at_eos=False).token_ids
    t = m.gguf.tensors
    assert ("output.weight" in t) is not tied
    want = sum(v.n_elements * 4 for k, v in t.items() if v.qtype not in (QT[qtype], QT.F32) and not lookup_only(k, t))
    assert dense_cache_bytes(t, torch.float32) == want == cache_policy(m.gguf).nbytes
    assert m.memory_estimate()["dense_cache"] == want
    # the same tokens with the cache off (every weight dequantized per use; Q4 via the kernel)
    monkeypatch.setenv(CACHE_ENV, "0")
    m2 = gpt_engine.load(path)
    assert m2.generate([1, 2, 3], max_new_tokens=4, stop_at_eos=False).token_ids == out


@needs_kernel
@pytest.mark.story("GX-001", "GT-048")
@pytest.mark.parametrize("rows", [1, 3, 8, 12])  # 12: more than MAX_ROWS, the concatenation path
def test_products_of_one_input_equal_the_concatenation_bit_for_bit(rows):
    # q, k, v (or gate, up) in one q4_gemv_multi call: each output computed as its own weight's
    # product computes it, whatever the thread count and however the row split meets the weights
    rng = np.random.default_rng(rows)
    shapes = [("Q4_1", 67, 576), ("Q4_0", 13, 576), ("Q8_0", 40, 576), ("Q4_1", 1, 576)]
    prods = [cpu_q4.Product(torch.from_numpy(_blocks(q, n, k, rng)), int(QT[q]), n, k) for q, n, k in shapes]
    multi = cpu_q4.Products(prods)
    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            want = torch.cat([p(x) for p in prods], dim=-1)
            got = multi(x)
            assert got.shape == (rows, 121) and torch.equal(got, want), t
    finally:
        torch.set_num_threads(threads)
    # QWeight.linear_stacked: the same joint product, and the concatenation where a weight is not packed
    qws = [_qweight(q, n, k, seed=i) for i, (q, n, k) in enumerate(shapes)]
    x = torch.randn(2, rows, 576)
    assert torch.equal(QWeight.linear_stacked(qws, x), torch.cat([w.linear(x) for w in qws], dim=-1))
    raw5 = gguf.quants.quantize(np.random.default_rng(1).normal(0, 0.05, (8, 576)).astype(np.float32), QT.Q5_0)
    q5 = QWeight(torch.from_numpy(raw5), QT.Q5_0, (8, 576), qweight.DenseCachePolicy({}, 1 << 30), "blk.0.attn_v.weight")
    mixed = [qws[0], q5]
    assert torch.equal(QWeight.linear_stacked(mixed, x), torch.cat([w.linear(x) for w in mixed], dim=-1))


@needs_kernel
@pytest.mark.story("GX-001")
def test_products_refuse_mismatched_weights():
    rng = np.random.default_rng(0)
    a = cpu_q4.Product(torch.from_numpy(_blocks("Q4_1", 4, 64, rng)), int(QT.Q4_1), 4, 64)
    b = cpu_q4.Product(torch.from_numpy(_blocks("Q4_1", 4, 96, rng)), int(QT.Q4_1), 4, 96)
    with pytest.raises(ValueError, match="in-feature"):
        cpu_q4.Products([a, b])
    with pytest.raises(ValueError, match="in-feature"):
        cpu_q4.Products([a] * (cpu_q4.MAX_MATS + 1))
    with pytest.raises(ValueError, match="float32"):
        cpu_q4.Products([a, a])(torch.randn(1, 64, dtype=torch.float64))
