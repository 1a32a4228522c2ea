// Greedy decoding's last step on the device: next[b] = argmax over the first n_valid logits of
// row b (the lowest index among equal maxima, as torch.argmax and the CPU sampler pick), then
// pos[b] += 1 so the next replay of the decode graph works on the next position. A NaN logit
// raises kStatusNonFinite in the status word instead of being picked silently.
//
// v1 (gone; measured against v2 below in one run, docs/kernels/decode.md): one block of 1024
// threads per row; each thread keeps its best (value, index) over a strided range (4 loads in
// flight), then a warp and a block reduction. One SM reads the whole row with at most
// 1024 x 4 x 4 B = 16 KB in flight, so the row costs ceil(row / 16 KB) memory round trips: measured
// on the H200 at ~4.5 us for GPT-2's 50,257 fp32 logits (201 KB) and ~17 us for gpt-oss's 201,088
// (804 KB), i.e. ~45-47 GB/s from the one SM either way (603 KB more in 12.5 us more), ~1-2% of a
// graph-captured 124M decode step (~270 us) and all of it on the critical path.
//
// v2: the row is split over a thread-block cluster of S = min(8, ceil(n_valid / 8192)) blocks (8:
// the portable cluster size on sm_90), grid rows x S, cluster (S, 1, 1). Block r reduces the
// contiguous slice [r L, (r + 1) L) of the row (L = ceil(n_valid / S) rounded up to 32 entries, so
// the slices of a row with an aligned start begin on 128-byte lines) with v1's per-thread, warp
// and block steps but 16 loads in flight per thread (64 KB per SM), then its thread 0 writes (best
// value, index, NaN seen) into slot r of rank 0's shared memory (distributed shared memory,
// cluster.map_shared_rank). Rank 0 combines the S slots and writes next[b], pos[b] and the status
// bit as v1 does. Barriers: a cluster arrive at the start and its wait before the remote store
// (a block's shared memory may be written only once that block runs; the wait is long satisfied
// by then), and one cluster.sync after the stores. The combine is v1's `better`, a total order on
// the non-NaN (value, index) pairs (value down, index up; the start (-inf, n_valid) below all of
// them) whose maximum does not depend on the order of the steps, so v2 picks v1's token in every
// case: lowest index among equal maxima across slices, an all -inf row -> 0, NaN never picked and
// flagged (a row of NaN -> 0; NaN and -inf only -> the first -inf, as v1).
// Predicted (H200, per call; the same whether the row is in HBM or L2 while latency bound, as
// v1 is): GPT-2 7 blocks of <= 7,200 entries (28.8 KB each: one round trip of 16 loads per
// thread), gpt-oss 8 of <= 25,152 (100 KB each: two round trips). v1's fit gives ~47 GB/s per SM
// with 16 KB in flight; 64 KB in flight gives ~190 GB/s per SM if still latency bound. GPT-2:
// max(one ~0.7 us trip, 28.8 KB / 190 GB/s = 0.15 us) + ~0.5 us (block reduction, cluster
// barrier, rank 0's combine) + ~0.3 us fixed (v1's fit: 4.5 us - 201 KB / 47 GB/s) ~= 1.5 us
// (v1 4.5); gpt-oss: two trips ~1.4 us (100 KB / 190 GB/s = 0.55 us) + 0.8 ~= 2.2 us (v1 17).
#include <cooperative_groups.h>

#include <cmath>
#include <cstdlib>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {
namespace cg = cooperative_groups;

constexpr int kThreads = 1024;
constexpr int kMaxCluster = 8;           // the portable cluster size (sm_90)
constexpr int kEntriesPerBlock = 8192;   // v2: S = min(8, ceil(n_valid / 8192)) blocks per row
constexpr int kSliceAlign = 32;          // v2: slice length a multiple of 32 entries (128 B)
constexpr int kU2 = 16;                  // v2: loads in flight per thread

__device__ __forceinline__ void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// ---------------------------------------------------------------- v2

