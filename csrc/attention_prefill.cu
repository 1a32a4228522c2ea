// Causal attention over a prompt, flash-attention style (online softmax, no T x T matrix).
// Two kernels:
// - flash_prefill_tma_kernel (head dim 64, fp16/bf16; the default on the H100/H200 target):
//   warpgroup MMA (wgmma) for both products, K/V/Q tiles brought in by the TMA engine,
//   a producer warpgroup and two consumer warpgroups synchronised by mbarriers, a persistent
//   grid drawing work items from a counter. Described above the kernel.
// - flash_prefill_kernel (head dim 128, and variant 1 for comparison): mma.sync, cp.async.
//   One block = BM query rows of one (batch, query head); WARPS warps each own 16 * MT rows.
//   Key/value tiles of BN = 64 rows stream through shared memory with cp.async, double
//   buffered, so the next tile loads while the tensor cores work on this one. S = Q K^T and
//   O += P V use mma.sync m16n8k16 (fp16 or bf16 inputs, fp32 accumulators); the S
//   accumulator fragments are rounded in registers straight into the A operand of the P V
//   product (the m16n8 C layout of two adjacent n-tiles is the m16k16 A layout).
// Both: shared-memory rows are D * 2 bytes; 16-byte chunk c of row r is stored at
// c ^ (r % 8) (conflict-free ldmatrix; for D = 64 this is also the hardware 128-byte swizzle
// that TMA writes and wgmma descriptors read). Softmax runs in the exp2 domain (scale * log2 e
// folded into one FFMA per score). The last query blocks (which see the most keys) go first
// to even out the causal triangle. GQA: query head h reads kv head h / (Hq / Hkv).
// Optional, for gpt-oss (docs/gpt_oss.md): a sliding window W > 0 masks the keys at positions
// <= t - W of query t (tiles wholly before every row's window are skipped by the mma.sync
// kernel, masked by the TMA kernel), and per-head sink logits [Hq] (fp32, unscaled) add
// exp(sink - row max) to each row's softmax denominator at the end (a column that takes
// probability mass and brings no value). Without either nothing else changes.
#include <cmath>

#include "common.cuh"
#include "launchers.h"
#include "tma.cuh"
#include "wgmma.cuh"

namespace gpte {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 zero-fills the 16 bytes (rows past the end of the sequence)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  int T, Hq, Hkv;
  int64_t q_sb, q_st, k_sb, k_st, v_sb, v_st, o_sb, o_st;
  float scale_log2;
  const float* sinks;  // [Hq] or null
  int window;          // 0: none
};

template <int D>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {  // byte offset of a 16-byte chunk
  constexpr int CPR = D / 8;
  return (uint32_t)((row * CPR + (chunk ^ (row & 7))) * 16);
}

// Copies rows [row0, row0 + NROWS) of a [T, *] matrix (row stride `st`) into swizzled smem;
// threads tid = 0 .. NT - 1 share the work.
template <typename T, int D, int NROWS, int NT>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int row0, int nrows_total, int64_t st,
                                          int tid) {
  constexpr int CPR = D / 8;
#pragma unroll
  for (int idx = tid; idx < NROWS * CPR; idx += NT) {
    const int r = idx / CPR, c = idx % CPR;
    const int t = row0 + r;
    const bool valid = t < nrows_total;
    const T* g = valid ? src + (int64_t)t * st + c * 8 : src;
    cp_async16(dst + swz<D>(r, c), g, valid);
  }
}
template <typename T, int D, int NROWS, int NT>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int row0, int nrows_total, int64_t st) {
  load_tile<T, D, NROWS, NT>(dst, src, row0, nrows_total, st, threadIdx.x);
}

// Softmax pieces shared by both kernels. A thread's S fragment of one 16-row m-tile (mma.sync)
// or of its warp's 16 rows of a 64-row wgmma tile is the same: NS column groups of 8 keys,
// element 4 i + {0, 1} = row lane / 4, keys 8 i + 2 (lane % 4) + {0, 1}; 4 i + {2, 3} = row
// lane / 4 + 8.

