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

#include "attention_decode_impl.cuh"
#include "common.cuh"
#include "launchers.h"

namespace gpte {
namespace {
using namespace attn_detail;

template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const T* __restrict__ q, const T* __restrict__ kc,
                                                              const T* __restrict__ vc, const void* __restrict__ lens,
                                                              bool lens64, float* __restrict__ ws_o,
                                                              float* __restrict__ ws_ml, int Hq, int Hkv, int S,
                                                              int splits, int group, int gblocks, float scale_log2,
                                                              int window, T* __restrict__ out,
                                                              const float* __restrict__ sinks, float sink_log2,
                                                              int short_keys) {
  pdl_wait();  // q, the cache and the lengths come from the kernels before
  pdl_launch_dependents();
  decode_split_block<T, D, G>(q, kc, vc, lens, lens64, ws_o, ws_ml, Hq, Hkv, S, splits, group, gblocks, scale_log2,
                              window, out, sinks, sink_log2, short_keys, blockIdx.x, blockIdx.y, blockIdx.z);
}

template <typename T, int D>
__global__ void __launch_bounds__(kReduceThreads) decode_reduce_kernel(const float* __restrict__ ws_o,
                                                                      const float* __restrict__ ws_ml,
                                                                      const float* __restrict__ sinks,
                                                                      T* __restrict__ out, int splits, int Hq,
                                                                      float sink_log2) {
  pdl_wait();
  pdl_launch_dependents();
  decode_reduce_block<T, D>(ws_o, ws_ml, sinks, out, splits, Hq, sink_log2, blockIdx.x);
}


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
  // both launched as programmatic dependents (PDL): each may start while its predecessor finishes
  cudaError_t e = launch_pdl(decode_split_kernel<T, D, G>, grid, dim3(kThreads), 0, st, q, kc, vc, lens, lens64, ws_o,
                             ws_ml, (int)Hq, (int)Hkv, (int)S, splits, group, gblocks, scale * kLog2e, sw.window,
                             out, sw.sinks, kLog2e, sw.short_keys);
  if (e != cudaSuccess || !sw.reduce) return e;
  return launch_pdl(decode_reduce_kernel<T, D>, dim3((unsigned)(B * Hq)), dim3(kReduceThreads), 0, st, ws_o, ws_ml,
                    sw.sinks, out, splits, (int)Hq, kLog2e);
}

template <typename T, int D>
cudaError_t launch_d(const T* q, const T* kc, const T* vc, const void* lens, bool lens64, T* out, float* ws_o,
                     float* ws_ml, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int splits, float scale,
                     SinkWindow sw, cudaStream_t st) {
  switch (pick_group_tile(Hq / Hkv)) {
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
  const int64_t g = pick_group_tile(group);
  const int64_t units = B * Hkv * ((group + g - 1) / g);
  int64_t splits = std::max<int64_t>(1, 4LL * num_sms / std::max<int64_t>(units, 1));
  splits = std::min<int64_t>(std::min<int64_t>(splits, std::max<int64_t>(1, ceil_div(S, kSplitAlign))), kMaxSplits);
  const int64_t chunk = ceil_div(ceil_div(S, splits), kSplitAlign) * kSplitAlign;
  return (int)std::max<int64_t>(1, std::min<int64_t>(ceil_div(S, chunk), kMaxSplits));
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
