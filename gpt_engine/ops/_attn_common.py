"""Checks shared by the attention ops (head layout, GQA grouping)."""
from __future__ import annotations

import torch

from ._common import OpError

# Head dims and dtypes the CUDA attention kernels are compiled for; other
# combinations run the reference math on the GPU (same results, slower).
KERNEL_HEAD_DIMS = (64, 128)


def check_gqa(op: str, hq: int, hkv: int) -> None:
    if hkv == 0 or hq % hkv != 0:
        raise OpError(f"{op}: {hq} query heads is not a multiple of {hkv} kv heads")


def check_scale(op: str, scale: float) -> None:
    if not (scale > 0 and scale < float("inf")):
        raise OpError(f"{op}: scale={scale}, expected a finite positive number")


def check_sinks_window(op: str, q: torch.Tensor, hq: int, sinks, window: int) -> None:
    """Optional per-head sink logits [Hq] (any float dtype; the kernels read them as fp32) and
    sliding window (0: none)."""
    if sinks is not None:
        if not sinks.is_floating_point() or tuple(sinks.shape) != (hq,):
            raise OpError(f"{op}: sinks has shape {tuple(sinks.shape)} and dtype {sinks.dtype}, "
                          f"expected a float [{hq}] tensor")
        if sinks.device != q.device:
            raise OpError(f"{op}: sinks is on {sinks.device} but q is on {q.device}")
    if window < 0:
        raise OpError(f"{op}: window={window}, expected 0 (none) or a positive number of keys")


def heads_packed(t: torch.Tensor) -> bool:
    """[B, T, H, D] whose (H, D) block is dense; batch and token strides may be anything
    (e.g. q/k/v as views into one fused qkv projection)."""
    return t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]


def expand_kv(kv: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """Repeat each kv head for the `groups` query heads that share it (GQA)."""
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=head_dim)
