// The decode loop on the device: one host launch per request instead of one per token.
//
// Why: a host graph launch costs the driver ~0.2-0.25 us per kernel node (docs/kernels/decode.md,
// "Decode loop"), 56-65 us a token at GPT-2 1.5B's ~244 kernels, over the 30 us a token the host
// may spend. Here the host launches one parent graph per request:
//
//   init(0) -> WHILE_0 { short step ; tail(0) } -> init(1) -> WHILE_1 { full step ; tail(1) }
//
// The two steps are the decoder's captured graphs (gpt_engine/cuda_graph.py: the step without the
// attention's reduce launch, valid while every sequence is short, then the full one), cloned
// into the WHILE bodies as child graphs (CUDA 12.4+ conditional nodes; no relocatable device code
// needed). init(w) opens loop w if it has steps left and nothing stopped the request; tail(w),
// one thread after each step, copies the step's ids and status word into the next row of a ring
// in mapped pinned memory, publishes the row count, and sets loop w's condition. The host only
// polls the count and reads rows.
//
// Stop rules, checked by tail after each step: the phase's step budget is spent; the status word
// is non-zero (a bad id, a position past the cache, NaN logits: the host raises on that row, one
// step after the cause, as the host loop does); every sequence has produced the EOS id (when the
// request stops at EOS); the host set the cancel word (its consumer stopped reading).
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace gpte {
namespace {

// ctl: int64 [kLoopCtlHead + B] in device memory, written by the host (a copy on the stream)
// before each launch: [0] short steps left, [1] full steps left, [2] next ring row, [3] stopped,
// [4] EOS id or -1, then per sequence: has produced EOS.
// host: int64 [3] mapped pinned: [0] rows published, [1] finished, [2] cancel (host-written).
// ring: int64 [rows, B + 1] mapped pinned: per step the ids then the status word.
// readback: int64 [B + 1] device: the step's ids then its status word (low half; high half 0).
// init(w) of the request's first loop (first = 1) also reads token 0 (the prefill's sample, in
// readback): a sequence whose token 0 is EOS is done, and if every sequence is (or the status word
// is set) no step runs, as the host stops after token 0 too.
__global__ void loop_init_kernel(cudaGraphConditionalHandle h, int w, int64_t* ctl, const int64_t* readback, int batch,
                                 int first) {
  if (first) {
    const int64_t eos = ctl[4];
    bool all_done = eos >= 0;
    for (int b = 0; b < batch; ++b) {
      const bool d = eos >= 0 && readback[b] == eos;
      ctl[kLoopCtlHead + b] = d ? 1 : 0;
      all_done = all_done && d;
    }
    if (all_done || readback[batch] != 0) ctl[3] = 1;
  }
  cudaGraphSetConditional(h, (ctl[3] == 0 && ctl[w] > 0) ? 1u : 0u);
}

__global__ void loop_tail_kernel(cudaGraphConditionalHandle h, int w, int64_t* ctl, const int64_t* readback,
                                 int batch, int64_t* ring, int64_t rows, volatile int64_t* host) {
  const int64_t r = ctl[2];
  int64_t* row = ring + r * (batch + 1);
  const int64_t status = readback[batch];
  const int64_t eos = ctl[4];
  bool all_done = eos >= 0;
  for (int b = 0; b < batch; ++b) {
    const int64_t id = readback[b];
    row[b] = id;
    if (eos >= 0) {
      if (id == eos) ctl[kLoopCtlHead + b] = 1;
      all_done = all_done && ctl[kLoopCtlHead + b] != 0;
    }
  }
  row[batch] = status;
  const bool stop = status != 0 || all_done || host[2] != 0;
  const int64_t left = --ctl[w];
  ctl[2] = r + 1;
  if (stop || r + 1 >= rows) ctl[3] = 1;  // a full ring ends the request too (the host never asks for more)
  const bool more = !stop && left > 0 && r + 1 < rows;
  const bool finished = stop || r + 1 >= rows || (ctl[0] <= 0 && ctl[1] <= 0);
  // the row before the count, the count before "finished": the host reads finished, then the
  // count, then rows (x86 keeps loads in order), so it never misses a row of a finished loop
  __threadfence_system();
  host[0] = r + 1;
  if (finished) {
    __threadfence_system();
    host[1] = 1;
  }
  cudaGraphSetConditional(h, more ? 1u : 0u);
}

cudaError_t add_kernel(cudaGraphNode_t* node, cudaGraph_t g, const cudaGraphNode_t* dep, void* func, void** args) {
  cudaKernelNodeParams p = {};
  p.func = func;
  p.gridDim = dim3(1);
  p.blockDim = dim3(1);
  p.kernelParams = args;
  return cudaGraphAddKernelNode(node, g, dep, dep ? 1 : 0, &p);
}

}  // namespace

cudaError_t decode_loop_build(void* const* step_graphs, int64_t* ctl, const int64_t* readback, int batch,
                              int64_t* ring, int64_t rows, int64_t* host, cudaStream_t stream, void** exec_out,
                              int* instantiate_result) {
  *exec_out = nullptr;
  *instantiate_result = 0;
  int64_t *ring_dev = nullptr, *host_dev = nullptr;
  cudaError_t e = cudaHostGetDevicePointer(reinterpret_cast<void**>(&ring_dev), ring, 0);
  if (e != cudaSuccess) return e;
  e = cudaHostGetDevicePointer(reinterpret_cast<void**>(&host_dev), host, 0);
  if (e != cudaSuccess) return e;
  cudaGraph_t parent = nullptr;
  e = cudaGraphCreate(&parent, 0);
  if (e != cudaSuccess) return e;
  cudaGraphNode_t last = nullptr;
  cudaGraphConditionalHandle handles[2];
  for (int w = 0; w < 2 && e == cudaSuccess; ++w) {
    if (step_graphs[w] == nullptr) continue;  // no short step (the one-split path is off)
    e = cudaGraphConditionalHandleCreate(&handles[w], parent, 0, cudaGraphCondAssignDefault);
    if (e != cudaSuccess) break;
    cudaGraphNode_t init = nullptr, cond = nullptr, child = nullptr, tail = nullptr;
    int w_arg = w, first = last == nullptr ? 1 : 0;
    void* init_args[] = {&handles[w], &w_arg, &ctl, &readback, &batch, &first};
    e = add_kernel(&init, parent, last ? &last : nullptr, reinterpret_cast<void*>(loop_init_kernel), init_args);
    if (e != cudaSuccess) break;
    cudaGraphNodeParams np = {};
    np.type = cudaGraphNodeTypeConditional;
    np.conditional.handle = handles[w];
    np.conditional.type = cudaGraphCondTypeWhile;
    np.conditional.size = 1;
    e = cudaGraphAddNode(&cond, parent, &init, nullptr, 1, &np);
    if (e != cudaSuccess) break;
    cudaGraph_t body = np.conditional.phGraph_out[0];
    e = cudaGraphAddChildGraphNode(&child, body, nullptr, 0, static_cast<cudaGraph_t>(step_graphs[w]));
    if (e != cudaSuccess) break;
    int64_t* host_arg = host_dev;
    void* tail_args[] = {&handles[w], &w_arg, &ctl, &readback, &batch, &ring_dev, &rows, &host_arg};
    e = add_kernel(&tail, body, &child, reinterpret_cast<void*>(loop_tail_kernel), tail_args);
    last = cond;
  }
  if (e == cudaSuccess) {
    cudaGraphInstantiateParams ip = {};
    cudaGraphExec_t exec = nullptr;
    e = cudaGraphInstantiateWithParams(&exec, parent, &ip);
    *instantiate_result = static_cast<int>(ip.result_out);
    if (e == cudaSuccess) {
      e = cudaGraphUpload(exec, stream);
      if (e == cudaSuccess)
        *exec_out = exec;
      else
        cudaGraphExecDestroy(exec);
    }
  }
  cudaGraphDestroy(parent);  // the exec keeps its own copy (the step graphs were cloned too)
  return e;
}

cudaError_t decode_loop_launch(void* exec, cudaStream_t stream) {
  return cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), stream);
}

cudaError_t decode_loop_destroy(void* exec) { return cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec)); }

cudaError_t mapped_host_alloc(void** ptr, size_t bytes) {
  return cudaHostAlloc(ptr, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
}

cudaError_t mapped_host_free(void* ptr) { return cudaFreeHost(ptr); }

}  // namespace gpte
