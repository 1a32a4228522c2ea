// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for Q5_0, Q5_1, MXFP4.
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_b(int t, int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  switch (t) {
    case kQ5_0: return adtype == kF16 ? launch_ta<kQ5_0, __half>(p, num_sms, st) : launch_ta<kQ5_0, __nv_bfloat16>(p, num_sms, st);
    case kQ5_1: return adtype == kF16 ? launch_ta<kQ5_1, __half>(p, num_sms, st) : launch_ta<kQ5_1, __nv_bfloat16>(p, num_sms, st);
    case kMXFP4: return adtype == kF16 ? launch_ta<kMXFP4, __half>(p, num_sms, st) : launch_ta<kMXFP4, __nv_bfloat16>(p, num_sms, st);
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace gpte
