"""GT-044 on the GPU: under a set device memory budget, ``memory_estimate()`` says fit or no-fit
correctly and is within a few percent of the measured use.

Measured use: ``torch.cuda.max_memory_allocated()`` from before the load through a 1,000-token
prompt and 24 greedy tokens (``Model.generate``: graph-captured prefill and decode), less what was
allocated before the load, after a warm-up on a small model (cuBLAS handles and workspaces, the
extension: once per process, not the model's). The estimate is taken for the KV capacity the
decoder allocated for that request. The budget is set with
``torch.cuda.set_per_process_memory_fraction`` (tests/test_oom.py's ``memory_limit``): a budget
the estimate fits in must run; a budget below the measured use must make the estimate say no-fit
and the request fail with ``OutOfMemoryError``. Files: real shapes with random weights
(gpt_engine.benchmodels, written in seconds), a quantized and an MXFP4 one."""
from __future__ import annotations

import gc

import pytest
import torch

import gpt_engine
from gpt_engine import OutOfMemoryError
from tests.test_oom import memory_limit
from tests.tolerances import tol

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]

T, N = 1000, 24


def _settle() -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def _request(path):
    """Load and generate; returns memory_estimate() for this request."""
    m = gpt_engine.load(path, device="cuda")
    m.generate(list(range(1, T + 1)), max_new_tokens=N, stop_at_eos=False)
    torch.cuda.synchronize()
    cap = m.decoder(1, T + N, m.cuda_graphs).state.capacity  # the decoder the request used
    return m.memory_estimate(n_ctx=cap, prompt_tokens=T)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    from gpt_engine import benchmodels

    d = tmp_path_factory.mktemp("bench-models")
    m = gpt_engine.load(benchmodels.ensure(d, "gpt2-124m", "F16"), device="cuda")
    m.generate(list(range(1, 300)), max_new_tokens=4, stop_at_eos=False)
    del m
    _settle()
    return d


@pytest.mark.story("GT-044")
@pytest.mark.parametrize("shape,qtype", [("llama-1b", "Q8_0"), ("gpt2-1.5b", "MXFP4")])
def test_estimate_is_within_a_few_percent_and_says_fit_or_no_fit(warm, shape, qtype):
    from gpt_engine import benchmodels

    path = benchmodels.ensure(warm, shape, qtype)
    before = _settle()
    reserved_before = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    est = _request(path)
    peak = torch.cuda.max_memory_allocated() - before
    reserved = torch.cuda.max_memory_reserved() - reserved_before  # what a budget caps (reported, not asserted)
    total = est["total"]
    terms = {k: round(est[k] / 2**20, 1) for k in ("weights", "kv_cache", "transient", "activations", "logits", "dequant")}
    report = (f"estimate {total / 2**20:.1f} MiB vs measured peak {peak / 2**20:.1f} MiB ({total / peak - 1:+.1%}); "
              f"peak reserved {reserved / 2**20:.1f} MiB ({reserved / total - 1:+.1%} over the estimate); terms (MiB): {terms}")
    print(report)

    # fit: a budget the estimate fits in (with the same 5% margin) runs the request
    _settle()
    with memory_limit(int(total * (1 + tol("memory_estimate_rel")))):
        _request(path)
    # no fit: a budget below the measured use; the estimate must say so, and the request fails
    budget = int(peak * (1 - tol("memory_estimate_rel")))
    assert total > budget, f"the estimate says a {budget:,} B budget fits; " + report
    _settle()
    with memory_limit(budget):
        with pytest.raises(OutOfMemoryError):
            _request(path)
    assert _settle() <= before
    # and the estimate is within a few percent of what was used
    assert abs(total / peak - 1) <= tol("memory_estimate_rel"), report
