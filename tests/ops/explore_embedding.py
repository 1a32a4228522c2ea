"""Embedding kernel shapes (not a test; run by hand on the GPU machine, repo root).

    PYTHONPATH=$PWD python tests/ops/explore_embedding.py
Builds candidate gather kernels inline, checks them against wte[ids] + wpe[pos], and times
them (CUDA graph replays, the harness's timing) against the op and a same-size copy, at
GPT-2 XL width over 64k and 128k tokens.
  op:    the op (csrc/embedding.cu; since session 2 the flat kernel below with U = 4;
         before, one warp per token, 4 warps per block).
  flat:  every thread takes U 16-byte vectors of the flattened (token, vector) index space;
         each looks its token's ids up (L1 hits for all but the first lane of a row).
"""
import torch
from torch.utils.cpp_extension import load_inline

from gates.bench import Baselines, Bench
from gpt_engine import ops
from tests.ops._bench import graphed

SRC = r"""
#include <torch/extension.h>
#include <cuda_fp16.h>
#include <c10/cuda/CUDAStream.h>

template <int U>
__global__ void __launch_bounds__(256) flat_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ pos,
    const uint4* __restrict__ wte, const uint4* __restrict__ wpe, uint4* __restrict__ out, int64_t total,
    int nvec, int64_t vocab, int64_t npos, int* bad) {
  const int64_t base = (int64_t)blockIdx.x * 256 * U + threadIdx.x;
  uint4 a[U], b[U];
  bool ok[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = base + (int64_t)u * 256;
    ok[u] = false;
    if (i < total) {
      const int64_t tok = i / nvec;
      const int v = (int)(i - tok * nvec);
      const int64_t id = __ldg(ids + tok), p = __ldg(pos + tok);
      ok[u] = id >= 0 && id < vocab && p >= 0 && p < npos;
      if (ok[u]) {
        a[u] = __ldg(wte + id * nvec + v);
        b[u] = __ldg(wpe + p * nvec + v);
      }
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = base + (int64_t)u * 256;
    if (i < total) {
      uint4 r;
      if (ok[u]) {
        const __half2* x = reinterpret_cast<const __half2*>(&a[u]);
        const __half2* y = reinterpret_cast<const __half2*>(&b[u]);
        __half2* z = reinterpret_cast<__half2*>(&r);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float2 fx = __half22float2(x[j]), fy = __half22float2(y[j]);
          z[j] = __floats2half2_rn(fx.x + fy.x, fx.y + fy.y);
        }
      } else {
        const __half2 n = __float2half2_rn(NAN);
        __half2* z = reinterpret_cast<__half2*>(&r);
        for (int j = 0; j < 4; ++j) z[j] = n;
        atomicOr(bad, 1);
      }
      out[i] = r;
    }
  }
}

void flat(torch::Tensor ids, torch::Tensor pos, torch::Tensor wte, torch::Tensor wpe, torch::Tensor out,
          torch::Tensor bad, int64_t unroll) {
  const int nvec = wte.size(1) / 8;
  const int64_t total = ids.numel() * nvec;
  auto st = c10::cuda::getCurrentCUDAStream();
  const int64_t per = 256 * unroll;
  const int64_t blocks = (total + per - 1) / per;
  auto args = [&](auto k) {
    k<<<blocks, 256, 0, st>>>(ids.data_ptr<int64_t>(), pos.data_ptr<int64_t>(), (const uint4*)wte.data_ptr(),
                            (const uint4*)wpe.data_ptr(), (uint4*)out.data_ptr(), total, nvec, wte.size(0),
                            wpe.size(0), bad.data_ptr<int>());
  };
  if (unroll == 2) args(flat_kernel<2>);
  else if (unroll == 4) args(flat_kernel<4>);
  else args(flat_kernel<8>);
}
"""
ext = load_inline("explore_embedding", cpp_sources="void flat(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, int64_t);",
                  cuda_sources=SRC, functions=["flat"], extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"])

bench = Bench("cuda", Baselines(), [])
cuda_time = bench.cuda_time


src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
dst = torch.empty_like(src)
copy = 2 * src.numel() / cuda_time(lambda: dst.copy_(src)) / 1e9
print(f"copy 1 GiB (flushed): {copy:.0f} GB/s", flush=True)
del src, dst
v, p, c = 50257, 1024, 1600
wte = torch.randn(v, c, device="cuda", dtype=torch.float16)
wpe = torch.randn(p, c, device="cuda", dtype=torch.float16)
for b in (64, 128):
    t = 1024
    ids = torch.randint(0, v, (b, t), device="cuda")
    pos = torch.arange(t, device="cuda").expand(b, t).contiguous()
    moved = 2 * b * t * c * 2 + wpe.numel() * 2 + 2 * ids.numel() * 8
    ref = wte[ids] + wpe[pos]
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    rows = {}
    rows["op"] = graphed(lambda: ops.embedding(ids, pos, wte, wpe))
    for u in (2, 4, 8):
        out = torch.full_like(ref, float("nan"))
        ext.flat(ids, pos, wte, wpe, out, bad, u)
        assert torch.equal(out, ref) and int(bad) == 0, u
        rows[f"flat U{u}"] = graphed(lambda u=u, out=out: ext.flat(ids, pos, wte, wpe, out, bad, u))
    s16 = torch.randn(b * t * c, device="cuda", dtype=torch.float16)
    d16 = torch.empty_like(s16)
    rows["copy, same bytes out"] = graphed(lambda: d16.copy_(s16))
    for name, fn in rows.items():
        tt = cuda_time(fn)
        nb = 2 * s16.numel() * 2 if name.startswith("copy") else moved
        print(f"{b * t:>7} tokens  {name:22} {nb / tt / 1e9:6.0f} GB/s  x copy {nb / tt / 1e9 / copy:.3f}", flush=True)
    del s16, d16
