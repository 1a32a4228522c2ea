// Elementwise GELU (tanh or erf form), fp32 math, 16-byte vector accesses.
#include "common.cuh"
#include "gelu_math.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(kThreads) gelu_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n) {
  const int64_t nvec = n / VEC;
  const int64_t base = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x;
  Vec<T, VEC> a[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kThreads;
    if (i < nvec) a[u] = load_vec<T, VEC>(x, i);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kThreads;
    if (i < nvec) {
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(gelu_t<T, TANH>(to_f(a[u].v[j])));
      store_vec<T, VEC>(out, i, o);
    }
  }
  if (blockIdx.x == 0)
    for (int64_t e = nvec * VEC + threadIdx.x; e < n; e += kThreads) out[e] = from_f<T>(gelu_t<T, TANH>(to_f(x[e])));
}

template <typename T, bool TANH>
cudaError_t run(const T* x, T* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const bool vec = aligned16(x) && aligned16(out);
  const int64_t nvec = vec ? n / V : n;
  const int64_t blocks = ceil_div(nvec > 0 ? nvec : 1, (int64_t)kThreads * kUnroll);
  if (vec)
    gelu_kernel<T, V, TANH><<<blocks, kThreads, 0, stream>>>(x, out, n);
  else
    gelu_kernel<T, 1, TANH><<<blocks, kThreads, 0, stream>>>(x, out, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gelu(int dtype, const void* x, void* out, int64_t n, bool tanh_form, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T,
                return tanh_form ? run<T, true>((const T*)x, (T*)out, n, stream)
                                 : run<T, false>((const T*)x, (T*)out, n, stream));
  return cudaSuccess;
}

}  // namespace gpte
