"""The attention step both architectures share: prefill attends causally within
the new tokens (written to the cache when there is one); a one-token decode step
appends to the cache and attends over everything cached."""
from __future__ import annotations

import torch

from .. import ops
from ..kv_cache import KVCache


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None, layer: int,
           start: int, scale: float) -> torch.Tensor:
    """q [B, T, Hq, D], k/v [B, T, Hkv, D] at positions start..start+T -> [B, T, Hq, D].
    With start > 0, T must be 1 (the models split longer continuations)."""
    if cache is None:
        return ops.attention_prefill(q, k, v, scale)
    ops.kv_append(cache.k[layer], cache.v[layer], k, v, start)
    if start == 0:
        return ops.attention_prefill(q, k, v, scale)
    B = q.shape[0]
    lens = torch.full((B,), start + 1, dtype=torch.int32, device=q.device)
    return ops.attention_decode(q[:, 0], cache.k[layer], cache.v[layer], lens, scale)[:, None]


def one_token_at_a_time(forward, ids: torch.Tensor, cache: KVCache, last_only: bool) -> torch.Tensor:
    """Feed a multi-token continuation of a non-empty cache one token per step:
    decode attention takes a single query."""
    outs = [forward(ids[:, t:t + 1], cache, last_only) for t in range(ids.shape[1])]
    return outs[-1] if last_only else torch.cat(outs, dim=1)
