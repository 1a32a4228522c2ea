"""One query token per sequence against the KV cache (flash-decoding on the GPU).

q: [B, Hq, D]; k_cache/v_cache: [B, Hkv, S, D]; seq_lens[b] in [1, S] keys are attended.
Optional (gpt-oss): ``sinks`` [Hq] fp32 per-head sink logits (one more softmax column that
takes probability mass and brings no value) and a sliding ``window`` (> 0: the query, at
position seq_lens[b] - 1, sees keys at positions > seq_lens[b] - 1 - window). The semantics
are those of ``models.gpt_oss.sink_attention``.

``short_keys`` and ``reduce`` change how the GPU gets the result, never the result: a sequence
with at most ``short_keys`` keys in view is attended by one split that writes its output itself
(bit for bit what the reduce would write), and ``reduce=False`` leaves the reduce launch out,
which is right only when every sequence is that short (checked here outside graph capture; the
decode loop knows the lengths from the positions and replays a graph without the launch only
then: docs/kernels/decode.md, v10).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..env import whole_number
from . import _ext
from ._attn_common import KERNEL_HEAD_DIMS, check_gqa, check_scale, check_sinks_window, expand_kv
from ._common import new_output, OpError, acc_dtype, capturing, check_float, check_same, check_shape

OP = "attention_decode"


def _check(q, k_cache, v_cache, seq_lens, scale, sinks=None, window=0):
    check_float(OP, "q", q)
    check_shape(OP, "q", q, (None, None, None))
    b, hq, d = q.shape
    check_shape(OP, "k_cache", k_cache, (b, None, None, d))
    check_shape(OP, "v_cache", v_cache, tuple(k_cache.shape))
    check_same(OP, "q", q, k_cache=k_cache, v_cache=v_cache)
    check_gqa(OP, hq, k_cache.shape[1])
    check_scale(OP, scale)
    if seq_lens.dtype not in (torch.int32, torch.int64):
        raise OpError(f"{OP}: seq_lens has dtype {seq_lens.dtype}, expected int32 or int64")
    check_shape(OP, "seq_lens", seq_lens, (b,))
    if seq_lens.device != q.device:
        raise OpError(f"{OP}: seq_lens is on {seq_lens.device} but q is on {q.device}")
    check_sinks_window(OP, q, hq, sinks, window)


def _check_lens(seq_lens, s, short_keys=0, reduce=True):
    """Host read-back of seq_lens; skipped during CUDA graph capture, where the
    kernel clamps each length to [0, S] instead of reading outside the cache."""
    if not reduce and short_keys <= 0:
        raise OpError(f"{OP}: reduce=False needs short_keys > 0 (only one-split sequences skip the reduce)")
    if seq_lens.numel() == 0 or capturing():
        return
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(seq_lens)).tolist())  # one reduction, one sync
    if lo < 1 or hi > s:
        raise OpError(f"{OP}: seq_lens holds {lo if lo < 1 else hi}, expected values in [1, {s}] (cache length)")
    if not reduce and hi > short_keys:
        raise OpError(f"{OP}: seq_lens holds {hi} with reduce=False, expected values <= short_keys={short_keys}")


def reference(q, k_cache, v_cache, seq_lens, scale, sinks=None, window=0):
    """Explicit softmax(q k^T * scale) v over each sequence's first seq_lens[b] keys, as one
    masked computation over the whole cache (no host read of the lengths: it also runs inside
    a captured decode step). Lengths are clamped to [0, S] as the kernel clamps them; an empty
    sequence gives zeros. With sinks/window: the keys before the window are masked too and the
    sink logit is one more softmax column whose probability is dropped."""
    _check(q, k_cache, v_cache, seq_lens, scale, sinks, window)
    if sinks is not None or window > 0:
        return _sink_reference(q, k_cache, v_cache, seq_lens, scale, sinks, window)
    _check_lens(seq_lens, k_cache.shape[2])
    acc = acc_dtype(q.dtype)
    groups = q.shape[1] // k_cache.shape[1]
    s = k_cache.shape[2]
    lens = seq_lens.clamp(0, s)
    outside = torch.arange(s, device=q.device)[None, :] >= lens[:, None]  # [B, S]
    k = expand_kv(k_cache.to(acc), groups, 1).masked_fill(outside[:, None, :, None], 0.0)  # [B, Hq, S, D]
    v = expand_kv(v_cache.to(acc), groups, 1).masked_fill(outside[:, None, :, None], 0.0)
    scores = (k @ q.to(acc).unsqueeze(-1)).squeeze(-1) * scale  # [B, Hq, S]
    p = torch.softmax(scores.masked_fill(outside[:, None, :], float("-inf")), dim=-1)
    p = torch.where((lens > 0)[:, None, None], p, torch.zeros_like(p))
    return (p.unsqueeze(-2) @ v).squeeze(-2).to(q.dtype)


def _sink_reference(q, k_cache, v_cache, seq_lens, scale, sinks, window):
    acc = acc_dtype(q.dtype)
    groups = q.shape[1] // k_cache.shape[1]
    s = k_cache.shape[2]
    lens = seq_lens.clamp(0, s)
    kp = torch.arange(s, device=q.device)[None, :]
    outside = kp >= lens[:, None]                                         # [B, S]
    if window > 0:
        outside |= kp <= lens[:, None] - 1 - window
    k = expand_kv(k_cache.to(acc), groups, 1).masked_fill(outside[:, None, :, None], 0.0)  # [B, Hq, S, D]
    v = expand_kv(v_cache.to(acc), groups, 1).masked_fill(outside[:, None, :, None], 0.0)
    scores = (k @ q.to(acc).unsqueeze(-1)).squeeze(-1) * scale           # [B, Hq, S]
    scores = scores.masked_fill(outside[:, None, :], float("-inf"))
    if sinks is not None:
        sink = sinks.to(acc).reshape(1, -1, 1).expand(q.shape[0], q.shape[1], 1)
        p = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(scores, dim=-1)
    p = torch.where((lens > 0)[:, None, None], p, torch.zeros_like(p))
    return (p.unsqueeze(-2) @ v).squeeze(-2).to(q.dtype)


MAX_SPLITS = 1024  # csrc/attention_decode.cu kMaxSplits
SPLIT_KEYS = 64    # kSplitAlign: a split covers a whole number of these keys
# The decode loop's one-split bound: a sequence of at most this many keys is attended by one
# block per head: 256 keys are 4 of the kernel's 64-key steps at D = 64 with two steps' loads
# in flight, about two memory round trips instead of one round trip plus the reduce launch
# (docs/kernels/decode.md, v10). GPT_ENGINE_ATTN_SHORT_KEYS overrides it (0 turns it off).
SHORT_KEYS = 256
SHORT_KEYS_ENV = "GPT_ENGINE_ATTN_SHORT_KEYS"


def short_keys() -> int:
    """The decode loop's one-split bound (``SHORT_KEYS`` unless ``GPT_ENGINE_ATTN_SHORT_KEYS``)."""
    return whole_number(SHORT_KEYS_ENV, SHORT_KEYS, "keys", OpError)


