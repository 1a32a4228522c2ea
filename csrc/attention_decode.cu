// Decode attention (one query token per sequence) over a dense KV cache, flash-decoding style:
// the sequence is split into `splits` chunks so a single sequence still fills the GPU.
//
// Pass 1 (decode_split_kernel), one block per (split, kv head, query-head group, batch):
//   D / VEC threads hold one key row (16-byte vectors), so a warp reads 32 / (D / VEC) keys per
//   step and each thread keeps kUnroll K and V vectors in flight. Every query head of the GQA
//   group that shares this kv head is served from the same K/V registers, so K/V bytes are read
//   once per group. Online softmax in the exp2 domain (q pre-scaled by scale * log2 e); the
//   block's running (max, sum, unnormalised output) go to an fp32 workspace.
// Pass 2 (decode_reduce_kernel) rescales the splits to a common max and normalises.
// Or, where the splits of a row group fit one thread-block cluster (2 to 8, v6):
//   pass 1 launched with CL, the splits of one (kv head, query-head group, batch) as one cluster;
//   each block leaves its state in its shared memory and the cluster's blocks merge the splits
//   through distributed shared memory, splits in order, and write the output: no workspace round
//   trip and no reduce launch (measured 0.4-1.1 us less a call at 1,024 keys, H100).
// Short sequences (short_keys > 0 and at most short_keys keys in view) take one split whatever
// `splits` says, and that split also writes the normalised output itself, with the reduce's
// float operations over one non-empty split (so the bits are the reduce's). The reduce launch
// can then be left out (reduce = false) by a caller that knows every sequence is that short:
// the decode loop replays a second graph without it (docs/kernels/decode.md, v10). Whether a
// sequence takes one split depends on its own length only, never on its batch.
// Sequence lengths are read on the device (no host sync: graph-capturable); each is clamped
// to [0, S] so a bad length never reads outside the cache.
// Optional, for gpt-oss (docs/gpt_oss.md): a sliding window W > 0 keeps the keys at positions
// p > qpos - W (qpos = len - 1: the splits cover [max(0, len - W), len)), and per-head sink
// logits [Hq] (fp32, unscaled) are one more softmax column that takes probability mass and
// brings no value: the reduce adds exp(sink - max) to the denominator once. Without either,
// every instruction that runs is the one that ran before (other models are unchanged).
#include <cmath>

#include <cooperative_groups.h>

#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kUnroll = 4;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kSplitAlign = 64;  // keys; a multiple of every instantiation's keys per step

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> ldg_vec(const T* p) {
  const uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
  return *reinterpret_cast<const Vec<T, VEC>*>(&r);
}

// Merge running softmax state (m2, l2, acc2) into (m, l, acc).
template <int N>
__device__ __forceinline__ void merge_state(float& m, float& l, float* acc, float m2, float l2, const float* acc2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;  // both empty
  const float a = fast_exp2(m - mx), b = fast_exp2(m2 - mx);
  l = l * a + l2 * b;
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j] = acc[j] * a + acc2[j] * b;
  m = mx;
}

