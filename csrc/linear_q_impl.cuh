// Decode GEMV over GGUF packed weights: out[m, n] = epilogue(sum_k xn[m, k] * W[n, k]) for M <= 16
// activation rows, W the raw file bytes [N, row_bytes] (rows of whole blocks, no repacking), for
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and MXFP4 (docs/kernels/quant.md).
//
// Floor: the packed bytes over copy bandwidth (4,096 x 4,096 MXFP4: 8.9 MB, 2.1 us at 4.2 TB/s).
// At 4.2 TB/s a 4-bit type delivers ~30 weights per clock per SM (132 SMs, 1.98 GHz): the decode
// has to cost a few instructions per weight at most, or the kernel is issue-bound.
//
// v1 (gone; measured 0.09-0.31 of copy, docs/kernels/quant.md): weights through registers, two
// batches per warp in flight, each quad of 4 codes turned into floats and multiplied with fp32 x
// from shared memory (4 B of x per weight per row): ALU/issue-bound and short of bytes in flight.
//
// v2 (this header, instantiated per type group by linear_q_{a,b,k}.cu; linear_q.cu dispatches).
// Unchanged from v1: csrc/linear_common.cuh's row pairs (pair_rows: SwiGLU gate/up, neox QKV),
// the norm formula and its rounding as XStage has them, finish_pair() for every epilogue. Changed:
//  - Activations as integers. After the norm (rounded to the activation dtype as the unfused norm
//    rounds it), each 32-value group of a row becomes q = rint(x / d) with d = max|x| / 32767 (a
//    16-bit code), stored as two byte planes: hi = q >> 8 (int8) and lo = q & 255 (uint8), so
//    sum(c * q) = 256 * dp4a(c, hi) + dp4a(c, lo) exactly. Why 16 bits and not llama.cpp's int8
//    (q8_1): an int8 x adds relative error (d/2)^2/3 ~ (2.4/127)^2/12 = 3e-5 NMSE per product for
//    Gaussian rows, 3x the fp16 bound of the ops tests and enough to flip greedy ids of the model
//    tests (test_cuda_graph runs Q8_0/Q4_1/MXFP4 models against transformers' ids); 16 bits give
//    ~3.4e-10, below fp16's own rounding, for 2 dp4a per 4 weights instead of 1 (the budget
//    allows it: ~1.5 instructions per weight at M = 1, docs/kernels/quant.md). x costs 2 B per value per row in
//    shared memory (v1: 4) plus 16 B per group and row ({d, sum of q over values 0..15, over
//    16..31}: the sums carry the code offsets and the min terms).
//  - Integer dot products: one lane takes one whole 32-value group of both rows of its pair;
//    group_codes() (quant_blocks.cuh) gives the 8 code words, 16 dp4a per row give the group's
//    exact integer sum, then acc += d_x * (s_w * float(isum - off * sum_q) + m_w * float(sum_q))
//    in fp32 (Q6_K: two 16-value halves with their own scales). Per group and row ~40-50
//    instructions for 32 weights (5-9 shared loads, 8 unpacks, 16 dp4a, ~8 for the scales), the
//    x loads (4 x 16 B + 16 B, conflict-free) shared by the pair's two rows.
//  - Weight stream through a cp.async ring in shared memory, stages() deep per warp (as
//    gemv_pipe_kernel in csrc/linear.cu), so the bytes in flight cost no registers. A batch is
//    64 groups of a row (32 for the types of more than 20 bytes per group) = 0.6-1.3 KB; rows are
//    not 16-byte aligned for most types, so a batch's byte span widened to 16-byte boundaries is
//    copied with 16-byte cp.async.cg (the tensor's last piece with a source size < 16: zero fill)
//    as v1 moved it. Lanes decode bytes other lanes copied: cp.async.wait_group then __syncwarp.
//    Batches run on across pair boundaries (a pair's reduction and epilogue overlap the next
//    pair's loads); the first stages - 1 batches are issued before griddepcontrol.wait.
//  - One block of 8 warps per SM, its rings 4-7 batches deep by type (kRingBudget: 55-73 KB of
//    both rows in flight per SM, the Little's-law figure at ~4 TB/s), <= 128 registers and
//    < 114 KB of shared memory at M <= 4 (K <= ~9,000 at M = 1), so a second block fits on the
//    SM: the next call's (launched early by PDL), which issues its first batches while this one
//    streams. At 4-bit sizes (4096 x 4096 Q4_0: 2.2 us of streaming) the per-call fixed cost
//    (launch, x staging, first DRAM round trip, tail) is as large as the work, so hiding it
//    matters more than a 16th warp. Pairs go round-robin over the blocks first (pair i -> block
//    i % grid), so every SM works even when N is small.
// Layout of x in shared memory, per activation row: tiles of 32 groups (1,024 values), a tile
// [half h][plane (hi, lo)][slot = group % 32][16 B = values 16h .. 16h + 15 of the group]: lane
// l reads slot l, so each 16-byte load of a warp is 512 contiguous bytes (no bank conflicts).
// Batches are whole multiples of 32 groups, so lane l always owns slot l.
// Per-row results are independent of M (integer sums are exact, the float steps are explicit
// fmaf / __fmul_rn in a fixed order): a sequence's output does not depend on its batch.
#pragma once
#include <cmath>

