"""Fused residual add + LayerNorm: h = x + residual; returns (h, layernorm(h)).

The normalised output is computed from h rounded to the input dtype, exactly as
the unfused pair residual_add -> layernorm would see it.
"""
from __future__ import annotations

import torch

from . import _ext
from ._common import new_output, check_same, check_shape, rows_contiguous
from .layernorm import check as check_ln
from .layernorm import reference as ln_reference

OP = "add_layernorm"


def _check(x, residual, weight, bias, eps):
    check_ln(OP, x, weight, bias, eps)
    check_shape(OP, "residual", residual, tuple(x.shape))
    check_same(OP, "x", x, residual=residual)


def reference(x, residual, weight, bias, eps):
    _check(x, residual, weight, bias, eps)
    from .residual_add import reference as add_reference

    h = add_reference(x, residual)
    return h, ln_reference(h, weight, bias, eps)


@torch.library.custom_op("gpt_engine::add_layernorm", mutates_args=())
def add_layernorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return reference(x, residual, weight, bias, eps)


@add_layernorm.register_fake
def _(x, residual, weight, bias, eps):
    _check(x, residual, weight, bias, eps)
    e = lambda: torch.empty_like(x, memory_format=torch.contiguous_format)  # noqa: E731
    return e(), e()


if _ext.available():

    @add_layernorm.register_kernel("cuda")
    def _(x, residual, weight, bias, eps):
        _check(x, residual, weight, bias, eps)
        if x.dtype == torch.float64:
            return reference(x, residual, weight, bias, eps)
        x, residual = rows_contiguous(x), rows_contiguous(residual)
        h, y = new_output(x.shape, x), new_output(x.shape, x)
        _ext.load().add_layernorm(x, residual, weight.contiguous(), bias.contiguous(), h, y, float(eps))
        return h, y
