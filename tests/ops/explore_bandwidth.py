"""L2-flush effect on bandwidth-bound timings (not a test; run by hand on the GPU machine).

    PYTHONPATH=$PWD python tests/ops/explore_bandwidth.py
The harness flushes the L2 before each timed call by writing a buffer twice its size, which
leaves the L2 full of dirty lines; the timed kernel then pays their write-back. This times the
embedding, layernorm and residual-add benchmarks (harness shapes) and a same-size copy with
that flush and with a flush that ends in a read pass (clean lines), to size the artifact.
"""
import statistics

import torch

from gates.bench import HOST_LEAD_CYCLES
from gpt_engine import ops
from tests.ops._bench import event_times_ms, graphed

l2 = torch.cuda.get_device_properties(0).L2_cache_size
dirty = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
clean = torch.empty(2 * l2 // 8, dtype=torch.int64, device="cuda").random_(0, 100)


def flush_dirty():
    dirty.zero_()


def flush_clean():
    dirty.zero_()
    clean.sum()


def cuda_time(fn, flush, reps=50, warmup=10):
    def before():
        flush()
        torch.cuda._sleep(HOST_LEAD_CYCLES)  # as the harness: the host queues fn before the clock starts

    ts = event_times_ms(fn, reps, warmup, before=before, sync_after_warmup=False)
    return statistics.median([t / 1e3 for t in ts])  # seconds


src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
dst = torch.empty_like(src)
print(f"copy 1 GiB, no flush: {2 * src.numel() / cuda_time(lambda: dst.copy_(src), lambda: None) / 1e9:.0f} GB/s")
del src, dst

cases = {}
b, t, v, p, c = 32, 1024, 50257, 1024, 1024
ids = torch.randint(0, v, (b, t), device="cuda")
pos = torch.arange(t, device="cuda").expand(b, t).contiguous()
wte = torch.randn(v, c, device="cuda", dtype=torch.float16)
wpe = torch.randn(p, c, device="cuda", dtype=torch.float16)
moved = 2 * b * t * c * 2 + wpe.numel() * 2 + 2 * ids.numel() * 8
cases["embedding (graph)"] = (graphed(lambda: ops.embedding(ids, pos, wte, wpe)), moved)
cases["wte[ids] + wpe[pos] (graph)"] = (graphed(lambda: wte[ids] + wpe[pos]), moved)
b2, c2 = 64, 1600  # GPT-2 XL width, 64k tokens: 210 MB written, 8x the L2 with the reads
ids2 = torch.randint(0, v, (b2, t), device="cuda")
pos2 = torch.arange(t, device="cuda").expand(b2, t).contiguous()
wte2 = torch.randn(v, c2, device="cuda", dtype=torch.float16)
wpe2 = torch.randn(p, c2, device="cuda", dtype=torch.float16)
moved2 = 2 * b2 * t * c2 * 2 + wpe2.numel() * 2 + 2 * ids2.numel() * 8
cases["embedding 64k x 1600 (graph)"] = (graphed(lambda: ops.embedding(ids2, pos2, wte2, wpe2)), moved2)
cases["torch 64k x 1600 (graph)"] = (graphed(lambda: wte2[ids2] + wpe2[pos2]), moved2)
for n in (64 << 20, 256 << 20, 1 << 30):
    s16 = torch.randn(n // 2, device="cuda", dtype=torch.float16)
    d16 = torch.empty_like(s16)
    cases[f"copy {n >> 20} MiB read + write"] = (lambda s16=s16, d16=d16: d16.copy_(s16), 2 * n)
x = torch.randn(65536, 1024, device="cuda", dtype=torch.float16)
y = torch.randn_like(x)
w, bb = torch.randn(1024, device="cuda", dtype=torch.float16), torch.randn(1024, device="cuda", dtype=torch.float16)
cases["layernorm 65536x1024"] = (lambda: ops.layernorm(x, w, bb, 1e-5), 2 * x.numel() * 2)
cases["F.layer_norm 65536x1024"] = (lambda: torch.nn.functional.layer_norm(x, (1024,), w, bb, 1e-5), 2 * x.numel() * 2)
cases["residual_add 65536x1024"] = (lambda: ops.residual_add(x, y), 3 * x.numel() * 2)

print(f"{'case':34} {'dirty-flush GB/s':>17} {'clean-flush GB/s':>17}")
for name, (fn, nbytes) in cases.items():
    td, tc = cuda_time(fn, flush_dirty), cuda_time(fn, flush_clean)
    print(f"{name:34} {nbytes / td / 1e9:17.0f} {nbytes / tc / 1e9:17.0f}   ({td * 1e6:.1f} / {tc * 1e6:.1f} us)", flush=True)
