// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for MXFP4 weights: a file per type (launch_type).
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_mxfp4(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_type<quant::kMXFP4>(adtype, p, num_sms, st);
}
}  // namespace gpte
