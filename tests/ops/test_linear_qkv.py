"""linear_qkv (the decode step's QKV product with RoPE and the KV append in its epilogue) against
an oracle composed here in float64: gguf-py's dequantized weight, the product, the head split,
RoPE from angles computed here (test_qkv_rope.oracle_rotate), the cache rows written."""
import gguf
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.models.llama import rope_tables
from gpt_engine.ops.qkv_rope import ROPE_MODES

from ._util import DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, randn
from .test_linear import make_weight
from .test_qkv_rope import THETA, oracle_rotate

CASES = [  # (B, C, Hq, Hkv, D, norm, bias, rope mode, rope dim)
    (1, 768, 12, 12, 64, "layernorm", True, "none", 0),     # GPT-2 small
    (3, 576, 9, 3, 64, "rmsnorm", False, "adjacent", 64),   # SmolLM2, three sequences
    (16, 256, 4, 2, 64, "rmsnorm", False, "adjacent", 64),  # batch 16
    (2, 256, 4, 1, 64, "rmsnorm", True, "neox", 64),        # rotate-half layout
    (4, 192, 2, 2, 128, "layernorm", True, "neox", 32),     # partial rotary dims, head dim 128
]


WTYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4"]
# (type, case) pairs whose rows are whole blocks of the type (the K types need C % 256 == 0): an
# impossible pair is not generated at all rather than skipped (a skip is not a pass)
TYPE_CASES = [(t, c) for t in WTYPES for c in CASES
              if c[1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][0] == 0]


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("wtype,case", TYPE_CASES, ids=str)
def test_linear_qkv_vs_oracle(device, dtype, case, wtype):
    if device == "cpu":
        dtype = torch.float32  # the CPU path computes in the model's CPU dtype
    check_against_oracle(device, dtype, case, wtype)


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ring", [0, 1, 2, 4, 8])
def test_linear_qkv_gpt_oss_shape_each_ring_rule(dtype, ring):
    """gpt-oss's QKV at one token (C = 2,880, 64 / 8 heads of 64, RMSNorm, bias, neox RoPE; F16
    weights): rows that v3 takes in two batches, 2,560 pairs, where the launcher's ring rule picks
    the kernel (ext.linear_ring_force: 0 the ring kernel, the default; 1 and 2 v3; 4 v3 with 12
    chunks per lane, one batch per pair; 8 the ring kernel with v20's bulk copies, under the QKV
    epilogue's RoPE row pairing). Each matches the oracle."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    try:
        assert ext.linear_ring_force(ring) == ring
        check_against_oracle("cuda", dtype, (1, 2880, 64, 8, 64, "rmsnorm", True, "neox", 64), "F16")
    finally:
        ext.linear_ring_force(0)


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_linear_qkv_gpt2_xl_batch_16():
    """GPT-2 1.5B's QKV (C = 1,600, 25 heads of 64, LayerNorm, bias) for 16 sequences: the ring
    kernel under the launcher's rule (v30), v3 under ext.linear_ring_force's bit 32 (M = 16 on v3
    as before), each against the oracle, and the same bits from both (q and both caches; the
    same inputs, seeded alike)."""
    from gpt_engine.ops import _ext
    from .test_linear import gemv_kernel_taken
    ext = _ext.load()
    case = (16, 1600, 25, 25, 64, "layernorm", True, "none", 0)
    outs, took = {}, {}
    try:
        for ring in (0, 32):
            assert ext.linear_ring_force(ring) == ring
            torch.manual_seed(1234)
            took[ring] = gemv_kernel_taken(
                lambda ring=ring: outs.setdefault(ring, check_against_oracle("cuda", torch.float16, case, "F16")))
    finally:
        ext.linear_ring_force(0)
    assert took == {0: "ring", 32: "v3"}, took
    for a, b in zip(outs[0], outs[32]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("case,kernel", [((16, 256, 4, 2, 64, "rmsnorm", False, "adjacent", 64), "ring"),
                                         ((16, 576, 9, 3, 64, "rmsnorm", True, "neox", 64), "ring"),
                                         ((12, 1600, 25, 25, 64, "layernorm", True, "none", 0), "ring"),
                                         # 5-8 sequences: v3 at MT = 8, where v32 applies too
                                         ((6, 1600, 25, 25, 64, "layernorm", True, "none", 0), "v3"),
                                         ((7, 576, 9, 3, 64, "rmsnorm", True, "neox", 64), "v3"),
                                         ((8, 256, 4, 2, 64, "rmsnorm", False, "adjacent", 64), "v3")], ids=str)
def test_linear_qkv_scatter_epilogue_same_bits(case, kernel):
    """v32 (ext.linear_scatter_force 1) under the QKV epilogue (RoPE on the row pairs, the cache
    writes at each sequence's position, the lengths): 16 lanes finish their sequences at once
    instead of one lane per sequence in turn (8 at 5-8 sequences, on v3); the same inputs (seeded
    alike) give the same q, caches and lengths bit for bit, and the oracle holds."""
    from gpt_engine.ops import _ext
    from .test_linear import gemv_kernel_taken
    ext = _ext.load()
    outs = {}
    try:
        for on in (0, 1):
            assert ext.linear_scatter_force(on) == on
            torch.manual_seed(4321)
            took = gemv_kernel_taken(
                lambda on=on: outs.setdefault(on, check_against_oracle("cuda", torch.float16, case, "F16")))
            assert took == kernel, took  # (9-16 rows of these widths: the ring kernel's MT = 16, v30)
    finally:
        ext.linear_scatter_force(1)  # (the default since session 49)
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("wtype", ["Q8_0", "MXFP4", "Q4_K"])
def test_linear_qkv_packed_rows_in_slices(wtype):
    """16 sequences of a 6,400-wide model (6,144 for the K types): their activation codes do not fit
    the packed GEMV's shared memory at once, so linear_qkv runs them as two calls of 8
    (ops.linear.packed_gemv_rows), each slice with its own sequences' positions, cache rows and
    lengths. The oracle holds for every sequence, no cache row outside a position is written, and
    the second slice's sequences get the bits they get alone: q, both caches and the lengths (the
    dequantized route this replaced gave other bits, which the oracle's bound alone would pass)."""
    from gpt_engine.ops import linear_module as lin
    c = 6400 if gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wtype]][0] == 32 else 6144
    b, hq, hkv, d, s = 16, 4, 2, 64, 48
    check_against_oracle("cuda", torch.float16, (b, c, hq, hkv, d, "layernorm", True, "neox", d), wtype)
    w, _ = make_weight((hq + 2 * hkv) * d, c, wtype, "cuda")
    assert lin.packed_gemv_rows(w.raw, int(w.qtype), torch.float16, b, c) == 8
    x = randn((b, c), torch.float16, "cuda")
    nm = ops.Norm("layernorm", randn((c,), torch.float16, "cuda", 0.2, 1.0), randn((c,), torch.float16, "cuda", 0.2),
                  1e-5)
    bias = randn(((hq + 2 * hkv) * d,), torch.float16, "cuda", 0.1)
    pos = torch.randint(0, s, (b,)).cuda()
    cos, sin = rope_tables(torch.arange(s, device="cuda"), d, THETA)

    def run(rows):  # q, k / v caches (NaN where not written) and lengths of those sequences
        kc = torch.full((len(range(b)[rows]), hkv, s, d), float("nan"), dtype=torch.float16, device="cuda")
        vc, lens = kc.clone(), torch.zeros(kc.shape[0], dtype=torch.int32, device="cuda")
        q = ops.linear_qkv(x[rows], w, bias, nm, pos[rows], cos, sin, kc, vc, lens,
                           torch.zeros(1, dtype=torch.int32, device="cuda"), hq, hkv, ROPE_MODES["neox"], d)
        return q.view(torch.int16), kc.view(torch.int16), vc.view(torch.int16), lens  # (bits: NaN == NaN)

    whole = run(slice(0, b))
    for i, j in ((9, 12), (15, 16)):  # 3 rows and 1 (the 4- and 1-row kernels) against the slice of 8
        for name, u, v in zip(("q", "k cache", "v cache", "lens"), whole, run(slice(i, j))):
            assert torch.equal(u[i:j], v), f"{name}: sequences {i}-{j - 1} differ from their run alone"


