"""Between the fused QKV projection and attention: split into heads, RoPE, KV-cache append.

qkv [ntok, (Hq + 2 Hkv) * D] (q heads, then k heads, then v heads) with tokens ordered
sequence-major (ntok = B * T); pos [ntok] int64, each token's position. Returns q [ntok, Hq, D]
and k, v [ntok, Hkv, D] (q and k rotated). With caches [B, Hkv, S, D], k/v of token i are also
written at row pos[i] of sequence i // T, and ``lens[b]`` (int32 [B], optional) becomes the
position of sequence b's last token + 1 (the length the decode attention reads next).

RoPE layouts (``rope_mode``): 0 none (GPT-2); 1 adjacent pairs (2i, 2i+1), llama.cpp's normal
mode, which the llama converter's q/k row permutation produces; 2 neox, pairs (i, i + R/2).
Pair i turns by pos * theta^(-2i/R), read from fp32 tables cos/sin [rows, R/2] that the model
builds once. A position outside the cache or the tables raises bit 2 of ``status`` (int32 [1],
optional) instead of writing: q gets NaN there, the cache is untouched; without a status
tensor and outside graph capture the host check raises at once.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpt_engine.errors import ContextOverflowError

from . import _ext
from ._common import OpError, capturing, check_float, check_shape, new_output

OP = "qkv_rope"
ROPE_MODES = {"none": 0, "adjacent": 1, "neox": 2}  # csrc/launchers.h RopeMode
STATUS_BAD_POSITION = 2                            # csrc/launchers.h kStatusBadPosition


def _check(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode, rope_dim):
    check_float(OP, "qkv", qkv)
    check_shape(OP, "qkv", qkv, (None, None))
    ntok, width = qkv.shape
    if pos.dtype != torch.int64 or tuple(pos.shape) != (ntok,) or pos.device != qkv.device:
        raise OpError(f"{OP}: pos must be int64 [{ntok}] on {qkv.device}, got {pos.dtype} {list(pos.shape)} on {pos.device}")
    if seq_len < 1 or ntok % seq_len:
        raise OpError(f"{OP}: {ntok} tokens are not whole sequences of {seq_len}")
    if n_head < 1 or n_head_kv < 1 or width % (n_head + 2 * n_head_kv):
        raise OpError(f"{OP}: qkv width {width} is not (n_head {n_head} + 2 * n_head_kv {n_head_kv}) * head dim")
    d = width // (n_head + 2 * n_head_kv)
    if d % 2:
        raise OpError(f"{OP}: head dim {d} is odd")
    if rope_mode not in ROPE_MODES.values():
        raise OpError(f"{OP}: unknown rope mode {rope_mode}")
    if (k_cache is None) != (v_cache is None):
        raise OpError(f"{OP}: give both caches or neither")
    if k_cache is not None:
        check_shape(OP, "k_cache", k_cache, (ntok // seq_len, n_head_kv, None, d))
        check_shape(OP, "v_cache", v_cache, tuple(k_cache.shape))
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            if t.dtype != qkv.dtype or t.device != qkv.device:
                raise OpError(f"{OP}: {name} is {t.dtype} on {t.device}, expected {qkv.dtype} on {qkv.device}")
    if rope_mode:
        if not (0 < rope_dim <= d and rope_dim % 2 == 0):
            raise OpError(f"{OP}: rope dim {rope_dim} must be even and in (0, {d}]")
        for name, t in (("cos", cos), ("sin", sin)):
            if t is None or t.dtype != torch.float32 or t.dim() != 2 or t.shape[1] != rope_dim // 2 or t.device != qkv.device:
                raise OpError(f"{OP}: {name} must be float32 [rows, {rope_dim // 2}] on {qkv.device}")
    if lens is not None and (lens.dtype != torch.int32 or tuple(lens.shape) != (ntok // seq_len,) or lens.device != qkv.device):
        raise OpError(f"{OP}: lens must be int32 [{ntok // seq_len}] on {qkv.device}")
    if status is not None and (status.dtype != torch.int32 or status.numel() != 1 or status.device != qkv.device):
        raise OpError(f"{OP}: status must be one int32 on {qkv.device}")
    return ntok, d


def _bad_positions(pos, k_cache, cos, rope_mode):
    limit = k_cache.shape[2] if k_cache is not None else None
    if rope_mode:
        limit = cos.shape[0] if limit is None else min(limit, cos.shape[0])
    if limit is None:
        return pos < 0, 2**63 - 1
    return (pos < 0) | (pos >= limit), limit


def _raise_if_bad(pos, k_cache, cos, rope_mode, status):
    """The host check (CPU, or outside graph capture without a status word)."""
    if status is not None or capturing() or pos.numel() == 0:
        return
    bad, limit = _bad_positions(pos, k_cache, cos, rope_mode)
    if bool(bad.any()):
        p = int(pos[bad][0])
        raise ContextOverflowError(f"{OP}: position {p} is outside the KV cache / RoPE table of {limit} positions")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_mode: int, rope_dim: int) -> torch.Tensor:
    """x [ntok, H, D]; cos/sin [ntok, R/2] (already looked up per token). fp32, rounded once."""
    if not rope_mode:
        return x
    xf = x.float()
    r = rope_dim
    if rope_mode == ROPE_MODES["adjacent"]:
        pairs = xf[..., :r].reshape(*x.shape[:-1], r // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
    else:
        a, b = xf[..., : r // 2], xf[..., r // 2: r]
    c, s = cos[:, None, :], sin[:, None, :]
    ra, rb = a * c - b * s, a * s + b * c
    if rope_mode == ROPE_MODES["adjacent"]:
        rot = torch.stack((ra, rb), dim=-1).reshape(*x.shape[:-1], r)
    else:
        rot = torch.cat((ra, rb), dim=-1)
    return torch.cat((rot, xf[..., r:]), dim=-1).to(x.dtype)


def reference(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode, rope_dim):
    ntok, d = _check(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode,
                     rope_dim)
    hkv = n_head_kv
    _raise_if_bad(pos, k_cache, cos, rope_mode, status)
    q = qkv[:, : n_head * d].reshape(ntok, n_head, d)
    k = qkv[:, n_head * d: (n_head + hkv) * d].reshape(ntok, hkv, d)
    v = qkv[:, (n_head + hkv) * d:].reshape(ntok, hkv, d).clone()
    bad, _ = _bad_positions(pos, k_cache, cos, rope_mode)
    safe = torch.where(bad, torch.zeros_like(pos), pos)
    if rope_mode:
        c, s = cos[safe], sin[safe]
        q, k = rotate(q, c, s, rope_mode, rope_dim), rotate(k, c, s, rope_mode, rope_dim)
    else:
        q, k = q.clone(), k.clone()
    q[bad] = float("nan")
    k[bad] = float("nan")
    v[bad] = float("nan")
    if k_cache is not None:
        seq = torch.arange(ntok, device=qkv.device) // seq_len
        ok = ~bad
        # [B, S, Hkv, D] views of the caches: row (seq, pos) takes the token's heads
        k_cache.transpose(1, 2)[seq[ok], pos[ok]] = k[ok]
        v_cache.transpose(1, 2)[seq[ok], pos[ok]] = v[ok]
    last = torch.arange(seq_len - 1, ntok, seq_len, device=qkv.device)
    if lens is not None:
        lens.copy_(torch.where(bad[last], lens, (pos[last] + 1).to(torch.int32)))
    if status is not None:
        status.bitwise_or_(bad.any().to(torch.int32) * STATUS_BAD_POSITION)
    return q, k, v


@torch.library.custom_op("gpt_engine::qkv_rope", mutates_args=("k_cache", "v_cache", "lens", "status"))
def qkv_rope(qkv: torch.Tensor, pos: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
             k_cache: Optional[torch.Tensor], v_cache: Optional[torch.Tensor], lens: Optional[torch.Tensor],
             status: Optional[torch.Tensor], n_head: int, n_head_kv: int, seq_len: int, rope_mode: int,
             rope_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return reference(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode,
                     rope_dim)


@qkv_rope.register_fake
def _(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode, rope_dim):
    ntok, d = _check(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode,
                     rope_dim)
    kv = (ntok, n_head_kv, d)
    return qkv.new_empty((ntok, n_head, d)), qkv.new_empty(kv), qkv.new_empty(kv)


if _ext.available():

    @qkv_rope.register_kernel("cuda")
    def _(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode, rope_dim):
        ntok, d = _check(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len, rope_mode,
                         rope_dim)
        if qkv.dtype == torch.float64 or (k_cache is not None and not (k_cache.is_contiguous()
                                                                       and v_cache.is_contiguous())):
            return reference(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, seq_len,
                             rope_mode, rope_dim)
        _raise_if_bad(pos, k_cache, cos, rope_mode, status)
        q = new_output((ntok, n_head, d), qkv)
        k = new_output((ntok, n_head_kv, d), qkv)
        v = new_output((ntok, n_head_kv, d), qkv)
        _ext.load().qkv_rope(qkv.contiguous(), pos.contiguous(), cos, sin, q, k, v, k_cache, v_cache, lens, status,
                             int(seq_len), int(rope_mode), int(rope_dim))
        return q, k, v
