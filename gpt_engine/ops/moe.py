"""gpt-oss's mixture of experts as two ops with no host sync on the GPU (GX-002).

``moe_route(h, router, router_bias, k)``: router logits h W^T + b in fp32 (W [E, C] and b [E]
fp32, as the model holds them), the top k experts per token (descending) and a softmax over
those k logits only -> (ids [M, k] int32, weights [M, k] fp32).

``moe_norm_route(x, norm_weight, eps, router, router_bias, k)``: the RMSNorm in front of the
MoE (fp32, rounded to x's dtype) fused with the routing -> (h, ids, weights).

``moe_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)``:
for each token, sum_j weights[j] * down_e(swiglu_oai(gate_e(h), up_e(h))) over its chosen
experts e = ids[j], each projection with its bias; plus ``residual`` when given. The expert
stacks are MXFP4 bytes as the model holds them (``ExpertStack.weight.raw``): gate/up
[E*F, C/32*17], down [E*C, F/32*17], expert e = rows e*F.. (e*C..); biases [E, F] / [E, C]
in h's dtype. On the GPU only the chosen experts' bytes are read (csrc/moe.cu).

The references are GptOss.moe's math (models/gpt_oss.py), split at the routing.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import quants
from . import _ext
from ._common import OpError, check_float, check_shape, new_output

# gpt-oss's clamped SwiGLU (OpenAI's reference gpt_oss/torch/model.py swiglu: alpha 1.702,
# limit 7.0); the same constants as models/gpt_oss.py, which this module cannot import (the
# model imports the ops).
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0
BLOCK_BYTES = 17       # MXFP4: one E8M0 scale byte + 16 bytes of E2M1 nibbles (32 values)
KERNEL_MAX_DIM = 4096  # csrc/launchers.h kMoeMaxBlocksPerLane * 32 * 32
KERNEL_MAX_ROWS = 65535  # tokens x experts per launch (grid y)
ROUTE_KERNEL_MAX_C = 200 * 1024 // 4  # csrc/launchers.h kMoeRouteMaxSmem: h[m] staged as fp32
DOWN_KERNEL_MAX_SMEM = 227 * 1024  # the down kernel stages act [k, F] fp32 (sm_90's per-block limit)


def swiglu_oai(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.clamp(max=SWIGLU_LIMIT)
    u = up.clamp(min=-SWIGLU_LIMIT, max=SWIGLU_LIMIT)
    return g * torch.sigmoid(SWIGLU_ALPHA * g) * (u + 1)


# --------------------------------------------------------------------------- routing

def _check_route(h, router, router_bias, k):
    check_float("moe_route", "h", h)
    check_shape("moe_route", "h", h, (None, None))
    e = router.shape[0] if router.dim() == 2 else -1
    check_shape("moe_route", "router", router, (e, h.shape[1]))
    check_shape("moe_route", "router_bias", router_bias, (e,))
    if router.dtype != torch.float32 or router_bias.dtype != torch.float32:
        raise OpError(f"moe_route: router and router_bias must be float32, got {router.dtype}, {router_bias.dtype}")
    if not 1 <= k <= e:
        raise OpError(f"moe_route: k={k} experts out of {e}")


def route_reference(h, router, router_bias, k):
    _check_route(h, router, router_bias, k)
    logits = F.linear(h.float(), router, router_bias)          # [M, E] fp32
    top, chosen = torch.topk(logits, k, dim=-1)
    return chosen.to(torch.int32), torch.softmax(top, dim=-1)   # softmax over the k chosen only


@torch.library.custom_op("gpt_engine::moe_route", mutates_args=())
def moe_route(h: torch.Tensor, router: torch.Tensor, router_bias: torch.Tensor,
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return route_reference(h, router, router_bias, k)


@moe_route.register_fake
def _(h, router, router_bias, k):
    _check_route(h, router, router_bias, k)
    m = h.shape[0]
    return h.new_empty((m, k), dtype=torch.int32), h.new_empty((m, k), dtype=torch.float32)


def _check_norm_route(x, norm_weight, eps, router, router_bias, k):
    _check_route(x, router, router_bias, k)
    check_shape("moe_norm_route", "norm_weight", norm_weight, (x.shape[1],))
    if norm_weight.dtype != torch.float32:
        raise OpError(f"moe_norm_route: norm_weight must be float32, got {norm_weight.dtype}")
    if not eps >= 0:
        raise OpError(f"moe_norm_route: eps must be >= 0, got {eps}")


def norm_route_reference(x, norm_weight, eps, router, router_bias, k):
    """gpt-oss's post-attention RMSNorm as the GPU model ran it before this op (torch's rms_norm
    on the fp32 row, rounded once to x's dtype), then ``route_reference`` on the rounded h."""
    _check_norm_route(x, norm_weight, eps, router, router_bias, k)
    h = F.rms_norm(x.float(), (x.shape[-1],), norm_weight, eps).to(x.dtype)
    ids, weights = route_reference(h, router, router_bias, k)
    return h, ids, weights


