// Host-side launchers of the gpt_engine kernels: raw pointers, sizes and a stream.
// Each returns the launch's cudaError_t; bindings.cpp turns a failure into a Python error.
// `dtype` is a gpte::DType code (0 fp32, 1 fp16, 2 bf16). Tensors are dense unless a
// stride argument says otherwise (strides in elements).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpte {

cudaError_t launch_residual_add(int dtype, const void* x, const void* y, void* out, int64_t n, cudaStream_t stream);

cudaError_t launch_gelu(int dtype, const void* x, void* out, int64_t n, bool tanh_form, cudaStream_t stream);

cudaError_t launch_bias_gelu(int dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t f,
                             bool tanh_form, cudaStream_t stream);

cudaError_t launch_layernorm(int dtype, const void* x, const void* w, const void* b, void* y, int64_t rows,
                             int64_t c, float eps, cudaStream_t stream);

cudaError_t launch_add_layernorm(int dtype, const void* x, const void* residual, const void* w, const void* b,
                                 void* h, void* y, int64_t rows, int64_t c, float eps, cudaStream_t stream);

// A token whose id or position is out of range gets a NaN row and sets *bad_flag to 1.
cudaError_t launch_embedding(int dtype, const int64_t* ids, const int64_t* pos, const void* wte, const void* wpe,
                             void* out, int64_t ntok, int64_t c, int64_t vocab, int64_t npos, int* bad_flag,
                             cudaStream_t stream);

// k/v: [B, T, Hkv, D] with batch/token strides; caches: dense [B, Hkv, S, D].
cudaError_t launch_kv_append(int dtype, void* k_cache, void* v_cache, const void* k, const void* v, int64_t B,
                             int64_t Hkv, int64_t S, int64_t D, int64_t T, int64_t k_sb, int64_t k_st,
                             int64_t v_sb, int64_t v_st, int64_t start_pos, cudaStream_t stream);

// q: [B, T, Hq, D], k/v: [B, T, Hkv, D] with batch/token strides (heads packed); o dense.
// dtype fp16 or bf16; D 64 or 128. variant: kernel and tile shape (0 = default; see
// attention_prefill.cu). work_counter: one int32 on the device, zero at launch (the Hopper
// kernel's work-item counter; the call leaves it changed). sinks: null or fp32 [Hq] per-head
// sink logits; window: 0 or the sliding window (query t sees keys in (t - window, t]).
cudaError_t launch_attention_prefill(int dtype, const void* q, const void* k, const void* v, void* o, int64_t B,
                                     int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_sb, int64_t q_st,
                                     int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, float scale,
                                     int variant, int* work_counter, const float* sinks, int64_t window,
                                     cudaStream_t stream);

// Number of sequence splits the decode kernel will use (sizes the fp32 workspace:
// B * Hq * splits * D floats for partial outputs, B * Hq * splits * 2 for (max, sum)).
int attention_decode_splits(int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int num_sms);
// The query heads per block the decode kernel takes for Hq / Hkv heads (0: not a GQA shape).
int attention_decode_group_tile(int64_t Hq, int64_t Hkv);
// Test and bench hook: 1, 2, 4 or 8 forces that group tile for the launches (and split counts)
// after it, 0 returns to the rule; other values change nothing. Returns the force in effect.
int attention_decode_tile_force(int64_t tile);
// Test and bench hook (v6): the largest split count merged in one cluster (1 never, 8; 0 the
// default, 8). Returns the bound in effect.
int attention_decode_cluster_force(int64_t bound);
// Test and bench hook of the dense decode GEMV (linear_impl.cuh, launch_mt): where K < 4096 rows
// would take v3 two batches per pair, 0 takes the ring kernel past one round of pairs (the
// default), 1 never, 2 only past 8 rounds; 3 as 0, and v3 also for M = 1 rows of K >= 4096 whose
// pairs fit one round of v3's warps; 4 v3 with 12 chunks per lane (one batch per pair) for M = 1
// rows of 257-384 chunks, 5 the same past 8 rounds only; + 8: the ring kernel's copies as bulk
// copies (v20, M = 1); + 16: every M >= 2 on the ring kernel where its staged rows fit; + 32: M
// 9-16 on v3 as before v30 (unless + 16); other values change nothing. Returns the mode in effect.
int linear_ring_force(int64_t mode);
// Test/bench hook of the dense decode GEMV's LayerNorm statistics (csrc/linear_common.cuh v23):
// 1 (the default) one pass shifted by the row's first value, 0 two passes (v2.1's bits); other
// values change nothing. Returns the setting in effect.
int linear_stats_force(int64_t on);
// Test and bench hook of the dense decode GEMV (v27): 1 (the default) folds the norm into the
// epilogue where it can (see LinearArgs::fold), 0 never, 2 folds with v3's row statistics taken
// per pair past 4 rows as before v31 (A/Bs); other values change nothing. Returns the setting in
// effect.
int linear_fold_force(int64_t on);
// Test and bench hook of the decode GEMVs' epilogue at 8 and 16 rows, dense and packed (v32,
// linear_common.cuh pair_sums_scatter): 1 reduces a pair's 2 x MT sums across the warp so that
// each lane keeps one and 16 lanes finish at once (the default), 0 one warp_sum per sum and one
// writing lane per row in turn; the same bits. Other values change nothing. Returns the setting
// in effect.
int linear_scatter_force(int64_t on);
// Test/bench hook of the packed decode GEMV (csrc/linear_q_impl.cuh v3.3): 1 decodes MXFP4 in the
// nibbles' order (the default), 0 in v3's (the same bits); other values change nothing.
int qgemv_zip_force(int64_t on);
// Test/bench hook of the packed decode GEMV (csrc/linear_q_impl.cuh v3.4): 1 folds the norm into the
// epilogue (the default; a LayerNorm also needs fold_c / fold_d), 0 v3.3's staging; other values
// change nothing. Returns the setting in effect.
int qgemv_fold_force(int64_t on);

