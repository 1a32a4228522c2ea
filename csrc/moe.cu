// gpt-oss mixture of experts on the GPU with no host sync (docs/gpt_oss.md, models/gpt_oss.py
// GptOss.moe is the reference). Three kernels, each one launch for all M tokens:
//
// moe_route_kernel: a cluster of min(8, E) blocks per token. Router logits = h W_r^T + b_r in
//   fp32 (W_r [E, C] fp32), the top k (descending, ties to the lower index) and a softmax over
//   those k logits only -> ids [M, k] int32, weights [M, k] fp32. moe_route_v4_kernel (the
//   default where it fits) computes the same bits with every constant load before the PDL wait.
// moe_gate_up_kernel: grid (row tiles of F, M * k). For token m and its j-th expert e, rows r
//   of e's gate and up matrices (MXFP4 [E*F, C/32*17], expert e = rows e*F..) dotted with
//   h[m], plus biases, through gpt-oss's clamped SwiGLU -> act [M, k, F] fp32. Only the
//   chosen experts' bytes are read.
// moe_down_split_kernel (k <= 8): grid (k, row tiles of C, M), one cluster per (tile, token):
//   block j computes expert j's rows, rank 0 sums them (below). moe_down_kernel (k > 8):
//   grid (row tiles of C, M). act[m] (k x F) is staged in shared memory; row c
//   of each chosen expert's down matrix [E*C, F/32*17] dotted with its act row, plus bias,
//   weighted by the routing weight and summed over j = 0..k-1 in order (deterministic), then
//   rounded to the activation dtype and added to the residual when one is given (the model's
//   x + moe(h), rounded as the reference rounds it).
//
// MXFP4 block (docs/mxfp4.md, ggml's block_mxfp4): one E8M0 scale byte e, then 16 bytes whose
// low nibbles are values 0..15 and high nibbles values 16..31, each an E2M1 code. Decoded as
// ggml decodes it: the code's value doubled (integers, table below) times 2^(e - 128) (half
// the E8M0 scale; e < 2 gives fp32 subnormals, as ggml_e8m0_to_fp32_half). fp32 accumulation.
//
// GEMV layout (v2; v1 kept the input in registers, loaded block bytes one by one and walked
// 4 rows per warp one after another: one DRAM round trip per row, ~12 KB in flight per SM,
// and the router one warp-serial dot per expert): a warp computes one row (gate_up: the gate
// and the up row together; down: one row of each chosen expert, all issued at once); lane i owns
// blocks i, i + 32, ... (NBL blocks at most: the input length is at most NBL * 1024). A lane
// loads each of its blocks as the 5 aligned 32-bit words that hold its 17 bytes (rows are not
// 4-byte aligned) and takes the fields with funnel shifts; every load of a row is issued before
// the first product. The input is staged in shared memory as fp32, value j of block b at
// [j][b] (consecutive lanes, consecutive words: no bank conflicts). Per lane and row the
// products are summed in v1's order (block by block, values 0..15 each with its partner 16..31,
// then the block scale), so v1 and v2 give the same sums.
//
// Decode v6 (k <= 8; v3 stays for k > 8 and as the bit-equality reference, moe_ab_force):
// v3's kernels waited, per wave of ~3 resident blocks per SM, for the routing ids, then for the
// weight loads into registers (3 KB per warp), then computed: too few bytes in flight per SM.
// In v6 a block's tile is R = 16 consecutive rows of one expert (its gate and its up rows; down:
// its expert's down rows), ONE contiguous span of 16 x 1,530 = 24,480 bytes at gpt-oss's shape,
// since an expert's rows are consecutive in the stack. Right after the PDL wait one warp reads
// the expert id and starts bulk asynchronous copies (TMA 1-D, cp.async.bulk, completing on an
// mbarrier) of the span's 16-byte-aligned part into shared memory (the few bytes past an unaligned
// tensor begin or end by plain loads: nothing outside the tensor is read); meanwhile every thread
// stages the input; then the block waits on the barrier and computes from shared memory with
// v3's arithmetic in v3's order (warp = row, lane blocks b = lane + 32 i, block_dot, warp_sum):
// the outputs are v3's bit for bit. Sizes (C = F = 2880, k = 4): gate/up 720 blocks of 8 warps,
// each warp two row pairs (one input read serves four dots), 2 x 24.5 KB tiles + 11.5 KB input =
// 60.5 KB of shared memory, 3 blocks per SM = 147 KB of weights in flight per SM against the
// ~64 KB that Little's law asks at ~4 TB/s x ~2 us / 132 SMs; 46 KB left for the down kernel's
// first blocks under PDL. Down: 720 blocks (v3's grid, clusters of k), 24.5 + 11.5 KB, 6 per SM.
// v6.1 (H200, one build, tests/bench/explore_moe_decode.py: 37.30 -> 34.17 us per layer, gpt-oss
// step 2,296.9 -> 2,242.9 us; outputs v6's): the down kernel starts its tile copies before its PDL
// wait (moe_down_v6_kernel, ids_early).
// v7 (moe_ab_force 7; 61 / 6 / 3 select v6.1 / v6 / v3): v6.1 with the inputs staged as
// 16-bit codes and the products in integers (stage_codes, row_block: the packed GEMV's format and
// group_dot); within nmse_moe_v7_vs_v3 of v3, no longer bit-equal. Predicted from the instruction
// count (~2.7 per weight against ~4.3; the PTX of gate/up at NBL = 3 has 1,833 instructions against
// v6's 3,491): gate/up ~22 -> ~15-16 us, down ~15 -> ~11 us per layer.
// v8, tried and not kept (H200, one build, explore_moe_decode.py): gate/up as a persistent grid
// walking a ring of tiles, down in 24-row tiles (one wave); predicted ~13 and ~10-11 us, measured
// 22.04 and 14.07 us per layer against v7's 18.82 and 13.19 (the 20b step 2,220.8 against v7's
// 2,138.6 us, both with routing v3). docs/gpt_oss.md keeps the record.
// v7.1 (moe_ab_force 71; written in session 25, first run in session 27): v7 with each block's weights on two
// barriers: gate/up waits for its gate tile, sums its gate rows, then waits for the up tile; down
// copies its 16 rows as two 8-row halves and sums row w, then row w + 8. Each sum's terms and
// order are v7's (the outputs are v7's bits); the input codes are read once per pass. Why: a v7
// block computes nothing until its last tile byte lands, so at ~5 blocks per SM per wave the
// compute of the first half of the rows could run under the copy of the second. Predicted: 0 to
// -1.5 us per kernel per wave, -1 to -3 us a layer (gate/up 1.36 waves, down 1.09), if the copies
// of one block land in the order issued.
// v7.2 (moe_ab_force 72; session 25, first run in session 27): v7.1 with the input codes staged in the order
// of the weights' nibbles (quantize8_v3<true>), so each qs word decodes without mxfp4_biased8's two
// reordering prmt (mxfp4_biased8_zip, 9 operations for 8 codes against 13; a group's integer sum
// is the same in either order: v7's bits). SASS of gate/up at the 20b shape (cuobjdump 13.5 on
// this build): its dot-product loop 1,309 -> 1,215 instructions, 673 -> 582 on the integer ALU
// pipe (PRMT, LOP3, SHF, IADD3: half rate), 636 -> 633 others. Predicted: gate/up and
// down -5 to -10% beyond v7.1, if the ALU pipe bounds the loop as its counts suggest. Measured in
// the 20b graph step (H100 80GB HBM3, one process each): session 29 v7 2,269.7 us, v7.1 2,275.4,
// v7.2 2,248.7 (-0.9%); session 31 (decode attention v5 on) v7 2,121.2, v7.2 2,098.6 (-1.1%).
// The default since session 31 (v7's bits, test_decode_v7_matches_v3).
#include <cmath>

#include "common.cuh"
#include "launchers.h"
#include "swiglu_oai.cuh"    // gpt-oss's clamped SwiGLU
#include "quant_blocks.cuh"  // e8m0_half (ggml_e8m0_to_fp32_half), shared with the packed GEMV; load_mxfp4_words
#include "tma.cuh"           // mbarrier and bulk-copy wrappers

#include <cooperative_groups.h>

namespace cg = cooperative_groups;

