"""``gpt-engine bench``: prefill and decode throughput through the public API, llama-bench style.

- ppN: ``Model.generate(N random prompt ids, max_new_tokens=1)``, wall clock: N / seconds.
- tgN: ``Model.generate(32 random prompt ids, max_new_tokens=N)``; the generation reports when
  its first token reached the host and when its last did, so decode tok/s = (N - 1) / (last -
  first) by the wall clock, detokenizing included (what a user's loop sees).
Each test runs once to warm up (graph capture, lazy inits) and then ``reps`` times: mean and
standard deviation. MBU (model bandwidth utilisation) = weight bytes read per decoded token x
tok/s / copy bandwidth, the copy bandwidth measured in the same run on the same device.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

TG_PROMPT = 32  # decode after a 32-token prompt (this project's tg128 convention)


def weight_bytes_per_token(m) -> int:
    """Bytes of weights one decode step reads: every tensor of the file except the embedding
    tables it only gathers rows from (token_embd unless it is also the tied LM head, and
    position_embd). On the GPU the file's packed bytes; on the CPU, where the weights are
    dequantized once into a dense cache when it fits (QWeight), the dense copies it then reads,
    except the matrices whose product reads their packed blocks (``qweight.packed_product``:
    float32 Q4_0/Q4_1 through cpu_q4), which it reads packed.
    A mixture of experts reads only the experts a token picked: the architecture says how much
    (``net.bytes_read_per_token``; gpt-oss: k of E experts per layer, attention, the output matrix)."""
    from .qweight import _is_view, cache_policy, packed_product

    own = getattr(m.net, "bytes_read_per_token", None)
    if own is not None:
        return own()

    skip = {"position_embd.weight"}
    if not m.config.tied_output:
        skip.add("token_embd.weight")
    read = {name: t for name, t in m.gguf.tensors.items() if name not in skip}
    if m.device.type == "cpu" and cache_policy(m.gguf).enabled(m.dtype):
        el = torch.empty((), dtype=m.dtype).element_size()
        return sum(t.nbytes if _is_view(t.qtype, m.dtype) or packed_product(t.qtype, t.shape, m.dtype)
                   else t.n_elements * el for t in read.values())
    return sum(t.nbytes for t in read.values())


def n_params(m) -> int:
    return sum(math.prod(t.shape) for t in m.gguf.tensors.values())


def copy_bandwidth(device) -> float:
    """GB/s of a device-to-device (or memory-to-memory) copy, bytes read + written."""
    device = torch.device(device)
    if device.type == "cuda":
        n = 1 << 30
        src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ts = []
        for _ in range(20):
            ev[0].record()
            dst.copy_(src)
            ev[1].record()
            torch.cuda.synchronize()
            ts.append(ev[0].elapsed_time(ev[1]) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
        return 2 * n / statistics.median(ts) / 1e9
    n = 256 << 20
    src = torch.ones(n, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t0)
    return 2 * n / statistics.median(ts) / 1e9


def _ids(m, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    hi = min(m.tokenizer.vocab_size, m.config.vocab_size)
    return torch.randint(0, hi, (n,), generator=g).tolist()


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "samples": xs}


def time_prefill(m, n_prompt: int, reps: int, progress=None) -> dict:
    ids = _ids(m, n_prompt, 1)
    m.generate(ids, max_new_tokens=1, stop_at_eos=False)  # warm-up
    rates = []
    for r in range(reps):
        if progress:
            progress(f"pp{n_prompt} {r + 1}/{reps}")
        t0 = time.perf_counter()
        m.generate(ids, max_new_tokens=1, stop_at_eos=False)
        rates.append(n_prompt / (time.perf_counter() - t0))
    return _stats(rates)


def time_decode(m, n_gen: int, reps: int, progress=None) -> dict:
    if n_gen < 2:
        raise ValueError("decode timing needs at least 2 generated tokens")
    ids = _ids(m, TG_PROMPT, 2)
    m.generate(ids, max_new_tokens=n_gen, stop_at_eos=False)  # warm-up
    rates, host_us = [], []
    for r in range(reps):
        if progress:
            progress(f"tg{n_gen} {r + 1}/{reps}")
        out = m.generate(ids, max_new_tokens=n_gen, stop_at_eos=False)
        rates.append((len(out.token_ids) - 1) / out.decode_s)
        dec = m._decoders.get((1, m.cuda_graphs)) if m.device.type == "cuda" else None
        if dec is not None and dec.stats.host_per_step_us:
            host_us.append(statistics.median(dec.stats.host_per_step_us))
    res = _stats(rates)
    if host_us:
        res["host_us_per_token"] = statistics.median(host_us)
    return res


def run(path, device: str = "cpu", n_prompt: int = 512, n_gen: int = 128, reps: int = 5, progress=None,
        dtype: torch.dtype | None = None, sha256: str | None = None) -> dict:
    """Load ``path`` on ``device`` (activations in ``dtype``, else the device's default; refused
    unless its SHA-256 is ``sha256`` when one is given) and measure ppN and tgN; returns a
    JSON-able dict, the file's SHA-256 included so that a result names the exact model."""
    import gpt_engine
    from .errors import ContextOverflowError
    from .model import check_device

    dev = check_device(device)  # before the copy runs on it: a missing GPU is a one-line error
    # measured first (under a second; no progress line, so that a file load() refuses leaves its
    # error as the only output), and the copy's two 1 GiB buffers freed before the peak that
    # counts, the load's and the tests', starts
    bw = copy_bandwidth(dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    m = gpt_engine.load(path, device=dev, dtype=dtype, sha256=sha256)
    load_s = time.perf_counter() - t0
    n_ctx = m.config.n_ctx  # before any prompt is made: -p 10^12 would allocate it first
    if n_prompt > 0 and n_prompt + 1 > n_ctx:
        raise ContextOverflowError(f"-p {n_prompt}: the prompt and its one generated token exceed the model's "
                                   f"context length {n_ctx}")
    if n_gen > 0 and TG_PROMPT + n_gen > n_ctx:
        raise ContextOverflowError(f"-n {n_gen}: the {TG_PROMPT}-token prompt and {n_gen} generated tokens exceed "
                                   f"the model's context length {n_ctx}")
    tests = {}
    if n_prompt > 0:
        tests[f"pp{n_prompt}"] = time_prefill(m, n_prompt, reps, progress)
    if n_gen > 0:
        tests[f"tg{n_gen}"] = time_decode(m, n_gen, reps, progress)
    wb = weight_bytes_per_token(m)
    for name, t in tests.items():
        if name.startswith("tg"):
            t["mbu"] = wb * t["mean"] / (bw * 1e9)
            t["roofline_tok_s"] = bw * 1e9 / wb
    # matrix types (2-D tensors, and 3-D expert stacks), as llama-bench's "type" column
    qtypes = sorted({t.qtype.name for t in m.gguf.tensors.values() if len(t.shape) >= 2})
    if progress and sha256 is None:
        progress("sha256 of the model file")   # unpinned, hashed only now, after the timed tests
    return {
        "model": Path(path).name, "sha256": m.sha256, "architecture": m.config.architecture,
        "size_bytes": m.gguf.path.stat().st_size,
        "params": n_params(m), "type": "+".join(qtypes), "device": _device_name(device),
        "dtype": str(m.dtype).removeprefix("torch."), "copy_gbps": bw,
        "weight_bytes_per_token": wb, "load_s": load_s, "tests": tests,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
    }


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _human(n: float, units: list[str], base: int) -> str:
    for u in units[:-1]:
        if abs(n) < base:
            return f"{n:.2f} {u}"
        n /= base
    return f"{n:.2f} {units[-1]}"


def format_table(r: dict) -> str:
    """A markdown table in llama-bench's shape, plus MBU, then the run's context."""
    rows = ["| model | size | params | type | test | t/s | MBU |", "|---|---|---|---|---|---:|---:|"]
    size = _human(r["size_bytes"], ["B", "KiB", "MiB", "GiB"], 1024)
    params = _human(r["params"], ["", "K", "M", "B"], 1000)
    for name, t in r["tests"].items():
        mbu = f"{t['mbu']:.2f}" if "mbu" in t else ""
        rows.append(f"| {r['model']} | {size} | {params} | {r['type']} | {name} | {t['mean']:.2f} ± {t['sd']:.2f} | "
                    f"{mbu} |")
    peak = r["peak_memory_bytes"]
    rows.append("")
    rows.append(f"device: {r['device']}; activations {r.get('dtype', '?')}; copy bandwidth {r['copy_gbps']:.0f} GB/s; weights read per token "
                f"{r['weight_bytes_per_token'] / 1e6:.1f} MB; load {r['load_s']:.2f} s"
                + (f"; peak GPU memory {peak / 2**20:.0f} MiB" if peak else "")
                + (f"; model file sha256 {r['sha256']}" if r.get("sha256") else ""))
    return "\n".join(rows)


def progress_printer(stream=None):
    """A progress line on stderr (rewritten in place on a terminal). The stream is looked up
    when called, not bound at import: sys.stderr may have been replaced since (pytest's capture,
    a caller's redirect), and a stale one may be closed."""
    stream = stream if stream is not None else sys.stderr
    tty = stream.isatty()

    def show(msg: str) -> None:
        stream.write(("\r\033[K" if tty else "") + f"bench: {msg}" + ("" if tty else "\n"))
        stream.flush()
    return show
