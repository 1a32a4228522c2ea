// The dense decode GEMV (csrc/linear_impl.cuh) for F16 weights: a file per weight dtype (launch_w).
#include "linear_impl.cuh"

namespace gpte {
cudaError_t launch_linear_gemv_f16(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_w<__half>(adtype, p, num_sms, st);
}
}  // namespace gpte
