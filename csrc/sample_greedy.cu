// Greedy decoding's last step on the device: next[b] = argmax over the first n_valid logits of
// row b (the lowest index among equal maxima, as torch.argmax and the CPU sampler pick), then
// pos[b] += 1 so the next replay of the decode graph works on the next position. A NaN logit
// raises kStatusNonFinite in the status word instead of being picked silently.
// One block per row; each thread keeps its best (value, index) over a strided range, then a
// warp and a block reduction. A 50k-entry fp32 row is 200 KB: a few microseconds.
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* __restrict__ logits, int64_t row_stride,
                                                          int n_valid, int64_t* __restrict__ next,
                                                          int64_t* __restrict__ pos, int* status) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int b = blockIdx.x;
  const float* row = logits + (int64_t)b * row_stride;
  float bv = -INFINITY;
  int bi = n_valid;  // "none yet": larger than every index
  bool nan = false;
  constexpr int kU = 4;
  for (int base = threadIdx.x; base < n_valid; base += kThreads * kU) {
    float v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < n_valid ? __ldg(row + i) : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      nan |= v[u] != v[u];
      better(bv, bi, v[u], base + u * kThreads);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  nan = __syncthreads_or(nan);
  if (warp == 0) {
    bv = sv[lane];
    bi = si[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      better(bv, bi, ov, oi);
    }
    if (lane == 0) {
      // all -inf (or NaN) rows: token 0, flagged when NaN
      next[b] = bi < n_valid ? bi : 0;
      if (pos) pos[b] += 1;
      if (nan && status) atomicOr(status, kStatusNonFinite);
    }
  }
}

}  // namespace

cudaError_t launch_sample_greedy(const float* logits, int64_t rows, int64_t row_stride, int64_t n_valid,
                                 int64_t* next, int64_t* pos, int* status, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (n_valid <= 0 || n_valid > row_stride || n_valid >= (1LL << 31)) return cudaErrorInvalidValue;
  argmax_kernel<<<(unsigned)rows, kThreads, 0, stream>>>(logits, row_stride, (int)n_valid, next, pos, status);
  return cudaGetLastError();
}

}  // namespace gpte