// (value, index) of the best entry in [s0, s1) of `row` under `better`, and whether a NaN was
// seen, reduced over the block; the result is valid in thread 0.
__device__ __forceinline__ void block_best(const float* __restrict__ row, int s0, int s1, int none, float& bv,
                                           int& bi, bool& nan) {
  __shared__ float sv[32];
  __shared__ int si[32];
  bv = -INFINITY;
  bi = none;
  nan = false;
  for (int base = s0 + threadIdx.x; base < s1; base += kThreads * kU2) {
    float v[kU2];
#pragma unroll
    for (int u = 0; u < kU2; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < s1 ? __ldg(row + i) : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < kU2; ++u) {  // past the slice: (-inf, none), which never wins (the next
      const int i = base + u * kThreads;  // slice's own indices must not come from this block)
      nan |= v[u] != v[u];
      better(bv, bi, v[u], i < s1 ? i : none);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  nan = __syncthreads_or(nan);
  if (warp == 0) {
    bv = sv[lane];
    bi = si[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      better(bv, bi, ov, oi);
    }
  }
}

// grid rows * S (1-D), cluster (S, 1, 1): rank r of cluster b reduces slice r of row b.
__global__ void __launch_bounds__(kThreads)
    argmax_cluster_kernel(const float* __restrict__ logits,  // [rows, row_stride]
                          int64_t row_stride, int n_valid,
                          int slice,                        // L entries per block
                          int64_t* __restrict__ next,       // [rows]
                          int64_t* __restrict__ pos,        // [rows] or null
                          int* status) {                    // [1] or null
  __shared__ float cv[kMaxCluster];  // rank 0's slots: each rank's (value, index, NaN seen)
  __shared__ int ci[kMaxCluster];
  __shared__ int cn[kMaxCluster];
  pdl_wait();
  pdl_launch_dependents();
  cg::cluster_group cluster = cg::this_cluster();
  // Arrive now, wait before the remote store: rank 0's shared memory may be written only once rank
  // 0 runs (the CUDA guide's rule for distributed shared memory), known by then at no cost.
  auto started = cluster.barrier_arrive();
  const int S = (int)cluster.num_blocks(), r = (int)cluster.block_rank();
  const int64_t b = blockIdx.x / S;
  const float* row = logits + b * row_stride;
  const int s0 = min(r * slice, n_valid), s1 = min(s0 + slice, n_valid);
  float bv;
  int bi;
  bool nan;
  block_best(row, s0, s1, n_valid, bv, bi, nan);
  cluster.barrier_wait(std::move(started));
  if (threadIdx.x == 0) {
    cluster.map_shared_rank(cv, 0)[r] = bv;
    cluster.map_shared_rank(ci, 0)[r] = bi;
    cluster.map_shared_rank(cn, 0)[r] = nan;
  }
  cluster.sync();  // every rank's slot is written (release / acquire); rank 0 alone reads them
  if (r == 0 && threadIdx.x == 0) {
    bool any_nan = false;
    for (int k = 0; k < S; ++k) {
      better(bv, bi, cv[k], ci[k]);
      any_nan |= cn[k] != 0;
    }
    // all -inf (or NaN) rows: token 0, flagged when NaN
    next[b] = bi < n_valid ? bi : 0;
    if (pos) pos[b] += 1;
    if (any_nan && status) atomicOr(status, kStatusNonFinite);
  }
}

}  // namespace

cudaError_t launch_sample_greedy(const float* logits, int64_t rows, int64_t row_stride, int64_t n_valid,
                                 int64_t* next, int64_t* pos, int* status, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // indices are int: below 2^31 with room for a thread's last stride (16384 entries)
  if (n_valid <= 0 || n_valid > row_stride || n_valid > INT32_MAX - kThreads * kU2) return cudaErrorInvalidValue;
  const int64_t S = std::min<int64_t>(kMaxCluster, ceil_div(n_valid, kEntriesPerBlock));
  const int64_t slice = ceil_div(ceil_div(n_valid, S), kSliceAlign) * kSliceAlign;
  if (rows * S > INT32_MAX) return cudaErrorInvalidValue;  // grid.x
  return launch_pdl_cluster(argmax_cluster_kernel, dim3((unsigned)(rows * S)), dim3(kThreads), 0, stream,
                            dim3((unsigned)S, 1, 1), logits, row_stride, (int)n_valid, (int)slice, next, pos, status);
}

}  // namespace gpte