// CL (v6): launched as clusters of `splits` blocks along x (one cluster per row group); the
// splits' states stay in shared memory and the cluster merges them (see merge below).
template <typename T, int D, int G, bool CL>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const T* __restrict__ q, const T* __restrict__ kc,
                                                              const T* __restrict__ vc, const void* __restrict__ lens,
                                                              bool lens64, float* __restrict__ ws_o,
                                                              float* __restrict__ ws_ml, int Hq, int Hkv, int S,
                                                              int splits, int group, int gblocks, float scale_log2,
                                                              int window, T* __restrict__ out,
                                                              const float* __restrict__ sinks, float sink_log2,
                                                              int short_keys) {
  constexpr int VEC = kVec16<T>;
  constexpr int TPK = D / VEC;  // threads per key row
  static_assert(TPK >= 1 && TPK <= 32 && (TPK & (TPK - 1)) == 0, "head dim must give a power-of-two row split");
  constexpr int KPW = 32 / TPK;          // keys per warp per step
  constexpr int KPB = KPW * kWarps;      // keys per block per step
  __shared__ float sm_acc[kWarps][G][D];
  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
  // CL: this split's merged state (output, max, sum), read by the cluster's blocks
  __shared__ float cl_o[CL ? G : 1][CL ? D : 1];
  __shared__ float cl_ml[CL ? G : 1][2];

  pdl_wait();  // q, the cache and the lengths come from the kernels before
  pdl_launch_dependents();
  const int split = blockIdx.x;
  const int hkv = blockIdx.y / gblocks, gb = blockIdx.y % gblocks;
  const int b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % TPK;
  const int slot = warp * KPW + lane / TPK;

  int64_t len = lens64 ? reinterpret_cast<const int64_t*>(lens)[b] : reinterpret_cast<const int32_t*>(lens)[b];
  len = len < 0 ? 0 : (len > S ? S : len);
  // whole 64-key steps per split (a ragged last step in every split cost up to 10%; the
  // splits past the end of a short sequence stay empty)
  const int64_t wbeg = window > 0 && len > window ? len - window : 0;  // first key the window keeps
  // a short sequence: split 0 walks every key and writes the output, the other splits stay empty
  const bool one = short_keys > 0 && len - wbeg <= short_keys;
  const int sp = one ? 1 : splits;
  const int64_t chunk = ((len - wbeg + sp - 1) / sp + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  const int64_t kbeg = wbeg + (int64_t)split * chunk;
  const int64_t kend = kbeg + chunk < len ? kbeg + chunk : len;

  float qf[G][VEC];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int gi = gb * G + g;
    if (gi < group) {
      const int hq = hkv * group + gi;
      const Vec<T, VEC> qv = load_vec<T, VEC>(q + ((int64_t)b * Hq + hq) * D, sub);
#pragma unroll
      for (int j = 0; j < VEC; ++j) qf[g][j] = to_f(qv.v[j]) * scale_log2;
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) qf[g][j] = 0.f;
    }
  }
  float m[G], l[G], acc[G][VEC];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[g][j] = 0.f;
  }

  const int64_t head = ((int64_t)b * Hkv + hkv) * S;
  const T* kbase = kc + head * D + sub * VEC;
  const T* vbase = vc + head * D + sub * VEC;
  // Register double buffer: the next step's K/V loads are issued before this step's math,
  // so every thread keeps 2 * kUnroll * 16 bytes in flight without waiting on its own math.
  constexpr int U = G >= 4 ? 2 : kUnroll;  // fewer keys per step where q/acc take the registers
  constexpr int STEP = KPB * U;
  Vec<T, VEC> kv[U], vv[U];
  auto load_step = [&](int64_t k0, Vec<T, VEC>* kd, Vec<T, VEC>* vd) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t key = k0 + u * KPB + slot;
      if (key < kend) {
        kd[u] = ldg_vec<T, VEC>(kbase + key * D);
        vd[u] = ldg_vec<T, VEC>(vbase + key * D);
      }
    }
  };
  if (kbeg < kend) load_step(kbeg, kv, vv);
  for (int64_t k0 = kbeg; k0 < kend; k0 += STEP) {
    Vec<T, VEC> kn[U], vn[U];
    if (k0 + STEP < kend) load_step(k0 + STEP, kn, vn);
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) ok[u] = k0 + u * KPB + slot < kend;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float s[U];
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float dot = 0.f;
        if (ok[u]) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) dot = fmaf(qf[g][j], to_f(kv[u].v[j]), dot);
        }
#pragma unroll
        for (int o = TPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[u] = ok[u] ? dot : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      if (mx == -INFINITY) continue;  // no key of this slot yet
      const float corr = fast_exp2(m[g] - mx);
      float p[U], psum = 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        p[u] = fast_exp2(s[u] - mx);
        psum += p[u];
      }
      l[g] = l[g] * corr + psum;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float a = acc[g][j] * corr;
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (ok[u]) a = fmaf(p[u], to_f(vv[u].v[j]), a);
        acc[g][j] = a;
      }
      m[g] = mx;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      kv[u] = kn[u];
      vv[u] = vn[u];
    }
  }

  // merge the key slots of this warp (lanes with the same `sub` hold the same head dims)