// q: [B, Hq, D]; caches dense [B, Hkv, S, D]; seq_lens int32 or int64 [B]; D 64 or 128.
// sinks: null or fp32 [Hq] per-head sink logits; window: 0 or the sliding window (keys at
// positions > len - 1 - window). short_keys > 0: a sequence with at most that many keys in view
// takes one split and has its output written by the split kernel; reduce = false leaves the
// reduce launch out (valid only when every sequence is that short; short_keys must be > 0).
cudaError_t launch_attention_decode(int dtype, const void* q, const void* k_cache, const void* v_cache,
                                    const void* seq_lens, bool lens_int64, void* out, float* ws_o, float* ws_ml,
                                    int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D, int splits,
                                    float scale, const float* sinks, int64_t window, int64_t short_keys,
                                    bool reduce, cudaStream_t stream);

// ---- linear (decode GEMV) ----
enum LinearNorm : int { kNormNone = 0, kNormLayer = 1, kNormRms = 2 };
enum LinearAct : int { kActNone = 0, kActGeluTanh = 1, kActSwiglu = 2, kActQkv = 3 };
constexpr int kLinearMaxM = 16;  // activation rows one GEMV launch serves (decode batch)

enum RopeMode : int { kRopeNone = 0, kRopeAdjacent = 1, kRopeNeox = 2 };
// decode-step status word bits (one int32 on the device; kernels OR them in, the host reads it
// asynchronously; gpt_engine/cuda_graph.py turns each into its error)
constexpr int kStatusBadIndex = 1;     // embedding: a token id or position outside its table
constexpr int kStatusBadPosition = 2;  // qkv: a position outside the KV cache or RoPE table
constexpr int kStatusNonFinite = 4;    // sampling: a NaN logit

// kActQkv: the weight is [q heads | k heads | v heads] (rows of D); q (RoPE'd) goes to out
// [M, hq, D]; k (RoPE'd) and v go to the caches [M, hkv, cache_s, D] at row pos[m]; lens[m] =
// pos[m] + 1. A position outside the cache or table raises kStatusBadPosition and writes NaN q.
struct QkvEpilogue {
  const int64_t* pos;
  const float* cos_t;    // [table_rows, rope_dim / 2]
  const float* sin_t;
  void* k_cache;
  void* v_cache;
  int32_t* lens;         // or null
  int* status;           // or null
  int64_t cache_s, table_rows;
  int hq, hkv, d, rope_dim, rope_mode;
};