namespace gpte {
namespace {

constexpr int kMoeWarps = 8;
constexpr int kMoeThreads = 32 * kMoeWarps;
constexpr int kGateUpRowsPerBlock = kMoeWarps;   // one gate/up row pair per warp
constexpr int kDownRowsPerWarp = 2;              // each with every chosen expert's row in flight (1 row:
                                                 // 360 blocks, each staging act: 35.8 vs 31.9 us on the H200)
constexpr int kDownRowsPerBlock = kMoeWarps * kDownRowsPerWarp;
constexpr int kDownExpertsInFlight = 4;          // rows of up to 4 experts loaded at once (gpt-oss: k = 4)
constexpr int kBlockBytes = 17;  // MXFP4: scale byte + 16 bytes of nibbles, 32 values

// E2M1 codes to fp16 in registers (v3; v2 looked each code up in a shared-memory table: one
// LDS per weight, which with the input's LDS bound the kernels by shared-memory issue). A code
// s|e1e0|m placed as fp16 bits s at 15 and e1e0m at 11..9 is the fp16 number 2^-14 * E2M1(code)
// (e = 0 gives the fp16 subnormals 0 and 2^-15 for 0 and 0.5, e > 0 the normals), i.e. the
// doubled value (the table's) times 2^-15. Inputs are staged times 2^15 (exact: a power of two;
// the inputs are fp16/bf16 activations or SwiGLU outputs, |act| <= 7 * 8), so each product, and
// so every sum, equals the table version's bit for bit.
constexpr float kInputScale = 32768.f;  // 2^15

// Two codes, at bits 0..3 and 16..19 of c, as the two fp16 halves of a word (then as floats).
__device__ __forceinline__ float2 fp4_pair(uint32_t mag_at9, uint32_t sign_at15) {
  const uint32_t h = (mag_at9 & 0x0E000E00u) | (sign_at15 & 0x80008000u);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// Block b's partial dot: sum over values 0..15 (low nibbles of bytes 1..16) each followed by
// its partner 16 + j (high nibble), times the block scale, added to acc (v1's order). x(j):
// the input value j of this block, times 2^15.
template <typename X>
__device__ __forceinline__ float block_dot(const quant::Mxfp4Words& bw, uintptr_t addr, X x, float acc) {
  const int sh = 8 * (int)(addr & 3);
  const float sc = quant::e8m0_half(__funnelshift_rc(bw.w[0], bw.w[1], sh) & 0xffu);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t q = __funnelshift_rc(bw.w[k], bw.w[k + 1], sh + 8);  // bytes 1 + 4k .. 4 + 4k
    // byte i's low nibble (value 4k + i) and high nibble (value 4k + i + 16), bytes 0/2 and 1/3
    const float2 lo02 = fp4_pair(q << 9, q << 12), lo13 = fp4_pair(q << 1, q << 4);
    const float2 hi02 = fp4_pair(q << 5, q << 8), hi13 = fp4_pair(q >> 3, q);
    s = fmaf(lo02.x, x(4 * k + 0), s);
    s = fmaf(hi02.x, x(4 * k + 16), s);
    s = fmaf(lo13.x, x(4 * k + 1), s);
    s = fmaf(hi13.x, x(4 * k + 17), s);
    s = fmaf(lo02.y, x(4 * k + 2), s);
    s = fmaf(hi02.y, x(4 * k + 18), s);
    s = fmaf(lo13.y, x(4 * k + 3), s);
    s = fmaf(hi13.y, x(4 * k + 19), s);
  }
  return fmaf(sc, s, acc);
}

// Stages row m of the input (n = nblk * 32 values) into xs[j * nblk + b] as fp32 times 2^15.
template <typename S>
__device__ __forceinline__ void stage_input(float* xs, const S* __restrict__ src, int nblk) {
  for (int c = threadIdx.x; c < nblk * 32; c += kMoeThreads)
    xs[(c & 31) * nblk + (c >> 5)] = to_f(src[c]) * kInputScale;
}

__device__ __forceinline__ int clamp_expert(int e, int E) { return e < 0 ? 0 : (e >= E ? E - 1 : e); }

template <typename T, int NBL>
__global__ void __launch_bounds__(kMoeThreads) moe_gate_up_kernel(
    const T* __restrict__ h,            // [M, C]
    const int32_t* __restrict__ ids,    // [M, K]
    const uint8_t* __restrict__ wg,     // [E * F, C / 32 * 17]
    const T* __restrict__ bg,           // [E, F]
    const uint8_t* __restrict__ wu,     // [E * F, C / 32 * 17]
    const T* __restrict__ bu,           // [E, F]
    float* __restrict__ act,            // [M, K, F]
    int K, int E, int F, int C) {
  extern __shared__ float xs[];         // [32][C / 32]
  pdl_wait();  // h and the routing come from the kernels before
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int mj = blockIdx.y, m = mj / K;
  const int e = clamp_expert(ids[mj], E);
  const int nblk = C / 32;
  const int64_t row_bytes = (int64_t)nblk * kBlockBytes;
  const uint8_t* g_end = wg + (int64_t)E * F * row_bytes;
  const uint8_t* u_end = wu + (int64_t)E * F * row_bytes;
  const int r = blockIdx.x * kGateUpRowsPerBlock + warp;
  const int64_t er = (int64_t)e * F + (r < F ? r : F - 1);
  const uint8_t* grow = wg + er * row_bytes;
  const uint8_t* urow = wu + er * row_bytes;
  // every block of both rows in flight before the input is staged
  quant::Mxfp4Words gw[NBL], uw[NBL];
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int b = lane + 32 * i;
    if (b < nblk) {
      gw[i] = quant::load_mxfp4_words(grow + (int64_t)b * kBlockBytes, g_end);
      uw[i] = quant::load_mxfp4_words(urow + (int64_t)b * kBlockBytes, u_end);
    }
  }
  stage_input(xs, h + (int64_t)m * C, nblk);
  __syncthreads();
  if (r >= F) return;
  float ga = 0.f, ua = 0.f;
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int b = lane + 32 * i;
    if (b < nblk) {
      auto x = [&](int j) { return xs[j * nblk + b]; };
      ga = block_dot(gw[i], reinterpret_cast<uintptr_t>(grow + (int64_t)b * kBlockBytes), x, ga);
      ua = block_dot(uw[i], reinterpret_cast<uintptr_t>(urow + (int64_t)b * kBlockBytes), x, ua);
    }
  }
  const float g = warp_sum(ga) + to_f(bg[er]);
  const float u = warp_sum(ua) + to_f(bu[er]);
  if (lane == 0) {
    act[(int64_t)mj * F + r] = swiglu_oai(g, u);
  }
}

// The down output at o (token m, row c: m * C + c) from the weighted sum over the k experts:
// rounded to T, then added to the residual and rounded again when one is given (the model's
// x + moe(h), rounded as the reference rounds it). Both down kernels end with it.
template <typename T>
__device__ __forceinline__ void store_down(T* out, const T* residual, int64_t o, float acc) {
  const T y = from_f<T>(acc);
  out[o] = residual != nullptr ? from_f<T>(to_f(residual[o]) + to_f(y)) : y;
}

template <typename T, int NBL>
__global__ void __launch_bounds__(kMoeThreads) moe_down_kernel(
    const float* __restrict__ act,      // [M, K, F]
    const int32_t* __restrict__ ids,    // [M, K]
    const float* __restrict__ wts,      // [M, K]
    const uint8_t* __restrict__ wd,     // [E * C, F / 32 * 17]
    const T* __restrict__ bd,           // [E, C]
    const T* __restrict__ residual,     // [M, C] or null
    T* __restrict__ out,                // [M, C]
    int K, int E, int F, int C) {
  extern __shared__ float sact[];       // [K][32][F / 32]
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = blockIdx.y;
  const int nblk = F / 32;
  const int64_t row_bytes = (int64_t)nblk * kBlockBytes;
  const uint8_t* d_end = wd + (int64_t)E * C * row_bytes;
  for (int j = 0; j < K; ++j) stage_input(sact + j * F, act + ((int64_t)m * K + j) * F, nblk);
  __syncthreads();
#pragma unroll 1
  for (int t = 0; t < kDownRowsPerWarp; ++t) {
    const int c = blockIdx.x * kDownRowsPerBlock + t * kMoeWarps + warp;
    if (c >= C) break;
    float acc = 0.f;
#pragma unroll 1
    for (int j0 = 0; j0 < K; j0 += kDownExpertsInFlight) {
      quant::Mxfp4Words dw[kDownExpertsInFlight][NBL];
      const uint8_t* rows[kDownExpertsInFlight];
      int64_t ers[kDownExpertsInFlight];
#pragma unroll
      for (int jj = 0; jj < kDownExpertsInFlight; ++jj) {
        const int j = j0 + jj < K ? j0 + jj : K - 1;
        ers[jj] = (int64_t)clamp_expert(ids[m * K + j], E) * C + c;
        rows[jj] = wd + ers[jj] * row_bytes;
#pragma unroll
        for (int i = 0; i < NBL; ++i) {
          const int b = lane + 32 * i;
          if (j0 + jj < K && b < nblk) dw[jj][i] = quant::load_mxfp4_words(rows[jj] + (int64_t)b * kBlockBytes, d_end);
        }
      }
#pragma unroll
      for (int jj = 0; jj < kDownExpertsInFlight; ++jj) {
        const int j = j0 + jj;
        if (j >= K) break;
        const float* xj = sact + j * F;
        float a = 0.f;
#pragma unroll
        for (int i = 0; i < NBL; ++i) {
          const int b = lane + 32 * i;
          if (b < nblk) {
            auto x = [&](int q) { return xj[q * nblk + b]; };
            a = block_dot(dw[jj][i], reinterpret_cast<uintptr_t>(rows[jj] + (int64_t)b * kBlockBytes), x, a);
          }
        }
        // the expert's row plus bias, weighted and summed over j in order (v1's fma chain)
        acc = fmaf(wts[m * K + j], warp_sum(a) + to_f(bd[ers[jj]]), acc);
      }
    }
    if (lane == 0) store_down(out, residual, (int64_t)m * C + c, acc);
  }
}

