"""One layer's prefill MoE on the GPU machine (exploration, not evidence): random MXFP4 experts of
the gpt-oss-20b shape (E=32, top-4, C=F=2880), M=512 tokens, routed by a random fp32 router.

(a) gpt_oss.grouped_experts (today: every expert on every token, dequantized to fp16 + cuBLAS)
(b) ops.moe_grouped (csrc/moe_grouped.cu: only the chosen pairs, MXFP4 read by the GEMM)

Each captured in a CUDA graph (as the prefill runs) and replayed: median of 30 replays (CUDA
events) after warm-up; also (b)'s two kernels alone. Prints ms per layer, TFLOP/s on the useful
FLOPs 2 M k (2 C F + F C), and the max abs difference between (a) and (b) (+ NMSE of each vs the
other). The extension builds on first use (minutes on a cold machine); the timing itself takes
well under a minute.

    PYTHONPATH=. python tests/bench/explore_moe_prefill.py [M ...]
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from gpt_engine import ops, quants
from gpt_engine.models import gpt_oss
from gpt_engine.ops import _ext
from tests.ops._bench import event_times_ms
from tests.ops._util import capture_graph

E, K, C, F = 32, 4, 2880, 2880


def mxfp4(rows: int, cols: int) -> torch.Tensor:
    """Random MXFP4 bytes on the GPU, scales around the binade that keeps outputs of order one
    (tests/ops/_util.mxfp4_rows, made on the device)."""
    e0 = 128 - round(math.log2(4.5 * math.sqrt(cols)))
    raw = torch.randint(0, 256, (rows, cols // 32, 17), dtype=torch.uint8, device="cuda")
    raw[..., 0] = torch.randint(e0 - 2, e0 + 1, (rows, cols // 32), dtype=torch.uint8, device="cuda")
    return raw.reshape(rows, cols // 32 * 17)


def layer(dtype):
    def stack(rows, cols):
        w = SimpleNamespace(raw=mxfp4(E * rows, cols), qtype=quants.Q.MXFP4, shape=(E, rows, cols))
        return gpt_oss.ExpertStack(w, (torch.randn(E, rows, device="cuda") * 0.5).to(dtype))
    return SimpleNamespace(router=torch.randn(E, C, device="cuda") / C ** 0.5,
                           router_bias=torch.randn(E, device="cuda") * 0.1,
                           gate=stack(F, C), up=stack(F, C), down=stack(C, F))


def median_ms(fn, n=30, warm=5) -> float:
    return statistics.median(event_times_ms(fn, n, warm))


def run(m: int, dtype=torch.float16) -> None:
    torch.manual_seed(0)
    L = layer(dtype)
    h = (torch.randn(m, C, device="cuda")).to(dtype)
    ids, w = ops.moe_route(h, L.router, L.router_bias, K)
    useful = 2 * m * K * (2 * C * F + F * C)

    def today():
        return h + gpt_oss.grouped_experts(h, ids, w, L)

    def new():
        return ops.moe_grouped(h, ids, w, L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias,
                               L.down.weight.raw, L.down.bias, h)

    ga, out_a = capture_graph(today, warmup=3)
    gb, out_b = capture_graph(new, warmup=3)
    ga.replay()
    gb.replay()
    torch.cuda.synchronize()
    diff = (out_a.float() - out_b.float()).abs().max().item()
    a64, b64 = (out_a - h).double(), (out_b - h).double()
    nmse = float(((a64 - b64) ** 2).sum() / (a64 ** 2).sum())
    ta, tb = median_ms(ga.replay), median_ms(gb.replay)

    # (b)'s parts: the layout kernel, the two GEMMs on its layout, the combine kernel
    ext = _ext.load()
    order = torch.empty(m * K, dtype=torch.int32, device="cuda")
    dest = torch.empty_like(order)
    counts = torch.empty(E, dtype=torch.int32, device="cuda")
    t_layout = median_ms(lambda: ext.moe_grouped_layout(ids, order, counts, dest))
    act = torch.empty((m * K, F), dtype=dtype, device="cuda")
    part = torch.empty((m * K, C), dtype=torch.float32, device="cuda")
    wflat = w.reshape(-1).contiguous()
    t_gu = median_ms(lambda: ext.moe_grouped_gate_up(h, order, counts, L.gate.weight.raw, L.gate.bias,
                                                      L.up.weight.raw, L.up.bias, act, K))
    t_dn = median_ms(lambda: ext.moe_grouped_down(act, order, counts, dest, wflat, L.down.weight.raw,
                                                   L.down.bias, part))
    out = torch.empty_like(h)
    t_comb = median_ms(lambda: ext.moe_grouped_combine(part, h, out, K))

    mx_bytes = 3 * E * C * F // 32 * 17
    print(f"\n## M={m} tokens, E={E}, top-{K}, C=F={C}, {dtype}; useful {useful / 1e9:.1f} GFLOP, "
          f"MXFP4 experts {mx_bytes / 1e6:.0f} MB; routed pairs per expert min/max "
          f"{int(counts.min())}/{int(counts.max())}")
    print(f"(a) grouped_experts (today)  {ta:8.3f} ms/layer  {useful / ta / 1e9:7.1f} TFLOP/s useful")
    print(f"(b) moe_grouped (new)        {tb:8.3f} ms/layer  {useful / tb / 1e9:7.1f} TFLOP/s useful  "
          f"({ta / tb:.2f}x)")
    gu_flop, dn_flop = 2 * m * K * 2 * C * F, 2 * m * K * F * C
    print(f"    gate/up kernel {t_gu:.3f} ms ({gu_flop / t_gu / 1e9:.1f} TFLOP/s), down kernel {t_dn:.3f} ms "
          f"({dn_flop / t_dn / 1e9:.1f} TFLOP/s), layout {t_layout:.3f} ms, combine {t_comb:.3f} ms "
          f"(each alone, eager; graph (b) - their sum = {tb - t_gu - t_dn - t_layout - t_comb:.3f} ms)")
    print(f"max |a - b| = {diff:.4g}; NMSE(b vs a, MoE output) = {nmse:.3e}")
    print(f"24 layers: (a) {24 * ta:.1f} ms, (b) {24 * tb:.1f} ms per {m}-token prefill")


def main() -> None:
    t0 = time.time()
    _ext.load()
    print(f"extension ready in {time.time() - t0:.1f} s; {torch.cuda.get_device_name()}")
    for m in [int(a) for a in sys.argv[1:]] or [512]:
        run(m)
    print(f"\ntotal {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
