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
// v6 (gemv_pipe_kernel below): long rows (K >= 4096) stream through a cp.async shared-memory
// ring instead; v4 (K split over warps) and v5 (two batches in registers) were slower and are
// gone (docs/kernels/decode.md has each version's numbers).
// The kernels and their launchers live in this header; each (weight, activation) dtype pair's
// instantiations (launch_wa) are compiled in a file of their own (linear_f16.cu for f16
// activations, linear_f16_bf16.cu for bf16; likewise f32 and bf16 weights), so the extension's
// build compiles them in parallel (one file took ~137 s of the GPU machine's ~225 s build), and
// linear.cu checks the arguments and dispatches.
#pragma once
#include <cmath>

#include "linear_common.cuh"
#include "tma.cuh"

namespace gpte {
extern int g_linear_stats_one_pass;  // linear.cu: linear_stats_force's setting (v23's one pass: 1)
extern int g_linear_fold;  // linear.cu: linear_fold_force's setting (v27's fold: 1)
extern int g_linear_scatter;  // linear.cu: linear_scatter_force's setting (v32's epilogue: 1)
extern int g_linear_ring_mode;  // linear.cu: linear_ring_force's setting (one for every weight dtype's file)
namespace {
using namespace linear_detail;

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

// v32 (p.scatter, MT >= 8; linear_common.cuh pair_sums_scatter): a finished pair's 2 x MT sums
// reduce-scattered, then lane m of row 0's lanes (m < M) finishes batch row m with its row-1 sum
// from lane m + 16, all such lanes at once: one inlined finish_pair instead of MT. The fold's row
// statistics come from shared memory (s_fdm / s_frs: the block's, v31), since m differs by lane.
// read_bias: the ring kernel reads the bias in the writing lanes (v29b); v3 has b0 / b1 already.
template <typename A, int MT, bool Fold>
__device__ __forceinline__ void finish_pair_scatter(const LinearArgs& p, int pair, int r0, int r1, bool has1,
                                                    const float (&acc0)[MT], const float (&acc1)[MT],
                                                    const float* s_fdm, const float* s_frs, float fc0, float fc1,
                                                    float fd0, float fd1, bool read_bias, float b0, float b1,
                                                    int lane) {
  const ScatterPair<MT> sp(acc0, acc1, lane);
  const float other = sp.other();  // row 1's sum of the same m
  const int m = sp.j;
  if (lane < 16 && sp.head && m < p.M) {
    float v0 = sp.mine, v1 = other;
    if constexpr (Fold) {
      v0 = fold_apply(p, v0, s_fdm[m], s_frs[m], fc0, fd0);
      if (has1) v1 = fold_apply(p, v1, s_fdm[m], s_frs[m], fc1, fd1);
    }
    if (read_bias) bias_pair<A>(p, r0, r1, b0, b1);
    finish_pair<A>(p, m, pair, r0, r1, has1, v0, v1, b0, b1);
  }
}

template <typename W> __device__ __forceinline__ void unpack16(const uint4& r, float* f);
template <> __device__ __forceinline__ void unpack16<float>(const uint4& r, float* f) {
  f[0] = __uint_as_float(r.x);
  f[1] = __uint_as_float(r.y);
  f[2] = __uint_as_float(r.z);
  f[3] = __uint_as_float(r.w);
}
template <> __device__ __forceinline__ void unpack16<__half>(const uint4& r, float* f) { unpack8<__half>(r, f); }
template <> __device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& r, float* f) {
  unpack8<__nv_bfloat16>(r, f);
}

// Blocks per SM: 4 at M = 1 (<= 128 registers, 16 warps: session 9), else 3 (<= 168 registers).
template <int MT> constexpr int kGemvBlocksPerSm = MT == 1 ? 4 : 3;
// v19 (M = 1 only, UW = 12): 12 chunks per row per lane in flight instead of 8, so that rows of
// 257-384 chunks (fp16 / bf16 K in (2048, 3072]: gpt-oss's 2,880) are one batch per pair instead
// of two dependent ones; 2 x 12 x 16 bytes of weights in registers per lane, hence 3 blocks per
// SM (<= 168 registers). Each lane still takes chunks lane, lane + 32, ... in increasing order, so
// the sums are v3's (and the ring kernel's) bit for bit.
template <int MT, int UW> constexpr int gemv_blocks_per_sm() { return UW == 12 ? 3 : kGemvBlocksPerSm<MT>; }

template <typename W, typename A, int MT, int UW = 0, bool Fold = false>
__global__ void __launch_bounds__(kThreads, gemv_blocks_per_sm<MT, UW>()) gemv_kernel(const LinearArgs p) {
  static_assert(UW == 0 || (UW == 12 && MT == 1), "the 12-chunk batch is built for M = 1 only");
  constexpr int CH = 16 / sizeof(W);                      // weight elements per 16-byte load
  constexpr int U = UW ? UW : (MT >= 8 ? 2 : (MT >= 4 ? 4 : 8));  // chunks per row in flight per lane
  extern __shared__ float xs[];                           // [MT][kt] staged activations (+ v27's chunk statistics)
  __shared__ float s_mean[MT], s_rstd[MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const W* __restrict__ w = static_cast<const W*>(p.w);
  const bool swiglu = p.act == kActSwiglu;
  const int npairs = swiglu ? p.n_out : (p.N + 1) / 2;
  const int ngroups = (npairs + kWarps - 1) / kWarps;
  const int ntiles = (p.K + p.kt - 1) / p.kt;
  // v27: [MT][K / 8] chunk statistics after the staged rows when the row is one tile (the launcher
  // sized the shared memory for them), else the epilogue reads x again
  float* part = Fold && ntiles == 1 ? xs + MT * p.kt : nullptr;

  // Before the wait on the previous kernel: fetch this warp's first batch of weight chunks and its
  // first pair's bias (v29: bias_pair) (both are constant, so this overlaps the previous kernel;
  // nothing else is touched yet).
  uint4 a[U], b[U];
  bool prefetched = false;
  float pb0 = 0.f, pb1 = 0.f;
  {
    const int pair = blockIdx.x * kWarps + warp;
    if (blockIdx.x < ngroups && pair < npairs) {
      int r0, r1;
      pair_rows(p, pair, r0, r1);
      bias_pair<A>(p, r0, r1, pb0, pb1);
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
      if constexpr (Fold) fold_prefetch_l1(p, r0, r1);  // v27b: C / D into L1, after the weights
      prefetched = true;
    }
  }
  pdl_wait();
  pdl_launch_dependents();

  using XS = XStage<A, MT, kThreads>;
  if (p.norm != kNormNone && !Fold && ntiles > 1) XS::row_stats_global(p, s_mean, s_rstd);
  if (ntiles == 1) XS::template stage<Fold>(p, xs, 0, ntiles, s_mean, s_rstd, part);
  FoldStats<A, MT, kThreads, 4> fs;  // v27: the warp's row statistics, kept for M <= 4
  // v31: past 4 rows FoldStats keeps none (v3 is at its register cap), so each pair's epilogue
  // took every row's statistics again: M rows x K / 8 chunk sums and two warp sums per pair, from
  // global memory where K spans several tiles (M 5-8 at K = 1,600; 9-16 there is the ring kernel's
  // since v30, which keeps them all). Taken once per block here instead, the block's warps a row
  // each in turn, by the same function (the same bits). (p.fold == 2: linear_fold_force(2), the
  // per-pair statistics for A/Bs.)
  __shared__ float s_fdm[MT], s_frs[MT];
  if constexpr (Fold && MT > 4) {
    if (p.fold == 1) XS::fold_stats_shared(p, part, s_fdm, s_frs);
  }
  for (int g = blockIdx.x; g < ngroups; g += gridDim.x) {
    const int pair = g * kWarps + warp;
    const bool active = pair < npairs;
    int r0 = 0, r1 = 0;
    if (active) pair_rows(p, pair, r0, r1);
    const bool has1 = active && r1 < p.N;
    // v29: the first group's bias came with the prefetch; a later group's is read here, before
    // its dot products
    float b0 = pb0, b1 = pb1;
    if (active && g != (int)blockIdx.x) {
      bias_pair<A>(p, r0, r1, b0, b1);
      if constexpr (Fold) fold_prefetch_l1(p, r0, r1);
    }
    float acc0[MT], acc1[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;

    for (int t = 0; t < ntiles; ++t) {
      if (ntiles > 1) {
        __syncthreads();  // every warp is done with the previous tile
        XS::template stage<Fold>(p, xs, t, ntiles, s_mean, s_rstd);
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

    // v27b: the pair's C / D, prefetched into L1 with its first weights or at its group's start
    float fc0 = 0.f, fc1 = 0.f, fd0 = 0.f, fd1 = 0.f;
    if constexpr (Fold) fold_pair(p, r0, r1, fc0, fc1, fd0, fd1);
    if constexpr (MT >= 8) {
      // v32 (its statistics: v31's, so not under linear_fold_force(2))
      if (p.scatter && (!Fold || p.fold == 1)) {
        finish_pair_scatter<A, MT, Fold>(p, pair, r0, r1, has1, acc0, acc1, s_fdm, s_frs, fc0, fc1, fd0, fd1,
                                         false, b0, b1, lane);
        continue;
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      acc0[m] = warp_sum(acc0[m]);
      acc1[m] = warp_sum(acc1[m]);
      if constexpr (Fold) {
        if (m < p.M) {
          float dm, rs;
          if (MT > 4 && p.fold == 1) {
            dm = s_fdm[m];
            rs = s_frs[m];
          } else {
            fs.get(p, part, m, dm, rs);
          }
          acc0[m] = fold_apply(p, acc0[m], dm, rs, fc0, fd0);
          if (has1) acc1[m] = fold_apply(p, acc1[m], dm, rs, fc1, fd1);
        }
      }
      if (m < p.M && lane == m) finish_pair<A>(p, m, pair, r0, r1, has1, acc0[m], acc1[m], b0, b1);
    }
  }
}

// v6: the whole activation row set staged once (one K tile), then every warp streams its weight
// rows as one flat sequence of batches (U 16-byte chunks per lane of both rows of a pair), with
// kStages - 1 batches in flight through cp.async into a per-lane shared-memory ring: the bytes in
// flight no longer cost registers (v5 held two batches in registers: ~8 KB per warp, ~50 KB per
// SM, 0.43-0.68 of copy; Little's law at ~4 TB/s and ~2 us loaded latency wants ~60+ KB per SM).
// Each lane reads back only the chunks it copied itself, so cp.async.wait_group is the only
// synchronisation. Batches run on across pair boundaries, so one pair's reduction and epilogue
// overlap the next pair's loads. Pairs go to warps round-robin over the blocks first (pair j ->
// block j % grid, warp j / grid), so every SM gets work even when N is small.
// v20 (Bulk, M = 1 only; linear_ring_force's bit 8, off by default): the same batches, order and
// arithmetic, but each batch of a row is ONE 1-D bulk copy (cp.async.bulk, issued by lane 0,
// completing on a per-warp, per-stage mbarrier) into a warp-contiguous stage, instead of one
// 16-byte cp.async per lane per chunk. Why: ncu on the 1600 x 6400 ring kernel (session 12,
// docs/kernels/runs/20261203-s12-ncu-qgemv.txt) counted 48% "excessive" L2 sectors and an L2 hit
// rate of 52% against v3's 7% with plain 16-byte loads, as if every 16-byte copy reached L2 as a
// request of its own: the ring kernel is the one that stays near 0.6-0.7 of copy even on large
// matrices (4096 x 4096 0.70; gpt-oss's 1.16 GB head ~0.5 in the session-21 profile). Lanes read
// chunks other lanes did not copy, so lane 0's next copy into a stage waits for __syncwarp.
constexpr int kPipeWarps = 8;
constexpr int kPipeThreads = 32 * kPipeWarps;
constexpr int kStages = 4;
constexpr int kPipeSmemMax = 200 * 1024;  // of the 227 KiB a block may opt in to

__host__ __device__ constexpr int pipe_u(int mt) { return mt <= 2 ? 4 : (mt <= 4 ? 2 : 1); }
__host__ __device__ constexpr int pipe_ring_bytes(int mt) { return kStages * 2 * pipe_u(mt) * kPipeThreads * 16; }

template <typename W, typename A, int MT, bool Bulk = false, bool Fold = false>
__global__ void __launch_bounds__(kPipeThreads, 1) gemv_pipe_kernel(const LinearArgs p) {
  constexpr int CH = 16 / sizeof(W);
  constexpr int U = pipe_u(MT);
  extern __shared__ __align__(16) unsigned char smem[];
  // cp.async: [kStages][2][U][threads] chunks (each lane's own); Bulk: [warps][kStages][2][U * 32]
  // (each warp's row span of a batch contiguous, as one bulk copy writes it); the same bytes
  uint4* ring = reinterpret_cast<uint4*>(smem);
  float* xs = reinterpret_cast<float*>(smem + pipe_ring_bytes(MT));  // [MT][kt] staged activations
  float* part = Fold ? xs + MT * p.kt : nullptr;  // v27: [MT][K / 8] chunk statistics (one tile)
  __shared__ float s_mean[MT], s_rstd[MT];
  __shared__ float s_fdm[MT], s_frs[MT];  // v32: the fold's row statistics (MT >= 8, p.scatter)
  __shared__ __align__(8) uint64_t s_bar[Bulk ? kPipeWarps * kStages : 1];  // Bulk: [warps][kStages]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const W* __restrict__ w = static_cast<const W*>(p.w);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int nch = p.kt / CH;  // chunks per row (kt = K rounded up to CH; K % CH == 0)
  const int stride = gridDim.x * kPipeWarps;
  auto slot = [&](int s, int r, int u) {
    if constexpr (Bulk) return ring + (((warp * kStages + s) * 2 + r) * U + u) * 32 + lane;
    else return ring + ((s * 2 + r) * U + u) * kPipeThreads + threadIdx.x;
  };
  auto bar = [&](int s) { return (uint32_t)__cvta_generic_to_shared(&s_bar[Bulk ? warp * kStages + s : 0]); };
  if constexpr (Bulk) {
    if (lane == 0) {
      for (int s = 0; s < kStages; ++s) mbar_init(bar(s), 1);  // one arrival (lane 0's) per phase
      mbar_init_fence();
    }
    __syncwarp();
  }

  struct Cur {
    int pair, c;  // pair index, first chunk of the batch; pair >= npairs: done
  };
  auto advance = [&](Cur s) {
    s.c += 32 * U;
    if (s.c >= nch) {
      s.c = 0;
      s.pair += stride;
    }
    return s;
  };
  auto issue = [&](int st, Cur s) {  // one commit group per call, empty past the end
    if (s.pair < npairs) {
      int r0, r1;
      pair_rows(p, s.pair, r0, r1);
      const W* w0 = w + (int64_t)r0 * p.K;
      const W* w1 = w + (int64_t)(r1 < p.N ? r1 : r0) * p.K;  // odd N: the lone row re-read, never stored
      if constexpr (Bulk) {
        // the stage's previous batch was read by every lane (the caller's __syncwarp); order those
        // generic-proxy reads before the async proxy's writes into the same bytes
        if (lane == 0) {
          const uint32_t nb = (uint32_t)min(32 * U, nch - s.c) * 16u;  // a row's last batch may be short
          asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
          mbar_arrive_expect_tx(bar(st), 2 * nb);
          bulk_load((uint32_t)__cvta_generic_to_shared(slot(st, 0, 0) - lane), w0 + (int64_t)s.c * CH, nb, bar(st));
          bulk_load((uint32_t)__cvta_generic_to_shared(slot(st, 1, 0) - lane), w1 + (int64_t)s.c * CH, nb, bar(st));
        }
      } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int c = s.c + u * 32 + lane;
          if (c < nch) {
            cp_async16(slot(st, 0, u), w0 + (int64_t)c * CH);
            cp_async16(slot(st, 1, u), w1 + (int64_t)c * CH);
          }
        }
      }
    }
    if constexpr (!Bulk) cp_async_commit();
  };
  float acc0[MT], acc1[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
  // v29b: the ring kernel reads its bias after the dot products again, in the writing lane (v29
  // read it at the pair's first batch; gpt-oss's step, all of whose dense products take this kernel,
  // was 17.6 us slower with it: docs/kernels/decode.md, v29 measured). v27b: the fold instances
  // read the pair's fold constants C / D at its first batch (only they: Fold is a template parameter)
  float fc0 = 0.f, fc1 = 0.f, fd0 = 0.f, fd1 = 0.f;
  FoldStats<A, MT, kPipeThreads, kLinearMaxM> fs;  // v27: the warp's row statistics, all kept
  auto consume = [&](int st, Cur s) {
    if constexpr (Fold) {
      if (s.c == 0) {
        int q0, q1;
        pair_rows(p, s.pair, q0, q1);
        fold_pair(p, q0, q1, fc0, fc1, fd0, fd1);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = s.c + u * 32 + lane;
      if (c < nch) {
        float wa[CH], wb[CH];
        unpack16<W>(*slot(st, 0, u), wa);
        unpack16<W>(*slot(st, 1, u), wb);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4* xm = reinterpret_cast<const float4*>(xs + m * p.kt + c * CH);
#pragma unroll
          for (int j = 0; j < CH / 4; ++j) {
            const float4 q = xm[j];
            acc0[m] = fmaf(wa[4 * j], q.x, acc0[m]);
            acc0[m] = fmaf(wa[4 * j + 1], q.y, acc0[m]);
            acc0[m] = fmaf(wa[4 * j + 2], q.z, acc0[m]);
            acc0[m] = fmaf(wa[4 * j + 3], q.w, acc0[m]);
            acc1[m] = fmaf(wb[4 * j], q.x, acc1[m]);
            acc1[m] = fmaf(wb[4 * j + 1], q.y, acc1[m]);
            acc1[m] = fmaf(wb[4 * j + 2], q.z, acc1[m]);
            acc1[m] = fmaf(wb[4 * j + 3], q.w, acc1[m]);
          }
        }
      }
    }
    if (s.c + 32 * U < nch) return;  // more batches of this pair follow
    int r0, r1;
    pair_rows(p, s.pair, r0, r1);
    const bool has1 = r1 < p.N;
    if constexpr (MT >= 8) {
      if (p.scatter) {  // v32
        finish_pair_scatter<A, MT, Fold>(p, s.pair, r0, r1, has1, acc0, acc1, s_fdm, s_frs, fc0, fc1, fd0, fd1,
                                         true, 0.f, 0.f, lane);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
        return;
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
      if constexpr (Fold) {
        if (m < p.M) {
          float dm, rs;
          fs.get(p, part, m, dm, rs);
          v0 = fold_apply(p, v0, dm, rs, fc0, fd0);
          if (has1) v1 = fold_apply(p, v1, dm, rs, fc1, fd1);
        }
      }
      if (m < p.M && lane == m) {
        float b0, b1;
        bias_pair<A>(p, r0, r1, b0, b1);
        finish_pair<A>(p, m, s.pair, r0, r1, has1, v0, v1, b0, b1);
      }
      acc0[m] = acc1[m] = 0.f;
    }
  };

  // Before the wait on the previous kernel: this warp's first kStages - 1 batches (weights are
  // constant; cp.async touches only this block's shared memory).
  Cur tail{(int)blockIdx.x + (int)gridDim.x * warp, 0};
  Cur head = tail;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    issue(s, head);
    head = advance(head);
  }
  pdl_wait();
  pdl_launch_dependents();
  XStage<A, MT, kPipeThreads>::template stage<Fold>(p, xs, 0, 1, s_mean, s_rstd, part);
  // v32's epilogue takes the rows' statistics from shared memory (each lane its own row): the
  // block's warps a row each in turn after the staging (which ended on a barrier), as v3's v31
  if constexpr (Fold && MT >= 8) {
    if (p.scatter) XStage<A, MT, kPipeThreads>::fold_stats_shared(p, part, s_fdm, s_frs);
  }

  for (int i = 0; tail.pair < npairs; ++i) {
    if constexpr (Bulk) {
      mbar_wait(bar(i % kStages), (uint32_t)(i / kStages) & 1u);  // batch i: the stage's (i / kStages)-th phase
    } else {
      cp_async_wait<kStages - 2>();  // batch i has landed (groups committed so far: i + kStages - 1)
    }
    consume(i % kStages, tail);
    if constexpr (Bulk) __syncwarp();  // every lane is done with the stage batch i - 1 used
    issue((i + kStages - 1) % kStages, head);  // the slot batch i - 1 used, consumed by this lane
    head = advance(head);
    tail = advance(tail);
  }
  if constexpr (!Bulk) cp_async_wait<0>();  // (Bulk: every copy issued was waited for above)
}

template <typename W, typename A, int MT, bool Bulk, bool Fold>
cudaError_t launch_ring(const LinearArgs& p, int grid, size_t smem, cudaStream_t st) {
  static bool attr_set = false;  // once per instantiation: allow more than 48 KiB of shared memory
  if (!attr_set) {
    cudaError_t e = cudaFuncSetAttribute(gemv_pipe_kernel<W, A, MT, Bulk, Fold>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kPipeSmemMax);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  return launch_pdl(gemv_pipe_kernel<W, A, MT, Bulk, Fold>, dim3((unsigned)grid), dim3(kPipeThreads), smem, st, p);
}

template <typename W, typename A, int MT>
cudaError_t launch_mt(const LinearArgs& a, int num_sms, cudaStream_t st) {
  constexpr int CH = 16 / sizeof(W);
  LinearArgs p = a;
  const int kpad = (int)ceil_div(p.K, CH) * CH;
  p.vec_x = p.K % 8 == 0 && aligned16(p.x);
  p.stats_one_pass = g_linear_stats_one_pass;
  // v27 where the shape allows it (whole 8-element chunks; LayerNorm needs its row constants);
  // a shape-only choice, so a row's bits do not depend on M or on the kernel
  p.fold = g_linear_fold && p.norm != kNormNone && p.K % 8 == 0 &&
           (p.norm == kNormRms || (p.fold_c != nullptr && p.fold_d != nullptr));
  if (p.fold && g_linear_fold == 2) p.fold = 2;  // (v31's A/B: v3's per-pair statistics past 4 rows)
  p.scatter = MT >= 8 && g_linear_scatter;  // v32's epilogue (linear_scatter_force)
  p.vec_nw = p.fold && aligned16(p.norm_w);
  const size_t part_bytes = p.fold ? (size_t)MT * (kpad / 8) * 2 * sizeof(float) : 0;  // v27, one tile
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;  // (QKV: N even)
  const size_t pipe_smem = pipe_ring_bytes(MT) + (size_t)MT * kpad * sizeof(float) + part_bytes;
  // the ring kernel where it measured faster (H200, M = 1, graph-captured calls, 2026-12-01,
  // docs/kernels/decode.md): K >= 4096 (1600x6400 10.1 -> 8.8 us, 4096x4096 13.2 -> 11.9 us);
  // shorter rows keep v3 (1600x1600 2.9 vs 3.7 us, 4800x1600 7.2 vs 8.3 us): its 3 blocks per SM
  // start streaming sooner than one 256-thread block whose ring needs kStages - 1 batches.
  // Also where v3 would take two dependent batches per pair (more than 8 x 32 chunks: a lane holds
  // 8 in flight) AND more than one round of pairs over its warps (gpt-oss's QKV 5120 x 2880: 360
  // chunks, 2,560 pairs on 2,112 warps: 11.90 -> 10.15 us; its untied head 201088 x 2880; tg128
  // 418.7 -> 431.1 tok/s, same call, H200, 2026-12-04, docs/kernels/decode.md v18). Either
  // condition alone is not enough: 2880 x 2880 (1,440 pairs, one round) 6.45 -> 7.67 us and
  // 124M's 768 x 3072 (384 pairs) cost 124M's tg128 8% in the ring kernel.
  // That case was timed alone and in a step without PDL; in the PDL step the ring kernel's one
  // ~200 KB block per SM cannot start beside the previous kernel's blocks, where v3's small blocks
  // can and fetch their first weights early. linear_ring_force (tests, A/Bs) sets the case's rule:
  // 0 as above, 1 never (v3 below K = 4096, the rule before), 2 only past 8 rounds of pairs (the
  // 201,088-row head: ~48 rounds; gpt-oss's QKV, 1.2 rounds, back on v3); 3 as 0, and v3 at
  // K >= 4096 too where the pairs fit one round (gpt-oss's output projection 2880 x 4096, 1,440
  // pairs; GPT-2 1.5B's 1600 x 6400 and Llama-1b's 2048 x 8192 down products): the same question
  // for the long rows, whose rule was timed alone and without PDL (v6). v3 and the ring kernel
  // sum a row's chunks in the same order, so the mode changes no bits.
  // Modes 4 and 5 (v19, off by default until its A/B) try the other way out of v3's second batch: v3 with 12
  // chunks per lane in flight, one batch per pair for rows of 257-384 chunks (gpt-oss's QKV and
  // head at K = 2,880; GPT-2 124M's 768 x 3072), 3 blocks per SM: 4 for every such product, 5 for
  // those past 8 rounds of pairs only (the head; the rest as 0). The session-20 and -21 profiles
  // without PDL put gpt-oss's head at ~440-480 us a step for 1.16 GB (~0.6 of copy, if its QKV
  // calls cost what they cost alone), where the 1.5B head (one batch per pair) streams at 0.95.
  const int mode = g_linear_ring_mode & 7;
  const bool bulk = MT == 1 && (g_linear_ring_mode & 8);  // v20: the ring kernel's copies as bulk copies
  const bool two_batches = kpad / CH > 8 * 32;
  const int64_t round = (int64_t)num_sms * kGemvBlocksPerSm<MT> * kWarps;
  const bool u12_case = MT == 1 && two_batches && kpad / CH <= 12 * 32 &&
                        (mode == 4 || (mode == 5 && npairs > 8 * round));
  const bool ring_case = MT == 1 && two_batches && !u12_case &&
                         (mode == 0 || mode == 3 || mode >= 4 ? npairs > round : mode == 2 && npairs > 8 * round);
  const bool long_rows = p.K >= 4096 && !(mode == 3 && MT == 1 && npairs <= round);
  // v30: MT = 16 (M 9-16) on the ring kernel at any K where the staged rows fit its shared memory
  // (at GPT-2 1.5B every product but the 6,400-wide down product). Why: v3's 16-row tile is 512
  // wide (32 KiB of staged floats, of its 40 KiB budget), so at K = 1,600 it stages x four times
  // per group of 4 pairs, each behind a barrier, loads a batch of chunks only after the previous
  // batch's 16-row dot products, and (before v31) took the folded norm's statistics per pair; the
  // ring stages x once per block, keeps kStages - 1 batches in flight and keeps the statistics.
  // Same bits (the same chunks in the same order). PART=25 (session 48, H100, one build, graph
  // steps): batch 16 GPT-2 1.5B F16 19,664 -> 16,696 us, Llama ~1B 9,948 -> 7,758; batch 4 on the
  // ring (the hook's bit 16: M >= 2) was 16-18% SLOWER (one 8-warp block per SM against v3's
  // three 4-warp blocks, v3's one tile), so MT <= 8 keeps the rule (MT = 8 itself not timed on the
  // ring yet, nor 124M's K = 768 at 16 rows: PART=26). Bit 32: MT = 16 on v3 (A/Bs).
  // Far from the floor either way: batch 16 is still ~8.6x batch 1's step (PART=27 asks why).
  const bool batch_ring = MT >= 2 && ((MT == 16 && !(g_linear_ring_mode & 32)) || (g_linear_ring_mode & 16));
  if ((long_rows || ring_case || batch_ring) && pipe_smem <= (size_t)kPipeSmemMax) {
    p.kt = kpad;
    const int grid = std::max(1, std::min(num_sms, npairs));
    if constexpr (MT == 1) {
      if (bulk) return p.fold ? launch_ring<W, A, MT, true, true>(p, grid, pipe_smem, st)
                              : launch_ring<W, A, MT, true, false>(p, grid, pipe_smem, st);
    }
    // v27b: the fold is a template parameter, so the kernels without it are v29's code exactly
    return p.fold ? launch_ring<W, A, MT, false, true>(p, grid, pipe_smem, st)
                  : launch_ring<W, A, MT, false, false>(p, grid, pipe_smem, st);
  }
  const int step = 32 * CH;  // a tile is whole warp-wide chunk rows where it can be
  // (v27: a fifth of the floats for the chunk statistics of a one-tile row; the tile size does not
  // change a row's bits: tiles are whole warp-wide chunk rows, and the statistics' order is fixed)
  int kt = (p.fold ? kSmemFloats * 4 / 5 : kSmemFloats) / MT / step * step;
  if (kt < CH) return cudaErrorInvalidValue;
  p.kt = kt < kpad ? kt : kpad;
  const int64_t ngroups = ceil_div(npairs, kWarps);
  const size_t smem = (size_t)MT * p.kt * sizeof(float) + (p.kt == kpad ? part_bytes : 0);
  // the blocks per SM the launch bounds allow (M = 1: 4 blocks, 16 warps, each with 2 x 8 16-byte
  // loads per lane in flight, ~128 KB per SM; else 3); fewer where the staged activations take the
  // shared memory. M = 1 ran with 3 until session 9 although its 128 registers let 4 fit: 4 took
  // 6400 x 1600 from 9.68 to 7.92 us (3,200 row pairs on 1,584 warps were 3 rounds, on 2,112 two)
  // and 50257 x 1600 from 46.3 to 41.3 us (docs/kernels/decode.md v13)
  if constexpr (MT == 1) {
    if (u12_case) {
      const int per_sm = std::max(1, std::min(gemv_blocks_per_sm<1, 12>(), (int)((200 * 1024) / (smem + 1024))));
      const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(ngroups, (int64_t)num_sms * per_sm));
      return launch_pdl(p.fold ? gemv_kernel<W, A, 1, 12, true> : gemv_kernel<W, A, 1, 12, false>, dim3((unsigned)grid),
                        dim3(kThreads), smem, st, p);
    }
  }
  const int per_sm = std::max(1, std::min(kGemvBlocksPerSm<MT>, (int)((200 * 1024) / (smem + 1024))));
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(ngroups, (int64_t)num_sms * per_sm));
  return launch_pdl(p.fold ? gemv_kernel<W, A, MT, 0, true> : gemv_kernel<W, A, MT, 0, false>, dim3((unsigned)grid),
                    dim3(kThreads), smem, st, p);
}

template <typename W, typename A>
cudaError_t launch_wa(const LinearArgs& p, int num_sms, cudaStream_t st) {
  if (p.M <= 1) return launch_mt<W, A, 1>(p, num_sms, st);
  if (p.M <= 2) return launch_mt<W, A, 2>(p, num_sms, st);
  if (p.M <= 4) return launch_mt<W, A, 4>(p, num_sms, st);
  if (p.M <= 8) return launch_mt<W, A, 8>(p, num_sms, st);
  return launch_mt<W, A, 16>(p, num_sms, st);
}

}  // namespace
}  // namespace gpte