#pragma unroll
  for (int o = TPK; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
      float acc2[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc2[j] = __shfl_xor_sync(0xffffffffu, acc[g][j], o);
      merge_state<VEC>(m[g], l[g], acc[g], m2, l2, acc2);
    }
  }
  if (lane < TPK) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sm_acc[warp][g][sub * VEC + j] = acc[g][j];
      if (sub == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  // merge the warps and write this split's partial state
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int g = idx / D, d = idx % D;
    const int gi = gb * G + g;
    if (gi >= group) continue;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm_m[w][g]);
    float ll = 0.f, oo = 0.f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = fast_exp2(sm_m[w][g] - mm);
        ll += f * sm_l[w][g];
        oo += f * sm_acc[w][g][d];
      }
    }
    const int64_t hrow = (int64_t)b * Hq + hkv * group + gi;
    if constexpr (CL) {
      cl_o[g][d] = oo;
      if (d == 0) {
        cl_ml[g][0] = mm;
        cl_ml[g][1] = ll;
      }
    } else {
      const int64_t row = hrow * splits + split;
      ws_o[row * D + d] = oo;
      if (d == 0) {
        ws_ml[row * 2] = mm;
        ws_ml[row * 2 + 1] = ll;
      }
    }
    if (one && split == 0) {
      // decode_reduce_kernel's arithmetic over one non-empty split (the others hold m = -inf,
      // l = 0, o = 0 and add exact zeros there): common max with the sink, weight, denominator
      const float s2 = sinks != nullptr ? sinks[hrow % Hq] * sink_log2 : -INFINITY;
      const float mx = sinks != nullptr ? fmaxf(mm, s2) : mm;
      const float w = (mm == -INFINITY || mx == -INFINITY) ? 0.f : exp2f(mm - mx);
      float den = w * ll;
      if (sinks != nullptr) den += exp2f(s2 - mx);
      out[hrow * D + d] = from_f<T>(den > 0.f ? (w * oo) / den : 0.f);
    }
  }
  if constexpr (CL) {
    // A short sequence's split 0 has written the output (`one` depends on b only, so it is the
    // same in every block of the cluster and no block waits at a barrier the others skip).
    if (one) return;
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every split's state is in its block's shared memory
    // The G x D outputs of this row group spread over the cluster's blocks (block `split`
    // takes every splits-th chunk of kThreads); each thread merges its element over the
    // splits in order: the common max (with the sink), then the weighted sums, the reduce
    // kernel's operations with its per-split terms added in split order (the same result as
    // the reduce up to fp32 summation order, and the same bits in every batch).
    const int rank = (int)cluster.block_rank(), ranks = (int)cluster.num_blocks();  // split, splits
    for (int idx = rank * kThreads + threadIdx.x; idx < G * D; idx += ranks * kThreads) {
      const int g = idx / D, d = idx % D;
      const int gi = gb * G + g;
      if (gi >= group) continue;
      const int64_t hrow = (int64_t)b * Hq + hkv * group + gi;
      const float s2 = sinks != nullptr ? sinks[hrow % Hq] * sink_log2 : -INFINITY;
      float mx = -INFINITY;
      for (int s = 0; s < ranks; ++s) mx = fmaxf(mx, cluster.map_shared_rank(&cl_ml[g][0], s)[0]);
      if (sinks != nullptr) mx = fmaxf(mx, s2);
      float den = 0.f, num = 0.f;
      for (int s = 0; s < ranks; ++s) {
        const float* ml = cluster.map_shared_rank(&cl_ml[g][0], s);
        const float w = (ml[0] == -INFINITY || mx == -INFINITY) ? 0.f : exp2f(ml[0] - mx);
        den += w * ml[1];
        num += w * cluster.map_shared_rank(&cl_o[g][d], s)[0];
      }
      if (sinks != nullptr) den += exp2f(s2 - mx);
      out[hrow * D + d] = from_f<T>(den > 0.f ? num / den : 0.f);
    }
    cluster.sync();  // no block leaves while another still reads its shared memory
  }
}

