// Elementwise GELU (tanh or erf form), fp32 math (csrc/gelu_math.cuh), 16-byte vector accesses
// through the shared streaming kernel (csrc/elementwise.cuh).
#include "common.cuh"
#include "elementwise.cuh"
#include "gelu_math.cuh"
#include "launchers.h"

namespace gpte {
namespace {

template <typename T, bool TANH>
struct GeluOp {
  __device__ __forceinline__ float operator()(float x, float) const { return gelu_t<T, TANH>(x); }
};

}  // namespace

cudaError_t launch_gelu(int dtype, const void* x, void* out, int64_t n, bool tanh_form, cudaStream_t stream) {
  GPTE_DISPATCH(dtype, T,
                return tanh_form ? launch_map<T, 1>((const T*)x, nullptr, (T*)out, n, GeluOp<T, true>{}, stream)
                                 : launch_map<T, 1>((const T*)x, nullptr, (T*)out, n, GeluOp<T, false>{}, stream));
  return cudaSuccess;
}

}  // namespace gpte
