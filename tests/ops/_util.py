"""Helpers of the ops tests: devices, dtypes, NMSE against float64 references, the MoE test
layers and references (tests/ops/test_moe.py and test_moe_grouped.py build the same ones), and
CUDA graph capture."""
from types import SimpleNamespace

import gguf
import pytest
import torch

from gpt_engine import ops, quants
from gpt_engine.models import gpt_oss
from tests.tolerances import tol

HAS_CUDA = torch.cuda.is_available() and ops.cuda_kernels_available()

CUDA = pytest.param("cuda", id="cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")])
CPU = pytest.param("cpu", id="cpu")
DEVICES = [CPU, CUDA]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL_NAME = {torch.float32: "nmse_fp32", torch.float64: "nmse_fp32", torch.float16: "nmse_fp16",
            torch.bfloat16: "nmse_bf16"}


def nmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """sum((a - b)^2) / sum(b^2) in float64 on the CPU."""
    a = out.detach().to("cpu", torch.float64)
    b = ref.detach().to("cpu", torch.float64)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    den = float((b * b).sum())
    assert den > 0, "reference is all zeros: the test input is degenerate"
    return float(((a - b) ** 2).sum()) / den


def assert_nmse(out: torch.Tensor, ref: torch.Tensor, tol_name: str, what: str = "output") -> float:
    assert torch.isfinite(out).all(), f"{what}: {int((~torch.isfinite(out)).sum())} non-finite elements (NaN = unwritten)"
    err = nmse(out, ref)
    bound = tol(tol_name)
    assert err <= bound, f"{what}: NMSE {err:.3e} > {tol_name} = {bound:.1e}"
    return err


def f64(*ts):
    """CPU float64 copies: the oracle's inputs are the test inputs exactly as rounded."""
    out = tuple(t.detach().to("cpu", torch.float64) if t.is_floating_point() else t.detach().cpu() for t in ts)
    return out if len(out) > 1 else out[0]


def randn(shape, dtype, device, scale=1.0, offset=0.0):
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale + offset).to(dtype)


def mxfp4_rows(rows: int, cols: int, device) -> torch.Tensor:
    """Random MXFP4 bytes [rows, cols/32*17]: any nibbles, E8M0 scale bytes spread over three
    binades around the one that makes a row's dot product with unit-variance input of order
    one (|value| averages 4.5 x 2^(e - 128) after ggml's table doubling), so fp16 outputs of
    wide layers stay far from overflow."""
    import math
    e0 = 128 - round(math.log2(4.5 * math.sqrt(cols)))
    raw = torch.randint(0, 256, (rows, cols // 32, 17), dtype=torch.uint8)
    raw[..., 0] = torch.randint(e0 - 2, e0 + 1, (rows, cols // 32), dtype=torch.uint8)
    return raw.reshape(rows, cols // 32 * 17).to(device)


def moe_layer(e, k, c, f, dtype, device, seed=0):
    """A Layer-like object holding what GptOss.moe reads (router fp32, ExpertStacks of MXFP4
    bytes, biases in the activation dtype). The MXFP4 bytes come from the global generator, the
    router and biases from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)

    def stack(rows, cols):
        w = SimpleNamespace(raw=mxfp4_rows(e * rows, cols, device), qtype=quants.Q.MXFP4, shape=(e, rows, cols))
        return gpt_oss.ExpertStack(w, (torch.randn(e, rows, generator=g) * 0.5).to(device, dtype))

    return SimpleNamespace(router=(torch.randn(e, c, generator=g) / c ** 0.5).to(device),
                           router_bias=torch.randn(e, generator=g).to(device),
                           gate=stack(f, c), up=stack(f, c), down=stack(c, f))


def moe_weights(L):
    """The expert arguments of ops.moe_experts / ops.moe_grouped, in their order."""
    return (L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias, L.down.weight.raw, L.down.bias)


def moe_model(k, **attrs):
    """The stand-in `self` of GptOss.moe: it reads cfg.n_expert_used and, on the GPU paths,
    on_gpu and moe_kernels (given as attrs)."""
    return SimpleNamespace(cfg=SimpleNamespace(n_expert_used=k), **attrs)


def router_logits64(h, L):
    """The router's logits [M, E] in float64 on the CPU, from the test's rounded inputs."""
    return torch.nn.functional.linear(h.cpu().double(), L.router.cpu().double(), L.router_bias.cpu().double())


def moe_route_reference(h, L, k):
    """ids [M, k] int32 and weights [M, k] fp32 of gpt-oss's routing, computed here in float64
    (independent of gpt_engine's own route_reference): the k largest router logits, and a softmax
    over those k only (transformers' GptOssTopKRouter)."""
    top, ids = router_logits64(h, L).topk(k, dim=-1)
    return ids.to(torch.int32), torch.softmax(top, dim=-1).float()


def _experts64(stack, e, rows, cols):
    """Expert e's [rows, cols] matrix in float64, decoded by gguf-py (the format's reference
    dequantizer) from the stacked MXFP4 bytes."""
    raw = stack.weight.raw[e * rows:(e + 1) * rows].cpu().numpy()
    return torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.MXFP4)).double().reshape(rows, cols)


def moe_reference64(h, ids, w, L, residual=None):
    """The experts in float64 on the CPU on the test's rounded inputs, written here (independent
    of gpt_engine's experts_reference): each token's k experts, weights decoded by gguf-py, the
    clamped SwiGLU of transformers' GptOssExperts (gate <= 7, up in [-7, 7],
    gate * sigmoid(1.702 gate) * (up + 1)), outputs weighted by the routing weights and summed."""
    hd = h.cpu().double()
    m, c = hd.shape
    f = L.gate.bias.shape[1]
    out = torch.zeros((m, c), dtype=torch.float64)
    for e in torch.unique(ids.cpu()).tolist():
        wg, wu, wd = _experts64(L.gate, e, f, c), _experts64(L.up, e, f, c), _experts64(L.down, e, c, f)
        bg, bu, bd = (t.bias[e].cpu().double() for t in (L.gate, L.up, L.down))
        tok, slot = (ids.cpu() == e).nonzero(as_tuple=True)  # the tokens that chose e, and where
        x = hd[tok]
        g = (x @ wg.T + bg).clamp(max=7.0)
        u = (x @ wu.T + bu).clamp(min=-7.0, max=7.0)
        act = g * torch.sigmoid(1.702 * g) * (u + 1)
        out.index_add_(0, tok, w.cpu().double()[tok, slot, None] * (act @ wd.T + bd))
    return out if residual is None else out + residual.cpu().double()


def capture_graph(fn, warmup: int = 1):
    """fn captured in a CUDA graph after `warmup` calls on a side stream (capture needs its
    allocations and lazy initialisations done); returns the graph and the output tensors the
    capture wrote, which every replay rewrites."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out
