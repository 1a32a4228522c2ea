"""What a measurement cannot be: the checks behind a metric's `valid: false`.

The bench fixture applies them when it records a metric, and the verdict applies them again
to every record it judges, from the value, the references and the run's own baselines, so
a figure that was edited or written by hand is caught where it is used, not only where it
was made.
"""
from __future__ import annotations

import math

KINDS = ("bandwidth", "flops", "time", "throughput", "memory", "ratio")
# Units accepted per kind and their factor to the canonical unit the checks use
# (GB/s, TFLOP/s, seconds, bytes). None: any unit.
UNITS = {
    "bandwidth": {"GB/s": 1.0, "TB/s": 1e3, "MB/s": 1e-3},
    "flops": {"TFLOP/s": 1.0, "GFLOP/s": 1e-3, "PFLOP/s": 1e3},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "memory": {"B": 1.0, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9},
    "throughput": None,
    "ratio": None,
}
LOWER_IS_BETTER = {"time", "memory"}
# A bandwidth above the copy bandwidth measured in the same run is impossible; the 10% is the
# copy measurement's own spread (decode attention measured 1.02-1.06 of copy on H100/H200
# where its reads stream better than a 1 GiB copy's read + write).
BANDWIDTH_SLACK = 1.1
# Nothing on a GPU completes in under a microsecond between two CUDA events: a kernel launch,
# even replayed from a CUDA graph, costs more. A CPU call timed by perf_counter costs more
# than 100 ns.
MIN_CUDA_TIME_S = 1e-6
MIN_CPU_TIME_S = 1e-7
# A "roofline" reference is a throughput's own ceiling in the run: the weight bytes a decode token
# reads at the run's copy bandwidth (params.weight_bytes_per_token, or bytes_per_token), or the
# matmul FLOPs a prefill token needs at the run's matmul rate (params.matmul_params, 2 FLOPs
# each). It is recomputed from those params and the run's baselines, so a roofline taken against a
# deflated bandwidth, or written by hand, which would inflate every MBU, is caught. 10%: the
# gpt-oss-20b figure is measured in a subprocess that measures its own copy bandwidth (0.967 and
# 0.974 of the run's in sessions 31 and 26); the rest use the run's own, so agree exactly.
ROOFLINE_SLACK = 0.1


def factor(kind: str, unit: str) -> float:
    units = UNITS[kind]
    return 1.0 if units is None else units[unit]


def unit_error(name: str, kind: str, unit: str) -> str | None:
    if kind not in KINDS:
        return f"metric {name}: kind {kind!r} not in {KINDS}"
    units = UNITS[kind]
    if units is not None and unit not in units:
        return f"metric {name}: unit {unit!r} not allowed for kind {kind!r}; use one of {sorted(units)}"
    return None


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def problems(kind: str, unit: str, value, references: dict, params: dict, on_cuda: bool,
             copy_gbps=None, matmul_tflops=None) -> list[str]:
    """Reasons the record is physically impossible (empty: plausible). copy_gbps and
    matmul_tflops are the run's measured baselines of the device the metric ran on."""
    reasons = []
    err = unit_error("", kind, unit)
    if err:
        return [err.removeprefix("metric : ")]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return [f"value {value} is not a finite number"]
    # copy and matmul are the device's ceilings: a metric compared with one is bounded by it
    # below, which needs a kind that says what it measures (a "throughput" in GB/s would not be)
    for ref, need in (("copy", "bandwidth"), ("matmul", "flops")):
        if ref in references and kind != need:
            reasons.append(f"reference {ref} on a {kind} metric: only a {need} metric may be compared with the run's"
                           f" {ref} baseline (and it is then bounded by it)")
    canon = value * factor(kind, unit)
    floor = MIN_CUDA_TIME_S if on_cuda else MIN_CPU_TIME_S
    if kind == "time":
        if not canon > 0:
            reasons.append(f"time {value} {unit} <= 0")
        elif canon < floor:
            reasons.append(f"time {value} {unit} is faster than a {'kernel launch' if on_cuda else 'function call'} ({floor:g} s)")
    if kind in ("bandwidth", "flops", "throughput", "memory") and not canon > 0:
        reasons.append(f"{kind} {value} {unit} <= 0")
    if kind == "bandwidth":
        if not positive(copy_gbps):
            reasons.append("no copy bandwidth was measured in the run")
        elif canon > BANDWIDTH_SLACK * copy_gbps:
            reasons.append(f"{canon:.1f} GB/s exceeds {BANDWIDTH_SLACK} x measured copy bandwidth {copy_gbps:.1f} GB/s")
    if kind == "flops":
        if not positive(matmul_tflops):
            reasons.append("no matmul rate was measured in the run")
        elif canon > matmul_tflops:
            reasons.append(f"{canon:.1f} TFLOP/s exceeds the measured matmul rate {matmul_tflops:.1f} TFLOP/s")
    if kind == "memory" and "n_params" in params and "bits" in params:
        need = float(params["n_params"]) * float(params["bits"]) / 8
        if canon < need:
            reasons.append(f"{canon:.0f} B is below parameters x bits = {need:.0f} B")
    # every timing behind a figure (time_s, sdpa_time_s, ...) obeys the same floor
    for k, v in sorted(params.items()):
        if k.endswith("time_s") and isinstance(v, (int, float)) and not isinstance(v, bool):
            if not (math.isfinite(v) and v >= floor):
                reasons.append(f"params.{k} = {v} s is faster than a {'kernel launch' if on_cuda else 'function call'} ({floor:g} s)")
    for ref, rv in sorted(references.items()):
        if not positive(rv):
            reasons.append(f"reference {ref}={rv} is not a positive number")
    if "roofline" in references and positive(references["roofline"]):
        reasons += roofline_problems(canon, references["roofline"], params, copy_gbps, matmul_tflops)
    return reasons


