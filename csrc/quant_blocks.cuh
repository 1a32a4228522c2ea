// GGUF block decoding on the device, shared by the dequantize kernel (csrc/dequant.cu: exact
// float values), the packed-weight GEMV (csrc/linear_q_impl.cuh: group_codes(), integer codes of
// a whole 32-value group for dp4a) and the MoE kernels (MXFP4 words, E8M0 scales).
//
// Block layouts (ggml-common.h's block structs; gpt_engine/quants.py, the CPU oracle bit-exact
// with gguf-py, documents and decodes each one; type ids are gguf-py's GGMLQuantizationType):
//   Q8_0  {f16 d, int8 qs[32]}                          value = q * d
//   Q4_0  {f16 d, u8 qs[16]}                            value t < 16 in the low nibble of qs[t],
//                                                       t + 16 in the high one; (q - 8) * d
//   Q4_1  {f16 d, f16 m, u8 qs[16]}                     nibbles as Q4_0; q * d + m
//   Q5_0  {f16 d, u32 qh, u8 qs[16]}                    bit t of qh is bit 4 of value t; (q - 16) * d
//   Q5_1  {f16 d, f16 m, u32 qh, u8 qs[16]}             as Q5_0; q * d + m
//   MXFP4 {e8m0 e, u8 qs[16]}                           E2M1 codes, nibbles as Q4_0; ggml's doubled
//                                                       value (kvalues_mxfp4) * 2^(e - 128)
//   Q4_K  {f16 d, f16 dmin, u8 scales[12], u8 qs[128]}  group j of 32: qs bytes 32 (j / 2) ..,
//                                                       low nibbles for even j, high for odd;
//                                                       (d * sc) * q - (dmin * m), sc and m by
//                                                       k_scale_min()
//   Q5_K  Q4_K with u8 qh[32] before qs                 bit j of qh[t] is bit 4 of value t
//   Q6_K  {u8 ql[128], u8 qh[64], int8 scales[16], f16 d}  group j = 4h + g, value t: low 4 bits
//                                                       from ql[64h + 32(g & 1) + t] (high nibble
//                                                       when g >= 2), high 2 bits (qh[32h + t] >>
//                                                       2g) & 3; (d * sc) * (q - 32), sc = scales[8h
//                                                       + 2g + (t >= 16)]
// The exact value follows ggml's order of fp32 operations with no contraction: value_exact().
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "launchers.h"  // ggml_block_shape, the host-side twin of Traits

