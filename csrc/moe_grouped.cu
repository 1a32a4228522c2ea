// gpt-oss mixture of experts for many tokens (prefill): a grouped GEMM over the chosen
// (token, expert) pairs only, the MXFP4 expert blocks dequantized tile by tile into shared
// memory (gpt_engine/ops/moe_grouped.py holds the routing layout and the combine; the reference
// is GptOss.moe / reference_experts in models/gpt_oss.py).
//
// v1 (this file). The P = M * k pairs (pair p = token p / k, slot p % k) are listed in expert
// order (`order`, a stable sort of the flattened ids) with `counts` [E] pairs per expert. Grid:
// x = row tiles, a static bound sum_e ceil(count_e / TM) <= ceil(P / TM) + E (each block finds
// its (expert, row tile) by walking counts, and leaves when it has none); y = column tiles of
// N. x is the fast index so the row tiles of one expert run next to each other and share the
// weight tile through L2.
//   gate/up: act[i] = swiglu_oai(T(h[tok(i)] Wg_e^T + bg_e), T(h[tok(i)] Wu_e^T + bu_e)) for
//     sorted position i (rows of act are in expert order); a block computes 64 columns of both
//     gate and up for the same columns, so the SwiGLU is its epilogue.
//   down: part[dest(p)] = float(T(act[i] Wd_e^T + bd_e)) * weight(p), fp32, where dest(p) =
//     token * k + rank of the pair's expert among the token's k experts (ascending): the host
//     side then sums each token's k rows in ascending expert order, as the reference does.
//   T(...) is a rounding to the activation dtype where the reference (F.linear in the activation
//   dtype) rounds: the same values as the model's grouped path up to fp32 summation order.
// Tiles: TM = 64 rows x TN = 128 weight rows (gate/up: 64 gate + 64 up) x TK = 64, 8 warps as
// 2 (rows) x 4 (columns), each warp 32 x 32 through mma.sync m16n8k16 (fp16/bf16 in, fp32
// accumulate) with ldmatrix from padded shared memory (row stride 72 halves: conflict-free).
// Two shared stages: the next stage's global loads (h rows, 17-byte MXFP4 blocks as 5 aligned
// words) are in registers while the current stage's MMAs run.
//
// Weights: value = E2M1(code) x 2^(e - 127), computed exactly in fp32 (ggml's doubled code table
// times ggml_e8m0_to_fp32_half, as quant_blocks.cuh's decoders) and rounded once to the
// activation dtype: exact in bf16 always, exact in fp16 for e in [104, 140] (gpt-oss's scales),
// and otherwise the correctly rounded fp16 value, which is what the dequantize kernel feeding
// today's grouped path writes too.
#include <cmath>

#include "common.cuh"
#include "launchers.h"
#include "quant_blocks.cuh"  // e8m0_half (ggml_e8m0_to_fp32_half), load_mxfp4_words (shared with moe.cu)
#include "swiglu_oai.cuh"    // gpt-oss's clamped SwiGLU

