// GELU formulas shared by gelu.cu and bias_gelu.cu.
//   tanh form (GPT-2): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)  [Hendrycks & Gimpel 2016]
//   erf form:          0.5 x (1 + erf(x / sqrt(2)))
// Written as x * sigmoid(2u) and 0.5 x erfc(-x / sqrt(2)): no cancellation for very negative x.
// fp32 keeps the accurate library functions (its NMSE bound is 1e-10); fp16/bf16 outputs are
// rounded to 2^-11 / 2^-8 anyway, so they take the hardware approximations.
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

template <bool ACCURATE>
__device__ __forceinline__ float gelu_erf(float x) {
  if (ACCURATE) return 0.5f * x * erfcf(-x * kInvSqrt2);
  return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
}

template <typename T, bool TANH>
__device__ __forceinline__ float gelu_t(float x) {
  constexpr bool acc = std::is_same<T, float>::value;
  return TANH ? gelu_tanh<acc>(x) : gelu_erf<acc>(x);
}

}  // namespace gpte
