// One streaming kernel for the elementwise ops (gelu: one input, residual_add: two):
// out[i] = f(x[i] [, y[i]]) in fp32, rounded once. Pure bandwidth: each thread issues kUnroll
// independent 16-byte loads per input before its first use; the < VEC elements past the last
// whole vector (or every element, when a pointer is not 16-byte aligned) take the scalar path.
#pragma once
#include "common.cuh"

namespace gpte {

constexpr int kMapThreads = 256;
constexpr int kMapUnroll = 4;

// NIN = 1: y is unused (may be null) and f is called as f(x, 0).
template <typename T, int VEC, int NIN, typename F>
__global__ void __launch_bounds__(kMapThreads) map_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                                         T* __restrict__ out, int64_t n, F f) {
  const int64_t nvec = n / VEC;
  const int64_t base = (int64_t)blockIdx.x * kMapThreads * kMapUnroll + threadIdx.x;
  Vec<T, VEC> a[kMapUnroll], b[kMapUnroll];
#pragma unroll
  for (int u = 0; u < kMapUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kMapThreads;
    if (i < nvec) {
      a[u] = load_vec<T, VEC>(x, i);
      if constexpr (NIN == 2) b[u] = load_vec<T, VEC>(y, i);
    }
  }
#pragma unroll
  for (int u = 0; u < kMapUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kMapThreads;
    if (i < nvec) {
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(f(to_f(a[u].v[j]), NIN == 2 ? to_f(b[u].v[j]) : 0.f));
      store_vec<T, VEC>(out, i, o);
    }
  }
  if (blockIdx.x == 0)
    for (int64_t e = nvec * VEC + threadIdx.x; e < n; e += kMapThreads)
      out[e] = from_f<T>(f(to_f(x[e]), NIN == 2 ? to_f(y[e]) : 0.f));
}

// x, y, out: n elements each (y only for NIN = 2).
template <typename T, int NIN, typename F>
cudaError_t launch_map(const T* x, const T* y, T* out, int64_t n, F f, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const bool vec = aligned16(x) && (NIN == 1 || aligned16(y)) && aligned16(out);
  const int64_t nvec = vec ? n / V : n;
  const int64_t blocks = ceil_div(nvec > 0 ? nvec : 1, (int64_t)kMapThreads * kMapUnroll);
  if (vec)
    map_kernel<T, V, NIN><<<blocks, kMapThreads, 0, stream>>>(x, y, out, n, f);
  else
    map_kernel<T, 1, NIN><<<blocks, kMapThreads, 0, stream>>>(x, y, out, n, f);
  return cudaGetLastError();
}

}  // namespace gpte
