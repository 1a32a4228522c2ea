// Linear layers at small batch (decode): out[m, n] = epilogue(sum_k xn[m, k] * W[n, k]) for
// M <= 16 activation rows, reading every weight byte exactly once.
//
// Floor: the weight bytes over copy bandwidth (GPT-2 1.5B, one 1600 x 6400 F16 matrix: 20.5 MB,
// 4.8 us at 4.26 TB/s); x, bias and the output are < 1% of that at M <= 16.
//
// v1 (this file): one warp computes a PAIR of weight rows (rows 2p and 2p+1, or for SwiGLU the
// gate row p and the up row F + p, so the epilogue holds both factors); each lane streams
// 16-byte weight chunks of both rows with U chunks per row in flight before the first FMA,
// fp32 accumulation, one butterfly reduction per (row, m) at the end. The activations are
// staged in shared memory as fp32 once per block (norm applied there: LayerNorm or RMSNorm of
// the input row, rounded to the activation dtype exactly as the unfused path rounds its norm
// output), in K tiles of at most 48 KiB; blocks are persistent over row groups so the staging
// is paid once per block, not once per row, whenever K fits one tile (always for M <= 4).
// Epilogues: + bias, tanh-GELU, SwiGLU (silu(gate) * up), + residual, fp32 output (logits).
#include <cmath>

#include "common.cuh"
#include "gelu_math.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kSmemFloats = 10240;  // 40 KiB of staged activations: with the static arrays, under the
                                    // 48 KiB a block gets without an opt-in

// Weight bytes that never get reused within a step: keep them out of L1.
__device__ __forceinline__ uint4 ldg_stream(const void* ptr) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr));
  return r;
}

