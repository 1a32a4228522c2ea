"""A decode step's attention input in one launch: the QKV product (norm fused in front, bias in
the epilogue), RoPE on q and k, k and v written into the KV cache at each sequence's device
position, the sequence lengths set. Equals ``linear`` followed by ``qkv_rope`` (its reference
is exactly that composition); the kernel is the linear op's GEMV with a QKV epilogue
(csrc/linear_impl.cuh): each warp holds a pair of weight rows, and the pairs are chosen so a rotary
pair (adjacent, or i and i + R/2 for neox) is computed by one warp.

x [B, K] (one token per sequence); weight raw [(Hq + 2 Hkv) D, bytes per row]; pos [B] int64;
caches [B, Hkv, S, D]; lens int32 [B] and status int32 [1] optional. Returns q [B, Hq, D].
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from . import linear as lin
from . import qkv_rope as qr
from ._common import OpError, new_output

OP = "linear_qkv"


def _check(x, weight, qtype, pos, k_cache, v_cache, n_head, n_head_kv):
    n, k = lin._shape_nk(weight, qtype)
    if x.dim() != 2 or x.shape[1] != k:
        raise OpError(f"{OP}: x has shape {list(x.shape)}, expected [B, {k}]")
    if n_head < 1 or n_head_kv < 1 or n % (n_head + 2 * n_head_kv):
        raise OpError(f"{OP}: {n} weight rows are not (n_head {n_head} + 2 * n_head_kv {n_head_kv}) heads")
    if k_cache is None or v_cache is None:
        raise OpError(f"{OP}: needs the KV cache (the prefill path uses linear + qkv_rope)")
    return n // (n_head + 2 * n_head_kv)


def reference(x, weight, qtype, bias, norm_weight, norm_bias, norm, eps, pos, cos, sin, k_cache, v_cache, lens,
              status, n_head, n_head_kv, rope_mode, rope_dim):
    _check(x, weight, qtype, pos, k_cache, v_cache, n_head, n_head_kv)
    qkv = lin.reference(x, weight, qtype, bias, None, norm_weight, norm_bias, norm, eps, 0, False)
    q, _, _ = qr.reference(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, 1, rope_mode,
                           rope_dim)
    return q


@torch.library.custom_op("gpt_engine::linear_qkv", mutates_args=("k_cache", "v_cache", "lens", "status"))
def linear_qkv_op(x: torch.Tensor, weight: torch.Tensor, qtype: int, bias: Optional[torch.Tensor],
                  norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor], norm: int, eps: float,
                  pos: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], k_cache: torch.Tensor,
                  v_cache: torch.Tensor, lens: Optional[torch.Tensor], status: Optional[torch.Tensor], n_head: int,
                  n_head_kv: int, rope_mode: int, rope_dim: int, fold_c: Optional[torch.Tensor] = None,
                  fold_d: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fold_c / fold_d: the GPU's LayerNorm fold (``linear.fold_constants``); the reference ignores them."""
    return reference(x, weight, qtype, bias, norm_weight, norm_bias, norm, eps, pos, cos, sin, k_cache, v_cache, lens,
                     status, n_head, n_head_kv, rope_mode, rope_dim)


@linear_qkv_op.register_fake
def _(x, weight, qtype, bias, norm_weight, norm_bias, norm, eps, pos, cos, sin, k_cache, v_cache, lens, status,
      n_head, n_head_kv, rope_mode, rope_dim, fold_c=None, fold_d=None):
    d = _check(x, weight, qtype, pos, k_cache, v_cache, n_head, n_head_kv)
    return x.new_empty((x.shape[0], n_head, d))


