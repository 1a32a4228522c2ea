"""The read ceiling at a decode matrix's size, on the GPU machine (exploration, not evidence).

The GEMV bars (GT-033 packed >= 0.7 of copy, issue bars 0.8; GX-003 F16 >= 0.85) are ratios to
a 1 GiB device copy, while a decode GEMV reads 1-35 MB per call. This times a kernel that only
reads (tests/bench/read_ceiling.cu, built with nvcc and called through ctypes: each 16-byte
vector loaded once) over exactly those byte counts, timed the way tests/ops/test_linear_q.py
times the GEMV: a CUDA graph of back-to-back calls over distinct buffers, 512 MiB per replay
(nothing from L2), median of 20 replays, per call. Launch modes plain / PDL wait / PDL early,
a copy kernel of the same bytes (the dequantize's kind of work), and "hold" (each block keeps
its share in shared memory across the wait) at 1, 2 and 4 blocks per SM; the .cu file says what
each models. Then whole GPT-2 decode steps of nothing but their weight reads, in the same modes.
The ratio of each to the harness's 1 GiB copy (eager, as gates/bench.py measures it) is the most
that a kernel reading that many bytes in that way can score on the bar as the benchmarks measure it.

    python tests/bench/explore_read_ceiling.py [--blocks-per-sm 4]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import pathlib
import shutil
import statistics
import subprocess

import torch

from gpt_engine.bench import copy_bandwidth
from tests.ops._bench import event_times_ms, graphed

HERE = pathlib.Path(__file__).resolve().parent
# name: bytes per call (the GEMV benchmarks' shapes; packed sizes from docs/kernels/quant.md's floors)
SIZES = {
    "MXFP4 2880x2880": 2880 * 2880 // 32 * 17,
    "MXFP4 1600x6400": 1600 * 6400 // 32 * 17,
    "MXFP4 4096x4096": 4096 * 4096 // 32 * 17,
    "Q8_0 1600x6400": 1600 * 6400 // 32 * 34,
    "Q8_0 4096x4096": 4096 * 4096 // 32 * 34,
    "Q8_0 2880x2880": 2880 * 2880 // 32 * 34,
    "F16 768x768": 768 * 768 * 2,
    "F16 768x3072": 768 * 3072 * 2,
    "F16 2304x768": 2304 * 768 * 2,
    "F16 1600x1600": 1600 * 1600 * 2,
    "F16 1600x6400": 1600 * 6400 * 2,
    "F16 4800x1600": 4800 * 1600 * 2,
    "F16 2880x2880": 2880 * 2880 * 2,
    "F16 4096x4096": 4096 * 4096 * 2,
    # the whole-matrix MXFP4 -> fp16 dequantize (GT-029): packed bytes in, fp16 out; its copy
    # kernel cell (as many bytes moved, half read, half written) is the same-size reference
    "dequant 1600x6400 (r+w)": 1600 * 6400 // 32 * 17 + 1600 * 6400 * 2,
    "dequant 2880x2880 (r+w)": 2880 * 2880 // 32 * 17 + 2880 * 2880 * 2,
    "dequant 4096x4096 (r+w)": 4096 * 4096 // 32 * 17 + 4096 * 4096 * 2,
    "1 GiB": 1 << 30,
}


def _gpt2_step(d: int, layers: int, vocab: int, fmt: str) -> list[int]:
    """Bytes of every weight matrix a GPT-2 decode step reads, in order (qkv, proj, fc, fc proj
    per layer, then the tied head, which the packed test files keep in the same type)."""
    per = (lambda n, k: n * k * 2) if fmt == "F16" else (
        (lambda n, k: n * k // 32 * 17) if fmt == "MXFP4" else (lambda n, k: n * k // 32 * 34))
    mats = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers + [(vocab, d)]
    return [per(n, k) for n, k in mats]


# A whole decode step's weight reads at the kernel granularity the engine launches them: the
# step's time with nothing but these reads is the most its MBU could be with one kernel per matrix.
STEPS = {f"GPT-2 {name} {fmt} step": _gpt2_step(d, L, 50257, fmt)
         for name, d, L in (("124M", 768, 12), ("1.5B", 1600, 48)) for fmt in ("F16", "Q8_0", "MXFP4")}
POOL = 512 << 20


def replay_s(fn, reps: int = 20) -> float:
    """Median seconds of one replay of a CUDA graph of fn (the ops benchmarks' helpers)."""
    return statistics.median(event_times_ms(graphed(fn), reps, warmup=3)) / 1e3


def build() -> ctypes.CDLL:
    """nvcc -shared, called through ctypes: the launches go on the stream passed in."""
    so = pathlib.Path("/tmp/read_ceiling.so")
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"  # as compile_check
    subprocess.run([nvcc, "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-std=c++17", "-shared",
                    "-Xcompiler", "-fPIC", "-cudart", "shared", str(HERE / "read_ceiling.cu"), "-o", str(so)],
                   check=True)
    lib = ctypes.CDLL(str(so))
    lib.read_chain.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
                               ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]
    lib.read_chain.restype = ctypes.c_int
    return lib


