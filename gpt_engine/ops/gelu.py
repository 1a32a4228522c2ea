"""GELU: tanh form (GPT-2's "gelu_new") or the exact erf form.

tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (Hendrycks & Gimpel 2016, eq. in sec. 2)
none: 0.5 x (1 + erf(x / sqrt(2)))

Both are evaluated in forms without cancellation for very negative x, where
1 + tanh(u) and 1 + erf(z) lose every digit in fp32:
0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))   and   0.5 (1 + erf(z)) = 0.5 erfc(-z).
"""
from __future__ import annotations

import math

import torch

from . import _ext
from ._common import new_output, acc_dtype, check_approximate, check_float, rows_contiguous

OP = "gelu"
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_COEF = 0.044715  # from the GELU paper's tanh approximation


def math_gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """Explicit GELU formula on an already-upcast tensor."""
    if approximate == "tanh":
        return x * torch.sigmoid(2.0 * SQRT_2_OVER_PI * (x + TANH_COEF * x * x * x))
    return 0.5 * x * torch.erfc(-x / math.sqrt(2.0))


def _check(x, approximate):
    check_float(OP, "x", x)
    check_approximate(OP, approximate)


def reference(x, approximate):
    _check(x, approximate)
    return math_gelu(x.to(acc_dtype(x.dtype)), approximate).to(x.dtype)


@torch.library.custom_op("gpt_engine::gelu", mutates_args=())
def gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return reference(x, approximate)


@gelu.register_fake
def _(x, approximate):
    _check(x, approximate)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _ext.available():

    @gelu.register_kernel("cuda")
    def _(x, approximate):
        _check(x, approximate)
        if x.dtype == torch.float64:
            return reference(x, approximate)
        x = rows_contiguous(x)
        out = new_output(x.shape, x)
        _ext.load().gelu(x, out, approximate == "tanh")
        return out
