// Token + position embedding: out[i] = wte[ids[i]] + wpe[pos[i]] for each token i.
// One warp per token; lanes stream the two table rows in 16-byte vectors. An id or position
// outside its table yields a NaN row instead of an out-of-bounds read and raises *bad_flag;
// the Python side reads the flag after the launch (one sync, no extra pass over the ids) and
// raises, except while a CUDA graph is captured (then the NaN row is the only signal).
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 4;

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarps) embedding_kernel(const int64_t* __restrict__ ids,
                                                              const int64_t* __restrict__ pos,
                                                              const T* __restrict__ wte, const T* __restrict__ wpe,
                                                              T* __restrict__ out, int64_t ntok, int64_t c,
                                                              int64_t vocab, int64_t npos, int* bad_flag) {
  const int64_t tok = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (tok >= ntok) return;
  const int64_t id = ids[tok], p = pos[tok];
  const int64_t nvec = c / VEC;
  T* o = out + tok * c;
  if (id < 0 || id >= vocab || p < 0 || p >= npos) {
    for (int64_t e = lane; e < c; e += 32) o[e] = from_f<T>(NAN);
    if (lane == 0) atomicOr(bad_flag, 1);
    return;
  }
  const T* a = wte + id * c;
  const T* b = wpe + p * c;
  for (int64_t v0 = lane; v0 < nvec; v0 += 32 * kUnroll) {
    Vec<T, VEC> av[kUnroll], bv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = v0 + u * 32;
      if (vi < nvec) {
        av[u] = load_vec<T, VEC>(a, vi);
        bv[u] = load_vec<T, VEC>(b, vi);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = v0 + u * 32;
      if (vi < nvec) {
        Vec<T, VEC> r;
#pragma unroll
        for (int j = 0; j < VEC; ++j) r.v[j] = from_f<T>(to_f(av[u].v[j]) + to_f(bv[u].v[j]));
        store_vec<T, VEC>(o, vi, r);
      }
    }
  }
}

template <typename T>
cudaError_t run(const int64_t* ids, const int64_t* pos, const T* wte, const T* wpe, T* out, int64_t ntok, int64_t c,
                int64_t vocab, int64_t npos, int* bad, cudaStream_t st) {
  if (ntok == 0 || c == 0) return cudaSuccess;
  constexpr int V = kVec16<T>;
  const int64_t blocks = ceil_div(ntok, kWarps);
  if (c % V == 0 && aligned16(wte) && aligned16(wpe) && aligned16(out))
    embedding_kernel<T, V><<<blocks, 32 * kWarps, 0, st>>>(ids, pos, wte, wpe, out, ntok, c, vocab, npos, bad);
  else
    embedding_kernel<T, 1><<<blocks, 32 * kWarps, 0, st>>>(ids, pos, wte, wpe, out, ntok, c, vocab, npos, bad);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_embedding(int dtype, const int64_t* ids, const int64_t* pos, const void* wte, const void* wpe,
                             void* out, int64_t ntok, int64_t c, int64_t vocab, int64_t npos, int* bad_flag,
                             cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T,
                return run<T>(ids, pos, (const T*)wte, (const T*)wpe, (T*)out, ntok, c, vocab, npos, bad_flag, stream));
  return cudaSuccess;
}

}  // namespace gpte
