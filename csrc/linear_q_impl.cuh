// Decode GEMV over GGUF packed weights: out[m, n] = epilogue(sum_k xn[m, k] * W[n, k]) for M <= 16
// activation rows, W the raw file bytes [N, row_bytes] (rows of whole blocks, no repacking), for
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and MXFP4 (docs/kernels/quant.md).
//
// Floor: the packed bytes over copy bandwidth (4,096 x 4,096 MXFP4: 8.9 MB, 2.1 us at 4.2 TB/s).
//
// v1 (this header, instantiated per type group by linear_q_{a,b,k}.cu so the build compiles
// the groups in parallel; linear_q.cu dispatches). Everything but the weight stream is csrc/linear_common.cuh, as for the dense
// GEMV: one warp per row pair (pair_rows: SwiGLU gate/up, neox QKV pairs), the activation rows
// staged once per block in shared memory as fp32 with the fused LayerNorm/RMSNorm (XStage; here
// the whole row must fit one tile, else linear_q_supported() says no and the caller dequantizes
// into a scratch matrix instead), and finish_pair() for every epilogue.
//
// Weight stream. Block rows are not 16-byte aligned for most types (34, 18, 22, 17, 210-byte
// blocks), so a warp moves a row's bytes in batches of whole blocks: the batch's byte span,
// widened to 16-byte boundaries, is read with 16-byte coalesced loads (P per lane per row, into
// registers), stored to a per-warp shared-memory buffer, and decoded from there. The loads of
// batch b+1 (or of the next row pair's first batch) are issued before batch b is decoded, and
// the first batch before griddepcontrol.wait, so two batches per warp are in flight.
//
// Decode: lane l takes quad l & 7 (4 values) of group l >> 3 of each 4-group step (a group = 32
// values), so the x reads (one float4 per quad and activation row) of a warp are 512 contiguous
// bytes: no bank conflicts. Per quad and row: the codes as exact floats (no int-to-float unit:
// 2^23 + code, see quant_blocks.cuh), s * dot(codes, x) (+ mn * sum(x) for types with a min):
// one rounding per quad more than a dense product, fp32 accumulation throughout.
#pragma once
#include <cmath>

#include "linear_common.cuh"
#include "quant_blocks.cuh"

namespace gpte {
namespace {
using namespace linear_detail;
using namespace quant;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// dynamic shared memory a block may opt in to on sm_90 (cudaDevAttrMaxSharedMemoryPerBlockOptin,
// 227 KiB), less the static arrays
constexpr int kSmemMax = 227 * 1024 - 256;

// 16-byte pieces per lane per row in one batch: 2 KiB per row (4 KiB per warp in flight, twice
// with the prefetch) at small M, half that where the accumulators take the registers
template <int MT> __host__ __device__ constexpr int pieces() { return MT >= 8 ? 2 : 4; }
template <int MT> __host__ __device__ constexpr int row_buf_bytes() { return 32 * 16 * pieces<MT>() + 16; }  // + slack for the reader
template <int MT> __host__ __device__ constexpr int wbuf_bytes() { return kWarps * 2 * row_buf_bytes<MT>(); }

// blocks per batch: whole blocks whose span, widened to 16-byte boundaries, fits the buffer;
// a multiple of 4 groups (one warp step)
template <int T, int MT> __host__ __device__ constexpr int batch_blocks() {
  constexpr int n = (32 * 16 * pieces<MT>() - 16) / Traits<T>::TS;
  return Traits<T>::QK == 32 ? n / 4 * 4 : n;
}

__device__ __forceinline__ uint4 ldg_stream(const void* ptr) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr));
  return r;
}

// One row's batch: byte span [start, end) of the weight, read as the 16-byte pieces of
// [start & ~15, end rounded up); the last piece of the tensor may be partial.
struct Span {
  int64_t a0;  // first piece's byte offset (16-aligned)
  int np;      // pieces
  int off;     // start - a0: the batch's first block in the buffer
  int nblk;    // blocks in the batch
};