// One block per (batch, query head). The splits are reduced in parallel: every thread takes
// a share of the splits for the common max and the sum, then (head dim x split group) threads
// accumulate the rescaled partial outputs. A loop over the splits in one thread per output
// element would chain one memory latency per split (the first version did; it cost ~0.6 us
// per split, the larger part of a short decode call).
constexpr int kReduceThreads = 256;
constexpr int kMaxSplits = 1024;

__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < kReduceThreads / 32 ? red[lane] : (is_max ? -INFINITY : 0.f);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  return v;
}

template <typename T, int D>
__global__ void __launch_bounds__(kReduceThreads) decode_reduce_kernel(const float* __restrict__ ws_o,
                                                                      const float* __restrict__ ws_ml,
                                                                      const float* __restrict__ sinks,
                                                                      T* __restrict__ out, int splits, int Hq,
                                                                      float sink_log2) {
  constexpr int SG = kReduceThreads / D;  // split groups
  __shared__ float sw[kMaxSplits];
  __shared__ float red[32];
  __shared__ float part[SG][D];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;  // b * Hq + hq
  const float* ml = ws_ml + row * splits * 2;
  float mm = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += kReduceThreads) mm = fmaxf(mm, ml[2 * s]);
  mm = block_reduce(mm, red, true);
  // the sink column, in the workspace's exp2 domain (scores were scaled by scale * log2 e;
  // the sink logit is unscaled, so it takes log2 e alone)
  const float s2 = sinks != nullptr ? sinks[row % Hq] * sink_log2 : -INFINITY;
  if (sinks != nullptr) mm = fmaxf(mm, s2);
  float ll = 0.f;
  for (int s = threadIdx.x; s < splits; s += kReduceThreads) {
    const float m = ml[2 * s];
    const float w = (m == -INFINITY || mm == -INFINITY) ? 0.f : exp2f(m - mm);
    sw[s] = w;
    ll += w * ml[2 * s + 1];
  }
  ll = block_reduce(ll, red, false);  // its barriers also publish sw[]
  if (sinks != nullptr) ll += exp2f(s2 - mm);
  const int d = threadIdx.x % D, g = threadIdx.x / D;
  const float* po = ws_o + row * splits * D + d;
  float acc = 0.f;
#pragma unroll 4
  for (int s = g; s < splits; s += SG) acc += sw[s] * po[(int64_t)s * D];
  part[g][d] = acc;
  __syncthreads();
  if (g == 0) {
#pragma unroll
    for (int k = 1; k < SG; ++k) acc += part[k][d];
    out[row * D + d] = from_f<T>(ll > 0.f ? acc / ll : 0.f);
  }
}

// The query heads one block serves (the group tile G). A block reads its kv head's K/V once for
// its G heads, but each thread then walks G heads' dots and softmax updates in turn, and G >= 4
// halves the keys in flight per step (U) to fit the registers. A short sequence takes one split
// (short_keys), so its grid is Hkv x ceil(group / G) blocks: gpt-oss (64 query heads on 8 kv
// heads, G = 8) had 8 blocks of 8 heads on 132 SMs, 8.7 us a layer in the 20b step without PDL
// against 3.3 us for GPT-2 1.5B's 25 one-head blocks (docs/gpt_oss.md, session 20's profile).
// So G starts at the group (rounded up to a power of two, at most 8) and halves while one
// sequence's one-split grid has fewer than kMinHeadBlocks blocks: gpt-oss 8 -> 2 (32 blocks),
// Llama-1b's 32 / 8 heads 4 -> 1, SmolLM2's 9 / 3 4 -> 1; groups of 1 and grids already wide
// enough keep theirs. The other G blocks of a kv head read the same K/V, mostly from L2. The
// choice depends on the shape only (never on the batch or the lengths), so a sequence's sums
// are the same in every batch and in both decode graphs. attention_decode_tile_force (tests,
// A/Bs) overrides the rule.
// v5 (written in session 24; A/B in session 29 on an H100, docs/kernels/attention.md: the 20b
// step 2,268 -> 2,115 us, Llama-1b's 1,065 -> 1,013 us). 1 would restore v4's tiles.
constexpr int64_t kMinHeadBlocks = 32;
int g_tile_force = 0;  // 0: the rule; 1, 2, 4 or 8: that tile

