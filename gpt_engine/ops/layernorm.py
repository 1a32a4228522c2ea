"""LayerNorm over the last dimension with fp32 statistics: (x - mean) / sqrt(var + eps) * w + b."""
from __future__ import annotations

import torch

from . import _ext
from ._common import new_output, OpError, acc_dtype, check_float, check_same, check_shape, rows_contiguous

OP = "layernorm"


def check(op, x, weight, bias, eps):
    check_float(op, "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise OpError(f"{op}: x has shape {list(x.shape)}, expected [..., C] with C > 0")
    c = x.shape[-1]
    check_shape(op, "weight", weight, (c,))
    check_shape(op, "bias", bias, (c,))
    check_same(op, "x", x, weight=weight, bias=bias)
    if not eps > 0:
        raise OpError(f"{op}: eps={eps}, expected > 0")


def reference(x, weight, bias, eps):
    check(OP, x, weight, bias, eps)
    acc = acc_dtype(x.dtype)
    # Shift by the row's first element before summing: with a large common offset the fp32
    # sum of x would lose the small deviations (x - x0 is exact for nearby values).
    xs = x.to(acc) - x[..., :1].to(acc)
    dev = xs - xs.mean(dim=-1, keepdim=True)
    var = (dev * dev).mean(dim=-1, keepdim=True)  # biased variance, as GPT-2 and F.layer_norm
    y = dev / torch.sqrt(var + eps) * weight.to(acc) + bias.to(acc)
    return y.to(x.dtype)


@torch.library.custom_op("gpt_engine::layernorm", mutates_args=())
def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return reference(x, weight, bias, eps)


@layernorm.register_fake
def _(x, weight, bias, eps):
    check(OP, x, weight, bias, eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _ext.available():

    @layernorm.register_kernel("cuda")
    def _(x, weight, bias, eps):
        check(OP, x, weight, bias, eps)
        if x.dtype == torch.float64:
            return reference(x, weight, bias, eps)
        x = rows_contiguous(x)
        out = new_output(x.shape, x)
        _ext.load().layernorm(x, weight.contiguous(), bias.contiguous(), out, float(eps))
        return out