namespace gpte {
namespace {

constexpr int kTM = 64;        // pair rows per block
constexpr int kTN = 128;       // weight rows per block (gate/up: 64 of each)
constexpr int kTK = 64;        // K per stage: two MXFP4 blocks per weight row
constexpr int kStride = kTK + 8;  // halves per shared row: 144 bytes, ldmatrix conflict-free
constexpr int kThreads = 256;
constexpr int kBlockBytes = 17;
constexpr int kMaxExperts = 256;  // counts staged in shared memory (moe.cu's routing limit too)
constexpr int kLayoutThreads = 1024;
constexpr int kStageHalves = (kTM + kTN) * kStride;
constexpr size_t kSmemBytes = 2 * kStageHalves * 2;  // two stages of 16-bit values: 55,296 bytes

template <typename T> struct Pair2;
template <> struct Pair2<__half> {
  using type = __half2;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2half2_rn(a, b); }
};
template <> struct Pair2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b) {
  typename Pair2<T>::type v = Pair2<T>::make(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Two E2M1 codes (bits 0..3 of each 16-bit half, after the caller's shifts put magnitude bits
// at 9..11 and the sign at 15) as fp16 2^-14 x E2M1 = (ggml's doubled value) x 2^-15.
__device__ __forceinline__ float2 fp4_pair(uint32_t mag_at9, uint32_t sign_at15) {
  const uint32_t h = (mag_at9 & 0x0E000E00u) | (sign_at15 & 0x80008000u);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// Block bytes (5 words, byte offset `sh` / 8 into the first) -> its 32 values in T, packed in
// pairs (value 2i low, 2i + 1 high) into out[16]: code x scale exact in fp32, rounded once.
template <typename T>
__device__ __forceinline__ void decode_block(const quant::Mxfp4Words& bw, int sh, uint32_t* out) {
  const float sc = quant::e8m0_half(__funnelshift_rc(bw.w[0], bw.w[1], sh) & 0xffu);
  // (f x 2^15) is ggml's doubled code exactly; times the halved scale: ggml's fp32 value (the
  // 2^15 is not folded into the scale, which would overflow fp32 for e > 240)
  auto v = [sc](float f) { return f * 32768.f * sc; };
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t q = __funnelshift_rc(bw.w[k], bw.w[k + 1], sh + 8);  // bytes 1 + 4k .. 4 + 4k
    // low nibbles: values 4k .. 4k + 3; high nibbles: values 16 + 4k ..
    const float2 lo02 = fp4_pair(q << 9, q << 12), lo13 = fp4_pair(q << 1, q << 4);
    const float2 hi02 = fp4_pair(q << 5, q << 8), hi13 = fp4_pair(q >> 3, q);
    out[2 * k] = pack2<T>(v(lo02.x), v(lo13.x));
    out[2 * k + 1] = pack2<T>(v(lo02.y), v(lo13.y));
    out[8 + 2 * k] = pack2<T>(v(hi02.x), v(hi13.x));
    out[8 + 2 * k + 1] = pack2<T>(v(hi02.y), v(hi13.y));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <typename T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// One kernel for both products. GATE_UP: x = h [M, K] gathered by token, w0/w1 = gate/up
// [E * N, K / 32 * 17], out = act [P, N] in T. Else (down): x = act [P, K] in expert order,
// w0 = down [E * N, K / 32 * 17], out = part [P, N] fp32 at rows dest[pair].
template <typename T, bool GATE_UP>
__global__ void __launch_bounds__(kThreads, 2) moe_grouped_kernel(
    const T* __restrict__ x,              // gate/up: [M, K]; down: [P, K]
    const int32_t* __restrict__ order,    // [P] pair ids (token * topk + slot) in expert order
    const int32_t* __restrict__ counts,   // [E] pairs per expert
    const uint8_t* __restrict__ w0,       // [E * N, K / 32 * 17]
    const uint8_t* __restrict__ w1,       // gate/up: [E * N, K / 32 * 17]; down: unused
    const T* __restrict__ b0,             // [E, N]
    const T* __restrict__ b1,             // gate/up: [E, N]; down: unused
    void* __restrict__ out,               // gate/up: act [P, N] T; down: part [P, N] fp32
    const int32_t* __restrict__ dest,     // down: [P] row of part per pair
    const float* __restrict__ wts,        // down: [P] routing weight per pair
    int E, int N, int K, int topk) {
  extern __shared__ __align__(16) uint16_t smem[];  // 2 stages x [(TM + TN) rows][kStride]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;

  // this block's (expert, row tile) from the counts (staged in shared memory: one parallel load
  // instead of E dependent global loads per thread), uniform over the block
  __shared__ int s_counts[kMaxExperts];
  for (int i = tid; i < E; i += kThreads) s_counts[i] = counts[i];
  __syncthreads();
  int tile = blockIdx.x, e = 0, start = 0, cnt = 0;
  for (; e < E; ++e) {
    cnt = s_counts[e];
    const int nt = (cnt + kTM - 1) / kTM;
    if (tile < nt) break;
    tile -= nt;
    start += cnt;
  }
  if (e >= E) return;
  const int row0 = start + tile * kTM;            // first sorted position of the tile
  const int rows = min(kTM, cnt - tile * kTM);    // valid rows
  const int n0 = blockIdx.y * (GATE_UP ? kTN / 2 : kTN);

  // global sources of this thread's stage loads
  // x: row tid / 4 of the tile, 16 values at (tid % 4) * 16
  const int xr = tid >> 2, xc = (tid & 3) * 16;
  const T* xrow = nullptr;
  if (xr < rows) {
    const int pos = row0 + xr;
    xrow = x + (int64_t)(GATE_UP ? order[pos] / topk : pos) * K;
  }
  // w: weight row tid / 2 of the tile, MXFP4 block (tid % 2) of each stage
  const int wr = tid >> 1, wb = tid & 1;
  const int64_t row_bytes = (int64_t)(K / 32) * kBlockBytes;
  const uint8_t* wbase;
  const uint8_t* wend;
  int wn;  // column of N this weight row computes
  if (GATE_UP) {
    wn = n0 + (wr & (kTN / 2 - 1));
    wbase = wr < kTN / 2 ? w0 : w1;
  } else {
    wn = n0 + wr;
    wbase = w0;
  }
  wend = wbase + (int64_t)E * N * row_bytes;
  const bool wvalid = wn < N;
  const uint8_t* wrow = wbase + ((int64_t)e * N + (wvalid ? wn : 0)) * row_bytes;

  uint4 xv[2];
  quant::Mxfp4Words wv;
  auto load_stage = [&](int k0) {
    if (xrow != nullptr) {
      const uint4* p = reinterpret_cast<const uint4*>(xrow + k0 + xc);
      xv[0] = __ldg(p);
      xv[1] = __ldg(p + 1);
    } else {
      xv[0] = xv[1] = make_uint4(0, 0, 0, 0);
    }
    if (wvalid) wv = quant::load_mxfp4_words(wrow + (int64_t)(k0 / 32 + wb) * kBlockBytes, wend);
  };
  auto store_stage = [&](int k0, int buf) {
    uint16_t* xs = smem + buf * kStageHalves;
    uint16_t* ws = xs + kTM * kStride;
    uint4* xd = reinterpret_cast<uint4*>(xs + xr * kStride + xc);
    xd[0] = xv[0];
    xd[1] = xv[1];
    uint32_t v[16];
    if (wvalid) {
      const uintptr_t addr = reinterpret_cast<uintptr_t>(wrow + (int64_t)(k0 / 32 + wb) * kBlockBytes);
      decode_block<T>(wv, 8 * (int)(addr & 3), v);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = 0u;
    }
    uint4* wd = reinterpret_cast<uint4*>(ws + wr * kStride + wb * 32);
#pragma unroll
    for (int i = 0; i < 4; ++i) wd[i] = make_uint4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

  // the warp's two 16-row weight groups: gate/up: gate rows and the up rows of the same
  // columns; down: 32 consecutive rows
  const int nb0 = GATE_UP ? warp_n * 16 : warp_n * 32;
  const int nb1 = GATE_UP ? kTN / 2 + warp_n * 16 : warp_n * 32 + 16;
  // ldmatrix lane addresses: A (16 x 16): row lane % 16, column (lane / 16) * 8; B ([n][k]
  // 16 x 16, two n8 tiles): row (lane / 16) * 8 + lane % 8, column ((lane / 8) % 2) * 8
  const int a_row = warp_m * 32 + (lane & 15), a_col = (lane >> 4) * 8;
  const int b_row = ((lane >> 4) << 3) + (lane & 7), b_col = ((lane >> 3) & 1) * 8;

  const int nk = K / kTK;
  load_stage(0);
  store_stage(0, 0);
  __syncthreads();
  for (int s = 0; s < nk; ++s) {
    const int buf = s & 1;
    if (s + 1 < nk) load_stage((s + 1) * kTK);
    const uint16_t* xs = smem + buf * kStageHalves;
    const uint16_t* ws = xs + kTM * kStride;
#pragma unroll
    for (int kk = 0; kk < kTK; kk += 16) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix_x4(a[i], xs + (a_row + i * 16) * kStride + kk + a_col);
      uint32_t r[4];
      ldmatrix_x4(r, ws + (nb0 + b_row) * kStride + kk + b_col);
      b[0][0] = r[0]; b[0][1] = r[1]; b[1][0] = r[2]; b[1][1] = r[3];
      ldmatrix_x4(r, ws + (nb1 + b_row) * kStride + kk + b_col);
      b[2][0] = r[0]; b[2][1] = r[1]; b[3][0] = r[2]; b[3][1] = r[3];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma16816<T>(acc[i][j], a[i], b[j][0], b[j][1]);
    }
    if (s + 1 < nk) store_stage((s + 1) * kTK, buf ^ 1);
    __syncthreads();
  }

  // epilogue: accumulator (i, j, q) is row warp_m * 32 + i * 16 + lane / 4 + (q / 2) * 8 and
  // column (of the warp's 16-row group j / 2) (j % 2) * 8 + (lane % 4) * 2 + q % 2
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp_m * 32 + i * 16 + (lane >> 2) + h * 8;
      if (r >= rows) continue;
      const int pos = row0 + r;
      if (GATE_UP) {
        T* act = reinterpret_cast<T*>(out) + (int64_t)pos * N;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = n0 + warp_n * 16 + j * 8 + (lane & 3) * 2;
          if (c >= N) continue;
          float o[2];
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            // gate and up rounded as the reference's F.linear outputs, the SwiGLU in fp32
            const float g = to_f(from_f<T>(acc[i][j][h * 2 + q] + to_f(b0[(int64_t)e * N + c + q])));
            const float u = to_f(from_f<T>(acc[i][j + 2][h * 2 + q] + to_f(b1[(int64_t)e * N + c + q])));
            o[q] = swiglu_oai(g, u);
          }
          *reinterpret_cast<uint32_t*>(act + c) = pack2<T>(o[0], o[1]);
        }
      } else {
        const int p = order[pos];
        const float wt = wts[p];
        float* part = reinterpret_cast<float*>(out) + (int64_t)dest[p] * N;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int c = n0 + (j < 2 ? nb0 : nb1) + (j & 1) * 8 + (lane & 3) * 2;
          if (c >= N) continue;
          // the expert's output rounded as F.linear's, then weighted in fp32 (y.float() * w)
          float2 o;
          o.x = to_f(from_f<T>(acc[i][j][h * 2] + to_f(b0[(int64_t)e * N + c]))) * wt;
          o.y = to_f(from_f<T>(acc[i][j][h * 2 + 1] + to_f(b0[(int64_t)e * N + c + 1]))) * wt;
          *reinterpret_cast<float2*>(part + c) = o;
        }
      }
    }
  }
}