namespace gpte {
namespace quant {

// gguf-py GGMLQuantizationType ids of the packed types with a device decoder
enum QType : int {
  kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kMXFP4 = 39
};

// values per block, bytes per block (gguf.constants.GGML_QUANT_SIZES), whether a min term exists
template <int T> struct Traits;
template <> struct Traits<kQ4_0> { static constexpr int QK = 32, TS = 18; static constexpr bool kHasMin = false; };
template <> struct Traits<kQ4_1> { static constexpr int QK = 32, TS = 20; static constexpr bool kHasMin = true; };
template <> struct Traits<kQ5_0> { static constexpr int QK = 32, TS = 22; static constexpr bool kHasMin = false; };
template <> struct Traits<kQ5_1> { static constexpr int QK = 32, TS = 24; static constexpr bool kHasMin = true; };
template <> struct Traits<kQ8_0> { static constexpr int QK = 32, TS = 34; static constexpr bool kHasMin = false; };
template <> struct Traits<kQ4_K> { static constexpr int QK = 256, TS = 144; static constexpr bool kHasMin = true; };
template <> struct Traits<kQ5_K> { static constexpr int QK = 256, TS = 176; static constexpr bool kHasMin = true; };
template <> struct Traits<kQ6_K> { static constexpr int QK = 256, TS = 210; static constexpr bool kHasMin = false; };
template <> struct Traits<kMXFP4> { static constexpr int QK = 32, TS = 17; static constexpr bool kHasMin = false; };

// Shared memory: the buffer has 4 readable bytes past its data, so both words are always read.
struct SharedReader {
  const uint8_t* base;  // 16-byte aligned
  __device__ __forceinline__ uint32_t u32(int off) const {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(base) + (off >> 2);
    return __funnelshift_r(w[0], w[1], (off & 3) * 8);
  }
  __device__ __forceinline__ uint32_t u16(int off) const { return u32(off) & 0xFFFFu; }
  __device__ __forceinline__ uint32_t u8(int off) const { return base[off]; }
};

__device__ __forceinline__ float f16_bits(uint32_t b) { return __half2float(__ushort_as_half((unsigned short)b)); }

// Four unsigned byte codes (0..255, one per byte of c) minus `off`, as exact floats: 2^23 + c is
// an fp32 with c in its low mantissa bits, and the subtraction is exact (integers < 2^24). Two
// integer/float ops per value, no int-to-float conversion unit.
template <int OFF>
__device__ __forceinline__ void codes4(uint32_t c, float* w) {
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = __int_as_float(0x4B000000 | ((c >> (8 * k)) & 0xFF)) - (8388608.0f + OFF);
}

// Bit k of the 4-bit field b (k = 0..3) moved to bit 4 of byte k.
__device__ __forceinline__ uint32_t spread4_to_bit4(uint32_t b) {
  return ((b & 1u) | ((b & 2u) << 7) | ((b & 4u) << 14) | ((b & 8u) << 21)) << 4;
}

// ggml_e8m0_to_fp32_half (ggml-impl.h): 2^(e-127) / 2, with e = 0, 1 the subnormals 2^-128, 2^-127
__device__ __forceinline__ float e8m0_half(uint32_t e) {
  return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
}

// An MXFP4 block (Traits<kMXFP4>::TS = 17 bytes) at p as the 5 aligned words that hold it, read
// from global memory through the read-only path: the MoE kernels (moe.cu's GEMVs, moe_grouped.cu's
// tile loads) take rows that are not 4-byte aligned, so they read whole words and pick the fields
// with funnel shifts (byte shift 8 * (p & 3)). p may have any alignment; the words before p belong
// to the same tensor or its 4-byte-aligned allocation. Bytes at or past `end` (the tensor's end)
// are not read: a block whose words would cross it is read byte by byte, the missing bytes zero.
struct Mxfp4Words {
  uint32_t w[5];
};

__device__ __forceinline__ Mxfp4Words load_mxfp4_words(const uint8_t* p, const uint8_t* end) {
  Mxfp4Words r;
  const uint8_t* base = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(3));
  if (base + 20 <= end) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(base);
#pragma unroll
    for (int k = 0; k < 5; ++k) r.w[k] = __ldg(w + k);
  } else {
#pragma unroll
    for (int k = 0; k < 5; ++k) {
      uint32_t v = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint8_t* q = base + 4 * k + i;
        if (q >= p && q < end) v |= (uint32_t)__ldg(q) << (8 * i);
      }
      r.w[k] = v;
    }
  }
  return r;
}

// K-quant 6-bit scale and min of group j (ggml get_scale_min_k4) from the scale bytes q[j % 4],
// q[j % 4 + 4] and q[j % 4 + 8] of the 12 (b1, b2, b3): groups 0..3 take bytes j and j + 4;
// groups 4..7 take byte j + 4's nibbles and the top two bits of bytes j - 4 (scale) and j (min).
__device__ __forceinline__ void k_scale_min(uint32_t b1, uint32_t b2, uint32_t b3, int j, uint32_t& sc, uint32_t& m) {
  sc = j < 4 ? (b1 & 63u) : ((b3 & 0xFu) | ((b1 >> 6) << 4));
  m = j < 4 ? (b2 & 63u) : ((b3 >> 4) | ((b2 >> 6) << 4));
}

