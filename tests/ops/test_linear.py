"""The linear op (every weight matrix of every model): GEMV kernel (<= 16 rows), the cuBLAS
path (more rows) and the CPU path, each against a float64 product whose weight comes from
gguf-py's own dequantizer, over weight types x activation dtypes x shapes x fused norms and
epilogues. Shapes include odd row counts (a weight-row pair with no partner), K that spans
several shared-memory tiles, one-block rows and the GPT-2 / Llama widths."""
import re

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import linear_module as lin
from gpt_engine.qweight import QWeight

from ._bench import graphed
from ._util import DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, randn

Q = gguf.GGMLQuantizationType


def make_weight(n: int, k: int, qtype: str, device: str, scale: float = 0.05):
    """A random weight encoded as the file would hold it, and its float64 value as gguf-py
    decodes those bytes (the oracle never sees our decoder)."""
    w = (np.random.default_rng(int(torch.randint(0, 2**31, ()))).standard_normal((n, k)) * scale).astype(np.float32)
    t = Q[qtype]
    if t == Q.F32:
        raw = w.view(np.uint8)
    elif t == Q.F16:
        raw = w.astype(np.float16).view(np.uint8)
    elif t == Q.BF16:
        raw = (torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8))
    elif t in (Q.Q4_K, Q.Q5_K, Q.Q6_K):  # gguf-py has no K-quant quantizer: ours encodes, gguf-py decodes
        from gpt_engine.quantize import quantize
        raw = quantize(w, t)
    else:
        raw = gguf.quants.quantize(w, t)
    raw = np.ascontiguousarray(raw).reshape(n, -1)
    value = torch.from_numpy(gguf.quants.dequantize(raw, t).astype(np.float64)).reshape(n, k)
    qw = QWeight(torch.from_numpy(raw.copy()).to(device), t, (n, k))
    return qw, value


def oracle(x, w64, bias=None, residual=None, norm=None, act="none"):
    """float64 on the CPU, from the test inputs exactly as rounded."""
    h = x.detach().cpu().double()
    if norm is not None:
        nw = norm.weight.cpu().double()
        if norm.kind == "layernorm":
            h = F.layer_norm(h, (h.shape[-1],), nw, norm.bias.cpu().double(), norm.eps)
        else:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * nw
    y = h @ w64.T
    if bias is not None:
        y = y + bias.cpu().double()
    if act == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    elif act == "swiglu":
        g, u = y.chunk(2, dim=-1)
        y = F.silu(g) * u
    if residual is not None:
        y = y + residual.cpu().double()
    return y


# (rows M, out N, in K): GEMV at M <= 16 (1, 2, 3 -> tile 4, 16), cuBLAS beyond; N odd or not a
# multiple of the 8 rows a block takes; K one 16-byte chunk, many chunks, several K tiles
SHAPES_SMALL = [(1, 1, 8), (1, 7, 64), (3, 33, 256), (16, 10, 1600), (17, 12, 72), (5, 64, 776)]
SHAPES_GPU = [(1, 2304, 768), (1, 768, 3072), (4, 6400, 1600), (16, 1600, 6400), (1, 50257, 768), (2, 4801, 1600),
              (64, 1024, 1024), (8, 2880, 2880)]


def _norm(kind, k, dtype, device):
    if kind is None:
        return None
    w = randn((k,), dtype, device, scale=0.2, offset=1.0)
    b = randn((k,), dtype, device, scale=0.2) if kind == "layernorm" else None
    return ops.Norm(kind, w, b, 1e-5)


def _case(device, m, n, k, wtype, dtype, norm=None, act="none", bias=False, residual=False, float_out=False):
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    w, w64 = make_weight(n, k, wtype, device)
    x = randn((m, k), dtype, device)
    # A relative-error bound on a dot product holds only where the result is not a cancellation of
    # its terms: fp32 summation error is bounded by ~u K sum|w x| (Higham, Accuracy and Stability,
    # 3.1), so a tiny result (N = 1: one output, which random terms cancel to 1/300 of their size
    # in ~0.5% of draws; CI's fresh-clone run at 88b6262 drew one, NMSE 3.2e-10) can exceed
    # nmse_fp32 with nothing wrong. Inputs whose outputs' squared size falls below 1/16 K of their
    # terms' (random data: ~1/0.4 K, so 40x from typical) are redrawn from the same seeded stream.
    for _ in range(20):
        x64 = x.cpu().double()
        if float(((x64 @ w64.T) ** 2).sum()) * 16 * k >= float(((x64.abs() @ w64.abs().T) ** 2).sum()):
            break
        x = randn((m, k), dtype, device)
    n_out = n // 2 if act == "swiglu" else n
    b = randn((n,), dtype, device, scale=0.1) if bias else None
    r = randn((m, n_out), dtype, device) if residual else None
    nm = _norm(norm, k, dtype, device)
    out = ops.linear(x, w, b, residual=r, norm=nm, act=act, float_out=float_out)
    assert out.shape == (m, n_out) and out.device.type == device
    assert out.dtype == (torch.float32 if float_out else dtype)
    ref = oracle(x, w64, b, r, nm, act)
    # the output rounding (dtype) decides the bound; a fused norm rounds its output to dtype too
    assert_nmse(out, ref, TOL_NAME[dtype])


