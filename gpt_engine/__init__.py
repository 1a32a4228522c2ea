"""gpt-engine: GPT-family inference for GGUF models.

Public interface: ``load(path=None, device="cpu", sha256=None) -> Model`` (no path: the
embedded SmolLM2-135M; ``sha256``: a pin the file's hash must match), ``Model.tokenizer.encode/decode``,
``Model.logits``, ``Model.generate``, ``Model.sha256``, and ``dequantize(data, qtype)``.
"""
from .errors import ContextOverflowError, EngineError, GGUFError, ModelError, OutOfMemoryError, TokenizerError


def dequantize(data, qtype):
    """Raw GGUF blocks -> float32 (``gpt_engine.quants.dequantize``)."""
    from .quants import dequantize as _dequantize  # torch only when used: the CLI answers --help
                                                   # and bad arguments without importing it
    return _dequantize(data, qtype)


def load(path=None, device="cpu", **kw):
    from .model import load as _load  # torch-heavy imports only when a model is loaded

    return _load(path, device, **kw)


__all__ = ["load", "dequantize", "EngineError", "GGUFError", "ModelError", "TokenizerError",
           "ContextOverflowError", "OutOfMemoryError"]