// Masks keys past each query row (causal) in an S tile of NS column groups whose first key
// is kb0; wrow0 is this warp's first query row.
template <int NS>
__device__ __forceinline__ void causal_mask(float (&s)[NS * 4], int kb0, int wrow0, int lane) {
#pragma unroll
  for (int i = 0; i < NS * 4; ++i) {
    const int qrow = wrow0 + (lane >> 2) + ((i & 2) ? 8 : 0);
    const int key = kb0 + (i >> 2) * 8 + 2 * (lane & 3) + (i & 1);
    if (key > qrow) s[i] = -INFINITY;
  }
}

// Masks keys at positions <= qrow - window (the sliding window) in the same S tile layout.
template <int NS>
__device__ __forceinline__ void window_mask(float (&s)[NS * 4], int kb0, int wrow0, int lane, int window) {
#pragma unroll
  for (int i = 0; i < NS * 4; ++i) {
    const int qrow = wrow0 + (lane >> 2) + ((i & 2) ? 8 : 0);
    const int key = kb0 + (i >> 2) * 8 + 2 * (lane & 3) + (i & 1);
    if (key <= qrow - window) s[i] = -INFINITY;
  }
}

// True when some key of the tile [kb0, kb0 + n) is outside the window of one of the 16 rows
// from row0 (the smallest key against the largest row).
__device__ __forceinline__ bool window_cuts(int window, int kb0, int row0) {
  return window > 0 && kb0 <= row0 + 15 - window;
}

// The sink column's share of a row's softmax denominator: exp(sink - max) in the exp2
// domain (mrow is the row's raw-score max, scores are scaled by sl2 = scale log2 e).
__device__ __forceinline__ float sink_mass(const float* sinks, int h, float mrow, float sl2) {
  return sinks == nullptr ? 0.f : exp2f(sinks[h] * kLog2e - mrow * sl2);
}

// Online softmax of one S tile (exp2 domain, rows lane/4 and lane/4 + 8 of this warp):
// updates the running max and sum and returns in corr[r] the factor the old O rows must be
// scaled by. P is written rounded to T, packed as the A operand of P V (pp[n8 group][row]).
template <typename T, int NS>
__device__ __forceinline__ void softmax_tile(const float (&s)[NS * 4], uint32_t (&pp)[NS][2], float (&mrow)[2],
                                             float (&lrow)[2], float (&corr)[2], float sl2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) mx = fmaxf(mx, fmaxf(s[nt * 4 + 2 * r], s[nt * 4 + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mnew = fmaxf(mrow[r], mx);
    const float msc = mnew == -INFINITY ? 0.f : mnew * sl2;  // a fully masked row so far: no NaN
    corr[r] = fast_exp2(mrow[r] * sl2 - msc);
    float rs = 0.f;
    if constexpr (std::is_same<T, __half>::value) {  // two probabilities per MUFU op
      __half2 hs = __float2half2_rn(0.f);
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        __half2 e = __floats2half2_rn(fmaf(s[nt * 4 + 2 * r], sl2, -msc), fmaf(s[nt * 4 + 2 * r + 1], sl2, -msc));
        e = h2exp2(e);
        hs = __hadd2(hs, e);
        pp[nt][r] = *reinterpret_cast<uint32_t*>(&e);
      }
      rs = __low2float(hs) + __high2float(hs);
    } else {
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        const float e0 = fast_exp2(fmaf(s[nt * 4 + 2 * r], sl2, -msc));
        const float e1 = fast_exp2(fmaf(s[nt * 4 + 2 * r + 1], sl2, -msc));
        rs += e0 + e1;
        pp[nt][r] = pack2<T>(e0, e1);
      }
    }
    lrow[r] = lrow[r] * corr[r] + rs;
    mrow[r] = mnew;
  }
}

