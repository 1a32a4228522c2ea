// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for Q4_K, Q5_K, Q6_K.
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_k(int t, int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  switch (t) {
    case kQ4_K: return adtype == kF16 ? launch_ta<kQ4_K, __half>(p, num_sms, st) : launch_ta<kQ4_K, __nv_bfloat16>(p, num_sms, st);
    case kQ5_K: return adtype == kF16 ? launch_ta<kQ5_K, __half>(p, num_sms, st) : launch_ta<kQ5_K, __nv_bfloat16>(p, num_sms, st);
    case kQ6_K: return adtype == kF16 ? launch_ta<kQ6_K, __half>(p, num_sms, st) : launch_ta<kQ6_K, __nv_bfloat16>(p, num_sms, st);
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace gpte
