"""Greedy decoding's last step, on the device: next_ids[r] = argmax(logits[r, :n_valid]) (the
lowest index among equal maxima, as torch.argmax), then pos[r] += 1 (optional). A NaN logit
raises bit 4 of ``status`` (int32 [1], optional) and is never picked. Used inside the decode
graph: nothing is read back to the host.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from ._common import OpError

OP = "sample_greedy"
STATUS_NON_FINITE = 4  # csrc/launchers.h kStatusNonFinite


def _check(logits, n_valid, next_ids, pos, status):
    if logits.dtype != torch.float32 or logits.dim() != 2:
        raise OpError(f"{OP}: logits must be float32 [rows, V], got {logits.dtype} {list(logits.shape)}")
    rows, v = logits.shape
    if not 1 <= n_valid <= v:
        raise OpError(f"{OP}: n_valid={n_valid} outside [1, {v}]")
    for name, t, dt, n in (("next_ids", next_ids, torch.int64, rows), ("pos", pos, torch.int64, rows),
                           ("status", status, torch.int32, 1)):
        if t is not None and (t.dtype != dt or t.numel() != n or t.device != logits.device):
            raise OpError(f"{OP}: {name} must be {dt} with {n} entries on {logits.device}")


def reference(logits, n_valid, next_ids, pos, status):
    _check(logits, n_valid, next_ids, pos, status)
    x = logits[:, :n_valid]
    nan = torch.isnan(x)
    # The kernels' rule (csrc/sample_greedy.cu): a NaN is never picked, so the answer is the lowest
    # index of the largest non-NaN entry, 0 when every entry is NaN. argmax after NaN -> -inf alone
    # differs where the non-NaN entries are all -inf and a NaN comes first (it would pick the NaN's
    # index): so the candidates are the maxima that are not NaN, and argmax of that mask gives the
    # first one (torch.argmax returns the first of equal maxima; an all-False row gives 0).
    no_nan = torch.where(nan, float("-inf"), x)  # NaN out of the running; +-inf stay
    cand = (no_nan == no_nan.amax(dim=-1, keepdim=True)) & ~nan
    next_ids.copy_(cand.to(torch.uint8).argmax(dim=-1).reshape(next_ids.shape))
    if pos is not None:
        pos.add_(1)
    if status is not None:
        status.bitwise_or_(nan.any().to(torch.int32) * STATUS_NON_FINITE)


@torch.library.custom_op("gpt_engine::sample_greedy", mutates_args=("next_ids", "pos", "status"))
def sample_greedy(logits: torch.Tensor, n_valid: int, next_ids: torch.Tensor, pos: Optional[torch.Tensor],
                  status: Optional[torch.Tensor]) -> None:
    reference(logits, n_valid, next_ids, pos, status)


@sample_greedy.register_fake
def _(logits, n_valid, next_ids, pos, status):
    _check(logits, n_valid, next_ids, pos, status)


if _ext.available():

    @sample_greedy.register_kernel("cuda")
    def _(logits, n_valid, next_ids, pos, status):
        _check(logits, n_valid, next_ids, pos, status)
        if logits.stride(-1) != 1 or not next_ids.is_contiguous() or (pos is not None and not pos.is_contiguous()):
            return reference(logits, n_valid, next_ids, pos, status)
        _ext.load().sample_greedy(logits, int(n_valid), next_ids, pos, status)
