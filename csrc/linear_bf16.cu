// The dense decode GEMV (csrc/linear_impl.cuh) for BF16 weights: a file per weight dtype, and for each
// a second file for bf16 activations (linear_bf16_bf16.cu). Session 41's v27b (the norm folded into
// the GEMV's epilogue) made one weight dtype's file a 252 s compile on one core of the 2-core
// machine, the critical path of every build on the 16-core GPU machine; split by activation type,
// each half takes about half that. The kernels are the same code (tests/bench/sass_compare.py).
#include "linear_impl.cuh"

namespace gpte {
cudaError_t launch_linear_gemv_bf16_bf16(const LinearArgs& p, int num_sms, cudaStream_t st);  // linear_bf16_bf16.cu

cudaError_t launch_linear_gemv_bf16(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  return adtype == kF16 ? launch_wa<__nv_bfloat16, __half>(p, num_sms, st) : launch_linear_gemv_bf16_bf16(p, num_sms, st);
}
}  // namespace gpte
