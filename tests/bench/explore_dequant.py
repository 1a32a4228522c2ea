"""The whole-matrix dequantize (csrc/dequant.cu, prefill's scratch matrix) alone, per shape
(exploration, not evidence; GT-029): MXFP4 and Q8_0 (or $DEQUANT_TYPES) to fp16, calls captured in a CUDA graph, each
call on its own copy of the packed weight into its own output (>= 512 MiB written per replay, as
tests/ops/test_linear_q.py::test_mxfp4_dequant_bandwidth, so nothing comes from L2). Prints us
per call, GB/s (bytes = packed read + fp16 written) and the ratio to a same-run device copy
(torch copy_ of 1 GiB, bytes = 2 x size, timed before and after the shapes; the ratio uses their
mean). Every shape's output is checked bit for bit against gguf.quants.dequantize (fp16 from the
timed calls, fp32 and bf16 from one call each), and the rows-by-id path on a few ids. The packed
weights and gguf-py's dequantization of them are cached in $EXPLORE_DEQUANT_CACHE
(/tmp/explore_dequant_cache), so only the first of several runs pays for numpy.

    [DEQUANT_TYPES="Q5_0 Q4_K"] [DEQUANT_SHAPES="1600x6400"] python tests/bench/explore_dequant.py

The v1/v2 comparison in docs/kernels/quant.md came from this script's --ab mode while v1 was still
in the launcher behind a temporary switch (raw output: docs/kernels/runs/20261202-s6-ab1.log).
"""
from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gates.bench import Baselines, Bench  # noqa: E402
from gpt_engine.ops import _ext  # noqa: E402
from gpt_engine.quantize import quantize  # noqa: E402
from tests.ops._bench import graphed  # noqa: E402

Q = gguf.GGMLQuantizationType
# DEQUANT_TYPES="Q5_0 Q4_K ..." and DEQUANT_SHAPES="6400x1600 1600x6400" override the defaults;
# a shape whose K is not a whole number of a type's blocks is skipped for that type
SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ.get(
    "DEQUANT_SHAPES", "1600x6400 6400x1600 4096x4096 2880x2880 8192x8192").split()]
TYPES = [Q[t] for t in os.environ.get("DEQUANT_TYPES", "MXFP4 Q8_0").split()]

ext = _ext.load()
bench = Bench("cuda", Baselines(), [])


def copy_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    t = bench.cuda_time(lambda: dst.copy_(src), warmup=5, reps=30, flush_l2=False)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / t / 1e9


# Packed weights and their gguf-py dequantization, kept between runs (a run per block shape pays
# the ~10-20 s of numpy quantizing 8192 x 8192 once); same seeds, so the same bytes as recomputed.
CACHE = pathlib.Path(os.environ.get("EXPLORE_DEQUANT_CACHE", "/tmp/explore_dequant_cache"))


def _cached(name: str, make) -> np.ndarray:
    f = CACHE / f"{name}.npy"
    if f.exists():
        return np.load(f)
    a = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(CACHE / f"{name}.tmp.npy", a)
    (CACHE / f"{name}.tmp.npy").replace(f)
    return a


def packed(n: int, k: int, qtype) -> np.ndarray:
    """A random weight as the file holds it (gpt_engine.quantize: gguf-py's quantizers, ours for the
    K-quants; as tests/ops/test_linear.py make_weight)."""
    def make():
        w = (np.random.default_rng(n * 100003 + k).standard_normal((n, k)) * 0.05).astype(np.float32)
        return np.ascontiguousarray(quantize(w, qtype)).reshape(n, -1)
    return _cached(f"{qtype.name}-{n}x{k}", make)