// ---- integer codes of a whole 32-value group, for dp4a dot products (the packed GEMV v2) ----
//
// group_codes<T>(buf, blk, j, c, s0, s1, mn) reads group j of the block at byte offset `blk` of
// a shared-memory buffer (4-byte aligned, readable up to 4 bytes past the block) and returns
//   c[i]    the codes of values 4i..4i+3 of the group (natural order), one per byte: signed int8
//           where IntCodes<T>::kSigned (Q8_0; MXFP4 as ggml's doubled E2M1 integers), else
//           unsigned with the type's offset IntCodes<T>::kOff still in them (Q4_0 8, Q5_0 16,
//           Q6_K 32; 0 for the types with a min)
//   s0, s1  the multiplier of values 0..15 and 16..31 (equal except for Q6_K's 16-value scales)
//   mn      the additive term of the kHasMin types: Q4_1/Q5_1 +m, Q4_K/Q5_K -(dmin * m)
// so that value t = s * (code_t - kOff) (+ mn): the layouts' values (header).
template <int T> struct IntCodes { static constexpr bool kSigned = false; static constexpr int kOff = 0; };
template <> struct IntCodes<kQ8_0> { static constexpr bool kSigned = true; static constexpr int kOff = 0; };
template <> struct IntCodes<kMXFP4> { static constexpr bool kSigned = true; static constexpr int kOff = 0; };
template <> struct IntCodes<kQ4_0> { static constexpr bool kSigned = false; static constexpr int kOff = 8; };
template <> struct IntCodes<kQ5_0> { static constexpr bool kSigned = false; static constexpr int kOff = 16; };
template <> struct IntCodes<kQ6_K> { static constexpr bool kSigned = false; static constexpr int kOff = 32; };

// N little-endian words starting at any byte offset: N + 1 aligned loads and N funnel shifts.
template <int N>
__device__ __forceinline__ void smem_words(const uint8_t* base, int off, uint32_t* out) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(base) + (off >> 2);
  const int sh = (off & 3) * 8;
  uint32_t a[N + 1];
#pragma unroll
  for (int k = 0; k <= N; ++k) a[k] = w[k];
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = __funnelshift_r(a[k], a[k + 1], sh);
}

// Bits 0..3 of b moved to bit 4 of bytes 0..3: b * (1 + 2^7 + 2^14 + 2^21) puts bit k at bit 8k
// (the four shifted copies of a 4-bit field do not overlap, so there are no carries).
__device__ __forceinline__ uint32_t nibble_to_bit4(uint32_t b) { return ((b * 0x00204081u) & 0x01010101u) << 4; }

// Four MXFP4 nibbles (one per byte) -> ggml's doubled E2M1 values as int8: the 3-bit magnitudes
// select bytes of a positive and a negative table (one prmt each), the sign bit picks one.
__device__ __forceinline__ uint32_t mxfp4_int8(uint32_t c) {
  const uint32_t mag = c & 0x07070707u, t = mag | (mag >> 4);
  const uint32_t sel = (t & 0xFFu) | ((t >> 8) & 0xFF00u);
  const uint32_t pos = __byte_perm(0x03020100u, 0x0C080604u, sel);  // 0 1 2 3 4 6 8 12
  const uint32_t neg = __byte_perm(0xFDFEFF00u, 0xF4F8FAFCu, sel);  // their negatives (code 8, -0, gives 0)
  const uint32_t sm = ((c >> 3) & 0x01010101u) * 0xFFu;
  return (pos & ~sm) | (neg & sm);
}

