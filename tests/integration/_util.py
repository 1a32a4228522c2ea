"""Helpers of the integration suite (GT-042): the device parameter, the per-device logit bound
against the transformers oracle, and model files for every weight type.

The suite goes through the public API only (``gpt_engine.load``, ``Model.tokenizer``,
``Model.logits``, ``Model.generate``, the ``gpt-engine`` command line). Model files and oracles
come from the session fixture ``models`` (tests/conftest.py: seeded transformers models written
as GGUF by ``gpt_engine.testmodels``; the oracle is transformers loading the same file with its
own gguf-py based loader). This is not a conftest: a conftest would be loaded by every run and
become a source of every story.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tolerances import tol

HAS_CUDA = torch.cuda.is_available()
# the project's convention for CUDA tests (tests/test_cuda_graph.py): marked cuda, skipped without a GPU
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")])
DEVICES = ["cpu", CUDA]

# Every weight type the engine reads (gpt_engine.quants). K-quants need rows of whole 256-value
# super-blocks: n_embd 256 and an FFN width that is a multiple of 256 (GPT-2's is 4 x n_embd).
WEIGHT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4")
K_QUANT_SHAPE = {"gpt2": {"n_embd": 256}, "llama": {"n_embd": 256, "n_ff": 512}}
# the generator writes these itself (gguf-py's quantizers, random valid blocks for Q4_K/Q6_K);
# the others are re-encoded from its F32 file of the same shape by testmodels.requantize_gguf
REQUANTIZED = {"Q5_K"}


def model_file(models, arch: str, qtype: str, **kw) -> Path:
    """A GGUF test model whose 2-D weights are in ``qtype`` (1-D norms and biases stay F32)."""
    if qtype.endswith("_K"):
        kw = {**K_QUANT_SHAPE[arch], **kw}
    if qtype not in REQUANTIZED:
        return models.path(arch, qtype, **kw)
    from gpt_engine import testmodels
    from gpt_engine.gguf_file import GGUFFile

    src = models.path(arch, "F32", **kw)
    dst = src.with_name(src.name.replace("-F32-", f"-{qtype}-"))
    if not dst.exists():
        with GGUFFile(src) as f:
            plan = testmodels.uniform_plan(f.tensors, qtype)
        testmodels.requantize_gguf(src, dst, plan, qtype)
    return dst


def file_types(path: Path) -> set[str]:
    """The tensor types gguf-py (not our reader) finds in the file."""
    import gguf

    return {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def prompt_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def assert_logits_match(ours: torch.Tensor, ref: torch.Tensor, device: str) -> None:
    """The CPU path runs in float32 like the oracle: max |diff| <= logits_max_abs_f32. The GPU
    path runs fp16 activations: NMSE <= nmse_fp16_model (the bounds of GT-026's tests)."""
    assert ours.shape == ref.shape and ours.dtype == torch.float32, (ours.shape, ref.shape, ours.dtype)
    assert torch.isfinite(ours).all(), "non-finite logits"
    if device == "cpu":
        err = (ours - ref).abs().max().item()
        assert err <= tol("logits_max_abs_f32"), f"max |ours - transformers| = {err:.3g}"
    else:
        err = nmse(ours, ref)
        assert err <= tol("nmse_fp16_model"), f"NMSE vs transformers = {err:.3g}"


def oracle_greedy(models, path: Path, prompt: list[int], n: int, pad: int) -> list[int]:
    """transformers' own greedy generation on the same file: exactly ``n`` new ids."""
    with torch.no_grad():
        out = models.oracle(path).generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                                           min_new_tokens=n, pad_token_id=pad)
    return out[0, len(prompt):].tolist()


EXE = Path(sys.executable).with_name("gpt-engine")


def cli(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command line as a user runs it: the installed ``gpt-engine`` executable, or where the
    package is not installed (the GPU machine runs the tree as it is) ``python -m gpt_engine.cli``,
    the same entry point."""
    root = str(Path(__file__).resolve().parents[2])
    cmd = [str(EXE)] if EXE.is_file() else [sys.executable, "-m", "gpt_engine.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=timeout, env=env)