#include "linear_common.cuh"
#include "quant_blocks.cuh"

namespace gpte {
namespace {
using namespace linear_detail;
using namespace quant;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
// dynamic shared memory a block may opt in to on sm_90 (cudaDevAttrMaxSharedMemoryPerBlockOptin,
// 227 KiB), less the static arrays
constexpr int kSmemMax = 227 * 1024 - 1024;
constexpr int kXTile = 32 * 32 * 2;  // bytes of one x tile: 32 groups x 32 values x 2 planes
constexpr int kXScale = 32 * 16;     // bytes of one tile's group scales: 32 x {d, sum lo, sum hi, 0}

// Shared memory for the weight rings of a block at M <= 4: with the staged x (18 KB at K = 6400,
// M = 1) a block stays under half of the SM's 228 KiB, so that the next call's block fits beside
// it and issues its prefetch while this one runs (PDL)
constexpr int kRingBudget = 88 * 1024;

// groups per batch: ~0.7-1.3 KB of each row per batch, a multiple of the 32 lanes
__host__ __device__ constexpr int batch_groups(int qk, int ts) { return ts * 32 / qk <= 20 ? 64 : 32; }
__host__ __device__ constexpr int batch_blocks(int qk, int ts) { return batch_groups(qk, ts) * 32 / qk; }
// 16-byte pieces of a batch's span at most (it may start 15 bytes into its first piece)
__host__ __device__ constexpr int max_pieces(int qk, int ts) { return (batch_blocks(qk, ts) * ts + 15 + 15) / 16; }
// one row's buffer: the pieces plus 16 bytes that the decoder's funnel reads may touch
__host__ __device__ constexpr int row_buf(int qk, int ts) { return 16 * max_pieces(qk, ts) + 16; }
// Ring depth per warp (stages - 1 batches in flight): as many as kRingBudget holds at M <= 4
// (4-7 by type: 55-73 KB in flight per SM), 3 at M >= 8 where the staged x takes the memory.
__host__ __device__ constexpr int stages(int qk, int ts, int mt) {
  return mt >= 8 ? 3 : kRingBudget / (kWarps * 2 * row_buf(qk, ts)) < 3 ? 3
                    : kRingBudget / (kWarps * 2 * row_buf(qk, ts)) > 8 ? 8 : kRingBudget / (kWarps * 2 * row_buf(qk, ts));
}
__host__ __device__ constexpr size_t ring_bytes(int qk, int ts, int mt) {
  return (size_t)kWarps * stages(qk, ts, mt) * 2 * row_buf(qk, ts);
}
__host__ __device__ constexpr int x_tiles(int64_t K) { return (int)((K / 32 + 31) / 32); }
__host__ __device__ constexpr size_t smem_bytes(int qk, int ts, int mt, int64_t K) {
  return ring_bytes(qk, ts, mt) + (size_t)mt * x_tiles(K) * (kXTile + kXScale);
}

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(gmem_src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// dp4a with the weight codes' signedness (a) against x's hi plane (signed) or lo plane (unsigned)
template <bool WS, bool XS>
__device__ __forceinline__ int dp4a(uint32_t a, uint32_t b, int c) {
  int d;
  if constexpr (WS && XS) asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (WS) asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (XS) asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// acc + one group's contribution: codes c[8] of one weight row, x planes (h0, l0: values 0..15;
// h1, l1: 16..31), xs = {d_x, sum q 0..15, sum q 16..31, -}. |sum c q| <= 32 * 128 * 32767 < 2^31.
template <int T>
__device__ __forceinline__ float group_dot(const uint32_t* c, const uint4& h0, const uint4& l0, const uint4& h1,
                                           const uint4& l1, const float4& xs, float s0, float s1, float mn,
                                           float acc) {
  constexpr bool WS = IntCodes<T>::kSigned;
  constexpr int OFF = IntCodes<T>::kOff;
  int hs0 = dp4a<WS, true>(c[0], h0.x, 0), ls0 = dp4a<WS, false>(c[0], l0.x, 0);
  hs0 = dp4a<WS, true>(c[1], h0.y, hs0), ls0 = dp4a<WS, false>(c[1], l0.y, ls0);
  hs0 = dp4a<WS, true>(c[2], h0.z, hs0), ls0 = dp4a<WS, false>(c[2], l0.z, ls0);
  hs0 = dp4a<WS, true>(c[3], h0.w, hs0), ls0 = dp4a<WS, false>(c[3], l0.w, ls0);
  int hs1 = dp4a<WS, true>(c[4], h1.x, 0), ls1 = dp4a<WS, false>(c[4], l1.x, 0);
  hs1 = dp4a<WS, true>(c[5], h1.y, hs1), ls1 = dp4a<WS, false>(c[5], l1.y, ls1);
  hs1 = dp4a<WS, true>(c[6], h1.z, hs1), ls1 = dp4a<WS, false>(c[6], l1.z, ls1);
  hs1 = dp4a<WS, true>(c[7], h1.w, hs1), ls1 = dp4a<WS, false>(c[7], l1.w, ls1);
  const int q0 = __float_as_int(xs.y), q1 = __float_as_int(xs.z);
  float f;
  if constexpr (T == kQ6_K) {  // two 16-value scales
    const int t0 = hs0 * 256 + ls0 - OFF * q0, t1 = hs1 * 256 + ls1 - OFF * q1;
    f = fmaf(s1, (float)t1, __fmul_rn(s0, (float)t0));
  } else {
    const int t = (hs0 + hs1) * 256 + (ls0 + ls1) - OFF * (q0 + q1);
    f = __fmul_rn(s0, (float)t);
    if constexpr (Traits<T>::kHasMin) f = fmaf(mn, (float)(q0 + q1), f);
  }
  return fmaf(xs.x, f, acc);
}

// One row's batch: byte span [start, end) of the weight, copied as the 16-byte pieces of
// [start & ~15, end rounded up); the last piece of the tensor may be partial.
struct Span {
  int64_t a0;  // first piece's byte offset (16-aligned)
  int np;      // pieces
  int off;     // start - a0: the batch's first block in the buffer
  int nblk;    // blocks in the batch
};

template <int T>
__device__ __forceinline__ Span span_of(int64_t row_bytes, int nb, int row, int b) {
  constexpr int BB = batch_blocks(Traits<T>::QK, Traits<T>::TS), TS = Traits<T>::TS;
  const int q0 = b * BB, q1 = min(nb, q0 + BB);
  const int64_t start = (int64_t)row * row_bytes + (int64_t)q0 * TS, end = (int64_t)row * row_bytes + (int64_t)q1 * TS;
  Span s;
  s.a0 = start & ~(int64_t)15;
  s.np = (int)((end - s.a0 + 15) >> 4);
  s.off = (int)(start - s.a0);
  s.nblk = q1 - q0;
  return s;
}

// The activation rows -> x tiles and group scales (every thread of the block; ends on a barrier).
// 1. the raw rows (A) copied into the tile area with 16-byte loads, all issued together (row m at
//    m * xt * kXTile: tile t of a row holds exactly the raw bytes of its 1,024 values);
// 2. norm statistics from shared memory, every warp on every row (then 8 partial sums per row);
// 3. each tile quantized in place: one 32-value group per 8 threads, so the block covers one tile
//    at a time; a pass reads the values of kPass tiles into registers, waits on a barrier, then
//    writes their codes over them (a tile's codes take exactly its raw bytes).
// Rows m >= M are zeros.
constexpr int kPass = 4;  // tiles per read-barrier-write pass

template <typename A>
__device__ __forceinline__ void raw4(const uint8_t* src, float* v) {  // 4 values of A at an 8-byte aligned address
  const uint2 r = *reinterpret_cast<const uint2*>(src);
  const A* e = reinterpret_cast<const A*>(&r);
#pragma unroll
  for (int t = 0; t < 4; ++t) v[t] = to_f(e[t]);
}

template <typename A, int MT>
__device__ __forceinline__ void stage_x_int(const LinearArgs& p, uint8_t* xq, float4* xsc, float* s_mean,
                                            float* s_rstd, float (*s_red)[MT]) {
  const A* __restrict__ x = static_cast<const A*>(p.x);
  const A* nw = static_cast<const A*>(p.norm_w);
  const A* nbias = static_cast<const A*>(p.norm_b);
  const int ng = p.K / 32, xt = x_tiles(p.K);
  const size_t rs = (size_t)xt * kXTile;  // bytes per staged row
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // 1. raw copy: 8 values per 16-byte piece (K % 32 == 0), or one value at a time when x is not
  //    16-byte aligned
  const int pr = p.K / 8;  // pieces per row
  if (p.vec_x) {
#pragma unroll 4
    for (int c = threadIdx.x; c < p.M * pr; c += kThreads) {
      const int m = c / pr, k8 = c - m * pr;
      *reinterpret_cast<uint4*>(xq + m * rs + 16 * (size_t)k8) =
          *reinterpret_cast<const uint4*>(x + (int64_t)m * p.K + 8 * k8);
    }
  } else {
#pragma unroll 4
    for (int c = threadIdx.x; c < p.M * p.K; c += kThreads) {
      const int m = c / p.K, k = c - m * p.K;
      reinterpret_cast<A*>(xq + m * rs)[k] = x[(int64_t)m * p.K + k];
    }
  }
  __syncthreads();

  // 2. mean (LayerNorm) and 1 / rms of each row, as XStage::row_stats computes them (fp32, eps
  //    inside the root), the sums spread over the block
  if (p.norm != kNormNone) {
    auto block_sum = [&](auto term) {  // per row m < M: sum over k of term(m, value); ends on a barrier
      for (int m = 0; m < p.M; ++m) {
        const A* r = reinterpret_cast<const A*>(xq + m * rs);
        float acc = 0.f;
        for (int k = threadIdx.x; k < p.K; k += kThreads) acc += term(m, to_f(r[k]));
        acc = warp_sum(acc);
        if (lane == 0) s_red[warp][m] = acc;
      }
      __syncthreads();
    };
    if (p.norm == kNormLayer) {
      block_sum([](int, float v) { return v; });
      if (threadIdx.x < p.M) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) t += s_red[w][threadIdx.x];
        s_mean[threadIdx.x] = t / p.K;
      }
    } else if (threadIdx.x < MT) {
      s_mean[threadIdx.x] = 0.f;  // RMSNorm: the sum of squares about 0
    }
    __syncthreads();
    block_sum([&](int m, float v) {
      const float d = v - s_mean[m];
      return d * d;
    });
    if (threadIdx.x < p.M) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) t += s_red[w][threadIdx.x];
      s_rstd[threadIdx.x] = rsqrtf(t / p.K + p.eps);
    }
    __syncthreads();
  }

