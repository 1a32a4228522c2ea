"""gpt-oss's MoE experts for many tokens (prefill) as one op with no host sync: a grouped GEMM
over the chosen (token, expert) pairs only (csrc/moe_grouped.cu).

``moe_grouped(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)`` has
``moe_experts``' signature and semantics (ops/moe.py; the reference is the same
``experts_reference``): per token, sum over its k chosen experts e (ascending e, fp32) of
weight * down_e(swiglu_oai(gate_e(h), up_e(h))), each projection with its bias, rounded once to
h's dtype, plus ``residual`` when given. Expert stacks are the MXFP4 bytes as the model holds them.

On the GPU (fp16/bf16, C and F multiples of 64) the routing becomes a static layout on the
device, sizes fixed by (M, k, E) so the whole thing is graph-capturable:
  * ``order`` [M*k]: the pair ids t*k + j sorted by expert (stable; a counting sort through a
    [M*k, E] cumsum), ``counts`` [E] pairs per expert;
  * ``dest`` [M*k]: t*k + the rank of the pair's expert among token t's k experts (ascending,
    equal ids by slot), where the down kernel writes the pair's weighted fp32 output;
then two kernels (gate/up + SwiGLU into act [M*k, F] in expert order; down into part [M*k, C]
fp32) and the combine: each token's k rows summed in rank order, i.e. ascending expert order as
the reference sums them (deterministic: no atomics on values). Other dtypes or sizes take
``moe_experts``. The layout is one kernel launch (``routing_layout``, the torch ops it equals,
beyond LAYOUT_KERNEL_MAX_PAIRS pairs) and the combine one (``combine``, likewise, bit for bit).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _ext
from . import moe as moe_mod

KERNEL_K_MULTIPLE = 64  # csrc/moe_grouped.cu kTK: the K of each product (C, then F) per stage
KERNEL_MAX_EXPERTS = 256  # csrc/moe_grouped.cu kMaxExperts: counts staged in shared memory
LAYOUT_KERNEL_MAX_PAIRS = 200 * 1024 // 4  # csrc/launchers.h kMoeGroupedLayoutMaxSmem: ids staged as int32


def kernel_supports(c: int, f: int, dtype: torch.dtype, n_expert: int) -> bool:
    """Whether csrc/moe_grouped.cu serves these sizes (else ``moe_experts`` runs)."""
    return dtype in (torch.float16, torch.bfloat16) and c > 0 and f > 0 and \
        c % KERNEL_K_MULTIPLE == 0 and f % KERNEL_K_MULTIPLE == 0 and 1 <= n_expert <= KERNEL_MAX_EXPERTS


def routing_layout(ids: torch.Tensor, n_expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order [M*k] int32, counts [E] int32, dest [M*k] int32) from ids [M, k], on ids' device,
    with no host sync (shapes depend on M, k, E only). An id outside [0, E) is clamped, as the
    per-token kernel (csrc/moe.cu clamp_expert) does."""
    m, k = ids.shape
    flat = ids.reshape(-1).long().clamp(0, n_expert - 1)
    # a counting sort instead of torch.sort (sure to hold no host sync, and stable by
    # construction): hit[p, e] = pair p chose e; its cumsum down the pairs gives each pair's
    # place among its expert's pairs, the column sums the counts
    hit = flat[:, None] == torch.arange(n_expert, device=ids.device)[None, :]          # [P, E]
    within = hit.cumsum(0, dtype=torch.int32).gather(1, flat[:, None]).squeeze(1) - 1  # [P]
    counts = hit.sum(0, dtype=torch.int32)                                             # [E]
    starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    order = torch.empty_like(within).scatter_(0, (starts[flat] + within).long(),
                                               torch.arange(m * k, dtype=torch.int32, device=ids.device))
    ci = flat.view(m, k)
    slot = torch.arange(k, device=ids.device)
    # before[t, j, j']: pair (t, j') comes before (t, j) in ascending (expert, slot) order
    before = (ci[:, None, :] < ci[:, :, None]) | ((ci[:, None, :] == ci[:, :, None]) & (slot[None, None, :] < slot[None, :, None]))
    rank = before.sum(-1)                                               # [M, k]
    dest = (torch.arange(m, device=ids.device)[:, None] * k + rank).reshape(-1).to(torch.int32)
    return order, counts, dest