# Q8_0 rows are whole 32-value blocks (the format's rule), so it takes the shapes with K % 32 == 0
PLAIN = [(w, s) for w in ("F32", "F16", "BF16", "Q8_0") for s in SHAPES_SMALL if w != "Q8_0" or s[2] % 32 == 0]


@pytest.mark.story("GX-003", "GT-014")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wtype,shape", PLAIN, ids=str)
def test_linear_plain(device, wtype, shape):
    dtype = torch.float16 if device == "cuda" else torch.float32
    _case(device, *shape, wtype, dtype)


@pytest.mark.story("GX-003", "GT-014")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 16, 24])
@pytest.mark.parametrize("norm,act,bias,residual,float_out", [
    ("layernorm", "none", True, False, False),      # GPT-2 QKV
    (None, "none", True, True, False),              # GPT-2 attention output / MLP down
    ("layernorm", "gelu_tanh", True, False, False),  # GPT-2 MLP up
    ("rmsnorm", "swiglu", False, False, False),      # Llama gate+up
    ("rmsnorm", "none", False, False, True),         # Llama LM head (fp32 logits)
    (None, "swiglu", True, True, True),              # every epilogue at once
], ids=str)
def test_linear_fused(device, dtype, m, norm, act, bias, residual, float_out):
    n, k = (2 * 1601, 1600) if device == "cuda" else (2 * 37, 200)
    _case(device, m, n, k, "F16", dtype, norm, act, bias, residual, float_out)


