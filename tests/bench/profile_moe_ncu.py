"""ncu target: gpt-oss's MoE decode kernels at its shape (E = 32, k = 4, C = F = 2880, one token,
fp16), one layer of random MXFP4 stacks, called three times eagerly per version (MOE_VERSIONS,
default "7"; "7r3" also forces the routing kernel v3; ncu flushes the caches before each
profiled kernel, so every call reads DRAM).
Each call runs the expert kernels (gate/up, down) on fixed ids; with ROUTE=1 it first runs the
routing kernel as the model does (RMSNorm fused, a random fp32 router), whose ids the experts
then use. Profile the last call of the first version: --launch-skip 4 --launch-count 2 with
-k regex:moe_ (ROUTE=1: --launch-skip 6 --launch-count 3). GPU machine, after the build:

    ncu --clock-control none -k regex:moe_ --launch-skip 4 --launch-count 2 --section ... \
        python3 tests/bench/profile_moe_ncu.py

Why the warps wait needs the stall reasons, which the sections print only with `--section
WarpStateStats --print-details all` (session 22's run of the sections without it printed the
cycles per issued instruction, 10.2 and 16.0, and no reason). Which pipe is the busiest (v7.2's
premise: the integer ALU pipe, where PRMT, LOP3 and SHF go) is in `--section
ComputeWorkloadAnalysis`.
"""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

import torch  # noqa: E402

from gpt_engine.ops import _ext  # noqa: E402
from tests.bench.explore_moe_decode import C, E, F, K, mxfp4  # noqa: E402

ext = _ext.load()
gen = torch.Generator(device="cuda").manual_seed(0)
dt = torch.float16
gate, up, down = mxfp4(E * F, C, gen), mxfp4(E * F, C, gen), mxfp4(E * C, F, gen)
gb = (torch.randn(E, F, device="cuda", generator=gen) * 0.5).to(dt)
ub = (torch.randn(E, F, device="cuda", generator=gen) * 0.5).to(dt)
db = (torch.randn(E, C, device="cuda", generator=gen) * 0.5).to(dt)
ids = torch.tensor([[3, 11, 17, 29]], device="cuda", dtype=torch.int32)
w = torch.softmax(torch.randn(1, K, device="cuda", generator=gen), -1)
act = torch.zeros(1, K, F, device="cuda")
out = torch.zeros(1, C, device="cuda", dtype=dt)
h = torch.randn(1, C, device="cuda", generator=gen).to(dt)
route = os.environ.get("ROUTE") == "1"
router = torch.randn(E, C, device="cuda", generator=gen) * C ** -0.5
router_b = torch.randn(E, device="cuda", generator=gen) * 0.1
norm_w = torch.rand(C, device="cuda", generator=gen) + 0.5
x = torch.randn(1, C, device="cuda", generator=gen).to(dt)
for v in os.environ.get("MOE_VERSIONS", "7").split():  # "7", or "7r3": experts v7, routing kernel v3
    experts, _, route_v = v.partition("r")
    assert ext.moe_ab_force(int(experts), 0) == int(experts)
    assert ext.moe_route_ab_force(int(route_v or 4)) == int(route_v or 4)
    for _ in range(3):
        torch.cuda.nvtx.range_push(f"moe v{v}")
        if route:  # ids, w and h as the model makes them
            ext.moe_route(x, router, router_b, ids, w, norm_w, 1e-5, h)
        ext.moe_experts(h, ids, w, gate, gb, up, ub, down, db, None, act, out)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    print(f"moe v{v} done", flush=True)
ext.moe_ab_force(0, 0)
ext.moe_route_ab_force(0)
