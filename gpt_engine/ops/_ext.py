"""Builds and loads the CUDA extension (csrc/*.cu + csrc/bindings.cpp).

The build is a JIT build through torch.utils.cpp_extension with ninja. Its
directory is build/ops_ext/<content hash> inside the repository (git ignores
/build/), so a warm GPU machine reuses the objects of an earlier call with the
same sources, and never objects built from other ones (build_dir). Nothing here runs on a
machine without CUDA: `available()` is False there and no op registers a CUDA
kernel.
"""
from __future__ import annotations

import functools
import hashlib
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
    # not a dot-file: pathlib's glob matches them, the harness's source rules never count them
    return sorted(p for p in CSRC.glob("*.cu") if not p.name.startswith(".")) + [CSRC / "bindings.cpp"]


def _flags() -> dict:
    return dict(extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=["-O3", "-std=c++17", "-lineinfo", "-Xptxas=-warn-spills"],
                extra_include_paths=[str(CSRC)])


def build_dir() -> pathlib.Path:
    """BUILD_DIR/<hash of every csrc file's bytes, the flags, torch and CUDA versions>.

    Keyed by content, not by ninja's file times: a tree copied onto a warm machine keeps its
    sources' times, and objects built there earlier from other sources (another checkout's, a
    helper's) can be newer, so ninja would call them up to date and the run would test kernels
    that are not the code being judged. Each distinct source set builds in its own directory."""
    h = hashlib.sha256()
    for p in sorted(CSRC.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(build_config())
    return BUILD_DIR / h.hexdigest()[:16]


def build_config() -> bytes:
    """What a build depends on besides the csrc files' bytes (tests/bench/ext_seed.py keys its
    seeds by it too)."""
    return repr((_flags(), NVCC_ARCH, torch.__version__, torch.version.cuda)).encode()


@functools.cache
def load():
    """The compiled module (built on first use, reused from BUILD_DIR after)."""
    if not available():
        raise RuntimeError("gpt_engine CUDA extension needs CUDA torch and a GPU")
    from torch.utils.cpp_extension import load as _load

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    # torch turns this into exactly NVCC_ARCH (and nothing for other cards).
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0a"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    return _load(
        name="gpt_engine_ops_ext",
        sources=[str(p) for p in sources()],
        build_directory=str(out),
        verbose=bool(os.environ.get("GPT_ENGINE_BUILD_VERBOSE")),
        **_flags(),
    )
