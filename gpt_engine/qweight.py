"""A weight kept in its GGUF encoding until the moment it is used.

Weights are memory-mapped from the file (CPU) or copied to the GPU as the raw
quantized bytes (CUDA); ``dense()`` dequantizes on use, ``rows()`` only the rows
a lookup needs. Nothing is dequantized at load time.
"""
from __future__ import annotations

import warnings

import gguf
import numpy as np
import torch

from . import quants

_Q = gguf.GGMLQuantizationType


def _raw_tensor(arr: np.ndarray) -> torch.Tensor:
    # The mmap is read-only; torch warns about non-writable arrays but we never write.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


class QWeight:
    def __init__(self, raw: torch.Tensor, qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]):
        self.qtype = qtype
        self.shape = tuple(shape)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        self.raw = raw.reshape(rows, -1)  # [rows, bytes per row]

    @classmethod
    def from_gguf(cls, f, name: str, device: str | torch.device = "cpu") -> "QWeight":
        info = f.tensors[name]
        raw = _raw_tensor(f.tensor_data(name))
        if torch.device(device).type != "cpu":
            raw = raw.to(device)
        return cls(raw, info.qtype, info.shape)

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole tensor in ``dtype`` (a zero-copy view for F32 weights read as F32)."""
        if self.qtype == _Q.F32:
            t = self.raw.view(torch.float32)
        elif self.qtype == _Q.F16:
            t = self.raw.view(torch.float16)
        else:
            t = quants.dequantize(self.raw, self.qtype)
        return t.reshape(self.shape).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32, checked: bool = True) -> torch.Tensor:
        """Rows ``ids`` of a 2-D weight (embedding lookup), dequantizing only those rows.
        ``checked=False`` skips the host-side range check (a device sync): for the decode
        step, whose ids come from its own sampler and are in range by construction."""
        flat = ids.reshape(-1).to(self.raw.device)
        if self.qtype in (_Q.F32, _Q.F16):
            out = self.dense(dtype if self.qtype == _Q.F32 else torch.float16)[flat]
        elif checked:
            out = quants.dequantize_rows(self.raw, self.qtype, flat)
        else:
            out = quants.dequantize(self.raw.index_select(0, flat), self.qtype)
        return out.to(dtype).reshape(*ids.shape, self.shape[-1])

    @classmethod
    def stack_rows(cls, weights: list["QWeight"]) -> "QWeight":
        """One weight holding the rows of ``weights`` in order (q, k, v -> qkv; gate, up ->
        gate_up), so one product serves them. Same type and row length required: rows are
        whole blocks, so the bytes simply concatenate."""
        first = weights[0]
        if any(w.qtype != first.qtype or w.shape[-1] != first.shape[-1] for w in weights):
            raise ValueError("stack_rows: weights differ in type or row length")
        raw = torch.cat([w.raw for w in weights], dim=0)
        return cls(raw, first.qtype, (raw.shape[0], first.shape[-1]))
