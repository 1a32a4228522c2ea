"""Running out of GPU memory: recognise it, release what the failed call held, say so in one line.

A CUDA out-of-memory reaches us as ``torch.cuda.OutOfMemoryError`` (torch's caching allocator,
which also serves the extension's own ``at::empty``), or as a RuntimeError whose text says "out
of memory" (a kernel launch or a library call that got cudaErrorMemoryAllocation: "CUDA error:
out of memory", cuBLAS's CUBLAS_STATUS_ALLOC_FAILED), sometimes as the context of another error
(a graph capture that could not end cleanly after it). The entry points that allocate on the
device (``load``, ``Model.logits``, the decode loop behind ``generate``/``stream``/
``generate_batch``) run under ``converted``, which turns it into ``errors.OutOfMemoryError``.

Releasing matters as much as the message: the failed call's tensors are still referenced by
the frames of the exception's traceback (a half-built model's ``self``, a decode state being
allocated), and would stay alive for as long as the caller keeps the exception. ``release``
clears those frames and drops the tracebacks, collects, and hands torch's cached blocks back to
the driver, so the next load or request in the same process gets the memory.
"""
from __future__ import annotations

import gc
import re
import traceback
from typing import Callable

import torch

from .errors import OutOfMemoryError

LOAD_ADVICE = ("a smaller or more quantized GGUF file (Q8_0, Q4_K ...), or free the GPU memory that other "
               "models or processes hold")
GENERATE_ADVICE = ("a shorter context (fewer prompt tokens or a smaller max_new_tokens), fewer prompts per batch, "
                   "or a smaller or more quantized GGUF file")

_OOM_TEXT = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation", re.IGNORECASE)
_TRIED = re.compile(r"Tried to allocate (\d+(?:\.\d+)? ?[KMGT]?i?B)")


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and every exception it was raised from or while handling (each once)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is not None and not any(e is o for o in out):
            out.append(e)
            todo += [e.__cause__, e.__context__]
    return out


def is_oom(exc: BaseException) -> bool:
    """Whether exc is (or was caused by) a device out-of-memory not yet turned into ours."""
    if isinstance(exc, OutOfMemoryError):
        return False
    return any(isinstance(e, torch.cuda.OutOfMemoryError) or
               (isinstance(e, RuntimeError) and _OOM_TEXT.search(str(e)) is not None) for e in _chain(exc))


def tried_to_allocate(exc: BaseException) -> str | None:
    """The size of the allocation that failed, as torch's message gives it ("2.00 GiB")."""
    for e in _chain(exc):
        m = _TRIED.search(str(e))
        if m:
            return m.group(1)
    return None


def release(exc: BaseException) -> None:
    """Free what the failed call still holds through exc's tracebacks (see the module doc): the
    frames' locals are cleared (frames still running, the caller's, are skipped), then the
    tracebacks dropped, since a cleared frame still holds its function and so a closure's cells."""
    for e in _chain(exc):
        traceback.clear_frames(e.__traceback__)
        e.__traceback__ = None
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def size(n: int | float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _bytes(text: str) -> int | None:
    """torch's "2.00 MiB" (as _TRIED reads it) as a byte count; None for another unit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?) ?([KMGT]?i?B)", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m and m.group(2) in _UNITS else None


def message(what: str, advice: str, *, device: str = "cuda", tried: str | None = None, free: int | None = None,
            total: int | None = None, fraction: float | None = None, estimate: int | None = None) -> str:
    """The one-line error text (free/total: the device's, after the release)."""
    parts = [f"out of memory on {device} while {what}"]
    if tried:
        parts.append(f"an allocation of {tried} failed")
    if free is not None and total is not None:
        have = f"the device has {size(free)} free of {size(total)}"
        need = _bytes(tried) if tried is not None else None  # the failed allocation in bytes
        if fraction is not None and fraction < 1.0:
            have += (f", and this process may use {fraction * 100:.3g}% of it "
                     "(torch.cuda.set_per_process_memory_fraction)")
        elif fraction is None and need is not None and need < free:
            # torch without a fraction getter (2.11 has none): say why so much free is not enough
            have += (", more than the failed allocation: a per-process limit "
                     "(torch.cuda.set_per_process_memory_fraction) or fragmentation stops it")
        parts.append(have)
    if estimate is not None:
        parts.append(f"memory_estimate() puts this at about {size(estimate)}")
    return "; ".join(parts) + f"; try {advice}"


def _device_memory(device: torch.device) -> tuple[int | None, int | None, float | None]:
    """(free, total, this process's memory fraction), None where the device cannot say."""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except Exception:  # the error being reported matters more than these figures
        return None, None, None
    try:
        fraction = torch.cuda.get_per_process_memory_fraction(device)
    except Exception:  # older torch has no getter
        fraction = None
    return free, total, fraction


class converted:
    """``with converted(...):`` a device out-of-memory inside the block becomes
    ``OutOfMemoryError`` (raised from None: the original stays in ``__context__``, without its
    traceback). ``what`` ("loading x.gguf ...") and ``estimate`` (bytes) are evaluated only on
    failure, before ``release_more`` (which drops state the caller keeps elsewhere, e.g. cached
    decoders). A class, not a contextlib generator: contextlib's ``__exit__`` keeps the original
    traceback in a local of a frame the new error's traceback holds, and with it every object
    the failed call's closures reached."""

    def __init__(self, device: torch.device, what: Callable[[], str], advice: str,
                 estimate: Callable[[], int | None] | None = None, release_more: Callable[[], None] | None = None):
        self.device, self.what, self.advice = device, what, advice
        self.estimate, self.release_more = estimate, release_more

    def __enter__(self) -> "converted":
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if not isinstance(exc, Exception) or not is_oom(exc):
            return False
        del tb  # see the class doc: no frame of ours keeps the failed call's traceback
        text, est = self.what(), None
        if self.estimate is not None:
            try:
                est = self.estimate()
            except Exception:  # a figure for the message must not hide the error
                est = None
        if self.release_more is not None:
            self.release_more()
        tried = tried_to_allocate(exc)
        release(exc)
        free, total, fraction = _device_memory(self.device) if self.device.type == "cuda" else (None, None, None)
        raise OutOfMemoryError(message(text, self.advice, device=str(self.device), tried=tried, free=free,
                                       total=total, fraction=fraction, estimate=est)) from None
