"""The attention step both architectures share, from the layer input (the QKV product with its
norm fused in front) to the attention output, in its two shapes:

- ``attend_tokens``: T new tokens at host-known positions start..start+T-1. With start = 0 they
  are the whole sequence (causal prefill attention); otherwise T = 1 and the token attends
  everything cached (the models feed longer continuations one token at a time).
- ``attend_decode``: one token per sequence at device-held positions (the decode graph's step:
  no host value, no sync), lengths and the status word in a ``DecodeState``.

The QKV weight is one stacked [q; k; v] weight, or (a mixed-type file) three. Tokens: the
product, then ``ops.qkv_rope`` splits, rotates and appends. Decode: one ``ops.linear_qkv``
launch does all of that in the GEMV's epilogue.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..kv_cache import KVCache
from ..ops import attention_prefill_module, qkv_rope_module
from ..ops._common import direct_on_cpu
from . import cpu_decode


@dataclass(frozen=True)
class HeadLayout:
    n_head: int
    n_head_kv: int
    head_dim: int
    scale: float
    rope_mode: int = 0                  # ops.qkv_rope_module.ROPE_MODES
    rope_dim: int = 0
    cos: torch.Tensor | None = None     # [positions, rope_dim / 2] fp32, built once per model
    sin: torch.Tensor | None = None


def project_qkv(x: torch.Tensor, weights: list, bias: torch.Tensor | None, norm) -> torch.Tensor:
    """[ntok, (Hq + 2 Hkv) D] from the stacked QKV weight, or the concatenation of three."""
    if len(weights) == 1:
        return ops.linear(x, weights[0], bias, norm=norm)
    if bias is not None:
        raise ValueError("a bias needs the stacked QKV weight")
    return ops.linear_module.linear_cat(x, weights, norm)


def attend_tokens(lay: HeadLayout, x: torch.Tensor, weights: list, bias, norm, cache: KVCache | None, layer: int,
                  batch: int, start: int, pos: torch.Tensor) -> torch.Tensor:
    """x [B*T, C] (the residual stream) at positions pos [B*T] (= start..start+T-1 per
    sequence) -> attention output [B*T, Hq D]."""
    qkv = project_qkv(x, weights, bias, norm)
    t = qkv.shape[0] // batch
    if qkv.device.type == "cpu" and start > 0 and cache is not None and t == 1:  # a CPU decode step (cpu_decode.py)
        return cpu_decode.attend(lay, qkv, cache.k[layer], cache.v[layer], start)
    kc, vc = (cache.k[layer], cache.v[layer]) if cache is not None else (None, None)
    rope = direct_on_cpu(ops.qkv_rope, qkv_rope_module.reference, qkv)
    q, k, v = rope(qkv, pos, lay.cos, lay.sin, kc, vc, None, None, lay.n_head, lay.n_head_kv, t, lay.rope_mode,
                   lay.rope_dim)
    d = lay.head_dim
    if start == 0:
        prefill = direct_on_cpu(ops.attention_prefill, attention_prefill_module.reference, q)
        a = prefill(q.view(batch, t, lay.n_head, d), k.view(batch, t, lay.n_head_kv, d),
                    v.view(batch, t, lay.n_head_kv, d), lay.scale)
    else:
        assert t == 1, "continuations are fed one token at a time"
        lens = torch.full((batch,), start + 1, dtype=torch.int32, device=qkv.device)
        a = ops.attention_decode(q, kc, vc, lens, lay.scale)
    return a.reshape(batch * t, lay.n_head * d)


def attend_decode(lay: HeadLayout, x: torch.Tensor, weights: list, bias, norm, st, layer: int) -> torch.Tensor:
    """x [B, C] of the token at st.pos per sequence -> [B, Hq D]. Writes the cache row and
    st.lens (= pos + 1); a position outside the cache raises a bit in st.status."""
    kc, vc = st.cache.k[layer], st.cache.v[layer]
    args = (st.pos, lay.cos, lay.sin, kc, vc, st.lens, st.status, lay.n_head, lay.n_head_kv)
    if len(weights) == 1:
        q = ops.linear_qkv(x, weights[0], bias, norm, *args, lay.rope_mode, lay.rope_dim)
    else:
        q, _, _ = ops.qkv_rope(project_qkv(x, weights, bias, norm), *args, 1, lay.rope_mode, lay.rope_dim)
    a = ops.attention_decode(q, kc, vc, st.lens, lay.scale, st.splits, None, 0, st.short_keys, st.reduce)
    return a.reshape(x.shape[0], lay.n_head * lay.head_dim)


def one_token_at_a_time(forward, ids: torch.Tensor, cache: KVCache, last_only: bool) -> torch.Tensor:
    """Feed a multi-token continuation of a non-empty cache one token per step:
    decode attention takes a single query."""
    outs = [forward(ids[:, t:t + 1], cache, last_only) for t in range(ids.shape[1])]
    return outs[-1] if last_only else torch.cat(outs, dim=1)
