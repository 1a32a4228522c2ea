// The dense decode GEMV (csrc/linear_impl.cuh) for BF16 weights and bf16 activations: the half of
// linear_bf16.cu's kernels that file does not compile (it says why they are two files).
#include "linear_impl.cuh"

namespace gpte {
cudaError_t launch_linear_gemv_bf16_bf16(const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_wa<__nv_bfloat16, __nv_bfloat16>(p, num_sms, st);
}
}  // namespace gpte
