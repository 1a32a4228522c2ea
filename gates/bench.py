"""The `bench` fixture's engine: timing, device baselines, metric records with physics checks.

Numbers are only comparable inside one run on one card (shared, noisy machines), so every
ratio is taken against a reference measured in the same session, and a number that breaks
physics is kept but flagged invalid, never dropped.
"""
from __future__ import annotations

import statistics
import time

from gates import physics, tracer

# GPU spin (torch.cuda._sleep) before each timed call, ~250 us at H100/H200 clocks: longer than
# any op's host-side dispatch, so the timed region holds no idle gap waiting for the host.
HOST_LEAD_CYCLES = 500_000

# Device baselines: bf16 8192^3 on GPUs (the matmul anchor docs/harness.md quotes); the CPU machine gets a
# small fp32 GEMM because 8192^3 would take minutes on two shared cores.
CUDA_MATMUL_N = 8192
CPU_MATMUL_N = 1024


def _median(xs):
    return statistics.median(xs)


class Baselines:
    """Per-process cache: copy bandwidth and matmul rate measured once per session per device."""

    def __init__(self):
        self.values: dict[str, dict] = {}

    def get(self, device: str, key: str, measure):
        d = self.values.setdefault(device, {})
        if key not in d:
            d[key] = measure()
        return d[key]


