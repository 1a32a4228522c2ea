"""A preallocated KV cache (gpt-fast style): one [B, Hkv, S, D] buffer per layer
for keys and one for values, allocated once, written in place by ``ops.kv_append``.
Nothing is allocated per decode step, so the step can be captured in a CUDA graph."""
from __future__ import annotations

import torch

from .errors import ContextOverflowError


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head_kv: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layer, batch, n_head_kv, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # tokens written so far (host counter: checks need no device sync)

    def reserve(self, n_new: int) -> int:
        """Check that ``n_new`` more tokens fit; returns the start position."""
        if self.length + n_new > self.max_len:
            raise ContextOverflowError(
                f"KV cache full: {self.length} tokens cached + {n_new} new > capacity {self.max_len}")
        return self.length

    def slot(self, b: int) -> "KVCache":
        """Sequence b's rows as a batch-1 cache (views of the same storage), length 0: a
        prompt is prefilled into one slot of a batch while the others hold other prompts."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, b:b + 1], self.v[:, b:b + 1]
        view.max_len, view.length = self.max_len, 0
        return view

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
