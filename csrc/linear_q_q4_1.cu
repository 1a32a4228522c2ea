// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for Q4_1 weights: a file per type (launch_type).
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_q4_1(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_type<quant::kQ4_1>(adtype, p, num_sms, st);
}
}  // namespace gpte