// Down, one block per (expert j, row tile, token) in a cluster of the k experts' blocks (v3;
// v2 gave each block all k experts of its rows: 180 blocks for gpt-oss's 2880 rows, one or two
// per SM with 8 warps, a tile of 4 x 2880 fp32 to stage, and 0.13 of copy bandwidth). Each
// block stages only its expert's act row, computes its 16 rows (two per warp, both in flight,
// one input read for both) and leaves dot + bias in shared memory; rank 0 of the cluster reads
// the k blocks' values through distributed shared memory and sums them in v2's order (j = 0..k-1,
// the same fma chain), so the result is v2's bit for bit.
constexpr int kMaxClusterExperts = 8;  // the portable cluster size

template <typename T, int NBL>
__global__ void __launch_bounds__(kMoeThreads) moe_down_split_kernel(
    const float* __restrict__ act,      // [M, K, F]
    const int32_t* __restrict__ ids,    // [M, K]
    const float* __restrict__ wts,      // [M, K]
    const uint8_t* __restrict__ wd,     // [E * C, F / 32 * 17]
    const T* __restrict__ bd,           // [E, C]
    const T* __restrict__ residual,     // [M, C] or null
    T* __restrict__ out,                // [M, C]
    int K, int E, int F, int C) {       // grid (K, C / 16, M), cluster (K, 1, 1)
  extern __shared__ float xs[];         // [32][F / 32]: act[m, j] times 2^15
  __shared__ float part[kDownRowsPerBlock];  // this expert's dot + bias per row of the tile
  pdl_wait();
  pdl_launch_dependents();
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = blockIdx.x, m = blockIdx.z;
  const int nblk = F / 32;
  const int64_t row_bytes = (int64_t)nblk * kBlockBytes;
  const uint8_t* d_end = wd + (int64_t)E * C * row_bytes;
  const int e = clamp_expert(ids[m * K + j], E);
  int c[kDownRowsPerWarp];
  const uint8_t* rows[kDownRowsPerWarp];
  quant::Mxfp4Words dw[kDownRowsPerWarp][NBL];
#pragma unroll
  for (int t = 0; t < kDownRowsPerWarp; ++t) {
    c[t] = blockIdx.y * kDownRowsPerBlock + t * kMoeWarps + warp;
    rows[t] = wd + ((int64_t)e * C + (c[t] < C ? c[t] : C - 1)) * row_bytes;
#pragma unroll
    for (int i = 0; i < NBL; ++i) {
      const int b = lane + 32 * i;
      if (b < nblk) dw[t][i] = quant::load_mxfp4_words(rows[t] + (int64_t)b * kBlockBytes, d_end);
    }
  }
  stage_input(xs, act + ((int64_t)m * K + j) * F, nblk);
  __syncthreads();
  float a[kDownRowsPerWarp] = {};
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int b = lane + 32 * i;
    if (b < nblk) {
      auto x = [&](int q) { return xs[q * nblk + b]; };
#pragma unroll
      for (int t = 0; t < kDownRowsPerWarp; ++t)
        a[t] = block_dot(dw[t][i], reinterpret_cast<uintptr_t>(rows[t] + (int64_t)b * kBlockBytes), x, a[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kDownRowsPerWarp; ++t) {
    const float d = warp_sum(a[t]);
    if (lane == 0 && c[t] < C) part[t * kMoeWarps + warp] = d + to_f(bd[(int64_t)e * C + c[t]]);
  }
  cluster.sync();  // every expert's part is written
  if (j == 0 && threadIdx.x < kDownRowsPerBlock) {
    const int r = threadIdx.x;
    const int cc = blockIdx.y * kDownRowsPerBlock + r;
    if (cc < C) {
      float acc = 0.f;
      for (int jj = 0; jj < K; ++jj) acc = fmaf(wts[m * K + jj], cluster.map_shared_rank(part, jj)[r], acc);
      store_down(out, residual, (int64_t)m * C + cc, acc);
    }
  }
  cluster.sync();  // no block leaves while rank 0 still reads its part
}

// ---------------------------------------------------------------------------- decode v6
constexpr int kTileRows = 16;  // rows of one expert per v6 block: 2 per warp
constexpr int kTileSlack = 32; // a tile buffer also holds the span's offset in its first 16-byte
                               // granule and the 3 bytes past the last block's 5th word

// Shared-memory bytes of one tile buffer of `rows` rows of row_bytes (16-byte multiple).
__host__ __device__ constexpr int tile_buf_bytes(int rows, int row_bytes) {
  return (rows * row_bytes + 15) / 16 * 16 + kTileSlack;
}

// v7.1's down tile: two buffers of half a tile (8 rows) each, one after the other.
__host__ __device__ constexpr int down_half_bytes(int row_bytes) { return tile_buf_bytes(kTileRows / 2, row_bytes); }

// The span [s, s + n) of the tensor [begin, end) mapped into a tile buffer: global byte g at
// buf[g - lo], lo = s rounded down to 16 (so a byte's address mod 16 is kept: block_dot's
// funnel shifts read the same fields). [a0, a0 + bytes) is the part one bulk copy moves: 16-byte
// aligned, inside the span's granules and inside the tensor.
struct TileSpan {
  uintptr_t s, lo, a0;
  uint32_t n, bytes;
};

__device__ __forceinline__ TileSpan tile_span(const uint8_t* s, int64_t n, const uint8_t* begin, const uint8_t* end) {
  TileSpan t;
  t.s = reinterpret_cast<uintptr_t>(s);
  t.n = (uint32_t)n;
  t.lo = t.s & ~uintptr_t(15);
  const uintptr_t hi = (t.s + n + 15) & ~uintptr_t(15);
  const uintptr_t b16 = (reinterpret_cast<uintptr_t>(begin) + 15) & ~uintptr_t(15);
  const uintptr_t e16 = reinterpret_cast<uintptr_t>(end) & ~uintptr_t(15);
  t.a0 = t.lo > b16 ? t.lo : b16;
  const uintptr_t a1 = hi < e16 ? hi : e16;
  t.bytes = a1 > t.a0 ? (uint32_t)(a1 - t.a0) : 0u;
  return t;
}

// The span's bytes the bulk copy leaves out (under 16 at each end, and only where the tensor's
// begin or end is not 16-byte aligned), loaded by the lanes of one warp.
__device__ __forceinline__ void tile_edges(uint8_t* buf, const TileSpan& t, int lane) {
  const uintptr_t a1 = t.a0 + t.bytes, se = t.s + t.n;
  const uintptr_t head_end = t.bytes ? (t.a0 < se ? t.a0 : se) : se;  // no copy: every byte here
  for (uintptr_t g = t.s + lane; g < head_end; g += 32) buf[g - t.lo] = __ldg(reinterpret_cast<const uint8_t*>(g));
  if (t.bytes)
    for (uintptr_t g = (a1 > t.s ? a1 : t.s) + lane; g < se; g += 32)
      buf[g - t.lo] = __ldg(reinterpret_cast<const uint8_t*>(g));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// The 17-byte block at buf[q] as the 5 aligned words that hold it (load_mxfp4_words's, from shared memory).
__device__ __forceinline__ quant::Mxfp4Words smem_block(const uint8_t* buf, int q) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(buf + (q & ~3));
  quant::Mxfp4Words r;
#pragma unroll
  for (int k = 0; k < 5; ++k) r.w[k] = w[k];
  return r;
}

// stage_input with each thread's loads all issued before its stores (the same values at the
// same places): the staging overlaps the bulk copies and should not be a chain of L2 trips.
template <int NBL, typename S>
__device__ __forceinline__ void stage_input_batched(float* xs, const S* __restrict__ src, int nblk) {
  constexpr int kPer = NBL * 1024 / kMoeThreads;  // n <= NBL * 1024 values
  const int n = nblk * 32;
  float v[kPer];
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int c = threadIdx.x + u * kMoeThreads;
    v[u] = c < n ? to_f(src[c]) * kInputScale : 0.f;
  }
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int c = threadIdx.x + u * kMoeThreads;
    if (c < n) xs[(c & 31) * nblk + (c >> 5)] = v[u];
  }
}

// ---- v7: the input as 16-bit codes, the products in integers
// The packed GEMV's activation format (csrc/linear_q_impl.cuh v2, which says why 16 bits and not
// llama.cpp's int8: ~3.4e-10 NMSE per product against ~3e-5) and its group_dot (quant_blocks.cuh),
// with mxfp4_biased8's codes, made by its quantizer (quant_blocks.cuh quantize8_v3): per 32-value
// group (one MXFP4 block of the row) d = max|x| / 32767 and q = rint(x * 32767 / max|x|) (the
// scale formed exactly from frexp(max|x|)), |q| <= 32767, stored as byte planes hi = q >> 8 (int8)
// and lo = q & 255, and {d, sum of q over values 0..15, over 16..31}. A group with a non-finite
// value gets d = NaN, so each of its rows' sums is NaN (v6: NaN or inf products, NaN or inf sums). Why:
// v6 spends ~4.3 instructions per weight (E2M1 -> fp16 -> fp32, an FMA, the input loads) and is
// issue-bound at ~0.37 of copy; here ~2.7 (13 operations per 8 codes, 2 dp4a per 4 weights, the
// scale steps; the 80 bytes of x per group shared by the warp's rows), docs/gpt_oss.md.
// Layout (bank-conflict free: lane l reads slot l, consecutive 16-byte pieces): per 32 groups a
// tile of planes [hi 0..15, lo 0..15, hi 16..31, lo 16..31][slot = group % 32][16 B], then the
// slots' {d, sums} as float4.
constexpr int kQPlanes = 4 * 32 * 16;
constexpr int kQTile = kQPlanes + 32 * 16;
__host__ __device__ constexpr int code_tiles_bytes(int nblk) { return (nblk + 31) / 32 * kQTile; }
__device__ __forceinline__ int qplane_off(int g, int plane) { return (g >> 5) * kQTile + (plane * 32 + (g & 31)) * 16; }
__device__ __forceinline__ int qscale_off(int g) { return (g >> 5) * kQTile + kQPlanes + (g & 31) * 16; }

