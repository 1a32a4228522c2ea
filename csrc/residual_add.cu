// Residual add out = x + y (fp32 arithmetic, one rounding). Pure bandwidth: each thread
// issues UNROLL independent 16-byte loads per input before its first add.
#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) residual_add_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                                               T* __restrict__ out, int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t base = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x;
  Vec<T, VEC> a[kUnroll], b[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kThreads;
    if (i < nvec) {
      a[u] = load_vec<T, VEC>(x, i);
      b[u] = load_vec<T, VEC>(y, i);
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kThreads;
    if (i < nvec) {
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(to_f(a[u].v[j]) + to_f(b[u].v[j]));
      store_vec<T, VEC>(out, i, o);
    }
  }
  if (blockIdx.x == 0)  // the < VEC elements past the last whole vector
    for (int64_t e = nvec * VEC + threadIdx.x; e < n; e += kThreads) out[e] = from_f<T>(to_f(x[e]) + to_f(y[e]));
}

template <typename T>
cudaError_t run(const T* x, const T* y, T* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const bool vec = aligned16(x) && aligned16(y) && aligned16(out);
  const int64_t nvec = vec ? n / V : n;
  const int64_t blocks = ceil_div(nvec > 0 ? nvec : 1, (int64_t)kThreads * kUnroll);
  if (vec)
    residual_add_kernel<T, V><<<blocks, kThreads, 0, stream>>>(x, y, out, n);
  else
    residual_add_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(x, y, out, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_residual_add(int dtype, const void* x, const void* y, void* out, int64_t n, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T, return run<T>((const T*)x, (const T*)y, (T*)out, n, stream));
  return cudaSuccess;
}

}  // namespace gpte
