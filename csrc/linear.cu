// The dense decode GEMV's entry (csrc/linear_impl.cuh has the kernels, their versions and numbers):
// the arguments checked, then the weight dtype's launcher, each compiled in its own file
// (linear_f32.cu, linear_f16.cu, linear_bf16.cu).
#include "linear_common.cuh"

namespace gpte {
int g_linear_ring_mode = 0;
int g_linear_stats_one_pass = 1;
int g_linear_fold = 1;
// v32 on by default since session 49: ncu (PART=27, H100) timed the ring kernel's 16-row LayerNorm
// 4800 x 1600 product 97.3 us without it and 37.1 us with it (instructions 17.6 M -> 9.9 M; the
// warps' instruction-fetch stall 4.17 -> 0.29 cycles an instruction); the step-level A/B is PART=26's
int g_linear_scatter = 1;

int linear_scatter_force(int64_t on) {
  if (on == 0 || on == 1) g_linear_scatter = (int)on;
  return g_linear_scatter;
}

int linear_fold_force(int64_t on) {
  // 2: the fold with each pair's own row statistics past 4 rows, as before v31 (A/Bs)
  if (on >= 0 && on <= 2) g_linear_fold = (int)on;
  return g_linear_fold;
}

int linear_stats_force(int64_t on) {
  if (on == 0 || on == 1) g_linear_stats_one_pass = (int)on;
  return g_linear_stats_one_pass;
}

int linear_ring_force(int64_t mode) {
  // 0-5: the rule (csrc/linear_impl.cuh); + 8: the ring kernel's copies as bulk copies (v20);
  // + 16: M >= 2 on the ring kernel wherever its staged rows fit; + 32: M 9-16 on v3 as before v30
  // (16 wins where both are set)
  if (mode >= 0 && (mode & 7) <= 5 && mode <= 61) g_linear_ring_mode = (int)mode;
  return g_linear_ring_mode;
}

cudaError_t launch_linear_gemv_f32(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_gemv_f16(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_gemv_bf16(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);

bool linear_gemv_supported(int wdtype, int adtype, int64_t M, int64_t K) {
  const int ch = wdtype == kF32 ? 4 : 8;
  return (adtype == kF16 || adtype == kBF16) && (wdtype == kF32 || wdtype == kF16 || wdtype == kBF16) && M >= 1 &&
         M <= kLinearMaxM && K > 0 && K % ch == 0 && K < (1 << 30);
}

cudaError_t launch_linear_gemv(int wdtype, int adtype, const LinearArgs& p, int num_sms, cudaStream_t stream) {
  if (p.M == 0 || p.n_out == 0) return cudaSuccess;
  if (!linear_gemv_supported(wdtype, adtype, p.M, p.K) || !aligned16(p.w)) return cudaErrorInvalidValue;
  if (p.act == kActSwiglu && p.N != 2 * p.n_out) return cudaErrorInvalidValue;
  if (p.act == kActQkv) {
    const QkvEpilogue& e = p.qkv;
    if (e.d <= 0 || e.d % 2 || p.N != (e.hq + 2 * e.hkv) * e.d || p.n_out != e.hq * e.d || e.pos == nullptr ||
        e.k_cache == nullptr || e.v_cache == nullptr || p.residual != nullptr || p.out_f32)
      return cudaErrorInvalidValue;
    if (e.rope_mode != kRopeNone && (e.rope_dim <= 0 || e.rope_dim > e.d || e.rope_dim % 2 || !e.cos_t || !e.sin_t))
      return cudaErrorInvalidValue;
  } else if (p.act != kActSwiglu && p.N != p.n_out) {
    return cudaErrorInvalidValue;
  }
  switch (wdtype) {
    case kF32: return launch_linear_gemv_f32(adtype, p, num_sms, stream);
    case kF16: return launch_linear_gemv_f16(adtype, p, num_sms, stream);
    default: return launch_linear_gemv_bf16(adtype, p, num_sms, stream);
  }
}

}  // namespace gpte
