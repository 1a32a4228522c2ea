"""The packed GEMV's version of v27's norm fold, its numerics on the CPU (exploration, not a test).

docs/kernels/quant.md ("Next if the dense fold wins"): the packed GEMV would quantize (x - c) g
instead of the normalised row, and the epilogue would undo the shift with the row constants
C = W g, D = W b: rstd (s - (mean - c) C) + D. The subtraction cancels, so its error is the codes'
error on |x - c|, not on |x - mean|. This simulates the staging's 16-bit group codes (two 8-bit
planes; symmetric, per-32-group scale amax / 32767, round to nearest) on rows that stress the
shift, in float64 otherwise, and prints each path's NMSE against the exact normalised product:
today's (the norm rounded to fp16, then coded) and the fold with c = x[0] (v27's shift) or c = 0.

    python tests/bench/explore_packed_fold_numerics.py
"""
import torch
torch.manual_seed(0)
K, N = 1600, 512
W = torch.randn(N, K, dtype=torch.float64) * 0.05
g = (torch.randn(K, dtype=torch.float64) * 0.2 + 1)
b = torch.randn(K, dtype=torch.float64) * 0.2
eps = 1e-5
def q16(v):
    v = v.view(-1, 32)
    d = v.abs().amax(1, keepdim=True) / 32767
    d[d == 0] = 1
    return (torch.round(v / d) * d).view(-1)
def fp16(v): return v.half().double()
def nmse(a, r): return float(((a - r) ** 2).sum() / (r ** 2).sum())
rows = {
  "N(0,1)": torch.randn(K, dtype=torch.float64),
  "N(30,1)": torch.randn(K, dtype=torch.float64) + 30,
  "N(0,1), x0=40": torch.cat([torch.tensor([40.0], dtype=torch.float64), torch.randn(K - 1, dtype=torch.float64)]),
  "N(0,1), 6 dims at +-100": None,
}
r = torch.randn(K, dtype=torch.float64); idx = torch.randperm(K)[:6]; r[idx] = 100 * torch.sign(torch.randn(6, dtype=torch.float64)); rows["N(0,1), 6 dims at +-100"] = r
for name, x in rows.items():
    x = fp16(x)
    mean, var = x.mean(), x.var(unbiased=False); rstd = 1 / torch.sqrt(var + eps)
    ref = W @ ((x - mean) * rstd * g + b)
    unf = W @ q16(fp16((x - mean) * rstd * g + b))          # today: the norm rounded to fp16, then 16-bit codes
    C, D = W @ g, W @ b
    out = {}
    for cname, c in (("c = x[0]", x[0]), ("c = 0", torch.zeros((), dtype=torch.float64))):
        s = W @ q16((x - c) * g)
        out[cname] = rstd * (s - (mean - c) * C) + D
    print(f"{name:26s} unfused {nmse(unf, ref):.1e}  " + "  ".join(f"{k} {nmse(v, ref):.1e}" for k, v in out.items()))