int pick_group_tile(int64_t group, int64_t hkv) {
  if (g_tile_force != 0) return g_tile_force;
  int g = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
  while (g > 1 && hkv * ceil_div(group, (int64_t)g) < kMinHeadBlocks) g /= 2;
  return g;
}

// v6: the largest split count launched as one cluster (the merge in decode_split_kernel): the
// portable cluster size. Measured on an H100 (session 37, docs/kernels/attention.md v6): up to 8
// splits the cluster saves 0.4-1.1 us a call at T 1,024 (B4 H32 20.29 -> 19.50 us) and -0.95 to
// +0.30 us at 4,096; a bound of 16 (non-portable clusters; the decode graph's split count at 1,024+ keys) lost
// up to 45% on gpt-oss's heads (64 / 8 at T 1,024: 12.26 -> 17.76 us) and was not kept.
// attention_decode_cluster_force (tests, A/Bs): 1 never (v5's reduce), 8 the bound, 0 the default.
constexpr int kMaxClusterSplits = 8;
int g_cluster_force = 0;

int cluster_bound() { return g_cluster_force != 0 ? g_cluster_force : kMaxClusterSplits; }

struct SinkWindow {
  const float* sinks;  // [Hq] fp32 or null
  int window;          // 0: none
  int short_keys;      // > 0: sequences of at most this many keys in view take one split
  bool reduce;         // false: no reduce launch (every sequence must be that short)
};

template <typename T, int D, int G>
cudaError_t launch_g(const T* q, const T* kc, const T* vc, const void* lens, bool lens64, T* out, float* ws_o,
                     float* ws_ml, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int splits, float scale,
                     SinkWindow sw, cudaStream_t st) {
  const int group = (int)(Hq / Hkv);
  const int gblocks = (group + G - 1) / G;
  const dim3 grid(splits, (unsigned)(Hkv * gblocks), (unsigned)B);
  if (sw.reduce && splits >= 2 && splits <= cluster_bound()) {
    // v6: one cluster per row group, merged in shared memory; no workspace, no reduce launch
    const dim3 cl(splits, 1, 1);
    return launch_pdl_ex(decode_split_kernel<T, D, G, true>, grid, dim3(kThreads), 0, st, &cl, q, kc, vc, lens,
                         lens64, ws_o, ws_ml, (int)Hq, (int)Hkv, (int)S, splits, group, gblocks, scale * kLog2e,
                         sw.window, out, sw.sinks, kLog2e, sw.short_keys);
  }
  // both launched as programmatic dependents (PDL): each may start while its predecessor finishes
  cudaError_t e = launch_pdl(decode_split_kernel<T, D, G, false>, grid, dim3(kThreads), 0, st, q, kc, vc, lens,
                             lens64, ws_o, ws_ml, (int)Hq, (int)Hkv, (int)S, splits, group, gblocks, scale * kLog2e,
                             sw.window, out, sw.sinks, kLog2e, sw.short_keys);
  if (e != cudaSuccess || !sw.reduce) return e;
  return launch_pdl(decode_reduce_kernel<T, D>, dim3((unsigned)(B * Hq)), dim3(kReduceThreads), 0, st, ws_o, ws_ml,
                    sw.sinks, out, splits, (int)Hq, kLog2e);
}

