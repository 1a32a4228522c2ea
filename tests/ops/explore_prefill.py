"""Kernel variants of the prefill op (not a test; run by hand on the GPU machine, repo root).

    PYTHONPATH=$PWD python tests/ops/explore_prefill.py
Checks every compiled variant against the float64 reference, then times each variant and
SDPA (each backend separately) on the benchmark shapes with the harness's timing
(gates.bench.Bench: flushed L2, host-lead spin, median), and prints TFLOP/s.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gates.bench import Baselines, Bench
from gpt_engine.ops import _ext

ext = _ext.load()
bench = Bench("cuda", Baselines(), [])


def cuda_time(fn):
    return bench.cuda_time(fn, warmup=5, reps=30)


# variants: 0 wgmma + TMA (default), 1 mma.sync, 2 wgmma + TMA with three consumer groups
VARIANTS = [0, 1, 2]
# correctness of every variant first (fp16 and bf16, odd T, GQA, one and several key tiles,
# q/k/v as strided views of one fused qkv tensor) against the float64 reference
from gpt_engine.ops.attention_prefill import reference  # noqa: E402

for dt in (torch.float16, torch.bfloat16):
    for (b, t, hq, hkv) in ((2, 333, 4, 2), (1, 64, 2, 2), (1, 1, 2, 2), (1, 65, 2, 1), (1, 129, 2, 2),
                            (1, 200, 3, 3), (1, 1000, 3, 1), (2, 1024, 2, 2)):
        qkv = torch.randn(b, t, hq + 2 * hkv, 64, device="cuda", dtype=dt)
        q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
        ref = reference(q.double(), k.double(), v.double(), 0.125)
        errs = []
        for var in VARIANTS:
            o = torch.full_like(q, float("nan"))
            ext.attention_prefill(q, k, v, o, 0.125, var)
            errs.append(float(((o.double() - ref) ** 2).sum() / (ref ** 2).sum()))
        print(dt, (b, t, hq, hkv), " ".join(f"v{i}={e:.1e}" for i, e in zip(VARIANTS, errs)), flush=True)

print(f"{'T':>6} " + " ".join(f"{'v' + str(v):>7}" for v in VARIANTS) + "   flash    eff  cudnn  default")
for t in (1024, 2048, 4096, 8192):
    b, h, d = 32768 // t, 16, 64
    q, k, v = (torch.randn(b, t, h, d, device="cuda", dtype=torch.float16) for _ in range(3))
    o = torch.empty_like(q)
    flops = 4 * b * h * t * t * d / 2
    row = []
    for var in VARIANTS:
        row.append(flops / cuda_time(lambda: ext.attention_prefill(q, k, v, o, d ** -0.5, var)) / 1e12)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, None):
        try:
            if be is None:
                f = lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)  # noqa: E731
                row.append(flops / cuda_time(f) / 1e12)
            else:
                with sdpa_kernel(be):
                    f = lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)  # noqa: E731
                    row.append(flops / cuda_time(f) / 1e12)
        except RuntimeError:
            row.append(float("nan"))
    print(f"{t:>6} " + " ".join(f"{x:7.1f}" for x in row), flush=True)
