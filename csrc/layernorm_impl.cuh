// LayerNorm kernels shared by layernorm.cu and add_layernorm.cu (HAS_RES: h = x + residual
// is formed, rounded to T, written, and normalised).
//
// The row is read once and held in registers: VPT vectors of VEC elements per thread, one
// warp per row (ROW_THREADS = 32, four rows per 128-thread block) or one block per row for
// wide rows. Statistics in fp32 from the registers: sum of (v - v0) with v0 the row's first
// element (a shift that keeps a large common offset from swamping the fp32 sum), then the sum
// of squared deviations (two passes over registers, not memory). Rows too wide for registers
// go to a looping kernel that re-reads the row from memory.
#pragma once
#include "common.cuh"

namespace gpte {
namespace ln {

constexpr int kWarpRowsPerBlock = 4;
constexpr int kBlockRowThreads = 512;  // wide rows: 512 threads x up to 32 floats (128 registers each)

// Sum over the threads of one row: a warp (shuffles) or the whole block (shuffles + smem).
template <bool BLOCK_ROW>
__device__ __forceinline__ float row_sum(float v, float* red) {
  v = warp_sum(v);
  if (!BLOCK_ROW) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // red[] may still be read from the previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.f;
  return warp_sum(t);
}

template <typename T, bool HAS_RES>
__device__ __forceinline__ float first_elem(const T* x, const T* r) {
  if (HAS_RES) return to_f(from_f<T>(to_f(x[0]) + to_f(r[0])));
  return to_f(x[0]);
}

template <typename T, int VEC, int VPT, bool BLOCK_ROW, bool HAS_RES>
__global__ void __launch_bounds__(BLOCK_ROW ? kBlockRowThreads : 32 * kWarpRowsPerBlock) ln_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                                  const T* __restrict__ w, const T* __restrict__ b,
                                                  T* __restrict__ hout, T* __restrict__ y, int64_t rows, int c,
                                                  float eps) {
  __shared__ float red[32];
  const int row_threads = BLOCK_ROW ? blockDim.x : 32;
  const int t = BLOCK_ROW ? threadIdx.x : (threadIdx.x & 31);
  const int64_t row = BLOCK_ROW ? (int64_t)blockIdx.x : (int64_t)blockIdx.x * kWarpRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps exit together (warp mode only; block mode has rows == grid)
  const int nvec = c / VEC;
  const T* xr = x + row * c;
  const T* rr = HAS_RES ? res + row * c : nullptr;

  Vec<T, VEC> xv[VPT];
  Vec<T, VEC> rv[HAS_RES ? VPT : 1];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = t + k * row_threads;
    if (vi < nvec) {
      xv[k] = load_vec<T, VEC>(xr, vi);
      if (HAS_RES) rv[k] = load_vec<T, VEC>(rr, vi);
    }
  }
  const float v0 = first_elem<T, HAS_RES>(xr, rr);
  float v[VPT][VEC];
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = t + k * row_threads;
    if (vi < nvec) {
      Vec<T, VEC> hv;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float e = to_f(xv[k].v[j]);
        if (HAS_RES) {
          hv.v[j] = from_f<T>(e + to_f(rv[k].v[j]));
          e = to_f(hv.v[j]);
        }
        v[k][j] = e - v0;
        s += v[k][j];
      }
      if (HAS_RES) store_vec<T, VEC>(hout + row * c, vi, hv);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[k][j] = 0.f;
    }
  }
  const float mean_s = row_sum<BLOCK_ROW>(s, red) / c;
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = t + k * row_threads;
    if (vi < nvec) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v[k][j] -= mean_s;
        ss += v[k][j] * v[k][j];
      }
    }
  }
  const float rstd = rsqrtf(row_sum<BLOCK_ROW>(ss, red) / c + eps);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = t + k * row_threads;
    if (vi < nvec) {
      const Vec<T, VEC> wv = load_vec<T, VEC>(w, vi), bv = load_vec<T, VEC>(b, vi);
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_f<T>(v[k][j] * rstd * to_f(wv.v[j]) + to_f(bv.v[j]));
      store_vec<T, VEC>(y + row * c, vi, o);
    }
  }
}

