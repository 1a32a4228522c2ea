"""A transformer block's MLP as one op:

    out = x + (act(norm(x) @ W_up.T + b_up) @ W_down.T + b_down)

act is tanh-GELU (GPT-2: W_up [F, C]) or SwiGLU (Llama: W_up = [gate; up] stacked, [2F, C], the
product silu(gate) * up). On the GPU, up to 16 rows of x (a decode step) take one kernel
(csrc/mlp_decode.cu) that reads both weights once without a grid-wide wait between the two
products; it reads the down weight transposed, ``DownT.weight_t`` [F, C], which the model stores
instead of the file's [C, F] (the same bytes, transposed once at load) wherever that kernel
takes the model's shape. Everywhere else the MLP is the two ``linear`` calls it always was
(prefill on the GPU multiplies by ``weight_t.T``, a transposed view cuBLAS reads as it is).

The fused kernel's down sums run in another order than the down GEMV's (per column over the
hidden units rather than along a row), so the two paths agree to fp32 rounding, not bit for bit;
each is deterministic and independent of the batch size. ``GPT_ENGINE_FUSED_MLP=0`` at load
keeps the file's layout and the two-launch path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import _ext
from ._common import OpError, check_float
from .linear import _DENSE, ACTS, GEMV_MAX_ROWS, NORMS, Norm, dense_forward, linear
from .residual_add import residual_add

OP = "mlp"
FUSED_ENV = "GPT_ENGINE_FUSED_MLP"
COUNTERS = 65  # csrc/launchers.h kMlpMaxGroups + 1


@dataclass(frozen=True)
class DownT:
    """An MLP's down weight stored transposed for the fused decode kernel: ``weight_t`` [F, C],
    the file's dense element type, the transpose of the file's [C, F]; ``counters`` the kernel's
    arrival counters (int32 zeros, one set per layer: a layer's MLP never runs twice at once)."""
    weight_t: torch.Tensor
    counters: torch.Tensor


def fused_enabled() -> bool:
    return os.environ.get(FUSED_ENV, "1") != "0"


def transposed_down(w, c: int, f: int, act: str, act_dtype: torch.dtype, device: torch.device) -> Optional[DownT]:
    """The file's down weight ``w`` (a QWeight [C, F] on the CPU) as a DownT on ``device`` when
    the fused kernel takes this MLP at every decode batch size (dense F32/F16/BF16, fp16/bf16
    activations, C and F within the kernel's limits); else None (keep the file's layout).
    Transposed on the host and uploaded once: no second copy is ever allocated on the GPU."""
    device = torch.device(device)
    if (device.type != "cuda" or not fused_enabled() or not _ext.available() or int(w.qtype) not in _DENSE
            or act_dtype not in (torch.float16, torch.bfloat16) or tuple(w.shape) != (c, f)):
        return None
    el = _DENSE[int(w.qtype)]
    with torch.cuda.device(device):
        probe = torch.empty(0, dtype=el, device=device)
        x = torch.empty(0, dtype=act_dtype, device=device)
        if not _ext.load().mlp_decode_supported(probe, x, GEMV_MAX_ROWS, c, f, ACTS[act]):
            return None
    wt = w.raw.view(el).view(c, f).t().contiguous().to(device)
    return DownT(wt, torch.zeros(COUNTERS, dtype=torch.int32, device=device))


def _up_dense(w_up: torch.Tensor, up_qtype: int, c: int) -> torch.Tensor:
    if up_qtype not in _DENSE:
        raise OpError(f"{OP}: the up weight must be dense (F32/F16/BF16) for the fused MLP, got ggml type {up_qtype}")
    if w_up.dtype != torch.uint8 or w_up.dim() != 2 or w_up.shape[1] % (c * _DENSE[up_qtype].itemsize):
        raise OpError(f"{OP}: w_up must be the raw bytes [R, {c} values] (uint8), got {w_up.dtype} {list(w_up.shape)}")
    return w_up.view(_DENSE[up_qtype]).view(-1, c)


def _check(x, norm_weight, norm_bias, norm, w_up, up_qtype, b_up, w_dt, b_down, act):
    check_float(OP, "x", x)
    if x.dim() != 2:
        raise OpError(f"{OP}: x has shape {list(x.shape)}, expected [M, C]")
    c = x.shape[1]
    if act not in (ACTS["gelu_tanh"], ACTS["swiglu"]):
        raise OpError(f"{OP}: act code {act}, expected gelu_tanh ({ACTS['gelu_tanh']}) or swiglu ({ACTS['swiglu']})")
    if w_dt.dim() != 2 or w_dt.shape[1] != c:
        raise OpError(f"{OP}: w_dt has shape {list(w_dt.shape)}, expected [F, {c}]")
    f = w_dt.shape[0]
    up = _up_dense(w_up, up_qtype, c)
    r = 2 * f if act == ACTS["swiglu"] else f
    if up.shape[0] != r:
        raise OpError(f"{OP}: w_up has {up.shape[0]} rows, expected {r}")
    if up.dtype != w_dt.dtype:
        raise OpError(f"{OP}: w_up is {up.dtype} but w_dt is {w_dt.dtype}")
    for name, t, n in (("b_up", b_up, r), ("b_down", b_down, c), ("norm_weight", norm_weight, c),
                       ("norm_bias", norm_bias, c)):
        if t is not None and (t.shape != (n,) or t.dtype != x.dtype or t.device != x.device):
            raise OpError(f"{OP}: {name} is {t.dtype} {list(t.shape)} on {t.device}, expected {x.dtype} [{n}] "
                          f"on {x.device}")
    if norm not in NORMS.values():
        raise OpError(f"{OP}: unknown norm code {norm}")
    return up, f


def reference(x, norm_weight, norm_bias, norm, eps, w_up, up_qtype, b_up, w_dt, b_down, act):
    """The two products as ``linear`` computes them without the kernel (dense_forward)."""
    up, _ = _check(x, norm_weight, norm_bias, norm, w_up, up_qtype, b_up, w_dt, b_down, act)
    h = dense_forward(x, up.to(x.dtype), b_up, None, norm, norm_weight, norm_bias, eps, act, False)
    return dense_forward(h, w_dt.t().to(x.dtype), b_down, x, NORMS["none"], None, None, eps, ACTS["none"], False)


@torch.library.custom_op("gpt_engine::mlp", mutates_args=("counters",))
def mlp_op(x: torch.Tensor, norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor], norm: int,
           eps: float, w_up: torch.Tensor, up_qtype: int, b_up: Optional[torch.Tensor], w_dt: torch.Tensor,
           b_down: Optional[torch.Tensor], counters: torch.Tensor, act: int) -> torch.Tensor:
    return reference(x, norm_weight, norm_bias, norm, eps, w_up, up_qtype, b_up, w_dt, b_down, act)