template <int T, int MT>
__device__ __forceinline__ Span span_of(int64_t row_bytes, int nb, int row, int b) {
  constexpr int BB = batch_blocks<T, MT>(), TS = Traits<T>::TS;
  const int q0 = b * BB, q1 = min(nb, q0 + BB);
  const int64_t start = (int64_t)row * row_bytes + (int64_t)q0 * TS, end = (int64_t)row * row_bytes + (int64_t)q1 * TS;
  Span s;
  s.a0 = start & ~(int64_t)15;
  s.np = (int)((end - s.a0 + 15) >> 4);
  s.off = (int)(start - s.a0);
  s.nblk = q1 - q0;
  return s;
}

template <int P>
__device__ __forceinline__ void load_span(const uint8_t* w, int64_t total, const Span& s, int lane, uint4* r) {
#pragma unroll
  for (int u = 0; u < P; ++u) {
    const int pc = lane + 32 * u;
    if (pc < s.np) {
      const int64_t a = s.a0 + 16 * (int64_t)pc;
      if (a + 16 <= total) {
        r[u] = ldg_stream(w + a);
      } else {  // the tensor's last, partial piece
        uint32_t v[4] = {0, 0, 0, 0};
        for (int k = 0; k < 16 && a + k < total; ++k) v[k >> 2] |= (uint32_t)w[a + k] << (8 * (k & 3));
        r[u] = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
  }
}

template <int P>
__device__ __forceinline__ void store_span(uint8_t* buf, const Span& s, int lane, const uint4* r) {
#pragma unroll
  for (int u = 0; u < P; ++u) {
    const int pc = lane + 32 * u;
    if (pc < s.np) reinterpret_cast<uint4*>(buf)[pc] = r[u];
  }
}

template <int T, typename A, int MT>
__global__ void __launch_bounds__(kThreads, 3) gemv_q_kernel(const LinearArgs p) {
  using TR = Traits<T>;
  constexpr int P = pieces<MT>(), GPB = TR::QK / 32, BB = batch_blocks<T, MT>();
  extern __shared__ __align__(16) float xs[];  // [MT][K] staged activations, then the weight buffers
  __shared__ float s_mean[MT], s_rstd[MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint8_t* __restrict__ w = static_cast<const uint8_t*>(p.w);
  const int nb = p.K / TR::QK, nbatch = (nb + BB - 1) / BB;
  const int64_t row_bytes = (int64_t)nb * TR::TS, total = (int64_t)p.N * row_bytes;
  uint8_t* bufA = reinterpret_cast<uint8_t*>(xs + MT * p.kt) + warp * 2 * row_buf_bytes<MT>();
  uint8_t* bufB = bufA + row_buf_bytes<MT>();
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int stride = gridDim.x * kWarps;

  // rows of a pair; a missing second row (odd N) re-reads the first, its sums never stored
  auto rows_of = [&](int pair, int& r0, int& r1, bool& has1) {
    pair_rows(p, pair, r0, r1);
    has1 = r1 < p.N;
    if (!has1) r1 = r0;
  };

  // Before the wait on the previous kernel: this warp's first batch (weights are constant).
  uint4 ra[P], rb[P];
  int pair = blockIdx.x * kWarps + warp;
  if (pair < npairs) {
    int r0, r1;
    bool h;
    rows_of(pair, r0, r1, h);
    load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, r0, 0), lane, ra);
    load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, r1, 0), lane, rb);
  }
  pdl_wait();
  pdl_launch_dependents();

  using XS = XStage<A, MT, kThreads>;
  XS::stage(p, xs, 0, 1, s_mean, s_rstd);  // the whole row: one tile (linear_q_supported)

  const int g4 = lane >> 3, qd = lane & 7;
  for (; pair < npairs; pair += stride) {
    int r0, r1;
    bool has1;
    rows_of(pair, r0, r1, has1);
    float acc0[MT], acc1[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc0[m] = acc1[m] = 0.f;

    for (int b = 0; b < nbatch; ++b) {
      const Span sa = span_of<T, MT>(row_bytes, nb, r0, b), sb = span_of<T, MT>(row_bytes, nb, r1, b);
      store_span<P>(bufA, sa, lane, ra);
      store_span<P>(bufB, sb, lane, rb);
      __syncwarp();
      // the next batch's loads go out before this one is decoded
      if (b + 1 < nbatch) {
        load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, r0, b + 1), lane, ra);
        load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, r1, b + 1), lane, rb);
      } else if (pair + stride < npairs) {
        int n0, n1;
        bool h;
        rows_of(pair + stride, n0, n1, h);
        load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, n0, 0), lane, ra);
        load_span<P>(w, total, span_of<T, MT>(row_bytes, nb, n1, 0), lane, rb);
      }
      const SharedReader rda{bufA}, rdb{bufB};
      const int ng = sa.nblk * GPB;
      const int kbase = b * BB * TR::QK;