template <typename W> __device__ __forceinline__ void unpack16(const uint4& r, float* f);
template <> __device__ __forceinline__ void unpack16<float>(const uint4& r, float* f) {
  f[0] = __uint_as_float(r.x);
  f[1] = __uint_as_float(r.y);
  f[2] = __uint_as_float(r.z);
  f[3] = __uint_as_float(r.w);
}
template <> __device__ __forceinline__ void unpack16<__half>(const uint4& r, float* f) {
  const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
template <> __device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& r, float* f) {
  const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// The two weight rows of pair `pair`: (2p, 2p+1); SwiGLU: gate row p and up row n_out + p; QKV
// with neox RoPE: per head, (i, i + R/2) for i < R/2, then adjacent pairs past the rotary dims.
__device__ __forceinline__ void pair_rows(const LinearArgs& p, int pair, int& r0, int& r1) {
  if (p.act == kActSwiglu) {
    r0 = pair;
    r1 = pair + p.n_out;
  } else if (p.act == kActQkv && p.qkv.rope_mode == kRopeNeox) {
    const int hd = p.qkv.d / 2, h = pair / hd, i = pair - h * hd, rh = p.qkv.rope_dim / 2;
    r0 = h * p.qkv.d + (i < rh ? i : p.qkv.rope_dim + 2 * (i - rh));
    r1 = i < rh ? r0 + rh : r0 + 1;
  } else {
    r0 = 2 * pair;
    r1 = 2 * pair + 1;
  }
}

// QKV epilogue for batch row m: (v0, v1) are rows (r0, r1) of [q heads | k heads | v heads] with
// their bias; q and k are rotated, q goes to out [M, Hq, D], k and v to the caches at pos[m].
template <typename A>
__device__ __forceinline__ void qkv_epilogue(const LinearArgs& p, int m, int pair, int r0, int r1, float v0,
                                             float v1) {
  const QkvEpilogue& e = p.qkv;
  const int64_t pos = e.pos[m];
  const bool ok = pos >= 0 && pos < e.cache_s && (e.rope_mode == kRopeNone || pos < e.table_rows);
  if (pair == 0) {
    if (ok && e.lens) e.lens[m] = (int32_t)(pos + 1);
    if (!ok && e.status) atomicOr(e.status, kStatusBadPosition);
  }
  const int hs = r0 / e.d, e0 = r0 - hs * e.d, e1 = r1 - hs * e.d;
  const bool is_v = hs >= e.hq + e.hkv;
  const int rh = e.rope_dim / 2;
  // frequency index of a rotated pair: adjacent pairs (2i, 2i+1) -> i; neox (i, i + R/2) -> i
  const int f = e.rope_mode == kRopeAdjacent ? (e0 < e.rope_dim ? e0 / 2 : -1)
              : e.rope_mode == kRopeNeox ? (e0 < rh ? e0 : -1) : -1;
  if (!ok) {
    v0 = v1 = NAN;
  } else if (f >= 0 && !is_v) {
    const float c = e.cos_t[pos * rh + f], sn = e.sin_t[pos * rh + f];
    const float a = v0 * c - v1 * sn, b = v0 * sn + v1 * c;
    v0 = a;
    v1 = b;
  }
  if (hs < e.hq) {
    A* q = static_cast<A*>(p.out) + ((int64_t)m * e.hq + hs) * e.d;
    q[e0] = from_f<A>(v0);
    q[e1] = from_f<A>(v1);
  } else if (ok) {
    const int h = is_v ? hs - e.hq - e.hkv : hs - e.hq;
    A* c = static_cast<A*>(is_v ? e.v_cache : e.k_cache) + (((int64_t)m * e.hkv + h) * e.cache_s + pos) * e.d;
    c[e0] = from_f<A>(v0);
    c[e1] = from_f<A>(v1);
  }
}

template <typename W, typename A, int MT>
__global__ void __launch_bounds__(kThreads, 3) gemv_kernel(const LinearArgs p) {
  constexpr int CH = 16 / sizeof(W);                      // weight elements per 16-byte load
  constexpr int U = MT >= 8 ? 2 : (MT >= 4 ? 4 : 8);      // chunks per row in flight per lane
  extern __shared__ float xs[];                           // [MT][kt] staged activations
  __shared__ float s_mean[MT], s_rstd[MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const A* __restrict__ x = static_cast<const A*>(p.x);
  const W* __restrict__ w = static_cast<const W*>(p.w);
  const A* nw = static_cast<const A*>(p.norm_w);
  const A* nb = static_cast<const A*>(p.norm_b);
  const bool swiglu = p.act == kActSwiglu;
  const int npairs = swiglu ? p.n_out : (p.N + 1) / 2;
  const int ngroups = (npairs + kWarps - 1) / kWarps;
  const int ntiles = (p.K + p.kt - 1) / p.kt;

  // Before the wait on the previous kernel: fetch this warp's first batch of weight chunks (the
  // weights are constant, so this overlaps the previous kernel; nothing else is touched yet).
  uint4 a[U], b[U];
  bool prefetched = false;
  {
    const int pair = blockIdx.x * kWarps + warp;
    if (blockIdx.x < ngroups && pair < npairs) {
      int r0, r1;
      pair_rows(p, pair, r0, r1);
      const int nch = min(p.kt, p.K) / CH;
      const W* w0 = w + (int64_t)r0 * p.K;
      const W* w1 = w + (int64_t)(r1 < p.N ? r1 : r0) * p.K;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = u * 32 + lane;
        if (c < nch) {
          a[u] = ldg_stream(w0 + (int64_t)c * CH);
          b[u] = ldg_stream(w1 + (int64_t)c * CH);
        }
      }
      prefetched = true;
    }
  }
  pdl_wait();
  pdl_launch_dependents();

  // Rows of x -> xs (fp32), tile t: 16-byte loads when x allows (K % 8 == 0, aligned).
  auto load_tile = [&](int t) {
    const int k0 = t * p.kt, len = min(p.kt, p.K - k0);
    if (p.vec_x) {
      const int nv = len / 8;
#pragma unroll 4
      for (int i = threadIdx.x; i < MT * nv; i += kThreads) {
        const int m = i / nv, c = i - m * nv;
        float f[8];
        if (m < p.M) {
          unpack16<A>(*reinterpret_cast<const uint4*>(x + (int64_t)m * p.K + k0 + c * 8), f);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) f[j] = 0.f;
        }
        float4* d = reinterpret_cast<float4*>(xs + m * p.kt + c * 8);
        d[0] = make_float4(f[0], f[1], f[2], f[3]);
        d[1] = make_float4(f[4], f[5], f[6], f[7]);
      }
    } else {
#pragma unroll 4
      for (int i = threadIdx.x; i < MT * len; i += kThreads) {
        const int m = i / len, k = i - m * len;
        xs[m * p.kt + k] = m < p.M ? to_f(x[(int64_t)m * p.K + k0 + k]) : 0.f;
      }
    }
  };
  // Norm statistics over the whole row: from shared memory when the row is one tile (the common
  // case: two exact passes, no global traffic), else one pass over global memory up front.
  auto row_stats = [&](bool from_smem) {
    for (int m = warp; m < p.M; m += kWarps) {
      const float* r = xs + m * p.kt;
      const A* xr = x + (int64_t)m * p.K;
      float mean = 0.f;
      if (p.norm == kNormLayer) {
        float s = 0.f;
        for (int k = lane; k < p.K; k += 32) s += from_smem ? r[k] : to_f(xr[k]);
        mean = warp_sum(s) / p.K;
      }
      float v = 0.f;
      for (int k = lane; k < p.K; k += 32) {
        const float d = (from_smem ? r[k] : to_f(xr[k])) - mean;
        v = fmaf(d, d, v);
      }
      v = warp_sum(v);
      if (lane == 0) {
        s_mean[m] = mean;
        s_rstd[m] = rsqrtf(v / p.K + p.eps);
      }
    }
  };
  // The norm applied in place, rounded to the activation dtype as the unfused norm's output is.
  auto normalize_tile = [&](int t) {
    const int k0 = t * p.kt, len = min(p.kt, p.K - k0);
#pragma unroll 4
    for (int i = threadIdx.x; i < p.M * len; i += kThreads) {
      const int m = i / len, k = i - m * len;
      float* v = xs + m * p.kt + k;
      if (p.norm == kNormLayer)
        *v = to_f(from_f<A>((*v - s_mean[m]) * s_rstd[m] * to_f(nw[k0 + k]) + to_f(nb[k0 + k])));
      else
        *v = to_f(from_f<A>(*v * s_rstd[m] * to_f(nw[k0 + k])));
    }
  };
  if (p.norm != kNormNone && ntiles > 1) {
    row_stats(false);
    __syncthreads();
  }
  auto stage = [&](int t) {  // tile t staged (and normalised); ends on a barrier
    load_tile(t);
    __syncthreads();
    if (p.norm != kNormNone) {
      if (ntiles == 1) {
        row_stats(true);
        __syncthreads();
      }
      normalize_tile(t);
      __syncthreads();
    }
  };

  if (ntiles == 1) stage(0);
  for (int g = blockIdx.x; g < ngroups; g += gridDim.x) {
    const int pair = g * kWarps + warp;
    const bool active = pair < npairs;
    int r0 = 0, r1 = 0;
    if (active) pair_rows(p, pair, r0, r1);
    const bool has1 = active && r1 < p.N;
    float acc0[MT], acc1[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;

    for (int t = 0; t < ntiles; ++t) {
      if (ntiles > 1) {
        __syncthreads();  // every warp is done with the previous tile
        stage(t);
      }
      if (!active) continue;
      const int k0 = t * p.kt;
      const int nch = min(p.kt, p.K - k0) / CH;
      // a missing second row (odd N) re-reads row 0; its sums are never stored
      const W* w0 = w + (int64_t)r0 * p.K + k0;
      const W* w1 = w + (int64_t)(has1 ? r1 : r0) * p.K + k0;
      for (int c0 = 0; c0 < nch; c0 += 32 * U) {
        if (prefetched) {
          prefetched = false;  // the first batch of the first group and tile is already in a/b
        } else {
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int c = c0 + u * 32 + lane;
            if (c < nch) {
              a[u] = ldg_stream(w0 + (int64_t)c * CH);
              b[u] = ldg_stream(w1 + (int64_t)c * CH);
            }
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int c = c0 + u * 32 + lane;
          if (c < nch) {
            float wa[CH], wb[CH];
            unpack16<W>(a[u], wa);
            unpack16<W>(b[u], wb);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
              const float4* xm = reinterpret_cast<const float4*>(xs + m * p.kt + c * CH);
              float xv[CH];
#pragma unroll
              for (int j = 0; j < CH / 4; ++j) {
                const float4 q = xm[j];
                xv[4 * j] = q.x;
                xv[4 * j + 1] = q.y;
                xv[4 * j + 2] = q.z;
                xv[4 * j + 3] = q.w;
              }
#pragma unroll
              for (int j = 0; j < CH; ++j) {
                acc0[m] = fmaf(wa[j], xv[j], acc0[m]);
                acc1[m] = fmaf(wb[j], xv[j], acc1[m]);
              }
            }
          }
        }
      }
    }
    if (!active) continue;

    const A* bias = static_cast<const A*>(p.bias);
    const A* res = static_cast<const A*>(p.residual);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      acc0[m] = warp_sum(acc0[m]);
      acc1[m] = warp_sum(acc1[m]);
      if (m >= p.M || lane != m) continue;  // lane m writes batch row m
      const float v0 = acc0[m] + (bias ? to_f(bias[r0]) : 0.f);
      const float v1 = has1 ? acc1[m] + (bias ? to_f(bias[r1]) : 0.f) : 0.f;
      if (p.act == kActQkv) {
        qkv_epilogue<A>(p, m, pair, r0, r1, v0, v1);
        continue;
      }
      auto emit = [&](int col, float v) {
        if (p.act == kActGeluTanh) v = gelu_tanh<false>(v);
        const int64_t idx = (int64_t)m * p.n_out + col;
        if (res) v += to_f(res[idx]);
        if (p.out_f32)
          static_cast<float*>(p.out)[idx] = v;
        else
          static_cast<A*>(p.out)[idx] = from_f<A>(v);
      };
      if (swiglu) {
        emit(pair, silu(v0) * v1);
      } else {
        emit(r0, v0);
        if (has1) emit(r1, v1);
      }
    }
  }
}

