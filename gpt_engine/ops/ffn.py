"""GPT-2 MLP: up projection -> bias + GELU -> down projection + bias.

Weights are in nn.Linear layout (out, in), as the GGUF loader delivers them.
The GEMMs go through torch.matmul (cuBLAS on the GPU); the bias + GELU between
them is our fused epilogue kernel, so the [.., F] activation is written once
by the GEMM and read once by the epilogue.
"""
from __future__ import annotations

import torch

from . import _ext
from ._common import OpError, acc_dtype, check_approximate, check_float, check_same, check_shape
from .bias_gelu import bias_gelu
from .gelu import math_gelu

OP = "ffn"


def _check(x, w_up, b_up, w_down, b_down, approximate):
    check_float(OP, "x", x)
    if x.dim() < 1:
        raise OpError(f"{OP}: x has shape {list(x.shape)}, expected [..., C]")
    c = x.shape[-1]
    check_shape(OP, "w_up", w_up, (None, c))
    f = w_up.shape[0]
    check_shape(OP, "b_up", b_up, (f,))
    check_shape(OP, "w_down", w_down, (c, f))
    check_shape(OP, "b_down", b_down, (c,))
    check_same(OP, "x", x, w_up=w_up, b_up=b_up, w_down=w_down, b_down=b_down)
    check_approximate(OP, approximate)


def reference(x, w_up, b_up, w_down, b_down, approximate):
    _check(x, w_up, b_up, w_down, b_down, approximate)
    acc = acc_dtype(x.dtype)
    h = math_gelu(x.to(acc) @ w_up.to(acc).T + b_up.to(acc), approximate)
    return (h @ w_down.to(acc).T + b_down.to(acc)).to(x.dtype)


@torch.library.custom_op("gpt_engine::ffn", mutates_args=())
def ffn(
    x: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor,
    approximate: str,
) -> torch.Tensor:
    return reference(x, w_up, b_up, w_down, b_down, approximate)


@ffn.register_fake
def _(x, w_up, b_up, w_down, b_down, approximate):
    _check(x, w_up, b_up, w_down, b_down, approximate)
    return x.new_empty(x.shape)


if _ext.available():

    @ffn.register_kernel("cuda")
    def _(x, w_up, b_up, w_down, b_down, approximate):
        _check(x, w_up, b_up, w_down, b_down, approximate)
        if x.dtype == torch.float64:
            return reference(x, w_up, b_up, w_down, b_down, approximate)
        up = torch.matmul(x, w_up.T)  # cuBLAS; the bias is left to the epilogue kernel
        h = bias_gelu(up, b_up, approximate)
        lead = x.shape[:-1]
        out = torch.addmm(b_down, h.reshape(-1, h.shape[-1]), w_down.T)
        return out.reshape(*lead, w_down.shape[0])