class Bench:
    def __init__(self, device: str, baselines: Baselines, sink: list, device_name: str | None = None):
        self.device = device                # "cpu" or "cuda"
        self.device_name = device_name      # CUDA device name, for the evidence record
        self._baselines = baselines
        self._sink = sink                   # metric dicts go here; the plugin ships them
        self._flush_buf = None

    # ---- timing ----
    def cuda_time(self, fn, *, warmup: int = 10, reps: int = 50, flush_l2: bool = True) -> float:
        """Median seconds of fn() on the current CUDA stream, timed with CUDA events after
        `warmup` untimed calls. Before each start event the GPU spins for HOST_LEAD_CYCLES, so
        the host has queued fn's kernels by the time the clock starts: the figure is GPU time,
        not the Python dispatch in front of the first launch (an op's checks and custom-op
        layers cost tens of microseconds, which the GPU would otherwise sit idle through inside
        the timed region). With flush_l2 the L2 is emptied before each timed call, so
        the kernel reads from HBM as it does in a real model step: a buffer twice the L2 size
        is written (evicting everything cached) and then a second one is read, so the L2
        ends up holding clean lines only. Writing alone would leave it full of dirty lines,
        whose write-back can be charged to the timed kernel: a 64 MiB copy on an H100 showed
        2690-2749 GB/s after a write-only flush and 3095-3101 after this one, a 1 GiB copy
        the same within 2% (tests/ops/explore_bandwidth.py; docs/kernels/README.md)."""
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("bench.cuda_time needs CUDA; mark the test @pytest.mark.cuda")
        if reps < 1 or warmup < 1:
            raise ValueError("reps and warmup must be >= 1 (warm-up calls are the traced ones)")
        for _ in range(warmup):
            fn()
        flush = self._l2_flush() if flush_l2 else None
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda.synchronize()
        with tracer.paused():      # the warm-up calls were traced; the timed ones are not
            for i in range(reps):
                if flush is not None:
                    flush()
                torch.cuda._sleep(HOST_LEAD_CYCLES)
                starts[i].record()
                fn()
                ends[i].record()
            torch.cuda.synchronize()
        return _median([s.elapsed_time(e) for s, e in zip(starts, ends)]) / 1e3

    def cuda_time_pair(self, fn_a, fn_b, *, warmup: int = 10, reps: int = 50) -> tuple[float, float]:
        """Median seconds of fn_a() and of fn_b(), timed alternately (a, b, a, b, ...) with the
        L2 flushed before each call, so both see the same clock and thermal state. For ratios
        of two near-equal times (e.g. our FFN and torch's, same GEMMs and bytes), where two
        separate cuda_time runs drift apart by a few percent."""
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("bench.cuda_time_pair needs CUDA; mark the test @pytest.mark.cuda")
        if reps < 1 or warmup < 1:
            raise ValueError("reps and warmup must be >= 1 (warm-up calls are the traced ones)")
        for _ in range(warmup):
            fn_a()
            fn_b()
        flush = self._l2_flush()
        ev = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(reps)]
        torch.cuda.synchronize()
        with tracer.paused():
            for e in ev:
                flush()
                torch.cuda._sleep(HOST_LEAD_CYCLES)
                e[0].record()
                fn_a()
                e[1].record()
                flush()
                torch.cuda._sleep(HOST_LEAD_CYCLES)
                e[2].record()
                fn_b()
                e[3].record()
            torch.cuda.synchronize()
        return (_median([e[0].elapsed_time(e[1]) for e in ev]) / 1e3,
                _median([e[2].elapsed_time(e[3]) for e in ev]) / 1e3)

    def _l2_flush(self):
        """The flush callable: write one 2 x L2 buffer, then read (sum) another."""
        import torch
        if self._flush_buf is None:
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
            n = max(2 * l2, 64 * 2**20)
            write = torch.empty(n, dtype=torch.uint8, device="cuda")
            read = torch.ones(n // 8, dtype=torch.int64, device="cuda")
            self._flush_buf = (write, read)
        write, read = self._flush_buf

        def flush():
            write.zero_()
            read.sum()
        return flush

    def cpu_time(self, fn, *, warmup: int = 2, reps: int = 10) -> float:
        """Median wall seconds of fn() with time.perf_counter (CPU work, e.g. opening a file)."""
        if reps < 1 or warmup < 1:
            raise ValueError("reps and warmup must be >= 1 (warm-up calls are the traced ones)")
        for _ in range(warmup):
            fn()
        ts = []
        with tracer.paused():
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        return _median(ts)

    # ---- device baselines ----
    def copy_bandwidth(self, device: str | None = None) -> float:
        """GB/s of a large device-to-device copy, counting bytes read + written. Once per session."""
        dev = device or self.device
        return self._baselines.get(dev, "copy_gbps", lambda: self._measure_copy(dev))

    def matmul_rate(self, device: str | None = None) -> float:
        """TFLOP/s of a dense matmul on random data (bf16 8192^3 on CUDA). Once per session."""
        dev = device or self.device
        return self._baselines.get(dev, "matmul_tflops", lambda: self._measure_matmul(dev))

    def _measure_copy(self, dev: str) -> float:
        import torch
        if dev == "cuda":
            free, _ = torch.cuda.mem_get_info()
            nbytes = int(min(1 << 30, free // 8))   # 1 GiB, far above any L2
            src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
            dst = torch.empty_like(src)
            t = self.cuda_time(lambda: dst.copy_(src), warmup=5, reps=30, flush_l2=False)
        else:
            nbytes = 256 * 2**20
            src = torch.ones(nbytes, dtype=torch.uint8)
            dst = torch.empty_like(src)
            t = self.cpu_time(lambda: dst.copy_(src), warmup=1, reps=5)
        return 2 * nbytes / t / 1e9

    def _measure_matmul(self, dev: str) -> float:
        import torch
        if dev == "cuda":
            n = CUDA_MATMUL_N
            a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            t = self.cuda_time(lambda: a @ b, warmup=5, reps=20, flush_l2=False)
        else:
            n = CPU_MATMUL_N
            a, b = torch.randn(n, n), torch.randn(n, n)
            t = self.cpu_time(lambda: a @ b, warmup=1, reps=3)
        return 2 * n**3 / t / 1e12

    # ---- records ----
    def record(self, name: str, value: float, unit: str, *, kind: str, references: dict | None = None,
               params: dict | None = None, higher_is_better: bool | None = None) -> dict:
        """Record one metric. `references` are measured in this run in the same unit (torch's own
        op, sdpa, a peer); for bandwidth the measured copy bandwidth is added as `copy`, for
        flops the matmul rate as `matmul`. ratios[ref] = value/ref, inverted when lower is
        better, so a ratio > 1 always means "better than the reference"."""
        err = physics.unit_error(name, kind, unit)
        if err:
            raise ValueError(err)
        if higher_is_better is None:
            higher_is_better = kind not in physics.LOWER_IS_BETTER
        refs = {k: float(v) for k, v in (references or {}).items()}
        params = dict(params or {})
        value = float(value)
        f = physics.factor(kind, unit)
        copy = matmul = None
        if kind == "bandwidth":
            copy = self.copy_bandwidth()
            refs.setdefault("copy", copy / f)
        if kind == "flops":
            matmul = self.matmul_rate()
            refs.setdefault("matmul", matmul / f)
        if "roofline" in refs:  # checked against what defines it (physics.roofline_problems)
            if "matmul_params" in params:
                matmul = self.matmul_rate()
            else:
                copy = self.copy_bandwidth()
        reasons = physics.problems(kind, unit, value, refs, params, self.device == "cuda", copy, matmul)
        ratios = {ref: (physics.ratio(value, rv, higher_is_better)
                        if physics.positive(rv) and physics.positive(value) else None)
                  for ref, rv in refs.items()}
        metric = {
            "name": name, "value": value, "unit": unit, "kind": kind,
            "higher_is_better": bool(higher_is_better), "references": refs, "ratios": ratios,
            "params": params, "valid": not reasons, "invalid_reason": "; ".join(reasons) or None,
            "device": self.device_name if self.device == "cuda" else "cpu",
        }
        self._sink.append(metric)
        return metric
