// Dispatch of the packed-block decode GEMV (csrc/linear_q_impl.cuh; its kernels instantiated one type
// per file, linear_q_<type>.cu).
#include <cstdlib>

#include "linear_q_impl.cuh"

namespace gpte {
int g_qgemv_zip = 1;  // v3.3 by default since session 31 (its A/B: csrc/linear_q_impl.cuh)
int g_qgemv_fold = 1;  // v3.4, the norm folded into the epilogue (csrc/linear_q_impl.cuh)

int qgemv_fold_force(int64_t on) {
  // 1: v3.4 (the default); 0: v3.3's staging (statistics, then the normalised row coded)
  if (on == 0 || on == 1) g_qgemv_fold = (int)on;
  return g_qgemv_fold;
}

int qgemv_zip_force(int64_t on) {
  // 1: v3.3's code order (MXFP4 only, the default; csrc/linear_q_impl.cuh); 0: v3's (the A/B and
  // the same-bits test)
  if (on == 0 || on == 1) g_qgemv_zip = (int)on;
  return g_qgemv_zip;
}

cudaError_t launch_linear_q_q8_0(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q4_0(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q4_1(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q5_0(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q5_1(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_mxfp4(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q4_k(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q5_k(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
cudaError_t launch_linear_q_q6_k(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st);
namespace {
using namespace linear_detail;
using namespace quant;

size_t smem_for(int qk, int ts, int64_t M, int64_t K) {
  const int mt = M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : 16;
  return smem_bytes(qk, ts, mt, K);
}

// The epilogue's arguments, as launch_linear_gemv checks them.
bool epilogue_ok(const LinearArgs& p) {
  if (p.act == kActSwiglu) return p.N == 2 * p.n_out;
  if (p.act == kActQkv) {
    const QkvEpilogue& e = p.qkv;
    if (e.d <= 0 || e.d % 2 || p.N != (e.hq + 2 * e.hkv) * e.d || p.n_out != e.hq * e.d || e.pos == nullptr ||
        e.k_cache == nullptr || e.v_cache == nullptr || p.residual != nullptr || p.out_f32)
      return false;
    if (e.rope_mode != kRopeNone && (e.rope_dim <= 0 || e.rope_dim > e.d || e.rope_dim % 2 || !e.cos_t || !e.sin_t))
      return false;
    return true;
  }
  return p.N == p.n_out;
}

}  // namespace

bool linear_q_supported(int ggml_type, int adtype, int64_t M, int64_t K) {
  int qk, ts;
  ggml_block_shape(ggml_type, qk, ts);
  return qk > 0 && (adtype == kF16 || adtype == kBF16) && M >= 1 && M <= kLinearMaxM && K > 0 && K % qk == 0 &&
         K < (1 << 28) && smem_for(qk, ts, M, K) <= (size_t)kSmemMax;
}

cudaError_t launch_linear_q(int ggml_type, int adtype, const LinearArgs& p, int num_sms, cudaStream_t stream) {
  if (p.M == 0 || p.n_out == 0) return cudaSuccess;
  if (!linear_q_supported(ggml_type, adtype, p.M, p.K) || !aligned16(p.w) || !epilogue_ok(p))
    return cudaErrorInvalidValue;
  switch (ggml_type) {
    case quant::kQ8_0: return launch_linear_q_q8_0(adtype, p, num_sms, stream);
    case quant::kQ4_0: return launch_linear_q_q4_0(adtype, p, num_sms, stream);
    case quant::kQ4_1: return launch_linear_q_q4_1(adtype, p, num_sms, stream);
    case quant::kQ5_0: return launch_linear_q_q5_0(adtype, p, num_sms, stream);
    case quant::kQ5_1: return launch_linear_q_q5_1(adtype, p, num_sms, stream);
    case quant::kMXFP4: return launch_linear_q_mxfp4(adtype, p, num_sms, stream);
    case quant::kQ4_K: return launch_linear_q_q4_k(adtype, p, num_sms, stream);
    case quant::kQ5_K: return launch_linear_q_q5_k(adtype, p, num_sms, stream);
    case quant::kQ6_K: return launch_linear_q_q6_k(adtype, p, num_sms, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace gpte
