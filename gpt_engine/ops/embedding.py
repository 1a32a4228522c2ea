"""Token + learned position embedding: out[b, t] = wte[ids[b, t]] + wpe[pos[b, t]] (GPT-2)."""
from __future__ import annotations

import torch

from . import _ext
from ._common import new_output, OpError, OpIndexError, acc_dtype, capturing, check_float, check_same, check_shape

OP = "embedding"


def _check(ids, pos, wte, wpe):
    for name, t in (("ids", ids), ("pos", pos)):
        if t.dtype != torch.int64:
            raise OpError(f"{OP}: {name} has dtype {t.dtype}, expected int64")
        if t.dim() != 2:
            raise OpError(f"{OP}: {name} has shape {list(t.shape)}, expected [B, T]")
    if pos.shape != ids.shape:
        raise OpError(f"{OP}: pos has shape {list(pos.shape)} but ids has {list(ids.shape)}")
    check_float(OP, "wte", wte)
    check_shape(OP, "wte", wte, (None, None))
    check_shape(OP, "wpe", wpe, (None, wte.shape[1]))
    check_same(OP, "wte", wte, wpe=wpe)
    for name, t in (("ids", ids), ("pos", pos)):
        if t.device != wte.device:
            raise OpError(f"{OP}: {name} is on {t.device} but wte is on {wte.device}")


def _check_range(ids, pos, wte, wpe):
    """Reads ids/pos back to the host (skipped while a CUDA graph is captured;
    the kernel then writes NaN rows for bad indices instead of reading out of bounds)."""
    if ids.numel() == 0 or capturing():
        return
    for name, t, rows, table in (("ids", ids, wte.shape[0], "wte"), ("pos", pos, wpe.shape[0], "wpe")):
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= rows:
            bad = lo if lo < 0 else hi
            raise OpIndexError(f"{OP}: {name} holds {bad}, outside [0, {rows}) of {table}")


def reference(ids, pos, wte, wpe):
    _check(ids, pos, wte, wpe)
    _check_range(ids, pos, wte, wpe)
    acc = acc_dtype(wte.dtype)
    return (wte[ids].to(acc) + wpe[pos].to(acc)).to(wte.dtype)


@torch.library.custom_op("gpt_engine::embedding", mutates_args=())
def embedding(ids: torch.Tensor, pos: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor) -> torch.Tensor:
    return reference(ids, pos, wte, wpe)


@embedding.register_fake
def _(ids, pos, wte, wpe):
    _check(ids, pos, wte, wpe)
    return wte.new_empty((*ids.shape, wte.shape[1]))


if _ext.available():

    @embedding.register_kernel("cuda")
    def _(ids, pos, wte, wpe):
        _check(ids, pos, wte, wpe)
        if wte.dtype == torch.float64:
            return reference(ids, pos, wte, wpe)
        out = new_output((*ids.shape, wte.shape[1]), wte)
        bad = torch.zeros(1, dtype=torch.int32, device=wte.device)
        _ext.load().embedding(ids.contiguous(), pos.contiguous(), wte.contiguous(), wpe.contiguous(), out, bad)
        # The kernel flags bad indices (writing NaN rows, never reading out of bounds); reading
        # the flag after the launch costs one sync and no extra pass over ids/pos.
        if not capturing() and bool(bad.item()):
            _check_range(ids, pos, wte, wpe)  # raises with the offending value
        return out