if _ext.available():

    @linear_qkv_op.register_kernel("cuda")
    def _(x, weight, qtype, bias, norm_weight, norm_bias, norm, eps, pos, cos, sin, k_cache, v_cache, lens, status,
          n_head, n_head_kv, rope_mode, rope_dim, fold_c=None, fold_d=None):
        d = _check(x, weight, qtype, pos, k_cache, v_cache, n_head, n_head_kv)
        n, k = lin._shape_nk(weight, qtype)
        lin._check(x, n, k, bias, None, norm, norm_weight, norm_bias, 0)
        qr._check(x.new_empty((x.shape[0], n)), pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, 1,
                  rope_mode, rope_dim)
        m = x.shape[0]
        rows = lin.packed_gemv_rows(weight, qtype, x.dtype, m, k) if qtype not in lin._DENSE else 0
        packed = rows > 0
        # The dense weight's dtype is known without building it (a packed one is dequantized to
        # x's dtype), so the fallback is decided first: it dequantizes in the reference, and a
        # dequantization here would be thrown away.
        dense_dtype = lin._DENSE[qtype] if qtype in lin._DENSE else x.dtype
        if (x.dtype not in lin._GEMV_ACT_DTYPES or m > lin.GEMV_MAX_ROWS or m == 0
                or (not packed and k % (16 // dense_dtype.itemsize))
                or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
            return reference(x, weight, qtype, bias, norm_weight, norm_bias, norm, eps, pos, cos, sin, k_cache,
                             v_cache, lens, status, n_head, n_head_kv, rope_mode, rope_dim)
        fold = {}
        if packed:  # the raw blocks go to the packed GEMV (csrc/linear_q.cu)
            w, wq = weight, int(qtype)
            fold = {"fold_c": fold_c, "fold_d": fold_d}
        else:
            w = weight.view(lin._DENSE[qtype]).view(n, k) if qtype in lin._DENSE else \
                lin.packed_dense(weight, qtype, n, k, x.dtype)
            wq = -1
            if qtype in lin._DENSE:
                fold = {"fold_c": fold_c, "fold_d": fold_d}
        qr._raise_if_bad(pos, k_cache, cos, rope_mode, status)
        q = new_output((m, n_head * d), x)
        x, pos = x.contiguous(), pos.contiguous()
        rows = rows or m  # (packed rows in slices where they do not fit at once: lin.packed_gemv_rows)
        for i in range(0, m, rows):  # each slice's sequences: their rows of q, pos, the caches, lens
            j = min(m, i + rows)
            _ext.load().linear_qkv(x[i:j], w, bias, norm_weight, norm_bias, q[i:j], norm, float(eps), pos[i:j],
                                   cos, sin, k_cache[i:j], v_cache[i:j], None if lens is None else lens[i:j], status,
                                   n_head, n_head_kv, rope_mode, rope_dim if rope_mode else 0, qtype=wq, **fold)
        return q.view(m, n_head, d)


def linear_qkv(x: torch.Tensor, w, bias: torch.Tensor | None, norm, pos: torch.Tensor, cos, sin,
               k_cache: torch.Tensor, v_cache: torch.Tensor, lens, status, n_head: int, n_head_kv: int,
               rope_mode: int, rope_dim: int) -> torch.Tensor:
    """q [B, Hq, D] for a ``QWeight`` w and a ``Norm`` (or None); see the module doc."""
    nk = lin.NORMS[norm.kind] if norm is not None else 0
    nw, nb, eps = (norm.weight, norm.bias, norm.eps) if norm is not None else (None, None, 1e-5)
    if x.device.type == "cuda":
        fc, fd = lin.fold_constants(w, norm, x) if x.shape[0] <= lin.GEMV_MAX_ROWS else (None, None)
        return linear_qkv_op(x, w.raw, int(w.qtype), bias, nw, nb, nk, float(eps), pos, cos, sin, k_cache, v_cache,
                             lens, status, n_head, n_head_kv, rope_mode, rope_dim, fc, fd)
    qkv = lin.linear(x, w, bias, norm=norm)
    q, _, _ = qr.qkv_rope(qkv, pos, cos, sin, k_cache, v_cache, lens, status, n_head, n_head_kv, 1, rope_mode,
                          rope_dim)
    return q