// prmt.b32 in its default mode (PTX ISA): selector nibble n picks byte (n & 7) of {b, a}, and
// with n's bit 3 set gives that byte's sign (0x00 or 0xFF) instead. (__byte_perm documents
// only the 3-bit selectors, so the sign mode is asked for explicitly.)
__device__ __forceinline__ uint32_t prmt_b32(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// One MXFP4 qs word (bytes 4i..4i+3 of the 16: values 4i..4i+3 in the low nibbles, 16+4i..
// in the high) -> the codes of values 4i..4i+3 (lo) and 16+4i..19+4i (hi), each byte 128 +
// ggml's doubled E2M1 value (unsigned; the GEMV removes the 128 with the x sums, IntCodesMx).
// The raw nibbles are the prmt selectors: bits 0-2 the magnitude, bit 3 the sign, so
// prmt(table, q) gives +T[mag] for positive codes and 0 for negative ones (T has no byte with
// its sign bit set), and the same on q ^ 0x8888.. gives T[mag] for the negative codes only;
// 128 + P - N per byte has no borrow (P + 128 >= 128 > 12 >= N). Code 8 (-0) gives 128 (0), as
// in ggml. Two prmt pick the natural value order out of the interleaved nibble order.
// 13 operations for 8 codes (mxfp4_int8: ~25). Checked against mxfp4_int8 on every nibble at
// every position (the GEMV's v2/v3 A/B test compares the outputs bit for bit).
__device__ __forceinline__ void mxfp4_biased8(uint32_t q, uint32_t& lo, uint32_t& hi) {
  constexpr uint32_t T0 = 0x03020100u, T1 = 0x0C080604u;  // 0 1 2 3 | 4 6 8 12
  const uint32_t qn = q ^ 0x88888888u;
  const uint32_t pa = prmt_b32(T0, T1, q), pb = prmt_b32(T0, T1, q >> 16);  // [v0, v16, v1, v17], [v2, v18, v3, v19]
  const uint32_t na = prmt_b32(T0, T1, qn), nb = prmt_b32(T0, T1, qn >> 16);
  const uint32_t ua = (pa | 0x80808080u) - na, ub = (pb | 0x80808080u) - nb;
  lo = prmt_b32(ua, ub, 0x6420u);
  hi = prmt_b32(ua, ub, 0x7531u);
}
// mxfp4_biased8 without its two reordering prmt: ua = the codes of values [4i, 16 + 4i, 4i + 1,
// 17 + 4i], ub = [4i + 2, 18 + 4i, 4i + 3, 19 + 4i] (the nibbles' own order), for activations
// staged in that order (quantize8_v3<true>: each plane's bytes alternate values v and 16 + v).
// 128 + P - N as one three-input add (P < 128: the | of mxfp4_biased8 is this add). 9 operations
// for 8 codes. A dot product over a whole group is the same integer sum in either order, so the
// MoE decode v7.2 computes v7's bits with it.
__device__ __forceinline__ void mxfp4_biased8_zip(uint32_t q, uint32_t& ua, uint32_t& ub) {
  constexpr uint32_t T0 = 0x03020100u, T1 = 0x0C080604u;  // 0 1 2 3 | 4 6 8 12
  const uint32_t qn = q ^ 0x88888888u;
  const uint32_t pa = prmt_b32(T0, T1, q), pb = prmt_b32(T0, T1, q >> 16);
  const uint32_t na = prmt_b32(T0, T1, qn), nb = prmt_b32(T0, T1, qn >> 16);
  ua = pa + 0x80808080u - na;
  ub = pb + 0x80808080u - nb;
}
// IntCodes with MXFP4 as mxfp4_biased8 gives it: unsigned, offset 128 (the GEMV v3)
template <int T> struct IntCodesMx : IntCodes<T> {};
template <> struct IntCodesMx<kMXFP4> { static constexpr bool kSigned = false; static constexpr int kOff = 128; };

// dp4a with the weight codes' signedness (a) against x's hi plane (signed) or lo plane (unsigned)
template <bool WS, bool XS>
__device__ __forceinline__ int dp4a(uint32_t a, uint32_t b, int c) {
  int d;
  if constexpr (WS && XS) asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (WS) asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (XS) asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// acc + one group's contribution: codes c[8] of one weight row, x planes (h0, l0: values 0..15;
// h1, l1: 16..31), xs = {d_x, sum q 0..15, sum q 16..31, -}. |sum c q| <= 32 * 128 * 32767 < 2^31.
// IC: the codes' format, IntCodes (the packed GEMV v2) or IntCodesMx (its v3 and the MoE decode v7:
// MXFP4 biased by 128). x as 16-bit codes: the packed GEMV's activation format (linear_q_impl.cuh v2).
template <int T, typename IC>
__device__ __forceinline__ float group_dot(const uint32_t* c, const uint4& h0, const uint4& l0, const uint4& h1,
                                           const uint4& l1, const float4& xs, float s0, float s1, float mn,
                                           float acc) {
  constexpr bool WS = IC::kSigned;
  constexpr int OFF = IC::kOff;
  int hs0 = dp4a<WS, true>(c[0], h0.x, 0), ls0 = dp4a<WS, false>(c[0], l0.x, 0);
  hs0 = dp4a<WS, true>(c[1], h0.y, hs0), ls0 = dp4a<WS, false>(c[1], l0.y, ls0);
  hs0 = dp4a<WS, true>(c[2], h0.z, hs0), ls0 = dp4a<WS, false>(c[2], l0.z, ls0);
  hs0 = dp4a<WS, true>(c[3], h0.w, hs0), ls0 = dp4a<WS, false>(c[3], l0.w, ls0);
  int hs1 = dp4a<WS, true>(c[4], h1.x, 0), ls1 = dp4a<WS, false>(c[4], l1.x, 0);
  hs1 = dp4a<WS, true>(c[5], h1.y, hs1), ls1 = dp4a<WS, false>(c[5], l1.y, ls1);
  hs1 = dp4a<WS, true>(c[6], h1.z, hs1), ls1 = dp4a<WS, false>(c[6], l1.z, ls1);
  hs1 = dp4a<WS, true>(c[7], h1.w, hs1), ls1 = dp4a<WS, false>(c[7], l1.w, ls1);
  const int q0 = __float_as_int(xs.y), q1 = __float_as_int(xs.z);
  float f;
  if constexpr (T == kQ6_K) {  // two 16-value scales
    const int t0 = hs0 * 256 + ls0 - OFF * q0, t1 = hs1 * 256 + ls1 - OFF * q1;
    f = fmaf(s1, (float)t1, __fmul_rn(s0, (float)t0));
  } else {
    const int t = (hs0 + hs1) * 256 + (ls0 + ls1) - OFF * (q0 + q1);
    f = __fmul_rn(s0, (float)t);
    if constexpr (Traits<T>::kHasMin) f = fmaf(mn, (float)(q0 + q1), f);
  }
  return fmaf(xs.x, f, acc);
}

// A 16-bit field at an even offset: one load (a block of a type with an even size starts at an
// even offset of a 16-byte aligned span, so its fp16 fields are 2-byte aligned).
__device__ __forceinline__ uint32_t smem_u16(const uint8_t* buf, int off) {
  return *reinterpret_cast<const uint16_t*>(buf + off);
}

// kMx: MXFP4 codes from mxfp4_biased8 (IntCodesMx), else mxfp4_int8 (IntCodes). kZip (MXFP4 with
// kMx only): from mxfp4_biased8_zip, c[2i] = ua and c[2i + 1] = ub of qs word i, for x staged by
// quantize8_v3<true> (the same integer group sums as the natural order).
template <int T, bool kMx = false, bool kZip = false>
__device__ __forceinline__ void group_codes(const uint8_t* buf, int blk, int j, uint32_t* c, float& s0, float& s1,
                                            float& mn) {
  const SharedReader rd{buf};
  mn = 0.f;
  if constexpr (Traits<T>::QK == 32) {
    // The whole block as the aligned words a[] holding its bytes, r = blk & 3 bytes into a[0]:
    // r is 0 or 2 for the even block sizes (Q8_0, Q4_0, Q5_0: blocks start at even offsets), 0
    // for Q4_1 / Q5_1 (sizes multiples of 4), any for MXFP4. Block byte b is a-byte r + b; a
    // 4-byte field at block byte b = 4k + o is funnel(a[k], a[k + 1], 8 (r + o)), the shift
    // clamped at 32 (__funnelshift_rc) where r + o = 4. One load per word, none per field.
    constexpr int TS = Traits<T>::TS, RMAX = TS % 4 == 0 ? 0 : TS % 2 == 0 ? 2 : 3, NW = (RMAX + TS + 3) / 4;
    const uint32_t* wp = reinterpret_cast<const uint32_t*>(buf) + (blk >> 2);
    const int r8 = 8 * (blk & 3);
    uint32_t a[NW];
#pragma unroll
    for (int k = 0; k < NW; ++k) a[k] = wp[k];
    if constexpr (T == kQ8_0) {  // {f16 d, int8 qs[32]}
      s0 = f16_bits((a[0] >> r8) & 0xFFFFu);
#pragma unroll
      for (int i = 0; i < 8; ++i) c[i] = __funnelshift_rc(a[i], a[i + 1], r8 + 16);
    } else {
      // 16 code bytes: value v in the low nibble of byte v, v + 16 in the high nibble
      uint32_t q[4], qh = 0;
      if constexpr (T == kQ4_0) {  // {f16 d, u8 qs[16]}
        s0 = f16_bits((a[0] >> r8) & 0xFFFFu);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = __funnelshift_rc(a[i], a[i + 1], r8 + 16);
      } else if constexpr (T == kQ4_1) {  // {f16 d, f16 m, u8 qs[16]}, r = 0
        s0 = f16_bits(a[0] & 0xFFFFu);
        mn = f16_bits(a[0] >> 16);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = a[i + 1];
      } else if constexpr (T == kQ5_0) {  // {f16 d, u32 qh, u8 qs[16]}
        s0 = f16_bits((a[0] >> r8) & 0xFFFFu);
        qh = __funnelshift_rc(a[0], a[1], r8 + 16);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = __funnelshift_rc(a[i + 1], a[i + 2], r8 + 16);
      } else if constexpr (T == kQ5_1) {  // {f16 d, f16 m, u32 qh, u8 qs[16]}, r = 0
        s0 = f16_bits(a[0] & 0xFFFFu);
        mn = f16_bits(a[0] >> 16);
        qh = a[1];
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = a[i + 2];
      } else {  // MXFP4 {e8m0 e, u8 qs[16]}
        s0 = e8m0_half((a[0] >> r8) & 0xFFu);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = __funnelshift_rc(a[i], a[i + 1], r8 + 8);
      }
      static_assert(!kZip || (T == kMXFP4 && kMx), "the zip order is MXFP4's biased codes only");
      if constexpr (kZip) {
#pragma unroll
        for (int i = 0; i < 4; ++i) mxfp4_biased8_zip(q[i], c[2 * i], c[2 * i + 1]);
      } else if constexpr (T == kMXFP4 && kMx) {
#pragma unroll
        for (int i = 0; i < 4; ++i) mxfp4_biased8(q[i], c[i], c[i + 4]);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          c[i] = q[i] & 0x0F0F0F0Fu;
          c[i + 4] = (q[i] >> 4) & 0x0F0F0F0Fu;
        }
      }
      if constexpr (T == kMXFP4 && !kMx) {
#pragma unroll
        for (int i = 0; i < 8; ++i) c[i] = mxfp4_int8(c[i]);
      }
      if constexpr (T == kQ5_0 || T == kQ5_1) {  // bit v of qh is bit 4 of value v
#pragma unroll
        for (int i = 0; i < 8; ++i) c[i] |= nibble_to_bit4((qh >> (4 * i)) & 0xFu);
      }
    }
  } else if constexpr (T == kQ4_K || T == kQ5_K) {  // layouts: header
    uint32_t sc, m;
    k_scale_min(rd.u8(blk + 4 + (j & 3)), rd.u8(blk + 8 + (j & 3)), rd.u8(blk + 12 + (j & 3)), j, sc, m);
    s0 = __fmul_rn(f16_bits(smem_u16(buf, blk)), (float)sc);
    mn = -__fmul_rn(f16_bits(smem_u16(buf, blk + 2)), (float)m);
    constexpr int qs = T == kQ4_K ? 16 : 48;
    uint32_t q[8];
    smem_words<8>(buf, blk + qs + 32 * (j >> 1), q);
#pragma unroll
    for (int i = 0; i < 8; ++i) c[i] = (q[i] >> (4 * (j & 1))) & 0x0F0F0F0Fu;
    if constexpr (T == kQ5_K) {
      smem_words<8>(buf, blk + 16, q);
#pragma unroll
      for (int i = 0; i < 8; ++i) c[i] |= ((q[i] >> j) & 0x01010101u) << 4;
    }
  } else if constexpr (T == kQ6_K) {  // layout: header; scales 8h + 2g (values 0..15), + 1 (16..31)
    const int h = j >> 2, g = j & 3;
    uint32_t lo[8], hi[8];
    smem_words<8>(buf, blk + 64 * h + 32 * (g & 1), lo);
    smem_words<8>(buf, blk + 128 + 32 * h, hi);
#pragma unroll
    for (int i = 0; i < 8; ++i) c[i] = ((lo[i] >> (4 * (g >> 1))) & 0x0F0F0F0Fu) | (((hi[i] >> (2 * g)) & 0x03030303u) << 4);
    const float d = f16_bits(smem_u16(buf, blk + 208));
    s0 = __fmul_rn(d, (float)(int)(int8_t)rd.u8(blk + 192 + 8 * h + 2 * g));
    s1 = __fmul_rn(d, (float)(int)(int8_t)rd.u8(blk + 193 + 8 * h + 2 * g));
    return;
  }
  s1 = s0;
}

// The exact dequantized value of a code w with multiplier s and additive term mn (ggml's fp32 operation order, no FMA).
template <int T>
__device__ __forceinline__ float value_exact(float w, float s, float mn) {
  const float v = __fmul_rn(w, s);
  if constexpr (Traits<T>::kHasMin) return __fadd_rn(v, mn);
  return v;
}

// One 32-value group of activations as 16-bit codes (the packed GEMV's v3 staging and the MoE
// kernels' stage_codes; the codes, the scale and the exactness argument are in
// csrc/linear_q_impl.cuh's header): f = the thread's 8 values 8 part .. 8 part + 7; the 4 threads
// of a group are lanes l, l ^ 8, l ^ 16, l ^ 24 (part = lane / 8), and every lane of the warp
// calls it (full-warp shuffles; store false: a lane past the last group). dst: the high bytes of
// the 8 codes, their low bytes 512 bytes on (the code tiles' next plane); part 0 writes *scale =
// (d, or NaN for a non-finite group; the sum of codes 0..15; of codes 16..31; 0).
// kZip (mxfp4_biased8_zip's order, the MoE decode v7.2): each plane's 16 bytes alternate value v
// and v + 16, i.e. plane 0 (high bytes) and 1 (low bytes) hold values 0..7 with 16..23, planes 2
// and 3 values 8..15 with 24..31; part p writes bytes 8 (p / 2) .. 8 (p / 2) + 7 of planes 2 (p & 1)
// and 2 (p & 1) + 1, with the codes it gets from lane ^ 16. dst: the group's slot in plane 0.
template <bool kZip = false>
__device__ __forceinline__ void quantize8_v3(const float* f, int part, bool store, uint8_t* dst, float4* scale) {
  float amax = 0.f;
#pragma unroll
  for (int t = 0; t < 8; ++t) amax = fmaxf(amax, fabsf(f[t]));  // fmaxf: order-free, drops NaN as v2's
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 8));
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 16));
  // v2's `bad` on its two quads: NaN iff a quad sum is not finite
  float bad = 0.f * ((f[0] + f[1]) + (f[2] + f[3])) + 0.f * ((f[4] + f[5]) + (f[6] + f[7]));
  bad += __shfl_xor_sync(0xffffffffu, bad, 8);
  bad += __shfl_xor_sync(0xffffffffu, bad, 16);
  // frexpf(amax) for finite nonzero amax (linear_q_impl.cuh's header), else mant = 0, e = 0
  const uint32_t ab = __float_as_uint(amax);
  int e = 0;
  float mant = 0.f;
  if (ab - 1u < 0x7F7FFFFFu) {
    const bool sub = ab < 0x00800000u;
    const uint32_t nb = sub ? __float_as_uint(amax * 16777216.f) : ab;
    e = (int)(nb >> 23) - (sub ? 150 : 126);
    mant = __uint_as_float((nb & 0x007FFFFFu) | 0x3F000000u);
  }
  const float inv = mant > 0.f ? 32767.f / mant : 0.f;
  const bool tiny = e < -100;
  const float c = __uint_as_float(__float_as_uint(inv) - ((uint32_t)(tiny ? e + 64 : e) << 23));
  uint32_t s[8];  // bits of RN(code + 1.5 * 2^23)
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    const float v = tiny ? __fmul_rn(f[t], 18446744073709551616.f) : f[t];  // 2^64
    s[t] = __float_as_uint(__fadd_rn(__fmul_rn(v, c), 12582912.f));
  }
  uint32_t sum = 0;
