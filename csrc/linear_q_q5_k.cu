// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for Q5_K weights: a file per type (launch_type).
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_q5_k(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_type<quant::kQ5_K>(adtype, p, num_sms, st);
}
}  // namespace gpte
