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

The ops' references stay the oracles of the CUDA kernels; this is the model's CPU shortcut.
"""
from __future__ import annotations

import torch

from ..errors import ContextOverflowError
from ..ops._common import acc_dtype
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
