// Shared device helpers for the gpt_engine kernels. Plain CUDA C++: no torch headers here,
// so every .cu file compiles with nvcc alone (CI has no CUDA build of torch).
#pragma once
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace gpte {

// dtype codes shared with bindings.cpp
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// N elements of T moved as one aligned access (N * sizeof(T) == 16 gives 128-bit loads).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p, int64_t i) {
  return reinterpret_cast<const Vec<T, N>*>(p)[i];
}
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, int64_t i, const Vec<T, N>& v) {
  reinterpret_cast<Vec<T, N>*>(p)[i] = v;
}

// Elements per 16-byte vector.
template <typename T> constexpr int kVec16 = 16 / sizeof(T);

__device__ __forceinline__ float warp_sum(float v, int width = 32) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < width) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float fast_exp2(float x) {  // MUFU.EX2; exp2(-inf) = 0
  float y;
  asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Programmatic dependent launch (PDL, sm_90): a kernel launched with launch_pdl may start while
// the kernel before it on the stream is still running. It must call pdl_wait() before touching
// anything an earlier kernel writes or reads (before the wait it may only read constant data,
// e.g. weights), and calls pdl_launch_dependents() to let the next kernel start early. Both are
// no-ops for a kernel launched the ordinary way. Under stream capture the launches become
// programmatic edges of the CUDA graph, so a replayed decode step overlaps each kernel's launch
// and weight fetch with the tail of the one before.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// GPTE_NO_PDL=1: ordinary launches, for profiling only (with PDL a kernel's measured time includes
// the wait for the one before it, so per-kernel times overlap and add up to more than the step).
inline bool pdl_enabled() {
  static const bool pdl = std::getenv("GPTE_NO_PDL") == nullptr;
  return pdl;
}

// The one launcher behind launch_pdl and launch_pdl_cluster: cudaLaunchKernelEx with the
// cluster dimension attribute when `cluster` is given, then the PDL attribute unless disabled.
template <typename... KArgs, typename... Args>
inline cudaError_t launch_pdl_ex(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                 const dim3* cluster, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster != nullptr) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster->x;
    attr[n].val.clusterDim.y = cluster->y;
    attr[n].val.clusterDim.z = cluster->z;
    ++n;
  }
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

template <typename... KArgs, typename... Args>
inline cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                              Args&&... args) {
  return launch_pdl_ex(kernel, grid, block, smem, stream, nullptr, std::forward<Args>(args)...);
}

// launch_pdl with the grid cut into clusters of `cluster` blocks (sm_90 thread block clusters:
// co-scheduled on one GPC, each block can read the others' shared memory; each grid dimension a
// multiple of the cluster's, at most 8 blocks per cluster).
template <typename... KArgs, typename... Args>
inline cudaError_t launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t stream, dim3 cluster, Args&&... args) {
  return launch_pdl_ex(kernel, grid, block, smem, stream, &cluster, std::forward<Args>(args)...);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace gpte

// Runs `body` with T bound to the element type of dtype code `dt`.
#define GPTE_DISPATCH(dt, T, ...)                  \
  switch (dt) {                                    \
    case ::gpte::kF32: {                           \
      using T = float;                             \
      __VA_ARGS__;                                 \
      break;                                       \
    }                                              \
    case ::gpte::kF16: {                           \
      using T = __half;                            \
      __VA_ARGS__;                                 \
      break;                                       \
    }                                              \
    case ::gpte::kBF16: {                          \
      using T = __nv_bfloat16;                     \
      __VA_ARGS__;                                 \
      break;                                       \
    }                                              \
    default:                                       \
      return cudaErrorInvalidValue;                \
  }