  // 3. quantize in place: pass over tiles (m, t) in chunks of kPass; thread -> group slot
  //    threadIdx / 8 of the tile, quad i = threadIdx % 8
  const int i = threadIdx.x & 7, slot = threadIdx.x >> 3, ntile = MT * xt;
  for (int t0 = 0; t0 < ntile; t0 += kPass) {
    float v[kPass][4];
#pragma unroll
    for (int r = 0; r < kPass; ++r) {
      const int tile = t0 + r, m = tile / xt, g = (tile - m * xt) * 32 + slot;
#pragma unroll
      for (int t = 0; t < 4; ++t) v[r][t] = 0.f;
      if (tile < ntile && m < p.M && g < ng) {
        raw4<A>(xq + m * rs + 2 * (size_t)(32 * g + 4 * i), v[r]);
        if (p.norm != kNormNone) {
#pragma unroll
          for (int t = 0; t < 4; ++t) {  // the norm as XStage::normalize_tile computes and rounds it
            const int k = 32 * g + 4 * i + t;
            v[r][t] = p.norm == kNormLayer
                          ? to_f(from_f<A>((v[r][t] - s_mean[m]) * s_rstd[m] * to_f(nw[k]) + to_f(nbias[k])))
                          : to_f(from_f<A>(v[r][t] * s_rstd[m] * to_f(nw[k])));
          }
        }
      }
    }
    __syncthreads();  // every raw value of these tiles is in registers before any code overwrites them
#pragma unroll
    for (int r = 0; r < kPass; ++r) {
      const int tile = t0 + r, m = tile / xt, g = (tile - m * xt) * 32 + slot;
      float amax = fmaxf(fmaxf(fabsf(v[r][0]), fabsf(v[r][1])), fmaxf(fabsf(v[r][2]), fabsf(v[r][3])));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
      // fmaxf drops NaN and a NaN converts to code 0: carry non-finite inputs in the scale instead
      // (0 * (NaN or inf) = NaN), so the group's outputs are NaN as the unquantized product's are
      float bad = 0.f * ((v[r][0] + v[r][1]) + (v[r][2] + v[r][3]));
      bad += __shfl_xor_sync(0xffffffffu, bad, 1);
      bad += __shfl_xor_sync(0xffffffffu, bad, 2);
      bad += __shfl_xor_sync(0xffffffffu, bad, 4);
      // amax = mant * 2^e: codes q = rint(v * 2^-e * 32767 / mant) and d = 2^e * mant / 32767, so
      // that no step overflows or flushes for tiny (bf16: down to 1e-40) or huge finite groups
      int e = 0;
      const float mant = amax <= 3.4028235e38f ? frexpf(amax, &e) : 0.f;
      const float inv = mant > 0.f ? 32767.f / mant : 0.f;
      uint32_t hi = 0, lo = 0;
      int sum = 0;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int q = max(-32767, min(32767, __float2int_rn(ldexpf(v[r][t], -e) * inv)));
        hi |= (uint32_t)((q >> 8) & 0xFF) << (8 * t);
        lo |= (uint32_t)(q & 0xFF) << (8 * t);
        sum += q;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);  // lanes 0-3: values 0..15; lanes 4-7: 16..31
      const int sum_hi = __shfl_xor_sync(0xffffffffu, sum, 4);
      if (tile < ntile && g < ng) {  // rows m >= M: zero codes and scales
        uint8_t* d = xq + m * rs + (size_t)(g >> 5) * kXTile + (((i >> 2) * 2 * 32 + (g & 31)) * 16 + (i & 3) * 4);
        *reinterpret_cast<uint32_t*>(d) = hi;
        *reinterpret_cast<uint32_t*>(d + 32 * 16) = lo;
        if (i == 0)
          xsc[(size_t)m * xt * 32 + g] =
              make_float4(ldexpf(mant / 32767.f, e) + bad, __int_as_float(sum), __int_as_float(sum_hi), 0.f);
      }
    }
  }
  __syncthreads();
}