template <typename T, bool GATE_UP>
cudaError_t launch(const MoeGroupedArgs& a, cudaStream_t st) {
  static bool configured = false;  // one attribute call per instantiation (55 KB > the 48 KB default)
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(moe_grouped_kernel<T, GATE_UP>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemBytes);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  const dim3 grid((unsigned)moe_grouped_row_tiles(a.P, a.E),
                  (unsigned)ceil_div(a.N, GATE_UP ? kTN / 2 : kTN));
  moe_grouped_kernel<T, GATE_UP><<<grid, kThreads, kSmemBytes, st>>>(
      (const T*)a.x, a.order, a.counts, a.w0, a.w1, (const T*)a.b0, (const T*)a.b1, a.out, a.dest, a.weights,
      (int)a.E, (int)a.N, (int)a.K, (int)a.topk);
  return cudaGetLastError();
}

// The routing layout in one block (v1b; the torch ops it replaces were ~25 launches per layer):
// ids [P] (P = M * topk, clamped to [0, E) as csrc/moe.cu clamps) staged in shared memory;
// pass 1: warp w counts experts w, w + 32, ... by ballots over the pairs; thread 0 turns the
// counts into starts; pass 2: the same warps write each expert's pairs in pair order (a stable
// counting sort: the ballot's lower lanes first, chunks in order); dest: each pair's rank among
// its token's experts (ascending, equal ids by slot).
__global__ void __launch_bounds__(kLayoutThreads) moe_grouped_layout_kernel(
    const int32_t* __restrict__ ids,    // [P]
    int32_t* __restrict__ order,        // [P]
    int32_t* __restrict__ counts,       // [E]
    int32_t* __restrict__ dest,         // [P]
    int P, int E, int topk) {
  extern __shared__ int s_ids[];        // [P]
  __shared__ int s_start[kMaxExperts];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kLayoutThreads / 32;
  for (int p = tid; p < P; p += kLayoutThreads) {
    const int e = ids[p];
    s_ids[p] = e < 0 ? 0 : (e >= E ? E - 1 : e);
  }
  __syncthreads();
  for (int e = warp; e < E; e += kWarps) {
    int n = 0;
    for (int p0 = 0; p0 < P; p0 += 32) {
      const int p = p0 + lane;
      n += __popc(__ballot_sync(0xffffffffu, p < P && s_ids[p] == e));
    }
    if (lane == 0) s_start[e] = n;
  }
  __syncthreads();
  if (tid == 0) {
    int run = 0;
    for (int e = 0; e < E; ++e) {
      const int c = s_start[e];
      counts[e] = c;
      s_start[e] = run;
      run += c;
    }
  }
  __syncthreads();
  for (int e = warp; e < E; e += kWarps) {
    int base = s_start[e];
    for (int p0 = 0; p0 < P; p0 += 32) {
      const int p = p0 + lane;
      const bool hit = p < P && s_ids[p] == e;
      const unsigned m = __ballot_sync(0xffffffffu, hit);
      if (hit) order[base + __popc(m & ((1u << lane) - 1u))] = p;
      base += __popc(m);
    }
  }
  for (int p = tid; p < P; p += kLayoutThreads) {
    const int t = p / topk, j = p - t * topk, e = s_ids[p];
    int rank = 0;
    for (int jj = 0; jj < topk; ++jj) {
      const int o = s_ids[t * topk + jj];
      rank += (o < e || (o == e && jj < j)) ? 1 : 0;
    }
    dest[p] = t * topk + rank;
  }
}