#pragma unroll
  for (int t = 0; t < 8; ++t) sum += s[t];
  int q = (int)(sum - 8u * 0x4B400000u);
  q += __shfl_xor_sync(0xffffffffu, q, 8);  // parts 0, 1: values 0..15; parts 2, 3: 16..31
  const int q_hi = __shfl_xor_sync(0xffffffffu, q, 16);
  if constexpr (!kZip) {
    if (!store) return;
  }
  uint32_t hi[2], lo[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t p01 = __byte_perm(s[4 * h], s[4 * h + 1], 0x5140), p23 = __byte_perm(s[4 * h + 2], s[4 * h + 3], 0x5140);
    lo[h] = __byte_perm(p01, p23, 0x5410);  // byte 0 of each code
    hi[h] = __byte_perm(p01, p23, 0x7632);  // byte 1
  }
  if constexpr (kZip) {
    // parts 0 / 1 keep their first four values and take their partner's (parts 2 / 3, 16 values
    // on) first four; the partner keeps its last four and takes theirs: every lane shuffles
    const bool low = part < 2;
    const uint32_t hi_in = __shfl_xor_sync(0xffffffffu, low ? hi[1] : hi[0], 16);
    const uint32_t lo_in = __shfl_xor_sync(0xffffffffu, low ? lo[1] : lo[0], 16);
    if (!store) return;
    const uint32_t ha = low ? hi[0] : hi_in, hb = low ? hi_in : hi[1];  // values v .. v + 3, v + 16 .. v + 19
    const uint32_t la = low ? lo[0] : lo_in, lb = low ? lo_in : lo[1];
    uint8_t* slot = dst + (part & 1) * 2 * 32 * 16 + (part >> 1) * 8;
    *reinterpret_cast<uint2*>(slot) = make_uint2(__byte_perm(ha, hb, 0x5140), __byte_perm(ha, hb, 0x7362));
    *reinterpret_cast<uint2*>(slot + 32 * 16) = make_uint2(__byte_perm(la, lb, 0x5140), __byte_perm(la, lb, 0x7362));
  } else {
    *reinterpret_cast<uint2*>(dst) = make_uint2(hi[0], hi[1]);
    *reinterpret_cast<uint2*>(dst + 32 * 16) = make_uint2(lo[0], lo[1]);
  }
  if (part == 0) {
    const float dy = mant / 32767.f;
    const float d = e >= -100 ? __uint_as_float(__float_as_uint(dy) + ((uint32_t)e << 23)) : ldexpf(dy, e);
    *scale = make_float4(d + bad, __int_as_float(q), __int_as_float(q_hi), 0.f);
  }
}

}  // namespace quant
}  // namespace gpte
