// GGUF block decoders on the device: decode4() (exact float values, used by the dequantize kernel
// csrc/dequant.cu) and group_codes() (integer codes of a whole 32-value group for dp4a, used by
// the packed-weight GEMV csrc/linear_q_impl.cuh); written so that other kernels (MoE experts) can
// reuse them.
//
// Layouts: ggml-common.h's block structs, as gpt_engine/quants.py documents and decodes them
// (that file is the CPU oracle, bit-exact with gguf-py). Type ids are gguf-py's
// GGMLQuantizationType values.
//
// The unit of work is a "quad": 4 consecutive values of a 32-value group. A block holds QK / 32
// groups (1 for the 32-value types, 8 for the 256-value K-quants), a group 8 quads. decode4()
// returns, for quad i of group j of the block at byte offset `blk`:
//   w[0..3]  the integer codes as exact floats (offset already removed: Q4_0 q - 8, Q5_0 q - 16,
//            Q6_K q - 32, Q8_0 the int8, MXFP4 the E2M1 value doubled, as ggml's kvalues_mxfp4)
//   s        the multiplier: d, d * sc (K-quants, one fp32 rounding) or the E8M0 scale halved
//   mn       the additive term (kHasMin types): Q4_1/Q5_1 +m, Q4_K/Q5_K -(dmin * m)
// The exact value (ggml's order of fp32 operations, no contraction) is w*s, or w*s + mn:
// value_exact() below.
//
// Bytes are read through a reader `R` with u32(off) (little-endian, any alignment), u16(off) and
// u8(off), so the same decoder reads a block from global memory or from a shared-memory copy.
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

// Reads from a 4-byte-aligned base: two aligned words and a funnel shift for an unaligned u32
// (the second word is touched only when the value straddles it).
struct GlobalReader {
  const uint8_t* base;  // 4-byte aligned
  __device__ __forceinline__ uint32_t u32(int64_t off) const {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(base) + (off >> 2);
    const int sh = (int)(off & 3) * 8;
    const uint32_t lo = __ldg(w);
    return sh ? __funnelshift_r(lo, __ldg(w + 1), sh) : lo;
  }
  __device__ __forceinline__ uint32_t u16(int64_t off) const { return base[off] | ((uint32_t)base[off + 1] << 8); }
  __device__ __forceinline__ uint32_t u8(int64_t off) const { return base[off]; }
};

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

// K-quant 6-bit scale and min of group j (ggml get_scale_min_k4); sc12 = the 12 scale bytes.
template <typename R, typename O>
__device__ __forceinline__ void k_scale_min(const R& rd, O sc12, int j, uint32_t& sc, uint32_t& m) {
  if (j < 4) {
    sc = rd.u8(sc12 + j) & 63u;
    m = rd.u8(sc12 + j + 4) & 63u;
  } else {
    const uint32_t c = rd.u8(sc12 + j + 4), a = rd.u8(sc12 + j - 4), b = rd.u8(sc12 + j);
    sc = (c & 0xFu) | ((a >> 6) << 4);
    m = (c >> 4) | ((b >> 6) << 4);
  }
}

