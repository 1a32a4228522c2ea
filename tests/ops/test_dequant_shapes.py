"""The whole-matrix dequantize kernel at each block shape of the TEMPORARY A/B switch
GPTE_DEQUANT_SHAPE (csrc/dequant.cu dequant_shape; read once per process, so each shape runs in
its own child process): every packed type to fp32 / fp16 / bf16 bit-exact with
gguf.quants.dequantize, on matrices whose piece counts leave the last block of threads partly
empty at every shape, and the kernel launched with the shape asked for. Delete with the switch."""
import os
import pathlib
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from ._util import DEVICES
from .test_linear_q import PACKED, Q, _qk, edge_blocks

SHAPE_VAR = "GPTE_DEQUANT_SHAPE"
# value -> (pieces of 8 values per thread, threads per block) of dequant_matrix_kernel; "" = unset
SHAPES = {"": (2, 256), "1": (1, 256), "2": (2, 128), "3": (4, 128)}
REPO = pathlib.Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cases():
    """(type, rows, K): one row (fewer pieces than any block of threads), 37 rows of 24 blocks (3
    super-blocks for K-quants: 3,552 pieces, a partial last block at 128, 256, 512 pieces per
    block), and for MXFP4 / Q8_0 a 1601 x 6400 matrix (1,280,800 pieces: 2,501.6 blocks of 512)."""
    out = []
    for t in PACKED:
        k = 768
        out += [(t, 1, k), (t, 37, k)]
    out += [("MXFP4", 1601, 6400), ("Q8_0", 1601, 6400)]
    return out


def _dequantize(raw: torch.Tensor, qtype: int, dtype: torch.dtype) -> torch.Tensor:
    """The whole-matrix kernel itself on CUDA (no fallback), the op's reference on the CPU."""
    if raw.is_cuda:
        from gpt_engine.ops import _ext
        k = raw.shape[1] // gguf.GGML_QUANT_SIZES[qtype][1] * gguf.GGML_QUANT_SIZES[qtype][0]
        out = torch.full((raw.shape[0], k), float("nan"), device=raw.device, dtype=dtype)
        _ext.load().dequantize_rows(raw, int(qtype), None, out, None)
        return out
    from gpt_engine import ops
    return ops.dequantize_rows(raw, int(qtype), None, dtype, None)


def check_shapes(seed: int, device: str) -> int:
    """Every case and dtype bit-exact with gguf-py; returns the number of comparisons."""
    rng = np.random.default_rng(seed)
    n = 0
    for t, rows, k in _cases():
        if device == "cpu" and rows > 37:
            continue  # the CPU reference is the oracle's twin; the big case is for the kernel
        bpr = k // _qk(t)
        raw = edge_blocks(t, rows * bpr, rng).reshape(rows, -1)
        ref = torch.from_numpy(gguf.quants.dequantize(raw, Q[t]).astype(np.float32)).reshape(rows, -1)
        dev = torch.from_numpy(raw.copy()).to(device)
        for dt in DTYPES:
            out = _dequantize(dev, Q[t], dt).cpu()
            want = ref.to(dt)
            assert out.shape == want.shape and torch.equal(out, want), \
                f"{t} {rows}x{k} {dt}: {int((out != want).sum())} of {want.numel()} values differ"
            n += 1
    return n


def launched_shapes() -> set[tuple[int, int]]:
    """(pieces, threads) of the dequant_matrix_kernel instances one MXFP4 -> fp16 call launches."""
    raw = torch.from_numpy(edge_blocks("MXFP4", 64 * 24, np.random.default_rng(0)).reshape(64, -1)).cuda()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _dequantize(raw, Q.MXFP4, torch.float16)
        torch.cuda.synchronize()
    names = [ev.name for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    pat = [r"dequant_matrix_kernel<[^<>]*?, (\d+), (\d+)>",  # demangled: <39, __half, 2, 256>
           r"dequant_matrix_kernelILi\d+E\w*?Li(\d+)ELi(\d+)EE"]  # mangled (Itanium ABI)
    found = {(int(p), int(th)) for nm in names for r in pat for p, th in re.findall(r, nm)}
    assert found, f"no dequant_matrix_kernel<..., P, TH> among the launched kernels: {names}"
    return found


def child_main(shape: str, seed: int) -> None:
    """In a child process with GPTE_DEQUANT_SHAPE = shape (unset for ""): the launched shape, then
    every case."""
    got = launched_shapes()
    assert got == {SHAPES[shape]}, f"{SHAPE_VAR}={shape!r}: launched (pieces, threads) {got}, want {SHAPES[shape]}"
    print(f"shape {shape or 'unset'} {SHAPES[shape]}: {check_shapes(seed, 'cuda')} comparisons bit-exact")


@pytest.fixture(scope="module")
def shape_children():
    """One child process per shape, all started at once (each pays its own torch import and
    extension load; run one after the other they would cost ~4x the wall time). The seed is drawn
    here and given in any failure message."""
    seed = int.from_bytes(os.urandom(4), "little")
    procs = {}
    for shape in SHAPES:
        env = {k: v for k, v in os.environ.items() if k != SHAPE_VAR}
        if shape:
            env[SHAPE_VAR] = shape
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        code = f"from tests.ops.test_dequant_shapes import child_main; child_main({shape!r}, {seed})"
        procs[shape] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
    yield seed, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.mark.story("GT-029")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: f"shape-{s or 'unset'}")
def test_dequant_shape_bit_exact(device, shape, fresh_seed, request):
    """CUDA: the kernel at this block shape, in its own child process. CPU: the same cases against
    the op's reference (checks the test's own cases and oracle)."""
    if device == "cpu":
        if shape:
            pytest.skip("the CPU reference has no block shape: checked once")
        assert check_shapes(fresh_seed, "cpu") > 0
        return
    seed, procs = request.getfixturevalue("shape_children")
    out, err = procs[shape].communicate(timeout=300)
    assert procs[shape].returncode == 0, f"child failed (seed {seed}):\n{out[-3000:]}\n{err[-6000:]}"
    assert "bit-exact" in out, out[-3000:]
