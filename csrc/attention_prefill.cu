// Causal attention over a prompt, flash-attention style (online softmax, no T x T matrix).
//
// One block = BM query rows of one (batch, query head); WARPS warps each own 16 * MT rows.
// Key/value tiles of BN = 64 rows stream through shared memory with cp.async, double
// buffered, so the next tile loads while the tensor cores work on this one. S = Q K^T and
// O += P V use mma.sync m16n8k16 (fp16 or bf16 inputs, fp32 accumulators); the S accumulator
// fragments are rounded in registers straight into the A operand of the P V product (the
// m16n8 C layout of two adjacent n-tiles is the m16k16 A layout). Shared-memory rows are
// D * 2 bytes; 16-byte chunk c of row r is stored at c ^ (r % 8) so the eight row addresses
// of each ldmatrix hit distinct banks. Softmax runs in the exp2 domain (scale * log2 e
// folded into one FFMA per score). Blocks are issued longest-first (the last query blocks
// see the most keys) to even out the causal triangle. GQA: query head h reads kv head
// h / (Hq / Hkv).
#include <cmath>

#include "common.cuh"
#include "launchers.h"

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
};

template <int D>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {  // byte offset of a 16-byte chunk
  constexpr int CPR = D / 8;
  return (uint32_t)((row * CPR + (chunk ^ (row & 7))) * 16);
}

// Copies rows [row0, row0 + NROWS) of a [T, *] matrix (row stride `st`) into swizzled smem.
template <typename T, int D, int NROWS, int NT>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int row0, int nrows_total, int64_t st) {
  constexpr int CPR = D / 8;
#pragma unroll
  for (int idx = threadIdx.x; idx < NROWS * CPR; idx += NT) {
    const int r = idx / CPR, c = idx % CPR;
    const int t = row0 + r;
    const bool valid = t < nrows_total;
    const T* g = valid ? src + (int64_t)t * st + c * 8 : src;
    cp_async16(dst + swz<D>(r, c), g, valid);
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
    if (kb0 + kBN - 1 > wrow0) {  // the diagonal crosses this tile: mask future keys
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NB; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int qrow = wrow0 + mt * 16 + (lane >> 2) + (i >= 2 ? 8 : 0);
            const int key = kb0 + nt * 8 + 2 * (lane & 3) + (i & 1);
            if (key > qrow) s[mt][nt][i] = -INFINITY;
          }
    }
    // online softmax, two rows (lane / 4 and lane / 4 + 8) per m-tile per thread. fp16: the
    // exponent is rounded to fp16 first and ex2.approx.f16x2 yields two probabilities per
    // MUFU op, already packed as the A operand of P V (P is rounded to fp16 for the product
    // anyway); bf16 keeps fp32 exp2 and rounds after.
    constexpr bool kHalf = std::is_same<T, __half>::value;
    uint32_t pp[MT][NB][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NB; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(mrow[mt][r], mx);
        const float msc = mnew == -INFINITY ? 0.f : mnew * sl2;
        const float corr = fast_exp2(mrow[mt][r] * sl2 - msc);
        float rs = 0.f;
        if constexpr (kHalf) {
          __half2 hs = __float2half2_rn(0.f);
#pragma unroll
          for (int nt = 0; nt < NB; ++nt) {
            __half2 e = __floats2half2_rn(fmaf(s[mt][nt][2 * r], sl2, -msc), fmaf(s[mt][nt][2 * r + 1], sl2, -msc));
            e = h2exp2(e);
            hs = __hadd2(hs, e);
            pp[mt][nt][r] = *reinterpret_cast<uint32_t*>(&e);
          }
          rs = __low2float(hs) + __high2float(hs);
        } else {
#pragma unroll
          for (int nt = 0; nt < NB; ++nt) {
            const float e0 = fast_exp2(fmaf(s[mt][nt][2 * r], sl2, -msc));
            const float e1 = fast_exp2(fmaf(s[mt][nt][2 * r + 1], sl2, -msc));
            rs += e0 + e1;
            pp[mt][nt][r] = pack2<T>(e0, e1);
          }
        }
        lrow[mt][r] = lrow[mt][r] * corr + rs;
        mrow[mt][r] = mnew;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          o[mt][dt][2 * r] *= corr;
          o[mt][dt][2 * r + 1] *= corr;
        }
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

// Tile shapes (m-tiles per warp, warps, key-tile rows). Variant 0 is the default; the others
// are kept for the tile-shape measurements in docs/kernels/attention.md.
template <typename T>
cudaError_t run(const Params& p, int64_t B, int64_t D, int variant, cudaStream_t st) {
  if (D == 128) return launch_cfg<T, 128, 1, 4, 64>(p, B, st);
  if (D != 64) return cudaErrorInvalidValue;
  switch (variant) {
    case 0: return launch_cfg<T, 64, 2, 4, 64>(p, B, st);
    case 1: return launch_cfg<T, 64, 2, 4, 128>(p, B, st);
    case 2: return launch_cfg<T, 64, 1, 8, 64>(p, B, st);
    case 3: return launch_cfg<T, 64, 1, 4, 64>(p, B, st);
    case 4: return launch_cfg<T, 64, 1, 8, 128>(p, B, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_attention_prefill(int dtype, const void* q, const void* k, const void* v, void* o, int64_t B,
                                     int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_sb, int64_t q_st,
                                     int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, float scale,
                                     int variant, cudaStream_t stream) {
  if (B == 0 || T == 0 || Hq == 0) return cudaSuccess;
  if (Hkv <= 0 || Hq % Hkv != 0 || T > INT32_MAX || Hq > 65535 || B > 65535) return cudaErrorInvalidValue;
  // cp.async moves 16-byte chunks: every row start must be 16-byte aligned
  const int64_t strides[6] = {q_sb, q_st, k_sb, k_st, v_sb, v_st};
  for (int64_t s : strides)
    if (s % 8 != 0) return cudaErrorMisalignedAddress;
  if (!(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(o))) return cudaErrorMisalignedAddress;
  Params p{q, k, v, o, (int)T, (int)Hq, (int)Hkv, q_sb, q_st, k_sb, k_st, v_sb, v_st, T * Hq * D, Hq * D,
           scale * kLog2e};
  if (dtype == kF16) return run<__half>(p, B, D, variant, stream);
  if (dtype == kBF16) return run<__nv_bfloat16>(p, B, D, variant, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gpte