@mlp_op.register_fake
def _(x, norm_weight, norm_bias, norm, eps, w_up, up_qtype, b_up, w_dt, b_down, counters, act):
    _check(x, norm_weight, norm_bias, norm, w_up, up_qtype, b_up, w_dt, b_down, act)
    return x.new_empty(x.shape)


if _ext.available():

    @mlp_op.register_kernel("cuda")
    def _(x, norm_weight, norm_bias, norm, eps, w_up, up_qtype, b_up, w_dt, b_down, counters, act):
        up, f = _check(x, norm_weight, norm_bias, norm, w_up, up_qtype, b_up, w_dt, b_down, act)
        ext = _ext.load()
        m, c = x.shape
        if (0 < m <= GEMV_MAX_ROWS and x.dtype in (torch.float16, torch.bfloat16)
                and ext.mlp_decode_supported(up, x, m, c, f, act)):
            out = torch.empty_like(x)
            ext.mlp_decode(x.contiguous(), norm_weight, norm_bias, norm, float(eps), up, b_up, w_dt, b_down,
                           x.contiguous(), out, counters, act)
            return out
        return reference(x, norm_weight, norm_bias, norm, eps, w_up, up_qtype, b_up, w_dt, b_down, act)


def mlp(x: torch.Tensor, norm: Norm, up, b_up: torch.Tensor | None, down, b_down: torch.Tensor | None,
        act: str) -> torch.Tensor:
    """x + down(act(up(norm(x)) + b_up)) + b_down for x [M, C]: ``up`` a QWeight, ``down`` a
    QWeight as the file stores it or a DownT (see the module doc)."""
    if not isinstance(down, DownT):
        h = linear(x, up, b_up, norm=norm, act=act)
        return linear(h, down, b_down, residual=x)
    if x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_ROWS:
        return mlp_op(x, norm.weight, norm.bias, NORMS[norm.kind], float(norm.eps), up.raw, int(up.qtype), b_up,
                      down.weight_t, b_down, down.counters, ACTS[act])
    # prefill: cuBLAS on the transposed view, then our residual add (linear's prefill epilogue)
    h = linear(x, up, b_up, norm=norm, act=act)
    w = down.weight_t.t()
    y = F.linear(h, w if w.dtype == h.dtype else w.to(h.dtype), b_down)
    return residual_add(y.contiguous(), x.contiguous())
