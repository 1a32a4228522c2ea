"""GT-026 on the GPU: the full model forward through our CUDA kernels (fp16
activations, weights uploaded in their GGUF encoding) vs transformers in float32
on the CPU, on the same GGUF file; prefill + decode steps vs one full forward."""
from __future__ import annotations

import pytest
import torch

import gpt_engine
from tests.tolerances import tol

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]


def _nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


@pytest.mark.story("GT-026")
@pytest.mark.parametrize("arch,qtype", [("gpt2", "F16"), ("gpt2", "Q8_0"), ("llama", "F16"), ("llama", "Q4_1")])
def test_cuda_logits_match_transformers(models, arch, qtype):
    path = models.path(arch, qtype)
    m = gpt_engine.load(path, device="cuda")
    assert m.net.head.device.type == "cuda"
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, m.config.vocab_size, (61,), generator=g).tolist()
    ours = m.logits(ids)
    with torch.no_grad():
        ref = models.oracle(path)(torch.tensor([ids])).logits[0]
    assert torch.isfinite(ours).all()
    err = _nmse(ours, ref)
    assert err <= tol("nmse_fp16_model"), f"NMSE vs transformers = {err:.3g}"


@pytest.mark.story("GT-026")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_prefill_then_decode_equals_full_forward(models, arch):
    m = gpt_engine.load(models.path(arch, "F16"), device="cuda")
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, m.config.vocab_size, (40,), generator=g).tolist()
    full = m.logits(ids)
    cache = m.new_cache(len(ids))
    got = [m.step(ids[:16], cache)] + [m.step([t], cache) for t in ids[16:]]
    err = _nmse(torch.stack(got).float().cpu(), full[15:])
    assert err <= tol("nmse_fp16_model"), f"prefill+decode vs full forward NMSE = {err:.3g}"
