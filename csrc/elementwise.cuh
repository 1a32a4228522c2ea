// One streaming kernel for the elementwise ops (gelu: one input, residual_add: two):
// out[i] = f(x[i] [, y[i]]) in fp32, rounded once. Pure bandwidth: each thread issues UNROLL
// independent 16-byte loads per input before its first use; the < VEC elements past the last
// whole vector (or every element, when a pointer is not 16-byte aligned) take the scalar path.
// Launch shapes (threads x 16-byte vectors per thread and input), from tests/ops/explore_elementwise.py
// on the H200 (2^28 fp16 elements, paired against torch, median of 50 pairs, L2 flushed):
//  - one input (gelu): 256 x 1. 256 x 4 gave 0.97 of copy (gelu_erf 1.29x torch, gelu_tanh 1.14x)
//    on the H200, where 256 x 1 led it by 2.2% (session 32); on an H100 (session 33, 30 shapes,
//    tanh) 256 x 1 1.006x torch, 128 x 1 and 512 x 1 1.007x, 256 x 4 0.999x, persistent grids
//    0.93-0.97x: one vector per thread is ahead on both cards, by little (all at copy bandwidth);
//  - two inputs (residual_add): 1024 x 1. Of 14 shapes (64-1024 threads, 1-4 vectors, persistent
//    grids, L2::256B prefetch loads), 256 x 4 gave 0.986 / 0.985x torch's x + y in two runs and
//    1024 x 1 0.999 / 0.998x (4,414-4,428 GB/s, the HBM ceiling both kernels share; persistent
//    grids 0.92-0.96x, prefetch hints no gain).
#pragma once
#include "common.cuh"

namespace gpte {

// threads per block and vectors per thread, by input count (see above)
template <int NIN> constexpr int kMapThreads = NIN == 2 ? 1024 : 256;
template <int NIN> constexpr int kMapUnroll = 1;

// NIN = 1: y is unused (may be null) and f is called as f(x, 0).
template <typename T, int VEC, int NIN, typename F>
__global__ void __launch_bounds__(kMapThreads<NIN>) map_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                                              T* __restrict__ out, int64_t n, F f) {
  constexpr int THREADS = kMapThreads<NIN>, UNROLL = kMapUnroll<NIN>;
  const int64_t nvec = n / VEC;
  const int64_t base = (int64_t)blockIdx.x * THREADS * UNROLL + threadIdx.x;
  Vec<T, VEC> a[UNROLL], b[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t i = base + (int64_t)u * THREADS;
    if (i < nvec) {
      a[u] = load_vec<T, VEC>(x, i);
      if constexpr (NIN == 2) b[u] = load_vec<T, VEC>(y, i);
    }
  }
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t i = base + (int64_t)u * THREADS;
    if (i < nvec) {
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(f(to_f(a[u].v[j]), NIN == 2 ? to_f(b[u].v[j]) : 0.f));
      store_vec<T, VEC>(out, i, o);
    }
  }
  if (blockIdx.x == 0)
    for (int64_t e = nvec * VEC + threadIdx.x; e < n; e += THREADS)
      out[e] = from_f<T>(f(to_f(x[e]), NIN == 2 ? to_f(y[e]) : 0.f));
}

// x, y, out: n elements each (y only for NIN = 2).
template <typename T, int NIN, typename F>
cudaError_t launch_map(const T* x, const T* y, T* out, int64_t n, F f, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const bool vec = aligned16(x) && (NIN == 1 || aligned16(y)) && aligned16(out);
  const int64_t nvec = vec ? n / V : n;
  constexpr int THREADS = kMapThreads<NIN>;
  const int64_t blocks = ceil_div(nvec > 0 ? nvec : 1, (int64_t)THREADS * kMapUnroll<NIN>);
  if (vec)
    map_kernel<T, V, NIN><<<blocks, THREADS, 0, stream>>>(x, y, out, n, f);
  else
    map_kernel<T, 1, NIN><<<blocks, THREADS, 0, stream>>>(x, y, out, n, f);
  return cudaGetLastError();
}

}  // namespace gpte