def combine(part: torch.Tensor, k: int, dtype: torch.dtype, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """part [M*k, C] fp32 (row t*k + r: token t's weighted output of its r-th expert in ascending
    order) -> [M, C]: the k rows summed in that order in fp32 (the reference's order), rounded
    once to dtype, plus the residual (in dtype, as the reference adds it)."""
    pv = part.view(-1, k, part.shape[1])
    acc = pv[:, 0].clone()
    for r in range(1, k):
        acc += pv[:, r]
    out = acc.to(dtype)
    return out if residual is None else residual + out


def layout_reference(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
    """The CUDA path's data flow in plain torch (any device; eager, it dequantizes every expert):
    routing_layout, act in expert order, part rows at dest, combine. For testing the layout and
    the combine against ``experts_reference`` where no GPU is."""
    m, c, n_expert, f = moe_mod._dims(h, gate_bias)
    k = ids.shape[1]
    order, counts, dest = routing_layout(ids, n_expert)
    starts = torch.cumsum(counts, 0) - counts
    act = torch.empty((m * k, f), dtype=h.dtype, device=h.device)
    part = torch.empty((m * k, c), dtype=torch.float32, device=h.device)
    for e in range(n_expert):
        pos = torch.arange(int(starts[e]), int(starts[e] + counts[e]), device=h.device)
        pairs = order[pos].long()
        x = h[pairs // k]
        g = F.linear(x, moe_mod._expert(gate, e, f, c, h.dtype), gate_bias[e])
        u = F.linear(x, moe_mod._expert(up, e, f, c, h.dtype), up_bias[e])
        act[pos] = moe_mod.swiglu_oai(g, u)
    for e in range(n_expert):
        pos = torch.arange(int(starts[e]), int(starts[e] + counts[e]), device=h.device)
        pairs = order[pos].long()
        y = F.linear(act[pos], moe_mod._expert(down, e, c, f, h.dtype), down_bias[e])
        part[dest[pairs].long()] = y.float() * weights.reshape(-1)[pairs, None]
    return combine(part, k, h.dtype, residual)


@torch.library.custom_op("gpt_engine::moe_grouped", mutates_args=())
def moe_grouped(h: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                gate_bias: torch.Tensor, up: torch.Tensor, up_bias: torch.Tensor, down: torch.Tensor,
                down_bias: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    return moe_mod.experts_reference(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)


@moe_grouped.register_fake
def _(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
    moe_mod._check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
    return h.new_empty(h.shape)


def transient_bytes(m: int, k: int, c: int, f: int, n_expert: int, dtype: torch.dtype) -> int:
    """Device bytes the CUDA path holds at its peak for M tokens besides its output (memory
    estimate). With the layout kernel (M*k <= LAYOUT_KERNEL_MAX_PAIRS): order, dest, counts,
    part [M*k, C] fp32 and act [M*k, F]; the combine kernel writes the output directly. Else
    the torch layout (int64 ids and their clamped copy, the [M*k, E] hits and their
    int32 cumsum, int32 within/order/arange/dest, int64 positions, the [M, k, k] comparisons,
    int64 ranks and dest before the cast), part [M*k, C] fp32, and the larger of act [M*k, F]
    in dtype (freed after the down kernel) and the combine's fp32 sum [M, C] with its rounded
    copy."""
    el = torch.empty((), dtype=dtype).element_size()
    p = m * k
    if p <= LAYOUT_KERNEL_MAX_PAIRS:  # the layout kernel: order, dest, counts; the combine kernel
        return p * 8 + n_expert * 4 + p * c * 4 + p * f * el
    layout = p * (8 + 8 + 4 + 4 + 4 + 4 + 8) + p * n_expert * (1 + 4) + 4 * m * k * k + p * (8 + 8) + n_expert * 12
    return layout + p * c * 4 + max(p * f * el, m * c * (4 + el))


if _ext.available():

    @moe_grouped.register_kernel("cuda")
    def _(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
        moe_mod._check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
        m, c, n_expert, f = moe_mod._dims(h, gate_bias)
        if not kernel_supports(c, f, h.dtype, n_expert):
            return moe_mod.moe_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
        k = ids.shape[1]
        h = h.contiguous()
        if h.data_ptr() % 16:  # the kernel loads h rows as 16-byte vectors
            h = h.clone()
        ext = _ext.load()
        if m * k <= LAYOUT_KERNEL_MAX_PAIRS:  # one launch; else the torch ops (same result)
            order = torch.empty(m * k, dtype=torch.int32, device=h.device)
            dest = torch.empty_like(order)
            counts = torch.empty(n_expert, dtype=torch.int32, device=h.device)
            ext.moe_grouped_layout(ids.contiguous(), order, counts, dest)
        else:
            order, counts, dest = routing_layout(ids, n_expert)
        act = torch.empty((m * k, f), dtype=h.dtype, device=h.device)
        ext.moe_grouped_gate_up(h, order, counts, gate.contiguous(), gate_bias.contiguous(), up.contiguous(),
                                up_bias.contiguous(), act, k)
        part = torch.empty((m * k, c), dtype=torch.float32, device=h.device)
        ext.moe_grouped_down(act, order, counts, dest, weights.reshape(-1).contiguous(), down.contiguous(),
                             down_bias.contiguous(), part)
        del act
        out = torch.empty((m, c), dtype=h.dtype, device=h.device)  # combine()'s sums, in one launch
        ext.moe_grouped_combine(part, None if residual is None else residual.contiguous(), out, k)
        return out
