/* CPU products with GGUF block weights (Q4_0, Q4_1, Q8_0) read packed: y = x @ W.T, float32.
 *
 * Plain C (no torch headers: the build takes about a second), compiled on first use by
 * gpt_engine/cpu_q4.py with the system compiler and loaded with ctypes; the Python side checks
 * every shape, type and contiguity before calling (these functions trust their arguments).
 *
 * Blocks (gguf-py GGML_QUANT_SIZES; ggml's block_q4_0 / block_q4_1 / block_q8_0), 32 values each:
 *   Q4_0, 18 bytes: f16 d, 16 bytes qs            value = d * (q - 8)
 *   Q4_1, 20 bytes: f16 d, f16 m, 16 bytes qs     value = d * q + m
 *   Q8_0, 34 bytes: f16 d, 32 int8 qs             value = d * q
 * where (Q4) q of value j (0..15) is the low nibble of qs[j] and q of value j + 16 its high
 * nibble, (Q8_0) q of value j is qs[j]. Below, qlo are the codes of values 0-15 and qhi those of
 * values 16-31, for every type.
 *
 * Product (q4_gemv), per output y[r][n] with blocks b = 0 .. K/32 - 1 of row n:
 *   y = sum_b d_b * dot(q_b, x_b) + sum_b c_b * s_b,   s_b = sum of x's 32 values of block b,
 * with c_b = m_b (Q4_1), -8 d_b (Q4_0, exact: a power-of-two multiple) or 0 (Q8_0: no offset term,
 * off stays 0 and s_b is not computed). In real numbers this is
 * the dense product sum_k W[n][k] x[k]; in float32 it differs from F.linear on the dequantized
 * weights only in rounding (the order of the sums below), never in what is summed.
 * Summation order (float32 throughout, fused multiply-adds where written fma):
 *   - s_b: the 32 values of x's block, in the vector order of sum32 (pairwise over lanes);
 *     computed once per call for every row of x and block (not once per output);
 *   - t_b = qlo * x[0:16] + qhi * x[16:32] lane by lane (a product, then an fma);
 *   - AVX-512 (16-float lane vectors): four lane-vector accumulators, block b into acc[b % 4]:
 *     acc = fma(d_b, t_b, acc); four scalar offset chains off[b % 4] = fma(c_b, s_b, off);
 *     y = hsum((acc0 + acc1) + (acc2 + acc3)) + ((off0 + off1) + (off2 + off3));
 *   - AVX2: t_b as two 8-float halves (values 0-7 with 16-23, 8-15 with 24-31), each into its own
 *     accumulator, one offset chain in block order; y = hsum(acc0 + acc1) + off;
 *   - scalar (no AVX2): t_b summed value by value (j, j + 16, j + 1, ...), acc = fma(d_b, t_b,
 *     acc) and off in block order; y = acc + off.
 * The order is fixed per output (independent of the thread count: each output is one thread's).
 *
 * Memory: the weights stream once per call (4.5 / 5 bits per weight). The hardware prefetcher
 * does not cross 4 KiB pages and the compute-bound loop then stalls; a software prefetch
 * PF_DIST bytes ahead keeps the stream going (measured on the 210 matrices of a SmolLM2 step,
 * one thread: 13.1 ms without, 9.1 with 2 KiB; 1-4 KiB within 5%).
 *
 * Threads: OpenMP over output rows n (static split; q4_gemv_multi splits the rows of its weights
 * stacked), linked against the libgomp the running torch
 * already loaded, so its pool and torch's are the same threads (see cpu_q4.py).
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#endif

#define QK 32
#ifndef PF_DIST
#define PF_DIST 2048
#endif
#define MAX_ROWS 8 /* rows of x per call: the decode case; the caller takes another path above */

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8 }; /* GGMLQuantizationType values */

/* bytes per block and offset of the codes in it */
#define BLOCK_BYTES(qt) ((qt) == T_Q4_1 ? 20 : (qt) == T_Q4_0 ? 18 : 34)
#define CODE_OFFSET(qt) ((qt) == T_Q4_1 ? 4 : 2)

