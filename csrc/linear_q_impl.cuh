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
//    allows it: ~1.5 instructions per weight at M = 1, docs/kernels/quant.md). x costs 2 B per
//    value per row in shared memory (v1: 4) plus 16 B per group and row ({d, sum of q over
//    values 0..15, over 16..31}: the sums carry the code offsets and the min terms).
//  - Integer dot products: one lane takes one whole 32-value group of both rows of its pair;
//    group_codes() (quant_blocks.cuh) gives the 8 code words, 16 dp4a per row give the group's
//    exact integer sum, then acc += d_x * (s_w * float(isum - off * sum_q) + m_w * float(sum_q))
//    in fp32 (Q6_K: two 16-value halves with their own scales). Per group and row ~40-50
//    instructions for 32 weights (5-9 shared loads, 8 unpacks, 16 dp4a, ~8 for the scales), the
//    x loads (4 x 16 B + 16 B, conflict-free) shared by the pair's two rows.
//  - Weight stream through a cp.async ring in shared memory, stages() deep per warp (as
//    gemv_pipe_kernel in csrc/linear_impl.cuh), so the bytes in flight cost no registers. A batch is
//    64 groups of a row (32 for the types of more than 20 bytes per group) = 0.6-1.3 KB; rows are
//    not 16-byte aligned for most types, so a batch's byte span widened to 16-byte boundaries is
//    copied with 16-byte cp.async.cg (the tensor's last piece with a source size < 16: zero fill)
//    as v1 moved it. Lanes decode bytes other lanes copied: cp.async.wait_group then __syncwarp.
//    Batches run on across pair boundaries (a pair's reduction and epilogue overlap the next
//    pair's loads); the first stages - 1 batches are issued before griddepcontrol.wait.
//  - One block of 8 warps per SM (two at M = 1 since v3.1), its rings 4-7 batches deep by type
//    (kRingBudget: 55-73 KB of both rows in flight per SM, the Little's-law figure at ~4 TB/s),
//    <= 128 registers and < 114 KB of shared memory at M <= 4 (K <= ~9,000 at M = 1), so a
//    second block fits on the SM: the next call's (launched early by PDL), which issues its
//    first batches while this one streams. At 4-bit sizes (4096 x 4096 Q4_0: 2.2 us of
//    streaming) the per-call fixed cost (launch, x staging, first DRAM round trip, tail) is as
//    large as the work, so hiding it matters more than a 16th warp. Pairs go round-robin over
//    the blocks first (pair i -> block i % grid), so every SM works even when N is small.
//
// v3 (this header): outputs bit-identical to v2 (checked on the H200 over ~2,300 cases by a v2/v3
// A/B test before v2 was removed; docs/kernels/quant.md has the measured speed-up). Changed:
//  - the activation staging, stage_x_v3 (its comment below): x from global memory straight into
//    registers, the norm weights loaded before griddepcontrol.wait, norm statistics in v2's
//    order of operations with 1-4 barriers in all (v2: 5-9), exact bit arithmetic for v2's
//    frexpf / ldexpf / rint / clamp;
//  - MXFP4 codes from mxfp4_biased8 (quant_blocks.cuh): the raw nibbles are prmt selectors, 13
//    operations per 8 codes (v2 ~25), unsigned with offset 128 (IntCodesMx) like Q4_0's 8.
// v3.1: at M = 1 the grid is 2 blocks per SM (launch_mt), same per-pair code and outputs; the
//    ring budget and launch bounds already allowed two resident blocks at M <= 4.
// Layout of x in shared memory, per activation row: tiles of 32 groups (1,024 values), a tile
// [half h][plane (hi, lo)][slot = group % 32][16 B = values 16h .. 16h + 15 of the group]: lane
// l reads slot l, so each 16-byte load of a warp is 512 contiguous bytes (no bank conflicts).
// Batches are whole multiples of 32 groups, so lane l always owns slot l.
// v3.2: long rows (at least two batches, pairs filling at most half of the M = 1 grid's warps)
//    are summed as two K halves; at M = 1 two warps take a pair, one half each (Nsight Compute:
//    the kernel is latency-bound, 0.48 eligible warps per scheduler at 1600x6400; the halves cut
//    each busy warp's chain in two). docs/kernels/quant.md has the measurements.
// v3.3 (written in session 30, the default since session 31; qgemv_zip_force(0) returns to v3):
//    MXFP4 codes from mxfp4_biased8_zip, the MoE decode v7.2's order (quant_blocks.cuh): 9
//    operations per 8 codes instead of 13, the activations staged in the same order
//    (quantize8_v3<true>). A group's dp4a sums are the same integers in another order, so the
//    outputs are v3's bits (test_mxfp4_zip_same_bits). The MoE's A/B (session 29, H100): -0.9%
//    of the 20b step, ~1 us a layer. Predicted here: -1% to -3% of the 1.5B MXFP4 step (the
//    decode and dot products were ~290 us of ~1,570, session 15; ~20% fewer instructions there).
//    Measured (session 31, H100 80GB HBM3, one warm call, docs/kernels/quant.md): graph steps
//    1.5B MXFP4 1,583.5 -> 1,550.8 us (-2.1%), 124M MXFP4 283.9 -> 278.9 us (-1.8%); the GEMV
//    alone -2% to -5% at every bar shape; memcheck clean on the same-bits tests.
// v3.4 (written in session 38, not measured; qgemv_fold_force(0) returns to v3.3's staging): the
//    dense v27's norm fold (csrc/linear_common.cuh, XStage's fold notes) in the packed GEMV. The
//    staging codes (x - x[0]) g (LayerNorm) or x g (RMSNorm), unrounded, straight from the
//    registers: no raw copy of x, no statistics passes, none of their 2-3 block barriers between
//    the PDL wait and the first dot product. The statistics come from global memory at each
//    warp's first finished pair (XStage::fold_stats, the dense kernel's chunk order), and the
//    epilogue gives rstd (s - (mean - x[0]) C_n) + D_n or rstd s, with C = W g, D = W b from the
//    exactly dequantized weight (ops.linear.fold_constants). The codes' error follows |x - x[0]|:
//    simulated on the CPU (docs/kernels/quant.md, v3.4), ~50x under v3.3's on
//    ordinary rows (the fp16 rounding of the normalised row is gone), ~2x over it when x[0] is a
//    40-sigma outlier, far under the fp16 bound either way. ptxas (sm_90a, nvcc 13.0, MXFP4):
//    M = 1 128 registers (v3.3: 119 / 126), M = 8 180-184 (168), M = 16 166-168 (205), no spills.
//    Predicted (docs/kernels/quant.md): ~1 us less per norm-fused call, 97 a 1.5B step: -5% to
//    -6% of the Q8_0 / MXFP4 steps, if the dense v27's A/B confirms the lever.
//    Measured (session 46, H100, one build, fold on / off): 1.5B Q8_0 1,759.5 / 1,710.0 us, MXFP4
//    1,614.7 / 1,568.9 (+2.9% each), 124M MXFP4 287.7 / 288.1, Q4_K_M 1,854.7 / 1,837.9: slower.
// v3.4b (session 46): the statistics from the staging instead. Each thread sums x - c and
//    (x - c)^2 over its 8-element chunks as it codes them (XStage::chunk_stats), each warp's sums go
//    to shared memory before the staging's last barrier (no barrier added), and the epilogue adds
//    the 8 warps' in order: no second read of the row, no dependent L2 loads after the dot
//    products. ptxas (sm_90a): M = 1 127 / 125 registers, M = 16 232 (Q8_0) / 254 (MXFP4), no spills.
// Per-row results are independent of M (integer sums are exact, the float steps are explicit
// fmaf / __fmul_rn in a fixed order, the K halves a function of the shape): a sequence's output
// does not depend on its batch.
#pragma once
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "linear_common.cuh"
#include "quant_blocks.cuh"