@pytest.mark.story("GX-003", "GT-014")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("m,n,k", SHAPES_GPU, ids=str)
def test_linear_model_shapes_cuda(wtype, m, n, k):
    _case("cuda", m, n, k, wtype, torch.float16, norm="layernorm", bias=True)


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("k", [1600, 3072, 6400])
@pytest.mark.parametrize("ring", [0, 16, 32], ids=["rule", "batch-ring", "m16-v3"])
@pytest.mark.parametrize("fold", [1, 0], ids=["fold", "loop"])
def test_gemv_rows_do_not_depend_on_the_batch(k, kind, ring, fold):
    """Row m of a batch is computed exactly as it is alone (same chunks, same order): what makes a
    sequence's greedy ids in a batch equal its batch-1 run. K = 6400 crosses from v3 (M = 16: the
    rows do not fit v6's shared memory) to v6 (M = 1), which must give the same bits. With v27's
    fold the statistics come from the staging's chunk sums (one tile) or from global memory (M = 16
    over several tiles at K = 3,072 and 6,400): the same chunks in the same order. With a bias (odd
    N: the last pair's lone row), so each kernel's bias path (v29) and, for LayerNorm, its C / D
    (v27b: read before the dot products) are checked against the others'. v30 puts M = 16 on the
    ring kernel where its staged rows fit (K = 1,600); ext.linear_ring_force's bit 16 does so for
    every M >= 2 (M = 3 at every K here, M = 8 up to K = 3,072), bit 32 keeps M = 16 on v3: the
    same bits each way, and as each row alone. M = 8 on v3 takes the folded norm's statistics
    once per block (v31), over two tiles at K = 1,600. Under ext.linear_fold_force(0) the norm is
    applied in the staging (statistics from the staged row or, over several tiles, from global
    memory): the same kernels are taken (the fold's chunk sums move no product across the ring's
    200 KiB cap here), and they must agree as well (a review of v30 found no test of that path across
    the v3 / ring boundary)."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    w, w64 = make_weight(1601, k, "F16", "cuda")
    x = randn((16, k), torch.float16, "cuda")
    b = randn((1601,), torch.float16, "cuda", scale=0.1)
    nm = _norm(kind, k, torch.float16, "cuda")
    try:
        assert ext.linear_fold_force(fold) == fold
        assert ext.linear_ring_force(ring) == ring
        full = ops.linear(x, w, b, norm=nm)
        took = {m: gemv_kernel_taken(lambda m=m: ops.linear(x[:m].contiguous(), w, b, norm=nm)) for m in (3, 8, 16)}
        parts = {m: ops.linear(x[:m].contiguous(), w, b, norm=nm) for m in (1, 3, 8, 16)}
    finally:
        ext.linear_ring_force(0)
        ext.linear_fold_force(1)
    for m, part in parts.items():
        assert torch.equal(part, full[:m])
    # the kernels the bits came from (without the hook's move, this would compare v3 with itself)
    m3 = "ring" if ring == 16 or k >= 4096 else "v3"
    # (8 rows of 6,400 floats, 200 KiB, leave no room for the ring under its 200 KiB cap)
    m8 = "ring" if ring == 16 and k <= 3072 else "v3"
    assert took == {3: m3, 8: m8, 16: "ring" if k == 1600 and ring != 32 else "v3"}, took
    assert_nmse(full, oracle(x, w64, b, norm=nm), TOL_NAME[torch.float16])


# (rows, N, K, norm, act, bias, residual, float_out, activation dtype, ring rule, kernel it takes):
# v32's epilogue on each kernel and epilogue it meets at 8-16 rows (rule 16: every M >= 2 on the ring)
SCATTER_CASES = [
    (16, 1602, 1600, "layernorm", "none", True, False, False, torch.float16, 0, "ring"),
    (16, 3200, 1600, "layernorm", "gelu_tanh", True, False, False, torch.float16, 0, "ring"),  # 1,600 pairs: several a warp
    (16, 1602, 1600, "rmsnorm", "swiglu", False, False, False, torch.bfloat16, 0, "ring"),
    (9, 1602, 1600, "rmsnorm", "none", False, False, True, torch.float16, 0, "ring"),     # rows 9-15 masked; fp32 out
    (16, 1601, 6400, None, "none", True, True, False, torch.float16, 0, "v3"),           # down product: v3's tiles, odd N
    (16, 1602, 3072, "layernorm", "none", True, False, False, torch.float16, 0, "v3"),   # v3's tiles, v31's statistics
    (8, 1602, 1600, "layernorm", "gelu_tanh", True, False, False, torch.float16, 0, "v3"),  # MT = 8, two tiles
    (5, 2304, 768, "layernorm", "none", True, True, False, torch.float16, 0, "v3"),     # MT = 8, one tile, rows 5-7 masked
    (8, 3200, 1600, "layernorm", "gelu_tanh", True, False, False, torch.float16, 16, "ring"),  # MT = 8 on the ring
    # (session 50, from a review: a multiply then an add that one path could fuse and the other not)
    (16, 1602, 1600, "rmsnorm", "none", True, False, False, torch.bfloat16, 0, "ring"),  # RMSNorm fold + bias
    (12, 3200, 1600, "layernorm", "gelu_tanh", True, True, False, torch.float16, 0, "ring"),  # GELU, then a residual
]


def scatter_twin(a0, a1):
    """v32's reduce-scatter (csrc/linear_common.cuh pair_sums_scatter) in fp32 over 32 simulated
    lanes: a0 / a1 [32, MT] a pair's two rows' per-lane partial sums; returns each lane's kept sum.
    Stage by stage as the kernel: offset 16 N / MT keeps N values, the upper or lower half by the
    lane's offset bit, plus the partner lane's copy of the same value; then warp_sum's remaining
    stages."""
    lanes = torch.arange(32)
    mt = a0.shape[1]
    v = torch.cat([a0, a1], dim=1)
    n = mt
    while n >= 1:
        o = 16 * n // mt
        up = ((lanes & o) != 0)[:, None]
        keep = torch.where(up, v[:, n:2 * n], v[:, :n])
        give = torch.where(up, v[:, :n], v[:, n:2 * n])
        v = keep + give[lanes ^ o]
        n //= 2
    r = v[:, 0]
    o = 16 // (2 * mt)
    while o > 0:
        r = r + r[lanes ^ o]
        o //= 2
    return r


def warp_sum_twin(v):
    """csrc/common.cuh warp_sum over 32 simulated lanes (xor offsets 16 .. 1): every lane's sum."""
    lanes = torch.arange(32)
    for o in (16, 8, 4, 2, 1):
        v = v + v[lanes ^ o]
    return v


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("mt", [16, 8, 4, 2])
def test_scatter_twin_has_warp_sum_bits_cpu(mt):
    """The reduce-scatter's arithmetic, checked without a GPU: lane l keeps value j = l >> (5 - H)
    (H = log2(2 MT); j = r MT + m: row r of the pair, batch row m), with the bits warp_sum gives that
    value, for values spread over six decades (where a different order of additions would show);
    row 0's lane for m finds row 1's sum at lane ^ 16, as the kernel's finish reads it."""
    g = torch.Generator().manual_seed(mt)
    h = {16: 5, 8: 4, 4: 3, 2: 2}[mt]
    for _ in range(50):
        a = torch.randn(2, 32, mt, generator=g) * 10 ** (torch.rand(2, 32, mt, generator=g) * 6 - 3)
        got = scatter_twin(a[0], a[1])
        for lane in range(32):
            r, m = divmod(lane >> (5 - h), mt)
            assert torch.equal(got[lane], warp_sum_twin(a[r][:, m])[lane])
        for m in range(mt):
            lane = m << (5 - h)
            assert torch.equal(got[lane ^ 16], warp_sum_twin(a[1][:, m])[0])


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("case", SCATTER_CASES,
                         ids=lambda c: "-".join(str(v) for v in c[:8]) + "-" + str(c[8])[6:] + f"-ring{c[9]}")