def check(raw_np: np.ndarray, raw: torch.Tensor, qtype, outs) -> str:
    n = raw_np.shape[0]
    ref = torch.from_numpy(_cached(f"{qtype.name}-{n}x{raw_np.shape[1]}B-ref",
                                   lambda: gguf.quants.dequantize(raw_np, qtype).astype(np.float32).reshape(n, -1)))
    bad = []
    for o in (outs[0], outs[-1]):
        if not torch.equal(o.cpu(), ref.half()):
            bad.append(f"fp16 {int((o.cpu() != ref.half()).sum())} differ")
    for dt in (torch.float32, torch.bfloat16):
        o = torch.empty(ref.shape, device="cuda", dtype=dt)
        ext.dequantize_rows(raw, int(qtype), None, o, None)
        if not torch.equal(o.cpu(), ref.to(dt)):
            bad.append(f"{dt} {int((o.cpu() != ref.to(dt)).sum())} differ")
    ids = torch.tensor([n - 1, 0, 5, n // 2, n, -1], device="cuda")
    o = torch.empty(len(ids), ref.shape[1], device="cuda", dtype=torch.float16)
    status = torch.zeros(1, dtype=torch.int32, device="cuda")
    ext.dequantize_rows(raw, int(qtype), ids, o, status)
    if not torch.equal(o[:4].cpu(), ref[ids[:4].cpu()].half()) or not torch.isnan(o[4:]).all() or int(status) != 1:
        bad.append("rows by id")
    return "bit-exact" if not bad else "MISMATCH: " + ", ".join(bad)


def shape_label() -> str:
    return "2x256"


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, dequantize kernel {os.environ.get('DEQUANT_LABEL', 'v2')}, {shape_label()}")
    c0 = copy_gbs()
    print(f"copy 1 GiB: {c0:.0f} GB/s")
    rows = []
    for qtype in TYPES:
        for n, k in SHAPES:
            if k % gguf.GGML_QUANT_SIZES[qtype][0]:
                continue
            raw_np = packed(n, k, qtype)
            w0 = torch.from_numpy(raw_np.copy()).cuda()
            reps = max(2, (512 << 20) // (n * k * 2))
            raws = [w0] + [w0.clone() for _ in range(reps - 1)]
            outs = [torch.empty(n, k, device="cuda", dtype=torch.float16) for _ in range(reps)]

            def calls():
                for r, o in zip(raws, outs):
                    ext.dequantize_rows(r, int(qtype), None, o, None)

            nbytes = w0.numel() + n * k * 2
            t = bench.cuda_time(graphed(calls), warmup=3, reps=20, flush_l2=False) / reps
            rows.append((qtype.name, n, k, reps, nbytes, [t], check(raw_np, w0, qtype, outs)))
            print(f"  {qtype.name} {n}x{k} done", flush=True)
            del raws, outs, w0
            torch.cuda.empty_cache()
    c1 = copy_gbs()
    copy = (c0 + c1) / 2
    print(f"copy 1 GiB: {c1:.0f} GB/s (before: {c0:.0f}; ratios below use {copy:.0f})\n")
    cols = ["v2"]
    head = "".join(f"{c + ' us':>10}{c + ' GB/s':>10}{c + ' /copy':>10}" for c in cols)
    print(f"{'type':<6}{'N x K':>12}{'calls':>6}{'MB':>8}{head}   check")
    for name, n, k, reps, nbytes, ts, ok in rows:
        cells = "".join(f"{t * 1e6:>10.2f}{nbytes / t / 1e9:>10.0f}{nbytes / t / 1e9 / copy:>10.3f}" for t in ts)
        print(f"{name:<6}{f'{n}x{k}':>12}{reps:>6}{nbytes / 1e6:>8.1f}{cells}   {ok}")
    print()
    for name, n, k, reps, nbytes, ts, ok in rows:
        t = ts[0]
        print(f"SUMMARY dequant {shape_label()} {name} {n}x{k}: {t * 1e6:.2f} us/call, "
              f"{nbytes / t / 1e9 / copy:.3f} of copy ({copy:.0f} GB/s), {ok}")


if __name__ == "__main__":
    main()
