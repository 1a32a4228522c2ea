"""Exploration: the fused decode MLP kernel alone against the two GEMVs it replaces, M = 1,
distinct weights per call (nothing in L2), CUDA events around a graph of calls; GPTE_MLP_DEBUG
variants run in child processes (1: no dot products, 2: no reduction, 4: no staging)."""
import os
import subprocess
import sys

import torch


def main(c, f, act):
    from gpt_engine import ops
    from gpt_engine.ops import mlp_module as mm
    from gpt_engine.qweight import QWeight
    import gguf
    dt = torch.float16
    rows = 2 * f if act == "swiglu" else f
    reps = max(2, (512 << 20) // ((rows + f) * c * 2))
    layers = []
    for _ in range(reps):
        up = QWeight(torch.randn(rows, c, device="cuda").mul_(0.05).half().view(torch.uint8), gguf.GGMLQuantizationType.F16, (rows, c))
        dn = QWeight(torch.randn(c, f, device="cuda").mul_(0.05).half().view(torch.uint8), gguf.GGMLQuantizationType.F16, (c, f))
        wt = dn.raw.view(dt).t().contiguous()
        layers.append((up, dn, mm.DownT(wt, torch.zeros(65, dtype=torch.int32, device="cuda"))))
    norm = ops.Norm("layernorm" if act == "gelu_tanh" else "rmsnorm", torch.ones(c, dtype=dt, device="cuda"),
                    torch.zeros(c, dtype=dt, device="cuda") if act == "gelu_tanh" else None, 1e-5)
    x = torch.randn(1, c, device="cuda", dtype=dt)
    def run(fused):
        for up, dn, d in layers:
            ops.mlp(x, norm, up, None, d if fused else dn, None, act)
    res = {}
    for name, fused in (("fused", True), ("unfused", False)):
        for _ in range(2):
            run(fused)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run(fused)
        ts = []
        for _ in range(15):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); g.replay(); b.record(); b.synchronize()
            ts.append(a.elapsed_time(b) * 1e3 / reps)
        ts.sort()
        res[name] = ts[len(ts) // 2]
    mb = (rows + f) * c * 2 / 1e6
    print(f"C={c} F={f} {act} dbg={os.environ.get('GPTE_MLP_DEBUG', '0')}: fused {res['fused']:.2f} us, "
          f"unfused {res['unfused']:.2f} us ({mb:.1f} MB; fused {mb / res['fused'] * 1e-3:.2f} TB/s)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    else:
        for c, f, act in ((1600, 6400, "gelu_tanh"), (768, 3072, "gelu_tanh"), (2048, 8192, "swiglu")):
            for dbg in ("0", "1", "2", "4", "3", "7"):
                subprocess.run([sys.executable, __file__, str(c), str(f), act], env={**os.environ, "GPTE_MLP_DEBUG": dbg},
                               timeout=120)
