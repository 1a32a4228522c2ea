// Every transformer block of a batch-1 decode step in ONE persistent launch (fp16 weights and
// activations; GPT-2 and Llama layers).
//
// Why: the per-op decode step launches ~6 kernels per layer, and each pays ~2-3 us that no
// weight byte moves in (launch, the input row read after the wait on the previous kernel, the
// last wave, the epilogue): GPT-2 1.5B's step is ~2.04 ms against a 0.75 ms floor (3.19 GB at
// 4.2 TB/s), docs/kernels/decode.md. Weights do not depend on activations, so a kernel that
// owns the GPU for the whole step can keep loading the next product's weights while it waits for
// the previous product's result: the waits stop costing DRAM time as long as the bytes in
// flight cover them (the idea of the "no bubbles" Llama megakernels; written from the idea).
//
// v1 (this file). One 256-thread block per SM, all resident (grid = SM count, checked by
// occupancy before launch). Each warp walks ONE flat sequence of weight batches over every
// product of every layer (QKV, output, up, down per layer) and keeps kStages - 1 batches in
// flight through a per-lane cp.async ring in shared memory (linear.cu's v6 ring, 5 stages:
// 160 KiB per SM, ~21 MB over the GPU, ~5 us of DRAM time), across product and layer
// boundaries. A product's rows go to warps as in the v6 GEMV (pair j -> block j % grid, warp
// j / grid). The consumer side of a block walks the products in order, separated by grid
// barriers: QKV (+ RoPE, KV append) | attention split [| split reduce] | output (+ residual) |
// up (norm fused; GELU or SwiGLU) | down (+ residual). Before each product the block stages its
// input row in shared memory (the norm applied there) with the GEMV's own XStage.
// Numbers: bit-identical to the per-op path: the same staging (XStage), the same per-lane chunk
// order and fmaf sequence as gemv_kernel / gemv_pipe_kernel at M = 1, the same epilogue
// (finish_pair), the same attention bodies (attention_decode_impl.cuh) with the same splits.
// Memory: every intermediate (the residual stream between products, q, the attention output,
// the MLP activation, the split workspace) has its own buffer per layer, so no address is read
// in a launch before that launch writes it (no L1 line can be stale), and the grid barrier's
// release/acquire pair orders the writes before the reads.
#include "attention_decode_impl.cuh"
#include "linear_common.cuh"

namespace gpte {
namespace {
using namespace linear_detail;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kStages = 5;  // ring batches per lane, kStages - 1 in flight
constexpr int kU = 4;       // 16-byte chunks per row per lane per batch (the M = 1 ring GEMV's)
constexpr int kCH = 8;      // fp16 weights per 16-byte chunk
constexpr int kRingBytes = kStages * 2 * kU * kThreads * 16;  // 160 KiB
constexpr int kSmemMax = 200 * 1024;  // dynamic; with the static arrays (<= 14 KiB) under the 227 KiB opt-in limit
static_assert(kThreads == attn_detail::kReduceThreads, "the reduce body runs on the whole block");
static_assert(kThreads >= attn_detail::kThreads, "the split body runs on the first warps");

__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// Grid barrier over one 64-bit arrival counter that only grows: every launch adds exactly
// grid x (barriers it passes), so between launches it is a multiple of the grid, and a block
// takes its targets from the value it reads at start (at most grid - 1 blocks can have arrived
// at the first barrier before it does, so rounding down gives the launch's base). No reset, so
// no race between a block leaving a barrier and another resetting it. Thread 0 arrives with a
// release (after the block barrier: the block's writes come first) and spins with acquires.
struct GridSync {
  unsigned long long* cnt;
  unsigned long long target;  // thread 0's
  __device__ void init(unsigned long long* c) {
    cnt = c;
    if (threadIdx.x == 0) {
      const unsigned long long v = ld_acquire(c);
      target = v - v % gridDim.x;
    }
  }
  __device__ void sync() {
    __syncthreads();
    if (threadIdx.x == 0) {
      target += gridDim.x;
      asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(cnt) : "memory");
      while (ld_acquire(cnt) < target) {
      }
    }
    __syncthreads();
  }
};

__device__ __forceinline__ int npairs_of(const LinearArgs& p) {
  return p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
}

// A warp's place in its flat batch sequence: product `stage` (0 QKV, 1 output, 2 up, 3 down) of
// `layer`, row pair `pair`, first chunk `c` of the batch. layer == n_layer: past the end.
struct Cur {
  int layer, stage, pair, c;
};

struct Walk {
  const DecodeLayerPlan* plans;
  int n_layer, first, stride;  // first = this warp's first pair of every product
  // move past the products where this warp has no pair
  __device__ __forceinline__ void settle(Cur& s) const {
    while (s.layer < n_layer && s.pair >= npairs_of(plans[s.layer].lin[s.stage])) {
      s.pair = first;
      s.c = 0;
      if (++s.stage == 4) {
        s.stage = 0;
        ++s.layer;
      }
    }
  }
  __device__ __forceinline__ Cur advance(Cur s) const {
    s.c += 32 * kU;
    if (s.c >= plans[s.layer].lin[s.stage].kt / kCH) {
      s.c = 0;
      s.pair += stride;
      settle(s);
    }
    return s;
  }
};

template <int D, int G>
__device__ __forceinline__ void attention(const AttnArgs& a, GridSync& gs) {
  using attn_detail::kLog2e;
  const __half* q = static_cast<const __half*>(a.q);
  __half* out = static_cast<__half*>(a.out);
  const int group = a.Hq / a.Hkv, gblocks = (group + G - 1) / G, ys = a.Hkv * gblocks;
  // the one-split decision the split body makes (window 0), taken here to skip the empty splits
  int64_t len = a.lens[0];
  len = len < 0 ? 0 : (len > a.S ? a.S : len);
  const bool one = a.short_keys > 0 && len <= a.short_keys;
  const int units = (one ? 1 : a.splits) * ys;
  if ((threadIdx.x >> 5) < attn_detail::kWarps) {
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
      attn_detail::decode_split_block<__half, D, G>(
          q, static_cast<const __half*>(a.k_cache), static_cast<const __half*>(a.v_cache), a.lens, false, a.ws_o,
          a.ws_ml, a.Hq, a.Hkv, a.S, a.splits, group, gblocks, a.scale_log2, 0, out, nullptr, kLog2e, a.short_keys,
          u / ys, u % ys, 0);
      attn_detail::split_block_sync();  // the unit's shared arrays are read before the next unit writes them
    }
  }
  gs.sync();
  if (!one) {
    for (int r = blockIdx.x; r < a.Hq; r += gridDim.x)
      attn_detail::decode_reduce_block<__half, D>(a.ws_o, a.ws_ml, nullptr, out, a.splits, a.Hq, kLog2e, r);
    gs.sync();
  }
}