struct LinearArgs {
  const void* x;         // [M, K] activations (dtype A), dense rows
  const void* w;         // [N, K] weights (dtype W), dense rows, 16-byte aligned
  const void* bias;      // [N] (A) or null
  const void* residual;  // [M, n_out] (A) or null: added last
  const void* norm_w;    // [K] (A): LayerNorm / RMSNorm weight, when norm != kNormNone
  const void* norm_b;    // [K] (A): LayerNorm bias
  void* out;             // [M, n_out], dtype A, or fp32 when out_f32
  int M, N, K;
  int n_out;             // N, or N / 2 for SwiGLU (rows [0, n_out) gate, [n_out, N) up)
  int norm, act;
  float eps;
  bool out_f32;
  QkvEpilogue qkv;       // act == kActQkv only
  int kt;                // set by the launcher: K tile staged in shared memory
  bool vec_x;            // set by the launcher: x rows read with 16-byte loads
  int ksplit;            // set by the packed GEMV's launcher: warps per row pair (1 or 2)
  int khalves;           // set by the packed GEMV's launcher: 2 = a row's sum is its two K halves' sums added
  int stats_one_pass;    // set by the dense GEMV's launcher (v23): LayerNorm statistics in one shifted pass
  // v27 (dense GEMV, docs/kernels/decode.md): the norm folded into the epilogue. x is staged as
  // (x - x[0]) * norm_w (LayerNorm) or x * norm_w (RMSNorm), unrounded; after the dot products
  // out = rstd * (s - (mean - x[0]) * fold_c[n]) + fold_d[n] (LayerNorm) or rstd * s (RMSNorm).
  const float* fold_c;   // [N] fp32, LayerNorm only: sum_k W[n, k] norm_w[k] (packed: W dequantized)
  const float* fold_d;   // [N] fp32, LayerNorm only: sum_k W[n, k] norm_b[k]
  int fold;              // set by the GEMVs' launchers: 1 = v27 / packed v3.4 (K % 8 == 0, and fold_c / fold_d for LayerNorm);
                         // 2 = the dense v27 with v3's per-pair row statistics past 4 rows (linear_fold_force(2), v31's A/B)
  int scatter;           // set by the GEMVs' launchers: 1 = v32's epilogue (MT >= 8, linear_scatter_force)
  bool vec_nw;           // set by the dense GEMV's launcher (v27): norm_w read with 16-byte loads
};

// ---- qkv_rope: split the QKV projection into heads, RoPE, append k/v to the cache ----
struct QkvRopeArgs {
  const void* qkv;       // [ntok, (Hq + 2 Hkv) * D] (dtype), dense
  const int64_t* pos;    // [ntok] position of each token
  const float* cos_t;    // [table_rows, R / 2] (RoPE only)
  const float* sin_t;
  void* q_out;           // [ntok, Hq, D]
  void* k_out;           // [ntok, Hkv, D] or null
  void* v_out;           // [ntok, Hkv, D] or null
  void* k_cache;         // [B, Hkv, S, D] or null; token t of sequence b = t / T writes row pos[t]
  void* v_cache;
  int32_t* lens;         // [B] or null: set to pos + 1 of each sequence's last token
  int* status;           // or null: kStatusBadPosition
  int64_t ntok, T, S, table_rows;
  int Hq, Hkv, D, R, rope_mode;
};
cudaError_t launch_qkv_rope(int dtype, const QkvRopeArgs& p, cudaStream_t stream);

// ---- greedy sampling: next[r] = argmax(logits[r, :n_valid]); pos[r] += 1 (pos may be null) ----
cudaError_t launch_sample_greedy(const float* logits, int64_t rows, int64_t row_stride, int64_t n_valid,
                                 int64_t* next, int64_t* pos, int* status, cudaStream_t stream);

// Whether launch_linear_gemv has a kernel for these dtypes (gpte::DType codes) and sizes.
bool linear_gemv_supported(int wdtype, int adtype, int64_t M, int64_t K);
cudaError_t launch_linear_gemv(int wdtype, int adtype, const LinearArgs& p, int num_sms, cudaStream_t stream);

