"""Launch shapes for the elementwise map kernel (csrc/elementwise.cuh), on the GPU machine
(exploration, not evidence). residual_add.fp16 reaches 1.02 of copy bandwidth but 0.988x torch's
`x + y` (H200, paired timing, 2026-12-01): both sit at the memory ceiling, torch ~1% lower in
time. This script compiles the same add kernel under several (threads, 16-byte vectors per
thread and input, grid) shapes with load_inline and times each against torch with
gates.bench's alternating method (median of 50 pairs, L2 flushed before each call), on the
benchmark's size (2^28 fp16 elements per tensor). The winner goes into elementwise.cuh.
OP=gelu does the same for the one-input map with gelu.cu's fp16 tanh-form GELU (gelu_math.cuh's
fast path, restated below) against torch's F.gelu(x, approximate="tanh"): gelu_tanh.fp16 measured
0.99x torch on two H100s (sessions 30 and 31, both at 1.00-1.01 of copy), the only gate1 bar
missed there, while the H200 that chose 256 x 4 gave 1.14x. (The TMA variants are add-only.)

    python tests/ops/explore_elementwise.py [VARIANT ...]
    OP=gelu python tests/ops/explore_elementwise.py 0 3 4 5 11 12 13 19 21 22 23
"""
from __future__ import annotations

import os
import sys

import torch
from torch.utils.cpp_extension import load_inline

from gates.bench import Bench