@pytest.mark.parametrize("fold", [1, 0], ids=["fold", "loop"])
def test_gemv_scatter_epilogue_same_bits(case, fold):
    """v32 (ext.linear_scatter_force 1): at 8-16 rows a pair's sums are reduce-scattered over the
    warp and 16 lanes finish their rows at once, instead of a warp_sum per sum and one writing
    lane per row. Every sum must have warp_sum's bits (the same partial sums added at each
    stage), so the outputs equal the per-row epilogue's bit for bit: on the ring kernel and on v3,
    with each epilogue (bias, GELU, SwiGLU, residual, fp32 out), the norm folded (its statistics
    from shared memory) or normalized in the staging, rows past M masked; and within the oracle's
    bound."""
    m, n, k, norm, act, bias, residual, float_out, dtype, ring, kernel = case
    from gpt_engine.ops import _ext
    ext = _ext.load()
    w, w64 = make_weight(n, k, "F16", "cuda")
    x = randn((m, k), dtype, "cuda")
    n_out = n // 2 if act == "swiglu" else n
    b = randn((n,), dtype, "cuda", scale=0.1) if bias else None
    r = randn((m, n_out), dtype, "cuda") if residual else None
    nm = _norm(norm, k, dtype, "cuda")
    product = lambda: ops.linear(x, w, b, residual=r, norm=nm, act=act, float_out=float_out)  # noqa: E731
    outs = {}
    try:
        assert ext.linear_fold_force(fold) == fold
        assert ext.linear_ring_force(ring) == ring
        for on in (0, 1):
            assert ext.linear_scatter_force(on) == on
            outs[on] = product()
            assert gemv_kernel_taken(product) == kernel
    finally:
        ext.linear_scatter_force(1)  # (the default since session 49)
        ext.linear_ring_force(0)
        ext.linear_fold_force(1)
    assert torch.equal(outs[1], outs[0])
    assert_nmse(outs[1], oracle(x, w64, b, r, nm, act), TOL_NAME[dtype])


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("kind,act", [("layernorm", "none"), ("layernorm", "gelu_tanh"), ("rmsnorm", "swiglu"),
                                      ("rmsnorm", "none")], ids=str)
@pytest.mark.parametrize("wtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("m,n,k", [(1, 4800, 1600), (1, 2304, 768), (3, 1602, 1600), (16, 1602, 3072),
                                   (16, 1602, 1600), (8, 1602, 1600), (8, 2304, 768), (1, 1600, 6400),
                                   (1, 1000, 1004)], ids=str)