template <int D, int G>
__global__ void __launch_bounds__(kThreads, 1)
    decode_layers_kernel(const DecodeLayerPlan* __restrict__ plans, int n_layer, const __half* __restrict__ x_in,
                         unsigned long long* counter) {
  using A = __half;
  extern __shared__ __align__(16) unsigned char smem[];
  uint4* ring = reinterpret_cast<uint4*>(smem);                 // [kStages][2][kU][threads] chunks
  float* xs = reinterpret_cast<float*>(smem + kRingBytes);      // [K] the staged input row
  __shared__ LinearArgs sp;                                     // the product being consumed
  __shared__ float s_mean[1], s_rstd[1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Walk walk{plans, n_layer, (int)blockIdx.x + (int)gridDim.x * warp, (int)gridDim.x * kWarps};
  auto slot = [&](int st, int r, int u) { return ring + ((st * 2 + r) * kU + u) * kThreads + threadIdx.x; };

  auto issue = [&](int st, const Cur& s) {  // one commit group per call, empty past the end
    if (s.layer < n_layer) {
      const LinearArgs& p = plans[s.layer].lin[s.stage];
      int r0, r1;
      pair_rows(p, s.pair, r0, r1);
      const A* w = static_cast<const A*>(p.w);
      const A* w0 = w + (int64_t)r0 * p.K;
      const A* w1 = w + (int64_t)(r1 < p.N ? r1 : r0) * p.K;  // odd N: the lone row re-read, never stored
      const int nch = p.kt / kCH;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int c = s.c + u * 32 + lane;
        if (c < nch) {
          cp_async16(slot(st, 0, u), w0 + (int64_t)c * kCH);
          cp_async16(slot(st, 1, u), w1 + (int64_t)c * kCH);
        }
      }
    }
    cp_async_commit();
  };
  float acc0 = 0.f, acc1 = 0.f;
  auto consume = [&](int st, const Cur& s) {  // the product in sp; the fmaf order of gemv_pipe_kernel
    const int nch = sp.kt / kCH;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int c = s.c + u * 32 + lane;
      if (c < nch) {
        float wa[kCH], wb[kCH];
        unpack8<A>(*slot(st, 0, u), wa);
        unpack8<A>(*slot(st, 1, u), wb);
        const float4* xm = reinterpret_cast<const float4*>(xs + c * kCH);
#pragma unroll
        for (int j = 0; j < kCH / 4; ++j) {
          const float4 q = xm[j];
          acc0 = fmaf(wa[4 * j], q.x, acc0);
          acc0 = fmaf(wa[4 * j + 1], q.y, acc0);
          acc0 = fmaf(wa[4 * j + 2], q.z, acc0);
          acc0 = fmaf(wa[4 * j + 3], q.w, acc0);
          acc1 = fmaf(wb[4 * j], q.x, acc1);
          acc1 = fmaf(wb[4 * j + 1], q.y, acc1);
          acc1 = fmaf(wb[4 * j + 2], q.z, acc1);
          acc1 = fmaf(wb[4 * j + 3], q.w, acc1);
        }
      }
    }
    if (s.c + 32 * kU < nch) return;  // more batches of this pair follow
    int r0, r1;
    pair_rows(sp, s.pair, r0, r1);
    const float v0 = warp_sum(acc0), v1 = warp_sum(acc1);
    if (lane == 0) finish_pair<A>(sp, 0, s.pair, r0, r1, r1 < sp.N, v0, v1);
    acc0 = acc1 = 0.f;
  };

  // Before the wait on the previous kernel: this warp's first kStages - 1 batches (weights are
  // constant; cp.async touches only this block's shared memory).
  Cur tail{0, 0, walk.first, 0};
  walk.settle(tail);
  Cur head = tail;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    issue(s, head);
    head = walk.advance(head);
  }
  pdl_wait();  // x_in comes from the kernel before. No launch_dependents: a dependent's blocks
               // must not take an SM that one of this grid's blocks still waits for.
  GridSync gs;
  gs.init(counter);

  int i = 0;  // batches consumed
  for (int l = 0; l < n_layer; ++l) {
    for (int s = 0; s < 4; ++s) {
      if (s == 1) attention<D, G>(plans[l].attn, gs);  // ends on a grid barrier
      if (threadIdx.x == 0) {
        sp = plans[l].lin[s];
        if (l == 0 && s == 0) sp.x = x_in;
        if (l == 0 && s == 1) sp.residual = x_in;
      }
      __syncthreads();
      XStage<A, 1, kThreads>::stage(sp, xs, 0, 1, s_mean, s_rstd);  // ends on a block barrier
      while (tail.layer == l && tail.stage == s) {
        cp_async_wait<kStages - 2>();  // batch i has landed (groups committed so far: i + kStages - 1)
        consume(i % kStages, tail);
        issue((i + kStages - 1) % kStages, head);  // the slot batch i - 1 used, consumed by this lane
        head = walk.advance(head);
        tail = walk.advance(tail);
        ++i;
      }
      if (s < 3 || l + 1 < n_layer) gs.sync();  // the last product's writes need only the kernel's end
    }
  }
  cp_async_wait<0>();
}

