// GGUF packed rows -> fp32/fp16/bf16, bit-exact with gguf-py's dequantize (then one rounding to
// the output dtype): embedding lookups of packed tables (rows `ids`, on the device: no host
// sync, a decode step is graph-captured) and whole matrices (prefill: dequantized once into a
// scratch buffer that cuBLAS then reads; docs/kernels/quant.md says why).
//
// One thread per quad (4 output values) of the flattened [nrows, K] output, kUnroll quads a
// block-width apart per thread with all their loads before the first store; consecutive
// threads write consecutive quads, so a warp stores 128 contiguous values. The block bytes are
// read with aligned 4-byte loads (quant_blocks.cuh GlobalReader): the 8 threads of a 32-value
// group read the same words, served by L1. Floor: the bytes written (2 B per value in fp16 vs
// 0.53-1.06 B read per value), so the kernel is a streaming write.
#include <cmath>

#include "common.cuh"
#include "launchers.h"
#include "quant_blocks.cuh"

namespace gpte {
namespace {
using namespace quant;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename O> struct Quad;
template <> struct Quad<float> { using V = float4; };
template <> struct Quad<__half> { using V = uint2; };
template <> struct Quad<__nv_bfloat16> { using V = uint2; };

template <typename O> __device__ __forceinline__ typename Quad<O>::V pack4(const float* v);
template <> __device__ __forceinline__ float4 pack4<float>(const float* v) { return make_float4(v[0], v[1], v[2], v[3]); }
template <> __device__ __forceinline__ uint2 pack4<__half>(const float* v) {
  const __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}
template <> __device__ __forceinline__ uint2 pack4<__nv_bfloat16>(const float* v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

template <int T, typename O>
__global__ void __launch_bounds__(kThreads) dequant_kernel(const uint8_t* __restrict__ w, int64_t N, int64_t K,
                                                           const int64_t* __restrict__ ids, int64_t total_quads,
                                                           O* __restrict__ out, int* status) {
  using TR = Traits<T>;
  pdl_wait();  // ids come from the kernel before (a decode step's sampler)
  pdl_launch_dependents();
  const GlobalReader rd{w};
  const int64_t qpr = K / 4;  // quads per row
  const int64_t row_bytes = K / TR::QK * TR::TS;
  const int64_t base = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x;
  bool bad = false;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t qi = base + (int64_t)u * kThreads;
    if (qi >= total_quads) break;
    const int64_t r = qi / qpr, c = (qi - r * qpr) * 4;  // output row, first column of the quad
    const int64_t src = ids ? ids[r] : r;
    float v[4];
    if (src >= 0 && src < N) {
      const int64_t b = c / TR::QK;
      const int in = (int)(c - b * TR::QK), j = in >> 5, qd = (in & 31) >> 2;
      float wq[4], s, mn;
      decode4<T>(rd, src * row_bytes + b * TR::TS, j, qd, wq, s, mn);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = value_exact<T>(wq[k], s, mn);
    } else {
      bad = true;
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = NAN;
    }
    reinterpret_cast<typename Quad<O>::V*>(out)[qi] = pack4<O>(v);
  }
  if (bad && status) atomicOr(status, kStatusBadIndex);
}

template <int T, typename O>
cudaError_t run(const void* w, int64_t N, int64_t K, const int64_t* ids, int64_t nrows, void* out, int* status,
                cudaStream_t st) {
  const int64_t total = nrows * (K / 4);
  const int64_t blocks = ceil_div(total, (int64_t)kThreads * kUnroll);
  return launch_pdl(dequant_kernel<T, O>, dim3((unsigned)blocks), dim3(kThreads), 0, st,
                    static_cast<const uint8_t*>(w), N, K, ids, total, static_cast<O*>(out), status);
}

template <typename O>
cudaError_t run_o(int t, const void* w, int64_t N, int64_t K, const int64_t* ids, int64_t nrows, void* out,
                  int* status, cudaStream_t st) {
  switch (t) {
    case kQ8_0: return run<kQ8_0, O>(w, N, K, ids, nrows, out, status, st);
    case kQ4_0: return run<kQ4_0, O>(w, N, K, ids, nrows, out, status, st);
    case kQ4_1: return run<kQ4_1, O>(w, N, K, ids, nrows, out, status, st);
    case kQ5_0: return run<kQ5_0, O>(w, N, K, ids, nrows, out, status, st);
    case kQ5_1: return run<kQ5_1, O>(w, N, K, ids, nrows, out, status, st);
    case kQ4_K: return run<kQ4_K, O>(w, N, K, ids, nrows, out, status, st);
    case kQ5_K: return run<kQ5_K, O>(w, N, K, ids, nrows, out, status, st);
    case kQ6_K: return run<kQ6_K, O>(w, N, K, ids, nrows, out, status, st);
    case kMXFP4: return run<kMXFP4, O>(w, N, K, ids, nrows, out, status, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_dequantize_rows(int ggml_type, int odtype, const void* w, int64_t N, int64_t K,
                                   const int64_t* ids, int64_t nrows, void* out, int* status, cudaStream_t stream) {
  int qk, ts;
  ggml_block_shape(ggml_type, qk, ts);
  if (qk == 0 || K <= 0 || K % qk || N <= 0 || (reinterpret_cast<uintptr_t>(w) & 3) ||
      (reinterpret_cast<uintptr_t>(out) & 15))
    return cudaErrorInvalidValue;
  if (nrows == 0) return cudaSuccess;
  GPTE_DISPATCH(odtype, O, return run_o<O>(ggml_type, w, N, K, ids, nrows, out, status, stream));
  return cudaSuccess;
}

}  // namespace gpte