/* f16 -> f32, exact (every f16, subnormals included, is a float32 normal or zero) */
static inline float f16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}


static inline void block_scales(int qtype, const uint8_t *blk, float *d, float *c) {
    *d = f16_to_f32(blk);
    *c = qtype == T_Q4_1 ? f16_to_f32(blk + 2) : qtype == T_Q4_0 ? -8.0f * *d : 0.f;
}

/* code of value j (0..31) of a block's codes qs */
static inline int code(int qtype, const uint8_t *qs, int j) {
    if (qtype == T_Q8_0) return (int8_t)qs[j];
    return j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4;
}

/* sum of 32 floats */
static inline float sum32(const float *x) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)));
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                             _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float s = 0.f;
    for (int j = 0; j < QK; j++) s += x[j];
    return s;
#endif
}


#if defined(__AVX512F__)
/* One block of one weight row against every row r < m of x (x, xs already at the block).
 * Q4_1's d and m are adjacent f16s: one conversion gives both. */
static inline __attribute__((always_inline)) void block512(
        const int qtype, const uint8_t *blk, const float *x, const float *xs, const int m, int64_t K,
        int64_t nb, __m512 *acc, float *off) {
    const int qo = CODE_OFFSET(qtype);
    uint32_t dm;
    memcpy(&dm, blk, 4); /* Q4_0 / Q8_0: the second half is qs[0..1], unused */
    const __m128 dmf = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
    const __m512 dv = _mm512_broadcastss_ps(dmf);
    __m512 qlo, qhi;
    if (qtype == T_Q8_0) {
        qlo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + qo))));
        qhi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + qo + 16))));
    } else {
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + qo)));
        qlo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(0x0f)));
        qhi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
    }
    const float c = qtype == T_Q4_1 ? _mm_cvtss_f32(_mm_movehdup_ps(dmf)) : -8.0f * _mm_cvtss_f32(dmf);
    for (int r = 0; r < m; r++) {
        const float *xb = x + r * K;
        __m512 t = _mm512_mul_ps(qlo, _mm512_loadu_ps(xb));
        t = _mm512_fmadd_ps(qhi, _mm512_loadu_ps(xb + 16), t);
        acc[r] = _mm512_fmadd_ps(dv, t, acc[r]);
        if (qtype != T_Q8_0) off[r] = fmaf(c, xs[r * nb], off[r]);
    }
}

/* rows_range for a compile-time type and m (the accumulators stay in registers) */
static inline __attribute__((always_inline)) void rows512(
        const int qtype, const uint8_t *w, const float *x, const float *xs, float *y, const int m, int64_t N,
        int64_t K, int64_t n0, int64_t n1) {
    const int64_t nb = K / QK;
    const int bs = BLOCK_BYTES(qtype);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w + n * nb * bs;
        /* four interleaved chains (blocks b mod 4): the fma latency is not serialised per block */
        __m512 acc[4][MAX_ROWS];
        float off[4][MAX_ROWS];
        for (int u = 0; u < 4; u++)
            for (int r = 0; r < m; r++) { acc[u][r] = _mm512_setzero_ps(); off[u][r] = 0.f; }
        int64_t b = 0;
        for (; b + 3 < nb; b += 4) {
            /* software prefetch PF_DIST bytes ahead (see the header); Q8_0's 4 blocks span 136 bytes */
            _mm_prefetch((const char *)(row + b * bs) + PF_DIST, _MM_HINT_T0);
            if (qtype == T_Q8_0) _mm_prefetch((const char *)(row + b * bs) + PF_DIST + 64, _MM_HINT_T0);
            for (int u = 0; u < 4; u++)
                block512(qtype, row + (b + u) * bs, x + (b + u) * QK, xs + b + u, m, K, nb, acc[u], off[u]);
        }
        for (int u = 0; b < nb; b++, u++)
            block512(qtype, row + b * bs, x + b * QK, xs + b, m, K, nb, acc[u], off[u]);
        for (int r = 0; r < m; r++) {
            __m512 a = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), _mm512_add_ps(acc[2][r], acc[3][r]));
            const float s = _mm512_reduce_add_ps(a);
            y[r * N + n] = qtype == T_Q8_0 ? s : s + ((off[0][r] + off[1][r]) + (off[2][r] + off[3][r]));
        }
    }
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* The AVX2 path for a compile-time type and m (rows256 is inlined per case of rows_range's
 * switch), so the accumulators stay in registers: with a run-time m they lived in stack arrays
 * and every block paid a store-to-load round trip on each chain (SmolLM2's 576 x 576 product on
 * one thread of the 2-core AMD EPYC machine: 76 us; see docs/quality.md). The arithmetic and its
 * order are the header's AVX2 order. */
