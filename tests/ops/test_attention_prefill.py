"""Causal prefill attention (GT-017), MHA and GQA layouts (GT-019), unit properties (GT-020)."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import attention_prefill_module as mod

from ._bench import free, mark
from tests.tolerances import tol

from ._util import DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, f64, randn

# (B, T, Hq, Hkv, D): odd/even T, T below/above one tile, MHA (Hq == Hkv) and GQA layouts
CASES = [(1, 1, 1, 1, 64), (2, 17, 4, 4, 64), (1, 128, 12, 12, 64), (2, 200, 6, 2, 64), (1, 333, 9, 3, 64),
         (1, 129, 8, 1, 64), (2, 77, 4, 2, 128), (1, 64, 3, 3, 32)]


def _sdpa64(q, k, v, scale):
    """torch's SDPA (math backend on CPU float64) as an oracle independent of our reference."""
    qh, kh, vh = (t.transpose(1, 2) for t in f64(q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


@pytest.mark.story("GT-017", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_prefill_vs_float64(device, dtype, case):
    b, t, hq, hkv, d = case
    q, k, v = randn((b, t, hq, d), dtype, device), randn((b, t, hkv, d), dtype, device), randn((b, t, hkv, d), dtype, device)
    scale = d ** -0.5
    out = ops.attention_prefill(q, k, v, scale)
    assert out.shape == q.shape and out.dtype == dtype
    ref = mod.reference(*f64(q, k, v), scale)
    assert_nmse(out, ref, "nmse_attention" if dtype != torch.float32 else TOL_NAME[dtype])


@pytest.mark.story("GT-017", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_strided_qkv_views(device):
    """q, k, v as views into one fused [B, T, 3, H, D] projection (the GPT-2 layout)."""
    b, t, h, d = 2, 95, 4, 64
    qkv = randn((b, t, 3, h, d), torch.float16, device)
    q, k, v = qkv.unbind(2)
    out = ops.attention_prefill(q, k, v, 0.125)
    assert_nmse(out, mod.reference(*f64(q, k, v), 0.125), "nmse_attention")


@pytest.mark.story("GT-017", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("variant", [0, 1, 2], ids=["tma_wg2_bn128", "mma_sync", "tma_wg3_bn64"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(1, 1, 2, 2), (2, 1100, 80, 80), (1, 257, 6, 2), (3, 700, 4, 1)], ids=str)
def test_prefill_kernel_variants(variant, dtype, case):
    """Every compiled head-dim-64 kernel (the default and the two kept for the measurements in
    docs/kernels/attention.md), on q/k/v views of one fused projection, output pre-filled with
    NaN. (2, 1100, 80, 80) has 1440 work items, so every block of the persistent kernel takes
    several items and its K/V stages wrap many times."""
    from gpt_engine.ops import _ext
    b, t, hq, hkv = case
    qkv = randn((b, t, hq + 2 * hkv, 64), dtype, "cuda")
    q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
    out = torch.full_like(q, float("nan"))
    _ext.load().attention_prefill(q, k, v, out, 0.125, variant)
    assert_nmse(out, mod.reference(*f64(q, k, v), 0.125), "nmse_attention")


@pytest.mark.story("GT-017", "GT-020")
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_reference_matches_sdpa(hq, hkv):
    q, k, v = torch.randn(2, 37, hq, 16, dtype=torch.float64), torch.randn(2, 37, hkv, 16, dtype=torch.float64), \
        torch.randn(2, 37, hkv, 16, dtype=torch.float64)
    assert_nmse(mod.reference(q, k, v, 0.3), _sdpa64(q, k, v, 0.3), "nmse_float64_same_math")


@pytest.mark.story("GT-020")
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_is_causal(device):
    """Mask: changing keys/values of later tokens never changes earlier outputs; softmax rows
    sum to 1, so with all-equal values every output equals that value."""
    b, t, h, d = 1, 150, 2, 64
    q, k, v = (randn((b, t, h, d), torch.float16, device) for _ in range(3))
    out1 = ops.attention_prefill(q, k, v, 0.125)
    k2, v2 = k.clone(), v.clone()
    k2[:, 100:] = randn((b, t - 100, h, d), torch.float16, device)
    v2[:, 100:] = randn((b, t - 100, h, d), torch.float16, device)
    out2 = ops.attention_prefill(q, k2, v2, 0.125)
    assert torch.equal(out1[:, :100], out2[:, :100])
    assert not torch.equal(out1[:, 100:], out2[:, 100:])
    const = torch.full_like(v, 0.375)
    bound = tol("attention_fp16_exact_cases_abs")
    assert (ops.attention_prefill(q, k, const, 0.125).float() - const.float()).abs().max() <= bound
    # the first token attends only itself: its output is its own value row
    assert (out1[:, 0].float() - v[:, 0].float()).abs().max() <= bound


@pytest.mark.story("GT-017")
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_large_scores_stay_finite(device):
    """Scores far beyond fp16 range after scaling: the online softmax must rescale, not overflow."""
    q, k, v = (randn((1, 70, 2, 64), torch.float16, device, 30.0) for _ in range(3))
    out = ops.attention_prefill(q, k, v, 1.0)
    assert_nmse(out, mod.reference(*f64(q, k, v), 1.0), "nmse_attention")


@pytest.mark.story("GT-017", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_bad_inputs(device):
    q = torch.randn(1, 4, 6, 8, device=device)
    with pytest.raises(ops.OpError, match="not a multiple"):
        ops.attention_prefill(q, torch.randn(1, 4, 4, 8, device=device), torch.randn(1, 4, 4, 8, device=device), 0.3)
    with pytest.raises(ops.OpError, match="k has shape"):
        ops.attention_prefill(q, torch.randn(1, 5, 2, 8, device=device), torch.randn(1, 5, 2, 8, device=device), 0.3)
    with pytest.raises(ops.OpError, match="scale"):
        ops.attention_prefill(q, q, q, 0.0)


@mark("GT-017")
@pytest.mark.parametrize("t", [1024, 2048, 4096, 8192])
def test_prefill_rate(bench, t):
    """Causal, d = 64, 16 heads, B * T = 32768 tokens, fp16; FLOPs = 4 B H T^2 d / 2. SDPA gets
    the same tensors as [B, H, T, D] views (its preferred layout, no copy)."""
    b, h, d = 32768 // t, 16, 64
    q, k, v = (torch.randn(b, t, h, d, device="cuda", dtype=torch.float16) for _ in range(3))
    flops = 4 * b * h * t * t * d / 2
    tk = bench.cuda_time(lambda: ops.attention_prefill(q, k, v, d ** -0.5), warmup=5, reps=30)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    t_sdpa = bench.cuda_time(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), warmup=5, reps=30)
    bench.record(f"attention_prefill.fp16.T{t}", flops / tk / 1e12, "TFLOP/s", kind="flops",
                 references={"sdpa": flops / t_sdpa / 1e12},
                 params={"B": b, "H": h, "T": t, "D": d, "time_s": tk, "sdpa_time_s": t_sdpa})
    free()
