// The dense decode GEMV (csrc/linear_impl.cuh) for F32 weights: a file per weight dtype (launch_w).
#include "linear_impl.cuh"

namespace gpte {
cudaError_t launch_linear_gemv_f32(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_w<float>(adtype, p, num_sms, st);
}
}  // namespace gpte
