// gpt-oss mixture of experts on the GPU with no host sync (docs/gpt_oss.md, models/gpt_oss.py
// GptOss.moe is the reference). Three kernels, each one launch for all M tokens:
//
// moe_route_kernel: one block per token. Router logits = h W_r^T + b_r in fp32 (W_r [E, C]
//   fp32, one warp per expert), the top k (descending, ties to the lower index) and a softmax
//   over those k logits only -> ids [M, k] int32, weights [M, k] fp32.
// moe_gate_up_kernel: grid (row tiles of F, M * k). For token m and its j-th expert e, rows r
//   of e's gate and up matrices (MXFP4 [E*F, C/32*17], expert e = rows e*F..) dotted with
//   h[m], plus biases, through gpt-oss's clamped SwiGLU -> act [M, k, F] fp32. Only the
//   chosen experts' bytes are read.
// moe_down_kernel: grid (row tiles of C, M). act[m] (k x F) is staged in shared memory; row c
//   of each chosen expert's down matrix [E*C, F/32*17] dotted with its act row, plus bias,
//   weighted by the routing weight and summed over j = 0..k-1 in order (deterministic), then
//   rounded to the activation dtype and added to the residual when one is given (the model's
//   x + moe(h), rounded as the reference rounds it).
//
// MXFP4 block (docs/mxfp4.md, ggml's block_mxfp4): one E8M0 scale byte e, then 16 bytes whose
// low nibbles are values 0..15 and high nibbles values 16..31, each an E2M1 code. Decoded as
// ggml decodes it: the code's value doubled (integers, table below) times 2^(e - 128) (half
// the E8M0 scale; e < 2 gives fp32 subnormals, as ggml_e8m0_to_fp32_half). fp32 accumulation.
//
// GEMV layout: a warp computes one matrix row at a time; lane i owns blocks i, i + 32, ...
// of the row (NBL blocks at most: the input length is at most NBL * 1024), whose 32 input
// values stay in its registers across every row the warp computes. Rows are not 4-byte
// aligned in general (17-byte blocks), so block bytes are loaded one by one (the 32 lanes of
// a warp read 544 contiguous bytes per step).
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kMoeWarps = 8;
constexpr int kMoeThreads = 32 * kMoeWarps;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kMoeWarps * kRowsPerWarp;
constexpr int kBlockBytes = 17;  // MXFP4: scale byte + 16 bytes of nibbles, 32 values

// E2M1 code -> value x 2 (OCP MX v1.0 FP4 E2M1; ggml's kvalues_mxfp4).
__constant__ float kE2M1Doubled[16] = {0.f, 1.f, 2.f, 3.f, 4.f, 6.f, 8.f, 12.f,
                                       0.f, -1.f, -2.f, -3.f, -4.f, -6.f, -8.f, -12.f};

// SwiGLU of gpt-oss: OpenAI's reference gpt_oss/torch/model.py swiglu (alpha 1.702, limit 7).
constexpr float kSwigluAlpha = 1.702f;
constexpr float kSwigluLimit = 7.0f;

__device__ __forceinline__ float e8m0_half(uint32_t e) {
  return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Dot product of one MXFP4 row (nblk blocks from `row`) with the input held as x[i][0..31] =
// values of block lane + 32 i; tbl: the decode table in shared memory. Every lane returns
// the full sum.
template <int NBL>
__device__ __forceinline__ float row_dot(const uint8_t* __restrict__ row, int nblk, const float (&x)[NBL][32],
                                         const float* tbl, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int b = lane + 32 * i;
    if (b < nblk) {
      const uint8_t* blk = row + (int64_t)b * kBlockBytes;
      uint8_t q[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) q[j] = __ldg(blk + 1 + j);
      const float sc = e8m0_half(__ldg(blk));
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        s = fmaf(tbl[q[j] & 15], x[i][j], s);
        s = fmaf(tbl[q[j] >> 4], x[i][j + 16], s);
      }
      acc = fmaf(sc, s, acc);
    }
  }
  return warp_sum(acc);
}

// Loads x[0..n) (n = nblk * 32) into the lane's registers: x[i][j] = src[(lane + 32 i) * 32 + j].
template <typename S, int NBL>
__device__ __forceinline__ void load_x(float (&x)[NBL][32], const S* __restrict__ src, int nblk, int lane) {
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int b = lane + 32 * i;
#pragma unroll
    for (int j = 0; j < 32; ++j) x[i][j] = b < nblk ? to_f(src[(int64_t)b * 32 + j]) : 0.f;
  }
}

__device__ __forceinline__ int clamp_expert(int e, int E) { return e < 0 ? 0 : (e >= E ? E - 1 : e); }

