// Pieces every decode GEMV kernel shares (csrc/linear_impl.cuh: dense weights; csrc/linear_q_impl.cuh:
// GGUF blocks): the weight-row pairing, the staging of the activation rows into shared memory
// with the fused LayerNorm/RMSNorm (XStage: the dense kernels; the packed GEMV stages 16-bit
// integer codes its own way, with the same norm formula and rounding), and the epilogues (bias,
// tanh-GELU, SwiGLU, residual, fp32 out, QKV + RoPE + KV-cache append). A kernel computes, per
// warp, the fp32 dot products of one row pair with the M staged activation rows and hands them to
// finish_pair().
#pragma once
#include <cmath>

#include "common.cuh"
#include "gelu_math.cuh"
#include "launchers.h"

namespace gpte {
namespace linear_detail {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// cp.async (sm_80+): 16 bytes global -> shared without a register round trip; the ring GEMVs
// (dense: linear_impl.cuh; packed: linear_q_impl.cuh) keep their bytes in flight here.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

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


// v29: the bias of a pair's rows (0 without a bias), read by the kernel before the pair's dot
// products rather than by finish_pair after them. The bias is constant and cold (the step's
// weights stream through L2 between two reads of it), so a load in the epilogue put one DRAM
// round trip on every block's tail, after its last dot product and before its exit, which the
// next kernel's griddepcontrol.wait waits for (docs/kernels/decode.md, v29). Loaded early, the
// latency hides under the dot products; the values and the additions are finish_pair's as before.
template <typename A>
__device__ __forceinline__ void bias_pair(const LinearArgs& p, int r0, int r1, float& b0, float& b1) {
  const A* bias = static_cast<const A*>(p.bias);
  b0 = bias ? to_f(bias[r0]) : 0.f;
  b1 = bias && r1 < p.N ? to_f(bias[r1]) : 0.f;
}

// The rest of a pair's output after its dot products: lane m (m < M) holds batch row m's sums
// (v0 for row r0, v1 for r1; v1 unused when the pair has no second row) and writes them. b0 / b1:
// the rows' bias from bias_pair (0 without a bias: s + 0, the bits of the sum alone).
template <typename A>
__device__ __forceinline__ void finish_pair(const LinearArgs& p, int m, int pair, int r0, int r1, bool has1, float s0,
                                            float s1, float b0, float b1) {
  const A* res = static_cast<const A*>(p.residual);
  const float v0 = s0 + b0;
  const float v1 = has1 ? s1 + b1 : 0.f;
  if (p.act == kActQkv) {
    qkv_epilogue<A>(p, m, pair, r0, r1, v0, v1);
    return;
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
  if (p.act == kActSwiglu) {
    emit(pair, silu(v0) * v1);
  } else {
    emit(r0, v0);
    if (has1) emit(r1, v1);
  }
}

// v27: a row's sum s of W with the folded row, normalised (XStage's fold notes): LayerNorm
// rstd (s - dm C_n) + D_n, RMSNorm rstd s, each operation pinned (fmaf) so that every kernel and
// call site gives the same bits.
__device__ __forceinline__ float fold_apply(const LinearArgs& p, float s, float dm, float rstd, float c, float d) {
  if (p.norm == kNormLayer) return fmaf(rstd, fmaf(-dm, c, s), d);
  return rstd * s;
}
// v27b: a pair's row constants (C, D; LayerNorm only, else 0), read before its dot products as
// v29 reads the bias: v27 read them after the warp_sum, cold, and each LayerNorm-folded product
// ended ~0.5 us later (session 40's profile, docs/kernels/decode.md). The ring kernel holds them
// in registers from the pair's first batch; v3, at its register cap, pulls their lines into L1
// with its first weights (fold_prefetch_l1) and reads them at the epilogue.
__device__ __forceinline__ void fold_pair(const LinearArgs& p, int r0, int r1, float& c0, float& c1, float& d0,
                                          float& d1) {
  const bool ln = p.norm == kNormLayer, two = r1 < p.N;
  c0 = ln ? p.fold_c[r0] : 0.f;
  d0 = ln ? p.fold_d[r0] : 0.f;
  c1 = ln && two ? p.fold_c[r1] : 0.f;
  d1 = ln && two ? p.fold_d[r1] : 0.f;
}
__device__ __forceinline__ void fold_prefetch_l1(const LinearArgs& p, int r0, int r1) {
  if (p.norm != kNormLayer) return;
  const int r = r1 < p.N ? r1 : r0;
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p.fold_c + r0));
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p.fold_d + r0));
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p.fold_c + r));
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p.fold_d + r));
}