template <typename T, int D, int MT, int WARPS, int kBN>
__global__ void __launch_bounds__(WARPS * 32) flash_prefill_kernel(const Params p) {
  constexpr int BM = 16 * MT * WARPS;
  constexpr int NT = WARPS * 32;
  constexpr int KS = D / 16;  // k-steps over the head dim
  constexpr int NB = kBN / 8; // n-tiles of S per key tile
  constexpr int DT = D / 8;   // n-tiles of O
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + BM * D * 2;
  const uint32_t sV = sK + 2 * kBN * D * 2;

  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.Hq / p.Hkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m0 = mb * BM;
  const int T_ = p.T;
  const T* qg = reinterpret_cast<const T*>(p.q) + b * p.q_sb + (int64_t)h * D;
  const T* kg = reinterpret_cast<const T*>(p.k) + b * p.k_sb + (int64_t)hk * D;
  const T* vg = reinterpret_cast<const T*>(p.v) + b * p.v_sb + (int64_t)hk * D;

  load_tile<T, D, BM, NT>(sQ, qg + (int64_t)m0 * p.q_st, 0, T_ - m0, p.q_st);
  load_tile<T, D, kBN, NT>(sK, kg, 0, T_, p.k_st);
  load_tile<T, D, kBN, NT>(sV, vg, 0, T_, p.v_st);
  cp_async_commit();
  const int kv_end = min(T_, m0 + BM);
  const int n_tiles = (kv_end + kBN - 1) / kBN;

  cp_async_wait_all();
  __syncthreads();
  uint32_t qf[MT][KS][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int row = warp * 16 * MT + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      ldmatrix_x4(qf[mt][ks], sQ + swz<D>(row, ks * 2 + (lane >> 4)));
    }

  float o[MT][DT][4];
  float mrow[MT][2], lrow[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[mt][dt][i] = 0.f;
    mrow[mt][0] = mrow[mt][1] = -INFINITY;
    lrow[mt][0] = lrow[mt][1] = 0.f;
  }
  const float sl2 = p.scale_log2;
  const int wrow0 = m0 + warp * 16 * MT;  // this warp's first query row

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // tile j is in smem; every warp is done with the buffers of tile j - 1
    if (j + 1 < n_tiles) {
      const int nb = (j + 1) & 1;
      load_tile<T, D, kBN, NT>(sK + nb * kBN * D * 2, kg + (int64_t)(j + 1) * kBN * p.k_st, 0, T_ - (j + 1) * kBN,
                               p.k_st);
      load_tile<T, D, kBN, NT>(sV + nb * kBN * D * 2, vg + (int64_t)(j + 1) * kBN * p.v_st, 0, T_ - (j + 1) * kBN,
                               p.v_st);
    }
    cp_async_commit();
    const uint32_t bK = sK + (j & 1) * kBN * D * 2;
    const uint32_t bV = sV + (j & 1) * kBN * D * 2;
    const int kb0 = j * kBN;
    if (kb0 > wrow0 + 16 * MT - 1) continue;  // every key of this tile is in this warp's future
    if (p.window > 0 && kb0 + kBN - 1 <= wrow0 - p.window) continue;  // before every row's window

    float s[MT][NB][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NB; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][nt][i] = 0.f;
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int ks2 = 0; ks2 < KS / 2; ++ks2) {
        uint32_t kb[4];
        ldmatrix_x4(kb, bK + swz<D>(nt * 8 + (lane & 7), ks2 * 4 + (lane >> 3)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(s[mt][nt], qf[mt][2 * ks2], kb[0], kb[1]);
          mma16816<T>(s[mt][nt], qf[mt][2 * ks2 + 1], kb[2], kb[3]);
        }
      }
    }
    // the S accumulators of one m-tile, float[NB][4], are the flat float[NB * 4] fragment the
    // shared helpers take (same element order: n-tile, then the mma C layout)
    uint32_t pp[MT][NB][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float(&sf)[NB * 4] = *reinterpret_cast<float(*)[NB * 4]>(&s[mt][0][0]);
      if (kb0 + kBN - 1 > wrow0 + mt * 16) causal_mask<NB>(sf, kb0, wrow0 + mt * 16, lane);
      if (window_cuts(p.window, kb0, wrow0 + mt * 16)) window_mask<NB>(sf, kb0, wrow0 + mt * 16, lane, p.window);
      float corr[2];
      softmax_tile<T, NB>(sf, pp[mt], mrow[mt], lrow[mt], corr, sl2);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[mt][dt][0] *= corr[0];
        o[mt][dt][1] *= corr[0];
        o[mt][dt][2] *= corr[1];
        o[mt][dt][3] *= corr[1];
      }
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pp[mt][2 * kk][0];
        pa[mt][1] = pp[mt][2 * kk][1];
        pa[mt][2] = pp[mt][2 * kk + 1][0];
        pa[mt][3] = pp[mt][2 * kk + 1][1];
      }