// ---- GGUF packed weights (csrc/linear_q.cu, csrc/dequant.cu; ggml_type: gguf-py's
// GGMLQuantizationType id: Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, MXFP4 39) ----
// (values per block, bytes per block) of a ggml type with a CUDA block decoder
// (gguf.constants.GGML_QUANT_SIZES); (0, 0) for any other type.
inline void ggml_block_shape(int ggml_type, int& qk, int& ts) {
  switch (ggml_type) {
    case 2: qk = 32, ts = 18; return;    // Q4_0
    case 3: qk = 32, ts = 20; return;    // Q4_1
    case 6: qk = 32, ts = 22; return;    // Q5_0
    case 7: qk = 32, ts = 24; return;    // Q5_1
    case 8: qk = 32, ts = 34; return;    // Q8_0
    case 12: qk = 256, ts = 144; return; // Q4_K
    case 13: qk = 256, ts = 176; return; // Q5_K
    case 14: qk = 256, ts = 210; return; // Q6_K
    case 39: qk = 32, ts = 17; return;   // MXFP4
    default: qk = 0, ts = 0; return;
  }
}
// Whether launch_linear_q has a kernel for this type, activation dtype, M and K: the type has a
// decoder, K is whole blocks, M <= kLinearMaxM and the weight ring plus the M activation rows
// of K values as 16-bit codes fit shared memory (else the caller dequantizes and takes the dense path).
bool linear_q_supported(int ggml_type, int adtype, int64_t M, int64_t K);
// As launch_linear_gemv, with p.w the raw bytes [N, K / block values * block bytes], 16-byte aligned.
cudaError_t launch_linear_q(int ggml_type, int adtype, const LinearArgs& p, int num_sms, cudaStream_t stream);
// out[i, :] = dequantize(w[ids[i], :]) for i < nrows (ids null: row i), bit-exact with
// gguf-py's dequantize, rounded once to out's dtype (odtype: a gpte::DType code). w: [N, row
// bytes] raw blocks, 4-byte aligned; K values per row (K / 8 <= 2^30). An id outside [0, N)
// gives a NaN row and ORs kStatusBadIndex into *status (status may be null). With ids null the
// kernel reads w before its PDL wait (as the GEMVs read weights): w must not be written by the
// kernel just before it on the stream.
// add (null, or with ids: a dense [A, K] table of the output dtype, 16-byte aligned) and add_ids
// [nrows]: out row r = dtype(dtype(dequantize(w[ids[r]])) + add[add_ids[r]]), the sum in fp32 as
// residual_add's (GPT-2's packed token row plus its position row, one kernel); an add id outside
// [0, A) also gives a NaN row and the status bit.
cudaError_t launch_dequantize_rows(int ggml_type, int odtype, const void* w, int64_t N, int64_t K,
                                   const int64_t* ids, int64_t nrows, void* out, int* status, const void* add,
                                   const int64_t* add_ids, int64_t A, cudaStream_t stream);
// ---- gpt-oss mixture of experts (moe.cu): routing, then MXFP4 expert GEMVs ----
// Router logits h W^T + b (fp32 W [E, C], b [E]) -> top K experts per token (descending)
// and their softmax weights. E <= 256, K <= 32, C * 4 <= kMoeRouteMaxSmem (h[m] staged as fp32).
// With norm_w (fp32 [C]): h is first RMS-normalised (fp32, eps, rounded to dtype), written to
// h_out [M, C], and routed.
constexpr size_t kMoeRouteMaxSmem = 200 * 1024;
cudaError_t launch_moe_route(int dtype, const void* h, const float* router, const float* router_bias, int32_t* ids,
                             float* weights, int64_t M, int64_t E, int64_t C, int64_t K, const float* norm_w,
                             float eps, void* h_out, cudaStream_t stream);

constexpr int kMoeMaxBlocksPerLane = 4;  // C and F up to 4 * 32 * 32 = 4096
struct MoeArgs {
  const void* h;           // [M, C] (dtype)
  const int32_t* ids;      // [M, K] chosen experts
  const float* weights;    // [M, K] their routing weights
  const uint8_t* gate;     // [E * F, C / 32 * 17] MXFP4 blocks; expert e = rows e*F..(e+1)*F
  const void* gate_bias;   // [E, F] (dtype)
  const uint8_t* up;       // [E * F, C / 32 * 17]
  const void* up_bias;     // [E, F]
  const uint8_t* down;     // [E * C, F / 32 * 17]
  const void* down_bias;   // [E, C]
  const void* residual;    // [M, C] or null: out = residual + moe(h)
  float* act;              // [M, K, F] workspace (SwiGLU outputs)
  void* out;               // [M, C] (dtype)
  int64_t M, K, E, C, F;
};
// C, F multiples of 32, at most 4096; M * K <= 65535.
cudaError_t launch_moe_experts(int dtype, const MoeArgs& a, cudaStream_t stream);
int moe_blocks_per_lane(int64_t n);
// Test and bench hook of the expert kernels (moe.cu): 3, 6, 61, 7 or 71 forces that version for the
// launches after it, 0 (or 72) returns to the default (v7.2); other values change nothing. parts
// (timing only): 0 both kernels, 1 only gate/up, 2 only down (the kernel left out is not
// launched). Returns the version the next launch takes (k > 8: v3's kernels).
int moe_ab_force(int64_t version, int64_t parts);
// Test and bench hook of the routing kernel (moe.cu): 3 forces v3, 0 (or 4) returns to the
// default (v4 where launch_moe_route can use it, else v3). Returns 3 or 4.
int moe_route_ab_force(int64_t version);
// The routing kernel launch_moe_route runs for E experts of width C (a 16-byte aligned router,
// at most 16 tokens; more take v3): 4 or 3.
int moe_route_version(int64_t E, int64_t C);
size_t moe_down_smem_bytes(int64_t K, int64_t F);