// Stages row src (nblk * 32 values) as codes into xq with the packed GEMV's quantizer
// (quant_blocks.cuh quantize8_v3): warp w takes groups 8 w + lane % 8, then 64 on, ..., each
// with four lanes (l, l ^ 8, l ^ 16, l ^ 24: values 8 p .. 8 p + 7, p = lane / 8). The loop
// bound is the warp's, so every lane takes part in the quantizer's shuffles. (Before: its own
// quantizer, four consecutive lanes per group rounding v * 32767 / max; codes differed from the
// GEMV's in the last bit.) kZip (v7.2): in mxfp4_biased8_zip's order (quantize8_v3<true>).
template <bool kZip, typename S>
__device__ __forceinline__ void stage_codes(uint8_t* xq, const S* __restrict__ src, int nblk) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = lane >> 3;
  for (int g0 = warp * 8; g0 < nblk; g0 += kMoeWarps * 8) {
    const int g = g0 + (lane & 7);
    const bool ok = g < nblk;
    const int gs = ok ? g : 0;
    float f[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] = ok ? to_f(src[gs * 32 + part * 8 + k]) : 0.f;
    uint8_t* const dst = kZip ? xq + qplane_off(gs, 0) : xq + qplane_off(gs, 2 * (part >> 1)) + 8 * (part & 1);
    quant::quantize8_v3<kZip>(f, part, ok, dst, reinterpret_cast<float4*>(xq + qscale_off(gs)));
  }
}

// Group bb's staged codes, loaded once per group and shared by the warp's rows (the compiler did
// not merge the per-row loads: 5 shared loads per row and group in the PTX before they were hoisted).
struct XCodes {
  uint4 h0, l0, h1, l1;
  float4 s;
};
__device__ __forceinline__ XCodes load_codes(const uint8_t* xq, int bb) {
  XCodes x;
  x.h0 = *reinterpret_cast<const uint4*>(xq + qplane_off(bb, 0));
  x.l0 = *reinterpret_cast<const uint4*>(xq + qplane_off(bb, 1));
  x.h1 = *reinterpret_cast<const uint4*>(xq + qplane_off(bb, 2));
  x.l1 = *reinterpret_cast<const uint4*>(xq + qplane_off(bb, 3));
  x.s = *reinterpret_cast<const float4*>(xq + qscale_off(bb));
  return x;
}

// Row r's dot with the staged input: v6's block_dot on fp32 inputs, or v7's group_dot on codes.
// q: the block's byte offset in the tile buffer; bb: the block (= group) index; xc: its codes (v7;
// kZip: v7.2's order, the same sum).
template <bool kInt, bool kZip>
__device__ __forceinline__ float row_block(const uint8_t* buf, int q, int bb, int nblk, const float* xs,
                                           const XCodes& xc, float acc) {
  if constexpr (kInt) {
    uint32_t c[8];
    float s0, s1, mn;
    quant::group_codes<quant::kMXFP4, true, kZip>(buf, q, 0, c, s0, s1, mn);
    return quant::group_dot<quant::kMXFP4, quant::IntCodesMx<quant::kMXFP4>>(c, xc.h0, xc.l0, xc.h1, xc.l1, xc.s, s0,
                                                                             s1, mn, acc);
  } else {
    auto x = [&](int j) { return xs[j * nblk + bb]; };
    return block_dot(smem_block(buf, q), (uintptr_t)q, x, acc);
  }
}

// Shared-memory bytes of the staged input: fp32 [32][nblk] (v6) or the code tiles (v7).
template <bool kInt> __host__ __device__ constexpr int staged_input_bytes(int nblk) {
  return kInt ? code_tiles_bytes(nblk) : nblk * 32 * (int)sizeof(float);
}

// The lane's groups bb = lane, lane + 32, ... below nblk in order, each with its staged codes (v7;
// loaded once for every row that f sums): f(bb, xc).
template <int NBL, bool kInt, typename F>
__device__ __forceinline__ void for_lane_groups(const uint8_t* xq, int nblk, F&& f) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < NBL; ++i) {
    const int bb = lane + 32 * i;
    if (bb < nblk) {
      XCodes xc;
      if constexpr (kInt) xc = load_codes(xq, bb);
      f(bb, xc);
    }
  }
}

// v6 gate/up: grid (F / 16, M * K), 8 warps; warp w computes tile rows w and w + 8 (gate and up).
// kSplit (v7.1): the gate and up tiles complete on two barriers, and each warp sums its gate rows
// as soon as the gate tile is in, then its up rows; the same sums in the same order (bit-equal).
// kZip (v7.2, with kSplit): the input codes in the weights' nibble order (row_block, stage_codes).
template <typename T, int NBL, bool kInt, bool kSplit, bool kZip>
__global__ void __launch_bounds__(kMoeThreads) moe_gate_up_v6_kernel(
    const T* __restrict__ h,            // [M, C]
    const int32_t* __restrict__ ids,    // [M, K]
    const uint8_t* __restrict__ wg,     // [E * F, C / 32 * 17]
    const T* __restrict__ bg,           // [E, F]
    const uint8_t* __restrict__ wu,     // [E * F, C / 32 * 17]
    const T* __restrict__ bu,           // [E, F]
    float* __restrict__ act,            // [M, K, F]
    int K, int E, int F, int C) {
  extern __shared__ __align__(16) uint8_t moe_tiles[];  // gate tile, up tile, then xs [32][C / 32] or the codes
  __shared__ __align__(8) uint64_t bar[kSplit ? 2 : 1];  // [0]: both tiles (kSplit: the gate tile), [1]: the up tile
  pdl_wait();  // h and the routing come from the kernels before
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int mj = blockIdx.y, m = mj / K;
  const int nblk = C / 32;
  const int row_bytes = nblk * kBlockBytes;
  const int buf_bytes = tile_buf_bytes(kTileRows, row_bytes);
  uint8_t* gbuf = moe_tiles;
  uint8_t* ubuf = moe_tiles + buf_bytes;
  float* xs = reinterpret_cast<float*>(moe_tiles + 2 * buf_bytes);
  uint8_t* xq = moe_tiles + 2 * buf_bytes;  // v7: the same place
  const int r0 = blockIdx.x * kTileRows;
  const int rows = F - r0 < kTileRows ? F - r0 : kTileRows;
  const int e = clamp_expert(ids[mj], E);  // one L2 trip, every thread (a broadcast)
  const int64_t n_tensor = (int64_t)E * F * row_bytes;
  const TileSpan gs = tile_span(wg + ((int64_t)e * F + r0) * row_bytes, (int64_t)rows * row_bytes, wg, wg + n_tensor);
  const TileSpan us = tile_span(wu + ((int64_t)e * F + r0) * row_bytes, (int64_t)rows * row_bytes, wu, wu + n_tensor);
  const uint32_t b = smem_addr(&bar[0]), b_up = kSplit ? smem_addr(&bar[kSplit ? 1 : 0]) : b;
  if (warp == 0) {
    if (lane == 0) {
      mbar_init(b, 1);
      if constexpr (kSplit) mbar_init(b_up, 1);
      mbar_init_fence();
      if constexpr (kSplit) {
        mbar_arrive_expect_tx(b, gs.bytes);
        mbar_arrive_expect_tx(b_up, us.bytes);
      } else {
        mbar_arrive_expect_tx(b, gs.bytes + us.bytes);
      }
      if (gs.bytes) bulk_load(smem_addr(gbuf + (gs.a0 - gs.lo)), reinterpret_cast<const void*>(gs.a0), gs.bytes, b);
      if (us.bytes) bulk_load(smem_addr(ubuf + (us.a0 - us.lo)), reinterpret_cast<const void*>(us.a0), us.bytes, b_up);
    }
    tile_edges(gbuf, gs, lane);
    tile_edges(ubuf, us, lane);
  }
  if constexpr (kInt) stage_codes<kZip>(xq, h + (int64_t)m * C, nblk);
  else stage_input_batched<NBL>(xs, h + (int64_t)m * C, nblk);
  __syncthreads();  // xs, the edges and the initialised barriers
  mbar_wait(b, 0);
  const int goff = (int)(gs.s - gs.lo), uoff = (int)(us.s - us.lo);
  int rr[2];
#pragma unroll
  for (int t = 0; t < 2; ++t) rr[t] = min(warp + t * kMoeWarps, rows - 1);
  float ga[2] = {}, ua[2] = {};
  // the warp's rows of one tile (gate: buf = gbuf, up: ubuf) summed into acc over one group
  auto tile_rows = [&](const uint8_t* buf, int off, float* acc, int bb, const XCodes& xc) {
#pragma unroll
    for (int t = 0; t < 2; ++t)
      acc[t] = row_block<kInt, kZip>(buf, off + rr[t] * row_bytes + bb * kBlockBytes, bb, nblk, xs, xc, acc[t]);
  };
  if constexpr (kSplit) {
    // the gate rows while the up tile still arrives, then the up rows: each sum's terms in v7's
    // order; the input codes are loaded twice per group (once per pass)
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) { tile_rows(gbuf, goff, ga, bb, xc); });
    mbar_wait(b_up, 0);
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) { tile_rows(ubuf, uoff, ua, bb, xc); });
  } else {  // both tiles per group, one load of its codes
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) {
      tile_rows(gbuf, goff, ga, bb, xc);
      tile_rows(ubuf, uoff, ua, bb, xc);
    });
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const int r = r0 + warp + t * kMoeWarps;
    const int64_t er = (int64_t)e * F + r;
    const float g = warp_sum(ga[t]);
    const float u = warp_sum(ua[t]);
    if (lane == 0 && warp + t * kMoeWarps < rows) {
      const float gb = g + to_f(bg[er]), ub = u + to_f(bu[er]);
      act[(int64_t)mj * F + r] = swiglu_oai(gb, ub);
    }
  }
}

