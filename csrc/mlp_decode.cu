// The MLP of a decode step in one kernel, for dense weights and M <= 16 activation rows:
//   out = x + down(act(up(norm(x)) + b_up)) + b_down
// with act tanh-GELU (GPT-2: W_up [F, C]) or SwiGLU (Llama: W_up = [gate; up] stacked, [2F, C]).
// The down weight is read transposed, W_dt [F, C] (row j = column j of the file's [C, F] matrix,
// transposed once at load), so that every block streams contiguous rows of both matrices.
//
// Why one kernel (docs/kernels/decode.md, "fused MLP"): with two GEMV launches the down product
// waits for the whole up product (grid-wide), then stages its input. Here block b owns the hidden
// units [b F / G, (b + 1) F / G): it needs only its own h values, so both of its weight slices
// stream through one cp.async ring without a grid-wide wait between them, and their first stages
// load before griddepcontrol.wait (weights are constant). What remains grid-wide is the sum of
// the G partial outputs, done by a two-level tree of "last block to arrive" reductions (no spin,
// no co-residency assumption): the last block of each group of kGroup blocks sums its group's
// partials, and the last of those sums the group sums, adds the bias and the residual and rounds.
//
// Numbers: the up dot products use the dense GEMV's order (lane c, c + 32, ... chunk order, fp32
// fmaf, then the same butterfly; csrc/linear.cu v3), so h is the unfused path's h bit for bit,
// rounded to the activation dtype as its epilogue stores it. The down sums are in a fixed order
// (per column: units in ascending order within each block part, parts and blocks in ascending
// order), so a result depends neither on the run nor on the batch M; it is not the unfused
// GEMV's order (that one sums along a row of W_down), so the two paths agree to fp32 rounding.
//
// v1 (this file). Ring: whole weight rows per stage (up to 8, ~16 KB), kSlots stages, every
// thread copies and a barrier per stage lets any thread read any row. Up stages: warp w takes
// row w of the stage. Down stages: thread t owns 16-byte column chunk t % CC of part t / CC.
#include <cmath>
#include <cstdlib>

#include "linear_common.cuh"
#include "mlp_decode.h"

