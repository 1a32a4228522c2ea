"""GGUF packed weights on the GPU: the packed-block GEMV (csrc/linear_q.cu) behind ops.linear, the
dequantize kernel (csrc/dequant.cu) bit-exact with gguf-py, embedding rows of packed tables, and
the MXFP4 projections at gpt-oss shapes. Oracles: gguf-py's own dequantization in float64
(test_linear.make_weight) and gguf.quants.dequantize for the bit-exact tests."""
import gguf
import numpy as np
import pytest
import torch

from gpt_engine import ops
from gpt_engine.qweight import QWeight

from ._bench import graphed, mark
from ._util import CUDA, DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, randn
from .test_linear import _case, _norm, each_fold_setting, make_weight, oracle

Q = gguf.GGMLQuantizationType
PACKED = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4"]


def _qk(t: str) -> int:
    return gguf.GGML_QUANT_SIZES[Q[t]][0]


def _shapes(t: str, device: str):
    """(M, N, K): K one block (one super-block for K-quants), several blocks, a row of many
    batches; N odd; M = 1, 2, 3, 16 (GEMV tiles 1, 2, 4, 16); 17 rows take the dequantize + cuBLAS path."""
    qk = _qk(t)
    if device == "cpu":
        return [(1, 7, qk), (3, 5, 2 * qk)]
    return [(1, 7, qk), (2, 33, 3 * qk), (3, 129, 1600 if qk == 32 else 1536), (16, 65, 4096), (17, 31, 2 * qk),
            (1, 1001, 6400 if qk == 32 else 6144)]


EPILOGUES = [  # norm, act, bias, residual, float_out
    (None, "none", False, False, False),
    ("layernorm", "gelu_tanh", True, False, False),   # GPT-2 MLP up
    (None, "none", True, True, False),                # attention output / MLP down
    ("rmsnorm", "swiglu", False, False, False),       # Llama gate+up
    ("rmsnorm", "none", False, False, True),          # LM head, fp32 logits
]


