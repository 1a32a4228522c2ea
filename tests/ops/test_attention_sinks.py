"""gpt-oss attention in the kernels (GX-002): per-head sinks and the sliding window in
attention_prefill and attention_decode, against transformers' gpt-oss eager attention in float64
(`oracle` below) over grids of window (< and >= the sequence), sink size, GQA ratio and batch;
the ops' CPU references and the model's sink_attention against the same oracle."""
from types import SimpleNamespace

import pytest
import torch

from gpt_engine import ops
from gpt_engine.models.gpt_oss import sink_attention
from gpt_engine.ops import attention_decode_module as dec_mod
from gpt_engine.ops import attention_prefill_module as pre_mod
from tests.tolerances import tol

from ._cases import device_cases
from ._util import DEVICES, HAS_CUDA, assert_nmse, f64, randn

STORY = pytest.mark.story("GX-002")
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")]


def oracle(q, k, v, sinks, qpos, window, scale):
    """transformers' own gpt-oss attention (modeling_gpt_oss.eager_attention_forward: the sinks
    as an extra softmax column that is dropped before the values) in float64, under the mask that
    transformers' masking_utils defines (causal_mask_function, and sliding_window_overlay when
    there is a window). q [B, T, Hq, d] at positions qpos ([T], or [B, T]); k/v [B, Hkv, S, d] at
    positions 0..S-1; sinks [Hq] (None: no sink). Returns [B, T, Hq, d] float64."""
    from transformers import masking_utils as mu
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
    t, hq, s = q.shape[1], q.shape[2], k.shape[2]
    qi = qpos.reshape(-1, 1, t, 1)
    kv = torch.arange(s).reshape(1, 1, 1, s)
    allowed = mu.causal_mask_function(0, 0, qi, kv)
    if window is not None:
        allowed = allowed & mu.sliding_window_overlay(window)(0, 0, qi, kv)
    mask = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    sk = torch.full((hq,), float("-inf"), dtype=torch.float64) if sinks is None else sinks.cpu().double()
    module = SimpleNamespace(num_key_value_groups=hq // k.shape[1], sinks=sk, training=False)
    out, _ = eager_attention_forward(module, q.cpu().double().transpose(1, 2), k.cpu().double(), v.cpu().double(),
                                     mask, scale)
    return out


def _sinks(hq, size, device):
    """Sink logits: "small" (well below the scores: little mass), "large" (above most scores:
    takes most of the mass), "mixed" (both, one per head)."""
    if size == "small":
        s = torch.full((hq,), -4.0)
    elif size == "large":
        s = torch.full((hq,), 6.0)
    else:
        s = torch.linspace(-5.0, 5.0, hq)
    return s.to(device=device, dtype=torch.float32)


# (B, T, Hq, Hkv, D, window): window < T, window >= T, window 1 (only the token itself), GQA 1..8
PREFILL = [(1, 100, 4, 4, 64, 16), (2, 200, 8, 2, 64, 64), (1, 333, 8, 1, 64, 128), (1, 90, 4, 2, 64, 128),
           (2, 257, 16, 2, 64, 1), (1, 160, 6, 3, 128, 33), (1, 77, 4, 2, 64, None)]


@STORY
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sink", ["small", "large", "mixed", None], ids=str)
# the CPU reference is checked on the smaller cases (T <= 200) only
@pytest.mark.parametrize("device,case", device_cases(PREFILL, cpu=lambda c: c[1] <= 200))
def test_prefill_sinks_window_vs_sink_attention(device, dtype, sink, case):
    b, t, hq, hkv, d, window = case
    q, k, v = (randn((b, t, h, d), dtype, device) for h in (hq, hkv, hkv))
    sinks = None if sink is None else _sinks(hq, sink, device)
    out = ops.attention_prefill(q, k, v, d ** -0.5, sinks, window or 0)
    assert out.shape == q.shape and out.dtype == dtype
    qq, kk, vv = f64(q, k, v)
    ref = oracle(qq, kk.transpose(1, 2), vv.transpose(1, 2), sinks, torch.arange(t), window, d ** -0.5)
    assert_nmse(out, ref, "nmse_attention")


# (B, Hq, Hkv, S, D, lens, window): window < len, window >= len, ragged lengths, one key, GQA 1..8
DECODE = [(1, 8, 1, 300, 64, [300], 128), (3, 8, 2, 1000, 64, [999, 1, 513], 128), (2, 4, 4, 64, 64, [64, 40], 128),
          (2, 64, 8, 4100, 64, [4097, 130], 128), (1, 16, 2, 700, 64, [700], 1), (2, 6, 3, 90, 128, [90, 17], 20),
          (2, 8, 2, 500, 64, [500, 200], None)]


@STORY
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sink", ["small", "large", "mixed", None], ids=str)
@pytest.mark.parametrize("case", DECODE, ids=str)
def test_decode_sinks_window_vs_sink_attention(device, dtype, sink, case):
    b, hq, hkv, s, d, lens, window = case
    q = randn((b, hq, d), dtype, device)
    kc, vc = randn((b, hkv, s, d), dtype, device), randn((b, hkv, s, d), dtype, device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    sinks = None if sink is None else _sinks(hq, sink, device)
    out = ops.attention_decode(q, kc, vc, seq_lens, d ** -0.5, 0, sinks, window or 0)
    assert out.shape == q.shape and out.dtype == dtype
    qq, kk, vv = f64(q, kc, vc)
    ref = torch.cat([oracle(qq[i:i + 1, None], kk[i:i + 1], vv[i:i + 1], sinks, torch.tensor([n - 1]), window,
                            d ** -0.5)[:, 0] for i, n in enumerate(lens)])
    assert_nmse(out, ref, "nmse_attention")


@STORY
@pytest.mark.parametrize("window", [7, None])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_references_equal_the_oracle(hq, hkv, window):
    """The ops' CPU references (attention_prefill's and attention_decode's, float64 here) compute
    transformers' math to float64 rounding; the model's sink_attention (fp32) to fp32 rounding."""
    torch.manual_seed(0)
    b, t, d = 2, 40, 16
    q, k, v = (torch.randn(b, t, h, d, dtype=torch.float64) for h in (hq, hkv, hkv))
    sinks = torch.randn(hq, dtype=torch.float64)
    want = oracle(q, k.transpose(1, 2), v.transpose(1, 2), sinks, torch.arange(t), window, 0.3)
    assert_nmse(pre_mod.reference(q, k, v, 0.3, sinks, window or 0), want, "nmse_float64_same_math", "prefill reference")
    model = sink_attention(q, k.transpose(1, 2), v.transpose(1, 2), sinks, torch.arange(t), window, 0.3)
    assert_nmse(model, want, "nmse_fp32", "sink_attention")
    kc, vc = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    lens = torch.tensor([t, 23])
    qd = torch.stack([q[i, n - 1] for i, n in enumerate(lens.tolist())])  # each sequence's last token
    got = dec_mod.reference(qd, kc, vc, lens, 0.3, sinks, window or 0)
    ref = torch.cat([oracle(q[i:i + 1, n - 1:n], kc[i:i + 1], vc[i:i + 1], sinks, torch.tensor([n - 1]), window, 0.3)[:, 0]
                     for i, n in enumerate(lens.tolist())])
    assert_nmse(got, ref, "nmse_float64_same_math", "decode reference")


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_without_sinks_and_window_nothing_changes(device):
    """sinks=None, window=0 is the plain causal attention the other models use, bit for bit."""
    q, k, v = (randn((2, 70, h, 64), torch.float16, device) for h in (4, 2, 2))
    assert torch.equal(ops.attention_prefill(q, k, v, 0.125), ops.attention_prefill(q, k, v, 0.125, None, 0))
    kc, vc = randn((2, 2, 90, 64), torch.float16, device), randn((2, 2, 90, 64), torch.float16, device)
    lens = torch.tensor([90, 33], dtype=torch.int32, device=device)
    assert torch.equal(ops.attention_decode(q[:, 0], kc, vc, lens, 0.125),
                       ops.attention_decode(q[:, 0], kc, vc, lens, 0.125, 0, None, 0))


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_window_as_long_as_the_sequence_is_no_window(device):
    q, k, v = (randn((1, 50, h, 64), torch.float16, device) for h in (4, 2, 2))
    sinks = _sinks(4, "mixed", device)
    a = ops.attention_prefill(q, k, v, 0.125, sinks, 50)
    assert_nmse(a, f64(ops.attention_prefill(q, k, v, 0.125, sinks, 0)), "nmse_attention")


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_then_decode_with_window_equals_full(device):
    """Prefill 150 tokens, decode 60 more one at a time through the cache, window 32, sinks:
    every output matches the prompt-wide reference over all 210 tokens."""
    b, t, p, hq, hkv, d, w = 2, 210, 150, 8, 2, 64, 32
    q, k, v = (randn((b, t, h, d), torch.float16, device) for h in (hq, hkv, hkv))
    sinks = _sinks(hq, "mixed", device)
    kc = torch.full((b, hkv, t, d), float("nan"), dtype=torch.float16, device=device)
    vc = kc.clone()
    outs = [ops.attention_prefill(q[:, :p], k[:, :p], v[:, :p], 0.125, sinks, w)]
    ops.kv_append(kc, vc, k[:, :p], v[:, :p], 0)
    for i in range(p, t):
        ops.kv_append(kc, vc, k[:, i:i + 1], v[:, i:i + 1], i)
        lens = torch.full((b,), i + 1, dtype=torch.int64, device=device)
        outs.append(ops.attention_decode(q[:, i], kc, vc, lens, 0.125, 0, sinks, w)[:, None])
    full = pre_mod.reference(*f64(q, k, v), 0.125, sinks.cpu().double(), w)
    assert_nmse(torch.cat(outs, dim=1), full, "nmse_attention")


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_sinks_window_bad_inputs(device):
    q = torch.randn(1, 4, 4, 64, device=device)
    with pytest.raises(ops.OpError, match="sinks has shape"):
        ops.attention_prefill(q, q, q, 0.125, torch.zeros(3, device=device), 0)
    with pytest.raises(ops.OpError, match="window"):
        ops.attention_prefill(q, q, q, 0.125, None, -1)
    lens = torch.tensor([4], device=device)
    with pytest.raises(ops.OpError, match="sinks has shape"):
        ops.attention_decode(q[:, 0], q.transpose(1, 2), q.transpose(1, 2), lens, 0.125, 0,
                             torch.zeros(4, 1, device=device), 0)


@STORY
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_sinks_and_window(device):
    dt = torch.float16 if device == "cuda" else torch.float32
    r = lambda *s: randn(s, dt, device)  # noqa: E731
    sinks = torch.randn(4, device=device)
    torch.library.opcheck(torch.ops.gpt_engine.attention_prefill.default,
                          (r(2, 19, 4, 64), r(2, 19, 2, 64), r(2, 19, 2, 64), 0.125, sinks, 5))
    torch.library.opcheck(torch.ops.gpt_engine.attention_decode.default,
                          (r(2, 4, 64), r(2, 2, 40, 64), r(2, 2, 40, 64), torch.tensor([40, 11], device=device),
                           0.125, 0, sinks, 8))


@STORY
@pytest.mark.parametrize("splits", [1, 3, 64, 1024], ids=str)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_decode_forced_splits_with_window(device, splits):
    """Any split count: the splits cover only the window's keys, most of them empty; the
    sink is added once, in the reduce."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens, w = 3, 8, 2, 1000, 64, [1000, 1, 333], 128
    q = randn((b, hq, d), torch.float16, device)
    kc, vc = randn((b, hkv, s, d), torch.float16, device), randn((b, hkv, s, d), torch.float16, device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    sinks = _sinks(hq, "mixed", device)
    out = torch.full_like(q, float("nan"))
    _ext.load().attention_decode(q, kc, vc, seq_lens, out, 0.125, splits, sinks, w)
    assert_nmse(out, dec_mod.reference(*f64(q, kc, vc), seq_lens.cpu(), 0.125, sinks.cpu().double(), w),
                "nmse_attention")


@STORY
@pytest.mark.parametrize("short_keys", [64, 256], ids=str)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_decode_short_sequences_with_sinks_and_window(device, short_keys):
    """One-split sequences (short_keys, docs/kernels/decode.md v10) add the sink in the split
    kernel's own output write, exactly as the reduce does: the output equals the reference,
    and, for the sequences with at most short_keys keys in view, equals bit for bit the output
    with the reduce launch left out. The window bounds the keys in view (200 keys and a 128-key
    window: one split at short_keys 256, `splits` at 64)."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens = 3, 8, 2, 600, 64, [600, 1, 200]
    for w in (0, 128):
        q = randn((b, hq, d), torch.float16, device)
        kc, vc = randn((b, hkv, s, d), torch.float16, device), randn((b, hkv, s, d), torch.float16, device)
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        sinks = _sinks(hq, "mixed", device)
        full, no_reduce = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
        _ext.load().attention_decode(q, kc, vc, seq_lens, full, 0.125, 8, sinks, w, short_keys, True)
        _ext.load().attention_decode(q, kc, vc, seq_lens, no_reduce, 0.125, 8, sinks, w, short_keys, False)
        assert_nmse(full, dec_mod.reference(*f64(q, kc, vc), seq_lens.cpu(), 0.125, sinks.cpu().double(), w),
                    "nmse_attention")
        short = [i for i, n in enumerate(lens) if min(n, w or n) <= short_keys]
        assert torch.equal(no_reduce[short], full[short]), f"window {w}"


@STORY
@pytest.mark.parametrize("variant", [0, 1, 2], ids=["tma_wg2_bn128", "mma_sync", "tma_wg3_bn64"])
@pytest.mark.parametrize("case", [(1, 1, 2, 2, 8), (2, 1100, 16, 8, 128), (1, 257, 6, 2, 64), (3, 700, 4, 1, 100)],
                         ids=str)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_prefill_kernel_variants_with_window(device, variant, case):
    """Every compiled head-dim-64 prefill kernel with a window and sinks (windows that are and
    are not multiples of the key tile)."""
    from gpt_engine.ops import _ext
    b, t, hq, hkv, w = case
    qkv = randn((b, t, hq + 2 * hkv, 64), torch.float16, device)
    q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
    sinks = _sinks(hq, "mixed", device)
    out = torch.full_like(q, float("nan"))
    _ext.load().attention_prefill(q, k, v, out, 0.125, variant, sinks, w)
    assert_nmse(out, pre_mod.reference(*f64(q, k, v), 0.125, sinks.cpu().double(), w), "nmse_attention")
