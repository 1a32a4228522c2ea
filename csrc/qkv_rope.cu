// The step between the fused QKV projection and attention, in one launch: split the projection
// into heads, rotate q and k (RoPE, either GGUF layout), write k and v into the KV cache at each
// token's own position (read on the device: graph-capturable, per-sequence positions), and
// record the sequence length the attention kernel will read.
//
// qkv rows: [q heads | k heads | v heads], each head D contiguous values (the order of a GGUF
// attn_qkv weight, and of attn_q/attn_k/attn_v stacked). RoPE pairs, per head, for the first R
// dims (R = rope dim): "adjacent" (llama.cpp's normal mode, what the llama converter's q/k row
// permutation produces) rotates (2i, 2i+1); "neox" (rotate-half) rotates (i, i + R/2). Pair i
// uses cos/sin of pos * theta^(-2i/R), looked up in fp32 tables built once per model.
// Tiny data ((Hq + 2 Hkv) D values per token): one block per token, one thread per pair.
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) qkv_rope_kernel(const QkvRopeArgs p) {
  const int64_t tok = blockIdx.x;
  const int64_t seq = tok / p.T;
  const int half_d = p.D / 2;
  const int heads = p.Hq + 2 * p.Hkv;
  const int rh = p.R / 2;
  const T* row = static_cast<const T*>(p.qkv) + tok * (int64_t)heads * p.D;
  const int64_t pos = p.pos[tok];
  const bool pos_ok = pos >= 0 && (p.k_cache == nullptr || pos < p.S) && (p.rope_mode == kRopeNone || pos < p.table_rows);
  if (threadIdx.x == 0) {
    if (!pos_ok && p.status) atomicOr(p.status, kStatusBadPosition);
    // the attention kernel clamps lengths to [0, S]; a bad position leaves the old length
    if (p.lens && pos_ok && tok % p.T == p.T - 1) p.lens[seq] = (int32_t)(pos + 1);
  }
  for (int j = threadIdx.x; j < heads * half_d; j += kThreads) {
    const int hs = j / half_d, i = j - hs * half_d;
    const bool is_v = hs >= p.Hq + p.Hkv;
    int e0, e1, f = -1;  // element pair within the head; f: frequency index when rotated
    if (p.rope_mode == kRopeNeox && i < rh) {
      e0 = i;
      e1 = i + rh;
      f = i;
    } else if (p.rope_mode == kRopeNeox) {
      e0 = p.R + 2 * (i - rh);
      e1 = e0 + 1;
    } else {
      e0 = 2 * i;
      e1 = 2 * i + 1;
      if (p.rope_mode == kRopeAdjacent && i < rh) f = i;
    }
    if (is_v) f = -1;
    float a = to_f(row[hs * p.D + e0]), b = to_f(row[hs * p.D + e1]);
    if (!pos_ok) {
      a = b = NAN;
    } else if (f >= 0) {
      const float c = p.cos_t[pos * rh + f], s = p.sin_t[pos * rh + f];
      const float ra = a * c - b * s, rb = a * s + b * c;
      a = ra;
      b = rb;
    }
    const T ta = from_f<T>(a), tb = from_f<T>(b);
    if (hs < p.Hq) {
      T* q = static_cast<T*>(p.q_out) + (tok * p.Hq + hs) * p.D;
      q[e0] = ta;
      q[e1] = tb;
      continue;
    }
    const int h = is_v ? hs - p.Hq - p.Hkv : hs - p.Hq;
    T* outp = static_cast<T*>(is_v ? p.v_out : p.k_out);
    if (outp) {
      T* o = outp + (tok * p.Hkv + h) * p.D;
      o[e0] = ta;
      o[e1] = tb;
    }
    T* cache = static_cast<T*>(is_v ? p.v_cache : p.k_cache);
    if (cache && pos_ok) {
      T* o = cache + ((seq * p.Hkv + h) * p.S + pos) * p.D;
      o[e0] = ta;
      o[e1] = tb;
    }
  }
}

}  // namespace

cudaError_t launch_qkv_rope(int dtype, const QkvRopeArgs& p, cudaStream_t stream) {
  if (p.ntok == 0) return cudaSuccess;
  if (p.D <= 0 || p.D % 2 || p.R < 0 || p.R > p.D || p.R % 2 || p.T <= 0 || p.Hq <= 0 || p.Hkv <= 0) return cudaErrorInvalidValue;
  if (p.rope_mode != kRopeNone && (p.cos_t == nullptr || p.sin_t == nullptr)) return cudaErrorInvalidValue;
  GPTE_DISPATCH(dtype, T, {
    qkv_rope_kernel<T><<<(unsigned)p.ntok, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
  return cudaSuccess;
}

}  // namespace gpte
