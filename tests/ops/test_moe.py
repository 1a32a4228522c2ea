"""gpt-oss's mixture of experts as ops (GX-002), MXFP4 expert stacks as the model holds them:
moe_route and moe_experts against float64 references written in tests/ops/_util.py (experts
decoded by gguf-py, transformers' clamped SwiGLU, a softmax over the k chosen router logits),
independent of gpt_engine's own references; and the CPU ops equal the model's GptOss.moe."""
from types import SimpleNamespace

import pytest
import torch

from gpt_engine import ops
from gpt_engine.models import gpt_oss

from tests.tolerances import tol

from ._cases import device_cases
from ._util import (DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, capture_graph, moe_layer, moe_model, moe_reference64,
                    moe_route_reference, moe_weights, randn, router_logits64)

STORY = pytest.mark.story("GX-002")
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")]

# (E, k, C, F): few/many experts, top-1..4, C != F, sizes near the kernel's per-lane block
# counts (C/32 = 2, 3, 33, 90 blocks: one lane, one warp pass, a second pass, gpt-oss's 2880)
SHAPES = [(4, 2, 64, 96), (8, 1, 96, 64), (32, 4, 128, 128), (16, 3, 1056, 64), (32, 4, 2880, 2880)]


def _model_moe(h, L, k):
    """GptOss.moe itself (a method that reads only cfg.n_expert_used from its model)."""
    return gpt_oss.GptOss.moe(moe_model(k), h, L)


def _experts(h, ids, w, L, residual=None):
    return ops.moe_experts(h, ids, w, *moe_weights(L), residual)


@STORY
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_references_equal_the_model_moe(shape, m):
    """moe_route + moe_experts (their CPU references) are GptOss.moe split in two: equal bit for bit."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, torch.float32, "cpu")
    h = torch.randn(m, c)
    ids, w = ops.moe_route(h, L.router, L.router_bias, k)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == (m, k)
    assert torch.equal(_experts(h, ids, w, L), _model_moe(h, L, k))
    r = torch.randn(m, c)
    assert torch.equal(_experts(h, ids, w, L, r), r + _model_moe(h, L, k))


@STORY
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("m", [1, 3, 16])
# the CPU op is its own reference: checked on the smaller shapes only
@pytest.mark.parametrize("device,shape", device_cases(SHAPES, cpu=lambda s: s[2] * s[3] <= 128 * 128))
def test_experts_vs_float64(device, dtype, shape, m):
    """The expert kernels on the routing the reference picks, against the reference in float64
    on the same (rounded) inputs; with and without the fused residual."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, dtype, device)
    h = randn((m, c), dtype, device)
    ids, w = moe_route_reference(h, L, k)
    ids, w = ids.to(device), w.to(device)
    res = randn((m, c), dtype, device)
    ref = moe_reference64(h, ids, w, L)
    out = _experts(h, ids, w, L)
    assert out.shape == (m, c) and out.dtype == dtype
    # fp32 on the GPU: the v7 kernels' 16-bit input codes; on the CPU, plain fp32 products
    bound = TOL_NAME[dtype] if dtype != torch.float32 or device == "cpu" else "nmse_moe_fp32_activations"
    assert_nmse(out, ref, bound)
    out_r = _experts(h, ids, w, L, res)
    assert_nmse(out_r, ref + res.cpu().double(), bound)


def _assert_routes_match(h, ids, w, L, k):
    """ids/w [M, k] from a routing kernel against route_reference on the same h: each row as a
    set of (expert, weight); a row whose k-th and (k+1)-th logits (float64) are closer than fp32
    summation order can separate is skipped."""
    e = L.router.shape[0]
    rid, rw = moe_route_reference(h, L, k)
    top = router_logits64(h, L).topk(min(k + 1, e), dim=-1).values
    decided = 0
    for i in range(h.shape[0]):
        if k < e and float(top[i, k - 1] - top[i, k]) < tol("moe_route_tie_gap"):
            continue
        decided += 1
        got = sorted(zip(ids[i].tolist(), w[i].tolist()))
        want = sorted(zip(rid[i].tolist(), rw[i].tolist()))
        assert [g[0] for g in got] == [x[0] for x in want], f"row {i}: experts {got} != {want}"
        diff = max(abs(g[1] - x[1]) for g, x in zip(got, want))
        assert diff <= tol("moe_route_weight_abs"), f"row {i}: weights {got} != {want}"
    assert decided >= h.shape[0] // 2, f"only {decided} of {h.shape[0]} rows decisive: the test input is degenerate"


