"""Builds and loads the CUDA extension (csrc/*.cu + csrc/bindings.cpp).

The build is a JIT build through torch.utils.cpp_extension with ninja. Its
directory is build/ops_ext inside the repository (git ignores /build/), so a
warm GPU machine reuses the objects of an earlier call. Nothing here runs on a
machine without CUDA: `available()` is False there and no op registers a CUDA
kernel.
"""
from __future__ import annotations

import functools
import os
import pathlib

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
BUILD_DIR = REPO / "build" / "ops_ext"
# sm_90a: the H100/H200 target; the `-gencode` spelling is the one that also
# accepts Hopper-only instructions with nvcc 13.0 (see the device notes).
NVCC_ARCH = "-gencode=arch=compute_90a,code=sm_90a"


def available() -> bool:
    """CUDA torch on a machine with a GPU: the kernels can be built and run."""
    return torch.version.cuda is not None and torch.cuda.is_available()


def sources() -> list[pathlib.Path]:
    return sorted(CSRC.glob("*.cu")) + [CSRC / "bindings.cpp"]


@functools.cache
def load():
    """The compiled module (built on first use, reused from BUILD_DIR after)."""
    if not available():
        raise RuntimeError("gpt_engine CUDA extension needs CUDA torch and a GPU")
    from torch.utils.cpp_extension import load as _load

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # torch turns this into exactly NVCC_ARCH (and nothing for other cards).
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0a"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    return _load(
        name="gpt_engine_ops_ext",
        sources=[str(p) for p in sources()],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", "-lineinfo", "-Xptxas=-warn-spills"],
        extra_include_paths=[str(CSRC)],
        build_directory=str(BUILD_DIR),
        verbose=bool(os.environ.get("GPT_ENGINE_BUILD_VERBOSE")),
    )
