// KV cache append: k[b, t, h, :] -> k_cache[b, h, start_pos + t, :] (and v). One thread per
// 16-byte vector of a head row; source rows may be strided (views into a fused qkv tensor).
#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

template <typename T, int VEC>
__global__ void kv_append_kernel(T* __restrict__ kc, T* __restrict__ vc, const T* __restrict__ k,
                                 const T* __restrict__ v, int64_t B, int64_t H, int64_t S, int64_t D, int64_t T_,
                                 int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, int64_t start) {
  const int64_t dv = D / VEC;
  const int64_t total = B * T_ * H * dv;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t d = i % dv;
    int64_t r = i / dv;
    const int64_t h = r % H;
    r /= H;
    const int64_t t = r % T_;
    const int64_t b = r / T_;
    const int64_t dst = ((b * H + h) * S + start + t) * dv + d;  // in vectors
    const Vec<T, VEC> kv = *reinterpret_cast<const Vec<T, VEC>*>(k + b * k_sb + t * k_st + h * D + d * VEC);
    const Vec<T, VEC> vv = *reinterpret_cast<const Vec<T, VEC>*>(v + b * v_sb + t * v_st + h * D + d * VEC);
    store_vec<T, VEC>(kc, dst, kv);
    store_vec<T, VEC>(vc, dst, vv);
  }
}

template <typename T>
cudaError_t run(T* kc, T* vc, const T* k, const T* v, int64_t B, int64_t H, int64_t S, int64_t D, int64_t T_,
                int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, int64_t start, cudaStream_t st) {
  if (B * T_ * H * D == 0) return cudaSuccess;
  if (start < 0 || start + T_ > S) return cudaErrorInvalidValue;
  constexpr int V = kVec16<T>;
  const bool vec = D % V == 0 && k_sb % V == 0 && k_st % V == 0 && v_sb % V == 0 && v_st % V == 0 &&
                   aligned16(kc) && aligned16(vc) && aligned16(k) && aligned16(v);
  const int64_t n = B * T_ * H * (vec ? D / V : D);
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, threads), 65535LL * 16);
  if (vec)
    kv_append_kernel<T, V><<<blocks, threads, 0, st>>>(kc, vc, k, v, B, H, S, D, T_, k_sb, k_st, v_sb, v_st, start);
  else
    kv_append_kernel<T, 1><<<blocks, threads, 0, st>>>(kc, vc, k, v, B, H, S, D, T_, k_sb, k_st, v_sb, v_st, start);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_kv_append(int dtype, void* k_cache, void* v_cache, const void* k, const void* v, int64_t B,
                             int64_t Hkv, int64_t S, int64_t D, int64_t T, int64_t k_sb, int64_t k_st, int64_t v_sb,
                             int64_t v_st, int64_t start_pos, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, E,
                return run<E>((E*)k_cache, (E*)v_cache, (const E*)k, (const E*)v, B, Hkv, S, D, T, k_sb, k_st, v_sb,
                              v_st, start_pos, stream));
  return cudaSuccess;
}

}  // namespace gpte