// v6 down: moe_down_split_kernel's grid and clusters (K, C / 16, M), its expert's 16 rows as one
// bulk-copied tile; warp w computes tile rows w and w + 8 (v3's rows), rank 0 sums as in v3.
// kSplit (v7.1): the tile as two 8-row halves, each in its own buffer (down_half_bytes) on its own
// barrier; each warp sums row w as soon as the first half is in, then row w + 8 (bit-equal).
// kZip (v7.2): as gate/up's.
template <typename T, int NBL, bool kInt, bool kSplit, bool kZip>
__global__ void __launch_bounds__(kMoeThreads) moe_down_v6_kernel(
    const float* __restrict__ act,      // [M, K, F]
    const int32_t* __restrict__ ids,    // [M, K]
    const float* __restrict__ wts,      // [M, K]
    const uint8_t* __restrict__ wd,     // [E * C, F / 32 * 17]
    const T* __restrict__ bd,           // [E, C]
    const T* __restrict__ residual,     // [M, C] or null
    T* __restrict__ out,                // [M, C]
    int K, int E, int F, int C,
    bool ids_early) {                   // ids complete before this grid's wait (v6.1, below)
  extern __shared__ __align__(16) uint8_t moe_tiles[];  // the tile (kSplit: two halves), then xs [32][F / 32] or codes
  __shared__ float part[kDownRowsPerBlock];
  __shared__ __align__(8) uint64_t bar[kSplit ? 2 : 1];  // [0]: the tile (kSplit: rows 0..7), [1]: rows 8..15
  static_assert(kDownRowsPerBlock == kTileRows, "v6 down keeps v3's 16 rows per block");
  static_assert(kDownRowsPerWarp == 2 && kTileRows == 2 * kMoeWarps, "kSplit: one row per warp in each half");
  // v6.1: the tile's bulk copy starts BEFORE griddepcontrol.wait when ids_early is set, i.e. when
  // the launch put the gate/up kernel between the routing and this one: every gate/up block
  // returns from its own wait (the routing grid complete, its writes performed) before it lets
  // this grid start, so the ids are final here; they are read through L2 (ld.global.cg: an L1
  // line from an earlier replay could be stale). Only act, the weights of the sum and the
  // residual come from the gate/up kernel, and they are read after the wait.
  if (!ids_early) pdl_wait();
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = blockIdx.x, m = blockIdx.z;
  const int nblk = F / 32;
  const int row_bytes = nblk * kBlockBytes;
  uint8_t* dbuf = moe_tiles;
  const int tile_bytes = kSplit ? 2 * down_half_bytes(row_bytes) : tile_buf_bytes(kTileRows, row_bytes);
  float* xs = reinterpret_cast<float*>(moe_tiles + tile_bytes);
  uint8_t* xq = moe_tiles + tile_bytes;  // v7: the same place
  const int c0 = blockIdx.y * kTileRows;
  const int rows = C - c0 < kTileRows ? C - c0 : kTileRows;
  const int e = clamp_expert(ids_early ? __ldcg(ids + m * K + j) : ids[m * K + j], E);
  const uint8_t* const tile0 = wd + ((int64_t)e * C + c0) * row_bytes;
  const uint8_t* const wend = wd + (int64_t)E * C * row_bytes;
  // kSplit: rows [0, ra) in dbuf, rows [kMoeWarps, rows) in bbuf (rb of them, possibly none)
  const int ra = kSplit ? min(rows, kMoeWarps) : rows, rb = kSplit ? rows - ra : 0;
  uint8_t* const bbuf = dbuf + down_half_bytes(row_bytes);
  const TileSpan ds = tile_span(tile0, (int64_t)ra * row_bytes, wd, wend);
  const TileSpan ds2 = tile_span(tile0 + (int64_t)ra * row_bytes, (int64_t)rb * row_bytes, wd, wend);
  const uint32_t b = smem_addr(&bar[0]), b2 = kSplit ? smem_addr(&bar[kSplit ? 1 : 0]) : b;
  if (warp == 0) {
    if (lane == 0) {
      mbar_init(b, 1);
      if constexpr (kSplit) mbar_init(b2, 1);
      mbar_init_fence();
      mbar_arrive_expect_tx(b, ds.bytes);
      if (ds.bytes) bulk_load(smem_addr(dbuf + (ds.a0 - ds.lo)), reinterpret_cast<const void*>(ds.a0), ds.bytes, b);
      if constexpr (kSplit) {
        mbar_arrive_expect_tx(b2, ds2.bytes);
        if (ds2.bytes)
          bulk_load(smem_addr(bbuf + (ds2.a0 - ds2.lo)), reinterpret_cast<const void*>(ds2.a0), ds2.bytes, b2);
      }
    }
    tile_edges(dbuf, ds, lane);
    if constexpr (kSplit) tile_edges(bbuf, ds2, lane);
  }
  if (ids_early) pdl_wait();  // act comes from the gate/up kernel
  pdl_launch_dependents();
  if constexpr (kInt) stage_codes<kZip>(xq, act + ((int64_t)m * K + j) * F, nblk);
  else stage_input_batched<NBL>(xs, act + ((int64_t)m * K + j) * F, nblk);
  __syncthreads();
  mbar_wait(b, 0);
  const int off = (int)(ds.s - ds.lo);
  float a[kDownRowsPerWarp] = {};
  // the warp's row t (tile row t * 8 + warp): its buffer, the buffer's span offset and its row
  // there (kSplit: the halves' buffers; a warp past a half's rows sums a row of that half's buffer
  // and drops it, as past the tile's rows below)
  const uint8_t* bufs[kDownRowsPerWarp];
  int offs[kDownRowsPerWarp], rw[kDownRowsPerWarp];
#pragma unroll
  for (int t = 0; t < kDownRowsPerWarp; ++t) {
    bufs[t] = kSplit && t == 1 ? bbuf : dbuf;
    offs[t] = kSplit && t == 1 ? (int)(ds2.s - ds2.lo) : off;
    rw[t] = kSplit ? min(warp, max(t == 0 ? ra : rb, 1) - 1) : min(t * kMoeWarps + warp, rows - 1);
  }
  auto row_t = [&](int t, int bb, const XCodes& xc) {
    a[t] = row_block<kInt, kZip>(bufs[t], offs[t] + rw[t] * row_bytes + bb * kBlockBytes, bb, nblk, xs, xc, a[t]);
  };
  if constexpr (kSplit) {
    // row w of the first half, then (once the second half is in) row w of the second: each sum's
    // terms in v7's order
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) { row_t(0, bb, xc); });
    mbar_wait(b2, 0);
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) { row_t(1, bb, xc); });
  } else {  // both rows per group, one load of its codes
    for_lane_groups<NBL, kInt>(xq, nblk, [&](int bb, const XCodes& xc) {
      row_t(0, bb, xc);
      row_t(1, bb, xc);
    });
  }
#pragma unroll
  for (int t = 0; t < kDownRowsPerWarp; ++t) {
    const float d = warp_sum(a[t]);
    const int c = c0 + t * kMoeWarps + warp;
    if (lane == 0 && t * kMoeWarps + warp < rows) part[t * kMoeWarps + warp] = d + to_f(bd[(int64_t)e * C + c]);
  }
  cluster.sync();  // every expert's part is written
  if (j == 0 && threadIdx.x < kDownRowsPerBlock) {
    const int r = threadIdx.x;
    const int cc = c0 + r;
    if (cc < C) {
      float acc = 0.f;
      for (int jj = 0; jj < K; ++jj) acc = fmaf(wts[m * K + jj], cluster.map_shared_rank(part, jj)[r], acc);
      store_down(out, residual, (int64_t)m * C + cc, acc);
    }
  }
  cluster.sync();  // no block leaves while rank 0 still reads its part
}

