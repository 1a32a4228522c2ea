"""Sampling inside the decode step: temperature, top-k, top-p, greedy, for B sequences at once,
in torch ops that run on the device with no host sync (so the whole step can be a CUDA graph).

Per row: probabilities = softmax(logits / temperature) over the valid vocabulary; sorted once
(descending); top-k keeps every token at least as likely as the k-th (ties kept, like the CPU
sampler), top-p keeps a token while the mass strictly above it, as a share of what top-k kept,
is below p (transformers' and llama.cpp's top-p after top-k); the kept mass is renormalised and
drawn from by inverse CDF with one uniform number. Greedy rows (temperature
0) take the argmax (lowest index among equal maxima). The CPU sampler in generate.py
(``distribution``) is the oracle; the draws differ (another generator) but the distribution is
the same, which tests/test_sampling.py checks with a chi-square test.

The uniform comes from a counter-based generator: splitmix64's finaliser (Steele, Lea and
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) applied to (seed, position).
A seeded sequence is reproducible whatever batch it runs in and however often the graph
replays, and no generator state has to live on the host.
"""
from __future__ import annotations

import torch

# splitmix64 constants (Steele et al. 2014; the same as java.util.SplittableRandom), as signed
# int64: torch integer arithmetic wraps modulo 2^64.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _srl(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1) from int64 seed and counter tensors (same shape): 53 random bits of
    mix64(mix64(seed) + (counter + 1) * golden)."""
    z = _mix64(_mix64(seed) + (counter + 1) * _GOLDEN)
    return _srl(z, 11).to(torch.float64) * (1.0 / (1 << 53))


def sample_rows(logits: torch.Tensor, n_valid: int, temperature: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float32 -> token ids [B] int64. Per row: temperature (float32, 0 = greedy),
    top_k (int64, 0 = off), top_p (float32, 1 = off), seed and counter (int64)."""
    x = logits[:, :n_valid].float()
    greedy = x.argmax(dim=-1)
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    # shifted by the row's maximum before the division: a tiny temperature then gives 0 for the most
    # likely token(s) and -inf for the rest (the greedy limit), never inf / inf (the CPU sampler too)
    probs = torch.softmax((x - x.max(dim=-1, keepdim=True).values) / t[:, None], dim=-1)
    sp, order = torch.sort(probs, dim=-1, descending=True)
    k = torch.where((top_k > 0) & (top_k < n_valid), top_k, torch.full_like(top_k, n_valid))
    kth = sp.gather(1, (k - 1)[:, None])
    keep = sp >= kth
    masked = sp * keep
    cum = torch.cumsum(masked, dim=-1)
    before = cum - masked  # kept mass strictly above each token; cum[:, -1] is all of it
    keep &= (before < top_p[:, None] * cum[:, -1:]) | (top_p[:, None] >= 1.0)
    final = sp * keep
    cdf = torch.cumsum(final.double(), dim=-1)
    u = uniform(seed, counter) * cdf[:, -1]
    idx = torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=n_valid - 1)
    drawn = order.gather(1, idx)[:, 0]
    return torch.where(temperature > 0, drawn, greedy)