@STORY
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_route_vs_reference(device, shape, m):
    """The routing kernel picks the reference's experts with its weights (rows compared as
    sets of (expert, weight); a row whose k-th and (k+1)-th logits are closer than fp32
    summation order can separate is skipped)."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, torch.float16, device)
    h = randn((m, c), torch.float16, device)
    ids, w = ops.moe_route(h, L.router, L.router_bias, k)
    _assert_routes_match(h, ids, w, L, k)


@STORY
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m", [1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norm_route_vs_reference(device, dtype, shape, m):
    """moe_norm_route: h is the post-attention RMSNorm of x (fp32, rounded once to x's dtype;
    against float64 within the dtype's tolerance), and the routing is moe_route's on that h
    (rows whose k-th and (k+1)-th logits are closer than fp32 summation order can separate are
    skipped, as in test_route_vs_reference)."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, dtype, device)
    x = randn((m, c), dtype, device) * 3
    norm = torch.rand(c, generator=torch.Generator().manual_seed(1)).to(device) + 0.5
    eps = 1e-5
    h, ids, w = ops.moe_norm_route(x, norm, eps, L.router, L.router_bias, k)
    x64 = x.double()
    want_h = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * norm.double()
    assert h.dtype == dtype and h.shape == x.shape
    assert_nmse(h, want_h, TOL_NAME[dtype] if dtype != torch.float32 else "nmse_fp32")
    _assert_routes_match(h, ids, w, L, k)


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_norm_route_bad_inputs(device):
    L = moe_layer(4, 2, 64, 64, torch.float16, device)
    x = randn((2, 64), torch.float16, device)
    norm = torch.ones(64, device=device)
    with pytest.raises(ops.OpError, match="norm_weight must be float32"):
        ops.moe_norm_route(x, norm.half(), 1e-5, L.router, L.router_bias, 2)
    with pytest.raises(ops.OpError, match="norm_weight has shape"):
        ops.moe_norm_route(x, norm[:32], 1e-5, L.router, L.router_bias, 2)
    with pytest.raises(ops.OpError, match="eps must be >= 0"):
        ops.moe_norm_route(x, norm, -1.0, L.router, L.router_bias, 2)
    with pytest.raises(ops.OpError, match="k=5"):
        ops.moe_norm_route(x, norm, 1e-5, L.router, L.router_bias, 5)


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_route_kernel_takes_ties_in_index_order(device):
    """Equal logits (zero router, biases 0, 1, 2 repeating over 40 experts: more than one
    32-expert word of the kernel's taken mask): the warp arg-max picks them in index order, as a
    stable descending sort does (the serial scan it replaced did the same), with equal weights."""
    e, k, c = 40, 6, 64
    bias = torch.tensor([float(i % 3) for i in range(e)], device=device)
    router = torch.zeros(e, c, device=device)
    ids, w = ops.moe_route(randn((3, c), torch.float16, device), router, bias, k)
    want = sorted(range(e), key=lambda i: (-float(bias[i]), i))[:k]
    assert ids.tolist() == [want] * 3
    assert torch.equal(w, torch.full_like(w, 1 / k))


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("e,k,c", [(32, 4, 2880), (4, 2, 64), (8, 1, 96), (3, 2, 128), (40, 6, 64), (16, 3, 1056),
                                   (16, 4, 4096)], ids=str)
def test_route_v4_equals_v3(device, dtype, e, k, c):
    """The routing kernel v4 (router rows and norm weights loaded before the PDL wait, logits pushed
    into rank 0's shared memory) gives v3's ids, weights and normalised h bit for bit: with and
    without the norm, tokens 1 and 7, one to eight blocks per cluster holding one to eight rows
    each, rows split over warps or not (40 experts: 5 a block), and C at v4's 4,096 limit. Each
    run starts from NaN-filled outputs, so a value v4 does not write cannot pass."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    L = moe_layer(e, k, c, 64, dtype, device)
    norm = torch.rand(c, generator=torch.Generator().manual_seed(3)).to(device) + 0.5
    assert ext.moe_route_version(e, c) == 4 and L.router.data_ptr() % 16 == 0, "the case would not run v4"

    def run(version, x, with_norm):
        assert ext.moe_route_ab_force(version) == version
        ids = torch.full((x.shape[0], k), -1, dtype=torch.int32, device=device)
        w = torch.full((x.shape[0], k), float("nan"), device=device)
        h = torch.full_like(x, float("nan"))
        if with_norm:
            ext.moe_route(x, L.router, L.router_bias, ids, w, norm, 1e-5, h)
        else:
            ext.moe_route(x, L.router, L.router_bias, ids, w)
        return ids, w, h

    try:
        for m in (1, 7):
            x = randn((m, c), dtype, device) * 3
            for with_norm in (False, True):
                got, want = run(4, x, with_norm), run(3, x, with_norm)
                torch.cuda.synchronize()
                what = f"m={m} norm={with_norm}"
                assert (got[0] >= 0).all() and not got[1].isnan().any(), f"v4 left outputs unwritten: {what}"
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"v4 routes differ: {what}"
                if with_norm:
                    assert torch.equal(got[2], want[2]), f"v4's normalised h differs: {what}"
    finally:
        ext.moe_route_ab_force(0)


def _assert_graph_replays_eager(step, h):
    """step captured in a CUDA graph: its replay gives eager's bits, and again after h (the
    input step reads) is refilled in place with new values."""
    eager = step()
    g, out = capture_graph(step)
    g.replay()
    assert torch.equal(out, eager)
    h.copy_(randn(h.shape, h.dtype, h.device))
    g.replay()
    assert torch.equal(out, step())


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_moe_is_graph_capturable_and_deterministic(device):
    """Route + experts captured in a CUDA graph (no host sync), replayed on new inputs: the
    same result as eager, bit for bit (the k experts are summed in a fixed order)."""
    e, k, c, f = 32, 4, 2880, 2880
    L = moe_layer(e, k, c, f, torch.float16, device)
    h = randn((1, c), torch.float16, device)

    norm = torch.rand(c, device=device) + 0.5

    def step():
        ids, w = ops.moe_route(h, L.router, L.router_bias, k)
        hn, ids_n, w_n = ops.moe_norm_route(h, norm, 1e-5, L.router, L.router_bias, k)
        return _experts(h, ids, w, L, h) + _experts(hn, ids_n, w_n, L, h)

    _assert_graph_replays_eager(step, h)


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_moe_bad_inputs(device):
    L = moe_layer(4, 2, 64, 64, torch.float32, device)
    h = torch.randn(2, 64, device=device)
    ids = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    w = torch.rand(2, 2, device=device)
    with pytest.raises(ops.OpError, match="k=5"):
        ops.moe_route(h, L.router, L.router_bias, 5)
    with pytest.raises(ops.OpError, match="int32"):
        _experts(h, ids.long(), w, L)
    with pytest.raises(ops.OpError, match="down has shape"):
        ops.moe_experts(h, ids, w, L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias,
                        L.down.weight.raw[:-1], L.down.bias)
    with pytest.raises(ops.OpError, match="multiples of 32"):
        ops.moe_experts(h[:, :48], ids, w, *moe_weights(L))


# --------------------------------------------------------------------------- grouped (prefill) path

@STORY
@pytest.mark.parametrize("m,max_rows", [(1, 2048), (64, 2048), (100, 2048), (100, 7)])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_grouped_experts_equal_the_reference_loop(shape, m, max_rows):
    """gpt_oss.grouped_experts (every expert for every token, weighted by a dense routing matrix
    that is zero off the chosen experts; max_rows tokens per pass) against the reference loop
    (each chosen expert on its tokens) on the same routing, CPU float32; and GptOss.moe taking
    the grouped path (on_gpu, m >= MOE_GROUPED_MIN_TOKENS) against the CPU model's MoE."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, torch.float32, "cpu")
    h = torch.randn(m, c)
    ids, w = moe_route_reference(h, L, k)
    want = gpt_oss.reference_experts(h, ids.long(), w, L)
    got = gpt_oss.grouped_experts(h, ids, w, L, max_rows=max_rows)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_nmse(got, want.double(), "nmse_fp32")
    gpu_like = moe_model(k, on_gpu=True, moe_kernels=False)
    r = torch.randn(m, c)
    assert_nmse(gpt_oss.GptOss.moe(gpu_like, h, L, residual=r), (r + _model_moe(h, L, k)).double(), "nmse_fp32")


