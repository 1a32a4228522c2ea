// Exploration (not part of the engine, not built by it): a decode loop that the host launches
// once per request instead of once per token, by the step's graph relaunching itself from the
// device (device graph launch, tail mode), which needs relocatable device code and cudadevrt.
// (The other way, the step as the body of a conditional WHILE node, needs neither and is the
// engine's: csrc/decode_loop.cu.) tests/bench/explore_device_loop.py builds this file into its
// own shared library with nvcc and calls it through ctypes:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -rdc=true -Xcompiler -fPIC -shared
//        -cudart shared device_loop.cu -o libdevloop.so -lcudadevrt
#include <cuda_runtime.h>

#include <cstdint>

namespace {

// The last node of the captured step. ctl (int64 [3], device): [0] steps run, [1] steps wanted,
// [2] the first error of a device-side launch. Stops when ctl[0] reaches ctl[1] or when the
// step's status word (int32, may be null) is non-zero (a bad token id, NaN logits).
__global__ void relaunch_kernel(long long* ctl, const int* status) {
  const long long done = ++ctl[0];
  if (done >= ctl[1] || (status != nullptr && *status != 0)) return;
  const cudaGraphExec_t self = cudaGetCurrentGraphExec();  // 0 outside a device graph (a warm-up)
  if (self == 0) return;
  const cudaError_t e = cudaGraphLaunch(self, cudaStreamGraphTailLaunch);
  if (e != cudaSuccess && ctl[2] == 0) ctl[2] = (long long)e;
}

// Instantiates g with `flags` and uploads it. On failure: the instantiate result
// (cudaGraphInstantiateResult) in *result and the failing node's type (cudaGraphNodeType) in
// *node_type, or -1 when none is named.
int instantiate_upload(cudaGraph_t g, unsigned long long flags, void* stream, void** exec_out, int* result,
                       int* node_type) {
  cudaGraphInstantiateParams p = {};
  p.flags = flags;
  cudaGraphExec_t ex = nullptr;
  cudaError_t e = cudaGraphInstantiateWithParams(&ex, g, &p);
  *result = (int)p.result_out;
  *node_type = -1;
  if (p.errNode_out != nullptr) {
    cudaGraphNodeType t;
    if (cudaGraphNodeGetType(p.errNode_out, &t) == cudaSuccess) *node_type = (int)t;
  }
  if (e != cudaSuccess) return (int)e;
  e = cudaGraphUpload(ex, static_cast<cudaStream_t>(stream));
  *exec_out = ex;
  return (int)e;
}

}  // namespace

extern "C" {

int devloop_launch_relaunch(void* stream, long long* ctl, const int* status) {
  relaunch_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(ctl, status);
  return (int)cudaGetLastError();
}

// The step's graph instantiated for device launch and uploaded (failure details as instantiate_upload's).
int devloop_instantiate(void* graph, void* stream, void** exec_out, int* result, int* node_type) {
  return instantiate_upload(static_cast<cudaGraph_t>(graph), cudaGraphInstantiateFlagDeviceLaunch, stream, exec_out,
                            result, node_type);
}

int devloop_launch(void* exec, void* stream) {
  return (int)cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream));
}

int devloop_destroy(void* exec) { return (int)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec)); }

const char* devloop_error(int e) { return cudaGetErrorString(static_cast<cudaError_t>(e)); }

}  // extern "C"
