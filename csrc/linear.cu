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
// gone (docs/kernels/decode.md has each version's numbers). v11 (gemv_flat_kernel): v6's ring
// with every warp given an equal contiguous share of the block's chunks (rows split between
// warps where the shares fall), for every K whose 16 staged rows fit beside the ring (K <= 3072).
#include <cmath>
#include <cstdlib>

#include "linear_common.cuh"

namespace gpte {
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

template <typename W, typename A, int MT>
__global__ void __launch_bounds__(kThreads, 3) gemv_kernel(const LinearArgs p) {
  constexpr int CH = 16 / sizeof(W);                      // weight elements per 16-byte load
  constexpr int U = MT >= 8 ? 2 : (MT >= 4 ? 4 : 8);      // chunks per row in flight per lane
  extern __shared__ float xs[];                           // [MT][kt] staged activations
  __shared__ float s_mean[MT], s_rstd[MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const W* __restrict__ w = static_cast<const W*>(p.w);
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

  using XS = XStage<A, MT, kThreads>;
  if (p.norm != kNormNone && ntiles > 1) XS::row_stats_global(p, s_mean, s_rstd);
  if (ntiles == 1) XS::stage(p, xs, 0, ntiles, s_mean, s_rstd);
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
        XS::stage(p, xs, t, ntiles, s_mean, s_rstd);
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

#pragma unroll
    for (int m = 0; m < MT; ++m) {
      acc0[m] = warp_sum(acc0[m]);
      acc1[m] = warp_sum(acc1[m]);
      if (m < p.M && lane == m) finish_pair<A>(p, m, pair, r0, r1, has1, acc0[m], acc1[m]);
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
constexpr int kPipeWarps = 8;
constexpr int kPipeThreads = 32 * kPipeWarps;
constexpr int kStages = 4;
constexpr int kPipeSmemMax = 200 * 1024;  // of the 227 KiB a block may opt in to

__host__ __device__ constexpr int pipe_u(int mt) { return mt <= 2 ? 4 : (mt <= 4 ? 2 : 1); }
__host__ __device__ constexpr int pipe_ring_bytes(int mt) { return kStages * 2 * pipe_u(mt) * kPipeThreads * 16; }

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <typename W, typename A, int MT>
__global__ void __launch_bounds__(kPipeThreads, 1) gemv_pipe_kernel(const LinearArgs p) {
  constexpr int CH = 16 / sizeof(W);
  constexpr int U = pipe_u(MT);
  extern __shared__ __align__(16) unsigned char smem[];
  uint4* ring = reinterpret_cast<uint4*>(smem);                     // [kStages][2][U][threads] chunks
  float* xs = reinterpret_cast<float*>(smem + pipe_ring_bytes(MT));  // [MT][kt] staged activations
  __shared__ float s_mean[MT], s_rstd[MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const W* __restrict__ w = static_cast<const W*>(p.w);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int nch = p.kt / CH;  // chunks per row (kt = K rounded up to CH; K % CH == 0)
  const int stride = gridDim.x * kPipeWarps;
  auto slot = [&](int s, int r, int u) { return ring + ((s * 2 + r) * U + u) * kPipeThreads + threadIdx.x; };

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
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = s.c + u * 32 + lane;
        if (c < nch) {
          cp_async16(slot(st, 0, u), w0 + (int64_t)c * CH);
          cp_async16(slot(st, 1, u), w1 + (int64_t)c * CH);
        }
      }
    }
    cp_async_commit();
  };
  float acc0[MT], acc1[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
  auto consume = [&](int st, Cur s) {
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
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
      if (m < p.M && lane == m) finish_pair<A>(p, m, s.pair, r0, r1, has1, v0, v1);
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
  XStage<A, MT, kPipeThreads>::stage(p, xs, 0, 1, s_mean, s_rstd);

  for (int i = 0; tail.pair < npairs; ++i) {
    cp_async_wait<kStages - 2>();  // batch i has landed (groups committed so far: i + kStages - 1)
    consume(i % kStages, tail);
    issue((i + kStages - 1) % kStages, head);  // the slot batch i - 1 used, consumed by this lane
    head = advance(head);
    tail = advance(tail);
  }
  cp_async_wait<0>();
}

// v11: v6's cp.async ring with the work split evenly instead of by whole pairs. v3 and v6 hand
// out whole row pairs, so a matrix whose pair count is just past a multiple of the resident warps
// pays a thin extra round: 6400x1600 is 3,200 pairs for v3's 1,584 warps (2.02 rounds -> 3), and
// v6's 1,056 warps take 3.03 pairs each (-> 4); a round costs a DRAM round trip plus its bytes, so
// 6400x1600 ran at 0.51 of copy and 4800x1600 (1.52 rounds -> 2) at 0.51. Here block b (one per
// SM) owns the contiguous pairs [b * npairs / G, (b + 1) * npairs / G) (at most one pair more than
// another block), and its 8 warps split the block's chunks (pair-major, 16-byte chunks of both
// rows) into 8 equal contiguous ranges, so every warp streams about the same bytes with no round
// boundary. A warp's range may start or end inside a pair: its warp-reduced part of such a pair
// goes to shared memory, and after the block's last batch the warp that holds the pair's first
// chunk adds the later warps' parts in warp order (fixed for a grid, so a replay repeats the
// bits) and runs the epilogue. Batches stop at pair ends (a batch never spans two pairs).
// ring stages (batches in flight per warp while one is consumed: stages - 1); fewer at M >= 8 so
// that the 16 staged rows of K = 3072 (GPT-2 124M's c_proj) still fit beside the ring
__host__ __device__ constexpr int flat_stages(int mt) { return mt <= 4 ? 5 : 4; }
__host__ __device__ constexpr int flat_ring_bytes(int mt) { return flat_stages(mt) * 2 * pipe_u(mt) * kPipeThreads * 16; }
constexpr int kFlatSmemMax = 224 * 1024;  // dynamic shared memory: the 227 KiB opt-in limit less the static arrays
// v11 serves a matrix at every M or at none: its sums split a row at other places than v3/v6 do
// (those two give the same bits), and a batch row must equal the same row computed alone
// (test_gemv_rows_do_not_depend_on_the_batch). So the test is whether 16 rows of K fit.
__host__ __device__ constexpr bool flat_fits(int64_t kpad) {
  return (int64_t)flat_ring_bytes(kLinearMaxM) + (int64_t)kLinearMaxM * kpad * 4 <= kFlatSmemMax;
}

template <typename W, typename A, int MT>
__global__ void __launch_bounds__(kPipeThreads, 1) gemv_flat_kernel(const LinearArgs p) {
  constexpr int CH = 16 / sizeof(W);
  constexpr int U = pipe_u(MT);
  constexpr int B = 32 * U;  // chunks per batch and row
  constexpr int kFlatStages = flat_stages(MT);
  extern __shared__ __align__(16) unsigned char smem[];
  uint4* ring = reinterpret_cast<uint4*>(smem);                     // [stages][2][U][threads] chunks
  float* xs = reinterpret_cast<float*>(smem + flat_ring_bytes(MT));  // [MT][kt] staged activations
  __shared__ float s_mean[MT], s_rstd[MT];
  __shared__ float frag[kPipeWarps][2][MT][2];  // [warp][first/last pair of its range][m][row]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const W* __restrict__ w = static_cast<const W*>(p.w);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int nch = p.kt / CH;  // chunks per row (kt = K rounded up to CH; K % CH == 0)
  // this block's pairs and this warp's chunk range [g0, g1) within them (pair-major)
  const int P0 = (int)((int64_t)blockIdx.x * npairs / gridDim.x);
  const int P1 = (int)((int64_t)(blockIdx.x + 1) * npairs / gridDim.x);
  const int64_t Tb = (int64_t)(P1 - P0) * nch;
  auto range_start = [&](int wi) { return (int)(Tb * wi / kPipeWarps); };
  const int g0 = range_start(warp), g1 = range_start(warp + 1);
  auto slot = [&](int s, int r, int u) { return ring + ((s * 2 + r) * U + u) * kPipeThreads + threadIdx.x; };

  struct Cur {
    int g;     // first chunk of the batch (block-relative, pair-major); g >= g1: done
    int pair;  // block-relative pair of chunk g
    int c;     // chunk of g within its pair
  };
  auto batch_end = [&](const Cur& s) {  // one past the batch's last chunk within its pair
    return min(min(s.c + B, nch), s.c + (g1 - s.g));
  };
  auto advance = [&](Cur s) {
    const int e = batch_end(s);
    s.g += e - s.c;
    if (e == nch) {
      ++s.pair;
      s.c = 0;
    } else {
      s.c = e;
    }
    return s;
  };
  auto issue = [&](int st, Cur s) {  // one commit group per call, empty past the end
    if (s.g < g1) {
      int r0, r1;
      pair_rows(p, P0 + s.pair, r0, r1);
      const W* w0 = w + (int64_t)r0 * p.K;
      const W* w1 = w + (int64_t)(r1 < p.N ? r1 : r0) * p.K;  // odd N: the lone row re-read, never stored
      const int e = batch_end(s);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = s.c + u * 32 + lane;
        if (c < e) {
          cp_async16(slot(st, 0, u), w0 + (int64_t)c * CH);
          cp_async16(slot(st, 1, u), w1 + (int64_t)c * CH);
        }
      }
    }
    cp_async_commit();
  };
  float acc0[MT], acc1[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;
  const int first_pair = g0 / nch;  // block-relative pair of the range's first chunk
  auto consume = [&](int st, const Cur& s) {
    const int e = batch_end(s);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = s.c + u * 32 + lane;
      if (c < e) {
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
    const bool last_of_range = s.g + (e - s.c) >= g1;
    if (e < nch && !last_of_range) return;  // more batches of this pair follow in this warp
    // this warp's part of the pair is complete; whole if it started the pair and reached its end
    const bool whole = e == nch && (s.pair > first_pair || g0 % nch == 0);
    const int pair = P0 + s.pair;
    int r0, r1;
    pair_rows(p, pair, r0, r1);
    const bool has1 = r1 < p.N;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float v0 = warp_sum(acc0[m]), v1 = warp_sum(acc1[m]);
      if (whole) {
        if (m < p.M && lane == m) finish_pair<A>(p, m, pair, r0, r1, has1, v0, v1);
      } else if (lane == 0) {
        const int which = s.pair == first_pair ? 0 : 1;
        frag[warp][which][m][0] = v0;
        frag[warp][which][m][1] = v1;
      }
      acc0[m] = acc1[m] = 0.f;
    }
  };

  // Before the wait on the previous kernel: this warp's first kFlatStages - 1 batches (weights
  // are constant; cp.async touches only this block's shared memory).
  Cur tail{g0, g0 / nch, g0 % nch};
  Cur head = tail;
#pragma unroll
  for (int s = 0; s < kFlatStages - 1; ++s) {
    issue(s, head);
    head = advance(head);
  }
  pdl_wait();
  pdl_launch_dependents();
  XStage<A, MT, kPipeThreads>::stage(p, xs, 0, 1, s_mean, s_rstd);

  for (int i = 0; tail.g < g1; ++i) {
    cp_async_wait<kFlatStages - 2>();  // batch i has landed (groups committed so far: i + kFlatStages - 1)
    consume(i % kFlatStages, tail);
    issue((i + kFlatStages - 1) % kFlatStages, head);  // the slot batch i - 1 used, consumed by this lane
    head = advance(head);
    tail = advance(tail);
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp's parts are in frag
  // The pair this warp's range ends inside, if the range also holds that pair's first chunk: add
  // the parts of the warps after it that hold the rest, in warp order, and finish the pair.
  if (g1 > g0 && g1 % nch != 0 && g1 < Tb) {
    const int q = (g1 - 1) / nch;  // block-relative pair
    if (g0 <= q * nch) {
      const int which = q == first_pair ? 0 : 1;
      int r0, r1;
      pair_rows(p, P0 + q, r0, r1);
      const bool has1 = r1 < p.N;
      if (lane < p.M && lane < MT) {
        float v0 = frag[warp][which][lane][0], v1 = frag[warp][which][lane][1];
        for (int j = warp + 1; j < kPipeWarps; ++j) {
          const int a = range_start(j), b = range_start(j + 1);
          if (a >= (q + 1) * nch) break;  // past the pair
          if (b <= a) continue;           // an empty range
          v0 += frag[j][0][lane][0];      // the pair is warp j's first
          v1 += frag[j][0][lane][1];
        }
        finish_pair<A>(p, lane, P0 + q, r0, r1, has1, v0, v1);
      }
    }
  }
}

template <typename W, typename A, int MT>
cudaError_t launch_mt(const LinearArgs& a, int num_sms, cudaStream_t st) {
  constexpr int CH = 16 / sizeof(W);
  LinearArgs p = a;
  const int kpad = (int)ceil_div(p.K, CH) * CH;
  p.vec_x = p.K % 8 == 0 && aligned16(p.x);
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;  // (QKV: N even)
  const size_t pipe_smem = pipe_ring_bytes(MT) + (size_t)MT * kpad * sizeof(float);
  const size_t flat_smem = flat_ring_bytes(MT) + (size_t)MT * kpad * sizeof(float);  // <= the M = 16 case
  // v11 wherever its ring and the staged rows fit. TEMPORARY (same-run A/B, removed after the
  // measurement): GPTE_AB_GEMV_OLD set -> v3 / v6 as before.
  if (std::getenv("GPTE_AB_GEMV_OLD") == nullptr && flat_fits(kpad)) {
    static bool attr_set = false;  // once per instantiation: allow more than 48 KiB of shared memory
    if (!attr_set) {
      cudaError_t e = cudaFuncSetAttribute(gemv_flat_kernel<W, A, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           kFlatSmemMax);
      if (e != cudaSuccess) return e;
      attr_set = true;
    }
    p.kt = kpad;
    const int grid = std::max(1, std::min(num_sms, npairs));
    return launch_pdl(gemv_flat_kernel<W, A, MT>, dim3((unsigned)grid), dim3(kPipeThreads), flat_smem, st, p);
  }
  // the ring kernel where it measured faster (H200, M = 1, graph-captured calls, 2026-12-01,
  // docs/kernels/decode.md): K >= 4096 (1600x6400 10.1 -> 8.8 us, 4096x4096 13.2 -> 11.9 us);
  // shorter rows keep v3 (1600x1600 2.9 vs 3.7 us, 4800x1600 7.2 vs 8.3 us): its 3 blocks per SM
  // start streaming sooner than one 256-thread block whose ring needs kStages - 1 batches
  if (p.K >= 4096 && pipe_smem <= (size_t)kPipeSmemMax) {
    static bool attr_set = false;  // once per instantiation: allow more than 48 KiB of shared memory
    if (!attr_set) {
      cudaError_t e = cudaFuncSetAttribute(gemv_pipe_kernel<W, A, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           kPipeSmemMax);
      if (e != cudaSuccess) return e;
      attr_set = true;
    }
    p.kt = kpad;
    const int grid = std::max(1, std::min(num_sms, npairs));
    return launch_pdl(gemv_pipe_kernel<W, A, MT>, dim3((unsigned)grid), dim3(kPipeThreads), pipe_smem, st, p);
  }
  const int step = 32 * CH;  // a tile is whole warp-wide chunk rows where it can be
  int kt = kSmemFloats / MT / step * step;
  if (kt < CH) return cudaErrorInvalidValue;
  p.kt = kt < kpad ? kt : kpad;
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
