// gpt-oss's clamped SwiGLU in fp32, shared by the MoE kernels (csrc/moe.cu, csrc/moe_grouped.cu):
// OpenAI's reference (gpt_oss/torch/model.py swiglu: alpha 1.702, limit 7) and its torch twin
// gpt_engine/ops/moe.py swiglu_oai: gate clamped above at 7, up clamped to [-7, 7], then
// gate * sigmoid(1.702 gate) * (up + 1). The clamps are comparisons that keep a NaN, as
// torch.clamp does (fminf / fmaxf, used before, return the limit for a NaN and so hid one);
// for every other input they give fminf / fmaxf's results, -0 and infinities included.
#pragma once
#include <cmath>

namespace gpte {

constexpr float kSwigluAlpha = 1.702f;
constexpr float kSwigluLimit = 7.0f;

__device__ __forceinline__ float swiglu_oai(float g, float u) {
  const float gc = g > kSwigluLimit ? kSwigluLimit : g;
  const float uc = u < -kSwigluLimit ? -kSwigluLimit : (u > kSwigluLimit ? kSwigluLimit : u);
  return gc / (1.f + expf(-kSwigluAlpha * gc)) * (uc + 1.f);
}

}  // namespace gpte
