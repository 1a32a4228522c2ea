"""Can the decode step's graph relaunch itself from the device? (exploration, not evidence)

The host launched one graph per token, and the launch costs the host ~0.2-0.25 us per kernel
node (docs/kernels/decode.md, "Decode loop"). The engine now runs a request from one host launch
with conditional WHILE nodes (csrc/decode_loop.cu; its same-run A/B against the host loop:
tests/bench/explore_device_loop_ab.py). This script tries the other way, not built into the
engine: the step's graph, instantiated for device launch, ends with a kernel that tail-launches
the same graph (cudaGetCurrentGraphExec + cudaStreamGraphTailLaunch; relocatable device code and
cudadevrt, so tests/bench/device_loop.cu is built here with nvcc into its own library). It asks:

  1. synthetic: N PDL kernels (ops.residual_add) + the relaunch kernel, captured by torch with
     keep_graph, instantiated for device launch. Does instantiation accept the PDL edges? GPU
     time per step, K steps from one host launch against K host replays of the same ops;
  2. the decode step of each model file given (greedy, batch 1), the same way: does it
     instantiate (torch's kernels, the argmax's clusters, PDL), and are the K tokens of the
     device loop those of K host replays from the same state? Time per step, both ways.

    python tests/bench/explore_device_loop.py [MODEL.gguf ...]
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import subprocess
import sys
import time

import torch

import gpt_engine
from gpt_engine import ops

HERE = pathlib.Path(__file__).resolve().parent
NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "graph", 5: "empty", 6: "wait event",
              7: "event record", 8: "ext semas signal", 9: "ext semas wait", 10: "mem alloc", 11: "mem free",
              12: "conditional"}


def build() -> ctypes.CDLL:
    so = pathlib.Path("/tmp/libdevloop.so")
    t = time.time()
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-rdc=true",
                    "-Xcompiler", "-fPIC", "-shared", "-cudart", "shared", str(HERE / "device_loop.cu"),
                    "-o", str(so), "-lcudadevrt"], check=True)
    print(f"built {so} in {time.time() - t:.1f} s")
    lib = ctypes.CDLL(str(so))
    lib.devloop_error.restype = ctypes.c_char_p
    for f in ("devloop_launch_relaunch", "devloop_instantiate", "devloop_launch", "devloop_destroy"):
        getattr(lib, f).restype = ctypes.c_int
    return lib


class KeptGraph(torch.cuda.CUDAGraph):
    """torch's graph with its cudaGraph_t kept after capture (instantiated here, not by torch)."""

    def __new__(cls, *a, **k):
        return super().__new__(cls, keep_graph=True)

    def __init__(self, *a, **k):
        super().__init__()


@contextlib.contextmanager
def graphs_as(cls):
    """Every torch.cuda.CUDAGraph made inside (the decoder's captures among them) is a `cls`."""
    orig = torch.cuda.CUDAGraph
    torch.cuda.CUDAGraph = cls
    try:
        yield
    finally:
        torch.cuda.CUDAGraph = orig


def stream_ptr() -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def instantiate(lib, g: torch.cuda.CUDAGraph) -> ctypes.c_void_p | None:
    ex, res, nt = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_int()
    e = lib.devloop_instantiate(ctypes.c_void_p(g.raw_cuda_graph()), stream_ptr(), ctypes.byref(ex),
                                ctypes.byref(res), ctypes.byref(nt))
    if e != 0:
        print(f"  instantiate for device launch: {lib.devloop_error(e).decode()} (result {res.value}, "
              f"node {NODE_TYPES.get(nt.value, nt.value)})")
        return None
    return ex


def device_run(lib, ex, ctl: torch.Tensor, k: int) -> float:
    """k steps from one host launch: ms per step by the wall clock, launch to the device's end
    (a device-wide synchronize: an event recorded after the launch might not wait for the tail
    launches)."""
    ctl.copy_(torch.tensor([0, k, 0]))
    torch.cuda.synchronize()
    t = time.perf_counter()
    e = lib.devloop_launch(ex, stream_ptr())
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1e3
    if e != 0:
        raise RuntimeError(lib.devloop_error(e).decode())
    done, err = int(ctl[0]), int(ctl[2])
    if done != k or err != 0:
        raise RuntimeError(f"device loop ran {done} of {k} steps, device launch error {err}")
    return ms / k