namespace gpte {
extern int g_qgemv_zip;  // linear_q.cu: qgemv_zip_force's setting (1: v3.3, MXFP4 only, the default; 0: v3)
extern int g_linear_scatter;  // linear.cu: linear_scatter_force's setting (v32's epilogue at 8-16 rows: 1)
extern int g_qgemv_fold;  // linear_q.cu: qgemv_fold_force's setting (1: v3.4's norm fold, the default; 0: v3.3's staging)
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
// v3.4b: after the x scales, the norm fold's per-warp statistics, [MT][kWarps] x {sum, sum of
// squares} floats (dynamic, not static: kSmemMax keeps 1 KB for s_stat, which is full at MT = 16;
// the 64 MT bytes move no shape across kSmemMax: checked over every type, MT and x tile count)
__host__ __device__ constexpr size_t fold_part_bytes(int mt) { return (size_t)mt * kWarps * 2 * sizeof(float); }
__host__ __device__ constexpr size_t smem_bytes(int qk, int ts, int mt, int64_t K) {
  return ring_bytes(qk, ts, mt) + (size_t)mt * x_tiles(K) * (kXTile + kXScale) + fold_part_bytes(mt);
}

// cp_async16 with a source size: bytes past src_bytes are zero-filled (a ragged last block)
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(gmem_src), "r"(src_bytes) : "memory");
}
// (cp_async_commit / cp_async_wait: linear_common.cuh)

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

