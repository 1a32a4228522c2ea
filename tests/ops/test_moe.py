"""gpt-oss's mixture of experts as ops (GX-002): moe_route and moe_experts against the CPU
model's GptOss.moe (the oracle), MXFP4 expert stacks as the model holds them."""
from types import SimpleNamespace

import pytest
import torch

from gpt_engine import ops, quants
from gpt_engine.models import gpt_oss
from gpt_engine.ops import moe_module as mod

from ._util import DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, device_cases, mxfp4_rows, randn

STORY = pytest.mark.story("GX-002")
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")]

# (E, k, C, F): few/many experts, top-1..4, C != F, sizes near the kernel's per-lane block
# counts (C/32 = 2, 3, 33, 90 blocks: one lane, one warp pass, a second pass, gpt-oss's 2880)
SHAPES = [(4, 2, 64, 96), (8, 1, 96, 64), (32, 4, 128, 128), (16, 3, 1056, 64), (32, 4, 2880, 2880)]


def _layer(e, k, c, f, dtype, device, seed=0):
    """A Layer-like object holding what GptOss.moe reads (router fp32, ExpertStacks of MXFP4
    bytes, biases in the activation dtype)."""
    g = torch.Generator().manual_seed(seed)

    def stack(rows, cols):
        w = SimpleNamespace(raw=mxfp4_rows(e * rows, cols, device), qtype=quants.Q.MXFP4, shape=(e, rows, cols))
        return gpt_oss.ExpertStack(w, (torch.randn(e, rows, generator=g) * 0.5).to(device, dtype))

    return SimpleNamespace(router=(torch.randn(e, c, generator=g) / c ** 0.5).to(device),
                           router_bias=torch.randn(e, generator=g).to(device),
                           gate=stack(f, c), up=stack(f, c), down=stack(c, f))


def _model_moe(h, L, k):
    """GptOss.moe itself (a method that reads only cfg.n_expert_used from its model)."""
    return gpt_oss.GptOss.moe(SimpleNamespace(cfg=SimpleNamespace(n_expert_used=k)), h, L)


def _experts(h, ids, w, L, residual=None):
    return ops.moe_experts(h, ids, w, L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias,
                           L.down.weight.raw, L.down.bias, residual)


@STORY
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_references_equal_the_model_moe(shape, m):
    """moe_route + moe_experts (their CPU references) are GptOss.moe split in two: equal bit for bit."""
    e, k, c, f = shape
    L = _layer(e, k, c, f, torch.float32, "cpu")
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
    L = _layer(e, k, c, f, dtype, device)
    h = randn((m, c), dtype, device)
    ids, w = mod.route_reference(h.cpu(), L.router.cpu(), L.router_bias.cpu(), k)
    ids, w = ids.to(device), w.to(device)
    res = randn((m, c), dtype, device)
    d = lambda t: t.cpu().double()  # noqa: E731
    ref = mod.experts_reference(d(h), ids.cpu(), w.cpu(), L.gate.weight.raw.cpu(), d(L.gate.bias),
                                L.up.weight.raw.cpu(), d(L.up.bias), L.down.weight.raw.cpu(), d(L.down.bias))
    out = _experts(h, ids, w, L)
    assert out.shape == (m, c) and out.dtype == dtype
    assert_nmse(out, ref, TOL_NAME[dtype] if dtype != torch.float32 else "nmse_fp16")
    out_r = _experts(h, ids, w, L, res)
    assert_nmse(out_r, ref + d(res), TOL_NAME[dtype] if dtype != torch.float32 else "nmse_fp16")


@STORY
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_route_vs_reference(device, shape, m):
    """The routing kernel picks the reference's experts with its weights (rows compared as
    sets of (expert, weight); a row whose k-th and (k+1)-th logits are closer than fp32
    summation order can separate is skipped)."""
    e, k, c, f = shape
    L = _layer(e, k, c, f, torch.float16, device)
    h = randn((m, c), torch.float16, device)
    ids, w = ops.moe_route(h, L.router, L.router_bias, k)
    rid, rw = mod.route_reference(h.cpu(), L.router.cpu(), L.router_bias.cpu(), k)
    logits = torch.nn.functional.linear(h.cpu().double(), L.router.cpu().double(), L.router_bias.cpu().double())
    top = logits.topk(min(k + 1, e), dim=-1).values
    for i in range(m):
        if k < e and float(top[i, k - 1] - top[i, k]) < 1e-4:
            continue
        got = sorted(zip(ids[i].tolist(), w[i].tolist()))
        want = sorted(zip(rid[i].tolist(), rw[i].tolist()))
        assert [g[0] for g in got] == [x[0] for x in want], f"row {i}: experts {got} != {want}"
        assert torch.allclose(torch.tensor([g[1] for g in got]), torch.tensor([x[1] for x in want]), atol=1e-5)


@STORY
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_moe_is_graph_capturable_and_deterministic(device):
    """Route + experts captured in a CUDA graph (no host sync), replayed on new inputs: the
    same result as eager, bit for bit (the k experts are summed in a fixed order)."""
    e, k, c, f = 32, 4, 2880, 2880
    L = _layer(e, k, c, f, torch.float16, device)
    h = randn((1, c), torch.float16, device)

    def step():
        ids, w = ops.moe_route(h, L.router, L.router_bias, k)
        return _experts(h, ids, w, L, h)

    eager = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    g.replay()
    assert torch.equal(out, eager)
    h.copy_(randn((1, c), torch.float16, device))
    g.replay()
    assert torch.equal(out, step())


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_moe_bad_inputs(device):
    L = _layer(4, 2, 64, 64, torch.float32, device)
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
        ops.moe_experts(h[:, :48], ids, w, L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias,
                        L.down.weight.raw, L.down.bias)