template <typename T, int NBL>
__global__ void __launch_bounds__(kMoeThreads) moe_gate_up_kernel(
    const T* __restrict__ h,            // [M, C]
    const int32_t* __restrict__ ids,    // [M, K]
    const uint8_t* __restrict__ wg,     // [E * F, C / 32 * 17]
    const T* __restrict__ bg,           // [E, F]
    const uint8_t* __restrict__ wu,     // [E * F, C / 32 * 17]
    const T* __restrict__ bu,           // [E, F]
    float* __restrict__ act,            // [M, K, F]
    int K, int E, int F, int C) {
  __shared__ float tbl[16];
  if (threadIdx.x < 16) tbl[threadIdx.x] = kE2M1Doubled[threadIdx.x];
  pdl_wait();  // h and the routing come from the kernels before
  pdl_launch_dependents();
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int mj = blockIdx.y, m = mj / K;
  const int e = clamp_expert(ids[mj], E);
  const int nblk = C / 32;
  const int64_t row_bytes = (int64_t)nblk * kBlockBytes;
  float x[NBL][32];
  load_x<T, NBL>(x, h + (int64_t)m * C, nblk, lane);
#pragma unroll 1
  for (int t = 0; t < kRowsPerWarp; ++t) {
    const int r = blockIdx.x * kRowsPerBlock + t * kMoeWarps + warp;
    if (r >= F) break;
    const int64_t er = (int64_t)e * F + r;
    const float g = row_dot<NBL>(wg + er * row_bytes, nblk, x, tbl, lane) + to_f(bg[er]);
    const float u = row_dot<NBL>(wu + er * row_bytes, nblk, x, tbl, lane) + to_f(bu[er]);
    if (lane == 0) {
      const float gc = fminf(g, kSwigluLimit);
      const float uc = fminf(fmaxf(u, -kSwigluLimit), kSwigluLimit);
      act[(int64_t)mj * F + r] = gc / (1.f + expf(-kSwigluAlpha * gc)) * (uc + 1.f);
    }
  }
}

// Shared-memory row stride of one 32-value block of act: 33 floats, so the 32 lanes reading
// value j of blocks lane + 32 i hit 32 different banks.
constexpr int kActStride = 33;