// launch bounds: at M <= 4 two blocks' registers fit an SM (<= 128 per thread), this call's and
// the next one's; at M >= 8 the accumulators need more
template <int T, typename A, int MT>
__global__ void __launch_bounds__(kThreads, MT <= 4 ? 2 : 1) gemv_q_kernel(const LinearArgs p) {
  using TR = Traits<T>;
  constexpr int S = stages(TR::QK, TR::TS, MT), RB = row_buf(TR::QK, TR::TS), BB = batch_blocks(TR::QK, TR::TS);
  constexpr int GPB = TR::QK / 32, BG = batch_groups(TR::QK, TR::TS), PMAX = (max_pieces(TR::QK, TR::TS) + 31) / 32;
  extern __shared__ __align__(16) uint8_t smem[];  // [warps][S][2 rows][RB] ring, x tiles, x scales
  __shared__ float s_mean[MT], s_rstd[MT], s_red[kWarps][MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(p.w);
  const int nb = p.K / TR::QK, nbatch = (nb + BB - 1) / BB, xt = x_tiles(p.K);
  const int64_t row_bytes = (int64_t)nb * TR::TS, total = (int64_t)p.N * row_bytes;
  uint8_t* ring = smem + (size_t)warp * S * 2 * RB;
  uint8_t* xq = smem + ring_bytes(TR::QK, TR::TS, MT);
  float4* xsc = reinterpret_cast<float4*>(xq + (size_t)MT * xt * kXTile);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int stride = gridDim.x * kWarps;

  // rows of a pair; a missing second row (odd N) re-reads the first, its sums never stored
  auto rows_of = [&](int pair, int& r0, int& r1, bool& has1) {
    pair_rows(p, pair, r0, r1);
    has1 = r1 < p.N;
    if (!has1) r1 = r0;
  };
  struct Cur {
    int pair, b;  // pair index, batch of its rows; pair >= npairs: done
  };
  auto advance = [&](Cur s) {
    if (++s.b == nbatch) {
      s.b = 0;
      s.pair += stride;
    }
    return s;
  };
  auto issue = [&](int st, Cur s) {  // one commit group per call, empty past the end
    if (s.pair < npairs) {
      int r[2];
      bool h;
      rows_of(s.pair, r[0], r[1], h);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const Span sp = span_of<T>(row_bytes, nb, r[k], s.b);
        uint8_t* dst = ring + (st * 2 + k) * RB;
#pragma unroll
        for (int u = 0; u < PMAX; ++u) {
          const int pc = lane + 32 * u;
          if (pc < sp.np) {
            const int64_t a = sp.a0 + 16 * (int64_t)pc;
            const int64_t left = total - a;
            cp_async16(dst + 16 * pc, w + a, left < 16 ? (int)left : 16);
          }
        }
      }
    }
    cp_async_commit();
  };

  float acc0[MT], acc1[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
  auto consume = [&](int st, Cur s) {
    int r0, r1;
    bool has1;
    rows_of(s.pair, r0, r1, has1);
    const Span sa = span_of<T>(row_bytes, nb, r0, s.b), sb = span_of<T>(row_bytes, nb, r1, s.b);
    const uint8_t* bufa = ring + st * 2 * RB;
    const uint8_t* bufb = bufa + RB;
    const int ngb = sa.nblk * GPB, g0 = s.b * BG;
#pragma unroll
    for (int it = 0; it < BG / 32; ++it) {
      const int gi = lane + 32 * it;
      if (gi < ngb) {
        const int q = gi / GPB, j = gi - q * GPB, g = g0 + gi;
        uint32_t ca[8], cb[8];
        float a0, a1, am, b0, b1, bm;
        group_codes<T>(bufa, sa.off + q * TR::TS, j, ca, a0, a1, am);
        group_codes<T>(bufb, sb.off + q * TR::TS, j, cb, b0, b1, bm);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const uint8_t* xp = xq + ((size_t)m * xt + (g >> 5)) * kXTile + lane * 16;  // slot g % 32 == lane
          const uint4 h0 = *reinterpret_cast<const uint4*>(xp);
          const uint4 l0 = *reinterpret_cast<const uint4*>(xp + 512);
          const uint4 h1 = *reinterpret_cast<const uint4*>(xp + 1024);
          const uint4 l1 = *reinterpret_cast<const uint4*>(xp + 1536);
          const float4 xs = xsc[(size_t)m * xt * 32 + g];
          acc0[m] = group_dot<T>(ca, h0, l0, h1, l1, xs, a0, a1, am, acc0[m]);
          acc1[m] = group_dot<T>(cb, h0, l0, h1, l1, xs, b0, b1, bm, acc1[m]);
        }
      }
    }
    if (s.b + 1 < nbatch) return;  // more batches of this pair follow
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
      if (m < p.M && lane == m) finish_pair<A>(p, m, s.pair, r0, r1, has1, v0, v1);
      acc0[m] = acc1[m] = 0.f;
    }
  };

  // Before the wait on the previous kernel: this warp's first S - 1 batches (weights are constant;
  // cp.async touches only this block's shared memory).
  Cur tail{(int)blockIdx.x + (int)gridDim.x * warp, 0};
  Cur head = tail;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    issue(s, head);
    head = advance(head);
  }
  pdl_wait();
  pdl_launch_dependents();
  stage_x_int<A, MT>(p, xq, xsc, s_mean, s_rstd, s_red);

  for (int i = 0; tail.pair < npairs; ++i) {
    cp_async_wait<S - 2>();  // batch i has landed (groups committed so far: i + S - 1)
    __syncwarp();            // ... for every lane: each decodes bytes other lanes copied
    consume(i % S, tail);
    // into the slot batch i - 1 used: every lane finished it before the __syncwarp above
    issue((i + S - 1) % S, head);
    head = advance(head);
    tail = advance(tail);
  }
  cp_async_wait<0>();
}

