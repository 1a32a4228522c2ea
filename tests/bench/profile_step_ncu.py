"""ncu target and summary: the kernels of one decode step of a GGUF model, through the public API
(exploration, not evidence; GPU machine, extension built).

The model is loaded on the GPU, warmed up (its decode graphs captured), and one more request of a
4-token prompt and 2 new tokens runs between cudaProfilerStart and Stop: the prompt's forward,
then one replay of the decode graph. Run with the launch per token (GPT_ENGINE_DEVICE_LOOP=0):
ncu profiles the kernel nodes of a plain graph launch one by one (each alone, caches flushed,
no PDL overlap, so a kernel's time here is its whole chain, as `GPTE_NO_PDL=1` gives in
explore_decode_step.py).

    GPT_ENGINE_DEVICE_LOOP=0 ncu --clock-control none --profile-from-start off --csv \\
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,\\
    smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,\\
    launch__grid_size,launch__waves_per_multiprocessor,dram__bytes_read.sum \\
        python3 tests/bench/profile_step_ncu.py MODEL.gguf > ncu-step.csv
    python3 tests/bench/profile_step_ncu.py --summary ncu-step.csv

The summary groups the profiled kernels by name (template arguments dropped) and by the DRAM
bytes each call read (calls within 10% of each other together), in launch order of first
appearance: calls, mean and total us, MB read, GB/s, and the means of DRAM throughput,
issue-slot use and achieved occupancy (% of peak), grid and waves. The bytes separate products
that share one kernel (the ring GEMV serves gpt-oss's QKV, output projection and LM head alike).
Two tables: the prompt's forward (every kernel up to and including the first `argmax` kernel,
its sampling) and the decode step (the rest). With an older CSV that lacks
`dram__bytes_read.sum` the grouping is by name only.
"""
from __future__ import annotations

import csv
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

METRICS = {  # ncu metric -> column
    "gpu__time_duration.sum": "us",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram%",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue%",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occ%",
    "launch__grid_size": "grid",
    "launch__waves_per_multiprocessor": "waves",
    "dram__bytes_read.sum": "MB",
}
TIME_SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
BYTE_SCALE = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}  # -> MB


def short_name(name: str) -> str:
    """`void ns::<anon>::gemv_kernel<__half, 1>(...)` -> `gemv_kernel`."""
    head = name.replace("(anonymous namespace)", "anon").replace("<unnamed>", "anon").split("(")[0]
    depth, out = 0, []
    for ch in head:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).split("::")[-1].split()[-1]


def group_key(k: dict, refs: dict[str, list[float]]) -> str:
    """Name plus the MB read: a call joins the first group of its name whose MB is within 10% of
    its own (a call's bytes vary by a few KB run to run), else opens one: one row per product."""
    mb = k.get("MB")
    if mb is None or mb != mb or mb <= 0:
        return k["name"]
    seen = refs.setdefault(k["name"], [])
    ref = next((r for r in seen if abs(mb - r) <= 0.1 * r), None)
    if ref is None:
        seen.append(mb)
        ref = mb
    return f"{k['name']} {ref:.4g} MB"


def table(title: str, ks_in_order: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    refs: dict[str, list[float]] = {}
    for k in ks_in_order:  # ncu's order: the launch order
        groups.setdefault(group_key(k, refs), []).append(k)
    total = sum(k.get("us", 0.0) for k in ks_in_order)
    print(f"{title}: {len(ks_in_order)} kernels, {total:.1f} us in all (each alone, caches flushed)")
    print(f"{'kernel':<44}{'calls':>6}{'us mean':>9}{'us sum':>9}{'MB':>9}{'GB/s':>7}{'dram%':>7}{'issue%':>7}"
          f"{'occ%':>6}{'grid':>7}{'waves':>7}")
    for name, ks in groups.items():
        def mean(c):
            vals = [k[c] for k in ks if c in k]
            return sum(vals) / len(vals) if vals else float("nan")
        s = sum(k.get("us", 0.0) for k in ks)
        gbs = mean("MB") / mean("us") * 1e3  # MB per us is TB/s
        print(f"{name[:43]:<44}{len(ks):>6}{mean('us'):>9.2f}{s:>9.1f}{mean('MB'):>9.2f}{gbs:>7.0f}{mean('dram%'):>7.1f}"
              f"{mean('issue%'):>7.1f}{mean('occ%'):>6.1f}{mean('grid'):>7.0f}{mean('waves'):>7.2f}")


def summary(path: str) -> None:
    rows = list(csv.reader(line for line in open(path) if line.startswith('"')))
    head, body = rows[0], rows[1:]
    col = {k: head.index(k) for k in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")}
    kernels: dict[str, dict] = {}  # ncu ID -> {"name", metric columns}
    for r in body:
        k = kernels.setdefault(r[col["ID"]], {"name": short_name(r[col["Kernel Name"]])})
        metric = r[col["Metric Name"]]
        if metric not in METRICS:
            continue
        v = float(r[col["Metric Value"]].replace(",", "") or "nan")
        if metric == "gpu__time_duration.sum":
            v *= TIME_SCALE.get(r[col["Metric Unit"]], float("nan"))
        elif metric == "dram__bytes_read.sum":
            v *= BYTE_SCALE.get(r[col["Metric Unit"]], float("nan"))
        k[METRICS[metric]] = v
    ordered = list(kernels.values())
    cut = next((i + 1 for i, k in enumerate(ordered) if "argmax" in k["name"]), 0)
    if 0 < cut < len(ordered):
        table("prompt (up to its sampling)", ordered[:cut])
        print()
        table("decode step", ordered[cut:])
    else:
        table("all profiled kernels (no argmax kernel to split the prompt from the step)", ordered)


def target(model: str) -> None:
    import torch

    import gpt_engine

    m = gpt_engine.load(model, device="cuda")
    ids = [11, 22, 33, 44]
    m.generate(ids, max_new_tokens=8, stop_at_eos=False)  # warm-up: the decode graphs captured
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    m.generate(ids, max_new_tokens=2, stop_at_eos=False)  # the prompt's forward, one decode step
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled one request: 4 prompt tokens, 2 new", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        summary(sys.argv[2])
    elif len(sys.argv) == 2:
        target(sys.argv[1])
    else:
        sys.exit(__doc__)