constexpr int kRouteWarps = 8;
constexpr int kRouteThreads = 32 * kRouteWarps;
constexpr int kRouteCluster = 8;  // blocks per token (the portable cluster size)
constexpr int kMaxExperts = 256;
constexpr int kMaxTopK = 32;
constexpr int kRouteUnroll = 8;  // float4 router loads per lane in flight
// v4 holds h and the norm weights in registers, kRouteHoldPerThread per thread: C <= 4,096
constexpr int kRouteHoldPerThread = 16;
// v4 keeps a block's router rows in shared memory beside h, at most this much per block: a
// block that asks for less lands beside the kernel before it (PDL) and starts its copies while
// that kernel runs. gpt-oss-20b (E 32, C 2,880: 4 rows a block) needs 57.6 KB; the 120b shape
// (E 128: 16 rows, 196 KB) keeps v3.
constexpr size_t kRouteHoldMaxSmem = 100 * 1024;
// v4 serves decode batches only: at prefill's hundreds of tokens its 57.6 KB blocks would fit 3
// per SM where v3's 11.5 KB blocks fit 8, and every block reads its rows from L2 either way.
constexpr int64_t kRouteHoldMaxTokens = 16;

// One warp's chunk [lo, hi) (float4 units) of a router row dotted with h (fp32, shared memory):
// lane l takes chunks lo + l, lo + l + 32, ..., kRouteUnroll loads in flight. kShared: the row
// is in shared memory (v4), else in global memory (v3).
template <bool kShared>
__device__ __forceinline__ float route_dot4(const float4* w4, const float4* x4, int lo, int hi, int lane) {
  float s = 0.f;
  for (int c0 = lo + lane; c0 < hi; c0 += 32 * kRouteUnroll) {
    float4 wv[kRouteUnroll];
#pragma unroll
    for (int u = 0; u < kRouteUnroll; ++u) {
      const int c = c0 + 32 * u;
      wv[u] = c < hi ? (kShared ? w4[c] : __ldg(w4 + c)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kRouteUnroll; ++u) {
      const int c = c0 + 32 * u;
      if (c < hi) {
        const float4 xv = x4[c];
        s = fmaf(xv.x, wv[u].x, s);
        s = fmaf(xv.y, wv[u].y, s);
        s = fmaf(xv.z, wv[u].z, s);
        s = fmaf(xv.w, wv[u].w, s);
      }
    }
  }
  return s;
}

// The logits of this block's experts e = rank, rank + S, ... written to dst[e] (v3: the block's
// own shared memory; v4: rank 0's, through distributed shared memory). Row i of the block is at
// rows + i * C (kShared: staged in shared memory) or at rows + e * C (the global router). Up to 8
// rows: the block's warps share each row in contiguous chunks, summed in chunk order; more: one
// warp per row.
template <bool kShared>
__device__ __forceinline__ void route_logits(const float* rows, const float* xs, const float* __restrict__ br,
                                             float* dst, float* partial, int E, int C, int S, int rank, bool vec) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ne = (E - rank + S - 1) / S;                    // this block's experts: rank + S * i
  const int wpe = ne >= kRouteWarps ? 1 : kRouteWarps / ne;  // warps per expert row
  // warp -> (expert i of this block, chunk p of its row); with wpe == 1 a warp walks rows i, i + 8, ...
  const int n = vec ? C >> 2 : C;  // row length in load units
  const int chunk = (n + wpe - 1) / wpe;
  for (int i = warp / wpe; i < ne; i += (wpe == 1 ? kRouteWarps : ne)) {
    const int e = rank + S * i;
    const int p = warp % wpe, lo = p * chunk, hi = min(n, lo + chunk);
    const float* w = rows + (int64_t)(kShared ? i : e) * C;
    float s = 0.f;
    if (vec) {
      s = route_dot4<kShared>(reinterpret_cast<const float4*>(w), reinterpret_cast<const float4*>(xs), lo, hi, lane);
    } else {
      for (int c = lo + lane; c < hi; c += 32) s = fmaf(xs[c], kShared ? w[c] : __ldg(w + c), s);
    }
    s = warp_sum(s);
    if (wpe == 1) {
      if (lane == 0) dst[e] = s + br[e];
    } else if (lane == 0) {
      partial[warp] = s;
    }
  }
  if (wpe > 1) {
    __syncthreads();
    if (threadIdx.x < ne) {  // the row's chunks summed in order
      const int i = threadIdx.x, e = rank + S * i;
      float s = 0.f;
      for (int p = 0; p < wpe; ++p) s += partial[i * wpe + p];
      dst[e] = s + br[e];
    }
  }
}

// rsqrt(mean(x^2) + eps) of the block's row from each thread's sum of squares `ss` (warp sums,
// then the warps' in warp order: every block of a cluster gets the same bits). Ends with a block
// barrier (partial is free again).
__device__ __forceinline__ float route_norm_scale(float ss, float* partial, int C, float eps) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  ss = warp_sum(ss);
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kRouteWarps; ++w) total += partial[w];
  const float r = rsqrtf(total / (float)C + eps);
  __syncthreads();  // partial is reused after
  return r;
}

// Warp 0 of rank 0, the E logits in its shared memory: the top K by K rounds of a warp arg-max
// with the serial scan's result (descending, ties to the lower index, NaN logits never win unless
// the first untaken one is NaN: then it stands), and a softmax over those K in choice order ->
// ids_m [K], wts_m [K].
__device__ __forceinline__ void route_top_k(const float* logits, int E, int K, int32_t* __restrict__ ids_m,
                                            float* __restrict__ wts_m) {
  const int lane = threadIdx.x & 31;
  uint32_t taken[kMaxExperts / 32] = {};  // the same in every lane
  int sel = 0;      // lane j < K: the j-th choice
  float top = 0.f;  // and its logit
  for (int j = 0; j < K; ++j) {
    int first = 0;  // the lowest untaken expert (K <= E: one exists)
    for (int wd = 0; wd < kMaxExperts / 32; ++wd) {
      if (~taken[wd] != 0u) {
        first = 32 * wd + __ffs(~taken[wd]) - 1;
        break;
      }
    }
    int best = first;
    float bv = logits[first];
    if (!isnan(bv)) {
      // lane's best non-NaN untaken logit (ties to the lower index), then the warp's
      for (int e = lane; e < E; e += 32) {
        const float v = logits[e];
        if (taken[e >> 5] >> (e & 31) & 1u || isnan(v)) continue;
        if (v > bv || (v == bv && e < best)) {
          bv = v;
          best = e;
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int ob = __shfl_xor_sync(0xffffffffu, best, o);
        if (ov > bv || (ov == bv && ob < best)) {
          bv = ov;
          best = ob;
        }
      }
    }
    taken[best >> 5] |= 1u << (best & 31);
    if (lane == j) {
      sel = best;
      top = bv;
    }
  }
  // softmax over the k chosen in choice order (top[0] is the largest), as the serial v1 did
  const float top0 = __shfl_sync(0xffffffffu, top, 0);
  float sum = 0.f;
  for (int j = 0; j < K; ++j) sum += expf(__shfl_sync(0xffffffffu, top, j) - top0);
  if (lane < K) {
    ids_m[lane] = sel;
    wts_m[lane] = expf(top - top0) / sum;
  }
}

// Router logits of token m by a cluster of S = min(8, E) blocks (v3; v2 gave each token one
// block of 32 warps: the E x C fp32 router, 368 KB for gpt-oss, streamed through one SM's L2
// port, ~12 us per call). Block r of the cluster stages h[m] (normalising it first when asked:
// each block computes the same statistics, rank 0 writes h_out), computes the logits of experts
// r, r + S, ... (route_logits) with float4 loads, kRouteUnroll in flight per lane, and keeps them
// in its shared memory. Rank 0 then gathers the E logits through distributed shared memory and
// takes the top k by warp 0 (route_top_k).
template <typename T>
__global__ void __launch_bounds__(kRouteThreads) moe_route_kernel(
    const T* __restrict__ h,            // [M, C]
    const float* __restrict__ wr,       // [E, C]
    const float* __restrict__ br,       // [E]
    int32_t* __restrict__ ids,          // [M, K]
    float* __restrict__ wts,            // [M, K]
    int E, int C, int K,
    bool vec,                           // C % 4 == 0 and wr 16-byte aligned: float4 loads
    const float* __restrict__ norm_w,   // [C] or null: h is first RMS-normalised (fp32, rounded to T)
    float eps,
    T* __restrict__ h_out) {            // [M, C] the normalised h (with norm_w); grid (M, S), cluster (1, S, 1)
  extern __shared__ __align__(16) float xs_route[];  // [C]
  __shared__ float logits[kMaxExperts];  // this block's experts' logits at [e]; rank 0: then all E
  __shared__ float partial[kRouteWarps];
  cg::cluster_group cluster = cg::this_cluster();
  const int S = gridDim.y, rank = blockIdx.y, m = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ne = (E - rank + S - 1) / S;  // this block's experts: rank + S * i
  // this block's router rows asked into L2 while the kernel before still runs (PDL): they are
  // constant, and the loads after the wait then come from L2, not DRAM
  for (int i = 0; i < ne; ++i) {
    const char* w = reinterpret_cast<const char*>(wr + (int64_t)(rank + S * i) * C);
    for (int64_t o = (int64_t)threadIdx.x * 128; o < (int64_t)C * 4; o += (int64_t)kRouteThreads * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(w + o));
  }
  pdl_wait();
  pdl_launch_dependents();
  const T* x = h + (int64_t)m * C;
  for (int c = threadIdx.x; c < C; c += kRouteThreads) xs_route[c] = to_f(x[c]);
  __syncthreads();
  if (norm_w != nullptr) {
    // gpt-oss's post-attention RMSNorm as the model's reference runs it (F.rms_norm on the fp32
    // row: x * rsqrt(mean(x^2) + eps) * w, rounded once to T); the router then reads the rounded h
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += kRouteThreads) ss = fmaf(xs_route[c], xs_route[c], ss);
    const float r = route_norm_scale(ss, partial, C, eps);
    for (int c = threadIdx.x; c < C; c += kRouteThreads) {
      const T v = from_f<T>(xs_route[c] * r * norm_w[c]);
      if (rank == 0) h_out[(int64_t)m * C + c] = v;
      xs_route[c] = to_f(v);
    }
    __syncthreads();
  }
  route_logits<false>(wr, xs_route, br, logits, partial, E, C, S, rank, vec);
  cluster.sync();  // every block's logits are in its shared memory
  if (rank == 0 && warp == 0) {
    for (int e = lane; e < E; e += 32)
      if (e % S != 0) logits[e] = cluster.map_shared_rank(logits, e % S)[e];
  }
  cluster.sync();  // rank 0 has read them: the others may leave
  if (rank != 0 || warp != 0) return;
  __syncwarp();
  route_top_k(logits, E, K, ids + (int64_t)m * K, wts + (int64_t)m * K);
}