static inline __attribute__((always_inline)) void rows256(
        const int qtype, const uint8_t *w, const float *x, const float *xs, float *y, const int m, int64_t N,
        int64_t K, int64_t n0, int64_t n1) {
    const int64_t nb = K / QK;
    const int bs = BLOCK_BYTES(qtype), qo = CODE_OFFSET(qtype);
    const __m256i lo4 = _mm256_set1_epi32(0x0f);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w + n * nb * bs;
        float off[MAX_ROWS];
        __m256 acc0[MAX_ROWS], acc1[MAX_ROWS];
        for (int r = 0; r < m; r++) { acc0[r] = _mm256_setzero_ps(); acc1[r] = _mm256_setzero_ps(); off[r] = 0.f; }
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bs;
            if (!(b & 3)) { /* as rows512 */
                _mm_prefetch((const char *)blk + PF_DIST, _MM_HINT_T0);
                if (qtype == T_Q8_0) _mm_prefetch((const char *)blk + PF_DIST + 64, _MM_HINT_T0);
            }
            float d, c;
            block_scales(qtype, blk, &d, &c);
            /* values 0-7, 8-15, 16-23, 24-31 */
            __m256 q0, q1, q2, q3;
            if (qtype == T_Q8_0) {
                q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo))));
                q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo + 8))));
                q2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo + 16))));
                q3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo + 24))));
            } else {
                __m256i qa = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo)));
                __m256i qb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qo + 8)));
                q0 = _mm256_cvtepi32_ps(_mm256_and_si256(qa, lo4)); /* low nibbles */
                q1 = _mm256_cvtepi32_ps(_mm256_and_si256(qb, lo4));
                q2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(qa, 4)); /* high nibbles */
                q3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(qb, 4));
            }
            __m256 dv = _mm256_set1_ps(d);
            for (int r = 0; r < m; r++) {
                const float *xb = x + r * K + b * QK;
                __m256 t0 = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), _mm256_mul_ps(q0, _mm256_loadu_ps(xb)));
                __m256 t1 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q1, _mm256_loadu_ps(xb + 8)));
                acc0[r] = _mm256_fmadd_ps(dv, t0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(dv, t1, acc1[r]);
                if (qtype != T_Q8_0) off[r] = fmaf(c, xs[r * nb + b], off[r]);
            }
        }
        for (int r = 0; r < m; r++) {
            __m256 a = _mm256_add_ps(acc0[r], acc1[r]);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            y[r * N + n] = qtype == T_Q8_0 ? _mm_cvtss_f32(h) : _mm_cvtss_f32(h) + off[r];
        }
    }
}
#endif

