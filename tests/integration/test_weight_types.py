"""GT-042: every weight type the engine reads loads through ``gpt_engine.load`` on each device and
gives the logits of transformers running the same file (gguf-py dequantizes it for transformers;
our own dequantizer is never the oracle). gguf-py's reader confirms the file really holds the type."""
from __future__ import annotations

import pytest
import torch

import gpt_engine

from ._util import DEVICES, WEIGHT_TYPES, assert_logits_match, file_types, model_file, prompt_ids


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_weight_type_matches_transformers(models, arch, qtype, device):
    path = model_file(models, arch, qtype)
    assert qtype in file_types(path)
    m = gpt_engine.load(path, device=device)
    ids = prompt_ids(29, m.config.vocab_size, seed=len(qtype) * 7 + len(arch))
    ours = m.logits(ids)
    with torch.no_grad():
        ref = models.oracle(path)(torch.tensor([ids])).logits[0]
    assert_logits_match(ours, ref, device)
