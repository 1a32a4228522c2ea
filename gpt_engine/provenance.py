"""Which file a model came from: the SHA-256 of its bytes, and pins that refuse any other file.

A pin is the hex SHA-256 a caller expects (``load(path, sha256=...)``, ``--sha256`` on the CLI).
The file is hashed through the same open descriptor that is then memory-mapped, before any of
its bytes are parsed: a file that does not match is refused before anything of it is loaded,
and a file swapped in under the same name between the check and the map cannot slip through.
"""
from __future__ import annotations

import hashlib
import os
import re

from .errors import EngineError, GGUFError

# Big enough that the per-call overhead vanishes next to hashing (~1-2 GB/s: a 12 GB file takes
# seconds either way), small enough that the buffer is nothing next to a model.
CHUNK_BYTES = 8 << 20

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def normalize_pin(pin) -> str:
    """``pin`` as 64 lowercase hex digits; anything else is refused (a pin that can never match
    would only turn into a confusing mismatch later)."""
    if not isinstance(pin, str) or not _HEX64.fullmatch(pin):
        shown = repr(pin) if len(repr(pin)) <= 80 else repr(pin)[:76] + "...'"
        raise EngineError(f"sha256 pin must be 64 hexadecimal digits, got {shown}")
    return pin.lower()


def sha256_fd(fd: int, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of the whole file behind ``fd``, read in ``chunk_bytes`` pieces into one
    reused buffer (the file is never held in memory). Reads by offset, so the descriptor's
    position neither matters nor moves."""
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    offset = 0
    while True:
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            break
        h.update(view[:n])
        offset += n
    return h.hexdigest()


def sha256_buffer(buf, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a buffer (the model file's memory map), fed in ``chunk_bytes`` slices so
    that no copy of it is made."""
    h = hashlib.sha256()
    with memoryview(buf) as view:  # released at once: a live view would keep the map from closing
        for i in range(0, len(view), chunk_bytes):
            h.update(view[i:i + chunk_bytes])
    return h.hexdigest()


def open_pinned(path, pin: str):
    """``GGUFFile(path)`` once the file's SHA-256 equals ``pin`` (normalized). The hash is read
    through the descriptor that is then mapped, and nothing is parsed before it matches; a
    mismatch raises ``GGUFError`` naming the file and both hashes."""
    from .gguf_file import GGUFFile

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        actual = sha256_fd(fd)
        if actual != pin:
            raise GGUFError(f"{path}: sha256 mismatch: expected {pin}, got {actual}")
        return GGUFFile(path, fd)
    finally:
        os.close(fd)