// Rows too wide for registers: block per row, three passes over memory (L2 usually holds the row).
template <typename T, bool HAS_RES>
__global__ void __launch_bounds__(1024) ln_loop_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                                       const T* __restrict__ w, const T* __restrict__ b,
                                                       T* __restrict__ hout, T* __restrict__ y, int64_t c,
                                                       float eps) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  const T* rr = HAS_RES ? res + row * c : nullptr;
  const T* src = HAS_RES ? hout + row * c : xr;  // what the later passes read
  const float v0 = first_elem<T, HAS_RES>(xr, rr);
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    float e = to_f(xr[i]);
    if (HAS_RES) {
      const T h = from_f<T>(e + to_f(rr[i]));
      hout[row * c + i] = h;
      e = to_f(h);
    }
    s += e - v0;
  }
  const float mean_s = row_sum<true>(s, red) / c;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    const float d = to_f(src[i]) - v0 - mean_s;
    ss += d * d;
  }
  const float rstd = rsqrtf(row_sum<true>(ss, red) / c + eps);
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
    y[row * c + i] = from_f<T>((to_f(src[i]) - v0 - mean_s) * rstd * to_f(w[i]) + to_f(b[i]));
}

template <typename T, int VEC, int VPT, bool HAS_RES>
cudaError_t launch_warp(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int64_t rows, int c, float eps,
                        cudaStream_t st) {
  const int64_t blocks = ceil_div(rows, kWarpRowsPerBlock);
  ln_kernel<T, VEC, VPT, false, HAS_RES><<<blocks, 32 * kWarpRowsPerBlock, 0, st>>>(x, r, w, b, h, y, rows, c, eps);
  return cudaGetLastError();
}

template <typename T, int VEC, int VPT, bool HAS_RES>
cudaError_t launch_block(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int64_t rows, int c, float eps,
                         cudaStream_t st) {
  const int nvec = c / VEC;
  const int threads = (int)std::min<int64_t>(kBlockRowThreads, ceil_div(ceil_div(nvec, VPT), 32) * 32);
  ln_kernel<T, VEC, VPT, true, HAS_RES><<<rows, threads, 0, st>>>(x, r, w, b, h, y, rows, c, eps);
  return cudaGetLastError();
}

// Picks the register layout for a row of c elements; VEC is 16 bytes or 1 element.
template <typename T, int VEC, bool HAS_RES>
cudaError_t dispatch_vec(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int64_t rows, int c, float eps,
                         cudaStream_t st) {
  const int nvec = c / VEC;
  // warp per row while a lane holds at most 64 floats (VPT * VEC)
  if (nvec <= 32 * 1) return launch_warp<T, VEC, 1, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if (nvec <= 32 * 2) return launch_warp<T, VEC, 2, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if (nvec <= 32 * 4) return launch_warp<T, VEC, 4, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if (nvec <= 32 * 8) return launch_warp<T, VEC, 8, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if constexpr (VEC == 1) {
    if (nvec <= 32 * 16) return launch_warp<T, VEC, 16, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
    if (nvec <= 32 * 32) return launch_warp<T, VEC, 32, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  }
  // block per row: up to kBlockRowThreads threads x 32 floats of row data
  constexpr int kMaxVpt = 32 / VEC;
  constexpr int kT = kBlockRowThreads;
  if (nvec <= kT * (kMaxVpt / 4))
    return launch_block<T, VEC, (kMaxVpt / 4 > 0 ? kMaxVpt / 4 : 1), HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if (nvec <= kT * (kMaxVpt / 2))
    return launch_block<T, VEC, (kMaxVpt / 2 > 0 ? kMaxVpt / 2 : 1), HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  if (nvec <= kT * kMaxVpt) return launch_block<T, VEC, kMaxVpt, HAS_RES>(x, r, w, b, h, y, rows, c, eps, st);
  ln_loop_kernel<T, HAS_RES><<<rows, 1024, 0, st>>>(x, r, w, b, h, y, c, eps);
  return cudaGetLastError();
}

template <typename T, bool HAS_RES>
cudaError_t run(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int64_t rows, int64_t c, float eps,
                cudaStream_t st) {
  if (rows == 0) return cudaSuccess;
  if (c > (1 << 30)) return cudaErrorInvalidValue;
  constexpr int V = kVec16<T>;
  const bool vec = c % V == 0 && aligned16(x) && aligned16(y) && aligned16(w) && aligned16(b) &&
                   (!HAS_RES || (aligned16(r) && aligned16(h)));
  if (vec) return dispatch_vec<T, V, HAS_RES>(x, r, w, b, h, y, rows, (int)c, eps, st);
  return dispatch_vec<T, 1, HAS_RES>(x, r, w, b, h, y, rows, (int)c, eps, st);
}

}  // namespace ln
}  // namespace gpte
