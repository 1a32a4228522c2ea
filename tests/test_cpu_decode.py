"""The CPU decode step's attention shortcut (gpt_engine/models/cpu_decode.py) against the ops it
stands in for: ``qkv_rope`` (then ``attention_decode``) references on the same qkv row, caches and
position. RoPE and the cache rows must be bitwise the reference's (the same function, the same
table row: a consistency check of the shortcut, not an oracle); the attention output within fp32
summation order of the float64 reference, and of float64 oracles written here (RoPE by
test_qkv_rope.oracle_rotate, attention by torch's SDPA)."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine.errors import ContextOverflowError
from gpt_engine.models import cpu_decode
from gpt_engine.models.attention import HeadLayout
from gpt_engine.models.llama import rope_tables
from gpt_engine.ops import attention_decode_module as att
from gpt_engine.ops import qkv_rope_module as qr

from .ops._util import assert_nmse
from .ops.test_qkv_rope import oracle_rotate

# (B, Hq, Hkv, D, S, start, rope mode, rope dim): GQA groups 1..4, first and last cache row,
# adjacent / neox / no RoPE (GPT-2), partial rotary dim
CASES = [(1, 9, 3, 64, 40, 5, 1, 64), (2, 4, 4, 32, 16, 15, 2, 32), (1, 8, 2, 64, 8, 0, 0, 0),
         (3, 6, 3, 16, 20, 11, 1, 8)]


def _layout(hq, hkv, d, s, mode, rdim):
    cos, sin = rope_tables(torch.arange(s), rdim, 10000.0) if mode else (None, None)
    return HeadLayout(hq, hkv, d, d ** -0.5, mode, rdim, cos, sin)


@pytest.mark.story("GX-001")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_decode_matches_the_reference_ops(case):
    b, hq, hkv, d, s, start, mode, rdim = case
    lay = _layout(hq, hkv, d, s, mode, rdim)
    qkv = torch.randn(b, (hq + 2 * hkv) * d)
    kc, vc = torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    kc0, vc0 = kc.clone(), vc.clone()
    out = cpu_decode.attend(lay, qkv, kc, vc, start)

    pos = torch.full((b,), start, dtype=torch.int64)
    lens = torch.zeros(b, dtype=torch.int32)
    q, _, _ = qr.reference(qkv, pos, lay.cos, lay.sin, kc_ref, vc_ref, lens, None, hq, hkv, 1, mode, rdim)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)  # rotated k and v, bitwise
    ref = att.reference(q.double(), kc_ref.double(), vc_ref.double(), lens, lay.scale)
    assert out.shape == (b, hq * d) and out.dtype == torch.float32
    assert_nmse(out.view(b, hq, d), ref, "nmse_fp32")
    # and against oracles written apart from the engine: RoPE in float64 complex arithmetic
    # (tests/ops/test_qkv_rope.oracle_rotate), attention by torch's SDPA in float64
    assert_nmse(out.view(b, hq, d), _oracle(qkv, kc0, vc0, start, hq, hkv, d, mode, rdim, lay.scale), "nmse_fp32",
                "vs float64 oracle")


def _oracle(qkv, kc, vc, start, hq, hkv, d, mode, rdim, scale):
    """One token per sequence at position start, in float64: q and k rotated by the test's own
    RoPE oracle, k and v written at row start of copies of the caches, then SDPA over rows
    0..start with each kv head repeated for its query heads. [B, Hq, D]."""
    b = qkv.shape[0]
    x = qkv.double()
    q, k, v = (x[:, :hq * d].view(b, hq, d), x[:, hq * d:(hq + hkv) * d].view(b, hkv, d),
               x[:, (hq + hkv) * d:].view(b, hkv, d))
    pos = torch.full((b,), start)
    name = {0: "none", 1: "adjacent", 2: "neox"}[mode]
    q, k = oracle_rotate(q, pos, name, rdim), oracle_rotate(k, pos, name, rdim)
    kk, vv = kc.double().clone(), vc.double().clone()
    kk[:, :, start], vv[:, :, start] = k, v
    kk, vv = (t[:, :, :start + 1].repeat_interleave(hq // hkv, dim=1) for t in (kk, vv))
    return F.scaled_dot_product_attention(q[:, :, None], kk, vv, scale=scale)[:, :, 0]


@pytest.mark.story("GX-001")
def test_cpu_decode_refuses_a_position_outside_the_cache():
    lay = _layout(4, 2, 16, 8, 1, 16)
    kc, vc = torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8, 16)
    with pytest.raises(ContextOverflowError):
        cpu_decode.attend(lay, torch.randn(1, 8 * 16), kc, vc, 8)
    assert not kc.any() and not vc.any()


@pytest.mark.story("GX-001")
@pytest.mark.parametrize("qtype, batch", [("Q4_1", 1), ("Q4_0", 2), ("Q8_0", 3), ("F16", 1)])
def test_lean_llama_decode_block_is_bitwise_the_op_layer_path(models, monkeypatch, qtype, batch):
    # cpu_decode.block (float32 CPU decode steps whose matrices are all read packed) against the
    # op-layer block on the same cache: the same operations on the same values, so the same bits.
    # F16: not read packed, so no lean products (the op-layer path runs in both).
    import gpt_engine
    from gpt_engine.models.llama import Llama

    m = gpt_engine.load(models.path("llama", qtype))
    assert (m.net._cpu_products() is not None) is (qtype != "F16")
    ids = torch.tensor([[1, 2, 3, 4]] * batch) + torch.arange(batch)[:, None]

    def steps():
        cache = m.net.new_cache(batch, 12)
        outs = [m.net.forward(ids, cache, last_only=True)]
        for t in (5, 9, 2, 7):
            outs.append(m.net.forward(torch.full((batch, 1), t), cache, last_only=True))
        return torch.cat(outs, dim=1)

    lean = steps()
    monkeypatch.setattr(Llama, "_cpu_products", lambda self: None)
    assert torch.equal(lean, steps())