// The cluster barrier in its two halves (PTX ISA: barrier.cluster). A thread alternates arrive
// and wait; a thread that exits counts as arrived.
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_release() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait_acquire() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }

// v4 (the default where it applies: at most kRouteHoldMaxTokens tokens, C % 4 == 0, C <= 4,096, the
// router 16-byte aligned, the block's rows within kRouteHoldMaxSmem). v3's chain after the PDL wait
// was h, the norm weights (loaded only then, from DRAM), two rounds of router loads from L2, two
// full cluster barriers around a pull of the logits, then the top k: 9.9 us a layer in the 20b step
// without PDL. v4 does every constant load before the wait: the block's router rows bulk-copied
// into its shared memory (one mbarrier), the norm weights into registers; after it, h comes into
// registers (the norm statistics from there), the dot products read shared memory only, and each
// block pushes its logits into rank 0's shared memory, so one barrier phase (release / acquire)
// replaces the two barriers and the pull (a first phase, arrived at the start and waited on before
// the push, makes sure rank 0 has started). The same arithmetic in the same order as v3
// (route_logits, route_norm_scale, route_top_k): the same bits. Predicted from the chain: the norm
// weights' DRAM round trip, the two rounds of router loads and one cluster barrier with its pull
// leave it, ~2.5-3.5 us of 9.9; in the PDL step -2 to -3 us a layer (-50 to -70 us at gpt-oss-20b).
// Measured (H200, one build, explore_decode_step.py's MOE_VERSIONS A/B, the 20b step with the
// experts of the v8 trial): 2,220.8 us with v3, 2,125.2 with v4, -96 us (-4 us in each of the 24
// layers), more than predicted.
// (kRouteThreads, 1): without the minimum, ptxas kept the kernel at 64 registers and spilled 8
// bytes (h and the norm weights alone are 32 registers a thread); it takes 71-79 with it.
template <typename T>
__global__ void __launch_bounds__(kRouteThreads, 1) moe_route_v4_kernel(
    const T* __restrict__ h,            // [M, C]
    const float* __restrict__ wr,       // [E, C], 16-byte aligned, C % 4 == 0
    const float* __restrict__ br,       // [E]
    int32_t* __restrict__ ids,          // [M, K]
    float* __restrict__ wts,            // [M, K]
    int E, int C, int K,
    const float* __restrict__ norm_w,   // [C] or null: h is first RMS-normalised (fp32, rounded to T)
    float eps,
    T* __restrict__ h_out) {            // [M, C] the normalised h (with norm_w); grid (M, S), cluster (1, S, 1)
  extern __shared__ __align__(16) float xs_route[];  // [C] h as fp32, then this block's router rows [ne][C]
  __shared__ float logits[kMaxExperts];  // rank 0: every block's logits, pushed
  __shared__ float partial[kRouteWarps];
  __shared__ __align__(8) uint64_t rows_bar;
  cg::cluster_group cluster = cg::this_cluster();
  const int S = gridDim.y, rank = blockIdx.y, m = blockIdx.x;
  const int warp = threadIdx.x >> 5;
  const int ne = (E - rank + S - 1) / S;  // this block's experts: rank + S * i
  float* rows = xs_route + C;
  cluster_arrive_relaxed();  // phase 1: this block has started
  if (threadIdx.x == 0) {
    const uint32_t b = smem_addr(&rows_bar);
    mbar_init(b, 1);
    mbar_init_fence();
    mbar_arrive_expect_tx(b, (uint32_t)ne * (uint32_t)C * 4u);
    for (int i = 0; i < ne; ++i)
      bulk_load(smem_addr(rows + (int64_t)i * C), wr + (int64_t)(rank + S * i) * C, (uint32_t)C * 4u, b);
  }
  float nw[kRouteHoldPerThread];
  if (norm_w != nullptr) {
#pragma unroll
    for (int i = 0; i < kRouteHoldPerThread; ++i) {
      const int c = threadIdx.x + i * kRouteThreads;
      nw[i] = c < C ? __ldg(norm_w + c) : 0.f;
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  const T* x = h + (int64_t)m * C;
  float xv[kRouteHoldPerThread];
#pragma unroll
  for (int i = 0; i < kRouteHoldPerThread; ++i) {
    const int c = threadIdx.x + i * kRouteThreads;
    xv[i] = c < C ? to_f(x[c]) : 0.f;
  }
  if (norm_w != nullptr) {
    float ss = 0.f;  // v3's order: c = thread, + kRouteThreads, ...
#pragma unroll
    for (int i = 0; i < kRouteHoldPerThread; ++i)
      if (threadIdx.x + i * kRouteThreads < C) ss = fmaf(xv[i], xv[i], ss);
    const float r = route_norm_scale(ss, partial, C, eps);
#pragma unroll
    for (int i = 0; i < kRouteHoldPerThread; ++i) {
      const int c = threadIdx.x + i * kRouteThreads;
      if (c < C) {
        const T v = from_f<T>(xv[i] * r * nw[i]);
        if (rank == 0) h_out[(int64_t)m * C + c] = v;
        xs_route[c] = to_f(v);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kRouteHoldPerThread; ++i) {
      const int c = threadIdx.x + i * kRouteThreads;
      if (c < C) xs_route[c] = xv[i];
    }
  }
  __syncthreads();  // xs_route, and rows_bar initialised
  mbar_wait(smem_addr(&rows_bar), 0);
  cluster_wait_acquire();  // phase 1 complete: every block (rank 0 too) has started
  route_logits<true>(rows, xs_route, br, cluster.map_shared_rank(logits, 0), partial, E, C, S, rank, true);
  cluster_arrive_release();  // phase 2: this thread's logits are in rank 0's shared memory
  if (rank != 0 || warp != 0) return;
  cluster_wait_acquire();  // every block's
  __syncwarp();
  route_top_k(logits, E, K, ids + (int64_t)m * K, wts + (int64_t)m * K);
}

// Sets a kernel's dynamic shared-memory limit once it asks for more than the default 48 KB
// (`configured`: what was set so far for that kernel).
template <typename... KArgs>
cudaError_t allow_smem(void (*kernel)(KArgs...), size_t smem, size_t& configured) {
  if (smem <= configured) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e == cudaSuccess) configured = smem;
  return e;
}

// 0: the default, v7.2 (v7.1 with the codes in the weights' nibble order); 7: v7 (v6.1 with the
// inputs as 16-bit codes and integer products); 71: v7.1 (v7 with each tile on two barriers, csrc
// header); 61: v6.1 (v6 with the down tiles' copies started before the wait); 6: v6; 3: v3;
// forced by moe_ab_force (the tests' equality checks and the decode benches).
int g_moe_force = 0;
// 0: both expert kernels; 1: only gate/up, 2: only down (moe_ab_force, the bench's per-kernel
// timings: the kernel left out leaves its output as it was).
int g_moe_parts = 0;

// 0: the routing kernel v4 where it applies (launch_moe_route says where), else v3; 3: v3
// everywhere; forced by moe_route_ab_force (the tests' equality check and the decode benches).
int g_route_force = 0;

bool moe_v6_selected() { return g_moe_force != 3; }

template <typename T, int NBL, bool kInt, bool kSplit, bool kZip>
cudaError_t launch_experts_v6(const MoeArgs& a, cudaStream_t st) {
  const int gate_rb = (int)(a.C / 32 * kBlockBytes), down_rb = (int)(a.F / 32 * kBlockBytes);
  const size_t smem1 = 2 * (size_t)tile_buf_bytes(kTileRows, gate_rb) + (size_t)staged_input_bytes<kInt>((int)(a.C / 32));
  static size_t configured1 = 48 * 1024;
  cudaError_t e = allow_smem(moe_gate_up_v6_kernel<T, NBL, kInt, kSplit, kZip>, smem1, configured1);
  if (e != cudaSuccess) return e;
  const dim3 g1((unsigned)ceil_div(a.F, kTileRows), (unsigned)(a.M * a.K));
  if (g_moe_parts != 2)
    e = launch_pdl(moe_gate_up_v6_kernel<T, NBL, kInt, kSplit, kZip>, g1, dim3(kMoeThreads), smem1, st,
                   (const T*)a.h, a.ids, a.gate, (const T*)a.gate_bias, a.up, (const T*)a.up_bias, a.act, (int)a.K,
                   (int)a.E, (int)a.F, (int)a.C);
  if (e != cudaSuccess || g_moe_parts == 1) return e;
  const size_t tile2 = kSplit ? 2 * (size_t)down_half_bytes(down_rb) : (size_t)tile_buf_bytes(kTileRows, down_rb);
  const size_t smem2 = tile2 + (size_t)staged_input_bytes<kInt>((int)(a.F / 32));
  static size_t configured2 = 48 * 1024;
  e = allow_smem(moe_down_v6_kernel<T, NBL, kInt, kSplit, kZip>, smem2, configured2);
  if (e != cudaSuccess) return e;
  const dim3 g2((unsigned)a.K, (unsigned)ceil_div(a.C, kTileRows), (unsigned)a.M);
  return launch_pdl_cluster(moe_down_v6_kernel<T, NBL, kInt, kSplit, kZip>, g2, dim3(kMoeThreads), smem2, st,
                            dim3((unsigned)a.K, 1, 1), (const float*)a.act, a.ids, (const float*)a.weights, a.down,
                            (const T*)a.down_bias, (const T*)a.residual, (T*)a.out, (int)a.K, (int)a.E, (int)a.F,
                            (int)a.C,
                            /*ids_early=*/g_moe_parts == 0 &&
                                (g_moe_force == 0 || g_moe_force == 7 || g_moe_force == 61 || g_moe_force == 71));
}

template <typename T, int NBL>
cudaError_t launch_experts(const MoeArgs& a, cudaStream_t st) {
  // v6 for the split down kernel's k (its clusters); more experts: v3's kernels
  if (a.K <= kMaxClusterExperts && moe_v6_selected()) {
    if (g_moe_force == 0) return launch_experts_v6<T, NBL, true, true, true>(a, st);  // v7.2
    if (g_moe_force == 7) return launch_experts_v6<T, NBL, true, false, false>(a, st);
    if (g_moe_force == 71) return launch_experts_v6<T, NBL, true, true, false>(a, st);
    return launch_experts_v6<T, NBL, false, false, false>(a, st);
  }
  const dim3 g1((unsigned)ceil_div(a.F, kGateUpRowsPerBlock), (unsigned)(a.M * a.K));
  cudaError_t e = cudaSuccess;
  if (g_moe_parts != 2)
    e = launch_pdl(moe_gate_up_kernel<T, NBL>, g1, dim3(kMoeThreads), (size_t)a.C * sizeof(float), st, (const T*)a.h,
                   a.ids, a.gate, (const T*)a.gate_bias, a.up, (const T*)a.up_bias, a.act, (int)a.K, (int)a.E,
                   (int)a.F, (int)a.C);
  if (e != cudaSuccess || g_moe_parts == 1) return e;
  if (a.K <= kMaxClusterExperts) {
    const dim3 g2((unsigned)a.K, (unsigned)ceil_div(a.C, kDownRowsPerBlock), (unsigned)a.M);
    return launch_pdl_cluster(moe_down_split_kernel<T, NBL>, g2, dim3(kMoeThreads), (size_t)a.F * sizeof(float),
                              st, dim3((unsigned)a.K, 1, 1), (const float*)a.act, a.ids, (const float*)a.weights, a.down,
                              (const T*)a.down_bias, (const T*)a.residual, (T*)a.out, (int)a.K, (int)a.E, (int)a.F,
                              (int)a.C);
  }
  const size_t smem = moe_down_smem_bytes(a.K, a.F);
  static size_t configured = 0;
  if (smem > configured) {
    e = cudaFuncSetAttribute(moe_down_kernel<T, NBL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    configured = smem;
  }
  const dim3 g2((unsigned)ceil_div(a.C, kDownRowsPerBlock), (unsigned)a.M);
  return launch_pdl(moe_down_kernel<T, NBL>, g2, dim3(kMoeThreads), smem, st, (const float*)a.act, a.ids,
                    (const float*)a.weights, a.down, (const T*)a.down_bias, (const T*)a.residual, (T*)a.out,
                    (int)a.K, (int)a.E, (int)a.F, (int)a.C);
}

template <typename T>
cudaError_t dispatch_nbl(const MoeArgs& a, cudaStream_t st) {
  // one NBL for both kernels: enough blocks per lane for the longer of C and F
  switch (moe_blocks_per_lane(a.C > a.F ? a.C : a.F)) {
    case 1: return launch_experts<T, 1>(a, st);
    case 2: return launch_experts<T, 2>(a, st);
    case 3: return launch_experts<T, 3>(a, st);
    case 4: return launch_experts<T, 4>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int moe_ab_force(int64_t version, int64_t parts) {
  if (version == 0 || version == 72) g_moe_force = 0;
  if (version == 3 || version == 6 || version == 61 || version == 7 || version == 71) g_moe_force = (int)version;
  if (parts >= 0 && parts <= 2) g_moe_parts = (int)parts;
  return g_moe_force == 0 ? 72 : g_moe_force;
}

// v4's shared memory: h, then rank 0's ceil(E / S) router rows (the most any block holds).
static size_t route_v4_smem(int64_t E, int64_t C) {
  return (size_t)(1 + ceil_div(E, std::min<int64_t>(kRouteCluster, E))) * (size_t)C * sizeof(float);
}

// Whether launch_moe_route runs v4 for M tokens of width C over E experts (aligned: the router is
// 16-byte aligned): every condition of the rule in one place.
static bool route_v4_fits(int64_t E, int64_t C, int64_t M, bool aligned) {
  return g_route_force != 3 && aligned && M <= kRouteHoldMaxTokens && E >= 1 && C % 4 == 0 &&
         C <= (int64_t)kRouteThreads * kRouteHoldPerThread && route_v4_smem(E, C) <= kRouteHoldMaxSmem;
}

// (a decode call: one token, an aligned router; the tests ask it whether a case runs v4)
int moe_route_version(int64_t E, int64_t C) { return route_v4_fits(E, C, 1, true) ? 4 : 3; }

int moe_route_ab_force(int64_t version) {
  if (version == 0 || version == 4) g_route_force = 0;
  if (version == 3) g_route_force = 3;
  return g_route_force == 0 ? 4 : 3;
}

int moe_blocks_per_lane(int64_t n) { return (int)ceil_div(ceil_div(n, 32), 32); }

size_t moe_down_smem_bytes(int64_t K, int64_t F) { return (size_t)K * F * sizeof(float); }

cudaError_t launch_moe_route(int dtype, const void* h, const float* router, const float* router_bias, int32_t* ids,
                             float* weights, int64_t M, int64_t E, int64_t C, int64_t K, const float* norm_w,
                             float eps, void* h_out, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  if (E < 1 || E > kMaxExperts || K < 1 || K > kMaxTopK || K > E || M > INT32_MAX || (norm_w && !h_out))
    return cudaErrorInvalidValue;
  const size_t smem = (size_t)C * sizeof(float);  // h[m] staged as fp32
  if (smem > kMoeRouteMaxSmem) return cudaErrorInvalidValue;
  const bool vec = C % 4 == 0 && aligned16(router);
  const unsigned S = (unsigned)std::min<int64_t>(kRouteCluster, E);
  const size_t smem4 = route_v4_smem(E, C);
  const bool v4 = route_v4_fits(E, C, M, vec);
  GPTE_DISPATCH(dtype, T, {
    if (v4) {
      static size_t configured4 = 48 * 1024;
      const cudaError_t e = allow_smem(moe_route_v4_kernel<T>, smem4, configured4);
      if (e != cudaSuccess) return e;
      return launch_pdl_cluster(moe_route_v4_kernel<T>, dim3((unsigned)M, S), dim3(kRouteThreads), smem4, stream,
                                dim3(1, S, 1), (const T*)h, router, router_bias, ids, weights, (int)E, (int)C, (int)K,
                                norm_w, eps, (T*)h_out);
    }
    static size_t configured = 48 * 1024;
    const cudaError_t e = allow_smem(moe_route_kernel<T>, smem, configured);
    if (e != cudaSuccess) return e;
    return launch_pdl_cluster(moe_route_kernel<T>, dim3((unsigned)M, S), dim3(kRouteThreads), smem, stream, dim3(1, S, 1),
                              (const T*)h, router, router_bias, ids, weights, (int)E, (int)C, (int)K, vec, norm_w,
                              eps, (T*)h_out);
  });
  return cudaErrorInvalidValue;
}

cudaError_t launch_moe_experts(int dtype, const MoeArgs& a, cudaStream_t stream) {
  if (a.M == 0) return cudaSuccess;
  if (a.C % 32 || a.F % 32 || a.C <= 0 || a.F <= 0 || a.E < 1 || a.K < 1 || a.M * a.K > 65535 ||
      moe_blocks_per_lane(a.C > a.F ? a.C : a.F) > kMoeMaxBlocksPerLane)
    return cudaErrorInvalidValue;
  if (dtype == kF16) return dispatch_nbl<__half>(a, stream);
  if (dtype == kBF16) return dispatch_nbl<__nv_bfloat16>(a, stream);
  if (dtype == kF32) return dispatch_nbl<float>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gpte
