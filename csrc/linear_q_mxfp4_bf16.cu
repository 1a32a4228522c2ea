// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for MXFP4 weights and bf16 activations: the
// half of linear_q_mxfp4.cu's kernels that file does not compile (it says why they are two files).
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_mxfp4_bf16(const LinearArgs& p, int num_sms, cudaStream_t st) {
  return launch_ta<quant::kMXFP4, __nv_bfloat16>(p, num_sms, st);
}
}  // namespace gpte