def max_splits(s: int) -> int:
    """The bound of ``attention_decode_splits`` for an s-key cache, whatever the GPU: one split
    per SPLIT_KEYS keys, at most MAX_SPLITS. The memory estimate (``model._estimate_cuda``)
    sizes the split workspaces by it."""
    return min(MAX_SPLITS, -(-s // SPLIT_KEYS))


def splits_for(hq: int, hkv: int, s: int) -> int:
    """The kernel's split count for one sequence (at most ``max_splits(s)``). The decode graph
    passes it for every batch size, so a sequence's sums run in the same order whatever batch
    it is in (its greedy ids then equal its batch-1 run's)."""
    if not _ext.available():
        return 0
    return int(_ext.load().attention_decode_splits(1, hq, hkv, s,
                                                   torch.cuda.get_device_properties(0).multi_processor_count))


@torch.library.custom_op("gpt_engine::attention_decode", mutates_args=())
def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float, splits: int = 0, sinks: Optional[torch.Tensor] = None,
                     window: int = 0, short_keys: int = 0, reduce: bool = True) -> torch.Tensor:
    """splits: sequence chunks per (batch, head) on the GPU; 0 picks by occupancy. The
    result does not depend on it beyond fp32 summation order. sinks/window, short_keys/reduce:
    see the module."""
    _check_lens(seq_lens, k_cache.shape[2], short_keys, reduce)
    return reference(q, k_cache, v_cache, seq_lens, scale, sinks, window)


@attention_decode.register_fake
def _(q, k_cache, v_cache, seq_lens, scale, splits=0, sinks=None, window=0, short_keys=0, reduce=True):
    _check(q, k_cache, v_cache, seq_lens, scale, sinks, window)
    return q.new_empty(q.shape)


if _ext.available():

    @attention_decode.register_kernel("cuda")
    def _(q, k_cache, v_cache, seq_lens, scale, splits=0, sinks=None, window=0, short_keys=0, reduce=True):
        _check(q, k_cache, v_cache, seq_lens, scale, sinks, window)
        if q.dtype == torch.float64 or q.shape[-1] not in KERNEL_HEAD_DIMS:
            _check_lens(seq_lens, k_cache.shape[2], short_keys, reduce)
            return reference(q, k_cache, v_cache, seq_lens, scale, sinks, window)
        if not 0 <= splits <= MAX_SPLITS:
            raise OpError(f"{OP}: splits={splits}, expected 0 (automatic) to {MAX_SPLITS}")
        _check_lens(seq_lens, k_cache.shape[2], short_keys, reduce)
        out = new_output(q.shape, q)
        _ext.load().attention_decode(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(),
                                     seq_lens.contiguous(), out, float(scale), int(splits),
                                     None if sinks is None else sinks.float().contiguous(), int(window),
                                     int(short_keys), bool(reduce))
        return out