template <int D, int G>
cudaError_t launch_dg(const DecodeLayerPlan* plans, int n_layer, const void* x_in, unsigned long long* counter,
                      int max_k, int num_sms, cudaStream_t st) {
  static bool attr_set = false;  // once per instantiation: allow more than 48 KiB of shared memory
  if (!attr_set) {
    cudaError_t e = cudaFuncSetAttribute(decode_layers_kernel<D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kSmemMax);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  const size_t smem = kRingBytes + (size_t)ceil_div(max_k, kCH) * kCH * sizeof(float);
  if (smem > (size_t)kSmemMax) return cudaErrorInvalidValue;
  // the grid barriers need every block resident at once: one per SM, and one must fit
  int per_sm = 0;
  cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_layers_kernel<D, G>, kThreads, smem);
  if (e != cudaSuccess) return e;
  if (per_sm < 1) return cudaErrorCooperativeLaunchTooLarge;
  return launch_pdl(decode_layers_kernel<D, G>, dim3((unsigned)num_sms), dim3(kThreads), smem, st, plans, n_layer,
                    static_cast<const __half*>(x_in), counter);
}

}  // namespace

bool decode_layers_supported(int64_t head_dim, int64_t group) {
  if (group < 1) return false;
  const int g = attn_detail::pick_group_tile(group);
  return (head_dim == 64 || head_dim == 128) && (g == 1 || g == 4);
}

cudaError_t launch_decode_layers(const DecodeLayerPlan* plans, int n_layer, const void* x_in,
                                 unsigned long long* counter, int head_dim, int group, int max_k, int num_sms,
                                 cudaStream_t stream) {
  if (n_layer <= 0) return cudaSuccess;
  if (!decode_layers_supported(head_dim, group) || max_k <= 0 || num_sms <= 0 || counter == nullptr)
    return cudaErrorInvalidValue;
  const int g = attn_detail::pick_group_tile(group);
  if (head_dim == 64)
    return g == 1 ? launch_dg<64, 1>(plans, n_layer, x_in, counter, max_k, num_sms, stream)
                  : launch_dg<64, 4>(plans, n_layer, x_in, counter, max_k, num_sms, stream);
  return g == 1 ? launch_dg<128, 1>(plans, n_layer, x_in, counter, max_k, num_sms, stream)
                : launch_dg<128, 4>(plans, n_layer, x_in, counter, max_k, num_sms, stream);
}

}  // namespace gpte
