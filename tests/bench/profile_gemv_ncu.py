"""ncu target: each GEMV config called twice eagerly (the second is the one to read).

CFG=norm (session 36, docs/kernels/decode.md): instead, the dense GEMV at GPT-2 1.5B's
norm-fused shapes and the same K without a norm, with their model epilogues, to read where the
warps stall instruction by instruction. Switching the fused LayerNorm's normalize loop off saves
~2.9 us a call in the step, and neither its norm-vector loads (v22c, v24b) nor the statistics'
barriers (v23) explain that. `pending_ab_call.sh` PART=8 runs it under
`ncu --set full -k regex:gemv_kernel` and prints the source page (SASS, per-instruction samples).
CFG=batch (session 48): 16 rows at GPT-2 1.5B's QKV shape, dense on either kernel and packed Q8_0
(pending_ab_call.sh PART=26).
"""
import os
import sys
import gguf
import torch
from gpt_engine import ops
from gpt_engine.qweight import QWeight
sys.path.insert(0, ".")
from tests.bench.explore_gemv import packed
Q = gguf.GGMLQuantizationType
if os.environ.get("CFG") == "norm":
    k = 1600
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    nm = ops.Norm("layernorm", (torch.randn(k, device="cuda") * 0.2 + 1).half(),
                  (torch.randn(k, device="cuda") * 0.2).half(), 1e-5)
    for n, kw in [(6400, dict(norm=nm, act="gelu_tanh")), (4800, dict(norm=nm)),
                  (1600, dict(residual=torch.randn(1, 1600, device="cuda", dtype=torch.float16)))]:
        q = QWeight((torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02).view(torch.uint8),
                    Q.F16, (n, k))
        b = (torch.randn(n, device="cuda") * 0.5).half()
        for _ in range(2):
            ops.linear(x, q, b, **kw)
        torch.cuda.synchronize()
        print("F16", n, k, sorted(kw), "done", flush=True)
    sys.exit(0)
if os.environ.get("CFG") == "batch":
    # (session 48) 16 rows: GPT-2 1.5B's QKV shape with its LayerNorm, dense on v3
    # (ext.linear_ring_force 32) and on the ring kernel (the rule since v30), the ring with v32's
    # epilogue (ext.linear_scatter_force 1), then packed Q8_0; one row on v3 as the
    # reference. PART=24/25 found the batch-16 step 8.6-10x batch 1's with the weights read once.
    from gpt_engine.ops import _ext
    ext = _ext.load()
    n, k = 4800, 1600
    nm = ops.Norm("layernorm", (torch.randn(k, device="cuda") * 0.2 + 1).half(),
                  (torch.randn(k, device="cuda") * 0.2).half(), 1e-5)
    dense = QWeight((torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02).view(torch.uint8), Q.F16, (n, k))
    q8 = QWeight(packed(n, k, Q.Q8_0), Q.Q8_0, (n, k))
    b = (torch.randn(n, device="cuda") * 0.5).half()
    for label, m, w, ring, scatter in [("F16 v3", 16, dense, 32, 0), ("F16 ring", 16, dense, 0, 0),
                                       ("F16 ring v32", 16, dense, 0, 1), ("Q8_0", 16, q8, 0, 0),
                                       ("F16 v3 M=1", 1, dense, 0, 0)]:
        assert ext.linear_ring_force(ring) == ring
        assert ext.linear_scatter_force(scatter) == scatter
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for _ in range(2):
            ops.linear(x, w, b, norm=nm)
        torch.cuda.synchronize()
        print(label, n, k, "done", flush=True)
    ext.linear_ring_force(0)
    ext.linear_scatter_force(1)  # (the default)
    sys.exit(0)
CFG = [("MXFP4", 1600, 6400, None), ("MXFP4", 6400, 1600, "layernorm"), ("Q8_0", 1600, 6400, None),
       ("Q8_0", 4096, 4096, None), ("F16", 1600, 6400, None), ("F16", 6400, 1600, "layernorm")]
for name, n, k, norm in CFG:
    t = Q[name]
    if name == "F16":
        raw = (torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02).view(torch.uint8)
    else:
        raw = packed(n, k, t)
    q = QWeight(raw, t, (n, k))
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    nm = None
    if norm:
        nm = ops.Norm(norm, (torch.randn(k, device="cuda") * 0.2 + 1).half(), (torch.randn(k, device="cuda") * 0.2).half(), 1e-5)
    for _ in range(2):
        torch.cuda.nvtx.range_push(f"{name} {n}x{k} {norm}")
        ops.linear(x, q, norm=nm)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    print(name, n, k, norm, "done", flush=True)
