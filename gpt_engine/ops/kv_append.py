"""Writes new keys/values into the preallocated KV cache at positions [start_pos, start_pos + T)."""
from __future__ import annotations

import torch

from gpt_engine.errors import ContextOverflowError

from . import _ext
from ._attn_common import heads_packed
from ._common import OpError, check_float, check_same, check_shape

OP = "kv_append"


def _check(k_cache, v_cache, k, v, start_pos):
    check_float(OP, "k_cache", k_cache)
    check_shape(OP, "k_cache", k_cache, (None, None, None, None))
    b, hkv, s, d = k_cache.shape
    check_shape(OP, "v_cache", v_cache, tuple(k_cache.shape))
    check_shape(OP, "k", k, (b, None, hkv, d))
    check_shape(OP, "v", v, tuple(k.shape))
    check_same(OP, "k_cache", k_cache, v_cache=v_cache, k=k, v=v)
    t = k.shape[1]
    if start_pos < 0:
        raise OpError(f"{OP}: start_pos={start_pos} is negative")
    if start_pos + t > s:
        raise ContextOverflowError(
            f"{OP}: writing {t} tokens at position {start_pos} needs {start_pos + t} slots, the KV cache holds {s}")


def reference(k_cache, v_cache, k, v, start_pos):
    _check(k_cache, v_cache, k, v, start_pos)
    t = k.shape[1]
    k_cache[:, :, start_pos:start_pos + t] = k.transpose(1, 2)
    v_cache[:, :, start_pos:start_pos + t] = v.transpose(1, 2)


@torch.library.custom_op("gpt_engine::kv_append", mutates_args=("k_cache", "v_cache"))
def kv_append(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              start_pos: int) -> None:
    reference(k_cache, v_cache, k, v, start_pos)


@kv_append.register_fake
def _(k_cache, v_cache, k, v, start_pos):
    _check(k_cache, v_cache, k, v, start_pos)


if _ext.available():

    @kv_append.register_kernel("cuda")
    def _(k_cache, v_cache, k, v, start_pos):
        _check(k_cache, v_cache, k, v, start_pos)
        if k_cache.dtype == torch.float64 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
            return reference(k_cache, v_cache, k, v, start_pos)
        k = k if heads_packed(k) else k.contiguous()
        v = v if heads_packed(v) else v.contiguous()
        _ext.load().kv_append(k_cache, v_cache, k, v, int(start_pos))