def chain(lib, bufs, out, mode: int, blocks: int):
    """A callable that launches the read kernel once per buffer on the current stream."""
    ptrs = (ctypes.c_uint64 * len(bufs))(*[b.data_ptr() for b in bufs])
    n16 = (ctypes.c_int64 * len(bufs))(*[b.numel() // 16 for b in bufs])

    def run():
        rc = lib.read_chain(ptrs, n16, len(bufs), mode, blocks, torch.cuda.current_stream().cuda_stream,
                            out.data_ptr())
        if rc:
            raise RuntimeError(f"read_chain failed: {rc}")
    return run


def random_buffers(sizes) -> list[torch.Tensor]:
    """Device buffers of random bytes (never zeros), each size rounded down to 16 bytes."""
    return [torch.empty(n // 16 * 16, dtype=torch.uint8, device="cuda").random_(0, 256) for n in sizes]


def time_or_none(lib, bufs, out, mode: int, grid: int) -> float | None:
    """Seconds per replay of one launch per buffer, or None where read_chain refuses the launch
    (mode 4: a share above what a block may hold)."""
    try:
        return replay_s(chain(lib, bufs, out, mode, grid))
    except RuntimeError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks-per-sm", type=int, default=4)
    args = ap.parse_args()
    lib = build()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    blocks = sms * args.blocks_per_sm
    out = torch.zeros(1, dtype=torch.int32, device="cuda")

    # the reference as the harness and `gpt-engine bench` measure it (an eager 1 GiB copy_: one
    # captured in a graph runs as a memcpy node at ~2.7 TB/s on the H200); the first call only
    # warms the card from its idle clock
    copy_bandwidth("cuda")
    copy_gbps = copy_bandwidth("cuda")
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbps:.0f} GB/s (1 GiB, read + write), "
          f"{blocks} blocks of 256 threads per read launch")
    print(f"{'matrix':>28} {'MB/call':>7} | {'read, plain':>16} {'read, PDL wait':>16} "
          f"{'read, PDL early':>16} {'copy kernel r+w':>16}   (GB/s and ratio to the 1 GiB copy)")
    for name, nbytes in SIZES.items():
        nbytes = nbytes // 16 * 16
        n = max(2, POOL // nbytes) if nbytes < (1 << 30) else 1
        bufs = random_buffers([nbytes] * n)
        cells = []
        # modes 0-2 read nbytes a call; mode 3 (copy) moves each buffer's first half into its second
        for mode, moved in ((0, nbytes), (1, nbytes), (2, nbytes), (3, nbytes // 32 * 32)):
            gbps = moved / (replay_s(chain(lib, bufs, out, mode, blocks)) / n) / 1e9
            cells.append(f"{gbps:10.0f} {gbps / copy_gbps:5.2f}")  # 16 wide, as the header
        print(f"{name:>28} {nbytes / 1e6:7.2f} | " + " ".join(cells))
        del bufs
        torch.cuda.empty_cache()
    # mode 4 (hold the share in shared memory across the wait) at 1, 2 and 4 blocks per SM: the
    # share per block is bytes / grid, so the next kernel's blocks fit beside only while 2 shares do
    holds = (1, 2, 4)
    print(f"\n{'hold (read.cu mode 4)':>28} {'MB/call':>7} | " + " ".join(f"{f'{h} per SM, KB/blk':>22}" for h in holds)
          + "   (GB/s and ratio to the 1 GiB copy; '-': a share above 227 KiB)")
    for name, nbytes in SIZES.items():
        nbytes = nbytes // 16 * 16
        if nbytes >= (1 << 30):
            continue
        n = max(2, POOL // nbytes)
        bufs = random_buffers([nbytes] * n)
        cells = []
        for h in holds:
            t = time_or_none(lib, bufs, out, 4, sms * h)
            share_kb = -(-nbytes // 16 // (sms * h)) * 16 / 1024
            gbps = nbytes / (t / n) / 1e9 if t else None
            cells.append(f"{gbps:8.0f} {gbps / copy_gbps:5.2f} {share_kb:7.1f}" if gbps
                         else f"{'-':>8} {'':5} {share_kb:7.1f}")
        print(f"{name:>28} {nbytes / 1e6:7.2f} | " + " ".join(cells))
        del bufs
        torch.cuda.empty_cache()
    print(f"\n{'step (reads only)':>28} {'MB/step':>7} | {'plain us, MBU':>16} {'PDL wait':>16} {'PDL early':>16}"
          + "".join(f" {f'hold {h}/SM':>16}" for h in holds) + "   (MBU = step bytes / step time / the 1 GiB copy's GB/s; hold: the LM head, whose share\n"
          "does not fit, as PDL wait)")
    for name, sizes in STEPS.items():
        bufs = random_buffers(sizes)
        total = sum(b.numel() for b in bufs)
        cells = []
        for mode, grid in ((0, blocks), (1, blocks), (2, blocks)) + tuple((5, sms * h) for h in holds):
            t = time_or_none(lib, bufs, out, mode, grid)
            cells.append(f"{t * 1e6:9.1f} {total / t / 1e9 / copy_gbps:6.3f}" if t else f"{'-':>9} {'':6}")
        print(f"{name:>28} {total / 1e6:7.1f} | " + " ".join(cells))
        del bufs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