def test_gemv_norm_fold_vs_float64(kind, act, wtype, m, n, k):
    """v27 (csrc/launchers.h, LinearArgs::fold_c): the norm folded into the epilogue, the default
    where K % 8 == 0 (K = 1,004 keeps v23's normalize loop), and the unfolded path under
    ext.linear_fold_force(0), each within the oracle's bound of the float64 product of the exact
    norm; the fold's staged row is not rounded to the activation dtype, so the two differ. Past 4
    rows v3 takes the rows' statistics once per block (v31); linear_fold_force(2) takes them per
    pair as before: the same bits (8 x 1,600: from global memory over two tiles; 8 x 768: from the
    staging's chunk sums; 16 x 3,072: global; 16 x 1,600: the ring kernel, which keeps them all)."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    torch.backends.cuda.matmul.allow_tf32 = False
    w, w64 = make_weight(n, k, wtype, "cuda")
    x = randn((m, k), torch.float16, "cuda")
    b = randn((n,), torch.float16, "cuda", scale=0.1)
    nm = _norm(kind, k, torch.float16, "cuda")
    ref = oracle(x, w64, b, None, nm, act)
    outs = each_fold_setting(ext.linear_fold_force, lambda: ops.linear(x, w, b, norm=nm, act=act), ref)
    if k % 8 == 0 and n >= 1000:  # (a fold that ran: the staged rows differ by the norm's rounding)
        assert not torch.equal(outs[0], outs[1])
    if m > 4:
        # the kernel the comparison runs on (16 x 1,600: the ring, where setting 2 changes nothing;
        # the rest v3, where it takes the statistics per pair)
        took = gemv_kernel_taken(lambda: ops.linear(x, w, b, norm=nm, act=act))
        assert took == ("ring" if (m, k) == (16, 1600) else "v3"), took
        try:
            assert ext.linear_fold_force(2) == 2
            assert torch.equal(ops.linear(x, w, b, norm=nm, act=act), outs[1])
        finally:
            ext.linear_fold_force(1)


def each_fold_setting(force, product, ref) -> dict:
    """product() under a fold hook's settings 1 (the fold) and 0 (``force``: ext.linear_fold_force,
    the dense GEMV's, or ext.qgemv_fold_force, the packed one's), each within the oracle's fp16
    bound of ref; the default (1) restored. Returns {setting: output}."""
    outs = {}
    try:
        for on in (1, 0):
            assert force(on) == on
            outs[on] = product()
            assert_nmse(outs[on], ref, TOL_NAME[torch.float16])
    finally:
        force(1)
    return outs


def fold_twin(x, w, norm):
    """v27's arithmetic in fp32 on the CPU, as csrc/linear_common.cuh orders it where the order
    matters (the statistics: 8-element chunk sums of x - x[0], chunk c added by lane c % 32, the
    32 lanes summed; the row constants C = W g, D = W b from fp64): the kernel's algebra, checked
    without a GPU. The dot products' own fp32 order is the GPU's business (and its tests')."""
    xf, wf, gf = x.float(), w.float(), norm.weight.float()
    k = x.shape[1]
    ln = norm.kind == "layernorm"
    rows = []
    for xr in xf:
        c0 = xr[0] if ln else torch.zeros(())
        s = wf @ ((xr - c0) * gf)
        d = (xr - c0).view(-1, 8)
        lanes = torch.zeros(2, 32)
        for c, (cs, cq) in enumerate(zip(d.sum(1), (d * d).sum(1))):
            lanes[0, c % 32] += cs
            lanes[1, c % 32] += cq
        s1, s2 = lanes.sum(1)
        if ln:
            dm = s1 / k
            rstd = torch.rsqrt(torch.clamp(s2 / k - dm * dm, min=0) + norm.eps)
            cc = (w.double() @ norm.weight.double()).float()
            dd = (w.double() @ norm.bias.double()).float()
            rows.append(rstd * (s - dm * cc) + dd)
        else:
            rows.append(torch.rsqrt(s2 / k + norm.eps) * s)
    return torch.stack(rows)


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("wtype", ["F16", "BF16", "F32"])
def test_fold_constants_values_cache_and_refusals_cpu(monkeypatch, wtype):
    """ops.linear.fold_constants' Python side without a GPU (its callers run only on CUDA, so a
    slip here would show first on the GPU machine): a weight held on the CPU and an x that says
    it is on CUDA. C = W g and D = W b against float64 (fp32 rounding of an fp64 sum), cached
    per norm (the second call returns the same tensors, a second norm gets its own), and (None,
    None) for an RMSNorm, for K % 8 != 0, and inside a graph capture before they exist."""
    from types import SimpleNamespace
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    x = SimpleNamespace(device=torch.device("cuda"))
    w, w64 = make_weight(1000, 1600, wtype, "cpu")
    nm = _norm("layernorm", 1600, torch.float16, "cpu")
    c, d = lin.fold_constants(w, nm, x)
    assert c.dtype == d.dtype == torch.float32 and c.shape == d.shape == (1000,)
    assert torch.equal(c, (w64 @ nm.weight.double()).float())
    assert torch.equal(d, (w64 @ nm.bias.double()).float())
    c2, d2 = lin.fold_constants(w, nm, x)
    assert c2 is c and d2 is d
    nm2 = _norm("layernorm", 1600, torch.float16, "cpu")
    assert lin.fold_constants(w, nm2, x)[0] is not c
    assert lin.fold_constants(w, _norm("rmsnorm", 1600, torch.float16, "cpu"), x) == (None, None)
    assert lin.fold_constants(w, nm, SimpleNamespace(device=torch.device("cpu"))) == (None, None)
    w_odd, _ = make_weight(10, 1004, wtype, "cpu")
    assert lin.fold_constants(w_odd, _norm("layernorm", 1004, torch.float16, "cpu"), x) == (None, None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert lin.fold_constants(w, _norm("layernorm", 1600, torch.float16, "cpu"), x) == (None, None)
    assert lin.fold_constants(w, nm, x)[0] is c  # computed before the capture: found
    assert lin.fold_block_rows(1600) % 4 == 0 and lin.fold_block_rows(1600) * 1600 * 8 <= lin.FOLD_BLOCK_BYTES


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("k,mean", [(1600, 0.0), (768, 5.0), (2048, -30.0)], ids=str)
def test_norm_fold_algebra_cpu_twin(kind, k, mean):
    """The fold's algebra (XStage's v27 notes) against the float64 product of the exact norm, with
    a large row mean and an outlier first value (the shift's worst case): within the fp16 bound,
    and no farther from it than the unfused path, which rounds the norm's output to fp16 (measured
    in session 37: fold NMSE 2e-10..1e-9 LayerNorm, ~1e-13 RMSNorm; unfused 3.5e-8..5.8e-8)."""
    torch.manual_seed(k)
    x = (torch.randn(3, k) + mean).half()
    x[1, 0] = 40.0
    w = (torch.randn(500, k) * 0.05).half()
    nm = ops.Norm(kind, (torch.randn(k) * 0.2 + 1).half(), (torch.randn(k) * 0.2).half() if kind == "layernorm" else None)
    w64 = w.double()
    ref = oracle(x, w64, norm=nm)
    unfused = lin.dense_forward(x.float(), None, None, None, lin.NORMS[kind], nm.weight.float(),
                                None if nm.bias is None else nm.bias.float(), nm.eps, 0, True,
                                product=lambda h: h.half().double() @ w64.T)
    folded = fold_twin(x, w, nm).double()
    assert_nmse(folded, ref, TOL_NAME[torch.float16])
    def nmse(a):
        return float(((a.double() - ref) ** 2).sum() / (ref ** 2).sum())
    assert nmse(folded) <= nmse(unfused)


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_gemv_norm_fold_unaligned_inputs_same_bits(kind):
    """v27 reads x and the norm weight 16 bytes at a time where they are 16-byte aligned and one
    element at a time where not: the same values in the same order, so the same bits (x and the
    norm weight two bytes off an aligned start, against aligned copies of the same values)."""
    k = 1600
    w, _ = make_weight(2400, k, "F16", "cuda")
    nm = _norm(kind, k, torch.float16, "cuda")
    xb = randn((3 * k + 1,), torch.float16, "cuda")
    x_off = xb[1:].view(3, k)
    assert x_off.data_ptr() % 16 != 0
    gb = torch.empty(k + 1, dtype=torch.float16, device="cuda")
    gb[1:] = nm.weight
    nm_off = ops.Norm(kind, gb[1:], nm.bias, nm.eps)
    assert nm_off.weight.data_ptr() % 16 != 0
    aligned = ops.linear(x_off.clone(), w, norm=nm)
    assert torch.equal(ops.linear(x_off, w, norm=nm), aligned)
    assert torch.equal(ops.linear(x_off.clone(), w, norm=nm_off), aligned)


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("n,k", [(2880, 4096), (1600, 6400), (2048, 8192), (1601, 6400)], ids=str)
def test_gemv_long_rows_same_bits_on_either_kernel(n, k):
    """ext.linear_ring_force(3) moves M = 1 rows of K >= 4,096 whose pairs fit one round of v3's
    warps from the ring kernel to v3 (gpt-oss's output projection, GPT-2 1.5B's and Llama-1b's
    down products): the same bits (same chunks in the same order), here with the residual
    epilogue, and within the oracle's bound. Mode 8 (0 with v20's bulk copies) keeps them on the
    ring kernel, with the same bits. Odd N: the last pair's lone row is copied twice (both bulk
    copies of a batch read it) and stored once. With a bias (GPT-2 1.5B's down product): v3 reads
    it with its first weights (v29), the ring kernel after the pair's dot products, in the writing
    lane (v29b)."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    w, w64 = make_weight(n, k, "F16", "cuda")
    x, r = randn((1, k), torch.float16, "cuda"), randn((1, n), torch.float16, "cuda")
    b = randn((n,), torch.float16, "cuda", scale=0.1)
    outs, took = [], []
    try:
        for mode in (0, 3, 8):
            assert ext.linear_ring_force(mode) == mode
            outs.append(ops.linear(x, w, b, residual=r))
            took.append(gemv_kernel_taken(lambda: ops.linear(x, w, b, residual=r)))
    finally:
        ext.linear_ring_force(0)
    # two kernels compared, not one with itself (the bits alone cannot show that the hook moved
    # the product; on a card with fewer SMs these pairs may exceed one round and stay on the ring)
    assert took == ["ring", "v3", "ring"]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert_nmse(outs[1], oracle(x, w64, b, residual=r), TOL_NAME[torch.float16])


def gemv_kernel_taken(fn) -> str:
    """Which dense GEMV kernel fn launched, from the profiler's kernel names: "ring"
    (gemv_pipe_kernel), "v3 x12" (gemv_kernel with 12 chunks per lane) or "v3" (gemv_kernel)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [ev.name for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    if any("gemv_pipe_kernel" in nm for nm in names):
        return "ring"
    gemv = [nm for nm in names if "gemv_kernel<" in nm]
    assert len(gemv) == 1, names
    # gemv_kernel<W, A, MT, CHUNKS, FOLD>: CHUNKS = 12 ends the name, or comes before FOLD (v27b's
    # added argument; session 45's light run failed 10 tests on the old ", 12>" match)
    return "v3 x12" if re.search(r", 12(, [^,<>]+)?>", gemv[0]) else "v3"


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("n,k,norm,float_out", [(5120, 2880, "rmsnorm", False), (768, 3072, None, False),
                                                (40000, 2880, "rmsnorm", True), (5120, 2880, "layernorm", False),
                                                (40000, 2880, "layernorm", True)], ids=str)
@pytest.mark.parametrize("fold", [1, 0], ids=["fold", "loop"])
def test_gemv_one_batch_rows_same_bits_on_every_kernel(n, k, norm, float_out, fold):
    """M = 1 rows of 257-384 16-byte chunks (gpt-oss's QKV width 2,880, GPT-2 124M's 3,072), which
    v3 takes in two batches per pair: ext.linear_ring_force 1 (v3), 0 (the ring kernel where the
    pairs exceed one round: 5120 and 40000 rows), 4 (v3 with 12 chunks per lane, one batch) and 5
    (the same past 8 rounds of pairs: the 40,000-row head-like case, with its RMSNorm and fp32
    logits) give the same bits, each lane's chunks being summed in the same order, and match the
    oracle; so does mode 8 (0 with the ring kernel's copies as bulk copies, v20). With the norm
    folded into the epilogue (v27, the default) and with the normalize loop (linear_fold_force 0).
    With a bias, and LayerNorm too: its row constants C / D (v27b: read before the dot products)
    on every kernel, the ring kernel's warps taking several pairs each at 5,120 and 40,000 rows."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    w, w64 = make_weight(n, k, "F16", "cuda")
    x = randn((1, k), torch.float16, "cuda")
    b = randn((n,), torch.float16, "cuda", scale=0.1)
    nm = _norm(norm, k, torch.float16, "cuda")
    many = n > 2 * 2112  # more than one round of v3's pairs on 132 SMs (the H200's; a smaller card has fewer)
    want = {1: "v3", 0: "ring" if many else "v3", 4: "v3 x12", 5: "v3 x12" if n == 40000 else ("ring" if many else "v3"),
            8: "ring" if many else "v3"}
    outs, took = {}, {}
    try:
        assert ext.linear_fold_force(fold) == fold
        for mode in (1, 0, 4, 5, 8):
            assert ext.linear_ring_force(mode) == mode
            outs[mode] = ops.linear(x, w, b, norm=nm, float_out=float_out)
            took[mode] = gemv_kernel_taken(lambda: ops.linear(x, w, b, norm=nm, float_out=float_out))
    finally:
        ext.linear_ring_force(0)
        ext.linear_fold_force(1)
    # the hook really moved the product (the bits alone cannot show it); which products pass one
    # or 8 rounds depends on the SM count, so the whole table is checked on the H200's 132
    assert took[1] == "v3" and took[4] == "v3 x12", took
    if torch.cuda.get_device_properties(0).multi_processor_count == 132:
        assert took == want
    for mode in (0, 4, 5, 8):
        assert torch.equal(outs[mode], outs[1]), f"mode {mode} ({took[mode]}) differs from v3"
    assert_nmse(outs[4], oracle(x, w64, b, norm=nm), TOL_NAME[torch.float16])


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("m,k,rows,dtype", [
    (1, 1600, "random", torch.float16),    # GPT-2 1.5B's width: v3, one tile
    (1, 768, "offset", torch.float16),     # mean 300, spread ~1: an unshifted one-pass variance cancels here
    (1, 1600, "outlier", torch.float16),   # the first value (the shift) 60x the spread, far from the mean
    (4, 1600, "offset", torch.float16),    # M = 4
    (16, 1600, "offset", torch.float16),   # M = 16: the ring kernel's one tile (v30)
    (16, 3072, "offset", torch.float16),   # M = 16 on v3: 512-wide tiles, so the statistics come from global memory
    (1, 4096, "outlier", torch.float16),   # long rows: the ring kernel
    (1, 1600, "random", torch.bfloat16),
    (1, 1600, "outlier", torch.float32),   # fp32 activations: the op's reference (no GEMV for them), held to nmse_fp32
], ids=str)
def test_gemv_layernorm_stats_one_pass(m, k, rows, dtype):
    """v23 (ext.linear_stats_force 1, the default) takes the fused LayerNorm's statistics in one
    pass shifted by the row's first value; 0 in two passes (v2.1). Both within the oracle's bound,
    for random rows, rows whose mean dwarfs their spread (where E[x^2] - mean^2 unshifted would
    lose the variance) and rows whose first value is an outlier (the shift far from the mean).
    Both are the normalize loop's statistics, so they run with the fold off (linear_fold_force 0;
    every K here is a multiple of 8, where v27 folds by default); the fold, whose statistics are
    shifted by the same first value, is held to the same bound on the same rows. fp32 activations
    never reach the GEMV (the op computes them with its reference), so the hooks leave them
    unchanged."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    w, w64 = make_weight(384, k, "F16", "cuda")
    x = randn((m, k), dtype, "cuda", offset=300.0 if rows == "offset" else 0.0)
    if rows == "outlier":
        x[:, 0] = 60.0
    nm = _norm("layernorm", k, dtype, "cuda")
    outs = {}
    try:
        assert ext.linear_fold_force(0) == 0
        for on in (1, 0):
            assert ext.linear_stats_force(on) == on
            outs[on] = ops.linear(x, w, norm=nm)
    finally:
        ext.linear_stats_force(1)
        ext.linear_fold_force(1)
    outs["fold"] = ops.linear(x, w, norm=nm)
    ref = oracle(x, w64, norm=nm)
    for key in (1, 0, "fold"):
        assert_nmse(outs[key], ref, TOL_NAME[dtype])
    if dtype == torch.float32:
        assert torch.equal(outs[1], outs[0]) and torch.equal(outs["fold"], outs[0])


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_linear_errors(device):
    w, _ = make_weight(8, 64, "F16", device)
    x = randn((2, 64), torch.float32 if device == "cpu" else torch.float16, device)
    with pytest.raises(ops.OpError, match=r"expected \[\.\.\., 64\]"):
        ops.linear(x[:, :32], w)
    with pytest.raises(ops.OpError, match="bias"):
        ops.linear(x, w, randn((7,), x.dtype, device))
    with pytest.raises(ops.OpError, match="residual"):
        ops.linear(x, w, residual=randn((2, 9), x.dtype, device))
    with pytest.raises(ops.OpError, match="act"):
        ops.linear(x, w, act="relu")
    with pytest.raises(ops.OpError, match="SwiGLU"):
        ops.linear(x, make_weight(7, 64, "F16", device)[0], act="swiglu")
    with pytest.raises(ops.OpError, match="norm"):
        ops.linear(x, w, norm=ops.Norm("batchnorm", x[0]))


@pytest.mark.story("GX-003")
def test_rmsnorm_reference_matches_transformers():
    """The RMSNorm math the fused kernel follows, against transformers' LlamaRMSNorm (fp32)."""
    transformers = pytest.importorskip("transformers")
    norm = transformers.models.llama.modeling_llama.LlamaRMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = torch.randn(5, 96)
    assert_nmse(lin.rmsnorm_reference(x, norm.weight.detach(), 1e-5), norm(x).detach(), "nmse_fp32")


GEMV_SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1600, 1600), (4800, 1600), (6400, 1600),
               (1600, 6400), (4096, 4096), (2880, 2880)]


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.benchmark
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("n,k", GEMV_SHAPES, ids=lambda v: str(v))
def test_gemv_bandwidth(bench, n, k):
    """One decode GEMV (M = 1, fp16 weight), as the decode step runs it: calls captured in a CUDA
    graph, each on a different weight so that 512 MiB are read per replay and nothing is served
    from L2. Bandwidth counts the weight bytes; reference: cuBLAS (F.linear) on the same calls."""
    nbytes = n * k * 2
    reps = max(4, (512 << 20) // nbytes)
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(reps)]
    qs = [QWeight(w.view(torch.uint8), Q.F16, (n, k)) for w in ws]
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    assert_nmse(ops.linear(x, qs[0]), x.double() @ ws[0].double().T, "nmse_fp16")

    def ours():
        for q in qs:
            ops.linear(x, q)

    def cublas():
        for w in ws:
            F.linear(x, w)
    t_ours = bench.cuda_time(graphed(ours), warmup=3, reps=20, flush_l2=False) / reps
    t_cublas = bench.cuda_time(graphed(cublas), warmup=3, reps=20, flush_l2=False) / reps
    bench.record(f"linear_gemv.fp16.{n}x{k}", nbytes / t_ours / 1e9, "GB/s", kind="bandwidth",
                 references={"cublas": nbytes / t_cublas / 1e9},
                 params={"n": n, "k": k, "m": 1, "weights_per_replay": reps, "us_per_call": t_ours * 1e6})
