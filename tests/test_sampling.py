"""The device sampler (gpt_engine/sampling.py) against the CPU sampler's distribution
(generate.distribution, the oracle): chi-square over 20,000 draws per configuration, on the CPU
and on the GPU; greedy rows; the counter-based generator itself."""
import math

import pytest
import torch

from gpt_engine import sampling
from gpt_engine.generate import SamplingParams, distribution
from tests.tolerances import tol

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                               pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")])]
DRAWS = 20_000
ALPHA = 1e-4  # a wrong sampler fails at any alpha (its statistic is in the thousands); a right one
#              passes at this alpha except once in 10,000 seeds, and the seeds are fixed


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution: Q(dof/2, x/2)."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(x / 2, dtype=torch.float64)))


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over cells with expected count >= 5 (the rest pooled into one)."""
    n = counts.sum().item()
    exp = probs * n
    big = exp >= 5
    obs_cells = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp_cells = torch.cat([exp[big], exp[~big].sum()[None]])
    keep = exp_cells > 0
    stat = float(((obs_cells[keep] - exp_cells[keep]) ** 2 / exp_cells[keep]).sum())
    return stat, int(keep.sum()) - 1


CONFIGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (0.7, 5, 1.0),
    (1.3, 0, 0.8),
    (1.0, 50, 0.9),
    (2.0, 3, 0.7),
]


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_device_sampler_matches_cpu_distribution(device, cfg):
    temp, top_k, top_p = cfg
    g = torch.Generator().manual_seed(1234)
    logits = torch.randn(300, generator=g, dtype=torch.float32) * 2.0
    probs = distribution(logits, SamplingParams(temp, top_k, top_p))
    rows = logits.to(device).expand(DRAWS, -1).contiguous()
    ones = lambda v, dt: torch.full((DRAWS,), v, dtype=dt, device=device)  # noqa: E731
    ids = sampling.sample_rows(rows, 300, ones(temp, torch.float32), ones(top_k, torch.int64),
                               ones(top_p, torch.float32), ones(77, torch.int64),
                               torch.arange(DRAWS, device=device))
    counts = torch.bincount(ids.cpu(), minlength=300)
    # tokens outside the oracle's support are never drawn
    assert counts[probs == 0].sum() == 0, "drew a token the CPU sampler excludes"
    assert (probs > 0).sum() >= 2, "degenerate configuration: nothing to test"
    stat, dof = chi_square(counts, probs)
    p = chi2_sf(stat, dof)
    assert p > ALPHA, f"chi-square {stat:.1f} on {dof} dof, p = {p:.2e}"


ORACLE_CASES = CONFIGS + [(0.5, 0, 0.95), (1.0, 300, 0.5), (1.0, 1, 0.3)]


def transformers_distribution(logits: torch.Tensor, temp: float, top_k: int, top_p: float) -> torch.Tensor:
    """The independent oracle: transformers' own warpers in the order its generate() applies them
    (temperature, top-k, top-p), then a softmax over what is left."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    scores = logits.float()[None].clone()
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(temp)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return torch.softmax(scores[0].double(), dim=-1)


@pytest.mark.story("GT-027")
@pytest.mark.parametrize("cfg", ORACLE_CASES, ids=str)
def test_distribution_matches_transformers_warpers(cfg):
    """generate.distribution (the device sampler's oracle) against transformers: the same support
    and the same probabilities, top-p taken over what top-k kept (renormalised)."""
    temp, top_k, top_p = cfg
    g = torch.Generator().manual_seed(1234)
    logits = torch.randn(300, generator=g, dtype=torch.float32) * 2.0
    ours = distribution(logits, SamplingParams(temp, top_k, top_p))
    # the case is decisive: no token's kept mass above it is within the margin of p
    probs = torch.softmax(logits.double() / temp, -1)
    kept = probs if not top_k else probs * (probs >= torch.topk(probs, top_k).values[-1])
    sp = torch.sort(kept / kept.sum(), descending=True).values
    before = torch.cumsum(sp, 0) - sp
    if top_p < 1.0:
        assert (before[sp > 0] - top_p).abs().min() > tol("sampler_top_p_margin"), "boundary case: not decisive"
    ref = transformers_distribution(logits, temp, top_k, top_p)
    assert torch.equal(ours > 0, ref > 0), f"support {int((ours > 0).sum())} tokens, transformers {int((ref > 0).sum())}"
    assert (ours > 0).sum() >= 1
    rel = ((ours - ref).abs() / ref.clamp_min(1e-300))[ref > 0].max().item()
    assert rel < tol("sampler_probs_rel_vs_transformers"), f"max relative difference {rel:.2e}"