#pragma unroll
      for (int dt2 = 0; dt2 < DT / 2; ++dt2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, bV + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dt2 * 2 + (lane >> 4)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][2 * dt2], pa[mt], vb[0], vb[1]);
          mma16816<T>(o[mt][2 * dt2 + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  T* og = reinterpret_cast<T*>(p.o) + b * p.o_sb + (int64_t)h * D;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = lrow[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if (p.sinks != nullptr) l += sink_mass(p.sinks, h, mrow[mt][r], sl2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = wrow0 + mt * 16 + (lane >> 2) + 8 * r;
      if (row < T_) {
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          const int col = dt * 8 + 2 * (lane & 3);
          *reinterpret_cast<uint32_t*>(og + (int64_t)row * p.o_st + col) =
              pack2<T>(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
        }
      }
    }
  }
}


// ---------------------------------------------------------------------------------------
// Hopper path, head dim 64 (sm_90a). A warpgroup owns 64 query rows; Q (and later P) is the
// A operand of wgmma from registers, in the same per-warp fragments as the mma.sync path; K
// and V are read by the tensor cores straight from 128-byte-swizzled shared-memory tiles
// through matrix descriptors (csrc/wgmma.cuh): K as a K-major B operand for S = Q K^T, V as
// an MN-major B operand for O += P V.
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ void rescale_o(float (&o)[32], const float (&corr)[2]) {
#pragma unroll
  for (int dt = 0; dt < 8; ++dt) {
    o[dt * 4 + 0] *= corr[0];
    o[dt * 4 + 1] *= corr[0];
    o[dt * 4 + 2] *= corr[1];
    o[dt * 4 + 3] *= corr[1];
  }
}

// Issues S[64 x BN] = Q[64 x 64] K[BN x 64]^T (four k16 steps; the caller fences and commits).
template <typename T, int BN>
__device__ __forceinline__ void issue_qk(float (&s)[BN / 2], const uint32_t (&qf)[4][4], uint32_t bK) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const uint64_t desc = smem_desc_sw128(bK + ks * 32, 16, 1024);
    if constexpr (BN == 64) wgmma_m64n64k16_kmajor<T>(s, qf[ks], desc, ks);
    else wgmma_m64n128k16_kmajor<T>(s, qf[ks], desc, ks);
  }
}

// Issues O[64 x 64] += P[64 x BN] V[BN x 64] (BN / 16 k16 steps; P fragments from registers).
template <typename T, int BN>
__device__ __forceinline__ void issue_pv(float (&o)[32], const uint32_t (&pp)[BN / 8][2], uint32_t bV) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint32_t pa[4] = {pp[2 * kk][0], pp[2 * kk][1], pp[2 * kk + 1][0], pp[2 * kk + 1][1]};
    wgmma_m64n64k16_mnmajor<T>(o, pa, smem_desc_sw128(bV + kk * 16 * 128, 16, 1024), 1);
  }
}

