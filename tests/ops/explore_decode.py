"""Decode split counts and group tiles (not a test; run by hand on the GPU machine).

    PYTHONPATH=$PWD python tests/ops/explore_decode.py [tiles | cluster]
For the benchmark's decode cases, times the kernel (CUDA graph replays, the harness's flush
and host-lead spin) at forced split counts and at the heuristic's choice, against SDPA.
With `tiles`: the GQA shapes of the benchmark models (gpt-oss 64 / 8, Llama-1b 32 / 8, SmolLM2
9 / 3 query / kv heads, D = 64, batch 1) at each group tile the kernel has (query heads per
block, ext.attention_decode_tile_force) and at the rule's, T = 128 in one split without the
reduce (the decode loop's short graph) and T = 1,024 to 32,768 split as the heuristic says.
"""
import sys

import torch
import torch.nn.functional as F

from gates.bench import Baselines, Bench
from gpt_engine.ops import _ext
from tests.ops._bench import graphed

ext = _ext.load()
bench = Bench("cuda", Baselines(), [])
sms = torch.cuda.get_device_properties(0).multi_processor_count




def tiles() -> None:
    cols = [1, 2, 4, 8]
    print(f"{'case':22} {'rule':>4} " + " ".join(f"{'t' + str(g):>7}" for g in cols) + "  (us)", flush=True)
    for hq, hkv in ((64, 8), (32, 8), (9, 3)):
        rule = ext.attention_decode_group_tile(hq, hkv)
        for t in (128, 1024, 4096, 32768):
            d = 64
            q = torch.randn(1, hq, d, device="cuda", dtype=torch.float16)
            kc, vc = (torch.randn(1, hkv, t, d, device="cuda", dtype=torch.float16) for _ in range(2))
            lens = torch.full((1,), t, device="cuda", dtype=torch.int32)
            out = torch.empty_like(q)
            short = t <= 256  # the short graph's call: one split, no reduce launch
            row = []
            try:
                for g in cols:
                    assert ext.attention_decode_tile_force(g) == g
                    row.append(bench.cuda_time(graphed(lambda: ext.attention_decode(
                        q, kc, vc, lens, out, 0.125, 0, None, 0, 256 if short else 0, not short))))
            finally:
                ext.attention_decode_tile_force(0)
            print(f"H{hq}/{hkv} T{t:<6} {'short' if short else 'split':>6} {rule:>4} "
                  + " ".join(f"{x * 1e6:7.2f}" for x in row), flush=True)


def cluster() -> None:
    """v6: the split counts up to a bound merged in one thread-block cluster instead of the reduce
    launch (ext.attention_decode_cluster_force: 1 never, 8 the default). The benchmark's cases at
    T 1,024 and 4,096 at the heuristic's split count, against SDPA; then the decode graph's split
    count (16 at 1,024+ keys: past the bound, so both columns should agree) on the benchmark
    models' heads, batch 1. (Session 37 measured a bound of 16 too; docs/kernels/attention.md.)"""
    bounds = [1, 8]
    print(f"{'case':22} {'splits':>6} " + " ".join(f"{'c' + str(c):>7}" for c in bounds)
          + "    sdpa   sdpa/c8  (us)", flush=True)
    cases = [(b, h, h, t, 0) for b in (1, 4, 8) for h in (12, 16, 32, 64) for t in (1024, 4096)]
    cases += [(1, hq, hkv, t, 16) for hq, hkv in ((12, 12), (25, 25), (32, 8), (64, 8)) for t in (1024, 4096)]
    try:
        for b, hq, hkv, t, forced in cases:
            d = 64
            q = torch.randn(b, hq, d, device="cuda", dtype=torch.float16)
            kc, vc = (torch.randn(b, hkv, t, d, device="cuda", dtype=torch.float16) for _ in range(2))
            lens = torch.full((b,), t, device="cuda", dtype=torch.int32)
            out = torch.empty_like(q)
            sp = forced or ext.attention_decode_splits(b, hq, hkv, t, sms)
            row = []
            for c in bounds:
                assert ext.attention_decode_cluster_force(c) == c
                row.append(bench.cuda_time(graphed(lambda: ext.attention_decode(q, kc, vc, lens, out, 0.125, sp))))
            ext.attention_decode_cluster_force(0)
            sdpa = float("nan")
            if hq == hkv:
                qh = q[:, :, None]
                sdpa = bench.cuda_time(graphed(lambda: F.scaled_dot_product_attention(qh, kc, vc)))
            print(f"B{b} H{hq}/{hkv} T{t:<6} {sp:>6} " + " ".join(f"{x * 1e6:7.2f}" for x in row)
                  + f" {sdpa * 1e6:7.2f} {sdpa / row[-1]:8.3f}", flush=True)
            del q, kc, vc
    finally:
        ext.attention_decode_cluster_force(0)


if sys.argv[1:] == ["tiles"]:
    tiles()
    sys.exit(0)
if sys.argv[1:] == ["cluster"]:
    cluster()
    sys.exit(0)

SPLITS = [1, 2, 4, 8, 16, 32, 64, 128]
print(f"{'case':16} {'auto':>5} " + " ".join(f"{s:>6}" for s in SPLITS) + "   heur   sdpa  (us)", flush=True)
for b in (1, 4, 8):
    for h in (12, 32, 64):
        for t in (1024, 4096, 16384):
            d = 64
            q = torch.randn(b, h, d, device="cuda", dtype=torch.float16)
            kc, vc = (torch.randn(b, h, t, d, device="cuda", dtype=torch.float16) for _ in range(2))
            lens = torch.full((b,), t, device="cuda", dtype=torch.int32)
            out = torch.empty_like(q)
            auto = ext.attention_decode_splits(b, h, h, t, sms)
            row = []
            for sp in SPLITS:
                if sp > max(1, t // 64):
                    row.append(float("nan"))
                    continue
                row.append(bench.cuda_time(graphed(lambda sp=sp: ext.attention_decode(q, kc, vc, lens, out, 0.125, sp))))
            heur = bench.cuda_time(graphed(lambda: ext.attention_decode(q, kc, vc, lens, out, 0.125, 0)))
            qh = q[:, :, None]
            sdpa = bench.cuda_time(graphed(lambda: F.scaled_dot_product_attention(qh, kc, vc)))
            print(f"B{b} H{h} T{t:<6} {auto:>5} " + " ".join(f"{x * 1e6:6.1f}" for x in row)
                  + f" {heur * 1e6:6.1f} {sdpa * 1e6:6.1f}", flush=True)
            del q, kc, vc