template <int T, typename R, typename O>
__device__ __forceinline__ void decode4(const R& rd, O blk, int j, int i, float* w, float& s, float& mn) {
  mn = 0.f;
  if constexpr (T == kQ8_0) {  // {f16 d, int8 qs[32]}: q * d
    s = f16_bits(rd.u16(blk));
    codes4<128>(rd.u32(blk + 2 + 4 * i) ^ 0x80808080u, w);
  } else if constexpr (T == kQ4_0) {  // {f16 d, u8 qs[16]}: value v in the low nibble of qs[v], v+16 in the high
    s = f16_bits(rd.u16(blk));
    codes4<8>((rd.u32(blk + 2 + 4 * (i & 3)) >> (4 * (i >> 2))) & 0x0F0F0F0Fu, w);
  } else if constexpr (T == kQ4_1) {  // {f16 d, f16 m, u8 qs[16]}: q * d + m
    s = f16_bits(rd.u16(blk));
    mn = f16_bits(rd.u16(blk + 2));
    codes4<0>((rd.u32(blk + 4 + 4 * (i & 3)) >> (4 * (i >> 2))) & 0x0F0F0F0Fu, w);
  } else if constexpr (T == kQ5_0) {  // {f16 d, u32 qh, u8 qs[16]}: bit v of qh is bit 4 of value v
    s = f16_bits(rd.u16(blk));
    const uint32_t qh = rd.u32(blk + 2);
    const uint32_t lo = (rd.u32(blk + 6 + 4 * (i & 3)) >> (4 * (i >> 2))) & 0x0F0F0F0Fu;
    codes4<16>(lo | spread4_to_bit4((qh >> (4 * i)) & 0xFu), w);
  } else if constexpr (T == kQ5_1) {  // {f16 d, f16 m, u32 qh, u8 qs[16]}: q * d + m
    s = f16_bits(rd.u16(blk));
    mn = f16_bits(rd.u16(blk + 2));
    const uint32_t qh = rd.u32(blk + 4);
    const uint32_t lo = (rd.u32(blk + 8 + 4 * (i & 3)) >> (4 * (i >> 2))) & 0x0F0F0F0Fu;
    codes4<0>(lo | spread4_to_bit4((qh >> (4 * i)) & 0xFu), w);
  } else if constexpr (T == kMXFP4) {  // {e8m0 e, u8 qs[16]}: E2M1 codes, nibbles as Q4_0
    s = e8m0_half(rd.u8(blk));
    const uint32_t c = (rd.u32(blk + 1 + 4 * (i & 3)) >> (4 * (i >> 2))) & 0x0F0F0F0Fu;
    // doubled E2M1 magnitudes {0,1,2,3,4,6,8,12} and their negatives as byte lookup tables: the
    // 3-bit magnitudes become the byte selectors of one prmt per sign
    const uint32_t mag = c & 0x07070707u, t = mag | (mag >> 4);
    const uint32_t sel = (t & 0xFFu) | ((t >> 8) & 0xFF00u);
    const uint32_t pos = __byte_perm(0x03020100u, 0x0C080604u, sel);
    const uint32_t neg = __byte_perm(0xFDFEFF00u, 0xF4F8FAFCu, sel);
    const uint32_t sm = ((c >> 3) & 0x01010101u) * 0xFFu;
    codes4<128>(((pos & ~sm) | (neg & sm)) ^ 0x80808080u, w);  // code 8 (-0) gives 0, as in ggml
  } else if constexpr (T == kQ4_K || T == kQ5_K) {
    // Q4_K {f16 d, f16 dmin, u8 scales[12], u8 qs[128]}; Q5_K adds u8 qh[32] before qs. Group j:
    // qs bytes 32 (j / 2) .., low nibbles for even j, high for odd; Q5_K: bit j of qh[l] is bit 4
    // of value l. value = (d * sc) * q - (dmin * m)
    uint32_t sc, m;
    k_scale_min(rd, blk + 4, j, sc, m);
    s = __fmul_rn(f16_bits(rd.u16(blk)), (float)sc);
    mn = -__fmul_rn(f16_bits(rd.u16(blk + 2)), (float)m);
    constexpr int qs = T == kQ4_K ? 16 : 48;
    uint32_t c = (rd.u32(blk + qs + 32 * (j >> 1) + 4 * i) >> (4 * (j & 1))) & 0x0F0F0F0Fu;
    if constexpr (T == kQ5_K) c |= ((rd.u32(blk + 16 + 4 * i) >> j) & 0x01010101u) << 4;
    codes4<0>(c, w);
  } else if constexpr (T == kQ6_K) {
    // {u8 ql[128], u8 qh[64], int8 scales[16], f16 d}: group j = 4h + g, value t of the group:
    // low 4 bits from ql[64h + 32(g & 1) + t] (high nibble when g >= 2), high 2 bits
    // (qh[32h + t] >> 2g) & 3; q - 32; scale 8h + 2g + (t >= 16). value = (d * sc) * q
    const int h = j >> 2, g = j & 3;
    const uint32_t lo = (rd.u32(blk + 64 * h + 32 * (g & 1) + 4 * i) >> (4 * (g >> 1))) & 0x0F0F0F0Fu;
    const uint32_t hi = (rd.u32(blk + 128 + 32 * h + 4 * i) >> (2 * g)) & 0x03030303u;
    const int sc = (int)(int8_t)rd.u8(blk + 192 + 8 * h + 2 * g + (i >> 2));
    s = __fmul_rn(f16_bits(rd.u16(blk + 208)), (float)sc);
    codes4<32>(lo | (hi << 4), w);
  }
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
//   mn      the additive term of the kHasMin types (as decode4)
// so that value t = s * (code_t - kOff) (+ mn): the same numbers decode4 gives.
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
// IntCodes with MXFP4 as mxfp4_biased8 gives it: unsigned, offset 128 (the GEMV v3)
template <int T> struct IntCodesMx : IntCodes<T> {};
template <> struct IntCodesMx<kMXFP4> { static constexpr bool kSigned = false; static constexpr int kOff = 128; };

// A 16-bit field at an even offset: one load (a block of a type with an even size starts at an
// even offset of a 16-byte aligned span, so its fp16 fields are 2-byte aligned).
__device__ __forceinline__ uint32_t smem_u16(const uint8_t* buf, int off) {
  return *reinterpret_cast<const uint16_t*>(buf + off);
}

// kMx: MXFP4 codes from mxfp4_biased8 (IntCodesMx), else mxfp4_int8 (IntCodes)
template <int T, bool kMx = false>
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
      if constexpr (T == kMXFP4 && kMx) {
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
  } else if constexpr (T == kQ4_K || T == kQ5_K) {  // layouts as in decode4
    uint32_t sc, m;
    k_scale_min(rd, blk + 4, j, sc, m);
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
  } else if constexpr (T == kQ6_K) {  // layout as in decode4; scales 8h + 2g (values 0..15), + 1 (16..31)
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

// The exact dequantized value of a code from decode4 (ggml's fp32 operation order, no FMA).
template <int T>
__device__ __forceinline__ float value_exact(float w, float s, float mn) {
  const float v = __fmul_rn(w, s);
  if constexpr (Traits<T>::kHasMin) return __fadd_rn(v, mn);
  return v;
}

}  // namespace quant
}  // namespace gpte