def check_against_oracle(device, dtype, case, wtype):
    """linear_qkv on one case against the float64 oracle: q, the k and v rows written into the
    cache at each sequence's position (and no other row), the lengths, the status."""
    b, c, hq, hkv, d, norm, bias, mode, r = case
    s = 48
    n = (hq + 2 * hkv) * d
    w, w64 = make_weight(n, c, wtype, device)
    x = randn((b, c), dtype, device)
    nw = randn((c,), dtype, device, scale=0.2, offset=1.0)
    nb = randn((c,), dtype, device, scale=0.2) if norm == "layernorm" else None
    bias_t = randn((n,), dtype, device, scale=0.1) if bias else None
    nm = ops.Norm(norm, nw, nb, 1e-5)
    pos = torch.randint(0, s, (b,)).to(device)
    cos, sin = rope_tables(torch.arange(s, device=device), r, THETA) if r else (None, None)
    kc = torch.full((b, hkv, s, d), float("nan"), dtype=dtype, device=device)
    vc = kc.clone()
    lens = torch.zeros(b, dtype=torch.int32, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    q = ops.linear_qkv(x, w, bias_t, nm, pos, cos, sin, kc, vc, lens, status, hq, hkv, ROPE_MODES[mode], r)

    h = x.cpu().double()
    h = (F.layer_norm(h, (c,), nw.cpu().double(), nb.cpu().double(), 1e-5) if norm == "layernorm"
         else h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.cpu().double())
    qkv = h @ w64.T + (bias_t.cpu().double() if bias else 0)
    pc = pos.cpu()
    rq = oracle_rotate(qkv[:, : hq * d].reshape(b, hq, d), pc, mode, r)
    rk = oracle_rotate(qkv[:, hq * d: (hq + hkv) * d].reshape(b, hkv, d), pc, mode, r)
    rv = qkv[:, (hq + hkv) * d:].reshape(b, hkv, d)
    tol = TOL_NAME[dtype]
    assert q.shape == (b, hq, d)
    assert_nmse(q, rq, tol, "q")
    rows = torch.arange(b)
    assert_nmse(kc.cpu()[rows, :, pc], rk, tol, "k in the cache")
    assert_nmse(vc.cpu()[rows, :, pc], rv, tol, "v in the cache")
    assert lens.cpu().tolist() == (pc + 1).tolist() and int(status) == 0
    written = torch.zeros(b, s, dtype=torch.bool)
    written[rows, pc] = True
    assert torch.isnan(kc.cpu().transpose(1, 2)[~written]).all(), "rows outside pos were written"
    return q, kc, vc


@pytest.mark.output_fill(float("inf"))  # NaN rows must be written NaN, good rows finite
@pytest.mark.story("GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_linear_qkv_bad_position_sets_status(device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    w, _ = make_weight(4 * 64, 128, "F16", device)
    x = randn((2, 128), dtype, device)
    kc = torch.zeros((2, 1, 8, 64), dtype=dtype, device=device)
    vc = kc.clone()
    cos, sin = rope_tables(torch.arange(8, device=device), 64, THETA)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    lens = torch.full((2,), 7, dtype=torch.int32, device=device)
    q = ops.linear_qkv(x, w, None, None, torch.tensor([2, 8], device=device), cos, sin, kc, vc, lens, status, 2, 1,
                       ROPE_MODES["adjacent"], 64)
    assert int(status) == 2 and lens.tolist() == [3, 7]  # the bad sequence keeps its length
    assert torch.isnan(q[1]).all() and torch.isfinite(q[0]).all()
    assert not kc[1].any() and kc[0, :, 2].any()
