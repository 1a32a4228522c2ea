// The dense decode GEMV (csrc/linear_impl.cuh) for F16 weights and bf16 activations: the half of
// linear_f16.cu's kernels that file does not compile (it says why they are two files).
#include "linear_impl.cuh"

namespace gpte {
cudaError_t launch_linear_gemv_f16_bf16(const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_wa<__half, __nv_bfloat16>(p, num_sms, st);
}
}  // namespace gpte
