// Hopper warpgroup MMA (wgmma.mma_async, sm_90a) wrappers and shared-memory matrix descriptors.
// Plain CUDA C++ (no torch headers). PTX ISA 8.x, "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate": a warpgroup (4 consecutive warps, 128 threads) computes
// D[64 x N] (+)= A[64 x 16] * B[16 x N]. Here A always comes from registers, in the mma.sync
// m16n8k16 A-fragment layout per warp (warp w of the group holds rows 16w..16w+15); B is read
// by the tensor cores from shared memory through a 64-bit descriptor. The fp32 accumulator
// fragment of warp w: d[4i + 0..1] = rows 16w + lane/4, columns 8i + 2 (lane % 4) + {0, 1};
// d[4i + 2..3] = the same columns of row 16w + lane/4 + 8 (the mma.sync C layout, repeated
// over the N/8 column groups).
//
// Ordering rules the callers follow (PTX ISA, wgmma.fence / wgmma.wait_group):
// - wgmma_fence() before the first wgmma that reads accumulator or A registers written by
//   ordinary instructions, and reg_fence() on those registers *before* wgmma_fence(), so the
//   compiler cannot sink the writes (e.g. the O *= correction of online softmax) past it;
// - the accumulator and A registers are neither read nor written between the wgmma and the
//   wgmma_wait<N>() that retires it; reg_fence() after the wait keeps reads from being hoisted;
// - shared memory written through the generic proxy (cp.async, st.shared) is made visible to
//   the async proxy with fence_proxy_async() by each writing thread, then a barrier.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace gpte {

// Matrix descriptor (PTX ISA "Matrix Descriptor Format"): bits 0-13 start address >> 4,
// 16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4, 62-63
// swizzle mode (1 = 128-byte swizzle). With the 128-byte swizzle a 1024-byte atom holds
// eight 128-byte rows and 16-byte chunk c of row r sits at chunk c ^ (r % 8), computed from
// the address bits, so atoms must be 1024-byte aligned. K-major operand: SBO is the stride
// between 8-row groups along N; moving along K inside the 128-byte row is a +32-byte start
// address per k16 step. MN-major operand: SBO is the stride between 8-row groups along K,
// LBO the stride between 64-element atoms along N (unused when N = 64).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed wgmma groups are still pending (groups retire in order).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Compiler-only barrier on registers: pins their values at this point of the program.
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N, int M>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i) reg_fence(r[i]);
}

#define GPTE_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GPTE_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define GPTE_WGMMA_OUT32(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define GPTE_WGMMA_OUT64(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define GPTE_WGMMA_IN(a, desc, scale_d) "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)
// scale_d = 0: D = A B (the accumulator's old value is ignored); 1: D += A B.
// The operands after the N/2 accumulators: A's four registers, the descriptor, scale_d.
#define GPTE_WGMMA_A32 "{%32, %33, %34, %35}, %36", "%37"
#define GPTE_WGMMA_A64 "{%64, %65, %66, %67}, %68", "%69"
#define GPTE_WGMMA_ASM(SHAPE, TY, DREGS, AOPS, TRANS_B) GPTE_WGMMA_ASM_(SHAPE, TY, DREGS, AOPS, TRANS_B)
#define GPTE_WGMMA_ASM_(SHAPE, TY, DREGS, AREGS, PRED, TRANS_B)                                       \
  "{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                                                \
  "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " DREGS ", " AREGS ", p, 1, 1, " #TRANS_B \
  ";\n}\n"

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], B K-major (B^T rows contiguous: S = Q K^T with K rows).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_kmajor(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                                       int scale_d) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  if constexpr (std::is_same<T, __half>::value)
    asm volatile(GPTE_WGMMA_ASM("m64n64k16", "f16", GPTE_WGMMA_D32, GPTE_WGMMA_A32, 0)
                 : GPTE_WGMMA_OUT32(d) : GPTE_WGMMA_IN(a, desc, scale_d));
  else
    asm volatile(GPTE_WGMMA_ASM("m64n64k16", "bf16", GPTE_WGMMA_D32, GPTE_WGMMA_A32, 0)
                 : GPTE_WGMMA_OUT32(d) : GPTE_WGMMA_IN(a, desc, scale_d));
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], B K-major.
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_kmajor(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                                        int scale_d) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  if constexpr (std::is_same<T, __half>::value)
    asm volatile(GPTE_WGMMA_ASM("m64n128k16", "f16", GPTE_WGMMA_D64, GPTE_WGMMA_A64, 0)
                 : GPTE_WGMMA_OUT64(d) : GPTE_WGMMA_IN(a, desc, scale_d));
  else
    asm volatile(GPTE_WGMMA_ASM("m64n128k16", "bf16", GPTE_WGMMA_D64, GPTE_WGMMA_A64, 0)
                 : GPTE_WGMMA_OUT64(d) : GPTE_WGMMA_IN(a, desc, scale_d));
}

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], B MN-major (B rows contiguous: O += P V with V rows).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_mnmajor(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                                        int scale_d) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  if constexpr (std::is_same<T, __half>::value)
    asm volatile(GPTE_WGMMA_ASM("m64n64k16", "f16", GPTE_WGMMA_D32, GPTE_WGMMA_A32, 1)
                 : GPTE_WGMMA_OUT32(d) : GPTE_WGMMA_IN(a, desc, scale_d));
  else
    asm volatile(GPTE_WGMMA_ASM("m64n64k16", "bf16", GPTE_WGMMA_D32, GPTE_WGMMA_A32, 1)
                 : GPTE_WGMMA_OUT32(d) : GPTE_WGMMA_IN(a, desc, scale_d));
}

}  // namespace gpte
