// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for Q8_0, Q4_0, Q4_1.
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_a(int t, int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  switch (t) {
    case kQ8_0: return adtype == kF16 ? launch_ta<kQ8_0, __half>(p, num_sms, st) : launch_ta<kQ8_0, __nv_bfloat16>(p, num_sms, st);
    case kQ4_0: return adtype == kF16 ? launch_ta<kQ4_0, __half>(p, num_sms, st) : launch_ta<kQ4_0, __nv_bfloat16>(p, num_sms, st);
    case kQ4_1: return adtype == kF16 ? launch_ta<kQ4_1, __half>(p, num_sms, st) : launch_ta<kQ4_1, __nv_bfloat16>(p, num_sms, st);
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace gpte
