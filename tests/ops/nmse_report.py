"""Prints each CUDA kernel's NMSE against its float64 reference (not a test; the tests
assert the bounds, this records the measured values for docs/kernels/). GPU machine only.

    python tests/ops/nmse_report.py
"""
import torch

from gpt_engine import ops
from gpt_engine.ops import (add_layernorm_module, attention_decode_module, attention_prefill_module,
                            bias_gelu_module, embedding_module, ffn_module, gelu_module, layernorm_module,
                            residual_add_module)


def nmse(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b) ** 2).sum() / (b * b).sum())


def r(*s, dt, scale=1.0):
    return (torch.randn(*s, device="cuda") * scale).to(dt)


def d64(*ts):
    return [t.double().cpu() if t.is_floating_point() else t.cpu() for t in ts]


rows = []
for dt in (torch.float32, torch.float16, torch.bfloat16):
    name = str(dt)[6:]
    x, y = r(4096, 1600, dt=dt, scale=2), r(4096, 1600, dt=dt)
    w, b = r(1600, dt=dt), r(1600, dt=dt)
    rows.append(("layernorm [4096,1600]", name, nmse(ops.layernorm(x, w, b, 1e-5), layernorm_module.reference(*d64(x, w, b), 1e-5))))
    h, yy = ops.add_layernorm(x, y, w, b, 1e-5)
    hr, yr = add_layernorm_module.reference(*d64(x, y, w, b), 1e-5)
    rows.append(("add_layernorm h / y", name, max(nmse(h, hr), nmse(yy, yr))))
    rows.append(("residual_add [4096,1600]", name, nmse(ops.residual_add(x, y), residual_add_module.reference(*d64(x, y)))))
    g = r(4096, 3072, dt=dt, scale=2).clamp(min=-4)
    bb = r(3072, dt=dt)
    for ap in ("tanh", "none"):
        rows.append((f"gelu {ap}", name, nmse(ops.gelu(g, ap), gelu_module.reference(d64(g)[0], ap))))
        rows.append((f"bias_gelu {ap}", name, nmse(ops.bias_gelu(g, bb, ap), bias_gelu_module.reference(*d64(g, bb), ap))))
    ids, pos = torch.randint(0, 50257, (4, 512), device="cuda"), torch.arange(512, device="cuda").expand(4, 512).contiguous()
    wte, wpe = r(50257, 768, dt=dt), r(1024, 768, dt=dt)
    rows.append(("embedding", name, nmse(ops.embedding(ids, pos, wte, wpe), embedding_module.reference(*d64(ids, pos, wte, wpe)))))
    xf = r(512, 768, dt=dt)
    wu, bu, wd, bd = r(3072, 768, dt=dt, scale=768 ** -0.5), r(3072, dt=dt, scale=0.1), r(768, 3072, dt=dt, scale=3072 ** -0.5), r(768, dt=dt, scale=0.1)
    rows.append(("ffn 768->3072->768", name, nmse(ops.ffn(xf, wu, bu, wd, bd, "tanh"), ffn_module.reference(*d64(xf, wu, bu, wd, bd), "tanh"))))
    for hq, hkv in ((12, 12), (32, 8)):
        q, k, v = r(2, 1000, hq, 64, dt=dt), r(2, 1000, hkv, 64, dt=dt), r(2, 1000, hkv, 64, dt=dt)
        kind = "fp32 reference math" if dt == torch.float32 else "flash kernel"
        rows.append((f"attention_prefill T1000 Hq{hq}/Hkv{hkv} ({kind})", name,
                     nmse(ops.attention_prefill(q, k, v, 0.125), attention_prefill_module.reference(*d64(q, k, v), 0.125))))
        qd, kc, vc = r(4, hq, 64, dt=dt), r(4, hkv, 4096, 64, dt=dt), r(4, hkv, 4096, 64, dt=dt)
        lens = torch.tensor([4096, 3000, 17, 1], device="cuda")
        rows.append((f"attention_decode S4096 Hq{hq}/Hkv{hkv}", name,
                     nmse(ops.attention_decode(qd, kc, vc, lens, 0.125), attention_decode_module.reference(*d64(qd, kc, vc), lens.cpu(), 0.125))))
print(f"{'kernel':48s} {'dtype':9s} NMSE")
for k, dtn, e in rows:
    print(f"{k:48s} {dtn:9s} {e:.2e}")