// ---- gpt-oss mixture of experts for many tokens (moe_grouped.cu): grouped GEMM over the
// chosen (token, expert) pairs, MXFP4 experts dequantized tile by tile ----
struct MoeGroupedArgs {
  const void* x;           // gate/up: h [M, K]; down: act [P, K] (rows in expert order); dtype
  const int32_t* order;    // [P] pair ids (token * topk + slot) sorted by expert, stable
  const int32_t* counts;   // [E] pairs per expert (sum P)
  const uint8_t* w0;       // gate/up: gate, down: down; MXFP4 [E * N, K / 32 * 17], expert e = rows e*N..
  const uint8_t* w1;       // gate/up: up [E * N, K / 32 * 17]; down: null
  const void* b0;          // [E, N] (dtype): gate's or down's bias
  const void* b1;          // gate/up: up's bias [E, N]; down: null
  void* out;               // gate/up: act [P, N] (dtype, expert order); down: part [P, N] fp32
  const int32_t* dest;     // down: [P] row of part per pair (token * topk + rank of its expert)
  const float* weights;    // down: [P] routing weight per pair
  int64_t P, E, N, K, topk;
};
// gate/up: act = swiglu_oai(x Wg^T + bg, x Wu^T + bu); down: part[dest] = (x Wd^T + bd) * weight.
// dtype fp16 or bf16; K a multiple of 64, N even, E <= 256; x 16-byte aligned. Grid rows: moe_grouped_row_tiles.
cudaError_t launch_moe_grouped(int dtype, bool gate_up, const MoeGroupedArgs& a, cudaStream_t stream);
int64_t moe_grouped_row_tiles(int64_t P, int64_t E);
// The routing layout of the grouped MoE in one block: ids [P] (int32, P = M * topk; clamped to
// [0, E)) -> order [P] (pair ids sorted by expert, stable), counts [E], dest [P] (token * topk +
// rank of the pair's expert among the token's, ascending; equal ids by slot). E <= 256,
// P * 4 <= kMoeGroupedLayoutMaxSmem (the ids are staged in shared memory).
constexpr size_t kMoeGroupedLayoutMaxSmem = 200 * 1024;
cudaError_t launch_moe_grouped_layout(const int32_t* ids, int64_t P, int64_t E, int64_t topk, int32_t* order,
                                      int32_t* counts, int32_t* dest, cudaStream_t stream);
// out [M, C] = T(sum over r = 0..topk-1 in order of part[t * topk + r] (fp32 [M * topk, C])) (+ residual
// [M, C] in T, or null). C even; any dtype.
cudaError_t launch_moe_grouped_combine(int dtype, const float* part, const void* residual, void* out, int64_t M,
                                       int64_t topk, int64_t C, cudaStream_t stream);

// The decode loop on the device (decode_loop.cu): one parent graph per (decoder, sampler kind)
// whose WHILE nodes replay the captured steps step_graphs[0] (short; may be null) and
// step_graphs[1] (full) until a stop rule holds. ctl: int64 [kLoopCtlHead + batch] on the device;
// readback: int64 [batch + 1] on the device (the step's ids, then its status word); ring: int64
// [rows, batch + 1] and host: int64 [3], both from mapped_host_alloc. On an instantiation failure
// *instantiate_result holds the cudaGraphInstantiateResult. *exec_out: the uploaded exec.
constexpr int kLoopCtlHead = 5;
cudaError_t decode_loop_build(void* const* step_graphs, int64_t* ctl, const int64_t* readback, int batch,
                              int64_t* ring, int64_t rows, int64_t* host, cudaStream_t stream, void** exec_out,
                              int* instantiate_result);
cudaError_t decode_loop_launch(void* exec, cudaStream_t stream);
cudaError_t decode_loop_destroy(void* exec);
// Pinned host memory mapped into the device's address space (the loop's ring and host words).
cudaError_t mapped_host_alloc(void** ptr, size_t bytes);
cudaError_t mapped_host_free(void* ptr);

}  // namespace gpte
