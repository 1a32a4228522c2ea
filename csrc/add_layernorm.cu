// Fused residual add + LayerNorm: h = x + residual (written), y = layernorm(h); one read of
// x and residual, h kept in registers (kernels in layernorm_impl.cuh).
#include "launchers.h"
#include "layernorm_impl.cuh"

namespace gpte {

cudaError_t launch_add_layernorm(int dtype, const void* x, const void* residual, const void* w, const void* b,
                                 void* h, void* y, int64_t rows, int64_t c, float eps, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T,
                return ln::run<T, true>((const T*)x, (const T*)residual, (const T*)w, (const T*)b, (T*)h, (T*)y,
                                        rows, c, eps, stream));
  return cudaSuccess;
}

}  // namespace gpte
