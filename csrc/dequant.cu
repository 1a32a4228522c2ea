// GGUF packed rows -> fp32/fp16/bf16, bit-exact with gguf-py's dequantize (then one rounding to
// the output dtype): embedding lookups of packed tables (rows `ids`, on the device: no host
// sync, a decode step is graph-captured) and whole matrices (prefill: dequantized once into a
// scratch buffer that cuBLAS then reads; docs/kernels/quant.md says why).
//
// v1 (replaced by v2, measured against it in one run: docs/kernels/quant.md): one thread per quad (4
// output values) of the flattened [nrows, K] output, 4 quads a block-width apart per thread,
// 8-byte stores, the block bytes read as unaligned words, field by field. Measured on the H200 at 1,626-1,949
// GB/s, 0.38-0.46 of the same-run copy (MXFP4 -> fp16, bytes = packed read + fp16 written). The
// cause: at ~4 TB/s a 32-value MXFP4 block (17 B read + 64 B written) must be done in ~17-20
// thread-instructions per value across the GPU (132 SMs x 4 issue slots x 1.75-1.98 GHz), and
// v1's MXFP4 -> fp16 kernel is 577 SASS instructions per 16 values (36 per value; static count,
// the 64-bit division routine left out): every quad paid
// a 64-bit division for its row (a 32-bit path with I2F + MUFU.RCP when the operands fit, a call
// otherwise), 64-bit block offsets and 2-4 separate loads.
//
// v2: one thread per "piece", 8 consecutive output values (one 16-byte store for fp16 / bf16,
// two for fp32), kUnroll pieces a block-width apart per thread; consecutive threads write
// consecutive pieces, so one warp store is 512 contiguous bytes (fp16 / bf16). Every row holds
// whole 32-value groups (K % QK == 0, QK = 32 or 256), so a piece never straddles a row or a
// block: it is values 8 sub .. 8 sub + 7 of one block, sub < QK / 8.
//   - Whole matrix (ids null, the prefill path): the rows are contiguous, so piece g is piece
//     sub = g % (QK / 8) of block g / (QK / 8), at byte (g / (QK / 8)) * TS: a shift, a mask and
//     one 32 x 32 -> 64-bit multiply-add; no division. Indices are 32-bit: the launcher cuts
//     the matrix into launches of at most kMaxPieces pieces (2^30, 8 Gi values; one launch for
//     any real matrix). The weight bytes are constant, so they are loaded before pdl_wait (as the
//     GEMVs load weights): only the stores wait for the kernel before.
//   - Rows by id: row r = g / (K / 8) by a multiply-high with a host-computed magic number
//     (FastDiv: no division instruction), then the row's source id as in v1 (an id outside
//     [0, N) gives a NaN row and ORs kStatusBadIndex into *status).
//   - MXFP4 {e8m0 e, u8 qs[16]}: value t < 16 is the low nibble of qs[t], t + 16 the high one
//     (ggml-common.h block_mxfp4, gguf-py MXFP4 dequantize), so piece sub needs the scale byte
//     and the 8 bytes qs[8 (sub & 1) ..], nibble sub >> 1: one byte load and 2-3 aligned words
//     (the weight base is only 4-byte aligned; a 17-byte block starts at any byte).
//   - Q8_0 {f16 d, int8 qs[32]} (ggml-common.h block_q8_0): the fp16 scale (one 2-byte load,
//     blocks start at even offsets) and 2-3 aligned words for qs[8 sub ..].
//   - The other types (v2.1): the aligned words holding the piece's code bytes, high bits and
//     scale fields, also loaded before pdl_wait, then the layouts' codes and float steps on them
//     (v2 read them field by field after the wait: 5-14 separate loads per piece, byte by byte
//     for the fp16 fields). Measured against v2 in one run (H200, 2026-12-04, copy 4,239-4,243
//     GB/s, tests/bench/explore_dequant.py via tests/bench/ab_build.sh, every output bit-exact),
//     ratio to copy at 1600 x 6400 / 6400 x 1600 / 4800 x 1600: Q4_0 0.73 / 0.73 / 0.68 -> 0.83 /
//     0.83 / 0.84, Q4_1 0.73 / 0.73 / 0.69 -> 0.79 / 0.79 / 0.76, Q5_0 0.68 / 0.68 / 0.64 -> 0.80 /
//     0.81 / 0.77, Q5_1 0.73 / 0.73 / 0.69 -> 0.78 / 0.78 / 0.76; at 1600 x 6400 Q4_K 0.64 -> 0.70,
//     Q5_K 0.62 -> 0.73, Q6_K 0.68 -> 0.77 (Q8_0 unchanged, 0.84-0.85). 26-48 registers.
// MXFP4 -> fp16: 204 SASS instructions per 16 values (13 per value) with the addressing; 26-32
// registers per kernel, no spills (ptxas -v, sm_90a). Measured against v1 in one run (H200,
// 2026-12-02, copy 4,256 GB/s, tests/bench/explore_dequant.py): MXFP4 -> fp16 0.81-0.90 of copy
// (v1 0.38-0.46), Q8_0 0.83-0.95 (v1 0.50-0.61); e.g. 4096 x 4096 MXFP4 11.9 us (v1 23.7).
// The per-value arithmetic is value_exact's (quant_blocks.cuh; codes as exact floats, __fmul_rn /
// __fadd_rn, no contraction, then one rounding to the output dtype), so v2 is bit-identical to
// v1 and to gguf-py.
//
// Block shape of the whole-matrix kernel (template parameters P pieces per thread x TH threads;
// every shape runs the same per-piece code and writes the same bits): 2 x 256. Measured against
// 1 x 256, 2 x 128 and 4 x 128 in one run (H200, 2026-12-02, copy 4,257 GB/s; docs/kernels/quant.md):
// MXFP4 -> fp16 at 1600 x 6400 / 6400 x 1600 / 4096^2 / 2880^2 / 8192^2 took 0.80 / 0.80 / 0.83 /
// 0.83 / 0.89 of copy at 2 x 256; 1 x 256 was lower everywhere (0.74-0.86), 2 x 128 gained 0.014 on
// the two small shapes and lost 0.07 at 2880^2, 4 x 128 was within 0.01 on the small shapes and
// lower on the large ones. No shape wins everywhere; the tail at 1600 x 6400 is not the lever.
#include <cmath>