template <typename W, typename A, int MT>
cudaError_t launch_mt(const LinearArgs& a, int num_sms, cudaStream_t st) {
  constexpr int CH = 16 / sizeof(W);
  LinearArgs p = a;
  const int step = 32 * CH;  // a tile is whole warp-wide chunk rows where it can be
  int kt = kSmemFloats / MT / step * step;
  if (kt < CH) return cudaErrorInvalidValue;
  const int kpad = (int)ceil_div(p.K, CH) * CH;
  p.kt = kt < kpad ? kt : kpad;
  p.vec_x = p.K % 8 == 0 && aligned16(p.x);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;  // (QKV: N even)
  const int64_t ngroups = ceil_div(npairs, kWarps);
  const size_t smem = (size_t)MT * p.kt * sizeof(float);
  // the 3 blocks per SM the launch bounds allow (12 warps, each with 2 x U 16-byte loads per lane
  // in flight: ~100 KB per SM, several times the bandwidth-latency product); fewer where the
  // staged activations take the shared memory
  const int per_sm = std::max(1, std::min(3, (int)((200 * 1024) / (smem + 1024))));
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(ngroups, (int64_t)num_sms * per_sm));
  return launch_pdl(gemv_kernel<W, A, MT>, dim3((unsigned)grid), dim3(kThreads), smem, st, p);
}