@STORY
def test_grouped_experts_ignore_what_unchosen_experts_compute():
    """An expert nobody chose may produce inf (fp16 overflow): its weight 0 must not turn the sum
    into NaN (0 * inf); the output equals the reference, which never computes it."""
    e, k, c, f = 8, 2, 64, 96
    L = moe_layer(e, k, c, f, torch.float32, "cpu")
    L.router_bias[3] = -1e9                       # expert 3 is never chosen
    L.down.bias[3] = float("inf")                 # and would give inf for every token
    h = torch.randn(20, c)
    ids, w = moe_route_reference(h, L, k)
    assert not (ids == 3).any()
    got = gpt_oss.grouped_experts(h, ids, w, L)
    assert torch.isfinite(got).all()
    assert_nmse(got, gpt_oss.reference_experts(h, ids.long(), w, L).double(), "nmse_fp32")


@STORY
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,shape", [("cpu", (8, 4, 512, 512)),
                                          pytest.param("cuda", (32, 4, 2880, 2880), marks=CUDA_ONLY)], ids=str)
def test_grouped_experts_vs_float64(device, shape, dtype):
    """The grouped path in 16-bit activations (on CUDA the experts dequantized by the kernel into
    the activation dtype, torch GEMMs) against the float64 reference on the same rounded inputs
    and routing (CPU, measured: 2e-7 fp16, 1.3e-5 bf16, bit-equal to the reference loop)."""
    e, k, c, f = shape
    L = moe_layer(e, k, c, f, dtype, device)
    h = randn((192, c), dtype, device)
    ids, w = moe_route_reference(h, L, k)
    ref = moe_reference64(h, ids, w, L)
    out = gpt_oss.grouped_experts(h, ids.to(device), w.to(device), L)
    assert out.dtype == dtype and out.device.type == device
    assert_nmse(out, ref, TOL_NAME[dtype])


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_grouped_moe_is_graph_capturable(device):
    """Route + grouped experts (the prefill MoE) captured in a CUDA graph: nothing reads the
    device; replays on new inputs equal eager."""
    e, k, c, f = 32, 4, 2880, 2880
    L = moe_layer(e, k, c, f, torch.float16, device)
    h = randn((128, c), torch.float16, device)
    model = moe_model(k, on_gpu=True, moe_kernels=True)

    def step():
        return gpt_oss.GptOss.moe(model, h, L, residual=h)

    _assert_graph_replays_eager(step, h)