namespace gpte {
namespace {
using namespace linear_detail;

constexpr int kMlpThreads = 256;
constexpr int kMlpWarps = kMlpThreads / 32;
constexpr int kGroup = 16;             // blocks per first-level group of the reduction
constexpr int kStageBytes = 16384;     // target bytes of one ring stage (whole rows, 1..kMlpWarps)
constexpr int kSmemMax = 220 * 1024;   // of the 227 KiB a block may opt in to on sm_90
template <int MT> constexpr int kSlots = MT <= 4 ? 6 : 4;

template <typename W> __device__ __forceinline__ void unpack_w(const uint4& r, float* f);
template <> __device__ __forceinline__ void unpack_w<float>(const uint4& r, float* f) {
  f[0] = __uint_as_float(r.x);
  f[1] = __uint_as_float(r.y);
  f[2] = __uint_as_float(r.z);
  f[3] = __uint_as_float(r.w);
}
template <> __device__ __forceinline__ void unpack_w<__half>(const uint4& r, float* f) { unpack8<__half>(r, f); }
template <> __device__ __forceinline__ void unpack_w<__nv_bfloat16>(const uint4& r, float* f) {
  unpack8<__nv_bfloat16>(r, f);
}

// Launch geometry shared by the launcher and the workspace size (host side).
struct MlpGeom {
  int grid, parts, stage_rows, smax;  // blocks; column parts per block; rows per stage; max units per block
  size_t smem;
};
inline MlpGeom mlp_geom(int wbytes, int MT, int slots, int64_t C, int64_t F, bool swiglu, int num_sms) {
  MlpGeom g{};
  const int64_t rb = C * wbytes, cc = rb / 16;
  g.grid = (int)std::max<int64_t>(1, std::min<int64_t>(num_sms, F));
  g.parts = (int)std::max<int64_t>(1, kMlpThreads / std::max<int64_t>(1, cc));
  g.stage_rows = (int)std::max<int64_t>(1, std::min<int64_t>(kMlpWarps, kStageBytes / rb));
  g.smax = (int)ceil_div(F, g.grid);
  g.smem = (size_t)slots * g.stage_rows * rb + (size_t)MT * C * 4 + (size_t)(swiglu ? 3 : 2) * g.smax * MT * 4;
  return g;
}

template <typename W, typename A, int MT>
__global__ void __launch_bounds__(kMlpThreads, 1) mlp_decode_kernel(const MlpArgs p) {
  constexpr int CH = 16 / sizeof(W);  // weight elements per 16-byte chunk
  constexpr int SLOTS = kSlots<MT>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float s_mean[MT], s_rstd[MT];
  __shared__ int s_last;
  const LinearArgs& in = p.in;  // x, M, K = C, the norm: what XStage reads
  const int C = in.K, M = in.M, F = p.F, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int cc = C / CH;  // 16-byte chunks per weight row
  const int64_t rb = (int64_t)C * sizeof(W);
  const int b = blockIdx.x, G = gridDim.x;
  const int u0 = (int)((int64_t)b * F / G), S = (int)((int64_t)(b + 1) * F / G) - u0;  // this block's units
  const bool swiglu = p.act == kActSwiglu;
  const int nup = swiglu ? 2 * S : S;  // up rows: units u0.. (SwiGLU: their gate rows, then their up rows)
  const int rs = p.stage_rows, nsu = (nup + rs - 1) / rs, ns = nsu + (S + rs - 1) / rs;
  unsigned char* ring = smem;                                          // [SLOTS][rs][rb]
  float* xs = reinterpret_cast<float*>(smem + (size_t)SLOTS * rs * rb);  // [MT][C] normed input
  float* yv = xs + MT * C;                                             // [nup][MT] up sums
  float* hv = yv + (swiglu ? 2 : 1) * p.smax * MT;                     // [S][MT] h, as fp32 of A
  const unsigned char* wu = static_cast<const unsigned char*>(p.w_up);
  const unsigned char* wd = static_cast<const unsigned char*>(p.w_dt);

  // stage i: rows [first, first + n) of the up list (i < nsu) or of this block's down rows
  auto rows_of = [&](int i, int& first, int& n) {
    const bool up = i < nsu;
    first = (up ? i : i - nsu) * rs;
    n = min(rs, (up ? nup : S) - first);
  };
  auto issue = [&](int i) {  // one commit group per call, empty past the last stage
    if (i < ns) {
      int first, n;
      rows_of(i, first, n);
      unsigned char* dst = ring + (size_t)(i % SLOTS) * rs * rb;
      for (int q = tid; q < n * cc; q += kMlpThreads) {
        const int j = q / cc, c = q - j * cc, r = first + j;
        const unsigned char* row = i < nsu ? wu + (int64_t)(r < S ? u0 + r : F + u0 + (r - S)) * rb
                                           : wd + (int64_t)(u0 + r) * rb;
        cp_async16(dst + (size_t)q * 16, row + (int64_t)c * 16);
      }
    }
    cp_async_commit();
  };

  // Before the wait on the previous kernel: the first SLOTS - 1 stages (weights only).
#pragma unroll
  for (int i = 0; i < SLOTS - 1; ++i) issue(i);
  pdl_wait();
  pdl_launch_dependents();
  const int dbg = p.dbg;
  if (!(dbg & 4)) XStage<A, MT, kMlpThreads>::stage(in, xs, 0, 1, s_mean, s_rstd);  // ends on a barrier
  else __syncthreads();

  const int parts = p.parts, part = tid / cc, col = tid - part * cc;  // down: this thread's chunk
  const bool down_active = part < parts;
  float acc[MT][CH];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int e = 0; e < CH; ++e) acc[m][e] = 0.f;