template <typename W, typename A>
cudaError_t launch_wa(const LinearArgs& p, int num_sms, cudaStream_t st) {
  if (p.M <= 1) return launch_mt<W, A, 1>(p, num_sms, st);
  if (p.M <= 2) return launch_mt<W, A, 2>(p, num_sms, st);
  if (p.M <= 4) return launch_mt<W, A, 4>(p, num_sms, st);
  if (p.M <= 8) return launch_mt<W, A, 8>(p, num_sms, st);
  return launch_mt<W, A, 16>(p, num_sms, st);
}

template <typename A>
cudaError_t launch_a(int wdtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  switch (wdtype) {
    case kF32: return launch_wa<float, A>(p, num_sms, st);
    case kF16: return launch_wa<__half, A>(p, num_sms, st);
    case kBF16: return launch_wa<__nv_bfloat16, A>(p, num_sms, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool linear_gemv_supported(int wdtype, int adtype, int64_t M, int64_t K) {
  const int ch = wdtype == kF32 ? 4 : 8;
  return (adtype == kF16 || adtype == kBF16) && (wdtype == kF32 || wdtype == kF16 || wdtype == kBF16) && M >= 1 &&
         M <= kLinearMaxM && K > 0 && K % ch == 0 && K < (1 << 30);
}

cudaError_t launch_linear_gemv(int wdtype, int adtype, const LinearArgs& p, int num_sms, cudaStream_t stream) {
  if (p.M == 0 || p.n_out == 0) return cudaSuccess;
  if (!linear_gemv_supported(wdtype, adtype, p.M, p.K) || !aligned16(p.w)) return cudaErrorInvalidValue;
  if (p.act == kActSwiglu && p.N != 2 * p.n_out) return cudaErrorInvalidValue;
  if (p.act == kActQkv) {
    const QkvEpilogue& e = p.qkv;
    if (e.d <= 0 || e.d % 2 || p.N != (e.hq + 2 * e.hkv) * e.d || p.n_out != e.hq * e.d || e.pos == nullptr ||
        e.k_cache == nullptr || e.v_cache == nullptr || p.residual != nullptr || p.out_f32)
      return cudaErrorInvalidValue;
    if (e.rope_mode != kRopeNone && (e.rope_dim <= 0 || e.rope_dim > e.d || e.rope_dim % 2 || !e.cos_t || !e.sin_t))
      return cudaErrorInvalidValue;
  } else if (p.act != kActSwiglu && p.N != p.n_out) {
    return cudaErrorInvalidValue;
  }
  if (adtype == kF16) return launch_a<__half>(wdtype, p, num_sms, stream);
  return launch_a<__nv_bfloat16>(wdtype, p, num_sms, stream);
}

}  // namespace gpte