#pragma unroll 2
      for (int gs = g4; gs < ng; gs += 4) {
        const int q = gs / GPB, j = gs - q * GPB;
        float wa[4], wb[4], sa_, ma, sb_, mb;
        decode4<T>(rda, sa.off + q * TR::TS, j, qd, wa, sa_, ma);
        decode4<T>(rdb, sb.off + q * TR::TS, j, qd, wb, sb_, mb);
        const int k = kbase + q * TR::QK + 32 * j + 4 * qd;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4 xv = *reinterpret_cast<const float4*>(xs + m * p.kt + k);
          const float da = wa[0] * xv.x + wa[1] * xv.y + wa[2] * xv.z + wa[3] * xv.w;
          const float db = wb[0] * xv.x + wb[1] * xv.y + wb[2] * xv.z + wb[3] * xv.w;
          acc0[m] = fmaf(sa_, da, acc0[m]);
          acc1[m] = fmaf(sb_, db, acc1[m]);
          if constexpr (TR::kHasMin) {
            const float sx = (xv.x + xv.y) + (xv.z + xv.w);
            acc0[m] = fmaf(ma, sx, acc0[m]);
            acc1[m] = fmaf(mb, sx, acc1[m]);
          }
        }
      }
      __syncwarp();  // the buffers are rewritten by the next batch
    }

#pragma unroll
    for (int m = 0; m < MT; ++m) {
      acc0[m] = warp_sum(acc0[m]);
      acc1[m] = warp_sum(acc1[m]);
      if (m < p.M && lane == m) finish_pair<A>(p, m, pair, r0, r1, has1, acc0[m], acc1[m]);
    }
  }
}

template <int MT> constexpr size_t smem_bytes(int64_t K) { return (size_t)MT * K * sizeof(float) + wbuf_bytes<MT>(); }

template <int T, typename A, int MT>
cudaError_t launch_mt(const LinearArgs& a, int num_sms, cudaStream_t st) {
  LinearArgs p = a;
  p.kt = p.K;  // one tile: the whole row
  p.vec_x = p.K % 8 == 0 && aligned16(p.x);
  const size_t smem = smem_bytes<MT>(p.K);
  if (smem > (size_t)kSmemMax) return cudaErrorInvalidValue;
  auto kern = gemv_q_kernel<T, A, MT>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  const int npairs = p.act == kActSwiglu ? p.n_out : (p.N + 1) / 2;
  const int64_t nblocks = ceil_div(npairs, kWarps);
  // up to the 3 blocks per SM the launch bounds allow, fewer where shared memory runs out
  const int per_sm = std::max(1, std::min(3, (int)((228 * 1024) / (smem + 1024))));
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(nblocks, (int64_t)num_sms * per_sm));
  return launch_pdl(kern, dim3((unsigned)grid), dim3(kThreads), smem, st, p);
}

template <int T, typename A>
cudaError_t launch_ta(const LinearArgs& p, int num_sms, cudaStream_t st) {
  if (p.M <= 1) return launch_mt<T, A, 1>(p, num_sms, st);
  if (p.M <= 2) return launch_mt<T, A, 2>(p, num_sms, st);
  if (p.M <= 4) return launch_mt<T, A, 4>(p, num_sms, st);
  if (p.M <= 8) return launch_mt<T, A, 8>(p, num_sms, st);
  return launch_mt<T, A, 16>(p, num_sms, st);
}

}  // namespace
}  // namespace gpte
