"""Float32 CPU products with Q4_0 / Q4_1 / Q8_0 weights read packed (csrc_cpu/q4_gemv.c).

The float32 CPU decode step is bound by the bytes its products read: F.linear on the dense
float32 cache reads 32 bits per weight, these blocks 4.5 (Q4_0), 5 (Q4_1) or 8.5 (Q8_0: the
SmolLM2 files' tied LM head, 49152 x 576, 113 MB as float32 against 30 MB packed); torch 2.13 has no
vectorized float32 kernel for them (its int4 kernel runs a scalar loop in float32:
docs/quality.md). ``gemv`` is y = x @ W.T for a few rows of x (the decode case), float32
accumulation; its results differ from F.linear on the dequantized weights only in float32
rounding (the summation order is documented in the C file). ``dequantize`` is gguf-py's
dequantization, bit for bit, for products with more rows (a prompt's prefill). ``Product`` binds
both to one weight with its checks done once (what ``QWeight.linear`` calls).

The C file is compiled on first use with the system C compiler (``cc``; ``CC`` overrides) into
build/cpu_q4/<hash of the source, the flags, the compiler and the CPU's flags> inside the
repository (git ignores /build/), -O3 -march=native: on this project's Xeon (AVX-512) the
512-bit path, an AVX2 path elsewhere, a scalar one without AVX2. OpenMP threads split the output
rows; the library links libgomp.so.1, which resolves to the libgomp torch already loaded (same
soname), so torch's intra-op pool is the one used, sized by torch.get_num_threads() per call.
No compiler, or a failed build or load: ``available()`` is False after one warning, and
QWeight.linear keeps the dense float32 path (the dense cache then holds these weights too).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import warnings

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "csrc_cpu" / "q4_gemv.c"
BUILD_DIR = REPO / "build" / "cpu_q4"
# -ffp-contract=off: q4_dequant must round d * q and + m separately, as gguf-py (numpy) does;
# the product's multiply-adds are explicit intrinsics / fmaf, unaffected
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
MAX_ROWS = 8  # rows of x per gemv call (MAX_ROWS in the C file)
TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}  # GGMLQuantizationType values the kernel reads
BLOCK_BYTES = {2: 18, 3: 20, 8: 34}  # gguf-py GGML_QUANT_SIZES


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_flags() -> str:
    # -march=native: a build is only valid on a CPU with the same instruction sets
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build_dir(cc: str) -> pathlib.Path:
    """BUILD_DIR/<hash of the source bytes, flags, compiler path and CPU flags>: a changed source
    or another machine's CPU builds anew, never reuses a library built from something else."""
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes() + b"\0" + repr((FLAGS, cc, _cpu_flags())).encode())
    return BUILD_DIR / h.hexdigest()[:16]


def _build() -> pathlib.Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
    out = build_dir(cc) / "libq4_gemv.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # build into a temporary name, then rename: a concurrent process never loads a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load():
    """The loaded library, or None (after one warning) when it cannot be built or loaded."""
    try:
        lib = ctypes.CDLL(str(_build()))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.q4_gemv.argtypes = [ctypes.c_int, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]
        lib.q4_dequant.argtypes = [ctypes.c_int, ptr, ptr, i64, i64, ctypes.c_int]
        lib.q4_gemv_multi.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, i64, i64, ctypes.c_int]
        lib.q4_gemv.restype = lib.q4_dequant.restype = lib.q4_simd_width.restype = ctypes.c_int
        lib.q4_gemv_multi.restype = ctypes.c_int
        return lib
    except Exception as e:  # noqa: BLE001 - any failure means: keep the dense path
        warnings.warn(f"gpt_engine: the float32 Q4 CPU kernel ({SOURCE.name}) is unavailable ({e}); "
                      "Q4_0/Q4_1/Q8_0 products use the dense float32 cache instead (slower, more memory)",
                      RuntimeWarning, stacklevel=2)
        return None


def available() -> bool:
    return load() is not None


