"""Token sampling and the generation loop (prefill once, then one-token decode
steps against the preallocated KV cache)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .errors import EngineError


@dataclass
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy (argmax)
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int | None = None

    def check(self) -> None:
        if not _is_number(self.temperature) or not (0.0 <= self.temperature < float("inf")):  # also NaN
            raise EngineError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise EngineError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not _is_number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise EngineError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise EngineError(f"seed must be None or an integer in [0, 2^63), got {self.seed!r}")


# Seeds go into torch.Generator.manual_seed and, on the GPU, an int64 tensor (sampling.py):
# [0, 2^63) fits both.
SEED_LIMIT = 1 << 63


def _is_int(v) -> bool:
    """An integer (Python or numpy/torch scalar), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_max_new_tokens(n) -> None:
    if not _is_int(n) or n < 0:
        raise EngineError(f"max_new_tokens must be an integer >= 0, got {n!r}")


def distribution(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The probabilities [V] (float64, CPU, summing to 1) that ``sample`` draws from at
    temperature > 0, in transformers' order (temperature, top-k, top-p): logits / temperature,
    one softmax over the whole vocabulary; top-k keeps every token at least as likely as the
    k-th (ties kept); top-p (nucleus, Holtzman et al. 2019: the smallest set of most likely
    tokens whose probability reaches p) is taken over what top-k kept, renormalised, as
    transformers' TopPLogitsWarper and llama.cpp's top-p sampler see it after top-k; the result
    is renormalised. The oracle of the device sampler (sampling.py); tests/test_sampling.py
    checks it against transformers' warpers."""
    x = logits.detach().to("cpu", torch.float64)
    _check_logits(x)
    # shifted by the maximum before the division, so that a tiny temperature gives 0 for the most
    # likely token(s) and -inf for the rest (the greedy limit), never inf / inf
    probs = torch.softmax((x - x.max()) / p.temperature, dim=-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if p.top_k and p.top_k < probs.numel():
        kth = torch.topk(probs, p.top_k).values[-1]
        keep &= probs >= kth
    if p.top_p < 1.0:
        kept = probs * keep
        sorted_p, order = torch.sort(kept / kept.sum(), descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p   # kept mass strictly above each token
        nucleus = torch.zeros_like(keep)
        nucleus[order] = before < p.top_p               # always keeps the most likely token
        keep &= nucleus
    probs = probs * keep
    return probs / probs.sum()


def _check_logits(x: torch.Tensor) -> None:
    """NaN or +inf in the logits (a model whose weights or activations overflow) would make the
    draw meaningless; -inf is a masked id (past the tokenizer's vocabulary), as long as one id is left."""
    if torch.isnan(x).any() or torch.isposinf(x).any() or not torch.isfinite(x).any():
        raise EngineError("the model produced non-finite logits (NaN or inf): its weights or activations overflow")


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from logits [V] on the CPU: argmax when temperature is 0, else a
    draw from ``distribution`` with the seeded generator. Float64 on the CPU, so a seed gives
    the same draw whatever device made the logits (the CPU path; the GPU path samples on the
    device with sampling.py and its own counter-based generator)."""
    if p.temperature == 0.0:
        _check_logits(logits)  # the argmax of NaNs is token 0, silently
        return int(torch.argmax(logits).item())
    return int(torch.multinomial(distribution(logits, p), 1, generator=generator).item())


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # generated ids only
    text: str = ""                                       # decoded generated text
    finish_reason: str = "length"                        # "eos" or "length"
    # wall clock, seconds: call to first new token on the host, then first to last
    prefill_s: float = 0.0
    decode_s: float = 0.0


def tokens(model, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
           stop_at_eos: bool = True, result: Generation | None = None) -> Iterator[int]:
    """Yield new token ids one by one: prefill once, then one decode step per token.
    ``result`` (optional) collects the ids and the finish reason as they come."""
    params.check()
    check_max_new_tokens(max_new_tokens)
    result = result if result is not None else Generation(prompt_ids=list(prompt_ids))
    if max_new_tokens == 0:
        return
    rng = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    cache = model.new_cache(len(prompt_ids) + max_new_tokens)
    logits = model.step(prompt_ids, cache)
    eos = model.tokenizer.eos_id
    n_valid = model.tokenizer.vocab_size  # a tokenizer.json may cover fewer ids than the padded embedding
    for i in range(max_new_tokens):
        if logits.shape[-1] > n_valid:
            logits = logits.clone()
            logits[n_valid:] = float("-inf")  # ids the tokenizer cannot decode are never drawn
        tok = sample(logits, params, rng)
        result.token_ids.append(tok)
        yield tok
        if stop_at_eos and eos is not None and tok == eos:
            result.finish_reason = "eos"
            return
        if i + 1 < max_new_tokens:
            logits = model.step([tok], cache)


def run(model, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
        stop_at_eos: bool = True) -> Generation:
    """The whole loop at once."""
    gen = Generation(prompt_ids=list(prompt_ids))
    for _ in tokens(model, prompt_ids, max_new_tokens, params, stop_at_eos, gen):
        pass
    return gen