// ---- v3 staging ----
// Same codes, scales and therefore outputs as v2's staging (stage_x_int, gone: measured against
// it bit for bit on the H200 before it was removed, docs/kernels/quant.md), with a shorter
// post-wait critical path:
//  - Each thread owns 8 consecutive values of one group per (unit, row): group
//    g = 64 (U c + u) + 8 warp + lane % 8, values 8 p .. 8 p + 7 with p = lane / 8 (4 threads
//    per group). It loads them from global memory straight into registers (16-byte loads: a
//    warp reads 8 groups = 512 contiguous bytes), so the quantization reads no raw copy. The
//    norm weight and bias of those positions are loaded BEFORE griddepcontrol.wait (constant
//    data), so the only post-wait round trip is x itself (v2: x, then nw/nb once per pass).
//  - Norm statistics: a raw copy of x in the tile area (written from those registers) is read
//    in v2's exact order: thread t sums k = t + 256 j for increasing j, warp_sum, then the 8
//    warp partials in warp order; every thread adds the partials itself (v2: thread m, then
//    one more barrier). Barriers: RMSNorm 3 (copy, sum of squares, end), LayerNorm 4 (+ mean),
//    none 1 (v2: 5-9 by K, M and norm).
//  - No in-place hazard: the quantization reads registers, and the raw copy's last readers
//    are behind the statistics barrier, so codes are written without a barrier per pass.
//  - Per value: 1 FMUL + 1 FADD turn v into its code (v2: ldexpf, FMUL, F2I, 2 clamps), the
//    byte planes come from 4 PRMT per 4 values; frexpf is exponent arithmetic. Equivalences
//    (IEEE fp32, round to nearest even, no FTZ: the build has no fast-math flags):
//     * frexpf(a) for 0 < a <= FLT_MAX: a normal: mant = a's fraction with exponent field
//       126, e = field - 126 (mant in [0.5, 1)); a subnormal: the same on a * 2^24 (exact),
//       e - 24. a = 0, inf, NaN: v2 takes mant = 0, e = 0, and so does v3.
//     * v2's code is rint(RN(RN(v 2^-e) inv)), inv = RN(32767 / mant) in [32767, 65534]. Let
//       z = v 2^-e (|z| <= mant < 1). If |z| >= 2^-126, or e <= 0 (scaling up is exact), z
//       is a float and ldexpf returns it; then RN(z inv) = RN(v c) with c = inv 2^-e, which
//       is a normal float for e >= -100 (exponent field of inv is 141 or 142, minus e in
//       [-100, 128]: [13, 242]) and is formed exactly by subtracting e from that field. For
//       e < -100 (|v| < 2^-100): c = inv 2^(-e-64) and v is first scaled by 2^64 (exact, no
//       overflow), the same single rounding of the same product. If |z| < 2^-126 (e > 0,
//       tiny v), v2's ldexpf result and v3's product are both below 2^-126 * 65534 < 0.5
//       in magnitude: code 0 either way.
//     * rint(y) for |y| < 2^22 is RN(y + 1.5 * 2^23) - 1.5 * 2^23 (spacing 1 there, ties to
//       even), and the low 16 bits of that sum's bit pattern are the code's (0x4B400000 has
//       none set). |y| <= 32767 (1 + 2^-24)^2 < 32767.5 for finite groups, so v2's clamp to
//       +-32767 never binds and is dropped.
//     * d = ldexpf(RN(mant / 32767), e): RN(mant / 32767) is normal with exponent field 111
//       or 112, so for e >= -100 adding e to the field is exact; ldexpf for the rest.
//    Groups with a non-finite value (or a quad sum that overflows: v2's `bad`, kept as is) get
//    d = NaN, which makes every output of the row NaN whatever the codes: their codes differ
//    from v2's there (NaN or inf times 0 goes through the float trick, not F2I), nothing else.
//  - Rows m >= M are not written (v2 wrote zeros): their sums are never stored.
// Registers (<= 128 at M <= 4, no spills): chunk 0 is U units of 8 values per row (4 registers
// each; U = 4 at M <= 2, 2 at M <= 8, 1 at 16: K <= 8,192 / 4,096 / 2,048), the norm weight
// and bias 8 registers per unit, the first UN = 2 units' (K <= 4,096) before the wait, the rest
// after the statistics (one more round trip). Units past chunk 0 go UR (2 at M <= 2, else 1) at
// a time, each one more round trip but no barrier (a chunk loop around the unrolled units
// spilled at M <= 2).
template <int MT> __host__ __device__ constexpr int v3_units() { return MT <= 2 ? 4 : MT <= 8 ? 2 : 1; }
template <int MT> __host__ __device__ constexpr int v3_norm_units() { return MT <= 8 ? 2 : 1; }
template <int MT> __host__ __device__ constexpr int v3_rest_units() { return MT <= 2 ? 2 : 1; }