# the CPU path computes in fp32 (the model's CPU dtype): one dtype there, both activation dtypes on CUDA
DEVICE_DTYPES = [pytest.param("cpu", torch.float32, id="cpu-float32")] + [
    pytest.param("cuda", dt, marks=CUDA.marks, id=f"cuda-{dt}") for dt in (torch.float16, torch.bfloat16)]


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("wtype", PACKED)
@pytest.mark.parametrize("epi", EPILOGUES, ids=str)
def test_linear_packed(device, dtype, wtype, epi):
    norm, act, bias, residual, float_out = epi
    for m, n, k in _shapes(wtype, device):
        if act == "swiglu":
            n += n % 2
        _case(device, m, n, k, wtype, dtype, norm, act, bias, residual, float_out)


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", PACKED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3])
def test_packed_gemv_activation_codes_add_no_visible_error(wtype, dtype, m):
    """fp32 output, no norm: the GEMV's only error is its 16-bit activation codes (two int8
    planes per value, csrc/linear_q_impl.cuh), ~3e-10 NMSE; the output rounding that the
    other tests' bounds are made of is absent here."""
    k = 1600 if _qk(wtype) == 32 else 1536
    w, w64 = make_weight(129, k, wtype, "cuda")
    x = randn((m, k), dtype, "cuda")
    out = ops.linear(x, w, float_out=True)
    assert out.dtype == torch.float32
    assert_nmse(out, x.cpu().double() @ w64.T, "nmse_packed_gemv_f32_out")


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_1", "MXFP4", "Q6_K"])
@pytest.mark.parametrize("norm", [None, "layernorm", "rmsnorm"], ids=str)
def test_packed_gemv_activations_not_16_byte_aligned(wtype, norm):
    """x at an odd element offset of its storage (a contiguous view): the staging's
    element-at-a-time path instead of its 16-byte loads."""
    from gpt_engine.ops import linear_module as lin
    m, k = 3, (1600 if _qk(wtype) == 32 else 1536)
    w, w64 = make_weight(77, k, wtype, "cuda")
    x = randn((m * k + 1,), torch.float16, "cuda")[1:].view(m, k)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    assert lin.packed_gemv_ok(w.raw, int(w.qtype), torch.float16, m, k)
    nm = _norm(norm, k, torch.float16, "cuda")
    out = ops.linear(x, w, norm=nm)
    assert_nmse(out, oracle(x, w64, norm=nm), "nmse_fp16")


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", PACKED)
@pytest.mark.parametrize("shape", ["k1536", "k6400", "every-pair-lane"])
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_packed_gemv_is_taken_and_rows_do_not_depend_on_the_batch(wtype, shape, kind):
    """The packed GEMV serves M <= 16 (not the dequantize fallback) and row m of a batch is computed
    as it is alone. Rows of two or more batches with few row pairs take the K halves: two warps per
    pair at M = 1, one warp at M >= 2, the same sums either way (csrc/linear_q_impl.cuh). k6400:
    7 / 4 / 3 / 6 batches by type, and 16 rows whose codes do not fit the shared memory at once,
    so they go as two calls of 8 (ops.linear.packed_gemv_rows), a row of the second slice still
    its own bits; every-pair-lane: N = 16 x SMs - 1 rows, the most pairs that still take the
    halves, so every pair lane's named barrier runs, and an odd last row. Both norms: v3.4 folds
    them into the epilogue (a LayerNorm's row constants from the dequantized weight)."""
    from gpt_engine.ops import linear_module as lin
    k = {"k1536": 1536, "k6400": 6400 if _qk(wtype) == 32 else 6144, "every-pair-lane": 4096}[shape]
    mfull = 8 if shape == "every-pair-lane" else 16
    if shape == "every-pair-lane":  # 64 quantized rows repeated (the quantizers are slow on the CPU)
        n = 16 * torch.cuda.get_device_properties(0).multi_processor_count - 1
        w64, _ = make_weight(64, k, wtype, "cuda")
        w = QWeight(w64.raw.repeat((n + 63) // 64, 1)[:n].contiguous(), w64.qtype, (n, k))
    else:
        w, _ = make_weight(301, k, wtype, "cuda")
    rows = lin.packed_gemv_rows(w.raw, int(w.qtype), torch.float16, mfull, k)
    assert rows == (8 if shape == "k6400" else mfull)
    assert lin.packed_gemv_ok(w.raw, int(w.qtype), torch.float16, rows, k)
    x = randn((mfull, k), torch.float16, "cuda")
    nm = _norm(kind, k, torch.float16, "cuda")
    full = ops.linear(x, w, norm=nm)
    for m in (1, 3):
        assert torch.equal(ops.linear(x[:m].contiguous(), w, norm=nm), full[:m])
    lo = mfull // 2 + 1  # rows past the middle (k6400: of the second slice) and the last one
    assert torch.equal(ops.linear(x[lo:lo + 2].contiguous(), w, norm=nm), full[lo:lo + 2])
    assert torch.equal(ops.linear(x[mfull - 1:].contiguous(), w, norm=nm), full[mfull - 1:])


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_K", "MXFP4"])
def test_packed_fold_row_constants_cpu(wtype):
    """v3.4's row constants from a packed weight (ops.linear.row_constants, here on the CPU with
    gpt_engine.quants' dequantization; on CUDA the dequantize kernel, bit-exact with it): C = W g,
    D = W b against float64 over gguf-py's dequantization, the fp32 rounding of an fp64 sum, over
    several blocks of rows."""
    from gpt_engine.ops import linear_module as lin
    k = 512
    n = 3 * lin.fold_block_rows(k) + 5
    w, w64 = make_weight(n, k, wtype, "cpu")
    nm = _norm("layernorm", k, torch.float16, "cpu")
    c, d = lin.row_constants(w, nm)
    assert lin.folds(w.qtype, k)
    assert torch.equal(c, (w64 @ nm.weight.double()).float())
    assert torch.equal(d, (w64 @ nm.bias.double()).float())


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_K", "Q6_K", "MXFP4"])
@pytest.mark.parametrize("kind,act", [("layernorm", "gelu_tanh"), ("layernorm", "none"), ("rmsnorm", "swiglu")],
                         ids=str)
@pytest.mark.parametrize("m,k", [(1, 1536), (1, 6144), (3, 1536), (16, 1536)], ids=str)
def test_packed_gemv_norm_fold_vs_float64(wtype, kind, act, m, k):
    """v3.4 (ext.qgemv_fold_force 1, the default): the norm folded into the packed GEMV's epilogue
    (the codes are of (x - x[0]) g or x g; the epilogue applies rstd and the row constants C = W g,
    D = W b of the dequantized weight), and v3.3's staging under qgemv_fold_force(0), each within
    the oracle's bound of the float64 product of the exact norm, at every M tile and with the K
    halves (k 6144 at M = 1). The two differ: v3.3 codes the normalised row rounded to fp16."""
    from gpt_engine.ops import _ext
    from gpt_engine.ops import linear_module as lin
    ext = _ext.load()
    n = 602  # even (SwiGLU's pairs), and 301 pairs: an odd pair count
    w, w64 = make_weight(n, k, wtype, "cuda")
    assert lin.packed_gemv_ok(w.raw, int(w.qtype), torch.float16, m, k)
    x = randn((m, k), torch.float16, "cuda")
    b = randn((n,), torch.float16, "cuda", scale=0.1)
    nm = _norm(kind, k, torch.float16, "cuda")
    ref = oracle(x, w64, b, None, nm, act)
    outs = each_fold_setting(ext.qgemv_fold_force, lambda: ops.linear(x, w, b, norm=nm, act=act), ref)
    try:
        assert ext.qgemv_fold_force(0) == 0 and ext.qgemv_fold_force(2) == 0  # not a setting: the one in effect stays
    finally:
        ext.qgemv_fold_force(1)
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_K", "Q6_K", "MXFP4"])
@pytest.mark.parametrize("m,n,k,kind,act,bias,residual,float_out", [
    # 301 pairs (fewer than the 1,056 warps of 132 SMs): K = 1,536 takes the K halves where a row
    # is two batches (Q8_0, Q6_K), one batch otherwise (Q4_K, MXFP4)
    (16, 602, 1536, "layernorm", "gelu_tanh", True, False, False),
    (9, 602, 1536, "rmsnorm", "swiglu", False, False, False),   # rows 9-15 masked
    (16, 602, 1536, None, "none", True, True, False),
    (8, 602, 6144, "layernorm", "none", True, False, True),     # K halves: one warp stashes the first
    (5, 602, 6144, "rmsnorm", "none", False, True, False),      # the same, rows 5-7 masked
    # 2,400 pairs: warps finish several pairs each, so each pair's end (the accumulators' reset,
    # the stash buffer's reuse) is exercised; no K halves past 1,056 pairs
    (16, 4800, 1536, "layernorm", "none", True, False, False),
], ids=str)
@pytest.mark.parametrize("fold", [1, 0], ids=["fold", "staged"])
def test_packed_gemv_scatter_epilogue_same_bits(wtype, m, n, k, kind, act, bias, residual, float_out, fold):
    """v32 in the packed GEMV (ext.linear_scatter_force 1): at 8-16 rows a pair's sums are
    reduce-scattered and row 0's lanes finish their batch rows at once (the K halves' first half
    stashed by the lanes that keep each sum), instead of a warp_sum per sum and one writing lane
    per row. The same bits as the per-row epilogue, with the norm folded (v3.4) or staged, and
    within the oracle's bound."""
    from gpt_engine.ops import _ext
    from gpt_engine.ops import linear_module as lin
    ext = _ext.load()
    w, w64 = make_weight(n, k, wtype, "cuda")
    assert lin.packed_gemv_ok(w.raw, int(w.qtype), torch.float16, m, k)
    x = randn((m, k), torch.float16, "cuda")
    n_out = n // 2 if act == "swiglu" else n
    b = randn((n,), torch.float16, "cuda", scale=0.1) if bias else None
    r = randn((m, n_out), torch.float16, "cuda") if residual else None
    nm = _norm(kind, k, torch.float16, "cuda")
    outs = {}
    try:
        assert ext.qgemv_fold_force(fold) == fold
        for on in (0, 1):
            assert ext.linear_scatter_force(on) == on
            outs[on] = ops.linear(x, w, b, residual=r, norm=nm, act=act, float_out=float_out)
    finally:
        ext.linear_scatter_force(1)  # (the default since session 49)
        ext.qgemv_fold_force(1)
    assert torch.equal(outs[1], outs[0])
    assert_nmse(outs[1], oracle(x, w64, b, r, nm, act), TOL_NAME[torch.float16])


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["Q8_0", "MXFP4"])
@pytest.mark.parametrize("rows", ["offset", "outlier"])
@pytest.mark.parametrize("m", [1, 16])
def test_packed_gemv_layernorm_fold_hard_rows(wtype, rows, m):
    """v3.4's LayerNorm fold codes (x - x[0]) g, so its codes' step follows max |x - x[0]|: rows
    whose mean dwarfs their spread (300 against 1) and rows whose first value, the shift, is an
    outlier (60 against a spread of 1; docs/kernels/quant.md's v3.4 simulation puts such rows'
    error at ~2x v3.3's, far under the fp16 bound). Both settings (qgemv_fold_force 1, 0) within
    the oracle's bound of the float64 product of the exact norm, at M = 1 and 16."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    n, k = 602, 1536
    w, w64 = make_weight(n, k, wtype, "cuda")
    x = randn((m, k), torch.float16, "cuda", offset=300.0 if rows == "offset" else 0.0)
    if rows == "outlier":
        x[:, 0] = 60.0
    nm = _norm("layernorm", k, torch.float16, "cuda")
    ref = oracle(x, w64, None, None, nm, "none")
    each_fold_setting(ext.qgemv_fold_force, lambda: ops.linear(x, w, norm=nm), ref)



@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,k", [(1, 32), (1, 1600), (1, 2880), (1, 6400), (2, 2880), (3, 6400), (8, 6400),
                                 (16, 1600)], ids=str)
@pytest.mark.parametrize("norm", [None, "layernorm", "rmsnorm"], ids=str)
def test_mxfp4_zip_same_bits(dtype, m, k, norm):
    """v3.3 (the default since session 31; ext.qgemv_zip_force(0) returns to v3: MXFP4 codes in
    the nibbles' order, the activations staged in that order, csrc/linear_q_impl.cuh) computes v3's bits: a group's dp4a sums are the same
    integers in another order. Every M tile, the K halves (k 6400 at M = 1: four batches), groups
    past a 64-group unit (k 2880, 6400), part of one (k 1600), one group (k 32), and each fused norm, with a bias and the
    residual; and the output against the float64 oracle once more."""
    from gpt_engine.ops import _ext
    from gpt_engine.ops import linear_module as lin
    ext = _ext.load()
    n = 301  # odd: the last pair's second row is absent
    w, w64 = make_weight(n, k, "MXFP4", "cuda")
    assert lin.packed_gemv_ok(w.raw, int(w.qtype), dtype, m, k)
    x = randn((m, k), dtype, "cuda")
    bias = randn((n,), dtype, "cuda")
    res = randn((m, n), dtype, "cuda")
    nm = _norm(norm, k, dtype, "cuda")
    try:
        assert ext.qgemv_zip_force(0) == 0
        v3 = ops.linear(x, w, bias, norm=nm, residual=res)
        assert ext.qgemv_zip_force(1) == 1
        v33 = ops.linear(x, w, bias, norm=nm, residual=res)
        assert ext.qgemv_zip_force(2) == 1  # not a setting: nothing changes
    finally:
        ext.qgemv_zip_force(1)  # the default
    assert torch.equal(v33, v3)
    assert_nmse(v33, oracle(x, w64, bias, norm=nm, residual=res), TOL_NAME[dtype])


# ---------------------------------------------------------------- dequantize: bit-exact

_F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2],
               "Q5_K": [0, 2], "Q6_K": [208], "MXFP4": []}
# finite fp16 scales including the extremes: 0, -0, the smallest subnormal, the largest finite
_F16_EDGES = np.array([0.0, -0.0, 2.0**-24, -(2.0**-24), 6.1e-5, 1.0, -1.0, 0.01, 65504.0, -65504.0],
                      dtype=np.float16)


def edge_blocks(wtype: str, nblocks: int, rng) -> np.ndarray:
    """Random blocks [nblocks, type size] with finite fp16 scales drawn from the edges and at random,
    some blocks with every code byte 0x00 or 0xFF (min/max codes); MXFP4 blocks cycle through every
    E8M0 exponent 0..255 (gguf-py decodes them all, 255 included, as ggml does)."""
    ts = gguf.GGML_QUANT_SIZES[Q[wtype]][1]
    b = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)
    b[0::7, :] = 0x00
    b[1::7, :] = 0xFF
    for off in _F16_FIELDS[wtype]:
        sc = rng.standard_normal(nblocks).astype(np.float16)
        edge = rng.integers(0, len(_F16_EDGES), nblocks)
        pick = rng.random(nblocks) < 0.4
        sc[pick] = _F16_EDGES[edge[pick]]
        sc[2::7] = 0.0  # all-zero scales
        b[:, off:off + 2] = sc.view(np.uint8).reshape(nblocks, 2)
    if wtype == "MXFP4":
        b[:, 0] = np.arange(nblocks) % 256
    return b


@pytest.mark.story("GT-029", "GT-030")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wtype", PACKED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dequantize_bit_exact(device, wtype, dtype):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    qk = _qk(wtype)
    n, bpr = 37, (768 // qk if qk == 256 else 24)  # rows of 3 (K-quants) or 24 blocks
    raw = edge_blocks(wtype, n * bpr, rng).reshape(n, -1)
    ref = torch.from_numpy(gguf.quants.dequantize(raw, Q[wtype]).astype(np.float32)).reshape(n, -1).to(dtype)
    t = torch.from_numpy(raw.copy()).to(device)
    out = ops.dequantize_rows(t, int(Q[wtype]), None, dtype, None)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.equal(out.cpu(), ref), f"{int((out.cpu() != ref).sum())} values differ"
    ids = torch.tensor([5, 0, 36, 5, 17], device=device)
    rows = ops.dequantize_rows(t, int(Q[wtype]), ids, dtype, None)
    assert torch.equal(rows.cpu(), ref[ids.cpu()])


@pytest.mark.output_fill(float("inf"))  # NaN rows must be written NaN, good rows finite
@pytest.mark.story("GT-034")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", PACKED)
def test_packed_embedding_rows_cuda(wtype):
    """QWeight.rows of a packed table on CUDA (the kernel) equals the CPU path bit for bit; a bad id
    under device checking gives a NaN row and bit 1 of the status word, no exception, no sync."""
    w, _ = make_weight(500, 2 * _qk(wtype) if _qk(wtype) == 256 else 576, wtype, "cpu")
    wc = QWeight(w.raw.cuda(), w.qtype, w.shape)
    ids = torch.randint(0, 500, (3, 7))
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert torch.equal(wc.rows(ids.cuda(), dt).cpu(), w.rows(ids, dt))
    status = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = wc.rows(torch.tensor([3, 500, -1], device="cuda"), torch.float16, checked=False, status=status)
    assert int(status) == 1
    assert torch.isnan(out[1:]).all() and torch.isfinite(out[0]).all()
    with pytest.raises(Exception, match="out of range"):
        wc.rows(torch.tensor([3, 500], device="cuda"), torch.float16)


def _sum_rounded(a, b):
    """The residual sum's contract, written out: both rows in fp32 (exact for 16-bit inputs), one
    fp32 add, one rounding to the rows' dtype (gpt_engine/ops/residual_add.py states it so)."""
    return (a.float() + b.float()).to(a.dtype)


@pytest.mark.output_fill(float("inf"))  # NaN rows must be written NaN, good rows finite
@pytest.mark.story("GT-034")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wtype", ["Q8_0", "MXFP4", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dequantize_rows_plus_add_rows(device, wtype, dtype):
    """GPT-2's packed token rows plus their position rows in one call: bit for bit gguf-py's rows
    rounded to dtype, plus the added rows summed in fp32 and rounded once (residual_add's contract,
    written out in _sum_rounded); a bad add id gives a NaN row
    and bit 1 of the status word on CUDA."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    qk = _qk(wtype)
    n, bpr = 37, (768 // qk if qk == 256 else 24)
    raw = edge_blocks(wtype, n * bpr, rng).reshape(n, -1)
    k = bpr * qk
    ref_rows = torch.from_numpy(gguf.quants.dequantize(raw, Q[wtype]).astype(np.float32)).reshape(n, -1).to(dtype)
    add = torch.randn(50, k).to(dtype)
    ids, pos = torch.tensor([5, 0, 36, 5, 17]), torch.tensor([0, 49, 3, 3, 12])
    want = _sum_rounded(ref_rows[ids], add[pos])
    t = torch.from_numpy(raw.copy()).to(device)
    got = ops.dequantize_rows(t, int(Q[wtype]), ids.to(device), dtype, None, add.to(device), pos.to(device))
    assert torch.equal(got.cpu(), want), f"{int((got.cpu() != want).sum())} values differ"
    if device == "cuda":
        status = torch.zeros(1, dtype=torch.int32, device=device)
        with ops.device_checked():
            bad = ops.dequantize_rows(t, int(Q[wtype]), ids[:3].to(device), dtype, status, add.to(device),
                                      torch.tensor([1, 50, 2], device=device))
        assert int(status) == 1
        assert torch.isnan(bad[1].float()).all()
        assert torch.equal(bad[[0, 2]].cpu(), _sum_rounded(ref_rows[ids[[0, 2]]], add[[1, 2]]))
    if device == "cpu":  # the reference raises; the CUDA kernel flags (callers check on the host first)
        with pytest.raises(Exception, match="add id 50 outside"):
            ops.dequantize_rows(t, int(Q[wtype]), ids[:2], dtype, None, add, torch.tensor([1, 50]))


# ---------------------------------------------------------------- MXFP4 at gpt-oss shapes

# gpt-oss-20b: hidden 2880, 64 query heads and 8 KV heads of 64, expert FFN 2880 (SwiGLU)
OSS_CASES = [
    pytest.param(1, 64 * 64 + 2 * 8 * 64, 2880, "none", True, None, False, marks=pytest.mark.story("GT-035"),
                 id="qkv"),
    pytest.param(4, 2880, 64 * 64, "none", True, None, False, marks=pytest.mark.story("GT-035"), id="attn_out"),
    pytest.param(1, 2 * 2880, 2880, "swiglu", False, "rmsnorm", False, marks=pytest.mark.story("GT-036"),
                 id="ffn_gate_up"),
    pytest.param(2, 2880, 2880, "none", False, None, False, marks=pytest.mark.story("GT-036"), id="ffn_down"),
    pytest.param(1, 8192, 2880, "none", False, "rmsnorm", True, marks=pytest.mark.story("GT-037"),
                 id="lm_head_slice"),
    pytest.param(64, 2880, 2880, "none", False, None, False, marks=pytest.mark.story("GT-036"),
                 id="prefill_dequant_cublas"),
]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,n,k,act,bias,norm,float_out", OSS_CASES)
def test_mxfp4_projections_at_model_shapes(dtype, m, n, k, act, bias, norm, float_out):
    _case("cuda", m, n, k, "MXFP4", dtype, norm, act, bias, False, float_out)


# ---------------------------------------------------------------- benchmarks

BENCH_SHAPES = [(1600, 6400), (6400, 1600), (4096, 4096), (2880, 2880)]


def _bench_gemv(bench, wtype, n, k):
    if k % _qk(wtype):
        k = k // _qk(wtype) * _qk(wtype)
    w0, w64 = make_weight(n, k, wtype, "cuda")
    nbytes = w0.nbytes
    reps = max(4, (512 << 20) // nbytes)
    qs = [w0] + [QWeight(w0.raw.clone(), w0.qtype, w0.shape) for _ in range(reps - 1)]
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    assert_nmse(ops.linear(x, w0), x.cpu().double() @ w64.T, "nmse_fp16")

    def ours():
        for q in qs:
            ops.linear(x, q)
    t = bench.cuda_time(graphed(ours), warmup=3, reps=20, flush_l2=False) / reps
    bench.record(f"{wtype.lower()}_gemv.{n}x{k}", nbytes / t / 1e9, "GB/s", kind="bandwidth",
                 params={"n": n, "k": k, "m": 1, "packed_bytes": nbytes, "weights_per_replay": reps,
                         "us_per_call": t * 1e6})
    del qs
    torch.cuda.empty_cache()


@mark("GT-033")
@pytest.mark.parametrize("n,k", BENCH_SHAPES, ids=str)
def test_mxfp4_gemv_bandwidth(bench, n, k):
    """M = 1 packed GEMV in a CUDA graph, 512 MiB of distinct packed weights per replay (none from
    L2); bandwidth counts the packed bytes; the copy reference is measured in the same run."""
    _bench_gemv(bench, "MXFP4", n, k)


@mark("GX-003")
@pytest.mark.parametrize("wtype", [t for t in PACKED if t != "MXFP4"])
@pytest.mark.parametrize("n,k", BENCH_SHAPES, ids=str)
def test_packed_gemv_bandwidth(bench, wtype, n, k):
    _bench_gemv(bench, wtype, n, k)


@mark("GT-029")
@pytest.mark.parametrize("n,k", BENCH_SHAPES + [(8192, 8192)], ids=str)
def test_mxfp4_dequant_bandwidth(bench, n, k):
    """The whole-matrix dequantize (prefill's scratch fp16 matrix): bytes read (packed) + written
    (fp16), calls on distinct weights in a CUDA graph."""
    w0, _ = make_weight(n, k, "MXFP4", "cuda")
    reps = max(2, (512 << 20) // (n * k * 2))
    raws = [w0.raw] + [w0.raw.clone() for _ in range(reps - 1)]
    outs = [torch.empty(n, k, device="cuda", dtype=torch.float16) for _ in range(reps)]
    ext = __import__("gpt_engine.ops._ext", fromlist=["load"]).load()

    def ours():
        for r, o in zip(raws, outs):
            ext.dequantize_rows(r, int(Q.MXFP4), None, o, None)
    t = bench.cuda_time(graphed(ours), warmup=3, reps=20, flush_l2=False) / reps
    nbytes = w0.nbytes + n * k * 2
    ref = torch.from_numpy(gguf.quants.dequantize(w0.raw.cpu().numpy(), Q.MXFP4)).reshape(n, k).half()
    assert torch.equal(outs[0].cpu(), ref)
    bench.record(f"mxfp4_dequant.{n}x{k}", nbytes / t / 1e9, "GB/s", kind="bandwidth",
                 params={"n": n, "k": k, "read_bytes": w0.nbytes, "write_bytes": n * k * 2, "us_per_call": t * 1e6})
