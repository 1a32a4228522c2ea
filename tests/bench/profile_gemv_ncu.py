"""ncu target: each GEMV config called twice eagerly (the second is the one to read)."""
import sys
import gguf
import torch
from gpt_engine import ops
from gpt_engine.qweight import QWeight
sys.path.insert(0, ".")
from tests.bench.explore_gemv import packed
Q = gguf.GGMLQuantizationType
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