template <typename T> __device__ __forceinline__ void unpack8(const uint4& r, float* f);
template <> __device__ __forceinline__ void unpack8<__half>(const uint4& r, float* f) {
  const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4& r, float* f) {
  const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
// f[0..7] to dst[0..7] as two 16-byte stores (dst 16-byte aligned: a staged row's 8-element chunk)
__device__ __forceinline__ void store8(float* dst, const float* f) {
  float4* d = reinterpret_cast<float4*>(dst);
  d[0] = make_float4(f[0], f[1], f[2], f[3]);
  d[1] = make_float4(f[4], f[5], f[6], f[7]);
}

// Activation rows -> shared memory as fp32, xs[m * kt + k] for tile t (K positions
// [t * kt, t * kt + kt)), rows m >= M zero-filled up to MT; then the norm applied in place,
// rounded to the activation dtype exactly as the unfused norm's output is. Called by all
// NT threads of the block; every step ends on a barrier. Whole-row statistics come from shared
// memory when the row is one tile, else from one pass over global memory up front
// (row_stats_global, called once before the first tile).
template <typename A, int MT, int NT>
struct XStage {
  static __device__ void load_tile(const LinearArgs& p, float* xs, int t) {
    const A* __restrict__ x = static_cast<const A*>(p.x);
    const int k0 = t * p.kt, len = min(p.kt, p.K - k0);
    if (p.vec_x) {
      const int nv = len / 8;
#pragma unroll 4
      for (int i = threadIdx.x; i < MT * nv; i += NT) {
        const int m = i / nv, c = i - m * nv;
        float f[8] = {};  // rows m >= M stage zeros
        if (m < p.M) unpack8<A>(*reinterpret_cast<const uint4*>(x + (int64_t)m * p.K + k0 + c * 8), f);
        store8(xs + m * p.kt + c * 8, f);
      }
    } else {
#pragma unroll 4
      for (int i = threadIdx.x; i < MT * len; i += NT) {
        const int m = i / len, k = i - m * len;
        xs[m * p.kt + k] = m < p.M ? to_f(x[(int64_t)m * p.K + k0 + k]) : 0.f;
      }
    }
  }
  // Four warps on every row (v2.1, docs/kernels/decode.md v16): thread t < 128 sums k = t,
  // t + 128, ... in that order, warp_sum, then the 4 warp partials in warp order, whatever NT is,
  // so a row's statistics depend neither on M nor on which GEMV kernel (128 or 256 threads)
  // stages it. v1 gave each row to one warp: ~K / 32 dependent loads and adds per pass on the
  // critical path of every norm-fused GEMV (1,600 wide: 50 per pass, two passes for LayerNorm).
  // v23 (docs/kernels/decode.md): every thread adds the partials itself into its own registers
  // (mean, rstd: rows m < M; v2.1: thread m into shared memory, then a barrier), and each pass has
  // its own partials buffer: LayerNorm 1 or 2 barriers (v2.1: 3, and stage's barrier after it),
  // RMSNorm 1 (v2.1: 1 and stage's). ext.linear_stats_force:
  // 1 (the default) LayerNorm of 16-bit activations in one pass shifted by the row's first value:
  // with c = x[0], mean = c + S1 / K and var = S2 / K - (S1 / K)^2, S1 = sum (x - c),
  // S2 = sum (x - c)^2. The cancellation in var multiplies the sums' rounding by
  // (var + (mean - c)^2) / var <= K + 1, since (x[0] - mean)^2 <= K var for any row: ~2 for
  // typical rows, at worst (x[0] a lone outlier) a relative error of a few 1e-4 at K = 1,600, under
  // the 2^-11 (4.9e-4) rounding of the normalized 16-bit output; a row of large mean and small
  // spread, which the unshifted one-pass form loses, costs nothing. fp32 activations never reach
  // these kernels (the launcher instantiates fp16 / bf16 only; ops.linear computes fp32 rows with
  // its reference); the sizeof(A) guard would keep them on two passes. 0: two passes as v2.1
  // (v2.1's bits, its barriers removed).
  static __device__ void row_stats(const LinearArgs& p, const float* xs, bool from_smem, float (&mean)[MT],
                                   float (&rstd)[MT]) {
    constexpr int NW = 4, NV = 32 * NW;  // the threads that sum (NT >= 128)
    static_assert(NT >= NV, "row_stats needs 128 threads");
    __shared__ float red[MT][NW], red2[MT][NW];
    const A* __restrict__ x = static_cast<const A*>(p.x);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    auto val = [&](int m, int k) { return from_smem ? xs[m * p.kt + k] : to_f(x[(int64_t)m * p.K + k]); };
    auto total = [&](float (&r)[MT][NW], int m) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < NW; ++w) t += r[m][w];
      return t;
    };
#pragma unroll
    for (int m = 0; m < MT; ++m) mean[m] = 0.f, rstd[m] = 0.f;
    if (sizeof(A) == 2 && p.norm == kNormLayer && p.stats_one_pass) {
      float c[MT] = {};  // (read for rows m < M only)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= p.M) break;
        c[m] = val(m, 0);
        float s = 0.f, q = 0.f;
        for (int k = threadIdx.x; k < p.K && threadIdx.x < NV; k += NV) {
          const float d = val(m, k) - c[m];
          s += d;
          q = fmaf(d, d, q);
        }
        s = warp_sum(s);
        q = warp_sum(q);
        if (lane == 0 && warp < NW) {
          red[m][warp] = s;
          red2[m][warp] = q;
        }
      }
      __syncthreads();
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < p.M) {
          const float d = total(red, m) / p.K;
          mean[m] = c[m] + d;
          rstd[m] = rsqrtf(fmaxf(total(red2, m) / p.K - d * d, 0.f) + p.eps);
        }
      return;
    }
    if (p.norm == kNormLayer) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= p.M) break;
        float s = 0.f;
        for (int k = threadIdx.x; k < p.K && threadIdx.x < NV; k += NV) s += val(m, k);
        s = warp_sum(s);
        if (lane == 0 && warp < NW) red[m][warp] = s;
      }
      __syncthreads();
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < p.M) mean[m] = total(red, m) / p.K;
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      float v = 0.f;
      for (int k = threadIdx.x; k < p.K && threadIdx.x < NV; k += NV) {
        const float d = val(m, k) - mean[m];
        v = fmaf(d, d, v);
      }
      v = warp_sum(v);
      if (lane == 0 && warp < NW) red2[m][warp] = v;
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m < p.M) rstd[m] = rsqrtf(total(red2, m) / p.K + p.eps);
  }
  // (v23: row by row, so that a row's mean / rstd are registers; an element's arithmetic as before)
  static __device__ void normalize_tile(const LinearArgs& p, float* xs, int t, const float (&mean)[MT],
                                        const float (&rstd)[MT]) {
    const A* nw = static_cast<const A*>(p.norm_w);
    const A* nb = static_cast<const A*>(p.norm_b);
    const int k0 = t * p.kt, len = min(p.kt, p.K - k0);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
#pragma unroll 4
      for (int k = threadIdx.x; k < len; k += NT) {
        float* v = xs + m * p.kt + k;
        if (p.norm == kNormLayer)
          *v = to_f(from_f<A>((*v - mean[m]) * rstd[m] * to_f(nw[k0 + k]) + to_f(nb[k0 + k])));
        else
          *v = to_f(from_f<A>(*v * rstd[m] * to_f(nw[k0 + k])));
      }
    }
  }
  // ---- v27: the norm folded into the epilogue (p.fold; docs/kernels/decode.md, v27) ----
  // With W the weight, g / b the norm weight / bias and c = x[0] (LayerNorm; 0 for RMSNorm):
  //   LayerNorm: sum_k W[n,k] ((x_k - mean) rstd g_k + b_k) = rstd (s - (mean - c) C_n) + D_n,
  //     s = sum_k W[n,k] (x_k - c) g_k, C_n = sum_k W[n,k] g_k, D_n = sum_k W[n,k] b_k;
  //   RMSNorm: sum_k W[n,k] x_k rstd g_k = rstd s, s = sum_k W[n,k] x_k g_k.
  // So the staged row is (x - c) g (or x g), the dot products start right after the staging
  // barrier, and the statistics are needed only by the epilogue: no statistics pass and no
  // normalize loop with its barrier between the wait and the first dot product. The staged
  // values are not rounded to the activation dtype (the unfused norm's output is): the result
  // differs from the unfused path by that rounding, not more (tests/ops/test_linear.py).
  // Statistics of 8-element chunks, in a fixed order whatever M, the tiling or the kernel: each
  // chunk's (sum, sum of squares) of x - c element by element, then lane l adds chunks l, l + 32,
  // ... in order and warp_sum; the single-tile kernels keep the chunk sums from the staging in
  // shared memory (part), the multi-tile v3 path recomputes them from global memory (the same
  // arithmetic, so the same bits).
  static __device__ __forceinline__ void load8(const A* src, bool vec, float* f) {
    if (vec) {
      unpack8<A>(*reinterpret_cast<const uint4*>(src), f);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = to_f(src[j]);
    }
  }
  static __device__ __forceinline__ void chunk_stats(const float* f, float c, float& s, float& q) {
    s = 0.f;
    q = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float d = f[j] - c;
      s += d;
      q = fmaf(d, d, q);
    }
  }
  // Tile t of every row staged as (x - c) g or x g (rows m >= M zero); part != null (single tile):
  // each chunk's statistics to part[(m * nv + chunk) * 2 + {0, 1}], nv = K / 8. Ends on a barrier.
  static __device__ void fold_tile(const LinearArgs& p, float* xs, float* part, int t) {
    const A* __restrict__ x = static_cast<const A*>(p.x);
    const A* __restrict__ g = static_cast<const A*>(p.norm_w);
    const bool ln = p.norm == kNormLayer;
    const int k0 = t * p.kt, nv = min(p.kt, p.K - k0) / 8;  // K % 8 == 0 (the launcher's condition)
#pragma unroll 2
    for (int i = threadIdx.x; i < MT * nv; i += NT) {
      const int m = i / nv, c = i - m * nv;
      float f[8] = {};  // rows m >= M stage zeros
      if (m < p.M) {
        const A* xr = x + (int64_t)m * p.K;
        float gv[8];
        load8(xr + k0 + c * 8, p.vec_x, f);
        load8(g + k0 + c * 8, p.vec_nw, gv);
        const float c0 = ln ? to_f(xr[0]) : 0.f;
        if (part != nullptr) {
          float cs, cq;
          chunk_stats(f, c0, cs, cq);
          reinterpret_cast<float2*>(part)[m * nv + c] = make_float2(cs, cq);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] = (f[j] - c0) * gv[j];
      }
      store8(xs + m * p.kt + c * 8, f);
    }
    __syncthreads();
  }
  // Row m's statistics for the epilogue, by one whole warp (every lane gets them): dm = mean - c
  // and rstd (LayerNorm), or dm = 0 and rstd (RMSNorm). part: the staging's chunk sums, or null
  // (from global memory).
  static __device__ void fold_stats(const LinearArgs& p, const float* part, int m, float& dm, float& rstd) {
    const A* __restrict__ xr = static_cast<const A*>(p.x) + (int64_t)m * p.K;
    const bool ln = p.norm == kNormLayer;
    const int lane = threadIdx.x & 31, nv = p.K / 8;
    const float c0 = ln ? to_f(xr[0]) : 0.f;
    float s = 0.f, q = 0.f;
    for (int c = lane; c < nv; c += 32) {
      float cs, cq;
      if (part != nullptr) {
        const float2 v = reinterpret_cast<const float2*>(part)[m * nv + c];
        cs = v.x;
        cq = v.y;
      } else {
        float f[8];
        load8(xr + c * 8, p.vec_x, f);
        chunk_stats(f, c0, cs, cq);
      }
      s += cs;
      q += cq;
    }
    stats_of_sums(p, warp_sum(s), warp_sum(q), dm, rstd);
  }
  // v31 / v32: every row's (dm, rstd) into shared memory, the block's warps a row each in turn (the
  // same function as each warp's own, so the same bits); ends on a barrier
  static __device__ void fold_stats_shared(const LinearArgs& p, const float* part, float* s_dm, float* s_rstd) {
    const int lane = threadIdx.x & 31;
    for (int m = threadIdx.x >> 5; m < p.M; m += NT / 32) {
      float d, r;
      fold_stats(p, part, m, d, r);
      if (lane == 0) {
        s_dm[m] = d;
        s_rstd[m] = r;
      }
    }
    __syncthreads();
  }
  // (dm, rstd) of a row from its sums s of x - c and q of (x - c)^2 over the K values (c: the
  // shift, 0 for RMSNorm); also the packed GEMV's fold (csrc/linear_q_impl.cuh v3.4b)
  static __device__ __forceinline__ void stats_of_sums(const LinearArgs& p, float s, float q, float& dm, float& rstd) {
    if (p.norm == kNormLayer) {
      dm = s / p.K;
      rstd = rsqrtf(fmaxf(q / p.K - dm * dm, 0.f) + p.eps);
    } else {
      dm = 0.f;
      rstd = rsqrtf(q / p.K + p.eps);
    }
  }
  // Tile t staged and normalised (ntiles: how many tiles the row has; s_mean / s_rstd: the
  // statistics row_stats_global wrote when ntiles > 1; part: v27's chunk statistics, single
  // tile). Ends on a barrier.
  // (v27b: Fold, the kernel's template parameter, picks the fold's staging at compile time, so the
  // kernels without it keep their code)
  template <bool Fold = false>
  static __device__ void stage(const LinearArgs& p, float* xs, int t, int ntiles, const float* s_mean,
                               const float* s_rstd, float* part = nullptr) {
    if constexpr (Fold) {
      fold_tile(p, xs, part, t);
      return;
    }
    load_tile(p, xs, t);
    __syncthreads();
    if (p.norm != kNormNone) {
      float mean[MT], rstd[MT];
      // (v23: no barrier between the statistics and the loop: row_stats' last barrier follows
      // its last read of xs, and each thread holds the statistics itself)
      if (ntiles == 1) {
        row_stats(p, xs, true, mean, rstd);
      } else {
#pragma unroll
        for (int m = 0; m < MT; ++m) mean[m] = s_mean[m], rstd[m] = s_rstd[m];
      }
      normalize_tile(p, xs, t, mean, rstd);
      __syncthreads();
    }
  }
  static __device__ void row_stats_global(const LinearArgs& p, float* s_mean, float* s_rstd) {
    float mean[MT], rstd[MT];
    row_stats(p, nullptr, false, mean, rstd);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m) s_mean[m] = mean[m], s_rstd[m] = rstd[m];
    }
    __syncthreads();
  }
};