template <typename T, int NBL>
__global__ void __launch_bounds__(kMoeThreads) moe_down_kernel(
    const float* __restrict__ act,      // [M, K, F]
    const int32_t* __restrict__ ids,    // [M, K]
    const float* __restrict__ wts,      // [M, K]
    const uint8_t* __restrict__ wd,     // [E * C, F / 32 * 17]
    const T* __restrict__ bd,           // [E, C]
    const T* __restrict__ residual,     // [M, C] or null
    T* __restrict__ out,                // [M, C]
    int K, int E, int F, int C) {
  extern __shared__ float sact[];       // [K][F / 32][kActStride]
  __shared__ float tbl[16];
  if (threadIdx.x < 16) tbl[threadIdx.x] = kE2M1Doubled[threadIdx.x];
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = blockIdx.y;
  const int nblk = F / 32;
  for (int i = threadIdx.x; i < K * F; i += kMoeThreads) {
    const int j = i / F, f = i % F;
    sact[(j * nblk + f / 32) * kActStride + f % 32] = act[(int64_t)m * K * F + i];
  }
  __syncthreads();
  const int64_t row_bytes = (int64_t)nblk * kBlockBytes;
  const int c0 = blockIdx.x * kRowsPerBlock + warp;
  float acc[kRowsPerWarp];
#pragma unroll
  for (int t = 0; t < kRowsPerWarp; ++t) acc[t] = 0.f;
#pragma unroll 1
  for (int j = 0; j < K; ++j) {
    const int e = clamp_expert(ids[m * K + j], E);
    const float w = wts[m * K + j];
    float x[NBL][32];
#pragma unroll
    for (int i = 0; i < NBL; ++i) {
      const int b = lane + 32 * i;
#pragma unroll
      for (int q = 0; q < 32; ++q) x[i][q] = b < nblk ? sact[(j * nblk + b) * kActStride + q] : 0.f;
    }
#pragma unroll
    for (int t = 0; t < kRowsPerWarp; ++t) {
      const int c = c0 + t * kMoeWarps;
      if (c < C) {
        const int64_t er = (int64_t)e * C + c;
        acc[t] = fmaf(w, row_dot<NBL>(wd + er * row_bytes, nblk, x, tbl, lane) + to_f(bd[er]), acc[t]);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < kRowsPerWarp; ++t) {
      const int c = c0 + t * kMoeWarps;
      if (c < C) {
        const int64_t o = (int64_t)m * C + c;
        const T y = from_f<T>(acc[t]);
        out[o] = residual != nullptr ? from_f<T>(to_f(residual[o]) + to_f(y)) : y;
      }
    }
  }
}

constexpr int kRouteThreads = 256;
constexpr int kMaxExperts = 256;
constexpr int kMaxTopK = 32;

template <typename T>
__global__ void __launch_bounds__(kRouteThreads) moe_route_kernel(
    const T* __restrict__ h,            // [M, C]
    const float* __restrict__ wr,       // [E, C]
    const float* __restrict__ br,       // [E]
    int32_t* __restrict__ ids,          // [M, K]
    float* __restrict__ wts,            // [M, K]
    int E, int C, int K) {
  __shared__ float logits[kMaxExperts];
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = blockIdx.x;
  const T* x = h + (int64_t)m * C;
  for (int e = warp; e < E; e += kRouteThreads / 32) {
    const float* w = wr + (int64_t)e * C;
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s = fmaf(to_f(x[c]), w[c], s);
    s = warp_sum(s);
    if (lane == 0) logits[e] = s + br[e];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // top k by repeated arg-max (E <= 256, k <= 32: a few thousand compares), taken ones
    // marked with a bit mask; NaN logits never win (the first index stands in)
    uint32_t taken[kMaxExperts / 32] = {};
    int sel[kMaxTopK];
    float top[kMaxTopK];
    for (int j = 0; j < K; ++j) {
      int best = -1;
      float bv = -INFINITY;
      for (int e = 0; e < E; ++e) {
        if (taken[e >> 5] >> (e & 31) & 1u) continue;
        const float v = logits[e];
        if (best < 0 || v > bv) {
          best = e;
          bv = v;
        }
      }
      taken[best >> 5] |= 1u << (best & 31);
      sel[j] = best;
      top[j] = bv;
    }
    float sum = 0.f;
    for (int j = 0; j < K; ++j) sum += expf(top[j] - top[0]);  // top[0] is the largest
    for (int j = 0; j < K; ++j) {
      ids[m * K + j] = sel[j];
      wts[m * K + j] = expf(top[j] - top[0]) / sum;
    }
  }
}

template <typename T, int NBL>
cudaError_t launch_experts(const MoeArgs& a, cudaStream_t st) {
  const dim3 g1((unsigned)ceil_div(a.F, kRowsPerBlock), (unsigned)(a.M * a.K));
  cudaError_t e = launch_pdl(moe_gate_up_kernel<T, NBL>, g1, dim3(kMoeThreads), 0, st, (const T*)a.h, a.ids,
                             a.gate, (const T*)a.gate_bias, a.up, (const T*)a.up_bias, a.act, (int)a.K, (int)a.E,
                             (int)a.F, (int)a.C);
  if (e != cudaSuccess) return e;
  const size_t smem = (size_t)a.K * (a.F / 32) * kActStride * sizeof(float);
  static size_t configured = 0;
  if (smem > configured) {
    e = cudaFuncSetAttribute(moe_down_kernel<T, NBL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    configured = smem;
  }
  const dim3 g2((unsigned)ceil_div(a.C, kRowsPerBlock), (unsigned)a.M);
  return launch_pdl(moe_down_kernel<T, NBL>, g2, dim3(kMoeThreads), smem, st, (const float*)a.act, a.ids,
                    (const float*)a.weights, a.down, (const T*)a.down_bias, (const T*)a.residual, (T*)a.out,
                    (int)a.K, (int)a.E, (int)a.F, (int)a.C);
}

template <typename T>
cudaError_t dispatch_nbl(const MoeArgs& a, cudaStream_t st) {
  // one NBL for both kernels: enough blocks per lane for the longer of C and F
  switch (moe_blocks_per_lane(a.C > a.F ? a.C : a.F)) {
    case 1: return launch_experts<T, 1>(a, st);
    case 2: return launch_experts<T, 2>(a, st);
    case 3: return launch_experts<T, 3>(a, st);
    case 4: return launch_experts<T, 4>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int moe_blocks_per_lane(int64_t n) { return (int)ceil_div(ceil_div(n, 32), 32); }

size_t moe_down_smem_bytes(int64_t K, int64_t F) { return (size_t)K * (F / 32) * kActStride * sizeof(float); }

cudaError_t launch_moe_route(int dtype, const void* h, const float* router, const float* router_bias, int32_t* ids,
                             float* weights, int64_t M, int64_t E, int64_t C, int64_t K, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  if (E < 1 || E > kMaxExperts || K < 1 || K > kMaxTopK || K > E || M > INT32_MAX) return cudaErrorInvalidValue;
  GPTE_DISPATCH(dtype, T, {
    return launch_pdl(moe_route_kernel<T>, dim3((unsigned)M), dim3(kRouteThreads), 0, stream, (const T*)h, router,
                      router_bias, ids, weights, (int)E, (int)C, (int)K);
  });
  return cudaErrorInvalidValue;
}

cudaError_t launch_moe_experts(int dtype, const MoeArgs& a, cudaStream_t stream) {
  if (a.M == 0) return cudaSuccess;
  if (a.C % 32 || a.F % 32 || a.C <= 0 || a.F <= 0 || a.E < 1 || a.K < 1 || a.M * a.K > 65535 ||
      moe_blocks_per_lane(a.C > a.F ? a.C : a.F) > kMoeMaxBlocksPerLane)
    return cudaErrorInvalidValue;
  if (dtype == kF16) return dispatch_nbl<__half>(a, stream);
  if (dtype == kBF16) return dispatch_nbl<__nv_bfloat16>(a, stream);
  if (dtype == kF32) return dispatch_nbl<float>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gpte
