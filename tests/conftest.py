"""Shared fixtures: seeded test models written once per session, and their oracles.

The oracle for a model file is transformers loading the SAME GGUF file with its
own loader (which dequantizes through gguf-py): it shares no code with ours.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOLLM2_PROMPT = "The capital of France is"


class ModelFactory:
    def __init__(self, root: Path):
        self.root = root
        self._made: dict[tuple, Path] = {}
        self._oracles: dict[Path, object] = {}

    def path(self, arch: str = "gpt2", qtype: str = "F32", vocab: str = "small", **kw) -> Path:
        from gpt_engine import testmodels

        key = (arch, qtype, vocab, tuple(sorted(kw.items())))
        if key not in self._made:
            name = "-".join([arch, qtype, vocab] + [f"{k}{v}" for k, v in sorted(kw.items())]) + ".gguf"
            d = self.root / name[:-5]
            d.mkdir(parents=True, exist_ok=True)
            make = testmodels.make_gpt2 if arch == "gpt2" else testmodels.make_llama
            make(d / name, qtype=qtype, vocab=vocab, **kw)
            self._made[key] = d / name
        return self._made[key]

    def oracle(self, path: Path):
        """transformers' own GGUF loader on the same file, float32, eval mode."""
        if path not in self._oracles:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM

            transformers.logging.set_verbosity_error()
            self._oracles[path] = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        return self._oracles[path]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from gpt_engine.default_model import default_model_path

    return default_model_path()


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
