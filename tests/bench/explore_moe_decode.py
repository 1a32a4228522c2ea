"""MoE decode expert kernels, each version against v3, at gpt-oss-20b's shape (exploration, not
evidence; GPU machine): E = 32 experts, k = 4, C = F = 2880, one token, fp16 activations, 12 layers
each with its own random MXFP4 stacks (3 x 141 MB per layer, 5.1 GB in all) and its own random
distinct experts, so a replay reads 12 x 52.9 MB of chosen-expert bytes and nothing comes from L2
(50 MB).

Graphs of 12 layers (ext.moe_experts per layer, PDL launches as in the decode step) are captured
for each of VERSIONS (moe_ab_force), each three ways: both kernels, only gate/up, only down; the
graphs are replayed in turn 30 times, CUDA events around each replay, median. Prints us per layer,
GB/s on the chosen experts' bytes (gate/up 35.2 MB, down 17.6 MB per layer) and the ratio to a
same-run device copy (1 GiB, timed before and after), each version's time over the one before it,
then each version's outputs against v3's (max abs difference, bit-equal layers: v6.1 12/12, v7
differs by its input codes; v7.1 and v7.2 12/12 against v7). Runs in ~40 s after the extension is
built.

    python tests/bench/explore_moe_decode.py [--dtype bf16] [--reps 30]

Prediction (session 7): v3 gate/up ~25-33 us and down ~17-23 us per layer (the earlier runs). v6:
3 gate/up blocks (2 x 24.5 KB tiles each) or 6 down blocks (24.5 KB) resident per SM put ~147 KB of
weights per SM in flight or landed, over the ~64 KB Little's law asks (4.2 TB/s x ~2 us / 132 SMs),
and the ids -> weights -> input chain is paid once per block with the input staged under the copy.
What is left is issue: gate/up has 4 x 2,880 row pairs / 132 SMs = 87 pairs per SM at ~1,000
warp-instructions each (docs/gpt_oss.md's count of v3's arithmetic, unchanged, plus 30 shared loads
of block words) = ~88k per SM, at 4 per clock and ~1.75 GHz ~12.5 us; the shared-memory pipe (per
row ~41 wavefronts of block words at 2-3-way bank conflicts + 24 of input, one read per value shared
by the warp's 4 rows; 175 rows per SM) ~6.5 us and the copies' 267 KB per SM into shared memory
~1.2 us overlap it. So gate/up ~13-16 us (0.5-0.65 of copy); down, 87 rows per SM at ~500
warp-instructions, ~6.5 us of issue plus the cluster exchange: ~7-10 us (0.45-0.6 of copy). Per
layer ~21-26 us against v3's ~42-50 us.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

import torch  # noqa: E402

from gpt_engine.ops import _ext  # noqa: E402
from tests.ops._bench import graphed  # noqa: E402

E, K, C, F, LAYERS = 32, 4, 2880, 2880, 12
BLOCK_BYTES = 17
GATE_UP_BYTES = K * 2 * F * (C // 32 * BLOCK_BYTES)  # chosen experts' gate and up rows per layer
DOWN_BYTES = K * C * (F // 32 * BLOCK_BYTES)
PARTS = {0: "both", 1: "gate_up", 2: "down"}
# moe_ab_force versions: v3, v6, v6.1 (v6 with the down kernel's tile copies started before its PDL
# wait; only with both kernels, so its gate_up and down rows equal v6's) and v7 (v6.1 with 16-bit
# input codes and integer products: not bit-equal to v3, within nmse_moe_v7_vs_v3) and v7.1 (v7 with
# each tile on two barriers) and v7.2 (v7.1 with the codes in the weights' nibble order; the
# default since session 31): both v7's bits
VERSIONS = (3, 6, 61, 7, 71, 72)
LABEL = {3: "v3", 6: "v6", 61: "v6.1", 7: "v7", 71: "v7.1", 72: "v7.2"}


def mxfp4(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """Random MXFP4 bytes [rows, cols/32*17], scales around the binade that keeps a row's dot with
    unit-variance input of order one (tests/ops/_util.py mxfp4_rows, made on the GPU)."""
    e0 = 128 - round(math.log2(4.5 * math.sqrt(cols)))
    raw = torch.randint(0, 256, (rows, cols // 32, BLOCK_BYTES), dtype=torch.uint8, device="cuda", generator=gen)
    raw[..., 0] = torch.randint(e0 - 2, e0 + 1, (rows, cols // 32), dtype=torch.uint8, device="cuda", generator=gen)
    return raw.reshape(rows, cols // 32 * BLOCK_BYTES)


def events_median(ts: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> float:
    return statistics.median(a.elapsed_time(b) for a, b in ts) * 1e-3  # seconds


def copy_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ts = []
    for i in range(25):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        if i >= 5:
            ts.append((a, b))
    torch.cuda.synchronize()
    t = events_median(ts)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    dt = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    ext = _ext.load()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.multi_processor_count} SMs; E={E} k={K} C={C} F={F} M=1 {args.dtype}, {LAYERS} layers")
    copy0 = copy_gbs()

    gen = torch.Generator(device="cuda").manual_seed(0)
    cpu = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        layers.append(dict(
            gate=mxfp4(E * F, C, gen), up=mxfp4(E * F, C, gen), down=mxfp4(E * C, F, gen),
            gb=(torch.randn(E, F, device="cuda", generator=gen) * 0.5).to(dt),
            ub=(torch.randn(E, F, device="cuda", generator=gen) * 0.5).to(dt),
            db=(torch.randn(E, C, device="cuda", generator=gen) * 0.5).to(dt),
            ids=torch.randperm(E, generator=cpu)[:K].to("cuda", torch.int32).reshape(1, K),
            w=torch.softmax(torch.randn(1, K, generator=cpu), -1).to("cuda"),
            act=torch.zeros(1, K, F, device="cuda"),
            out=torch.zeros(1, C, device="cuda", dtype=dt)))
    h = torch.randn(1, C, device="cuda", generator=gen).to(dt)

    def run_layers():
        for L in layers:
            ext.moe_experts(h, L["ids"], L["w"], L["gate"], L["gb"], L["up"], L["ub"], L["down"], L["db"], None,
                            L["act"], L["out"])

    # outputs of each version (eager), then the graphs
    results = {}
    for v in VERSIONS:
        assert ext.moe_ab_force(v, 0) == v
        for L in layers:  # a version that leaves an element unwritten must not inherit the last one's
            L["act"].fill_(float("nan"))
            L["out"].fill_(float("nan"))
        run_layers()
        torch.cuda.synchronize()
        results[v] = [(L["act"].clone(), L["out"].clone()) for L in layers]
    graphs = {}
    for v in VERSIONS:
        for p in PARTS:
            ext.moe_ab_force(v, p)
            graphs[(v, p)] = graphed(run_layers)
    ext.moe_ab_force(0, 0)

    times = {key: [] for key in graphs}
    for _ in range(3):  # warm
        for g in graphs.values():
            g()
    for _ in range(args.reps):
        for key, g in graphs.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g()
            b.record()
            times[key].append((a, b))
    torch.cuda.synchronize()
    copy1 = copy_gbs()
    copy = (copy0 + copy1) / 2
    print(f"copy {copy0:.0f} / {copy1:.0f} GB/s (mean {copy:.0f})")
    nbytes = {0: GATE_UP_BYTES + DOWN_BYTES, 1: GATE_UP_BYTES, 2: DOWN_BYTES}
    print(f"{'kernels':<10}{'version':>8}{'us/layer':>10}{'GB/s':>8}{'of copy':>9}")
    per = {}
    for p, name in PARTS.items():
        for v in VERSIONS:
            t = events_median(times[(v, p)]) / LAYERS
            per[(v, p)] = t
            gbs = nbytes[p] / t / 1e9
            print(f"{name:<10}{LABEL[v]:>8}{t * 1e6:>10.2f}{gbs:>8.0f}{gbs / copy:>9.2f}")
        print(f"{name:<10}{'v6/v3':>8}{per[(6, p)] / per[(3, p)]:>10.3f}")
        print(f"{name:<10}{'v6.1/v6':>8}{per[(61, p)] / per[(6, p)]:>10.3f}")
        print(f"{name:<10}{'v7/v6.1':>8}{per[(7, p)] / per[(61, p)]:>10.3f}")
        print(f"{name:<10}{'v7.1/v7':>8}{per[(71, p)] / per[(7, p)]:>10.3f}")
        print(f"{name:<10}{'v7.2/v7':>8}{per[(72, p)] / per[(7, p)]:>10.3f}")

    # v6, v6.1 and v7 against v3 (eager outputs above; v7 differs by its input codes, ~1e-5 relative)
    for v in VERSIONS[1:]:
        diff, equal = 0.0, 0
        for (a3, o3), (a6, o6) in zip(results[3], results[v]):
            diff = max(diff, (a6 - a3).abs().max().item(), (o6.float() - o3.float()).abs().max().item())
            equal += int(torch.equal(a3, a6) and torch.equal(o3, o6))
        print(f"{LABEL[v]} vs v3: max abs diff {diff:g}, bit-equal layers {equal}/{LAYERS}")
    for v in (71, 72):
        same = sum(int(torch.equal(a7, av) and torch.equal(o7, ov))
                   for (a7, o7), (av, ov) in zip(results[7], results[v]))
        print(f"{LABEL[v]} vs v7: bit-equal layers {same}/{LAYERS}")


if __name__ == "__main__":
    main()
