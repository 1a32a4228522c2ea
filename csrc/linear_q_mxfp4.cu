// The packed-block decode GEMV (csrc/linear_q_impl.cuh) for MXFP4 weights: a file per type (launch_type),
// and for MXFP4 a second file for bf16 activations (linear_q_mxfp4_bf16.cu). MXFP4 has twice the
// kernels of the other types (v3.3's code order beside the plain one), and in one file they were the
// extension build's longest compile: ~155 s against ~75 s for any other file on one core of the
// 2-core machine (session 41), the critical path of every build on the 16-core GPU machine.
// Split by activation type, each half is one of the ~75 s files; the kernels are the same code.
#include "linear_q_impl.cuh"

namespace gpte {
cudaError_t launch_linear_q_mxfp4_bf16(const LinearArgs& p, int num_sms, cudaStream_t st);  // linear_q_mxfp4_bf16.cu

cudaError_t launch_linear_q_mxfp4(int adtype, const LinearArgs& p, int num_sms, cudaStream_t st) {
  // launch_type's choice, its bf16 half in the other file
  return adtype == kF16 ? launch_ta<quant::kMXFP4, __half>(p, num_sms, st) : launch_linear_q_mxfp4_bf16(p, num_sms, st);
}
}  // namespace gpte
