// The most a kernel that only reads can stream at one matrix's size (exploration, not shipped:
// tests/bench/explore_read_ceiling.py builds it inline). The GEMV bars are ratios to a 1 GiB
// copy; a decode GEMV reads 1-35 MB per call, where a kernel's ramp and drain are a large part
// of its time. This kernel does nothing but load every 16-byte vector of its buffer once (XOR
// into a register that is written out only if it equals a value random data never gives), so
// its time at a size is the ceiling for any kernel that reads that many bytes, in three modes:
//   mode 0: a plain launch: the kernel starts after the previous one has finished;
//   mode 1: a PDL launch that waits (griddepcontrol.wait) before loading: launch latency hidden,
//           loads still after the previous kernel (a GEMV that prefetched nothing);
//   mode 2: a PDL launch that loads at once: the next kernel's blocks start (and load) as soon as
//           every block of this one has started and SM slots free up, so its loads overlap this
//           one's whole run, not only its drain (a GEMV whose weight prefetch before its wait
//           covered the whole matrix: an upper bound).
//   mode 3: a plain launch of a copy kernel (the buffer's first half read, written to its second
//           half): the same-size reference for a kernel that writes as much as it reads, such as
//           the dequantize (a torch copy_ captured in a graph runs as a memcpy node, which measured
//           ~2.7 TB/s on the H200 where a copy kernel gives ~4.2: not a kernel's reference).
//   mode 4: hold: each block copies its contiguous share of the buffer into shared memory
//           (cp.async) BEFORE griddepcontrol.wait, then waits, then reads it back from shared
//           memory: a GEMV that prefetches its whole weight slice while the previous kernel runs
//           and must keep it until its input is ready. Unlike mode 2 the bytes need a home, so the
//           next kernel's blocks fit beside this one's only while both shares fit in one SM's
//           shared memory (the grid, 1 or 2 blocks per SM, sets the share); a share above the
//           227 KiB a block may have is refused (-1).
//   mode 5: mode 4, but a buffer whose share is above 227 KiB runs as mode 1 (whole steps: the
//           LM head is 77-161 MB, 0.6-1.2 MB a block).
// Built with nvcc -shared and called through ctypes (no torch headers: the launches go on the
// stream the caller passes, so a CUDA graph captures them).
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kThreads = 256;
constexpr unsigned kNever = 0x9e3779b9u;

template <int Mode>
__global__ void __launch_bounds__(kThreads) read_kernel(const uint4* __restrict__ p,  // [n16]
                                                       long long n16, unsigned* out) {  // [1]
  if (Mode >= 1) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (Mode == 1) asm volatile("griddepcontrol.wait;" ::: "memory");
  const long long stride = (long long)gridDim.x * kThreads;
  long long i = (long long)blockIdx.x * kThreads + threadIdx.x;
  unsigned acc = 0;
  for (; i + 3 * stride < n16; i += 4 * stride) {  // four 16-byte loads in flight per thread
    const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride),
                d = __ldg(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = __ldg(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == kNever) out[0] = acc;  // keeps the loads; never taken on random bytes in practice
}

__global__ void __launch_bounds__(kThreads) hold_kernel(const uint4* __restrict__ p,  // [n16]
                                                       long long n16, unsigned* out) {  // [1]
  extern __shared__ uint4 held[];  // [ceil(n16 / gridDim.x)]
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const long long per = (n16 + gridDim.x - 1) / gridDim.x;
  const long long b0 = (long long)blockIdx.x * per;
  const long long cnt = n16 - b0 < per ? n16 - b0 : per;
  for (long long i = threadIdx.x; i < cnt; i += kThreads) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(held + i));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(p + b0 + i) : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("cp.async.wait_all;" ::: "memory");  // each thread reads back only what it copied
  unsigned acc = 0;
  for (long long i = threadIdx.x; i < cnt; i += kThreads) {
    const uint4 a = held[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == kNever) out[0] = acc;
}

__global__ void __launch_bounds__(kThreads) copy_kernel(uint4* __restrict__ p, long long half16) {  // [2 * half16]
  const long long stride = (long long)gridDim.x * kThreads;
  long long i = (long long)blockIdx.x * kThreads + threadIdx.x;
  for (; i + 3 * stride < half16; i += 4 * stride) {
    const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride),
                d = __ldg(p + i + 3 * stride);
    p[half16 + i] = a;
    p[half16 + i + stride] = b;
    p[half16 + i + 2 * stride] = c;
    p[half16 + i + 3 * stride] = d;
  }
  for (; i < half16; i += stride) p[half16 + i] = __ldg(p + i);
}

}  // namespace

// One launch per buffer, in order, on `stream` (the caller may be capturing it into a CUDA graph).
// ptrs / n16: n device addresses of 16-byte-aligned buffers and their sizes in 16-byte vectors;
// out: a device address of one uint32. Returns 0, or the cudaError_t of the failed launch
// (-1: bad arguments).
extern "C" int read_chain(const uint64_t* ptrs, const int64_t* n16, int n, int mode, int blocks,
                          uint64_t stream, uint64_t out) {
  if (mode < 0 || mode > 5 || blocks < 1 || n < 0 || out == 0) return -1;
  for (int k = 0; k < n; ++k) {
    if (ptrs[k] == 0 || ptrs[k] % 16 != 0 || n16[k] < 1) return -1;
    int md = mode;
    if (md == 5) md = (n16[k] + blocks - 1) / blocks * 16 > 227 * 1024 ? 1 : 4;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(kThreads);
    cfg.stream = reinterpret_cast<cudaStream_t>(stream);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = md == 1 || md == 2 || md == 4 ? 1 : 0;
    if (md == 4) {
      const long long share = (n16[k] + blocks - 1) / blocks * 16;
      if (share > 227 * 1024) return -1;
      static bool attr_set = false;
      if (!attr_set && cudaFuncSetAttribute(hold_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024) !=
                       cudaSuccess)
        return -1;
      attr_set = true;
      cfg.dynamicSmemBytes = static_cast<size_t>(share);
    }
    const uint4* p = reinterpret_cast<const uint4*>(ptrs[k]);
    unsigned* o = reinterpret_cast<unsigned*>(out);
    const long long m = n16[k];
    if (md == 3 && m < 2) return -1;
    cudaError_t e = md == 4   ? cudaLaunchKernelEx(&cfg, hold_kernel, p, m, o)
                    : md == 3 ? cudaLaunchKernelEx(&cfg, copy_kernel, const_cast<uint4*>(p), m / 2)
                    : md == 0 ? cudaLaunchKernelEx(&cfg, read_kernel<0>, p, m, o)
                    : md == 1 ? cudaLaunchKernelEx(&cfg, read_kernel<1>, p, m, o)
                                : cudaLaunchKernelEx(&cfg, read_kernel<2>, p, m, o);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  return 0;
}