/* The scalar path (no AVX2) for a compile-time type. */
static inline __attribute__((always_inline)) void rows_scalar(
        const int qtype, const uint8_t *w, const float *x, const float *xs, float *y, int m, int64_t N,
        int64_t K, int64_t n0, int64_t n1) {
    const int64_t nb = K / QK;
    const int bs = BLOCK_BYTES(qtype), qo = CODE_OFFSET(qtype);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w + n * nb * bs;
        float off[MAX_ROWS] = {0};
        float acc[MAX_ROWS] = {0};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bs;
            float d, c;
            block_scales(qtype, blk, &d, &c);
            for (int r = 0; r < m; r++) {
                const float *xb = x + r * K + b * QK;
                float t = 0.f;
                for (int j = 0; j < 16; j++) {
                    t += (float)code(qtype, blk + qo, j) * xb[j];
                    t += (float)code(qtype, blk + qo, j + 16) * xb[j + 16];
                }
                acc[r] = fmaf(d, t, acc[r]);
                if (qtype != T_Q8_0) off[r] = fmaf(c, xs[r * nb + b], off[r]);
            }
        }
        for (int r = 0; r < m; r++) y[r * N + n] = qtype == T_Q8_0 ? acc[r] : acc[r] + off[r];
    }
}

/* y[r][n] for rows n in [n0, n1) and every row r < m of x, one compile-time type. */
static inline __attribute__((always_inline)) void rows_typed(
        const int qtype, const uint8_t *w, const float *x, const float *xs, float *y, int m, int64_t N,
        int64_t K, int64_t n0, int64_t n1) {
#if defined(__AVX512F__)
    switch (m) { /* one specialisation per row count: accumulators in registers */
        case 1: rows512(qtype, w, x, xs, y, 1, N, K, n0, n1); return;
        case 2: rows512(qtype, w, x, xs, y, 2, N, K, n0, n1); return;
        case 3: rows512(qtype, w, x, xs, y, 3, N, K, n0, n1); return;
        case 4: rows512(qtype, w, x, xs, y, 4, N, K, n0, n1); return;
        default: rows512(qtype, w, x, xs, y, m, N, K, n0, n1); return;
    }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    switch (m) { /* as the AVX-512 path: one specialisation per row count */
        case 1: rows256(qtype, w, x, xs, y, 1, N, K, n0, n1); return;
        case 2: rows256(qtype, w, x, xs, y, 2, N, K, n0, n1); return;
        case 3: rows256(qtype, w, x, xs, y, 3, N, K, n0, n1); return;
        case 4: rows256(qtype, w, x, xs, y, 4, N, K, n0, n1); return;
        default: rows256(qtype, w, x, xs, y, m, N, K, n0, n1); return;
    }
#else
    rows_scalar(qtype, w, x, xs, y, m, N, K, n0, n1);
#endif
}

/* w: [N][nb * bs] bytes, x: [m][K], xs: [m][nb] block sums of x (unused for Q8_0), y: [m][ldy]
 * with ldy = N (the argument named N in the row functions is y's row stride). */
static void rows_range(int qtype, const uint8_t *w, const float *x, const float *xs, float *y,
                       int m, int64_t N, int64_t K, int64_t n0, int64_t n1) {
    switch (qtype) { /* one specialisation per type: its block layout and terms known at compile time */
        case T_Q4_0: rows_typed(T_Q4_0, w, x, xs, y, m, N, K, n0, n1); return;
        case T_Q4_1: rows_typed(T_Q4_1, w, x, xs, y, m, N, K, n0, n1); return;
        default: rows_typed(T_Q8_0, w, x, xs, y, m, N, K, n0, n1); return;
    }
}

static int known_type(int qtype) { return qtype == T_Q4_0 || qtype == T_Q4_1 || qtype == T_Q8_0; }

#define MAX_MATS 8 /* weights per q4_gemv_multi call (q, k, v: 3; gate, up: 2) */

/* y[m][sum N_i] = x[m][K] @ [W_0; W_1; ...].T for nw weights W_i [N_i][K] of types qtypes[i]
 * (Q4_0 / Q4_1 / Q8_0 blocks) sharing x: the products of one input, written side by side, in one
 * call and one parallel region (q, k and v; gate and up). Each output is computed exactly as
 * q4_gemv computes it for W_i alone (same code, same order): only the work split differs.
 * 1 <= m <= MAX_ROWS, K % 32 == 0, 1 <= nw <= MAX_MATS. Returns 0, or -1 outside those limits. */