  for (int i = 0; i < ns; ++i) {
    cp_async_wait<SLOTS - 2>();  // this thread's copies of stage i have landed
    __syncthreads();             // everyone's have, and stage i - 1's slot is free
    issue(i + SLOTS - 1);
    int first, n;
    rows_of(i, first, n);
    const uint4* slot = reinterpret_cast<const uint4*>(ring + (size_t)(i % SLOTS) * rs * rb);
    if (dbg & 1) continue;
    if (i < nsu) {
      if (warp < n) {  // one row per warp: the dense GEMV's lane order and butterfly
        float a[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) a[m] = 0.f;
        const uint4* row = slot + (size_t)warp * cc;
        for (int c = lane; c < cc; c += 32) {
          float wf[CH];
          unpack_w<W>(row[c], wf);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const float4* xm = reinterpret_cast<const float4*>(xs + m * C + c * CH);
#pragma unroll
            for (int j = 0; j < CH / 4; ++j) {
              const float4 q = xm[j];
              a[m] = fmaf(wf[4 * j], q.x, a[m]);
              a[m] = fmaf(wf[4 * j + 1], q.y, a[m]);
              a[m] = fmaf(wf[4 * j + 2], q.z, a[m]);
              a[m] = fmaf(wf[4 * j + 3], q.w, a[m]);
            }
          }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float s = warp_sum(a[m]);
          if (lane == 0) yv[(first + warp) * MT + m] = s;
        }
      }
      continue;
    }
    if (i == nsu) {  // every up sum is in yv (the barrier above): h for this block's units
      const A* bu = static_cast<const A*>(p.b_up);
      for (int e = tid; e < S * MT; e += kMlpThreads) {
        const int s = e / MT, m = e - s * MT;
        float v = yv[s * MT + m] + (bu ? to_f(bu[u0 + s]) : 0.f);
        if (swiglu) {
          const float up = yv[(S + s) * MT + m] + (bu ? to_f(bu[F + u0 + s]) : 0.f);
          v = silu(v) * up;
        } else {
          v = gelu_tanh<false>(v);
        }
        hv[e] = to_f(from_f<A>(v));
      }
      __syncthreads();
    }
    if (down_active) {
      for (int j = 0; j < n; ++j) {
        const int s = first + j;
        if (s % parts != part) continue;
        float wf[CH];
        unpack_w<W>(slot[(size_t)j * cc + col], wf);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float h = hv[s * MT + m];
#pragma unroll
          for (int e = 0; e < CH; ++e) acc[m][e] = fmaf(h, wf[e], acc[m][e]);
        }
      }
    }
  }
  cp_async_wait<0>();
  if (dbg & 2) return;

  // This block's partial sums -> partial[b * parts + part][m][C].
  float* partial = p.partial;
  if (down_active) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      float4* d = reinterpret_cast<float4*>(partial + ((int64_t)(b * parts + part) * M + m) * C + col * CH);
