"""The CPU decode step's attention: one new token per sequence at a host-known position.

Outside its matrix products a CPU decode step is per-op overhead: the custom-op calls
``ops.qkv_rope`` + ``ops.attention_decode`` cost ~0.7 ms per layer (dispatch of an op that
mutates its arguments, a host check of the positions, and the reference attention's masked pass
over the whole cache with K/V repeated to the query heads): ~20 ms of a ~67 ms SmolLM2 step on
one thread (torch.profiler), of which 40 ms are the products. Here the position is a host int (the cache's counter,
already checked by ``KVCache.reserve``), so:

- RoPE reads one row of the model's tables and turns q and k with ``qkv_rope.rotate``, the
  reference's own function (bitwise the same values);
- k and v are written into row ``start`` of the cache by slicing (the same values);
- attention reads the first ``start + 1`` cached keys only, grouped query heads as a batch
  dimension instead of repeated K/V: softmax(q k^T * scale) v in fp32 as the reference computes
  it, differing only in fp32 summation order (tests/test_cpu_decode.py checks it against the
  reference op).

``block`` is a whole Llama layer of such a step in float32 when every matrix is read packed
(``layer_products``: SmolLM2's Q4_1 layers): the op layer's operations on the same values, so the
same bits, without its per-call checks and no-op dtype conversions; q/k/v and gate/up each one
packed-kernel call (cpu_q4.Products).

The ops' references stay the oracles of the CUDA kernels; this is the model's CPU shortcut.
"""
from __future__ import annotations

import torch

import torch.nn.functional as F

from ..errors import ContextOverflowError
from ..ops._common import acc_dtype
from ..ops.linear import apply_norm
from ..ops.qkv_rope import rotate


def attend(lay, qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int) -> torch.Tensor:
    """qkv [B, (Hq + 2 Hkv) D] of one token per sequence at position ``start``; caches
    [B, Hkv, S, D] (written at row start) -> attention output [B, Hq D]."""
    b, d, hq, hkv = qkv.shape[0], lay.head_dim, lay.n_head, lay.n_head_kv
    limit = k_cache.shape[2] if not lay.rope_mode else min(k_cache.shape[2], lay.cos.shape[0])
    if not 0 <= start < limit:
        raise ContextOverflowError(f"qkv_rope: position {start} is outside the KV cache / RoPE table of "
                                   f"{limit} positions")
    # narrow/select/copy_ rather than Python indexing: the same views, a few us less per call
    qk = qkv.narrow(1, 0, (hq + hkv) * d).view(b, hq + hkv, d)  # q and k heads turn by the same angles:
    if lay.rope_mode:  # one rotate call (elementwise, so the same values as two), one table row
        c, s = lay.cos.narrow(0, start, 1), lay.sin.narrow(0, start, 1)  # broadcast over the batch
        qk = rotate(qk, c, s, lay.rope_mode, lay.rope_dim)
    k_cache.select(2, start).copy_(qk.narrow(1, hq, hkv))
    v_cache.select(2, start).copy_(qkv.narrow(1, (hq + hkv) * d, hkv * d).view(b, hkv, d))
    n = start + 1
    acc = acc_dtype(qkv.dtype)
    kk = k_cache.narrow(2, 0, n).to(acc)                          # [B, Hkv, n, D]
    vv = v_cache.narrow(2, 0, n).to(acc)
    qg = qk.narrow(1, 0, hq).to(acc).reshape(b, hkv, hq // hkv, d)  # query heads grouped by their kv head
    p = torch.softmax((qg @ kk.transpose(-1, -2)) * lay.scale, dim=-1)  # [B, Hkv, G, n]
    return (p @ vv).to(qkv.dtype).reshape(b, hq * d)


def layer_products(layers: list[dict]):
    """Per Llama layer, (q/k/v, o, gate/up, down, gate rows) with each product a packed-kernel call
    (cpu_q4.Products / cpu_q4.Product) for ``block``; None unless every matrix of every layer is
    read packed in float32 (qweight.packed_product) and the layer has no bias."""
    from ..cpu_q4 import Products

    out = []
    for L in layers:
        mats = [*L["qkv"], L["o"], *L["gate_up"], L["down"]]
        if (len(L["gate_up"]) != 2 or L["gate_up"][0].shape != L["gate_up"][1].shape
                or any(w._q4_product() is None for w in mats)):
            return None
        out.append((Products([w._q4 for w in L["qkv"]]), L["o"]._q4, Products([w._q4 for w in L["gate_up"]]),
                    L["down"]._q4, L["gate_up"][0].shape[0]))
    return out


def block(L: dict, prods, x: torch.Tensor, lay, k_cache: torch.Tensor, v_cache: torch.Tensor,
          start: int) -> torch.Tensor:
    """One Llama block (models/llama.py ``block``) for a float32 CPU decode step, x [B, C] at
    position ``start``, with its products as ``layer_products`` made them: the same operations on the
    same values as the op-layer path (RMSNorm by the reference function, the packed products,
    ``attend``, residual adds, SwiGLU), so bitwise the same result, without the op layer's per-call
    checks and dtype round trips (no-ops in float32): ~3,000 small ops per token are the step's
    largest cost on a 2-core CPU (docs/quality.md)."""
    qkv, o, gate_up, down, n_gate = prods
    a = attend(lay, qkv(apply_norm(x, L["attn_norm"])), k_cache, v_cache, start)
    x = o(a).add_(x)  # y + residual: the one rounding the op layer's epilogue does
    g, u = gate_up(apply_norm(x, L["ffn_norm"])).split([n_gate, n_gate], dim=-1)
    return down(F.silu(g).mul_(u)).add_(x)
