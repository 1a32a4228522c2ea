// FFN epilogue gelu(x + bias) over [rows, F]. Each thread owns one column vector: it loads
// its bias slice once and streams ROWS_PER_THREAD rows (all loads issued before the math).
#include "common.cuh"
#include "gelu_math.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 4;

template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(kThreads) bias_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                                            T* __restrict__ out, int64_t rows, int64_t fvec) {
  const int64_t cv = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (cv >= fvec) return;
  const Vec<T, VEC> bv = load_vec<T, VEC>(bias, cv);
  float bf[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) bf[j] = to_f(bv.v[j]);
  for (int64_t r0 = (int64_t)blockIdx.y * kRows; r0 < rows; r0 += (int64_t)gridDim.y * kRows) {
    Vec<T, VEC> a[kRows];
#pragma unroll
    for (int u = 0; u < kRows; ++u)
      if (r0 + u < rows) a[u] = load_vec<T, VEC>(x, (r0 + u) * fvec + cv);
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      if (r0 + u < rows) {
        Vec<T, VEC> o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(gelu_t<T, TANH>(to_f(a[u].v[j]) + bf[j]));
        store_vec<T, VEC>(out, (r0 + u) * fvec + cv, o);
      }
    }
  }
}

template <typename T, bool TANH>
cudaError_t run(const T* x, const T* bias, T* out, int64_t rows, int64_t f, cudaStream_t stream) {
  if (rows == 0 || f == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const bool vec = f % V == 0 && aligned16(x) && aligned16(bias) && aligned16(out);
  const int64_t fvec = vec ? f / V : f;
  const dim3 grid((unsigned)ceil_div(fvec, kThreads), (unsigned)std::min<int64_t>(ceil_div(rows, kRows), 65535));
  if (vec)
    bias_gelu_kernel<T, V, TANH><<<grid, kThreads, 0, stream>>>(x, bias, out, rows, fvec);
  else
    bias_gelu_kernel<T, 1, TANH><<<grid, kThreads, 0, stream>>>(x, bias, out, rows, fvec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_gelu(int dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t f,
                             bool tanh_form, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T,
                return tanh_form ? run<T, true>((const T*)x, (const T*)bias, (T*)out, rows, f, stream)
                                 : run<T, false>((const T*)x, (const T*)bias, (T*)out, rows, f, stream));
  return cudaSuccess;
}

}  // namespace gpte