SRC = r"""
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

// LD = 1: loads as ld.global.nc.L2::256B (the L2 fetches the whole 256-byte span of a request)
__device__ __forceinline__ uint4 ld_pf(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// LD = 2: __ldcs / __stcs (cache-streaming: evict-first in L1 and L2)
// LD = 3: loads ld.global.nc.L1::no_allocate with an L2 evict-first policy, stores with the same policy
// LD = 4: plain loads, __stcs stores
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ uint4 ld_ef(const uint4* p, uint64_t pol) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(pol));
  return r;
}
__device__ __forceinline__ void st_ef(uint4* p, uint4 v, uint64_t pol) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;"
               :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "l"(pol) : "memory");
}
template <int LD>
__device__ __forceinline__ uint4 ld_var(const uint4* p, uint64_t pol) {
  if constexpr (LD == 1) return ld_pf(p);
  else if constexpr (LD == 2) return __ldcs(p);
  else if constexpr (LD == 3) return ld_ef(p, pol);
  else return *p;
}
template <int LD>
__device__ __forceinline__ void st_var(uint4* p, uint4 v, uint64_t pol) {
  if constexpr (LD == 2 || LD == 4) __stcs(p, v);
  else if constexpr (LD == 3) st_ef(p, v, pol);
  else *p = v;
}

// gelu.cu's fp16 GELU, tanh form (gelu_math.cuh gelu_tanh<false>): x * sigmoid(2u)
__device__ __forceinline__ float gelu_fast(float x) {
  const float u2 = 2.0f * 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
  return x * __fdividef(1.0f, 1.0f + __expf(-u2));
}

// GELU: out = gelu(x), y unused (one input, as gelu.cu's map)
template <int THREADS, int UNROLL, bool PERSISTENT, int LD = 0, bool GELU = false>
__global__ void __launch_bounds__(THREADS) add_kernel(const uint4* __restrict__ x, const uint4* __restrict__ y,
                                                      uint4* __restrict__ out, long long nvec) {
  const long long per_block = (long long)THREADS * UNROLL;
  const long long step = PERSISTENT ? (long long)gridDim.x * per_block : per_block;
  const uint64_t pol = LD == 3 ? evict_first_policy() : 0;
  for (long long base = (long long)blockIdx.x * per_block + threadIdx.x; base < nvec; base += step) {
    uint4 a[UNROLL], b[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const long long i = base + (long long)u * THREADS;
      if (i < nvec) {
        a[u] = ld_var<LD>(x + i, pol);
        if constexpr (!GELU) b[u] = ld_var<LD>(y + i, pol);
      }
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
          const float2 fa = __half22float2(ha[j]);
          if constexpr (GELU) {
            ho[j] = __floats2half2_rn(gelu_fast(fa.x), gelu_fast(fa.y));
          } else {
            const float2 fb = __half22float2(hb[j]);
            ho[j] = __floats2half2_rn(fa.x + fb.x, fa.y + fb.y);
          }
        }
        st_var<LD>(out + i, o, pol);
      }
    }
    if (!PERSISTENT) break;
  }
}

// TMA bulk copies (cp.async.bulk, sm_90): a persistent block streams CH-byte chunks of x and y
// into a STAGES-deep shared-memory ring (completion counted on one mbarrier per stage), 256
// threads add them in place into the x buffer, and thread 0 writes it back with a bulk store.
// A stage is refilled once the bulk store of the chunk before has read it (wait_group.read 1),
// so STAGES - 1 loads stay in flight per block. Needs n * 2 bytes to be a multiple of CH.
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

template <int STAGES, int CH>
__global__ void __launch_bounds__(256) add_tma(const char* __restrict__ x, const char* __restrict__ y,
                                               char* __restrict__ out, long long nchunks) {
  extern __shared__ __align__(128) unsigned char sm[];
  const uint32_t xs = smem_u32(sm), ys = xs + STAGES * CH, bs = ys + STAGES * CH;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bs + 8 * s) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const long long first = blockIdx.x, stride = gridDim.x;
  const long long mine = first < nchunks ? (nchunks - 1 - first) / stride + 1 : 0;
  auto issue = [&](long long k) {
    const int s = (int)(k % STAGES);
    const long long c = first + k * stride;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bs + 8 * s), "r"(2 * CH) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(xs + s * CH), "l"(x + c * CH), "r"(CH), "r"(bs + 8 * s) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(ys + s * CH), "l"(y + c * CH), "r"(CH), "r"(bs + 8 * s) : "memory");
  };
  if (threadIdx.x == 0)
    for (long long k = 0; k < STAGES && k < mine; ++k) issue(k);
  for (long long k = 0; k < mine; ++k) {
    const int s = (int)(k % STAGES);
    const uint32_t parity = (uint32_t)((k / STAGES) & 1);
    uint32_t done = 0;
    do {
      asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(done) : "r"(bs + 8 * s), "r"(parity) : "memory");
    } while (!done);
    uint4* xv = reinterpret_cast<uint4*>(sm + s * CH);
    const uint4* yv = reinterpret_cast<const uint4*>(sm + STAGES * CH + s * CH);
#pragma unroll
    for (int i = threadIdx.x; i < CH / 16; i += 256) {
      uint4 a = xv[i], b = yv[i], o;
      const __half2* ha = reinterpret_cast<const __half2*>(&a);
      const __half2* hb = reinterpret_cast<const __half2*>(&b);
      __half2* ho = reinterpret_cast<__half2*>(&o);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 fa = __half22float2(ha[j]), fb = __half22float2(hb[j]);
        ho[j] = __floats2half2_rn(fa.x + fb.x, fa.y + fb.y);
      }
      xv[i] = o;
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (threadIdx.x == 0) {
      const long long c = first + k * stride;
      asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
                   ::"l"(out + c * CH), "r"(xs + s * CH), "r"(CH) : "memory");
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      if (k >= 1 && k - 1 + STAGES < mine) {
        asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
        issue(k - 1 + STAGES);
      }
    }
  }
  if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

template <int STAGES, int CH>
void run_tma(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t blocks_per_sm) {
  const long long bytes = x.numel() * 2;
  TORCH_CHECK(bytes % CH == 0, "n * 2 must be a multiple of the chunk");
  const int smem = 2 * STAGES * CH + 8 * STAGES;
  cudaFuncSetAttribute(add_tma<STAGES, CH>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index());
  add_tma<STAGES, CH><<<(unsigned)(sms * blocks_per_sm), 256, smem, c10::cuda::getCurrentCUDAStream()>>>(
      (const char*)x.data_ptr(), (const char*)y.data_ptr(), (char*)out.data_ptr(), bytes / CH);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int THREADS, int UNROLL, bool PERSISTENT, int LD = 0>
void run(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t blocks_per_sm, bool gelu) {
  const long long nvec = x.numel() / 8;
  long long grid = (nvec + THREADS * UNROLL - 1) / (THREADS * UNROLL);
  if (PERSISTENT) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index());
    grid = std::min<long long>(grid, (long long)sms * blocks_per_sm);
  }
  const auto st = c10::cuda::getCurrentCUDAStream();
  if (gelu)
    add_kernel<THREADS, UNROLL, PERSISTENT, LD, true><<<(unsigned)grid, THREADS, 0, st>>>(
        (const uint4*)x.data_ptr(), nullptr, (uint4*)out.data_ptr(), nvec);
  else
    add_kernel<THREADS, UNROLL, PERSISTENT, LD><<<(unsigned)grid, THREADS, 0, st>>>(
        (const uint4*)x.data_ptr(), (const uint4*)y.data_ptr(), (uint4*)out.data_ptr(), nvec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void add_variant(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t variant, int64_t bps, int64_t op) {
  const bool g = op == 1;  // 1: gelu(x); 0: x + y
  TORCH_CHECK(!g || variant < 24, "the TMA variants are add-only");
  switch (variant) {
    case 0: return run<256, 4, false>(x, y, out, bps, g);  // elementwise.cuh until session 33
    case 1: return run<128, 1, false>(x, y, out, bps, g);
    case 2: return run<128, 2, false>(x, y, out, bps, g);
    case 3: return run<256, 1, false>(x, y, out, bps, g);  // elementwise.cuh since session 33
    case 4: return run<256, 2, false>(x, y, out, bps, g);
    case 5: return run<512, 2, false>(x, y, out, bps, g);
    case 6: return run<256, 4, true>(x, y, out, bps, g);
    case 7: return run<512, 4, true>(x, y, out, bps, g);
    case 8: return run<1024, 2, true>(x, y, out, bps, g);
    case 9: return run<64, 1, false>(x, y, out, bps, g);
    case 10: return run<64, 2, false>(x, y, out, bps, g);
    case 11: return run<128, 4, false>(x, y, out, bps, g);
    case 12: return run<512, 1, false>(x, y, out, bps, g);
    case 13: return run<1024, 1, false>(x, y, out, bps, g);
    case 14: return run<1024, 1, false, 1>(x, y, out, bps, g);
    case 15: return run<256, 1, false, 1>(x, y, out, bps, g);
    case 16: return run<256, 4, false, 1>(x, y, out, bps, g);
    case 17: return run<128, 1, false, 1>(x, y, out, bps, g);
    case 18: return run<256, 2, false, 1>(x, y, out, bps, g);
    case 19: return run<1024, 1, false, 2>(x, y, out, bps, g);
    case 20: return run<1024, 1, false, 3>(x, y, out, bps, g);
    case 21: return run<1024, 1, false, 4>(x, y, out, bps, g);
    case 22: return run<512, 2, false, 4>(x, y, out, bps, g);
    case 23: return run<256, 4, false, 2>(x, y, out, bps, g);
    case 24: return run_tma<4, 8192>(x, y, out, bps);
    case 25: return run_tma<3, 16384>(x, y, out, bps);
    case 26: return run_tma<8, 4096>(x, y, out, bps);
  }
}
"""
VARIANTS = {0: "256 x 4 (until s33)", 1: "128 x 1", 2: "128 x 2", 3: "256 x 1 (today)", 4: "256 x 2", 5: "512 x 2",
            6: "256 x 4 persistent", 7: "512 x 4 persistent", 8: "1024 x 2 persistent", 9: "64 x 1",
            10: "64 x 2", 11: "128 x 4", 12: "512 x 1", 13: "1024 x 1", 14: "1024 x 1 L2::256B",
            15: "256 x 1 L2::256B", 16: "256 x 4 L2::256B", 17: "128 x 1 L2::256B", 18: "256 x 2 L2::256B",
            19: "1024 x 1 ldcs/stcs", 20: "1024 x 1 evict-first", 21: "1024 x 1 stcs", 22: "512 x 2 stcs",
            23: "256 x 4 ldcs/stcs", 24: "TMA 4 x 8 KiB persistent", 25: "TMA 3 x 16 KiB persistent",
            26: "TMA 8 x 4 KiB persistent"}