// out[t] = T(sum_r part[t * topk + r]) (r = 0..topk-1 in order, fp32: the torch combine's
// additions), plus the residual in T (the reference's residual + out). Two values per thread.
template <typename T>
__global__ void moe_grouped_combine_kernel(
    const float* __restrict__ part,     // [M * topk, C]
    const T* __restrict__ residual,     // [M, C] or null
    T* __restrict__ out,                // [M, C]
    int64_t M, int topk, int C) {
  const int64_t half = C / 2;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * half; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / half, c = (i - t * half) * 2;
    const float* src = part + t * topk * C + c;
    float2 acc = *reinterpret_cast<const float2*>(src);
    for (int r = 1; r < topk; ++r) {
      const float2 v = *reinterpret_cast<const float2*>(src + (int64_t)r * C);
      acc.x += v.x;
      acc.y += v.y;
    }
    T y0 = from_f<T>(acc.x), y1 = from_f<T>(acc.y);
    if (residual != nullptr) {
      y0 = from_f<T>(to_f(residual[t * C + c]) + to_f(y0));
      y1 = from_f<T>(to_f(residual[t * C + c + 1]) + to_f(y1));
    }
    out[t * C + c] = y0;
    out[t * C + c + 1] = y1;
  }
}

}  // namespace