template <int T, typename A, int MT>
cudaError_t launch_mt(const LinearArgs& a, int num_sms, cudaStream_t st) {
  using TR = Traits<T>;
  LinearArgs p = a;
  p.vec_x = aligned16(p.x);  // the staging's 16-byte loads (K % 32 == 0)
  const size_t smem = smem_bytes(TR::QK, TR::TS, MT, p.K);
  if (smem > (size_t)kSmemMax) return cudaErrorInvalidValue;
  auto kern = gemv_q_kernel<T, A, MT>;
  static bool attr_set = false;  // once per instantiation: allow up to kSmemMax of shared memory,
  if (!attr_set) {              // and ask for the whole carveout as shared memory so that a second
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemMax);
    if (e == cudaSuccess)       // block (the next call's) fits beside this one
      e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  // one block per SM: the rest of the SM is for the next call's block (see kRingBudget)
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(npairs, num_sms));
  return launch_pdl(kern, dim3((unsigned)grid), dim3(kThreads), smem, st, p);
}

template <int T, typename A>
cudaError_t launch_ta(const LinearArgs& p, int num_sms, cudaStream_t st) {
  if (p.M <= 1) return launch_mt<T, A, 1>(p, num_sms, st);
  if (p.M <= 2) return launch_mt<T, A, 2>(p, num_sms, st);
  if (p.M <= 4) return launch_mt<T, A, 4>(p, num_sms, st);
  if (p.M <= 8) return launch_mt<T, A, 8>(p, num_sms, st);
  return launch_mt<T, A, 16>(p, num_sms, st);
}

}  // namespace
}  // namespace gpte