// 8 values of A (2 bytes each) at src: one 16-byte load when aligned, else 8 two-byte loads
__device__ __forceinline__ uint4 load8_raw(const void* src, bool vec) {
  if (vec) return *reinterpret_cast<const uint4*>(src);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  uint32_t w[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) w[t] = (uint32_t)s[2 * t] | ((uint32_t)s[2 * t + 1] << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// NU units of this thread from unit u0 on: unit u is group 64 (u0 + u) + slot()
template <typename A, int MT, int NU = v3_units<MT>()>
struct XRegs {
  static constexpr int U = NU, UN = v3_norm_units<MT>() < NU ? v3_norm_units<MT>() : NU;
  uint4 nw[U], nb[U];  // norm weight / bias at this thread's 8 positions of unit u (raw A)
  uint4 x[U][MT];      // the activations there, rows m < M (zeros past K)
  static __device__ __forceinline__ int slot() { return 8 * (threadIdx.x >> 5) + (threadIdx.x & 7); }
  static __device__ __forceinline__ int part() { return (threadIdx.x >> 3) & 3; }
  // group of unit u (valid when < K / 32)
  static __device__ __forceinline__ int group(int u0, int u) { return 64 * (u0 + u) + slot(); }

  // norm weight / bias of units [ua, ub): constant data, so chunk 0's first UN units are
  // loaded before the PDL wait
  __device__ __forceinline__ void load_norm(const LinearArgs& p, int c, int ua = 0, int ub = U) {
    const int ng = p.K / 32;
    const bool vec = (((uintptr_t)p.norm_w | (uintptr_t)(p.norm_b ? p.norm_b : p.norm_w)) & 15) == 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (u < ua || u >= ub) continue;
      const int g = group(c, u);
      const int64_t k = 32 * (int64_t)g + 8 * part();
      nw[u] = nb[u] = make_uint4(0, 0, 0, 0);
      if (p.norm != kNormNone && g < ng) {
        nw[u] = load8_raw(static_cast<const A*>(p.norm_w) + k, vec);
        if (p.norm == kNormLayer) nb[u] = load8_raw(static_cast<const A*>(p.norm_b) + k, vec);
      }
    }
  }
  __device__ __forceinline__ void load_x(const LinearArgs& p, int c) {
    const int ng = p.K / 32;
    const A* xp = static_cast<const A*>(p.x);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = group(c, u);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        x[u][m] = make_uint4(0, 0, 0, 0);
        if (m < p.M && g < ng) x[u][m] = load8_raw(xp + (int64_t)m * p.K + 32 * g + 8 * part(), p.vec_x);
      }
    }
  }
};

// Mean and 1 / rms of rows m < M (every thread gets them), from a raw copy of x in the tile
// area, in stage_x_int's order of operations; s_stat: [2][MT][kWarps] partial sums.
template <typename A, int MT>
__device__ __forceinline__ void norm_stats_v3(const LinearArgs& p, const XRegs<A, MT>& r, uint8_t* xq,
                                              float* s_stat, float* mean, float* rstd) {
  constexpr int U = XRegs<A, MT>::U;
  const int ng = p.K / 32;
  const size_t rs = (size_t)x_tiles(p.K) * kXTile;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // the raw copy: chunk 0 from the registers, the rest of the row (K > 2,048 U) from global
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int g = XRegs<A, MT>::group(0, u);
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m < p.M && g < ng)
        *reinterpret_cast<uint4*>(xq + m * rs + 2 * (size_t)(32 * g + 8 * XRegs<A, MT>::part())) = r.x[u][m];
  }
  const int pr = p.K / 8, pr0 = min(pr, 4 * 64 * U), rest = pr - pr0;  // 16-byte pieces per row
  for (int c = threadIdx.x; c < p.M * rest; c += kThreads) {
    const int m = c / rest, k8 = pr0 + c - m * rest;
    *reinterpret_cast<uint4*>(xq + m * rs + 16 * (size_t)k8) =
        load8_raw(static_cast<const A*>(p.x) + (int64_t)m * p.K + 8 * k8, p.vec_x);
  }
  __syncthreads();
  auto partials = [&](float* red, auto term) {  // red[m][warp] = warp_sum over this warp's k
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      const A* row = reinterpret_cast<const A*>(xq + m * rs);
      float acc = 0.f;
      for (int k = threadIdx.x; k < p.K; k += kThreads) acc += term(m, to_f(row[k]));
      acc = warp_sum(acc);
      if (lane == 0) red[m * kWarps + warp] = acc;
    }
    __syncthreads();
  };
  auto total = [&](const float* red, int m) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += red[m * kWarps + w];
    return t;
  };
#pragma unroll
  for (int m = 0; m < MT; ++m) mean[m] = 0.f;  // RMSNorm: the sum of squares about 0
  if (p.norm == kNormLayer) {
    partials(s_stat, [](int, float v) { return v; });
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m < p.M) mean[m] = total(s_stat, m) / p.K;
  }
  float* red2 = s_stat + MT * kWarps;  // a second buffer: no thread may still read the first
  partials(red2, [&](int m, float v) {
    float mu = 0.f;
#pragma unroll
    for (int j = 0; j < MT; ++j)
      if (j == m) mu = mean[j];
    const float d = v - mu;
    return d * d;
  });
#pragma unroll
  for (int m = 0; m < MT; ++m) rstd[m] = m < p.M ? rsqrtf(total(red2, m) / p.K + p.eps) : 0.f;
}