cudaError_t launch_moe_grouped_layout(const int32_t* ids, int64_t P, int64_t E, int64_t topk, int32_t* order,
                                      int32_t* counts, int32_t* dest, cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  const size_t smem = (size_t)P * sizeof(int);
  if (E < 1 || E > kMaxExperts || topk < 1 || P % topk || smem > kMoeGroupedLayoutMaxSmem) return cudaErrorInvalidValue;
  static size_t configured = 48 * 1024;  // the default dynamic shared-memory limit
  if (smem > configured) {
    const cudaError_t e = cudaFuncSetAttribute(moe_grouped_layout_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)kMoeGroupedLayoutMaxSmem);
    if (e != cudaSuccess) return e;
    configured = kMoeGroupedLayoutMaxSmem;
  }
  moe_grouped_layout_kernel<<<1, kLayoutThreads, smem, stream>>>(ids, order, counts, dest, (int)P, (int)E, (int)topk);
  return cudaGetLastError();
}

cudaError_t launch_moe_grouped_combine(int dtype, const float* part, const void* residual, void* out, int64_t M,
                                       int64_t topk, int64_t C, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  if (C % 2 || C <= 0 || topk < 1 || C > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t n = M * (C / 2);
  const unsigned blocks = (unsigned)std::min<int64_t>(ceil_div(n, 256), 132 * 16);
  GPTE_DISPATCH(dtype, T, {
    moe_grouped_combine_kernel<T><<<blocks, 256, 0, stream>>>(part, (const T*)residual, (T*)out, M, (int)topk,
                                                              (int)C);
    return cudaGetLastError();
  });
  return cudaErrorInvalidValue;
}

int64_t moe_grouped_row_tiles(int64_t P, int64_t E) { return ceil_div(P, kTM) + E; }

cudaError_t launch_moe_grouped(int dtype, bool gate_up, const MoeGroupedArgs& a, cudaStream_t stream) {
  if (a.P == 0) return cudaSuccess;
  if (a.K % kTK || a.K <= 0 || !aligned16(a.x) || a.N % 2 || a.N <= 0 || a.E < 1 || a.E > kMaxExperts ||
      a.topk < 1 || a.P > INT32_MAX || a.E * a.N > INT32_MAX || moe_grouped_row_tiles(a.P, a.E) > INT32_MAX ||
      ceil_div(a.N, kTN / 2) > 65535)
    return cudaErrorInvalidValue;
  if (dtype == kF16) return gate_up ? launch<__half, true>(a, stream) : launch<__half, false>(a, stream);
  if (dtype == kBF16)
    return gate_up ? launch<__nv_bfloat16, true>(a, stream) : launch<__nv_bfloat16, false>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gpte
