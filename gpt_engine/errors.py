"""The engine's error types.

Every bad input (malformed file, wrong argument, out-of-range token) raises an
``EngineError`` subclass whose message is one line naming what is wrong, and so does a
request the device has no memory for (``OutOfMemoryError``); the CLI turns it into
``error: ...`` on stderr and exit status 2.
"""


class EngineError(Exception):
    """Base of every error the engine raises on purpose: bad input, or no memory for it."""


class GGUFError(EngineError, ValueError):
    """A GGUF file is malformed, truncated, or uses something we do not support."""


class TokenizerError(EngineError):
    """A tokenizer could not be found, built, or disagrees with the model."""


class ModelError(EngineError):
    """The model's config or weights are unusable (missing tensors, bad shapes, unknown arch)."""


class ContextOverflowError(EngineError):
    """A request would go past the model's context length or the KV cache."""


class OutOfMemoryError(EngineError, MemoryError):
    """The device ran out of memory while loading a model or serving a request. What the failed
    call had allocated is released before this is raised: the process, and a model that was
    already loaded, stay usable. A MemoryError too, so code that handles running out of memory
    in general catches it."""
