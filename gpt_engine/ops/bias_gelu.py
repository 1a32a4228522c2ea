"""FFN epilogue: gelu(x + bias) with the bias broadcast over the last dimension."""
from __future__ import annotations

import torch

from . import _ext
from ._common import new_output, OpError, acc_dtype, check_approximate, check_float, check_same, check_shape, rows_contiguous
from .gelu import math_gelu

OP = "bias_gelu"


def _check(x, bias, approximate):
    check_float(OP, "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise OpError(f"{OP}: x has shape {list(x.shape)}, expected [..., F] with F > 0")
    check_shape(OP, "bias", bias, (x.shape[-1],))
    check_same(OP, "x", x, bias=bias)
    check_approximate(OP, approximate)


def reference(x, bias, approximate):
    _check(x, bias, approximate)
    acc = acc_dtype(x.dtype)
    return math_gelu(x.to(acc) + bias.to(acc), approximate).to(x.dtype)


@torch.library.custom_op("gpt_engine::bias_gelu", mutates_args=())
def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    return reference(x, bias, approximate)


@bias_gelu.register_fake
def _(x, bias, approximate):
    _check(x, bias, approximate)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _ext.available():

    @bias_gelu.register_kernel("cuda")
    def _(x, bias, approximate):
        _check(x, bias, approximate)
        if x.dtype == torch.float64:
            return reference(x, bias, approximate)
        x = rows_contiguous(x)
        out = new_output(x.shape, x)
        _ext.load().bias_gelu(x, bias.contiguous(), out, approximate == "tanh")
        return out