// v32: a pair's 2 x MT sums across the warp with each lane keeping a different one (a
// reduce-scatter), instead of 2 x MT warp_sums after which one lane per row writes, in turn. Why:
// at MT = 16 the per-row epilogue is 32 warp_sums (160 shuffles) and 16 inlined copies of
// finish_pair, each behind its own branch; the ring kernel's MT = 16 SASS is ~117k instructions,
// most of them that epilogue and the statistics, and a pair's epilogue runs through tens of KB of
// code (session 48: the batch-16 GEMV issues ~0.1 instructions a clock per scheduler; an
// instruction-fetch-bound epilogue is one explanation, not yet measured). Here: stage s (shuffle
// offset 16 >> s) halves the values a lane holds by their index's top remaining bit, chosen by
// lane bit 4 - s; the first log2(2 MT) stages halve, the rest add as warp_sum does. Value j = r MT
// + m (row r of the pair, batch row m) ends in lanes (j << (5 - H)) .. + 2^(5 - H) - 1, H =
// log2(2 MT). Each stage adds the same two partial sums warp_sum's same stage adds (lane l's and
// lane l ^ offset's, for the same value), and a + b == b + a, so every sum has warp_sum's bits.
// 31 shuffles at MT = 16 (warp_sum's way: 160).
template <int MT> __host__ __device__ constexpr int scatter_halvings() {
  return MT == 16 ? 5 : MT == 8 ? 4 : MT == 4 ? 3 : MT == 2 ? 2 : 1;
}
// One halving stage keeping n values (offset 16 n / MT), then the next: template recursion, so that
// every index into v is a compile-time constant (a loop over stages left v in local memory).
template <int MT, int N>
__device__ __forceinline__ void scatter_halve(float (&v)[2 * MT], int lane) {
  constexpr int o = 16 * N / MT;
  const bool up = lane & o;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float keep = up ? v[N + i] : v[i];
    const float give = up ? v[i] : v[N + i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, give, o);
  }
  if constexpr (N > 1) scatter_halve<MT, N / 2>(v, lane);
}
template <int MT>
__device__ __forceinline__ float pair_sums_scatter(const float (&a0)[MT], const float (&a1)[MT], int lane) {
  constexpr int H = scatter_halvings<MT>();
  float v[2 * MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    v[m] = a0[m];
    v[MT + m] = a1[m];
  }
  scatter_halve<MT, MT>(v, lane);
  float r = v[0];
#pragma unroll
  for (int o = 16 >> H; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}
// What a lane holds after pair_sums_scatter: sum j (row j / MT of the pair, batch row j % MT) and
// whether it is the first of the 2^SH lanes holding it. Row 0's sums are in lanes 0-15, so a
// finishing lane (lane < 16, head, j < M) finds its row-1 sum at lane + 16 (other()); the whole
// warp calls other().
template <int MT>
struct ScatterPair {
  static constexpr int SH = 5 - scatter_halvings<MT>();  // lanes per kept sum: 2^SH
  float mine;
  int j;
  bool head;
  __device__ __forceinline__ ScatterPair(const float (&a0)[MT], const float (&a1)[MT], int lane)
      : mine(pair_sums_scatter<MT>(a0, a1, lane)), j(lane >> SH), head((lane & ((1 << SH) - 1)) == 0) {}
  __device__ __forceinline__ float other() const { return __shfl_xor_sync(0xffffffffu, mine, 16); }
};

// v27: one warp's row statistics for the fold's epilogue (XStage::fold_stats), taken at the
// warp's first finished pair, off the path to its first dot products: every row's at once and
// kept where MT <= KEEP, each use's own past that (registers). The same values either way.
template <typename A, int MT, int NT, int KEEP>
struct FoldStats {
  static constexpr int FS = MT <= KEEP ? MT : 1;
  float dm[FS], rstd[FS];
  bool have = false;
  // row m's (dm, rstd), m < p.M; the whole warp calls it (warp_sum inside)
  __device__ __forceinline__ void get(const LinearArgs& p, const float* part, int m, float& d, float& r) {
    if constexpr (MT <= KEEP) {
      if (!have) {
#pragma unroll
        for (int j = 0; j < MT; ++j)
          if (j < p.M) XStage<A, MT, NT>::fold_stats(p, part, j, dm[j], rstd[j]);
        have = true;
      }
      d = dm[m];
      r = rstd[m];
    } else {
      XStage<A, MT, NT>::fold_stats(p, part, m, d, r);
    }
  }
};

}  // namespace linear_detail
}  // namespace gpte
