"""Settings read from environment variables: one parser, so every variable refuses bad values
with the same clear one-line error."""
from __future__ import annotations

import os


def whole_number(name: str, default: int, unit: str, error: type[Exception] = ValueError) -> int:
    """``name`` as a whole number >= 0 (``default`` when unset or blank); ``unit`` names what it
    counts in the error a bad value gets, raised as ``error``."""
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        n = int(v)
    except ValueError:
        raise error(f"{name} must be a whole number of {unit}, got {v!r}") from None
    if n < 0:
        raise error(f"{name} must be >= 0, got {n}")
    return n