def host_run(fn, k: int) -> float:
    """k host replays queued back to back: ms per step by the wall clock, as device_run."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(k):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / k


def loop_exec(lib, capture, ctl: torch.Tensor, status: torch.Tensor | None):
    """capture(last) captures the step into a kept graph with last() as its final launch; the
    step graph with the relaunch kernel last, instantiated for device launch: (exec or None, graph)."""
    sp = ctypes.c_void_p(status.data_ptr()) if status is not None else None
    cp = ctypes.c_void_p(ctl.data_ptr())
    g = capture(lambda: lib.devloop_launch_relaunch(stream_ptr(), cp, sp))
    return instantiate(lib, g), g


def synthetic(lib, n: int, k: int = 200) -> None:
    x = torch.randn(4096, device="cuda", dtype=torch.float16)
    y = torch.randn(4096, device="cuda", dtype=torch.float16)
    ctl = torch.zeros(3, dtype=torch.int64, device="cuda")
    ops.residual_add(x, y)
    torch.cuda.synchronize()

    def body():
        z = y
        for _ in range(n):
            z = ops.residual_add(x, z)

    def capture(last):
        g = KeptGraph()
        with torch.cuda.graph(g):
            body()
            last()
        return g

    gh = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gh):
        body()
    host = min(host_run(gh.replay, k) for _ in range(3)) * 1e3
    cells = [f"host replays {host:.1f} us a step"]
    ex, _ = loop_exec(lib, capture, ctl, None)
    if ex is None:
        cells.append("tail: not possible")
    else:
        dev = min(device_run(lib, ex, ctl, k) for _ in range(3)) * 1e3
        cells.append(f"tail loop {dev:.1f} us a step")
        lib.devloop_destroy(ex)
    print(f"  N={n}: " + ", ".join(cells))


def model(lib, path: str, k: int = 64) -> None:
    m = gpt_engine.load(path, device="cuda")
    m.generate(list(range(100, 132)), max_new_tokens=4, stop_at_eos=False)
    dec = m._decoders[(1, True)]
    st = dec.state
    g_host = dec._graph("greedy")
    ctl = torch.zeros(3, dtype=torch.int64, device="cuda")
    hist = torch.zeros(k + 1, dtype=torch.int64, device="cuda")
    start = [t.clone() for t in (st.ids, st.pos, st.lens, st.status)]
    name = os.path.basename(path)

    def restore():
        for t, s in zip((st.ids, st.pos, st.lens, st.status), start):
            t.copy_(s)

    def capture(last):  # the step, its token into hist[ctl[0]], then last() (the loop's kernel)
        def fn():
            dec.step("greedy")
            hist.index_copy_(0, ctl[:1].clamp(0, k), st.ids[:1])
            if torch.cuda.is_current_stream_capturing():  # not in the eager warm-up: a relaunch
                last()                                    # outside a device graph does nothing useful
        with graphs_as(KeptGraph):
            g, _ = dec._warm_and_capture(fn)
        restore()
        return g

    ref = []
    restore()
    for _ in range(k):
        g_host.replay()
        ref.append(int(st.ids[0]))
    restore()
    host_ms = host_run(g_host.replay, k)
    cells = [f"host replays {host_ms * 1e3:.1f} us a step"]
    restore()
    ex, g = loop_exec(lib, capture, ctl, st.status)
    if ex is None:
        cells.append("tail: not possible")
    else:
        restore()
        dev_ms = device_run(lib, ex, ctl, k)
        got = hist[:k].tolist()
        cells.append(f"tail loop {dev_ms * 1e3:.1f} us a step, {k} tokens "
                     f"{'identical' if got == ref else 'DIFFER: ' + str(ref[:6]) + ' / ' + str(got[:6])}")
        lib.devloop_destroy(ex)
    restore()
    print(f"  {name}: " + "; ".join(cells))
    del m, dec, st, g_host, g
    torch.cuda.empty_cache()


def main(paths: list[str]) -> None:
    lib = build()
    print(f"## device loop (torch {torch.__version__}, {torch.cuda.get_device_name()})")
    # a stream of its own: the legacy default stream may not take a device-launchable graph
    torch.cuda.set_stream(torch.cuda.Stream())
    for n in (64, 256):
        try:
            synthetic(lib, n)
        except Exception as e:  # noqa: BLE001 (an exploration: report and go on)
            print(f"  N={n}: {type(e).__name__}: {e}")
    for p in paths:
        try:
            model(lib, p)
        except Exception as e:  # noqa: BLE001
            print(f"  {os.path.basename(p)}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