// Codes of the NU units in r (first unit u0): norm applied, quantized, stored. kZip (v3.3): in
// mxfp4_biased8_zip's order (quantize8_v3<true> finds each part's bytes from the group's plane-0 slot).
// v3.4 (p.fold): mean[m] holds the shift c of row m (x[m][0] for LayerNorm, 0 for RMSNorm) and the
// codes are of (x - c) g, unrounded; rstd is not used (the epilogue applies the statistics).
// v3.4b: with p.fold, fsum[m] / fsq[m] gather this thread's sums of x - c and (x - c)^2 over its
// units inside K (8-element chunks, XStage::chunk_stats), in unit order whatever MT.
template <typename A, int MT, int NU, bool kZip = false>
__device__ __forceinline__ void quantize_units(const LinearArgs& p, const XRegs<A, MT, NU>& r, int u0, const float* mean,
                                               const float* rstd, uint8_t* xq, float4* xsc, float* fsum, float* fsq) {
  const int ng = p.K / 32, xt = x_tiles(p.K), part = XRegs<A, MT, NU>::part();
  const size_t rs = (size_t)xt * kXTile;
#pragma unroll
  for (int u = 0; u < NU; ++u) {
    const int g = XRegs<A, MT, NU>::group(u0, u);
    if (64 * (u0 + u) + 8 * (int)(threadIdx.x >> 5) >= ng) continue;  // the whole warp is past K
    float w[8], b[8];
    unpack8<A>(r.nw[u], w);
    unpack8<A>(r.nb[u], b);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      float f[8];
      unpack8<A>(r.x[u][m], f);
      const bool ok = g < ng;
      if (p.fold) {
        if (ok) {  // v3.4b: the chunk's statistics (zeros past K would add c^2 terms)
          float cs, cq;
          XStage<A, MT, kThreads>::chunk_stats(f, mean[m], cs, cq);
          fsum[m] += cs;
          fsq[m] += cq;
        }
#pragma unroll
        for (int t = 0; t < 8; ++t) f[t] = (f[t] - mean[m]) * w[t];  // v3.4: XStage::fold_tile's values
      } else if (p.norm != kNormNone) {
#pragma unroll
        for (int t = 0; t < 8; ++t)  // the norm as XStage::normalize_tile computes and rounds it
          f[t] = p.norm == kNormLayer ? to_f(from_f<A>((f[t] - mean[m]) * rstd[m] * w[t] + b[t]))
                                      : to_f(from_f<A>(f[t] * rstd[m] * w[t]));
      }
      const int gs = ok ? g : 0;
      uint8_t* dst = xq + m * rs + (size_t)(gs >> 5) * kXTile +
                     (kZip ? (gs & 31) * 16 : ((part >> 1) * 64 + (gs & 31)) * 16 + (part & 1) * 8);
      quantize8_v3<kZip>(f, part, ok, dst, xsc + (size_t)m * xt * 32 + gs);
    }
  }
}

// The activation rows -> x tiles and group scales (every thread; ends on a barrier). r holds
// chunk 0's first norm weights (loaded before the PDL wait). v3.4b (p.fold): each warp's sums of
// x - c and (x - c)^2 per row to s_fold[(m * kWarps + warp) * 2 + {0, 1}], before that barrier.
template <typename A, int MT, bool kZip = false>
__device__ __forceinline__ void stage_x_v3(const LinearArgs& p, uint8_t* xq, float4* xsc, float* s_stat,
                                           float* s_fold, XRegs<A, MT>& r) {
  constexpr int U = XRegs<A, MT>::U, UR = v3_rest_units<MT>();
  const int ng = p.K / 32;
  r.load_x(p, 0);
  float mean[MT], rstd[MT];
  if (p.fold) {
    // v3.4: no statistics passes here (v3.4b: chunk sums as the units are coded, totalled by the
    // epilogue); the shift of each row is its first value (LayerNorm) or 0 (RMSNorm), as the
    // dense v27 stages it
    const A* xp = static_cast<const A*>(p.x);
#pragma unroll
    for (int m = 0; m < MT; ++m) mean[m] = (p.norm == kNormLayer && m < p.M) ? to_f(xp[(int64_t)m * p.K]) : 0.f;
    r.load_norm(p, 0, XRegs<A, MT>::UN, U);
  } else if (p.norm != kNormNone) {
    norm_stats_v3<A, MT>(p, r, xq, s_stat, mean, rstd);
    r.load_norm(p, 0, XRegs<A, MT>::UN, U);  // the rest of chunk 0's (K > 2,048 UN)
  }
  float fsum[MT], fsq[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) fsum[m] = fsq[m] = 0.f;
  quantize_units<A, MT, U, kZip>(p, r, 0, mean, rstd, xq, xsc, fsum, fsq);
  // K > 2,048 U: UR units at a time, each a round trip
#pragma unroll 1
  for (int u0 = U; 64 * u0 < ng; u0 += UR) {
    XRegs<A, MT, UR> q;
    q.load_norm(p, u0);
    q.load_x(p, u0);
    quantize_units<A, MT, UR, kZip>(p, q, u0, mean, rstd, xq, xsc, fsum, fsq);
  }
  if (p.fold) {  // v3.4b: no barrier of its own; the staging's last one publishes them
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      const float ws = warp_sum(fsum[m]), wq = warp_sum(fsq[m]);
      if (lane == 0) reinterpret_cast<float2*>(s_fold)[m * kWarps + warp] = make_float2(ws, wq);
    }
  }
  __syncthreads();
}