@torch.library.custom_op("gpt_engine::moe_norm_route", mutates_args=())
def moe_norm_route(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, router: torch.Tensor,
                   router_bias: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = RMSNorm(x; norm_weight, eps) in fp32 rounded to x's dtype, and moe_route(h): one
    kernel on the GPU where the model ran three (to fp32, rms_norm, back) and the routing."""
    return norm_route_reference(x, norm_weight, eps, router, router_bias, k)


@moe_norm_route.register_fake
def _(x, norm_weight, eps, router, router_bias, k):
    _check_norm_route(x, norm_weight, eps, router, router_bias, k)
    m = x.shape[0]
    return (x.new_empty(x.shape), x.new_empty((m, k), dtype=torch.int32),
            x.new_empty((m, k), dtype=torch.float32))


def _route_kernel_serves(h, router, k) -> bool:
    return router.shape[0] <= 256 and k <= 32 and h.shape[1] <= ROUTE_KERNEL_MAX_C and h.dtype != torch.float64


# --------------------------------------------------------------------------- experts

def _dims(h, gate_bias):
    return h.shape[0], h.shape[1], gate_bias.shape[0], gate_bias.shape[1]  # M, C, E, F


def _check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual):
    op = "moe_experts"
    check_float(op, "h", h)
    check_shape(op, "h", h, (None, None))
    if gate_bias.dim() != 2:
        raise OpError(f"{op}: gate_bias has shape {tuple(gate_bias.shape)}, expected [E, F]")
    m, c, e, f = _dims(h, gate_bias)
    if c % 32 or f % 32:
        raise OpError(f"{op}: C={c} and F={f} must be multiples of 32 (MXFP4 blocks)")
    k = ids.shape[1] if ids.dim() == 2 else -1
    check_shape(op, "ids", ids, (m, k))
    check_shape(op, "weights", weights, (m, k))
    if ids.dtype != torch.int32 or weights.dtype != torch.float32:
        raise OpError(f"{op}: ids must be int32 and weights float32, got {ids.dtype}, {weights.dtype}")
    for name, t, shape in (("gate", gate, (e * f, c // 32 * BLOCK_BYTES)), ("up", up, (e * f, c // 32 * BLOCK_BYTES)),
                           ("down", down, (e * c, f // 32 * BLOCK_BYTES))):
        check_shape(op, name, t, shape)
        if t.dtype != torch.uint8:
            raise OpError(f"{op}: {name} must be the MXFP4 bytes (uint8), got {t.dtype}")
    check_shape(op, "up_bias", up_bias, (e, f))
    check_shape(op, "down_bias", down_bias, (e, c))
    for name, t in (("gate_bias", gate_bias), ("up_bias", up_bias), ("down_bias", down_bias)) + \
            ((("residual", residual),) if residual is not None else ()):
        if t.dtype != h.dtype:
            raise OpError(f"{op}: {name} has dtype {t.dtype}, expected h's {h.dtype}")
    if residual is not None:
        check_shape(op, "residual", residual, (m, c))
    for name, t in (("ids", ids), ("weights", weights), ("gate", gate), ("gate_bias", gate_bias), ("up", up),
                    ("up_bias", up_bias), ("down", down), ("down_bias", down_bias), ("residual", residual)):
        if t is not None and t.device != h.device:
            raise OpError(f"{op}: {name} is on {t.device} but h is on {h.device}")


def _expert(raw: torch.Tensor, e: int, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Expert e's [rows, cols] matrix from the stacked MXFP4 bytes (ExpertStack.matrix)."""
    block = raw[e * rows:(e + 1) * rows]
    return quants.dequantize(block, quants.Q.MXFP4).reshape(rows, cols).to(dtype)


def experts_reference(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
    """GptOss.moe after the routing: each chosen expert on the tokens that chose it, in the
    activation dtype; weighted outputs summed in fp32, rounded, then added to the residual.
    Picks the experts on the host (torch.unique): eager only."""
    _check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
    m, c, n_exp, f = _dims(h, gate_bias)
    dt = h.dtype
    out = torch.zeros((m, c), dtype=torch.float32, device=h.device)
    for e in torch.unique(ids).tolist():
        if not 0 <= e < n_exp:
            raise OpError(f"moe_experts: expert id {e} outside [0, {n_exp})")
        tok, slot = torch.where(ids == e)
        x = h[tok]
        g = F.linear(x, _expert(gate, e, f, c, dt), gate_bias[e])
        u = F.linear(x, _expert(up, e, f, c, dt), up_bias[e])
        y = F.linear(swiglu_oai(g, u), _expert(down, e, c, f, dt), down_bias[e])
        out.index_add_(0, tok, y.float() * weights[tok, slot, None])
    out = out.to(dt)
    return out if residual is None else residual + out


@torch.library.custom_op("gpt_engine::moe_experts", mutates_args=())
def moe_experts(h: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                gate_bias: torch.Tensor, up: torch.Tensor, up_bias: torch.Tensor, down: torch.Tensor,
                down_bias: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    return experts_reference(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)


@moe_experts.register_fake
def _(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
    _check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
    return h.new_empty(h.shape)


def kernel_supports(c: int, f: int, k: int, dtype: torch.dtype) -> bool:
    """Whether csrc/moe.cu serves these sizes (else the reference runs, with its host sync)."""
    return (dtype in (torch.float16, torch.bfloat16, torch.float32) and 0 < c <= KERNEL_MAX_DIM
            and 0 < f <= KERNEL_MAX_DIM and c % 32 == 0 and f % 32 == 0 and k * f * 4 <= DOWN_KERNEL_MAX_SMEM
            and k <= KERNEL_MAX_ROWS)


if _ext.available():

    def _launch_route(h, router, router_bias, k, norm_weight=None, eps=0.0, h_out=None):
        """The routing kernel on contiguous h [M, C] -> (ids, weights); with norm_weight it
        first RMS-normalises h into h_out and routes that."""
        m = h.shape[0]
        ids = torch.empty((m, k), dtype=torch.int32, device=h.device)
        weights = torch.empty((m, k), dtype=torch.float32, device=h.device)
        _ext.load().moe_route(h, router.contiguous(), router_bias.contiguous(), ids, weights, norm_weight, eps, h_out)
        return ids, weights

    @moe_route.register_kernel("cuda")
    def _(h, router, router_bias, k):
        _check_route(h, router, router_bias, k)
        if not _route_kernel_serves(h, router, k):
            return route_reference(h, router, router_bias, k)
        return _launch_route(h.contiguous(), router, router_bias, k)

    @moe_norm_route.register_kernel("cuda")
    def _(x, norm_weight, eps, router, router_bias, k):
        _check_norm_route(x, norm_weight, eps, router, router_bias, k)
        if not _route_kernel_serves(x, router, k):
            return norm_route_reference(x, norm_weight, eps, router, router_bias, k)
        x = x.contiguous()
        h = new_output(x.shape, x)
        return (h, *_launch_route(x, router, router_bias, k, norm_weight.contiguous(), float(eps), h))

    @moe_experts.register_kernel("cuda")
    def _(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual=None):
        _check_experts(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
        m, c, _, f = _dims(h, gate_bias)
        k = ids.shape[1]
        if not kernel_supports(c, f, k, h.dtype):
            return experts_reference(h, ids, weights, gate, gate_bias, up, up_bias, down, down_bias, residual)
        h = h.contiguous()
        out = new_output(h.shape, h)
        per = max(1, KERNEL_MAX_ROWS // k)  # tokens per launch
        ext = _ext.load()
        # the expert stacks are the same for every chunk of tokens: made contiguous once, not per launch
        stacks = (gate.contiguous(), gate_bias.contiguous(), up.contiguous(), up_bias.contiguous(),
                  down.contiguous(), down_bias.contiguous())
        for s in range(0, m, per):
            e = min(m, s + per)
            act = torch.empty((e - s, k, f), dtype=torch.float32, device=h.device)
            ext.moe_experts(h[s:e], ids[s:e].contiguous(), weights[s:e].contiguous(), *stacks,
                            None if residual is None else residual[s:e].contiguous(), act, out[s:e])
        return out
