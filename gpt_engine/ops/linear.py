"""The one linear op every model calls for every weight matrix.

    out = epilogue(norm(x) @ W.T)      x [..., K], W [N, K] in its GGUF encoding

``norm`` (optional) is the LayerNorm or RMSNorm of x that the layer applies first, fused so the
normalised row is never written out; the epilogue adds a bias, applies tanh-GELU or SwiGLU
(W = [gate; up] stacked, out = silu(x Wg.T + bg) * (x Wu.T + bu)), adds a residual, and can
write fp32 (logits). The weight stays as the file stores it: ``weight`` is the raw bytes
[N, bytes per row] and ``qtype`` the ggml type id.

On the GPU, up to 16 rows of x (decode, batch <= 16) take the GEMV kernel, which reads each
weight byte once: csrc/linear.cu for F32/F16/BF16, csrc/linear_q.cu for the packed GGUF types
(the raw blocks, no repacking; rows whose activations do not fit its shared memory at once go
in slices, one call each: ``packed_gemv_rows``). More rows (prefill) take cuBLAS through
F.linear plus our norm and epilogue kernels; a packed weight is first dequantized into a scratch
matrix of x's dtype by csrc/dequant.cu (docs/kernels/quant.md says why), as is one whose GEMV
does not fit even one row. On the CPU ``linear()`` uses ``QWeight.dense()`` (whatever
caching it does) and the same math as the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import _ext
from ._common import OpError, acc_dtype, check_float, check_shape, direct_on_cpu, new_output
from .bias_gelu import bias_gelu
from .layernorm import layernorm
from .layernorm import reference as layernorm_reference
from .residual_add import residual_add

OP = "linear"
NORMS = {"none": 0, "layernorm": 1, "rmsnorm": 2}   # csrc/launchers.h LinearNorm
ACTS = {"none": 0, "gelu_tanh": 1, "swiglu": 2}     # csrc/launchers.h LinearAct
GEMV_MAX_ROWS = 16                                 # csrc/launchers.h kLinearMaxM
_DENSE = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml type ids F32, F16, BF16
_GEMV_ACT_DTYPES = (torch.float16, torch.bfloat16)
_ACT_CODE = {torch.float16: 1, torch.bfloat16: 2}   # csrc/common.cuh DType
# v27 (csrc/launchers.h, LinearArgs::fold_c): the fp64 bytes of weight rows per block when a
# LayerNorm's row constants are summed (transient, once per weight, at its first decode call:
# model.py's memory estimate counts it in the decode step)
FOLD_BLOCK_BYTES = 8 << 20


def fold_block_rows(k: int) -> int:
    """Rows per block of ``fold_constants`` for rows of ``k`` values (a multiple of 4)."""
    return max(4, FOLD_BLOCK_BYTES // (8 * k) // 4 * 4)


def folds(qtype: int, k: int) -> bool:
    """Whether a LayerNorm-fused decode product with this weight holds row constants
    (``fold_constants``): the dense GEMV's types and the packed GEMV's (v3.4), whole 8-value
    chunks."""
    from .dequantize import CUDA_TYPES
    return k % 8 == 0 and (int(qtype) in _DENSE or int(qtype) in CUDA_TYPES)


# Bench hook (explore_decode_step.py HEAD_CUBLAS; None in the engine): dense weights of at least
# this many bytes take cuBLAS at <= 16 rows too, to time the 1.16 GB gpt-oss head there in the step
# (norm, F.linear, then fp32: the logits pass through x's dtype, so not the GEMV's bits).
CUBLAS_MIN_BYTES: int | None = None


@dataclass(frozen=True)
class Norm:
    """The normalisation applied to x before the product (weight/bias [K], x's dtype)."""
    kind: str                           # "layernorm" or "rmsnorm"
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None  # LayerNorm only
    eps: float = 1e-5


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight in fp32, rounded once to x's dtype (as llama.cpp
    and transformers' LlamaRMSNorm compute it)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def _shape_nk(weight: torch.Tensor, qtype: int) -> tuple[int, int]:
    from gpt_engine import quants

    if weight.dtype != torch.uint8 or weight.dim() != 2:
        raise OpError(f"{OP}: weight must be the raw bytes [N, bytes per row] (uint8, 2-D), got "
                      f"{weight.dtype} {list(weight.shape)}")
    bs, ts = quants.block_size(qtype), quants.type_size(qtype)
    if weight.shape[1] % ts:
        raise OpError(f"{OP}: weight rows of {weight.shape[1]} bytes are not whole blocks of {ts} bytes")
    return weight.shape[0], weight.shape[1] // ts * bs


def _check(x, n, k, bias, residual, norm, norm_weight, norm_bias, act):
    check_float(OP, "x", x)
    if x.dim() < 1 or x.shape[-1] != k:
        raise OpError(f"{OP}: x has shape {list(x.shape)}, expected [..., {k}] (the weight's row length)")
    if norm not in NORMS.values():
        raise OpError(f"{OP}: unknown norm code {norm}")
    if act not in ACTS.values():
        raise OpError(f"{OP}: unknown act code {act}")
    if act == ACTS["swiglu"] and n % 2:
        raise OpError(f"{OP}: SwiGLU needs [gate; up] stacked, an even number of rows; got {n}")
    n_out = n // 2 if act == ACTS["swiglu"] else n
    if bias is not None:
        check_shape(OP, "bias", bias, (n,))
    if residual is not None:
        check_shape(OP, "residual", residual, (*x.shape[:-1], n_out))
    if norm != NORMS["none"]:
        if norm_weight is None:
            raise OpError(f"{OP}: norm weight missing")
        check_shape(OP, "norm_weight", norm_weight, (k,))
        if norm == NORMS["layernorm"]:
            if norm_bias is None:
                raise OpError(f"{OP}: layernorm bias missing")
            check_shape(OP, "norm_bias", norm_bias, (k,))
    for name, t in (("bias", bias), ("residual", residual), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise OpError(f"{OP}: {name} is {t.dtype} on {t.device}, expected {x.dtype} on {x.device}")
    return n_out


def _normed(x, norm, norm_weight, norm_bias, eps):
    if norm == NORMS["layernorm"]:
        return direct_on_cpu(layernorm, layernorm_reference, x)(x, norm_weight, norm_bias, eps)
    if norm == NORMS["rmsnorm"]:
        return rmsnorm_reference(x, norm_weight, eps)
    return x


def apply_norm(x: torch.Tensor, norm: Norm | None) -> torch.Tensor:
    """norm(x) exactly as ``linear`` computes it on the CPU before its product: for a caller that
    feeds one normalised input to several CPU products (separate q/k/v or gate/up weights)."""
    if norm is None:
        return x
    return _normed(x, NORMS[norm.kind], norm.weight, norm.bias, norm.eps)


def _activate(y: torch.Tensor, act: int) -> torch.Tensor:
    if act == ACTS["gelu_tanh"]:
        return F.gelu(y, approximate="tanh")
    if act == ACTS["swiglu"]:
        g, u = y.chunk(2, dim=-1)
        return F.silu(g) * u
    return y


def dense_forward(x, w, bias, residual, norm, norm_weight, norm_bias, eps, act, float_out, product=None):
    """The math with a dense weight w [N, K] in x's dtype: the product in x's dtype (as a
    GEMM library does it: fp32 accumulation, one rounding), the epilogue in fp32, rounded
    once. The CPU path and the oracle of the kernels. ``product`` (h -> h @ W.T) replaces the
    dense product where the weight has a faster one of its own (QWeight.linear on the CPU)."""
    h = _normed(x, norm, norm_weight, norm_bias, eps)
    y = product(h) if product is not None else F.linear(h, w)
    acc = acc_dtype(x.dtype)
    y = y.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    y = _activate(y, act)
    if residual is not None:
        y = y + residual.to(acc)
    return y.float() if float_out else y.to(x.dtype)


def _dense_weight(weight, qtype, n, k, dtype):
    from gpt_engine import quants

    if qtype in _DENSE:
        return weight.view(_DENSE[qtype]).view(n, k).to(dtype)
    return quants.dequantize(weight, qtype).view(n, k).to(dtype)


def packed_gemv_ok(weight: torch.Tensor, qtype: int, dtype: torch.dtype, m: int, k: int) -> bool:
    """The packed-block GEMV (csrc/linear_q.cu) takes this weight and batch: a type with a
    decoder, fp16/bf16 activations, 16-byte aligned bytes, the weight rings and M rows of K
    16-bit activation codes in shared memory (csrc/linear_q_impl.cuh)."""
    from .dequantize import CUDA_TYPES

    return (int(qtype) in CUDA_TYPES and dtype in _GEMV_ACT_DTYPES and weight.is_contiguous()
            and weight.data_ptr() % 16 == 0 and _ext.load().linear_q_supported(int(qtype), _ACT_CODE[dtype], m, k))


def packed_gemv_rows(weight: torch.Tensor, qtype: int, dtype: torch.dtype, m: int, k: int) -> int:
    """Rows of x per packed-GEMV call for an m-row product; 0 where the GEMV does not take it.
    m where all m rows' activation codes fit shared memory beside the weight rings, else the
    fewest equal slices that fit (GPT-2 1.5B's 6,400-wide down product: 16 rows as two calls of
    8; csrc/linear_q_impl.cuh smem_bytes). Slices rather than the dequantized weight because a
    row's bits do not depend on how many rows share its call, so a sequence decodes the same in
    a batch of 16 as alone (the dense route's sums are other bits), and each call reads the
    packed bytes once: two reads of Q8_0 are ~2.1 bytes a weight, dequantizing to fp16 and
    reading that back ~5."""
    if not 0 < m <= GEMV_MAX_ROWS:
        return 0
    for calls in range(1, m + 1):  # (the common case, m rows at once, is the first and only check)
        rows = -(-m // calls)
        if packed_gemv_ok(weight, qtype, dtype, rows, k):
            return rows
    return 0


def packed_dense(weight: torch.Tensor, qtype: int, n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The whole packed matrix in ``dtype`` (a scratch copy): the dequantize kernel on CUDA,
    gpt_engine.quants elsewhere."""
    from .dequantize import cuda_supported, dequantize_rows

    if dtype in (torch.float32, torch.float16, torch.bfloat16) and cuda_supported(weight, qtype):
        return dequantize_rows(weight, int(qtype), None, dtype, None)
    return _dense_weight(weight, qtype, n, k, dtype)


def reference(x, weight, qtype, bias, residual, norm_weight, norm_bias, norm, eps, act, float_out):
    n, k = _shape_nk(weight, qtype)
    _check(x, n, k, bias, residual, norm, norm_weight, norm_bias, act)
    w = _dense_weight(weight, qtype, n, k, x.dtype)
    return dense_forward(x, w, bias, residual, norm, norm_weight, norm_bias, eps, act, float_out)


@torch.library.custom_op("gpt_engine::linear", mutates_args=())
def linear_op(x: torch.Tensor, weight: torch.Tensor, qtype: int, bias: Optional[torch.Tensor],
              residual: Optional[torch.Tensor], norm_weight: Optional[torch.Tensor],
              norm_bias: Optional[torch.Tensor], norm: int, eps: float, act: int, float_out: bool,
              fold_c: Optional[torch.Tensor] = None, fold_d: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fold_c / fold_d (``fold_constants``) change how the GPU computes a LayerNorm-fused
    product, not what it computes: the reference ignores them."""
    return reference(x, weight, qtype, bias, residual, norm_weight, norm_bias, norm, eps, act, float_out)


@linear_op.register_fake
def _(x, weight, qtype, bias, residual, norm_weight, norm_bias, norm, eps, act, float_out, fold_c=None, fold_d=None):
    n, k = _shape_nk(weight, qtype)
    n_out = _check(x, n, k, bias, residual, norm, norm_weight, norm_bias, act)
    return x.new_empty((*x.shape[:-1], n_out), dtype=torch.float32 if float_out else x.dtype)


def _prefill(x, w, bias, residual, norm, norm_weight, norm_bias, eps, act, float_out):
    """Many rows: cuBLAS for the product, our kernels for the norm and the epilogue."""
    h = _normed(x, norm, norm_weight, norm_bias, eps)
    if act == ACTS["gelu_tanh"] and bias is not None:
        y = bias_gelu(F.linear(h, w), bias, "tanh")
    else:
        y = _activate(F.linear(h, w, bias), act)
    if residual is not None:
        y = residual_add(y.contiguous(), residual.contiguous())
    return y.float() if float_out else y


if _ext.available():

    @linear_op.register_kernel("cuda")
    def _(x, weight, qtype, bias, residual, norm_weight, norm_bias, norm, eps, act, float_out, fold_c=None,
          fold_d=None):
        n, k = _shape_nk(weight, qtype)
        n_out = _check(x, n, k, bias, residual, norm, norm_weight, norm_bias, act)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        m = x2.shape[0]
        if x.dtype not in _GEMV_ACT_DTYPES:
            return reference(x, weight, qtype, bias, residual, norm_weight, norm_bias, norm, eps, act, float_out)
        if qtype in _DENSE:
            w = weight.view(_DENSE[qtype]).view(n, k)
        elif (rows := packed_gemv_rows(weight, qtype, x.dtype, m, k)) > 0:
            out = new_output((m, n_out), x, torch.float32 if float_out else x.dtype)
            r2 = residual.reshape(m, n_out).contiguous() if residual is not None else None
            x2 = x2.contiguous()
            for i in range(0, m, rows):  # (row slices of contiguous tensors: contiguous views)
                j = min(m, i + rows)
                _ext.load().linear(x2[i:j], weight, bias, None if r2 is None else r2[i:j], norm_weight, norm_bias,
                                   out[i:j], norm, act, float(eps), qtype=int(qtype), fold_c=fold_c, fold_d=fold_d)
            return out.reshape(*lead, n_out)
        else:  # prefill, or a GEMV whose activations do not fit: one dequantization, then dense
            w = packed_dense(weight, qtype, n, k, x.dtype)
        if (m > GEMV_MAX_ROWS or m == 0 or k % (16 // w.element_size())
                or (CUBLAS_MIN_BYTES is not None and qtype in _DENSE and weight.numel() >= CUBLAS_MIN_BYTES)):
            w = w.to(x.dtype)
            r2 = residual.reshape(-1, n_out) if residual is not None else None
            y = _prefill(x2, w, bias, r2, norm, norm_weight, norm_bias, eps, act, float_out)
            return y.reshape(*lead, n_out)
        out = new_output((m, n_out), x, torch.float32 if float_out else x.dtype)
        x2 = x2.contiguous()
        r2 = residual.reshape(m, n_out).contiguous() if residual is not None else None
        fold = {"fold_c": fold_c, "fold_d": fold_d} if qtype in _DENSE else {}
        _ext.load().linear(x2, w, bias, r2, norm_weight, norm_bias, out, norm, act, float(eps), **fold)
        return out.reshape(*lead, n_out)


def fold_constants(w, norm: Norm | None, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The row constants C = W g and D = W b (fp32 [N], from the weight and the LayerNorm's weight g
    and bias b as stored, summed in fp64) with which the decode GEMVs fold a LayerNorm into their
    epilogue (dense v27 and packed v3.4, csrc/launchers.h LinearArgs::fold_c; RMSNorm needs none;
    a packed weight's W is its exact fp32 dequantization). (None, None) where
    that does not apply (no LayerNorm, not CUDA, a type neither GEMV folds, K % 8) or where they are not
    computed yet inside a CUDA graph capture (the decode loop's warm-up runs each step eagerly
    before capturing it, so its graphs find them here). Cached on the weight, per norm."""
    if norm is None or norm.kind != "layernorm" or x.device.type != "cuda":
        return None, None
    key = (id(norm.weight), id(norm.bias))
    cache = w.__dict__.setdefault("_folds", {})  # (QWeight makes it; any weight-like object gets one)
    hit = cache.get(key)
    if hit is not None:
        return hit[2], hit[3]
    if not folds(w.qtype, w.shape[-1]) or torch.cuda.is_current_stream_capturing():
        return None, None
    c, d = row_constants(w, norm)
    # v27b: the GEMV's v3 kernel pulls C / D into L1 before its PDL wait, which csrc/common.cuh
    # allows for constant data only: finish writing them before any kernel may read them early
    # (once per weight and norm, outside any capture)
    if c.is_cuda:
        torch.cuda.current_stream(c.device).synchronize()
    cache[key] = (norm.weight, norm.bias, c, d)  # (the norm tensors held: their ids stay theirs)
    return c, d


def row_constants(w, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """C = W g and D = W b, fp32 [N] on the weight's device, summed in fp64 over blocks of
    ``fold_block_rows`` rows (``fold_constants``' values, on any device). A packed weight's block
    is dequantized exactly to fp32 first (``packed_dense``: the dequantize kernel on CUDA, whose
    rows start 4-byte aligned since the block rows are a multiple of 4; gpt_engine.quants
    elsewhere)."""
    n, k = w.raw.shape[0], w.shape[-1]
    qtype = int(w.qtype)
    dense = w.raw.view(_DENSE[qtype]).view(n, k) if qtype in _DENSE else None
    g, b = norm.weight.double().to(w.raw.device), norm.bias.double().to(w.raw.device)
    c = torch.empty(n, dtype=torch.float32, device=w.raw.device)
    d = torch.empty_like(c)
    r = fold_block_rows(k)
    for i in range(0, n, r):
        if dense is not None:
            blk = dense[i:i + r].double()
        else:
            rows = w.raw[i:i + r]
            blk = packed_dense(rows, qtype, rows.shape[0], k, torch.float32).double()
        c[i:i + r] = blk @ g
        d[i:i + r] = blk @ b
        del blk  # before the next block is made: one block at a time (the estimate's fold_block)
    return c, d


def linear(x: torch.Tensor, w, bias: torch.Tensor | None = None, *, residual: torch.Tensor | None = None,
           norm: Norm | None = None, act: str = "none", float_out: bool = False) -> torch.Tensor:
    """out = act(norm(x) @ w.T + bias) + residual for a ``QWeight`` w (see the module doc)."""
    if act not in ACTS:
        raise OpError(f"{OP}: act={act!r}, expected one of {sorted(ACTS)}")
    if norm is not None and norm.kind not in ("layernorm", "rmsnorm"):
        raise OpError(f"{OP}: norm kind {norm.kind!r}, expected 'layernorm' or 'rmsnorm'")
    nk = NORMS[norm.kind] if norm is not None else 0
    nw, nb, eps = (norm.weight, norm.bias, norm.eps) if norm is not None else (None, None, 1e-5)
    if x.device.type == "cuda":
        # (the constants serve the GEMV only: a prefill's call neither computes nor passes them)
        fc, fd = fold_constants(w, norm, x) if x.numel() <= GEMV_MAX_ROWS * x.shape[-1] else (None, None)
        return linear_op(x, w.raw, int(w.qtype), bias, residual, nw, nb, nk, float(eps), ACTS[act], float_out, fc, fd)
    n, k = w.raw.shape[0], w.shape[-1]
    _check(x, n, k, bias, residual, nk, nw, nb, ACTS[act])
    # the weight's own CPU product: the cached dense copy, or torch's int4 kernel for Q4_0/Q4_1
    # with bf16 activations (QWeight.linear)
    return dense_forward(x, None, bias, residual, nk, nw, nb, eps, ACTS[act], float_out, product=w.linear)


def linear_cat(x: torch.Tensor, weights: list, norm: Norm | None) -> torch.Tensor:
    """``torch.cat(linear_each(x, weights, norm), -1)``: the products of one input with separate
    weights (q/k/v or gate/up kept unstacked on the CPU), side by side. On the CPU the weights'
    joint product (``QWeight.linear_stacked``: one packed-kernel call when every weight is read
    packed), the same values as the concatenation."""
    if x.device.type != "cpu":
        return torch.cat(linear_each(x, weights, norm), dim=-1)
    from gpt_engine.qweight import QWeight

    n, k = sum(w.raw.shape[0] for w in weights), weights[0].shape[-1]
    _check(x, n, k, None, None, 0, None, None, 0)
    for w in weights:
        if w.shape[-1] != k:
            raise OpError(f"{OP}: weights of {k} and {w.shape[-1]} in-features cannot share one input")
    return QWeight.linear_stacked(weights, apply_norm(x, norm))


def linear_each(x: torch.Tensor, weights: list, norm: Norm | None, biases: list | None = None) -> list[torch.Tensor]:
    """``linear(x, w, b, norm=norm)`` for each weight w (and bias b) of a layer whose products
    were not stacked into one weight (separate q/k/v or gate/up). On the CPU norm(x) is computed
    once and fed to every product, not once per product; a GPU product fuses it."""
    if x.device.type == "cpu":
        x, norm = apply_norm(x, norm), None
    return [linear(x, w, b, norm=norm) for w, b in zip(weights, biases or [None] * len(weights))]
