"""Shared helpers of the ops layer: error types, argument checks, precision rules.

Every op checks its arguments with these helpers in all three places (the
reference, the fake kernel used for tracing, the CUDA kernel) so a bad call
fails the same way, with one line naming the argument, on every device.
"""
from __future__ import annotations

import torch

from gpt_engine.errors import EngineError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The CUDA kernels are written for these; float64 runs the reference math.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class OpError(EngineError, ValueError):
    """A tensor given to an op has the wrong shape, dtype, device or layout."""


class OpIndexError(EngineError, IndexError):
    """A token id or position is outside the table it indexes."""


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes in: fp32 for fp16/bf16 (as the kernels
    accumulate), otherwise the input's own dtype (so float64 stays float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise OpError(f"{op}: {name} has dtype {t.dtype}, expected one of fp16/bf16/fp32/fp64")


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """All tensors share the dtype and device of `ref`."""
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise OpError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
        if t.device != ref.device:
            raise OpError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_shape(op: str, name: str, t: torch.Tensor, shape: tuple) -> None:
    """`shape` entries that are None match any size."""
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise OpError(f"{op}: {name} has shape {list(t.shape)}, expected {want}")


def check_approximate(op: str, approximate: str) -> None:
    if approximate not in ("tanh", "none"):
        raise OpError(f"{op}: approximate={approximate!r}, expected 'tanh' or 'none'")


def direct_on_cpu(op, reference, t: torch.Tensor):
    """``op`` (a torch.library custom op) for a tensor on a GPU; for one on the CPU the op's CPU
    body, ``reference``, to call directly: the same function, so the same checks and values.
    Through the dispatcher a process's first custom-op call imports torch._dynamo (torch 2.13 wraps
    each op's backend call in a dynamo-disable that imports it on first use): ~1.2 s of the
    embedded model's first prompt on a 2-core machine, whose 5-token prefill then takes ~0.06 s
    (docs/quality.md, "The first prompt on the CPU"). The models' CPU prompt paths call their ops
    through this; a CPU decode step skips the ops altogether (models/cpu_decode.py)."""
    return reference if t.device.type == "cpu" else op


_DEVICE_CHECKED = [0]  # depth of nested device_checked() blocks


def capturing() -> bool:
    """True when no check may read device data back to the host: while a CUDA graph is
    being captured (a read-back would break the capture), and inside device_checked(),
    where the decode step's status word carries the value checks instead (a read-back
    would be a host sync per layer)."""
    if _DEVICE_CHECKED[0]:
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class device_checked:
    """``with device_checked():`` the ops skip their host read-back value checks. Only for
    callers that check values on the device themselves: the decode step (decode_state.py),
    whose kernels clamp bad values and raise bits in its status word."""

    def __enter__(self):
        _DEVICE_CHECKED[0] += 1
        return self

    def __exit__(self, *exc):
        _DEVICE_CHECKED[0] -= 1
        return False


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels read [..., C] tensors as dense rows."""
    return t if t.is_contiguous() else t.contiguous()


# Tests set a value here so that every kernel output starts filled with it: NaN, so that an
# element the kernel forgets to write fails the test instead of passing by luck; inf where the
# test expects NaN in a bad row, so that the kernel must write the NaN itself while an unwritten
# good row still fails its finiteness check (tests/ops/conftest.py).
OUTPUT_FILL: float | None = None


def new_output(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Allocates a kernel output (dense, like's device, like's dtype unless given)."""
    dtype = dtype or like.dtype
    if OUTPUT_FILL is not None:
        return torch.full(tuple(shape), OUTPUT_FILL, dtype=dtype, device=like.device)
    return torch.empty(tuple(shape), dtype=dtype, device=like.device)
