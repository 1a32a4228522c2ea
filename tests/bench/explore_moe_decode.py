"""gpt-oss-20b's decode MoE alone, v5 against v3 in the same run (exploration, not evidence).

Random MXFP4 experts of the 20b shape (E = 32, k = 4, C = F = 2880; rows of 90 blocks x 17 B) on
the GPU, LAYERS distinct layers; one CUDA graph replays, per layer, the model's MoE block for one
token: ops.moe_norm_route (norm + router + top-4) then ops.moe_experts (gate_up, down, + residual),
each layer's output the next one's input. A layer reads ~53 MB of chosen experts, so a replay of
>= 8 layers reads >= 420 MB: nothing is served from the 50 MB L2 across replays.

Two graphs are captured, one with the v5 stream kernels and one with v3's (GPTE_AB_MOE_V3 set while
capturing: csrc/moe.cu reads it at every launch, so a graph keeps the kernels it captured), and
replayed alternately. Printed per mode: the replay time per layer (CUDA events), the profiler's
time per call of each kernel (with PDL a kernel's time includes its wait for the one before it,
as in explore_decode_step.py; GPTE_NO_PDL=1 gives ordinary launches whose times add up), and for
gate_up and down the bytes they must read per call over that time, against a same-run device copy.
Both graphs' outputs are compared (they must be equal bit for bit).

    python tests/bench/explore_moe_decode.py [--layers 12] [--replays 100] [--rounds 5] [--only v5|v3]
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics

import torch

from gpt_engine import ops

E, K, C, F = 32, 4, 2880, 2880        # gpt-oss-20b: experts, experts per token, hidden, expert width
BLOCK_BYTES = 17                      # MXFP4: E8M0 scale byte + 16 bytes of E2M1 nibbles (32 values)
GATE_UP_BYTES = K * 2 * F * (C // 32 * BLOCK_BYTES)   # 35,251,200: k experts' gate and up rows
DOWN_BYTES = K * C * (F // 32 * BLOCK_BYTES)          # 17,625,600: k experts' down rows
AB_V3 = "GPTE_AB_MOE_V3"              # csrc/moe.cu ab_moe_v3 (temporary A/B switch)


def mxfp4(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """Random MXFP4 bytes [rows, cols/32*17] made on the GPU: any nibbles, scale bytes over the three
    binades tests/ops/_util.py mxfp4_rows uses (a row's dot with unit-variance input of order one)."""
    e0 = 128 - round(math.log2(4.5 * math.sqrt(cols)))
    raw = torch.randint(0, 256, (rows, cols // 32, 17), dtype=torch.uint8, device="cuda", generator=g)
    raw[..., 0] = torch.randint(e0 - 2, e0 + 1, (rows, cols // 32), dtype=torch.uint8, device="cuda", generator=g)
    return raw.view(rows, cols // 32 * BLOCK_BYTES)


def make_layer(g: torch.Generator, dtype=torch.float16) -> dict:
    def bias(n):
        return (torch.randn(E, n, device="cuda", generator=g) * 0.5).to(dtype)
    return dict(norm=torch.rand(C, device="cuda", generator=g) + 0.5,
                router=torch.randn(E, C, device="cuda", generator=g) / C ** 0.5,
                router_bias=torch.randn(E, device="cuda", generator=g),
                gate=mxfp4(E * F, C, g), gate_bias=bias(F), up=mxfp4(E * F, C, g), up_bias=bias(F),
                down=mxfp4(E * C, F, g), down_bias=bias(C))


def moe_layers(x: torch.Tensor, layers: list[dict]) -> torch.Tensor:
    for L in layers:
        h, ids, w = ops.moe_norm_route(x, L["norm"], 1e-5, L["router"], L["router_bias"], K)
        x = ops.moe_experts(h, ids, w, L["gate"], L["gate_bias"], L["up"], L["up_bias"], L["down"],
                            L["down_bias"], x)
    return x


def capture(mode: str, x0: torch.Tensor, layers: list[dict]):
    """(graph, its output) with the v5 kernels (mode "v5") or v3's ("v3"), warmed up first."""
    saved = os.environ.pop(AB_V3, None)
    if mode == "v3":
        os.environ[AB_V3] = "1"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                moe_layers(x0, layers)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = moe_layers(x0, layers)
        torch.cuda.synchronize()
        return g, out
    finally:
        os.environ.pop(AB_V3, None)
        if saved is not None:
            os.environ[AB_V3] = saved


def replay_us(g: torch.cuda.CUDAGraph, n: int) -> float:
    """Mean us per replay over n back-to-back replays (CUDA events)."""
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n * 1e3


def copy_gbs() -> float:
    src = torch.randn(1 << 28, device="cuda", dtype=torch.float16)  # 512 MiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    us = sorted(ts)[len(ts) // 2]
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 28) * 2 / us / 1e3  # read + write


def kernel_times(g: torch.cuda.CUDAGraph, replays: int = 20) -> dict[str, tuple[int, float]]:
    """{kernel: (calls per replay, us per call)} from the profiler over `replays` replays."""
    rows: dict[str, list] = {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
        torch.cuda.synchronize()
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        m = re.search(r"(\w+_kernel)", ev.name)
        name = m.group(1) if m else ev.name[:40]
        r = rows.setdefault(name, [0, 0.0])
        r[0] += 1
        r[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    return {k: (n / replays, us / n) for k, (n, us) in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12, help="distinct layers per replay (>= 8: nothing from L2)")
    ap.add_argument("--replays", type=int, default=100, help="replays per timing")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (v5, v3, v5, v3, ...)")
    ap.add_argument("--only", choices=["v5", "v3"], help="capture and time one mode only")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    cp = copy_gbs()
    print(f"{props.name}, {props.multi_processor_count} SMs; copy {cp:.0f} GB/s; "
          f"GPTE_NO_PDL={os.environ.get('GPTE_NO_PDL', '')!r}; {args.layers} layers per replay")
    print(f"bytes per call: gate_up {GATE_UP_BYTES:,}, down {DOWN_BYTES:,}")

    g = torch.Generator(device="cuda").manual_seed(0)
    layers = [make_layer(g) for _ in range(args.layers)]
    x0 = torch.randn(1, C, device="cuda", generator=g).half()
    modes = [args.only] if args.only else ["v5", "v3"]
    graphs = {m: capture(m, x0, layers) for m in modes}
    for m in modes:
        graphs[m][0].replay()
    torch.cuda.synchronize()
    if len(modes) == 2:
        same = torch.equal(graphs["v5"][1], graphs["v3"][1])
        print(f"v5 output == v3 output after {args.layers} layers: {same}")

    per_layer = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            per_layer[m].append(replay_us(graphs[m][0], args.replays) / args.layers)
    for m in modes:
        ts = per_layer[m]
        print(f"\n## {m}: {statistics.median(ts):.2f} us per layer (route + gate_up + down; median of "
              f"{len(ts)} rounds: {', '.join(f'{t:.2f}' for t in ts)})")
        kt = kernel_times(graphs[m][0])
        print(f"{'kernel':<32}{'calls/layer':>12}{'us/call':>9}{'GB/s':>8}{'/copy':>7}")
        for name, (n, us) in sorted(kt.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
            nbytes = GATE_UP_BYTES if "gate_up" in name else DOWN_BYTES if "down" in name else 0
            bw = f"{nbytes / us / 1e3:>8.0f}{nbytes / us / 1e3 / cp:>7.2f}" if nbytes else ""
            print(f"{name:<32}{n / args.layers:>12.2f}{us:>9.2f}{bw}")


if __name__ == "__main__":
    main()