@pytest.mark.story("GT-027")
def test_top_p_is_taken_over_what_top_k_kept():
    """Two near-equal tokens survive top-k = 2 with ~0.52 / ~0.48 of the kept mass; top-p = 0.5
    then keeps only the first (transformers and llama.cpp agree). Over the whole vocabulary the
    first holds under 0.5 of the mass, so a top-p taken there would keep both."""
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9, -5.0])
    probs = distribution(logits, SamplingParams(1.0, 2, 0.5))
    assert torch.softmax(logits.double(), -1)[1] < 0.5  # the trap the rule must not fall into
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert torch.equal(probs > 0, transformers_distribution(logits, 1.0, 2, 0.5) > 0)


@pytest.mark.story("GT-027")
def test_chi_square_rejects_a_wrong_sampler():
    """The statistic has power: drawing from the un-truncated softmax when top-k is on fails."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(300, generator=g) * 2.0
    wrong = torch.multinomial(torch.softmax(logits.double() / 0.7, -1), DRAWS, replacement=True, generator=g)
    probs = distribution(logits, SamplingParams(0.7, 20, 1.0))
    stat, dof = chi_square(torch.bincount(wrong, minlength=300), probs)
    assert chi2_sf(stat, dof) < ALPHA


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_greedy_rows_take_the_argmax(device):
    logits = torch.randn(4, 1000, device=device)
    temp = torch.tensor([0.0, 1.0, 0.0, 0.8], device=device)
    ids = sampling.sample_rows(logits, 1000, temp, torch.zeros(4, dtype=torch.long, device=device),
                               torch.ones(4, device=device), torch.arange(4, device=device),
                               torch.zeros(4, dtype=torch.long, device=device))
    am = logits.argmax(-1)
    assert ids[0] == am[0] and ids[2] == am[2]


@pytest.mark.story("GT-027", "GX-003")
def test_counter_generator_is_uniform_and_reproducible():
    n = 200_000
    u = sampling.uniform(torch.full((n,), 3, dtype=torch.long), torch.arange(n))
    assert u.dtype == torch.float64 and (u >= 0).all() and (u < 1).all()
    counts = torch.histc(u.float(), bins=50, min=0, max=1)
    stat = float(((counts - n / 50) ** 2 / (n / 50)).sum())
    assert chi2_sf(stat, 49) > ALPHA
    assert torch.equal(u, sampling.uniform(torch.full((n,), 3, dtype=torch.long), torch.arange(n)))
    other = sampling.uniform(torch.full((n,), 4, dtype=torch.long), torch.arange(n))
    assert (u != other).float().mean() > 0.999  # another seed is another stream
    # neighbouring counters are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_counter_generator_is_the_same_on_cpu_and_gpu():
    seeds = torch.randint(-(2**62), 2**62, (4096,))
    ctr = torch.randint(0, 2**40, (4096,))
    assert torch.equal(sampling.uniform(seeds, ctr), sampling.uniform(seeds.cuda(), ctr.cuda()).cpu())


@pytest.mark.story("GT-027")
def test_chi2_sf_known_values():
    # chi-square(2) survival is exp(-x/2); chi-square(1) at 3.841 is 0.05
    assert math.isclose(chi2_sf(3.0, 2), math.exp(-1.5), rel_tol=1e-9)
    assert math.isclose(chi2_sf(3.841458820694124, 1), 0.05, rel_tol=1e-6)


@pytest.mark.story("GT-027", "GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_a_tiny_temperature_draws_the_argmax(device):
    """float32 logits / 1e-40 overflowed to inf / inf = NaN probabilities, and the inverse-CDF draw
    then returned an arbitrary id; shifted by the row's maximum first, the limit is the argmax."""
    logits = torch.randn(3, 500, device=device) * 3
    ids = sampling.sample_rows(logits, 500, torch.full((3,), 1e-40, device=device),
                               torch.zeros(3, dtype=torch.long, device=device), torch.ones(3, device=device),
                               torch.arange(3, device=device), torch.arange(3, device=device))
    assert torch.equal(ids, logits.argmax(-1))