#pragma unroll
      for (int e = 0; e < CH / 4; ++e)
        d[e] = make_float4(acc[m][4 * e], acc[m][4 * e + 1], acc[m][4 * e + 2], acc[m][4 * e + 3]);
    }
  }
  const int ng = (G + kGroup - 1) / kGroup, grp = b / kGroup, gsz = min(kGroup, G - grp * kGroup);
  const int n4 = M * C / 4;  // float4s of one [M][C] sum (C % 4 == 0)
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned old = atomicAdd(p.counters + grp, 1u);
    s_last = old == (unsigned)gsz - 1;
    if (s_last) p.counters[grp] = 0;  // every block of the group has arrived: ready for the next call
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // Level 1: the group's partials in block order -> gsum[grp].
  const int np = gsz * parts;
  const float4* src = reinterpret_cast<const float4*>(partial) + (int64_t)grp * kGroup * parts * n4;
  float4* gs = reinterpret_cast<float4*>(p.gsum);
  for (int e = tid; e < n4; e += kMlpThreads) {
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 16  // loads in flight: the sum's latency is a few L2 round trips, not np
    for (int k = 0; k < np; ++k) {
      const float4 v = __ldcg(src + (int64_t)k * n4 + e);
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
    __stcg(gs + (int64_t)grp * n4 + e, s);
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned old = atomicAdd(p.counters + kMlpMaxGroups, 1u);
    s_last = old == (unsigned)ng - 1;
    if (s_last) p.counters[kMlpMaxGroups] = 0;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // Level 2: the group sums in group order, + bias, + residual, one rounding.
  const A* bd = static_cast<const A*>(p.b_down);
  const A* res = static_cast<const A*>(p.residual);
  A* out = static_cast<A*>(p.out);
  for (int e = tid; e < n4; e += kMlpThreads) {
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 16
    for (int k = 0; k < ng; ++k) {
      const float4 v = __ldcg(gs + (int64_t)k * n4 + e);
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
    const float sv[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t idx = (int64_t)e * 4 + k;
      const int c = (int)(idx % C);
      float v = sv[k] + (bd ? to_f(bd[c]) : 0.f);
      if (res) v += to_f(res[idx]);
      out[idx] = from_f<A>(v);
    }
  }
}

template <typename W, typename A, int MT>
cudaError_t launch_mt(const MlpArgs& a, int num_sms, cudaStream_t st) {
  MlpArgs p = a;
  const MlpGeom g = mlp_geom(sizeof(W), MT, kSlots<MT>, p.in.K, p.F, p.act == kActSwiglu, num_sms);
  if (g.smem > (size_t)kSmemMax) return cudaErrorInvalidValue;
  static bool attr_set = false;  // once per instantiation: allow more than 48 KiB of shared memory
  if (!attr_set) {
    const cudaError_t e =
        cudaFuncSetAttribute(mlp_decode_kernel<W, A, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemMax);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  p.parts = g.parts;
  p.stage_rows = g.stage_rows;
  p.smax = g.smax;
  p.gsum = p.partial + (int64_t)g.grid * g.parts * p.in.M * p.in.K;
  p.in.kt = p.in.K;
  p.in.vec_x = true;
  { const char* e = getenv("GPTE_MLP_DEBUG"); p.dbg = e ? atoi(e) : 0; }  // C % 8 == 0 and x 16-byte aligned: checked by mlp_decode_supported / the binding
  return launch_pdl(mlp_decode_kernel<W, A, MT>, dim3((unsigned)g.grid), dim3(kMlpThreads), g.smem, st, p);
}

template <typename W, typename A>
cudaError_t launch_wa(const MlpArgs& p, int num_sms, cudaStream_t st) {
  if (p.in.M <= 1) return launch_mt<W, A, 1>(p, num_sms, st);
  if (p.in.M <= 2) return launch_mt<W, A, 2>(p, num_sms, st);
  if (p.in.M <= 4) return launch_mt<W, A, 4>(p, num_sms, st);
  if (p.in.M <= 8) return launch_mt<W, A, 8>(p, num_sms, st);
  return launch_mt<W, A, 16>(p, num_sms, st);
}

template <typename A>
cudaError_t launch_a(int wdtype, const MlpArgs& p, int num_sms, cudaStream_t st) {
  switch (wdtype) {
    case kF32: return launch_wa<float, A>(p, num_sms, st);
    case kF16: return launch_wa<__half, A>(p, num_sms, st);
    case kBF16: return launch_wa<__nv_bfloat16, A>(p, num_sms, st);
    default: return cudaErrorInvalidValue;
  }
}

int mt_of(int64_t M) { return M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : 16; }

}  // namespace

bool mlp_decode_supported(int wdtype, int adtype, int64_t M, int64_t C, int64_t F, int64_t act, int num_sms) {
  const int wbytes = wdtype == kF32 ? 4 : 2;
  if (!(adtype == kF16 || adtype == kBF16) || !(wdtype == kF32 || wdtype == kF16 || wdtype == kBF16)) return false;
  if (M < 1 || M > kLinearMaxM || C <= 0 || F <= 0 || C % 8 || F >= (1 << 30) || num_sms <= 0) return false;
  if (act != kActGeluTanh && act != kActSwiglu) return false;
  if (C * wbytes / 16 > kMlpThreads) return false;  // one 16-byte column chunk per thread
  if ((int64_t)num_sms > kGroup * kMlpMaxGroups) return false;
  const int mt = mt_of(M);
  const MlpGeom g = mlp_geom(wbytes, mt, mt <= 4 ? kSlots<1> : kSlots<8>, C, F, act == kActSwiglu, num_sms);
  return g.smem <= (size_t)kSmemMax;
}

int64_t mlp_decode_workspace_floats(int wdtype, int64_t M, int64_t C, int64_t F, int num_sms) {
  const int wbytes = wdtype == kF32 ? 4 : 2;
  const MlpGeom g = mlp_geom(wbytes, 1, kSlots<1>, C, F, false, num_sms);  // grid and parts do not depend on M
  return ((int64_t)g.grid * g.parts + ceil_div(g.grid, kGroup)) * M * C;
}

cudaError_t launch_mlp_decode(int wdtype, int adtype, const MlpArgs& p, int num_sms, cudaStream_t stream) {
  if (p.in.M == 0) return cudaSuccess;
  if (!mlp_decode_supported(wdtype, adtype, p.in.M, p.in.K, p.F, p.act, num_sms)) return cudaErrorInvalidValue;
  if (!aligned16(p.w_up) || !aligned16(p.w_dt) || !aligned16(p.in.x) || !aligned16(p.partial) ||
      !p.counters || !p.out)
    return cudaErrorInvalidValue;
  if (adtype == kF16) return launch_a<__half>(wdtype, p, num_sms, stream);
  return launch_a<__nv_bfloat16>(wdtype, p, num_sms, stream);
}

}  // namespace gpte