int q4_gemv_multi(int nw, const int *qtypes, const uint8_t *const *ws, const int64_t *ns, const float *x,
                  float *y, int64_t m, int64_t K, int threads) {
    if (nw < 1 || nw > MAX_MATS || m < 1 || m > MAX_ROWS || K % QK) return -1;
    int64_t off[MAX_MATS + 1];
    int need_sums = 0;
    off[0] = 0;
    for (int i = 0; i < nw; i++) {
        if (!known_type(qtypes[i]) || ns[i] < 1) return -1;
        need_sums |= qtypes[i] != T_Q8_0; /* Q8_0 has no offset term */
        off[i + 1] = off[i] + ns[i];
    }
    const int64_t N = off[nw], nb = K / QK;
    float stack_xs[MAX_ROWS * 256];
    float *xs = stack_xs;
    if (need_sums) {
        if (m * nb > MAX_ROWS * 256) xs = (float *)malloc(sizeof(float) * m * nb);
        if (!xs) return -1;
        for (int64_t i = 0; i < m * nb; i++) xs[i] = sum32(x + i * QK);
    }
    if (threads < 1) threads = 1;
    if (threads > N) threads = (int)N;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        int t = 0, nt = 1;
#endif
        /* this thread's share of the stacked output rows, cut at the weights' boundaries */
        const int64_t g0 = N * t / nt, g1 = N * (t + 1) / nt;
        for (int i = 0; i < nw; i++) {
            const int64_t lo = g0 > off[i] ? g0 : off[i], hi = g1 < off[i + 1] ? g1 : off[i + 1];
            if (lo < hi)
                rows_range(qtypes[i], ws[i], x, xs, y + off[i], (int)m, N, K, lo - off[i], hi - off[i]);
        }
    }
    if (xs != stack_xs) free(xs);
    return 0;
}

/* y[m][N] = x[m][K] @ W.T for W [N][K] in Q4_0 / Q4_1 / Q8_0 blocks; 1 <= m <= MAX_ROWS,
 * K % 32 == 0. Returns 0, or -1 for a request outside those limits (the caller checks first). */
int q4_gemv(int qtype, const uint8_t *w, const float *x, float *y, int64_t m, int64_t N, int64_t K,
            int threads) {
    return q4_gemv_multi(1, &qtype, &w, &N, x, y, m, K, threads);
}

/* Dequantize rows of Q4_0 / Q4_1 / Q8_0 blocks to float32 exactly as gguf-py does (d * q + m,
 * d * (q - 8), d * q: one rounding each, built with -ffp-contract=off so no multiply-add is
 * fused). w: [N][nb * bs], out: [N][K]. For products with more rows of x than MAX_ROWS (a prefill). */
int q4_dequant(int qtype, const uint8_t *w, float *out, int64_t N, int64_t K, int threads) {
    if (!known_type(qtype) || K % QK || N < 1) return -1;
    const int64_t nb = K / QK;
    const int bs = BLOCK_BYTES(qtype), qo = CODE_OFFSET(qtype);
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + (n * nb + b) * bs;
            float *o = out + n * K + b * QK;
            const float d = f16_to_f32(blk);
            if (qtype == T_Q4_1) {
                const float mm = f16_to_f32(blk + 2);
                for (int j = 0; j < 16; j++) {
                    o[j] = d * (float)(blk[qo + j] & 0x0f) + mm;
                    o[j + 16] = d * (float)(blk[qo + j] >> 4) + mm;
                }
            } else if (qtype == T_Q4_0) {
                for (int j = 0; j < 16; j++) {
                    o[j] = d * (float)((blk[qo + j] & 0x0f) - 8);
                    o[j + 16] = d * (float)((blk[qo + j] >> 4) - 8);
                }
            } else {
                for (int j = 0; j < QK; j++) o[j] = d * (float)(int8_t)blk[qo + j];
            }
        }
    }
    return 0;
}

/* Which vector path this build took: 512, 256 or 0 (scalar). */
int q4_simd_width(void) {
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return 256;
#else
    return 0;
#endif
}