def main() -> None:
    # load_inline binds the names in `functions` from cpp_sources, so the function is declared there
    decl = ("void add_variant(torch::Tensor x, torch::Tensor y, torch::Tensor out, int64_t variant, int64_t bps,"
            " int64_t op);")
    ext = load_inline("explore_add", cpp_sources=decl, cuda_sources=SRC, functions=["add_variant"],
                      extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"])
    gelu = os.environ.get("OP", "add") == "gelu"
    n = 1 << 28
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    y = torch.randn(n, device="cuda", dtype=torch.float16)
    out = torch.empty_like(x)
    if gelu:  # torch's op as test_gelu.py times it; our fast path differs from it by rounding only
        torch_op = lambda: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
        ref = torch_op()
    else:
        torch_op = lambda: torch.add(x, y, out=out)  # noqa: E731
        ref = x + y
    bench = Bench("cuda", baselines=None, sink=[])  # only its timing helpers are used
    moved = (2 if gelu else 3) * n * 2
    print(f"{'variant':<24}{'bps':>4}{'ours us':>9}{'torch us':>10}{'GB/s':>7}{'x torch':>9}")
    only = [int(a) for a in sys.argv[1:]]
    for v, name in VARIANTS.items():
        if only and v not in only:
            continue
        if gelu and "TMA" in name:
            continue
        grids = (1, 2, 3) if "TMA" in name else (2, 4, 8) if "persistent" in name else (0,)
        for bps in grids:
            ext.add_variant(x, y, out, v, bps, int(gelu))
            if gelu:  # 2^-10 relative: fp16 rounding of either side, plus the MUFU ex2 / rcp error
                torch.testing.assert_close(out, ref, atol=1e-3, rtol=2e-3, msg=name)
            else:
                assert torch.equal(out, ref), name
            t, tt = bench.cuda_time_pair(lambda: ext.add_variant(x, y, out, v, bps, int(gelu)), torch_op)
            print(f"{name:<24}{bps:>4}{t * 1e6:>9.1f}{tt * 1e6:>10.1f}{moved / t / 1e9:>7.0f}{tt / t:>9.3f}")


if __name__ == "__main__":
    main()
