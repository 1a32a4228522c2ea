// GELU formulas shared by gelu.cu and bias_gelu.cu.
//   tanh form (GPT-2): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)  [Hendrycks & Gimpel 2016]
//   erf form:          0.5 x (1 + erf(x / sqrt(2)))
// Written as x * sigmoid(2u) and 0.5 x erfc(-x / sqrt(2)): no cancellation for very negative x.
// fp32 keeps the accurate library functions (its NMSE bound is 1e-10); fp16/bf16 outputs are
// rounded to 2^-11 / 2^-8 anyway, so they take the hardware approximations (MUFU ex2 / rcp) and,
// for the erf form, the polynomial below.
#pragma once
#include "common.cuh"

namespace gpte {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCoef = 0.044715f;                // from the GELU paper's tanh approximation
constexpr float kInvSqrt2 = 0.7071067811865476f;

template <bool ACCURATE>
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u2 = 2.0f * kSqrt2OverPi * fmaf(kGeluCoef * x, x * x, x);
  if (ACCURATE) return x / (1.0f + expf(-u2));
  return x * __fdividef(1.0f, 1.0f + __expf(-u2));
}

// Fast erf-form GELU for fp16/bf16 outputs: gelu(x) = x Phi(x), with the normal tail for a = |x|
//   Phi(-a) = t 2^(Q(t) - a^2 log2(e) / 2),  t = 1 / (1 + K a),  Q = the degree-6 polynomial below,
// the shape of Numerical Recipes' Chebyshev erfc (2nd ed., sec. 6.2); K and c0..c6 are our own
// minimax fit, derived and cited in tests/ops/fit_gelu_erf.py (relative error of Phi <= 1.2e-6 for
// a <= 6.25, where fp16 outputs are nonzero, <= 5.8e-6 up to a = 14, where bf16 outputs underflow).
// Fitted in relative terms, so the negative tail keeps its accuracy where 1 + erf(x) cancels.
// Cost per element: 2 MUFU (rcp, ex2) + 13 FP32 ops (8 FFMA, 3 FMUL, FSETP, FADD); the fp16 map
// kernel is 776 SASS instructions against 1208 with 1 + erff (which left it ALU-bound at 0.81 of
// copy on H200) and 664 for the tanh form (0.98 of copy) (nvdisasm, sm_90a, nvcc 13.0). tests/ops/test_gelu_erf_fast.py replays this exact float32 sequence over
// every fp16 input and a dense bf16 sweep. Error bound of the MUFU ops (CUDA C++ Programming
// Guide, intrinsic functions: rcp.approx 1 ulp, ex2.approx 2 ulp) is added there as a margin.
constexpr float kErfK = 0.42578125f;  // 109/256
constexpr float kErfC0 = -2.5587301f, kErfC1 = 1.4652061f, kErfC2 = 0.2870725f, kErfC3 = 0.63851655f,
                kErfC4 = -1.7537571f, kErfC5 = 1.2094357f, kErfC6 = -0.2877453f;
constexpr float kHalfLog2e = 0.7213475204444817f;  // log2(e) / 2

__device__ __forceinline__ float rcp_approx(float x) {  // MUFU.RCP; 1 / inf = 0
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 2^x keeping subnormal results, for bf16 outputs: its tail (x < -13.1) needs h below 2^-126. The
// non-flushing form costs 3 more instructions (a range test and two scalings around MUFU.EX2),
// which fp16 outputs skip: they are 0 long before (x < -6), so fast_exp2's flush is exact there.
__device__ __forceinline__ float exp2_approx_subnormal(float x) {
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// SUBNORMAL: keep fp32 subnormal intermediates (bf16 outputs; fp16 ones do not need them).
template <bool SUBNORMAL>
__device__ __forceinline__ float gelu_erf_fast(float x) {
  const float t = rcp_approx(fmaf(fabsf(x), kErfK, 1.0f));
  float q = fmaf(kErfC6, t, kErfC5);  // Horner, highest power first
  q = fmaf(q, t, kErfC4);
  q = fmaf(q, t, kErfC3);
  q = fmaf(q, t, kErfC2);
  q = fmaf(q, t, kErfC1);
  q = fmaf(q, t, kErfC0);
  const float arg = fmaf(x * x, -kHalfLog2e, q);  // x * x is exact for fp16/bf16 inputs
  const float h = t * (SUBNORMAL ? exp2_approx_subnormal(arg) : fast_exp2(arg));  // Phi(-|x|)
  return x * (x < 0.0f ? h : 1.0f - h);  // NaN -> NaN, +inf -> +inf, -inf -> NaN (as torch)
}

template <bool ACCURATE, bool SUBNORMAL>
__device__ __forceinline__ float gelu_erf(float x) {
  if (ACCURATE) return 0.5f * x * erfcf(-x * kInvSqrt2);
  return gelu_erf_fast<SUBNORMAL>(x);
}

template <typename T, bool TANH>
__device__ __forceinline__ float gelu_t(float x) {
  constexpr bool acc = std::is_same<T, float>::value;
  return TANH ? gelu_tanh<acc>(x) : gelu_erf<acc, std::is_same<T, __nv_bfloat16>::value>(x);
}

}  // namespace gpte