def _check_weight(raw: torch.Tensor, qtype: int, n: int, k: int) -> None:
    if qtype not in TYPES:
        raise ValueError(f"cpu_q4: type {qtype} is not Q4_0/Q4_1/Q8_0")
    if k % 32 or k <= 0 or n <= 0:
        raise ValueError(f"cpu_q4: weight [{n}, {k}]: in-features must be a positive multiple of 32")
    if (raw.device.type != "cpu" or raw.dtype != torch.uint8 or not raw.is_contiguous()
            or tuple(raw.shape) != (n, k // 32 * BLOCK_BYTES[qtype])):
        raise ValueError(f"cpu_q4: raw must be contiguous CPU uint8 [{n}, {k // 32 * BLOCK_BYTES[qtype]}], "
                         f"got {raw.dtype} {tuple(raw.shape)} on {raw.device}")


def gemv(x: torch.Tensor, raw: torch.Tensor, qtype: int, n: int) -> torch.Tensor:
    """x [..., K] float32 (at most MAX_ROWS rows) @ W.T -> [..., n] float32; W [n, K] as its raw
    GGUF blocks [n, K/32 * block bytes]."""
    k = x.shape[-1]
    _check_weight(raw, qtype, n, k)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if x.dtype != torch.float32 or x.device.type != "cpu" or not 1 <= m <= MAX_ROWS:
        raise ValueError(f"cpu_q4.gemv: x must be float32 on the CPU with 1..{MAX_ROWS} rows, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}")
    lib = load()
    if lib is None:
        raise RuntimeError("cpu_q4: kernel unavailable")
    x2 = x2.contiguous()
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.q4_gemv(qtype, raw.data_ptr(), x2.data_ptr(), y.data_ptr(), m, n, k, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"cpu_q4.gemv: kernel refused m={m} n={n} k={k} type={qtype}")
    return y.reshape(*x.shape[:-1], n)


class Product:
    """``gemv``/``dequantize`` bound to one weight, its checks done once: the per-call Python
    cost matters in a decode step of ~200 products of ~20-50 us each."""

    def __init__(self, raw: torch.Tensor, qtype: int, n: int, k: int):
        _check_weight(raw, qtype, n, k)
        lib = load()
        if lib is None:
            raise RuntimeError("cpu_q4: kernel unavailable")
        self.raw, self.qtype, self.n, self.k = raw, int(qtype), int(n), int(k)
        self._gemv, self._ptr = lib.q4_gemv, raw.data_ptr()

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., k] float32 on the CPU -> x @ W.T (+ bias) [..., n]: the kernel for at most MAX_ROWS
        rows, else F.linear on the matrix dequantized for this use (bit-identical to gguf-py's)."""
        k = self.k
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != k:
            raise ValueError(f"cpu_q4: x must be float32 [..., {k}] on the CPU, got {x.dtype} "
                             f"{tuple(x.shape)} on {x.device}")
        m = x.numel() // k
        if m > MAX_ROWS or m == 0:
            return torch.nn.functional.linear(x, dequantize(self.raw, self.qtype, self.n, k), bias)
        x2 = x if x.is_contiguous() else x.contiguous()
        y = torch.empty(*x.shape[:-1], self.n, dtype=torch.float32)
        if self._gemv(self.qtype, self._ptr, x2.data_ptr(), y.data_ptr(), m, self.n, k, torch.get_num_threads()):
            raise RuntimeError(f"cpu_q4.gemv: kernel refused m={m} n={self.n} k={k} type={self.qtype}")
        return y if bias is None else y.add_(bias)


MAX_MATS = 8  # weights per q4_gemv_multi call (MAX_MATS in the C file)


class Products:
    """Several weights [n_i, k] that multiply the same input (q, k, v; gate, up) as one call:
    ``x @ [W_0; W_1; ...].T`` -> [..., sum n_i], each output computed exactly as ``Product`` computes
    it for its own weight (the C file's q4_gemv_multi: one parallel region, the block sums of x
    once), so the result is bit-identical to ``torch.cat([Product(w)(x) for w], -1)``; more than
    MAX_ROWS rows: that concatenation (its dequantize + F.linear path)."""

    def __init__(self, products: list[Product]):
        if not 1 <= len(products) <= MAX_MATS or len({p.k for p in products}) != 1:
            raise ValueError(f"cpu_q4.Products: 1..{MAX_MATS} weights of one in-feature count, got "
                             f"{[(p.n, p.k) for p in products]}")
        lib = load()
        if lib is None:
            raise RuntimeError("cpu_q4: kernel unavailable")
        self.products, self.k = list(products), products[0].k
        self.n = sum(p.n for p in products)
        nw = len(products)
        # the argument arrays, built once (the raw tensors stay referenced by the Products)
        self._types = (ctypes.c_int * nw)(*[p.qtype for p in products])
        self._ptrs = (ctypes.c_void_p * nw)(*[p._ptr for p in products])
        self._ns = (ctypes.c_int64 * nw)(*[p.n for p in products])
        self._nw, self._multi = nw, lib.q4_gemv_multi

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != k:
            raise ValueError(f"cpu_q4: x must be float32 [..., {k}] on the CPU, got {x.dtype} "
                             f"{tuple(x.shape)} on {x.device}")
        m = x.numel() // k
        if m > MAX_ROWS or m == 0:
            return torch.cat([p(x) for p in self.products], dim=-1)
        x2 = x if x.is_contiguous() else x.contiguous()
        y = torch.empty(*x.shape[:-1], self.n, dtype=torch.float32)
        if self._multi(self._nw, self._types, self._ptrs, self._ns, x2.data_ptr(), y.data_ptr(), m, k,
                       torch.get_num_threads()):
            raise RuntimeError(f"cpu_q4.Products: kernel refused m={m} k={k} n={list(self._ns)}")
        return y


def dequantize(raw: torch.Tensor, qtype: int, n: int, k: int) -> torch.Tensor:
    """The [n, k] float32 weight, bit-identical to gguf-py's dequantization."""
    _check_weight(raw, qtype, n, k)
    lib = load()
    if lib is None:
        raise RuntimeError("cpu_q4: kernel unavailable")
    out = torch.empty(n, k, dtype=torch.float32)
    if lib.q4_dequant(qtype, raw.data_ptr(), out.data_ptr(), n, k, torch.get_num_threads()) != 0:
        raise RuntimeError(f"cpu_q4.dequantize: kernel refused n={n} k={k} type={qtype}")
    return out