#include "common.cuh"
#include "launchers.h"
#include "quant_blocks.cuh"

namespace gpte {
namespace {
using namespace quant;

constexpr int kThreads = 256;                  // threads per block (v2; the whole-matrix default)
constexpr int kUnroll = 2;                     // pieces per thread (v2; the whole-matrix default)
constexpr int64_t kMaxPieces = int64_t(1) << 30;  // pieces per launch: 32-bit indices in the kernel

// ---------------------------------------------------------------- v2

// n / d for n < 2^31 without a division instruction (Granlund & Montgomery 1994, "Division by
// invariant integers using multiplication", the round-up method): l = ceil(log2 d),
// m = floor(2^32 (2^l - d) / d) + 1, n / d = (mulhi(n, m) + n) >> l; the sum fits 32 bits for n < 2^31.
struct FastDiv {
  uint32_t d, m, l;
};
inline FastDiv make_fastdiv(uint32_t d) {
  uint32_t l = 0;
  while ((uint64_t(1) << l) < d) ++l;
  return {d, (uint32_t)((((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d) + 1), l};
}
__device__ __forceinline__ uint32_t fastdiv(uint32_t n, const FastDiv& f) { return (__umulhi(n, f.m) + n) >> f.l; }

// The raw bytes of one piece, loaded before any of them is used (so that the loads of all the
// pieces of a thread are in flight together, and before pdl_wait on the whole-matrix path).
// MXFP4 / Q8_0: the aligned words a[0..2] holding the piece's 8 code bytes from byte `off` (a[2]
// read only when off % 4 != 0: it then starts before the piece's last byte, so no word past the
// weight's end is read), and the scale field.
struct RawWords {
  uint32_t a[3], scale;
  int sh;  // 8 * (offset of the code bytes % 4)
};
// The other types (v2.1): the same 8 code bytes (low bits) in a[], the 8 high-bit bytes in b[]
// (Q5_K, Q6_K; Q5_0 / Q5_1 keep their qh field in f[1]), the scale fields in f[] as the aligned
// words that hold them; every word read holds a byte of the field it is read for, so nothing past
// the weight's last word is touched. sub: the piece within its block.
struct RawFields {
  uint32_t a[3], b[3], f[4];
  int sh, fsh, sub;  // 8 * (byte offset % 4) of the code bytes and of f[0]'s field (f[1]'s: Q5_0)
};
template <int T> struct Raw : RawFields {};
template <> struct Raw<kMXFP4> : RawWords {};
template <> struct Raw<kQ8_0> : RawWords {};

__device__ __forceinline__ void load_words(const uint8_t* w, int64_t off, uint32_t* a, int& sh) {
  const uint32_t* p = reinterpret_cast<const uint32_t*>(w) + (off >> 2);
  sh = (int)(off & 3) * 8;
  a[0] = __ldg(p);
  a[1] = __ldg(p + 1);
  a[2] = sh ? __ldg(p + 2) : 0u;
}
__device__ __forceinline__ void load_words(const uint8_t* w, int64_t off, RawWords& r) { load_words(w, off, r.a, r.sh); }
// the aligned word holding byte `off`
__device__ __forceinline__ uint32_t word_at(const uint8_t* w, int64_t off) {
  return __ldg(reinterpret_cast<const uint32_t*>(w) + (off >> 2));
}
__device__ __forceinline__ uint32_t byte_of(uint32_t word, int sh) { return (word >> sh) & 0xFFu; }

// Piece `sub` of the block at byte `blk` (block layouts: quant_blocks.cuh's header, whose byte
// offsets these are: piece sub = quads 2 (sub % 4) and 2 (sub % 4) + 1 of group sub / 4).
template <int T>
__device__ __forceinline__ void load_piece(const uint8_t* w, int64_t blk, int sub, Raw<T>& r) {
  if constexpr (T == kMXFP4) {
    r.scale = __ldg(w + blk);
    load_words(w, blk + 1 + 8 * (sub & 1), r);
    r.sh |= (sub >> 1) << 5;  // bit 5: the high nibbles (values 16..31)
  } else if constexpr (T == kQ8_0) {
    r.scale = __ldg(reinterpret_cast<const unsigned short*>(w + blk));
    load_words(w, blk + 2 + 8 * sub, r);
  } else {
    r.sub = sub;
    r.fsh = (int)(blk & 3) * 8;  // blocks start at even bytes (TS even), so f[0]'s fp16 fields fit one word
    if constexpr (T == kQ4_0 || T == kQ4_1 || T == kQ5_0 || T == kQ5_1) {
      // codes: qs[8 (sub % 2) ..], low nibbles for sub < 2; d (and m) at the block's start
      constexpr int qh = T == kQ5_0 ? 2 : 4, qs = T == kQ4_0 ? 2 : T == kQ4_1 ? 4 : T == kQ5_0 ? 6 : 8;
      r.f[0] = word_at(w, blk);
      if constexpr (T == kQ5_0 || T == kQ5_1) r.f[1] = word_at(w, blk + qh + sub);  // qh byte sub: values 8 sub ..
      load_words(w, blk + qs + 8 * (sub & 1), r.a, r.sh);
    } else if constexpr (T == kQ4_K || T == kQ5_K) {
      // d, dmin (f[0]), the 12 scale bytes (f[1..3]); Q5_K: qh[8 (sub % 4) ..]; codes of group j
      const int j = sub >> 2;
      constexpr int qs = T == kQ4_K ? 16 : 48;
#pragma unroll
      for (int k = 0; k < 4; ++k) r.f[k] = __ldg(reinterpret_cast<const uint32_t*>(w + blk) + k);
      if constexpr (T == kQ5_K) load_words(w, blk + 16 + 8 * (sub & 3), r.b, r.sh);
      load_words(w, blk + qs + 32 * (j >> 1) + 8 * (sub & 3), r.a, r.sh);
    } else if constexpr (T == kQ6_K) {
      // ql[64 h + 32 (g % 2) + 8 (sub % 4) ..], qh[32 h + 8 (sub % 4) ..], scale byte, d (group j = 4 h + g)
      const int h = sub >> 4, g = (sub >> 2) & 3;
      load_words(w, blk + 128 + 32 * h + 8 * (sub & 3), r.b, r.sh);
      load_words(w, blk + 64 * h + 32 * (g & 1) + 8 * (sub & 3), r.a, r.sh);
      const int64_t sc = blk + 192 + 8 * h + 2 * g + ((sub & 3) >> 1);
      r.f[0] = word_at(w, sc);
      r.fsh = (int)(sc & 3) * 8;  // the scale byte's shift in f[0]
      r.f[1] = word_at(w, blk + 208);
    }
  }
}

// Four codes + 128 (one per byte of c) as the exact floats code: byte k moved under the exponent
// of 2^23 by one byte permute (0x4B0000cc = 2^23 + cc), then 2^23 + 128 subtracted (exact). The
// same floats as codes4<128>(c), one integer op per value less.
__device__ __forceinline__ void codes4_biased(uint32_t c, float* w) {
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = __int_as_float(__byte_perm(c, 0x4B000000u, 0x7440u | k)) - (8388608.0f + 128);
}

// Four MXFP4 codes (the low nibble of each byte of c, high nibbles zero) -> 128 + ggml's doubled
// E2M1 value (kvalues_mxfp4: 0 1 2 3 4 6 8 12, codes 8..15 their negatives, code 8 = -0 -> 0) per
// byte: quant_blocks.cuh mxfp4_int8 with the 128 folded into its two tables. (Not a sign mask
// from a permute's sign-replicate selectors: __byte_perm uses 3 bits per selector, without them.)
__device__ __forceinline__ uint32_t mxfp4_biased(uint32_t c) {
  const uint32_t mag = c & 0x07070707u, t = mag | (mag >> 4);
  const uint32_t sel = (t & 0xFFu) | ((t >> 8) & 0xFF00u);
  const uint32_t pos = __byte_perm(0x83828180u, 0x8C888684u, sel);  // 128 + 0 1 2 3 4 6 8 12
  const uint32_t neg = __byte_perm(0x7D7E7F80u, 0x74787A7Cu, sel);  // 128 - the same
  const uint32_t sm = ((c >> 3) & 0x01010101u) * 0xFFu;              // 0xFF where bit 3 (the sign) is set
  return (pos & ~sm) | (neg & sm);
}

// The 8 exact values of a loaded piece (the layouts' codes, value_exact's float arithmetic).
template <int T>
__device__ __forceinline__ void decode_piece(const uint8_t* w, const Raw<T>& r, float* v) {
  if constexpr (T == kMXFP4 || T == kQ8_0) {
    const int sh = r.sh & 31;
    const uint32_t q[2] = {__funnelshift_r(r.a[0], r.a[1], sh), __funnelshift_r(r.a[1], r.a[2], sh)};
    float s;
    if constexpr (T == kMXFP4) s = e8m0_half(r.scale);
    else s = f16_bits(r.scale);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t c;
      if constexpr (T == kMXFP4) c = mxfp4_biased((q[h] >> ((r.sh >> 5) * 4)) & 0x0F0F0F0Fu);
      else c = q[h] ^ 0x80808080u;  // int8 -> int8 + 128
      float wq[4];
      codes4_biased(c, wq);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[4 * h + k] = value_exact<T>(wq[k], s, 0.f);
    }
  } else {
    // values 8 sub .. 8 sub + 7 of the block from the loaded words: codes, s and mn as the layouts say
    const int sub = r.sub, j = sub >> 2;
    float s, mn = 0.f;
    int nib = 0;  // bit shift of the piece's nibbles in its code bytes
    uint32_t hb = 0;  // Q5_0 / Q5_1: the qh byte of the piece
    if constexpr (T == kQ4_0 || T == kQ5_0) {
      s = f16_bits(r.f[0] >> r.fsh);
      nib = 4 * (sub >> 1);
      if constexpr (T == kQ5_0) hb = byte_of(r.f[1], (int)((r.fsh / 8 + 2 + sub) & 3) * 8);
    } else if constexpr (T == kQ4_1 || T == kQ5_1) {
      s = f16_bits(r.f[0]);  // blocks of 20 / 24 bytes start at 4-byte multiples: d low, m high
      mn = f16_bits(r.f[0] >> 16);
      nib = 4 * (sub >> 1);
      if constexpr (T == kQ5_1) hb = byte_of(r.f[1], 8 * sub);
    } else if constexpr (T == kQ4_K || T == kQ5_K) {
      // scale bytes j % 4, j % 4 + 4 and j % 4 + 8: 8 (j % 4) bits up in f[1], f[2], f[3]
      const int bs = 8 * (j & 3);
      uint32_t sc, m;
      k_scale_min(byte_of(r.f[1], bs), byte_of(r.f[2], bs), byte_of(r.f[3], bs), j, sc, m);
      s = __fmul_rn(f16_bits(r.f[0]), (float)sc);
      mn = -__fmul_rn(f16_bits(r.f[0] >> 16), (float)m);
      nib = 4 * (j & 1);
    } else {  // Q6_K
      s = __fmul_rn(f16_bits(r.f[1] >> r.sh), (float)(int)(int8_t)byte_of(r.f[0], r.fsh));
      nib = 4 * ((sub >> 3) & 1);  // g >= 2: high nibbles
    }
    const int sh = r.sh;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t c = (__funnelshift_r(r.a[h], r.a[h + 1], sh) >> nib) & 0x0F0F0F0Fu;
      float wq[4];
      if constexpr (T == kQ5_0 || T == kQ5_1) c |= spread4_to_bit4((hb >> (4 * h)) & 0xFu);
      if constexpr (T == kQ5_K) c |= ((__funnelshift_r(r.b[h], r.b[h + 1], sh) >> j) & 0x01010101u) << 4;
      if constexpr (T == kQ6_K) c |= ((__funnelshift_r(r.b[h], r.b[h + 1], sh) >> (2 * ((sub >> 2) & 3))) & 0x03030303u) << 4;
      if constexpr (T == kQ4_0) codes4<8>(c, wq);
      else if constexpr (T == kQ5_0) codes4<16>(c, wq);
      else if constexpr (T == kQ6_K) codes4<32>(c, wq);
      else codes4<0>(c, wq);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[4 * h + k] = value_exact<T>(wq[k], s, mn);
    }
  }
}

// Piece g of the output (8 values from element 8 g).
template <typename O> __device__ __forceinline__ void store_piece(O* out, uint32_t g, const float* v);
template <> __device__ __forceinline__ void store_piece<float>(float* out, uint32_t g, const float* v) {
  float4* p = reinterpret_cast<float4*>(out) + 2 * (size_t)g;
  p[0] = make_float4(v[0], v[1], v[2], v[3]);
  p[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ uint32_t u32_of(__half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
__device__ __forceinline__ uint32_t u32_of(__nv_bfloat162 h) { return *reinterpret_cast<const uint32_t*>(&h); }
template <> __device__ __forceinline__ void store_piece<__half>(__half* out, uint32_t g, const float* v) {
  reinterpret_cast<uint4*>(out)[g] =
      make_uint4(u32_of(__floats2half2_rn(v[0], v[1])), u32_of(__floats2half2_rn(v[2], v[3])),
                 u32_of(__floats2half2_rn(v[4], v[5])), u32_of(__floats2half2_rn(v[6], v[7])));
}
template <> __device__ __forceinline__ void store_piece<__nv_bfloat16>(__nv_bfloat16* out, uint32_t g, const float* v) {
  reinterpret_cast<uint4*>(out)[g] =
      make_uint4(u32_of(__floats2bfloat162_rn(v[0], v[1])), u32_of(__floats2bfloat162_rn(v[2], v[3])),
                 u32_of(__floats2bfloat162_rn(v[4], v[5])), u32_of(__floats2bfloat162_rn(v[6], v[7])));
}

// Piece g of a dense table row, as fp32 (8 values from element 8 g of row-major O values).
template <typename O> __device__ __forceinline__ void load_dense_piece(const O* t, size_t g, float* a);
template <> __device__ __forceinline__ void load_dense_piece<float>(const float* t, size_t g, float* a) {
  const float4 x = reinterpret_cast<const float4*>(t)[2 * g], y = reinterpret_cast<const float4*>(t)[2 * g + 1];
  a[0] = x.x, a[1] = x.y, a[2] = x.z, a[3] = x.w, a[4] = y.x, a[5] = y.y, a[6] = y.z, a[7] = y.w;
}
template <typename O> __device__ __forceinline__ void load_dense_piece(const O* t, size_t g, float* a) {
  const Vec<O, 8> x = load_vec<O, 8>(t, (int64_t)g);  // 16 bytes
#pragma unroll
  for (int k = 0; k < 8; ++k) a[k] = to_f(x.v[k]);
}
// v (fp32) rounded to O once, as the unfused path stores the dequantized row, then back to fp32:
// the sum with the added row is then residual_add's (fp32 sum of two O values, one rounding).
template <typename O> __device__ __forceinline__ float round_to(float v) { return to_f(from_f<O>(v)); }
template <> __device__ __forceinline__ float round_to<float>(float v) { return v; }

template <int T> constexpr int kPiecesPerBlock = Traits<T>::QK / 8;  // 4 or 32
template <int T> constexpr int kPieceShift = Traits<T>::QK == 32 ? 2 : 5;

// Whole matrix: `pieces` pieces of contiguous rows (w, out already offset to this launch's part);
// P pieces per thread, TH threads per block (the block shape, DequantShape).
template <int T, typename O, int P, int TH>
__global__ void __launch_bounds__(TH) dequant_matrix_kernel(const uint8_t* __restrict__ w, uint32_t pieces,
                                                            O* __restrict__ out) {  // [pieces * 8] values
  static_assert(kPiecesPerBlock<T> == 1 << kPieceShift<T>, "pieces per block");
  const uint32_t g0 = blockIdx.x * (TH * P) + threadIdx.x;
  Raw<T> raw[P];
#pragma unroll
  for (int u = 0; u < P; ++u) {  // MXFP4 / Q8_0 weight bytes (constant), before the wait; others: offsets only
    const uint32_t g = g0 + u * TH;
    if (g < pieces)
      load_piece<T>(w, (int64_t)(g >> kPieceShift<T>) * Traits<T>::TS, (int)(g & (kPiecesPerBlock<T> - 1)), raw[u]);
  }
  pdl_wait();  // out may still be read by the kernel before (a scratch buffer reused)
  pdl_launch_dependents();
#pragma unroll
  for (int u = 0; u < P; ++u) {
    const uint32_t g = g0 + u * TH;
    if (g >= pieces) break;
    float v[8];
    decode_piece<T>(w, raw[u], v);
    store_piece<O>(out, g, v);
  }
}

// Rows by id (ids null: rows row0.. of w, used only when nrows > N): `pieces` pieces of the
// output rows row0 .. (out and ids already offset to row0), K / 8 = ppr.d pieces per row.
template <int T, typename O>
__global__ void __launch_bounds__(kThreads) dequant_rows_kernel(const uint8_t* __restrict__ w, int64_t N,
                                                                int64_t row_bytes, const int64_t* __restrict__ ids,
                                                                int64_t row0, uint32_t pieces, FastDiv ppr,
                                                                O* __restrict__ out, int* status,
                                                                const O* __restrict__ add,
                                                                const int64_t* __restrict__ add_ids, int64_t A) {
  pdl_wait();  // ids come from the kernel before (a decode step's sampler)
  pdl_launch_dependents();
  const uint32_t g0 = blockIdx.x * (kThreads * kUnroll) + threadIdx.x;
  Raw<T> raw[kUnroll];
  bool ok[kUnroll];
  int64_t add_piece[kUnroll];  // piece of `add` summed into output piece g (add: row add_ids[r], piece c)
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t g = g0 + u * kThreads;
    ok[u] = false;
    if (g >= pieces) break;
    const uint32_t r = fastdiv(g, ppr), c = g - r * ppr.d;  // output row, piece within the row
    const int64_t src = ids ? ids[r] : row0 + r;
    ok[u] = src >= 0 && src < N;
    if (add) {
      const int64_t a = add_ids[r];
      ok[u] = ok[u] && a >= 0 && a < A;
      add_piece[u] = a * ppr.d + c;
    }
    if (ok[u])
      load_piece<T>(w, src * row_bytes + (int64_t)(c >> kPieceShift<T>) * Traits<T>::TS,
                    (int)(c & (kPiecesPerBlock<T> - 1)), raw[u]);
  }
  bool bad = false;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t g = g0 + u * kThreads;
    if (g >= pieces) break;
    float v[8];
    if (ok[u]) {
      decode_piece<T>(w, raw[u], v);
      if (add) {
        float a[8];
        load_dense_piece<O>(add, (size_t)add_piece[u], a);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = round_to<O>(v[k]) + a[k];
      }
    } else {
      bad = true;
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = NAN;
    }
    store_piece<O>(out, g, v);
  }
  if (bad && status) atomicOr(status, kStatusBadIndex);
}

// The whole matrix of `total` pieces (rows contiguous) with the block shape (P, TH).
template <int T, typename O, int P, int TH>
cudaError_t run_matrix(const uint8_t* w8, int64_t total, O* o, cudaStream_t st) {
  // part p0.. of the flattened matrix: its first block is p0 / (QK / 8) (p0 a multiple of 2^30)
  for (int64_t p0 = 0; p0 < total; p0 += kMaxPieces) {
    const int64_t n = std::min(total - p0, kMaxPieces);
    const cudaError_t e = launch_pdl(dequant_matrix_kernel<T, O, P, TH>, dim3((unsigned)ceil_div(n, P * TH)), dim3(TH),
                                     0, st, w8 + p0 / kPiecesPerBlock<T> * Traits<T>::TS, (uint32_t)n, o + p0 * 8);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <int T, typename O>
cudaError_t run(const void* w, int64_t N, int64_t K, const int64_t* ids, int64_t nrows, void* out, int* status,
                const void* add, const int64_t* add_ids, int64_t A, cudaStream_t st) {
  using TR = Traits<T>;
  const uint8_t* w8 = static_cast<const uint8_t*>(w);
  O* o = static_cast<O*>(out);
  const int64_t per_launch = kThreads * kUnroll;
  if (!ids && !add && nrows <= N) {
    const int64_t total = nrows * (K / 8);
    return run_matrix<T, O, kUnroll, kThreads>(w8, total, o, st);
  }
  const int64_t ppr = K / 8, rows_per_launch = std::max<int64_t>(1, kMaxPieces / ppr);
  const FastDiv fd = make_fastdiv((uint32_t)ppr);
  for (int64_t r0 = 0; r0 < nrows; r0 += rows_per_launch) {
    const int64_t rows = std::min(nrows - r0, rows_per_launch), n = rows * ppr;
    const cudaError_t e =
        launch_pdl(dequant_rows_kernel<T, O>, dim3((unsigned)ceil_div(n, per_launch)), dim3(kThreads), 0, st, w8, N,
                   K / TR::QK * TR::TS, ids ? ids + r0 : nullptr, r0, (uint32_t)n, fd, o + r0 * K, status,
                   static_cast<const O*>(add), add ? add_ids + r0 : nullptr, A);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename O>
cudaError_t run_o(int t, const void* w, int64_t N, int64_t K, const int64_t* ids, int64_t nrows, void* out,
                  int* status, const void* add, const int64_t* add_ids, int64_t A, cudaStream_t st) {
  switch (t) {
    case kQ8_0: return run<kQ8_0, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ4_0: return run<kQ4_0, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ4_1: return run<kQ4_1, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ5_0: return run<kQ5_0, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ5_1: return run<kQ5_1, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ4_K: return run<kQ4_K, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ5_K: return run<kQ5_K, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kQ6_K: return run<kQ6_K, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    case kMXFP4: return run<kMXFP4, O>(w, N, K, ids, nrows, out, status, add, add_ids, A, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_dequantize_rows(int ggml_type, int odtype, const void* w, int64_t N, int64_t K,
                                   const int64_t* ids, int64_t nrows, void* out, int* status, const void* add,
                                   const int64_t* add_ids, int64_t A, cudaStream_t stream) {
  int qk, ts;
  ggml_block_shape(ggml_type, qk, ts);
  if (qk == 0 || K <= 0 || K % qk || N <= 0 || (reinterpret_cast<uintptr_t>(w) & 3) ||
      (reinterpret_cast<uintptr_t>(out) & 15))
    return cudaErrorInvalidValue;
  if (K / 8 > kMaxPieces) return cudaErrorInvalidValue;  // a row of more than 2^33 values
  if (add && (!add_ids || A <= 0 || (reinterpret_cast<uintptr_t>(add) & 15))) return cudaErrorInvalidValue;
  if (nrows == 0) return cudaSuccess;
  GPTE_DISPATCH(odtype, O, return run_o<O>(ggml_type, w, N, K, ids, nrows, out, status, add, add_ids, A, stream));
  return cudaSuccess;
}

}  // namespace gpte