// ---------------------------------------------------------------------------------------
// flash_prefill_tma_kernel: one producer warpgroup, WG consumer warpgroups (64 query rows
// each, BM = 64 WG rows per work item), key/value tiles of BN rows in STAGES shared-memory
// stages. The FlashAttention-3 schedule inside each consumer: S(j+1) = Q K(j+1)^T and
// O += P(j) V(j) are issued back to back; the softmax of S(j+1) runs while P(j) V(j) is still
// on the tensor cores, and O is rescaled once that product retires. Producer: one thread
// draws a work item, loads its Q tile (TMA) into one of two Q slots, then the item's K/V
// tiles (TMA) into stage g % STAGES (g counts the block's tiles across items) once every
// consumer warp has released the tile that stage held before. Consumers, per item: wait for
// the item (id + Q), copy Q to registers and release the slot; then for every key tile j of
// the item, in order, wait for tile j + 1 (full barrier), run their part (skipped for tiles
// in their future), release tile j (empty barrier). Waiting on every tile, even skipped
// ones, keeps each warp's release inside the barrier phase it belongs to.
// ---------------------------------------------------------------------------------------
// Work item `item` of the persistent grid: query block, head, batch. Items run in the order a
// plain grid would launch them: the query blocks of one (batch, head), longest (last) first,
// so the blocks running at once share that head's keys and values in L2.
struct PrefillItem {
  int m0, h, b, n_tiles;
};
template <int BM, int BN>
__device__ __forceinline__ PrefillItem prefill_item(const Params& p, int item, int n_mb) {
  PrefillItem it;
  const int hb = item / n_mb;
  it.m0 = (n_mb - 1 - item % n_mb) * BM;
  it.h = hb % p.Hq;
  it.b = hb / p.Hq;
  it.n_tiles = (min(p.T, it.m0 + BM) + BN - 1) / BN;
  return it;
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, int v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ int ld_shared_u32(uint32_t addr) {
  int v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// Shared-memory map of flash_prefill_tma_kernel (after 1024-byte alignment).
template <int WG, int BN, int STAGES>
struct TmaSmem {
  static constexpr int BM = 64 * WG, TILE = BN * 64 * 2, QTILE = BM * 64 * 2;
  static constexpr int K = 0, V = STAGES * TILE, Q = 2 * STAGES * TILE;  // K, V stages; two Q slots
  static constexpr int FULL = Q + 2 * QTILE, EMPTY = FULL + 8 * STAGES;  // mbarriers, 8 bytes each
  static constexpr int ITEM_FULL = EMPTY + 8 * STAGES, ITEM_EMPTY = ITEM_FULL + 16, ITEM_ID = ITEM_EMPTY + 16;
  static constexpr int BYTES = ITEM_ID + 8 + 1024;  // + alignment slack
};

// One consumer warpgroup of flash_prefill_tma_kernel: for each work item the producer hands
// out, its 64 query rows against every key tile up to the diagonal.
template <typename T, int WG, int BN, int STAGES>
__device__ __forceinline__ void tma_consumer(const Params& p, uint32_t base, int warp, int lane, int n_mb,
                                             int n_items) {
  using L = TmaSmem<WG, BN, STAGES>;
  constexpr int D = 64, NS = BN / 8, TILE = L::TILE, BM = L::BM;
  const int T_ = p.T;
  const int wg = warp >> 2, wq = warp & 3;
  const uint32_t sK = base + L::K, sV = base + L::V, full = base + L::FULL, empty = base + L::EMPTY;
  const float sl2 = p.scale_log2;
  int g0 = 0;  // the block's running key-tile count: stage g % STAGES, phase (g / STAGES) & 1
  for (int k = 0;; ++k) {
    const int slot = k & 1;
    mbar_wait(base + L::ITEM_FULL + 8 * slot, (k >> 1) & 1);  // item id written, its Q tile landed
    const int item = ld_shared_u32(base + L::ITEM_ID + 4 * slot);
    if (item >= n_items) break;
    const PrefillItem it = prefill_item<BM, BN>(p, item, n_mb);
    const int n_tiles = it.n_tiles;
    const int grow0 = it.m0 + wg * 64, wrow0 = grow0 + wq * 16;
    const int n_wg = grow0 < T_ ? (min(T_, grow0 + 64) + BN - 1) / BN : 0;
    uint32_t qf[4][4];
    const uint32_t sQw = base + L::Q + slot * L::QTILE + wg * 64 * D * 2;  // this group's 64 query rows
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const int row = wq * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      ldmatrix_x4(qf[ks], sQw + swz<D>(row, ks * 2 + (lane >> 4)));
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(base + L::ITEM_EMPTY + 8 * slot);  // Q is in registers; the slot is free
    float o[32], s[BN / 2];
#pragma unroll
    for (int i = 0; i < 32; ++i) o[i] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f}, corr[2];
    uint32_t pp[NS][2];

    mbar_wait(full + 8 * (g0 % STAGES), (g0 / STAGES) & 1);
    wgmma_fence();
    issue_qk<T, BN>(s, qf, sK + (g0 % STAGES) * TILE);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(s);
    causal_mask<NS>(s, 0, wrow0, lane);
    if (window_cuts(p.window, 0, wrow0)) window_mask<NS>(s, 0, wrow0, lane, p.window);
    softmax_tile<T, NS>(s, pp, mrow, lrow, corr, sl2);  // O is still zero: corr unused
    for (int j = 0; j < n_tiles; ++j) {
      const int g = g0 + j, gn = g + 1;
      const bool has_next_tile = j + 1 < n_tiles;
      if (has_next_tile) mbar_wait(full + 8 * (gn % STAGES), (gn / STAGES) & 1);
      if (j < n_wg) {
        // on the group's last tile S(j+1) is computed and discarded; past the item's last
        // tile it reads the current K tile (still held), not a stage the producer refills
        const uint32_t kn = sK + ((has_next_tile ? gn : g) % STAGES) * TILE;
        reg_fence(o);
        reg_fence(pp);
        wgmma_fence();
        issue_qk<T, BN>(s, qf, kn);
        wgmma_commit();
        issue_pv<T, BN>(o, pp, sV + (g % STAGES) * TILE);
        wgmma_commit();
        wgmma_wait<1>();  // S(j+1) has retired; P(j) V(j) may still be running
        reg_fence(s);
        uint32_t pn[NS][2];
        const bool next = j + 1 < n_wg;
        if (next) {
          const int kb0 = (j + 1) * BN;
          if (kb0 + BN - 1 > wrow0) causal_mask<NS>(s, kb0, wrow0, lane);
          if (window_cuts(p.window, kb0, wrow0)) window_mask<NS>(s, kb0, wrow0, lane, p.window);
          softmax_tile<T, NS>(s, pn, mrow, lrow, corr, sl2);
        }
        wgmma_wait<0>();
        reg_fence(o);
        reg_fence(pp);  // P(j) stays allocated until its product retired
        if (next) {
          rescale_o(o, corr);
#pragma unroll
          for (int nt = 0; nt < NS; ++nt) pp[nt][0] = pn[nt][0], pp[nt][1] = pn[nt][1];
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(empty + 8 * (g % STAGES));  // this warp is done with K(j) and V(j)
    }
    g0 += n_tiles;

    T* og = reinterpret_cast<T*>(p.o) + it.b * p.o_sb + (int64_t)it.h * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = lrow[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if (p.sinks != nullptr) l += sink_mass(p.sinks, it.h, mrow[r], sl2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = wrow0 + (lane >> 2) + 8 * r;
      if (row < T_) {
#pragma unroll
        for (int dt = 0; dt < 8; ++dt) {
          const int col = dt * 8 + 2 * (lane & 3);
          *reinterpret_cast<uint32_t*>(og + (int64_t)row * p.o_st + col) =
              pack2<T>(o[dt * 4 + 2 * r] * inv, o[dt * 4 + 2 * r + 1] * inv);
        }
      }
    }
  }
}

// Registers: the block starts with an equal share of the register file (at most 168 per
// thread for three warpgroups, 128 for four); setmaxnreg then moves the producer group down
// and hands the rest to the consumers (the pipeline with a 64 x 128 S tile needs ~210).
// Totals: WG 2: 128 x (2 x 240 + 24) = 64512; WG 3: 128 x (3 x 160 + 32) = 65536.
template <int WG>
constexpr int kConsumerRegs = WG == 2 ? 240 : 160;
template <int WG>
constexpr int kProducerRegs = WG == 2 ? 24 : 32;

// The producer thread hands out work items from a global counter (dynamic, so blocks that
// drew short items take more of them) through a two-slot ring in shared memory: item id and
// Q tile in, released by the consumers once Q is in their registers. Then it streams the
// item's K/V tiles; it runs ahead into the next item while the consumers finish this one.
template <typename T, int WG, int BN, int STAGES>
__global__ void __launch_bounds__((WG + 1) * 128, 1)
    flash_prefill_tma_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tq,
                             const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv,
                             int B, int* __restrict__ work_counter) {
  using L = TmaSmem<WG, BN, STAGES>;
  constexpr int BM = L::BM, TILE = L::TILE;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;

  // warp index made warp-uniform for the compiler (a branch on it is not a divergent path
  // around the wgmma instructions)
  const int warp = __shfl_sync(0xffffffffu, (int)(threadIdx.x >> 5), 0);
  const int lane = threadIdx.x & 31;
  const int n_mb = (p.T + BM - 1) / BM, n_items = n_mb * p.Hq * B;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(base + L::FULL + 8 * s, 1);        // the producer's arrive_expect_tx; TMA bytes complete it
      mbar_init(base + L::EMPTY + 8 * s, 4 * WG);  // one arrival per consumer warp
    }
    for (int s = 0; s < 2; ++s) {
      mbar_init(base + L::ITEM_FULL + 8 * s, 1);
      mbar_init(base + L::ITEM_EMPTY + 8 * s, 4 * WG);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp >= 4 * WG) {  // producer warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs<WG>));
    if (warp == 4 * WG && lane == 0) {
      int g = 0;
      for (int k = 0;; ++k) {
        const int slot = k & 1;
        const uint32_t item_full = base + L::ITEM_FULL + 8 * slot;
        if (k >= 2) mbar_wait(base + L::ITEM_EMPTY + 8 * slot, ((k >> 1) & 1) ^ 1);
        const int item = atomicAdd(work_counter, 1);
        st_shared_u32(base + L::ITEM_ID + 4 * slot, item);
        if (item >= n_items) {  // tells the consumers to stop
          mbar_arrive(item_full);
          break;
        }
        const PrefillItem it = prefill_item<BM, BN>(p, item, n_mb);
        mbar_arrive_expect_tx(item_full, L::QTILE);
        tma_load_4d(base + L::Q + slot * L::QTILE, &tq, 0, it.h, it.m0, it.b, item_full);
        const int hk = it.h / (p.Hq / p.Hkv);
        for (int j = 0; j < it.n_tiles; ++j, ++g) {
          const int s = g % STAGES;
          if (g >= STAGES) mbar_wait(base + L::EMPTY + 8 * s, ((g / STAGES) & 1) ^ 1);
          mbar_arrive_expect_tx(base + L::FULL + 8 * s, 2 * TILE);
          tma_load_4d(base + L::K + s * TILE, &tk, 0, hk, j * BN, it.b, base + L::FULL + 8 * s);
          tma_load_4d(base + L::V + s * TILE, &tv, 0, hk, j * BN, it.b, base + L::FULL + 8 * s);
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs<WG>));
    tma_consumer<T, WG, BN, STAGES>(p, base, warp, lane, n_mb, n_items);
  }
}

// cuTensorMapEncodeTiled from the driver, found through the runtime (no link against libcuda).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

cudaError_t encode_tiled_fn(EncodeTiledFn* fn) {
  static EncodeTiledFn cached = nullptr;
  if (cached == nullptr) {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess) return e;
    if (q != cudaDriverEntryPointSuccess || f == nullptr) return cudaErrorSymbolNotFound;
    cached = reinterpret_cast<EncodeTiledFn>(f);
  }
  *fn = cached;
  return cudaSuccess;
}

// Tensor map of a [B, T, H, 64] tensor with dense heads (head stride 64) and free token and
// batch strides, as dims (d, head, token, batch); one box = `rows` tokens of one head,
// 128-byte swizzled (the layout the wgmma descriptors read). Rows past T read as zeros.
template <typename T>
cudaError_t make_head_map(CUtensorMap* map, const void* ptr, int64_t B, int64_t T_, int64_t H, int64_t st, int64_t sb,
                        int rows) {
  EncodeTiledFn encode;
  cudaError_t e = encode_tiled_fn(&encode);
  if (e != cudaSuccess) return e;
  const cuuint64_t dims[4] = {64, (cuuint64_t)H, (cuuint64_t)T_, (cuuint64_t)B};
  const cuuint64_t strides[3] = {64 * sizeof(T), (cuuint64_t)st * sizeof(T), (cuuint64_t)sb * sizeof(T)};
  const cuuint32_t box[4] = {64, 1, (cuuint32_t)rows, 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dt =
      std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode(map, dt, 4, const_cast<void*>(ptr), dims, strides, box, estr,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename T, int WG, int BN, int STAGES>
cudaError_t launch_tma(const Params& p, int64_t B, int* work_counter, cudaStream_t st) {
  using L = TmaSmem<WG, BN, STAGES>;
  const int64_t items = ceil_div(p.T, L::BM) * p.Hq * B;
  if (work_counter == nullptr || items >= INT32_MAX) return cudaErrorInvalidValue;
  // TMA needs 16-byte multiples for the token and batch strides (bytes)
  const int64_t strides[6] = {p.q_sb, p.q_st, p.k_sb, p.k_st, p.v_sb, p.v_st};
  for (int64_t s : strides)
    if ((s * (int64_t)sizeof(T)) % 16) return cudaErrorMisalignedAddress;
  CUtensorMap tq, tk, tv;
  cudaError_t e = make_head_map<T>(&tq, p.q, B, p.T, p.Hq, p.q_st, p.q_sb, L::BM);
  if (e == cudaSuccess) e = make_head_map<T>(&tk, p.k, B, p.T, p.Hkv, p.k_st, p.k_sb, BN);
  if (e == cudaSuccess) e = make_head_map<T>(&tv, p.v, B, p.T, p.Hkv, p.v_st, p.v_sb, BN);
  if (e != cudaSuccess) return e;
  static bool configured = false;
  if (!configured) {
    e = cudaFuncSetAttribute(flash_prefill_tma_kernel<T, WG, BN, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             L::BYTES);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  // persistent grid: one block per SM, drawing work items until none is left
  int dev = 0, sms = 0;
  e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  const unsigned grid = (unsigned)std::min<int64_t>(items, sms);
  flash_prefill_tma_kernel<T, WG, BN, STAGES><<<grid, (WG + 1) * 128, L::BYTES, st>>>(p, tq, tk, tv, (int)B,
                                                                                     work_counter);
  return cudaGetLastError();
}

template <typename T, int D, int MT, int WARPS, int BN>
cudaError_t launch_cfg(const Params& p, int64_t B, cudaStream_t st) {
  constexpr int BM = 16 * MT * WARPS;
  constexpr int smem = (BM + 4 * BN) * D * 2;  // Q tile + double-buffered K and V tiles
  static bool configured = false;
  if (!configured) {
    cudaError_t e = cudaFuncSetAttribute(flash_prefill_kernel<T, D, MT, WARPS, BN>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  const dim3 grid((unsigned)ceil_div(p.T, BM), (unsigned)p.Hq, (unsigned)B);
  flash_prefill_kernel<T, D, MT, WARPS, BN><<<grid, WARPS * 32, smem, st>>>(p);
  return cudaGetLastError();
}

// Variants (docs/kernels/attention.md has their measurements): 0 the default; 1 the
// mma.sync kernel (the default before the Hopper kernel, kept as the comparison); 2 the TMA
// kernel with three consumer groups and 64-key tiles.
template <typename T>
cudaError_t run(const Params& p, int64_t B, int64_t D, int variant, int* work_counter, cudaStream_t st) {
  if (D == 128) return launch_cfg<T, 128, 1, 4, 64>(p, B, st);
  if (D != 64) return cudaErrorInvalidValue;
  // the persistent kernel numbers its work items in int32
  const bool fits = ceil_div(p.T, 64) * p.Hq * B < INT32_MAX;
  switch (variant) {
    case 0: return fits ? launch_tma<T, 2, 128, 3>(p, B, work_counter, st) : launch_cfg<T, 64, 2, 4, 64>(p, B, st);
    case 1: return launch_cfg<T, 64, 2, 4, 64>(p, B, st);
    case 2: return fits ? launch_tma<T, 3, 64, 4>(p, B, work_counter, st) : cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_attention_prefill(int dtype, const void* q, const void* k, const void* v, void* o, int64_t B,
                                     int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_sb, int64_t q_st,
                                     int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, float scale,
                                     int variant, int* work_counter, const float* sinks, int64_t window,
                                     cudaStream_t stream) {
  if (B == 0 || T == 0 || Hq == 0) return cudaSuccess;
  if (window < 0) return cudaErrorInvalidValue;
  if (window >= T) window = 0;  // a window as long as the prompt cuts nothing
  if (Hkv <= 0 || Hq % Hkv != 0 || T > INT32_MAX || Hq > 65535 || B > 65535) return cudaErrorInvalidValue;
  if (B == 1) {  // a size-1 dimension's stride is arbitrary in torch (and never used): keep it aligned
    q_sb = T * q_st;
    k_sb = T * k_st;
    v_sb = T * v_st;
  }
  // cp.async moves 16-byte chunks: every row start must be 16-byte aligned
  const int64_t strides[6] = {q_sb, q_st, k_sb, k_st, v_sb, v_st};
  for (int64_t s : strides)
    if (s % 8 != 0) return cudaErrorMisalignedAddress;
  if (!(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(o))) return cudaErrorMisalignedAddress;
  Params p{q, k, v, o, (int)T, (int)Hq, (int)Hkv, q_sb, q_st, k_sb, k_st, v_sb, v_st, T * Hq * D, Hq * D,
           scale * kLog2e, sinks, (int)window};
  if (dtype == kF16) return run<__half>(p, B, D, variant, work_counter, stream);
  if (dtype == kBF16) return run<__nv_bfloat16>(p, B, D, variant, work_counter, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gpte
