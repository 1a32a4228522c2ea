"""GGUF packed rows -> dense values: out = dequantize(raw[ids]) (every row when ids is None).

``raw`` is a weight as the file stores it ([N, bytes per row] uint8, whole blocks of ggml type
``qtype``); the result is [len(ids), K] (or [N, K]) in ``dtype``, bit-exact with gguf-py's
dequantization rounded once to ``dtype``. Used for embedding lookups of packed tables (rows
dequantized on read) and, with ids None, for the prefill path of the linear op (the whole
matrix once into a scratch buffer that cuBLAS reads; docs/kernels/quant.md).

With ``add`` (a dense [A, K] table in ``dtype``) and ``add_ids`` (one row of it per output row),
each output row is summed with its add row as ``residual_add`` sums (fp32, one rounding) in the
same kernel: GPT-2's packed token row plus its position row is one launch, not three.

On CUDA (csrc/dequant.cu) an id (or add id) outside [0, N) (or [0, A)) gives a NaN row and, when ``status`` (the decode
step's int32 status word) is given, ORs bit 1 into it: no host read-back (callers that want
an exception check the ids on the host first, as QWeight.rows(checked=True) does). The CPU
path is gpt_engine.quants (the oracle) and raises on a bad id.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from ._common import OpError, OpIndexError, acc_dtype, capturing, new_output

OP = "dequantize_rows"
# ggml type ids with a CUDA block decoder (csrc/launchers.h ggml_block_shape)
CUDA_TYPES = (2, 3, 6, 7, 8, 12, 13, 14, 39)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shape(raw: torch.Tensor, qtype: int, ids: Optional[torch.Tensor]) -> tuple[int, int]:
    from gpt_engine import quants

    if raw.dtype != torch.uint8 or raw.dim() != 2:
        raise OpError(f"{OP}: raw must be [N, bytes per row] uint8, got {raw.dtype} {list(raw.shape)}")
    bs, ts = quants.block_size(qtype), quants.type_size(qtype)
    if raw.shape[1] % ts:
        raise OpError(f"{OP}: rows of {raw.shape[1]} bytes are not whole blocks of {ts} bytes")
    if ids is not None:
        if ids.dtype != torch.int64 or ids.dim() != 1:
            raise OpError(f"{OP}: ids must be a 1-D int64 tensor, got {ids.dtype} {list(ids.shape)}")
        if ids.device != raw.device:
            raise OpError(f"{OP}: ids are on {ids.device} but raw is on {raw.device}")
    return (raw.shape[0] if ids is None else ids.shape[0]), raw.shape[1] // ts * bs


def _check_add(raw, ids, dtype, add, add_ids, k):
    if (add is None) != (add_ids is None):
        raise OpError(f"{OP}: add and add_ids come together")
    if add is None:
        return
    if ids is None:
        raise OpError(f"{OP}: add needs ids (rows looked up)")
    if add.dtype != dtype or add.dim() != 2 or add.shape[1] != k or add.shape[0] < 1:
        raise OpError(f"{OP}: add must be [A, {k}] {dtype}, got {add.dtype} {list(add.shape)}")
    if add_ids.dtype != torch.int64 or add_ids.shape != ids.shape:
        raise OpError(f"{OP}: add_ids must be int64 {list(ids.shape)}, got {add_ids.dtype} {list(add_ids.shape)}")
    if add.device != raw.device or add_ids.device != raw.device:
        raise OpError(f"{OP}: add / add_ids are on {add.device} / {add_ids.device} but raw is on {raw.device}")


def _check_range(raw, ids, add=None, add_ids=None):
    """Host read-back of the ids (skipped under capture / device_checked: the kernel flags them)."""
    if ids is None or ids.numel() == 0 or capturing():
        return
    for name, t, n in (("id", ids, raw.shape[0]), ("add id", add_ids, add.shape[0] if add is not None else 0)):
        if t is None:
            continue
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            raise OpIndexError(f"{OP}: {name} {lo if lo < 0 else hi} outside [0, {n})")


def reference(raw, qtype, ids, dtype, add=None, add_ids=None):
    from gpt_engine import quants

    _, k = _shape(raw, qtype, ids)
    if dtype not in _OUT_DTYPES:
        raise OpError(f"{OP}: dtype {dtype}, expected one of {_OUT_DTYPES}")
    _check_add(raw, ids, dtype, add, add_ids, k)
    _check_range(raw, ids, add, add_ids)
    picked = raw if ids is None else raw.index_select(0, ids)
    out = quants.dequantize(picked, qtype)
    if out.data_ptr() == picked.data_ptr():
        out = out.clone()
    out = out.to(dtype)
    if add is not None:  # residual_add's sum: both rounded to dtype, added in the accumulation type
        acc = acc_dtype(dtype)
        out = (out.to(acc) + add.index_select(0, add_ids).to(acc)).to(dtype)
    return out


@torch.library.custom_op("gpt_engine::dequantize_rows", mutates_args=("status",))
def dequantize_rows(raw: torch.Tensor, qtype: int, ids: Optional[torch.Tensor], dtype: torch.dtype,
                    status: Optional[torch.Tensor], add: Optional[torch.Tensor] = None,
                    add_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    return reference(raw, qtype, ids, dtype, add, add_ids)


@dequantize_rows.register_fake
def _(raw, qtype, ids, dtype, status, add=None, add_ids=None):
    n, k = _shape(raw, qtype, ids)
    _check_add(raw, ids, dtype, add, add_ids, k)
    return raw.new_empty((n, k), dtype=dtype)


def cuda_supported(raw: torch.Tensor, qtype: int) -> bool:
    """Whether the CUDA kernel takes this weight (type with a decoder, 4-byte aligned bytes)."""
    return (_ext.available() and raw.is_cuda and int(qtype) in CUDA_TYPES and raw.is_contiguous()
            and raw.data_ptr() % 4 == 0)


if _ext.available():

    @dequantize_rows.register_kernel("cuda")
    def _(raw, qtype, ids, dtype, status, add=None, add_ids=None):
        n, k = _shape(raw, qtype, ids)
        _check_add(raw, ids, dtype, add, add_ids, k)
        if (dtype not in _OUT_DTYPES or not cuda_supported(raw, qtype)
                or (add is not None and (not add.is_contiguous() or add.data_ptr() % 16))):
            return reference(raw, qtype, ids, dtype, add, add_ids)
        out = new_output((n, k), raw, dtype)
        _ext.load().dequantize_rows(raw, int(qtype), ids.contiguous() if ids is not None else None, out, status,
                                    add, add_ids.contiguous() if add_ids is not None else None)
        return out
