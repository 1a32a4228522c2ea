"""Causal multi-head attention over a whole prompt (GQA-capable).

q: [B, T, Hq, D], k/v: [B, T, Hkv, D]; query head h reads kv head h // (Hq // Hkv).
The CUDA kernel is a flash-attention style kernel (online softmax, no T x T matrix).
Optional (gpt-oss): ``sinks`` [Hq] per-head sink logits (one more softmax column that takes
probability mass and brings no value) and a sliding ``window`` (> 0: query t sees keys in
(t - window, t]); the semantics of ``models.gpt_oss.sink_attention`` at positions 0..T-1.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from ._attn_common import KERNEL_HEAD_DIMS, check_gqa, check_scale, check_sinks_window, expand_kv, heads_packed
from ._common import new_output, OpError, acc_dtype, check_float, check_same, check_shape

OP = "attention_prefill"


def _check(q, k, v, scale, sinks=None, window=0):
    check_float(OP, "q", q)
    check_shape(OP, "q", q, (None, None, None, None))
    b, t, hq, d = q.shape
    check_shape(OP, "k", k, (b, t, None, d))
    check_shape(OP, "v", v, tuple(k.shape))
    check_same(OP, "q", q, k=k, v=v)
    check_gqa(OP, hq, k.shape[2])
    check_scale(OP, scale)
    if d == 0:
        raise OpError(f"{OP}: head dim is 0")
    check_sinks_window(OP, q, hq, sinks, window)


def reference(q, k, v, scale, sinks=None, window=0):
    """Explicit softmax(q k^T * scale + causal mask) v, in fp32 for fp16/bf16 inputs; with a
    window the keys at positions <= t - window are masked too, with sinks each row's softmax
    has one more column (the head's sink logit) whose probability is dropped."""
    _check(q, k, v, scale, sinks, window)
    acc = acc_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    qh = q.to(acc).transpose(1, 2)  # [B, Hq, T, D]
    kh = expand_kv(k.to(acc), groups, 2).transpose(1, 2)
    vh = expand_kv(v.to(acc), groups, 2).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    t = q.shape[1]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    if window > 0:
        future |= torch.ones(t, t, dtype=torch.bool, device=q.device).tril(-window)
    scores = scores.masked_fill(future, float("-inf"))
    if sinks is not None:
        sink = sinks.to(acc).reshape(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        p = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(scores, dim=-1)
    return (p @ vh).transpose(1, 2).contiguous().to(q.dtype)


@torch.library.custom_op("gpt_engine::attention_prefill", mutates_args=())
def attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      sinks: Optional[torch.Tensor] = None, window: int = 0) -> torch.Tensor:
    return reference(q, k, v, scale, sinks, window)


@attention_prefill.register_fake
def _(q, k, v, scale, sinks=None, window=0):
    _check(q, k, v, scale, sinks, window)
    return q.new_empty(q.shape)


def _kernel_layout(t):
    """Heads packed, and every row 16-byte aligned (the kernel copies 16-byte chunks)."""
    return (heads_packed(t) and t.data_ptr() % 16 == 0
            and all(st % (16 // t.element_size()) == 0 for st in t.stride()[:2]))


if _ext.available():

    @attention_prefill.register_kernel("cuda")
    def _(q, k, v, scale, sinks=None, window=0):
        _check(q, k, v, scale, sinks, window)
        if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in KERNEL_HEAD_DIMS:
            return reference(q, k, v, scale, sinks, window)  # no tensor-core kernel for fp32/fp64 or this head dim
        q, k, v = (x if _kernel_layout(x) else x.contiguous() for x in (q, k, v))
        out = new_output(q.shape, q)
        _ext.load().attention_prefill(q, k, v, out, float(scale), 0,
                                      None if sinks is None else sinks.float().contiguous(), int(window))
        return out