def roofline_problems(value: float, roofline: float, params: dict, copy_gbps, matmul_tflops) -> list[str]:
    """A roofline reference that its params and the run's baselines do not give back (ROOFLINE_SLACK),
    or a figure above its roofline (BANDWIDTH_SLACK: the copy measurement's spread)."""
    flops, nbytes = params.get("matmul_params"), params.get("weight_bytes_per_token", params.get("bytes_per_token"))
    if positive(flops):
        if not positive(matmul_tflops):
            return ["a roofline from matmul FLOPs, but no matmul rate was measured in the run"]
        expected, what = matmul_tflops * 1e12 / (2 * flops), f"2 x {flops:.4g} FLOPs a token at {matmul_tflops:.1f} TFLOP/s"
    elif str(params.get("test", "")).startswith("pp"):  # a prompt's roofline is its FLOPs, not its bytes
        return ["a prefill roofline without params.matmul_params (the FLOPs that define it)"]
    elif positive(nbytes):
        if not positive(copy_gbps):
            return ["a roofline from weight bytes, but no copy bandwidth was measured in the run"]
        expected, what = copy_gbps * 1e9 / nbytes, f"{nbytes:.4g} B a token at {copy_gbps:.1f} GB/s"
    else:
        return ["reference roofline without what defines it (params.weight_bytes_per_token, bytes_per_token or"
                " matmul_params)"]
    out = []
    if abs(roofline / expected - 1) > ROOFLINE_SLACK:
        out.append(f"reference roofline {roofline:.6g} is not {what} = {expected:.6g}")
    if value > BANDWIDTH_SLACK * expected:
        out.append(f"{value:.6g} is above its roofline {expected:.6g} ({what})")
    return out


def ratio(value: float, reference: float, higher_is_better: bool) -> float:
    """value / reference, inverted when lower is better: above 1 always means better."""
    return value / reference if higher_is_better else reference / value


# A GPU's baselines measured far below its datasheet mean the card was shared, throttled or
# misconfigured while the run measured them, and every ratio to them would flatter the run (a
# kernel at 0.9 of a copy measured at half speed is "1.8x copy", capped only at BANDWIDTH_SLACK).
# Measured on every H100 / H200 run so far: copy 0.88-0.90 of hbm_gbps, bf16 matmul 0.77-0.82 of
# bf16_tflops (reports/evidence); the floors leave ~10% and ~25% below those for honest spread.
COPY_FLOOR = 0.8
MATMUL_FLOOR = 0.6


def baseline_problems(device: str, copy_gbps, matmul_tflops, peaks: dict | None) -> list[str]:
    """A GPU's measured baselines cannot exceed its datasheet peaks (gates/catalog.toml), nor
    fall below COPY_FLOOR / MATMUL_FLOOR of them."""
    if device == "cpu":
        return []
    if peaks is None:
        return [f"{device} has no datasheet peaks in gates/catalog.toml [devices]: its baselines cannot be checked"]
    out = []
    if copy_gbps is not None and positive(copy_gbps) and copy_gbps > peaks["hbm_gbps"]:
        out.append(f"copy baseline {copy_gbps:.0f} GB/s exceeds {device}'s memory bandwidth {peaks['hbm_gbps']:g} GB/s")
    if matmul_tflops is not None and positive(matmul_tflops) and matmul_tflops > peaks["bf16_tflops"]:
        out.append(f"matmul baseline {matmul_tflops:.0f} TFLOP/s exceeds {device}'s dense bf16 peak {peaks['bf16_tflops']:g} TFLOP/s")
    if copy_gbps is not None and positive(copy_gbps) and copy_gbps < COPY_FLOOR * peaks["hbm_gbps"]:
        out.append(f"copy baseline {copy_gbps:.0f} GB/s is below {COPY_FLOOR} x {device}'s memory bandwidth"
                   f" {peaks['hbm_gbps']:g} GB/s (a shared or throttled card: every copy ratio would flatter the run)")
    if matmul_tflops is not None and positive(matmul_tflops) and matmul_tflops < MATMUL_FLOOR * peaks["bf16_tflops"]:
        out.append(f"matmul baseline {matmul_tflops:.0f} TFLOP/s is below {MATMUL_FLOOR} x {device}'s dense bf16 peak"
                   f" {peaks['bf16_tflops']:g} TFLOP/s (a shared or throttled card)")
    return out