def _shifted(t, off):
    """t's bytes in a tensor that starts `off` bytes into its allocation (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + off, dtype=t.dtype, device=t.device)
    v = buf[off:].view(t.shape)
    v.copy_(t)
    return v


def _decode_cases(e, c, dtype, device, gen):
    """The decode kernels' cases: tokens 1, 2, 5 x k 1, 2, 4, random distinct experts (token 0's
    first is the last expert, whose tile ends the stack), routing weights, inputs and a residual."""
    for m in (1, 2, 5):
        for k in (1, 2, 4):
            ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(m)]).to(device, torch.int32)
            ids[0, 0] = e - 1
            w = torch.softmax(torch.randn(m, k, generator=gen), -1).to(device)
            yield m, k, ids, w, randn((m, c), dtype, device), randn((m, c), dtype, device)


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4, 64, 64), (32, 64, 64), (4, 96, 160), (32, 160, 96), (4, 2880, 2880),
                                   (32, 2880, 2880)], ids=str)
def test_decode_v6_equals_v3(device, dtype, shape):
    """The decode v6 expert kernels (tiles bulk-copied into shared memory) and v6.1 (the down tiles'
    copies started before the PDL wait) give v3's outputs bit for bit: tokens 1, 2, 5; k 1, 2, 4
    with random distinct experts (the last expert's tile ends the stack); rows of 51 and 85 bytes
    (C or F = 96, 160: tiles not 16-byte aligned); with and without the residual; and on stacks
    starting 5 bytes into their allocation, whose first and last bytes the bulk copy may not reach
    (plain loads take them)."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    e, c, f = shape
    L = moe_layer(e, 4, c, f, dtype, device)
    shifted = SimpleNamespace(gate=SimpleNamespace(weight=SimpleNamespace(raw=_shifted(L.gate.weight.raw, 5)),
                                                   bias=L.gate.bias),
                              up=SimpleNamespace(weight=SimpleNamespace(raw=_shifted(L.up.weight.raw, 5)), bias=L.up.bias),
                              down=SimpleNamespace(weight=SimpleNamespace(raw=_shifted(L.down.weight.raw, 5)),
                                                   bias=L.down.bias))
    assert shifted.gate.weight.raw.data_ptr() % 16 != 0
    gen = torch.Generator().manual_seed(1)
    try:
        for m, k, ids, w, h, r in _decode_cases(e, c, dtype, device, gen):
            for layer in (L, shifted):
                for res in (None, r):
                    assert ext.moe_ab_force(3) == 3
                    v3 = _experts(h, ids, w, layer, res)
                    assert ext.moe_ab_force(6) == 6
                    v6 = _experts(h, ids, w, layer, res)
                    assert ext.moe_ab_force(61) == 61
                    v61 = _experts(h, ids, w, layer, res)
                    torch.cuda.synchronize()
                    assert torch.equal(v6, v3), (m, k, res is not None, layer is shifted)
                    assert torch.equal(v61, v3), (m, k, res is not None, layer is shifted, "v6.1")
    finally:
        ext.moe_ab_force(0)


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(4, 64, 64), (32, 96, 160), (32, 160, 96), (32, 2880, 2880)], ids=str)
def test_decode_v7_matches_v3(device, dtype, shape):
    """The decode v7 expert kernels (v6.1's tiles, the inputs as 16-bit codes per 32
    values, integer products) against v3: act (fp32) within nmse_moe_v7_vs_v3, and the output
    within it too for fp32 activations (for 16-bit ones, the output's rounding: the dtype's
    tolerance); tokens 1, 2, 5, k 1, 2, 4, with and without the residual, on stacks starting 5
    bytes into their allocation; and an inf in the input makes every act and output value NaN
    (its group's scale is NaN, and the SwiGLU's clamps keep a NaN as torch.clamp does). v7.1
    (each tile on two barriers, its rows summed in two passes) and v7.2 (v7.1 with the input codes
    in the weights' nibble order; the default since session 31) give v7's act and output bit for
    bit in every case."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    e, c, f = shape
    L = moe_layer(e, 4, c, f, dtype, device)
    stacks = (_shifted(L.gate.weight.raw, 5), L.gate.bias, _shifted(L.up.weight.raw, 5), L.up.bias,
              _shifted(L.down.weight.raw, 5), L.down.bias)
    gen = torch.Generator().manual_seed(2)

    def run(version, h, ids, w, res, fill=float("nan")):
        """act and out prefilled with `fill`: NaN where finite results are expected (an unwritten
        value stays NaN, never a stale reference), 0 where NaN is (an unwritten value stays 0)."""
        assert ext.moe_ab_force(version) == version
        act = torch.full((h.shape[0], ids.shape[1], f), fill, device=device)
        out = torch.full_like(h, fill)
        ext.moe_experts(h, ids, w, *stacks, res, act, out)
        return act, out

    try:
        for m, k, ids, w, h, r in _decode_cases(e, c, dtype, device, gen):
            for res in (None, r):
                act3, out3 = run(3, h, ids, w, res)
                act7, out7 = run(7, h, ids, w, res)
                what = f"m={m} k={k} residual={res is not None}"
                for v in (71, 72):
                    act_v, out_v = run(v, h, ids, w, res)
                    assert torch.equal(act_v, act7) and torch.equal(out_v, out7), f"v{v / 10} vs v7, {what}"
                assert_nmse(act7, act3.double(), "nmse_moe_v7_vs_v3", what=f"act, {what}")
                assert_nmse(out7, out3.double(), "nmse_moe_v7_vs_v3" if dtype == torch.float32 else TOL_NAME[dtype],
                            what=f"out, {what}")
        h = randn((1, c), dtype, device)
        h[0, 7] = float("inf")
        ids = torch.tensor([[0]], dtype=torch.int32, device=device)
        w = torch.ones(1, 1, device=device)
        act7, out7 = run(7, h, ids, w, None, 0.0)  # every gate and up sum NaN; the clamps keep it (swiglu_oai.cuh)
        assert torch.isnan(act7).all() and torch.isnan(out7).all()
        for v in (71, 72):
            act_v, out_v = run(v, h, ids, w, None, 0.0)
            assert torch.isnan(act_v).all() and torch.isnan(out_v).all(), f"v{v / 10}"
    finally:
        ext.moe_ab_force(0)
