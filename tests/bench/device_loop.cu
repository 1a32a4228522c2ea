// Exploration (not part of the engine, not built by it): a decode loop that the host launches
// once per request instead of once per token, two ways:
//  A. the step's graph relaunching itself from the device (device graph launch, tail mode), which
//     needs relocatable device code and cudadevrt;
//  B. the step's graph as the body of a conditional WHILE node (CUDA 12.4+), whose condition the
//     step's last kernel sets with cudaGraphSetConditional (no relocatable code needed: it would
//     fit the engine's extension as it is built). tests/bench/explore_device_loop.py builds this file
// into its own shared library with nvcc and calls it through ctypes:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -rdc=true -Xcompiler -fPIC -shared
//        -cudart shared device_loop.cu -o libdevloop.so -lcudadevrt
// (device-side cudaGraphLaunch is part of the device runtime: relocatable device code and
// cudadevrt; the engine's extension is built without them, so the experiment stays apart.)
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

// B's last node: the same stop rule as relaunch_kernel, written into the WHILE node's condition.
__global__ void set_condition_kernel(cudaGraphConditionalHandle h, long long* ctl, const int* status) {
  const long long done = ++ctl[0];
  cudaGraphSetConditional(h, (done < ctl[1] && (status == nullptr || *status == 0)) ? 1u : 0u);
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

// B, step 1: an empty parent graph and its condition handle (1 at every launch of the parent).
int devloop_cond_create(void** parent_out, unsigned long long* handle_out) {
  cudaGraph_t g = nullptr;
  cudaError_t e = cudaGraphCreate(&g, 0);
  if (e != cudaSuccess) return (int)e;
  cudaGraphConditionalHandle h;
  e = cudaGraphConditionalHandleCreate(&h, g, 1, cudaGraphCondAssignDefault);
  *parent_out = g;
  *handle_out = (unsigned long long)h;
  return (int)e;
}

// B, step 2 (inside the step's capture): the condition kernel.
int devloop_launch_set_condition(void* stream, unsigned long long handle, long long* ctl, const int* status) {
  set_condition_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>((cudaGraphConditionalHandle)handle, ctl,
                                                                        status);
  return (int)cudaGetLastError();
}

// B, step 3: the WHILE node in the parent, the captured step as a child graph of its body, the
// parent instantiated for host launch and uploaded. Failure details as instantiate_upload's.
int devloop_cond_finish(void* parent, unsigned long long handle, void* step_graph, void* stream, void** exec_out,
                        int* result, int* node_type) {
  cudaGraph_t g = static_cast<cudaGraph_t>(parent);
  cudaGraphNodeParams np = {};
  np.type = cudaGraphNodeTypeConditional;
  np.conditional.handle = (cudaGraphConditionalHandle)handle;
  np.conditional.type = cudaGraphCondTypeWhile;
  np.conditional.size = 1;
  cudaGraphNode_t node, child;
  *result = 0;
  *node_type = -1;
  cudaError_t e = cudaGraphAddNode(&node, g, nullptr, nullptr, 0, &np);
  if (e != cudaSuccess) return (int)e;
  e = cudaGraphAddChildGraphNode(&child, np.conditional.phGraph_out[0], nullptr, 0, static_cast<cudaGraph_t>(step_graph));
  if (e != cudaSuccess) return (int)e;
  return instantiate_upload(g, 0, stream, exec_out, result, node_type);
}

int devloop_launch_relaunch(void* stream, long long* ctl, const int* status) {
  relaunch_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(ctl, status);
  return (int)cudaGetLastError();
}

// A's graph instantiated for device launch and uploaded (failure details as instantiate_upload's).
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