template <typename T, int D>
cudaError_t launch_d(const T* q, const T* kc, const T* vc, const void* lens, bool lens64, T* out, float* ws_o,
                     float* ws_ml, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int splits, float scale,
                     SinkWindow sw, cudaStream_t st) {
  switch (pick_group_tile(Hq / Hkv, Hkv)) {
    case 1: return launch_g<T, D, 1>(q, kc, vc, lens, lens64, out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, st);
    case 2: return launch_g<T, D, 2>(q, kc, vc, lens, lens64, out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, st);
    case 4: return launch_g<T, D, 4>(q, kc, vc, lens, lens64, out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, st);
    default: return launch_g<T, D, 8>(q, kc, vc, lens, lens64, out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, st);
  }
}

}  // namespace

int attention_decode_splits(int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int num_sms) {
  // About 4 blocks per SM (fewer, longer splits than 8 per SM measured up to 12% faster on
  // the H100 at batch 4-8: tests/ops/explore_decode.py, docs/kernels/attention.md), each
  // split a whole number of 64-key steps.
  const int64_t group = Hq / Hkv;
  const int64_t g = pick_group_tile(group, Hkv);
  const int64_t units = B * Hkv * ((group + g - 1) / g);
  int64_t splits = std::max<int64_t>(1, 4LL * num_sms / std::max<int64_t>(units, 1));
  splits = std::min<int64_t>(std::min<int64_t>(splits, std::max<int64_t>(1, ceil_div(S, kSplitAlign))), kMaxSplits);
  const int64_t chunk = ceil_div(ceil_div(S, splits), kSplitAlign) * kSplitAlign;
  return (int)std::max<int64_t>(1, std::min<int64_t>(ceil_div(S, chunk), kMaxSplits));
}

int attention_decode_group_tile(int64_t Hq, int64_t Hkv) {
  return Hkv > 0 && Hq % Hkv == 0 ? pick_group_tile(Hq / Hkv, Hkv) : 0;
}

int attention_decode_cluster_force(int64_t bound) {
  if (bound == 0 || bound == 1 || bound == kMaxClusterSplits) g_cluster_force = (int)bound;
  return cluster_bound();
}

int attention_decode_tile_force(int64_t tile) {
  if (tile == 0 || tile == 1 || tile == 2 || tile == 4 || tile == 8) g_tile_force = (int)tile;
  return g_tile_force;
}

cudaError_t launch_attention_decode(int dtype, const void* q, const void* k_cache, const void* v_cache,
                                    const void* seq_lens, bool lens_int64, void* out, float* ws_o, float* ws_ml,
                                    int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D, int splits, float scale,
                                    const float* sinks, int64_t window, int64_t short_keys, bool reduce,
                                    cudaStream_t stream) {
  if (B == 0 || Hq == 0) return cudaSuccess;
  if (Hkv <= 0 || Hq % Hkv != 0 || splits < 1 || splits > kMaxSplits) return cudaErrorInvalidValue;
  if (window < 0 || window > INT32_MAX) return cudaErrorInvalidValue;
  if (short_keys < 0 || short_keys > INT32_MAX || (!reduce && short_keys == 0)) return cudaErrorInvalidValue;
  const SinkWindow sw{sinks, (int)window, (int)short_keys, reduce};
  if (!(aligned16(q) && aligned16(k_cache) && aligned16(v_cache))) return cudaErrorMisalignedAddress;
  GPTE_DISPATCH(dtype, T, {
    const T* qq = (const T*)q;
    const T* kk = (const T*)k_cache;
    const T* vv = (const T*)v_cache;
    if (D == 64) return launch_d<T, 64>(qq, kk, vv, seq_lens, lens_int64, (T*)out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, stream);
    if (D == 128) return launch_d<T, 128>(qq, kk, vv, seq_lens, lens_int64, (T*)out, ws_o, ws_ml, B, Hq, Hkv, S, splits, scale, sw, stream);
    return cudaErrorInvalidValue;
  });
  return cudaSuccess;
}

}  // namespace gpte
