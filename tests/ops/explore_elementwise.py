"""Launch shapes for the elementwise map kernel (csrc/elementwise.cuh), on the GPU machine
(exploration, not evidence). residual_add.fp16 reaches 1.02 of copy bandwidth but 0.988x torch's
`x + y` (H200, paired timing, 2026-12-01): both sit at the memory ceiling, torch ~1% lower in
time. This script compiles the same add kernel under several (threads, 16-byte vectors per
thread and input, grid) shapes with load_inline and times each against torch with
gates.bench's alternating method (median of 50 pairs, L2 flushed before each call), on the
benchmark's size (2^28 fp16 elements per tensor). The winner goes into elementwise.cuh.

    python tests/ops/explore_elementwise.py
"""
from __future__ import annotations

import sys

import torch
from torch.utils.cpp_extension import load_inline

from gates.bench import Bench

SRC = r"""
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

// LD = 1: loads as ld.global.nc.L2::256B (the L2 fetches the whole 256-byte span of a request)
__device__ __forceinline__ uint4 ld_pf(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

template <int THREADS, int UNROLL, bool PERSISTENT, int LD = 0>
__global__ void __launch_bounds__(THREADS) add_kernel(const uint4* __restrict__ x, const uint4* __restrict__ y,
                                                      uint4* __restrict__ out, long long nvec) {
  const long long per_block = (long long)THREADS * UNROLL;
  const long long step = PERSISTENT ? (long long)gridDim.x * per_block : per_block;
  for (long long base = (long long)blockIdx.x * per_block + threadIdx.x; base < nvec; base += step) {
    uint4 a[UNROLL], b[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const long long i = base + (long long)u * THREADS;
      if (i < nvec) { a[u] = LD ? ld_pf(x + i) : x[i]; b[u] = LD ? ld_pf(y + i) : y[i]; }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const long long i = base + (long long)u * THREADS;
      if (i < nvec) {
        uint4 o;
        const __half2* ha = reinterpret_cast<const __half2*>(&a[u]);
        const __half2* hb = reinterpret_cast<const __half2*>(&b[u]);
        __half2* ho = reinterpret_cast<__half2*>(&o);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 fa = __half22float2(ha[j]), fb = __half22float2(hb[j]);
          ho[j] = __floats2half2_rn(fa.x + fb.x, fa.y + fb.y);
        }
        out[i] = o;
      }
    }
    if (!PERSISTENT) break;
  }
}

template <int THREADS, int UNROLL, bool PERSISTENT, int LD = 0>
void run(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t blocks_per_sm) {
  const long long nvec = x.numel() / 8;
  long long grid = (nvec + THREADS * UNROLL - 1) / (THREADS * UNROLL);
  if (PERSISTENT) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index());
    grid = std::min<long long>(grid, (long long)sms * blocks_per_sm);
  }
  add_kernel<THREADS, UNROLL, PERSISTENT, LD><<<(unsigned)grid, THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      (const uint4*)x.data_ptr(), (const uint4*)y.data_ptr(), (uint4*)out.data_ptr(), nvec);
}

void add_variant(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t variant, int64_t bps) {
  switch (variant) {
    case 0: return run<256, 4, false>(x, y, out, bps);  // elementwise.cuh today
    case 1: return run<128, 1, false>(x, y, out, bps);
    case 2: return run<128, 2, false>(x, y, out, bps);
    case 3: return run<256, 1, false>(x, y, out, bps);
    case 4: return run<256, 2, false>(x, y, out, bps);
    case 5: return run<512, 2, false>(x, y, out, bps);
    case 6: return run<256, 4, true>(x, y, out, bps);
    case 7: return run<512, 4, true>(x, y, out, bps);
    case 8: return run<1024, 2, true>(x, y, out, bps);
    case 9: return run<64, 1, false>(x, y, out, bps);
    case 10: return run<64, 2, false>(x, y, out, bps);
    case 11: return run<128, 4, false>(x, y, out, bps);
    case 12: return run<512, 1, false>(x, y, out, bps);
    case 13: return run<1024, 1, false>(x, y, out, bps);
    case 14: return run<1024, 1, false, 1>(x, y, out, bps);
    case 15: return run<256, 1, false, 1>(x, y, out, bps);
    case 16: return run<256, 4, false, 1>(x, y, out, bps);
    case 17: return run<128, 1, false, 1>(x, y, out, bps);
    case 18: return run<256, 2, false, 1>(x, y, out, bps);
  }
}
"""
VARIANTS = {0: "256 x 4 (today)", 1: "128 x 1", 2: "128 x 2", 3: "256 x 1", 4: "256 x 2", 5: "512 x 2",
            6: "256 x 4 persistent", 7: "512 x 4 persistent", 8: "1024 x 2 persistent", 9: "64 x 1",
            10: "64 x 2", 11: "128 x 4", 12: "512 x 1", 13: "1024 x 1", 14: "1024 x 1 L2::256B",
            15: "256 x 1 L2::256B", 16: "256 x 4 L2::256B", 17: "128 x 1 L2::256B", 18: "256 x 2 L2::256B"}


def main() -> None:
    # load_inline binds the names in `functions` from cpp_sources, so the function is declared there
    decl = "void add_variant(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t variant, int64_t bps);"
    ext = load_inline("explore_add", cpp_sources=decl, cuda_sources=SRC, functions=["add_variant"],
                      extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"])
    n = 1 << 28
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    y = torch.randn(n, device="cuda", dtype=torch.float16)
    out = torch.empty_like(x)
    ref = x + y
    bench = Bench("cuda", baselines=None, sink=[])  # only its timing helpers are used
    moved = 3 * n * 2
    print(f"{'variant':<24}{'bps':>4}{'ours us':>9}{'torch us':>10}{'GB/s':>7}{'x torch':>9}")
    only = [int(a) for a in sys.argv[1:]]
    for v, name in VARIANTS.items():
        if only and v not in only:
            continue
        for bps in ((2, 4, 8) if "persistent" in name else (0,)):
            ext.add_variant(x, y, out, v, bps)
            assert torch.equal(out, ref), name
            t, tt = bench.cuda_time_pair(lambda: ext.add_variant(x, y, out, v, bps), lambda: torch.add(x, y, out=out))
            print(f"{name:<24}{bps:>4}{t * 1e6:>9.1f}{tt * 1e6:>10.1f}{moved / t / 1e9:>7.0f}{tt / t:>9.3f}")


if __name__ == "__main__":
    main()