// launch bounds: at M <= 4 two blocks' registers fit an SM (<= 128 per thread), this call's and
// the next one's; at M >= 8 the accumulators need more. kZip: v3.3 (MXFP4 only, the header).
template <int T, typename A, int MT, bool kZip = false>
__global__ void __launch_bounds__(kThreads, MT <= 4 ? 2 : 1) gemv_q_kernel(const LinearArgs p) {
  static_assert(!kZip || T == kMXFP4, "v3.3's code order is MXFP4's");
  using TR = Traits<T>;
  constexpr int S = stages(TR::QK, TR::TS, MT), RB = row_buf(TR::QK, TR::TS), BB = batch_blocks(TR::QK, TR::TS);
  constexpr int GPB = TR::QK / 32, BG = batch_groups(TR::QK, TR::TS), PMAX = (max_pieces(TR::QK, TR::TS) + 31) / 32;
  extern __shared__ __align__(16) uint8_t smem[];  // [warps][S][2 rows][RB] ring, x tiles, x scales
  // Two [MT][kWarps] buffers of the staging's partial sums; after the staging's last barrier the
  // same floats hold the K halves' sums (s_split): with p.ksplit = 2 the second half's of each
  // pair, [round parity][pair lane][MT][2]; with p.ksplit = 1 the first half's, [warp][MT][2].
  __shared__ float s_stat[2 * kWarps * MT];
  float* const s_split = s_stat;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(p.w);
  const int nb = p.K / TR::QK, nbatch = (nb + BB - 1) / BB, xt = x_tiles(p.K);
  const int64_t row_bytes = (int64_t)nb * TR::TS, total = (int64_t)p.N * row_bytes;
  uint8_t* ring = smem + (size_t)warp * S * 2 * RB;
  uint8_t* xq = smem + ring_bytes(TR::QK, TR::TS, MT);
  float4* xsc = reinterpret_cast<float4*>(xq + (size_t)MT * xt * kXTile);
  float* s_fold = reinterpret_cast<float*>(xsc + (size_t)MT * xt * 32);  // v3.4b: [MT][kWarps][2]
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  // K halves (p.khalves = 2, a function of the shape only: launch_mt): a row's result is
  // warp_sum over the batches [0, nbatch / 2) plus warp_sum over the rest, whoever computes them.
  //  - p.ksplit = 2 (M = 1): warps w and w + 4 take the same pairs, one half each; part 1 hands
  //    its sums to part 0 through s_split and a named barrier of the two warps, and part 0 adds
  //    them and finishes the pair.
  //  - p.ksplit = 1 (M >= 2, where the grid has half the warps): one warp takes both halves, and
  //    stashes the first half's sums in s_split when it ends.
  // Same per-lane accumulation order and the same two-term sum either way, so a row's output does
  // not depend on its batch.
  // (a row of one batch has no halves whatever the launcher says: part 0's range would be empty)
  const int KH = nbatch >= 2 ? p.khalves : 1, KS = KH == 2 ? p.ksplit : 1;
  const int lanes = kWarps / KS, pl = warp % lanes, part = warp / lanes;
  const int b_lo = part * nbatch / KS, b_hi = (part + 1) * nbatch / KS, b_mid = nbatch / 2;
  const int stride = gridDim.x * lanes;
  using IC = IntCodesMx<T>;

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
    if (++s.b == b_hi) {
      s.b = b_lo;
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
  int rnd = 0;  // pairs this warp has finished (the parity picks the s_split buffer)
  float pb0 = 0.f, pb1 = 0.f;  // v29: the pair's bias, read at this warp's first batch of it (bias_pair)
  // v3.4 (p.fold): a finished pair's two sums through the norm's epilogue. The row constants C, D
  // are read with the bias at the pair's first batch (the dense v27b's fold_pair: not cold at the
  // epilogue). v3.4b: the row statistics from the staging's per-warp sums in shared memory
  // (s_fold, written before its last barrier), added in warp order: the same values whatever M
  // (v3.4 read the row again from global memory at each warp's first finished pair, a chain of
  // dependent L2 loads: measured +2.9% on the 1.5B Q8_0 / MXFP4 steps in session 46).
  float fc0 = 0.f, fc1 = 0.f, fd0 = 0.f, fd1 = 0.f;
  auto fold_sums = [&](int m, float& v0, float& v1) {
    float ts = 0.f, tq = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float2 v = reinterpret_cast<const float2*>(s_fold)[m * kWarps + w];
      ts += v.x;
      tq += v.y;
    }
    float dm, rs;
    XStage<A, MT, kThreads>::stats_of_sums(p, ts, tq, dm, rs);
    v0 = fold_apply(p, v0, dm, rs, fc0, fd0);
    v1 = fold_apply(p, v1, dm, rs, fc1, fd1);  // (0 constants where the pair has one row: never stored)
  };
  auto consume = [&](int st, Cur s) {
    int r0, r1;
    bool has1;
    rows_of(s.pair, r0, r1, has1);
    if (s.b == b_lo && part == 0) {  // (part 1 never finishes a pair)
      bias_pair<A>(p, r0, r1, pb0, pb1);
      if (p.fold) fold_pair(p, r0, r1, fc0, fc1, fd0, fd1);
    }
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
        group_codes<T, true, kZip>(bufa, sa.off + q * TR::TS, j, ca, a0, a1, am);
        group_codes<T, true, kZip>(bufb, sb.off + q * TR::TS, j, cb, b0, b1, bm);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const uint8_t* xp = xq + ((size_t)m * xt + (g >> 5)) * kXTile + lane * 16;  // slot g % 32 == lane
          const uint4 h0 = *reinterpret_cast<const uint4*>(xp);
          const uint4 l0 = *reinterpret_cast<const uint4*>(xp + 512);
          const uint4 h1 = *reinterpret_cast<const uint4*>(xp + 1024);
          const uint4 l1 = *reinterpret_cast<const uint4*>(xp + 1536);
          const float4 xs = xsc[(size_t)m * xt * 32 + g];
          acc0[m] = group_dot<T, IC>(ca, h0, l0, h1, l1, xs, a0, a1, am, acc0[m]);
          acc1[m] = group_dot<T, IC>(cb, h0, l0, h1, l1, xs, b0, b1, bm, acc1[m]);
        }
      }
    }
    // v32 (p.scatter, MT >= 8; the dense GEMV's, linear_common.cuh pair_sums_scatter): the pair's
    // sums reduce-scattered, each lane keeping one with warp_sum's bits, and row 0's lanes finish
    // their batch rows at once (the fold's statistics are per-lane reads of s_fold already)
    if (KS == 1 && KH == 2 && s.b + 1 == b_mid) {  // one warp, both halves: stash the first
      float* hp = s_split + warp * MT * 2;
      if constexpr (MT >= 8) {
        if (p.scatter) {
          const ScatterPair<MT> sp(acc0, acc1, lane);
          if (sp.head) hp[2 * (sp.j % MT) + sp.j / MT] = sp.mine;
#pragma unroll
          for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
          __syncwarp();
          return;
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
        acc0[m] = acc1[m] = 0.f;
        if (lane == 0) {
          hp[2 * m] = v0;
          hp[2 * m + 1] = v1;
        }
      }
      __syncwarp();  // lane 0's stores, for lane m at the pair's end
      return;
    }
    if (s.b + 1 < b_hi) return;  // more batches of this pair follow
    if (KS == 1) {
      const float* hp = s_split + warp * MT * 2;
      if constexpr (MT >= 8) {
        if (p.scatter) {
          const ScatterPair<MT> sp(acc0, acc1, lane);
          const float other = sp.other();  // row 1's sum of the same m
          const int m = sp.j;
          if (lane < 16 && sp.head && m < p.M) {
            float v0 = sp.mine, v1 = other;
            if (KH == 2) {
              v0 = hp[2 * m] + v0;
              v1 = hp[2 * m + 1] + v1;
            }
            if (p.fold) fold_sums(m, v0, v1);
            finish_pair<A>(p, m, s.pair, r0, r1, has1, v0, v1, pb0, pb1);
          }
#pragma unroll
          for (int m2 = 0; m2 < MT; ++m2) acc0[m2] = acc1[m2] = 0.f;
          __syncwarp();  // every lane has read hp before lane 0 stashes the next pair's first half
          return;
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
        if (KH == 2) {
          v0 = hp[2 * m] + v0;
          v1 = hp[2 * m + 1] + v1;
        }
        if (m < p.M) {  // (no break: every m's accumulators are reset below)
          if (p.fold) fold_sums(m, v0, v1);
          if (lane == m) finish_pair<A>(p, m, s.pair, r0, r1, has1, v0, v1, pb0, pb1);
        }
        acc0[m] = acc1[m] = 0.f;
      }
      __syncwarp();  // every lane has read hp before lane 0 stashes the next pair's first half
      return;
    }
    // Two buffers by round parity: part 1 writes round r + 2's sums only after the barrier of
    // round r + 1, which part 0 reaches after reading round r's.
    float* sp = s_split + ((rnd & 1) * (kWarps / 2) + pl) * MT * 2;
    float v0[MT], v1[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      v0[m] = warp_sum(acc0[m]);
      v1[m] = warp_sum(acc1[m]);
      acc0[m] = acc1[m] = 0.f;
      if (part == 1 && lane == 0) {
        sp[2 * m] = v0[m];
        sp[2 * m + 1] = v1[m];
      }
    }
    asm volatile("bar.sync %0, 64;" ::"r"(1 + pl) : "memory");  // ids 1-4; 0 is __syncthreads
    if (part == 0) {  // first half + second half, as the one-warp path adds them
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= p.M) break;
        float t0 = v0[m] + sp[2 * m], t1 = v1[m] + sp[2 * m + 1];
        if (p.fold) fold_sums(m, t0, t1);
        if (lane == m) finish_pair<A>(p, m, s.pair, r0, r1, has1, t0, t1, pb0, pb1);
      }
    }
    ++rnd;
  };

  // Before the wait on the previous kernel: this warp's first S - 1 batches (weights are constant;
  // cp.async touches only this block's shared memory).
  Cur tail{(int)blockIdx.x + (int)gridDim.x * pl, b_lo};
  Cur head = tail;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    issue(s, head);
    head = advance(head);
  }
  XRegs<A, MT> xr;  // this thread's activations and norm weights
  xr.load_norm(p, 0, 0, XRegs<A, MT>::UN);
  pdl_wait();
  pdl_launch_dependents();
  stage_x_v3<A, MT, kZip>(p, xq, xsc, s_stat, s_fold, xr);

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
  // v3.4 where the norm allows it (RMSNorm, or LayerNorm with its row constants; K % 32 == 0
  // always): a choice by shape and arguments only, so a row's bits do not depend on M
  p.fold = g_qgemv_fold && p.norm != kNormNone &&
           (p.norm == kNormRms || (p.fold_c != nullptr && p.fold_d != nullptr));
  const size_t smem = smem_bytes(TR::QK, TR::TS, MT, p.K);
  if (smem > (size_t)kSmemMax) return cudaErrorInvalidValue;
  // v3.3 (qgemv_zip_force): MXFP4 in the nibbles' code order; the same sums, so the same bits
  constexpr bool kHasZip = T == kMXFP4;
  const bool zip = kHasZip && g_qgemv_zip != 0;
  auto kern = zip ? gemv_q_kernel<T, A, MT, kHasZip> : gemv_q_kernel<T, A, MT, false>;
  static bool attr_set[2] = {false, false};  // once per kernel: allow up to kSmemMax of shared
  if (!attr_set[zip]) {                      // memory, and ask for the whole carveout as shared
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemMax);
    if (e == cudaSuccess)  // memory so that a second block (the next call's) fits beside this one
      e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (e != cudaSuccess) return e;
    attr_set[zip] = true;
  }
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  // Blocks per SM: 2 at M = 1, 1 at M >= 2 (there the rest of the SM is for the next call's
  // block, see kRingBudget). At M = 1 two resident blocks measured faster in the decode step
  // (GPT-2 1.5B graph step -2.7% Q8_0, -5.2% MXFP4, -7.0% Q4_K_M-style) though the next call's
  // block then waits for a slot; at M = 4 they measured 1.7x slower (docs/kernels/quant.md,
  // "Two blocks per SM at M = 1"). GPT_ENGINE_QGEMV_BLOCKS_PER_SM=1 keeps one block per SM at
  // every M (read once per process; for same-run A/B measurements).
  static const bool one_per_sm = [] {
    const char* v = std::getenv("GPT_ENGINE_QGEMV_BLOCKS_PER_SM");
    return v != nullptr && v[0] == '1' && v[1] == '\0';
  }();
  const int per_sm = (MT == 1 && !one_per_sm) ? 2 : 1;
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(npairs, (int64_t)num_sms * per_sm));
  // K halves when the pairs fill at most half of the warps of the M = 1 grid and a row has at
  // least two batches (1600x6400: 800 pairs on 2,112 warps): a function of the shape only, so
  // the arithmetic is the same at every M (batch invariance). At M = 1 two warps take a pair,
  // one half each, so the long rows' decode chain is halved; at M >= 2 (one block per SM, half
  // the warps) one warp takes both halves, since two measured slower there (M = 4, 1600x6400:
  // +10-17%). GPT_ENGINE_QGEMV_KSPLIT=1 turns the halves off (read once per process; for
  // same-run A/B runs).
  static const bool no_split = [] {
    const char* v = std::getenv("GPT_ENGINE_QGEMV_KSPLIT");
    return v != nullptr && v[0] == '1' && v[1] == '\0';
  }();
  const int nbatch = (int)((p.K / TR::QK + batch_blocks(TR::QK, TR::TS) - 1) / batch_blocks(TR::QK, TR::TS));
  p.khalves = (!no_split && nbatch >= 2 && (int64_t)npairs * 2 <= (int64_t)num_sms * 2 * kWarps) ? 2 : 1;
  p.ksplit = (p.khalves == 2 && MT == 1) ? 2 : 1;
  p.scatter = MT >= 8 && g_linear_scatter;  // v32's epilogue (linear_scatter_force)
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

// One packed type's launcher for both activation dtypes. Each type's file (linear_q_<type>.cu)
// instantiates it once, so the extension's build compiles the types in parallel: three types in
// one file took ~185 s of the GPU machine's ~225 s build, the longest path.
template <int T>
cudaError_t launch_type(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return adtype == kF16 ? launch_ta<T, __half>(p, num_sms, st) : launch_ta<T, __nv_bfloat16>(p, num_sms, st);
}

}  // namespace
}  // namespace gpte
