/* Single-precision GEMM for the kernels: a packed AVX-512 micro-kernel where the CPU has
 * AVX-512F, OpenBLAS's cblas_sgemm everywhere else. cblas_sgemm is also the reference the
 * tests hold the fast path to (tests/test_gemm.c).
 *
 * Why our own: the Debian 12 OpenBLAS (0.3.21) is told by OPENBLAS_CORETYPE=Haswell, where
 * its AVX-512 kernels are not trusted on newer CPUs, to run its AVX2 kernels, and on a CPU
 * with full-width AVX-512 units that is half the machine (2048^3 sgemm on the 2-core Zen 5
 * VM: 0.082 s Haswell, 0.043 s with OpenBLAS's own AVX-512 kernels). PyTorch's oneDNN uses
 * AVX-512 whatever OpenBLAS is told.
 *
 * Layout (BLIS / GotoBLAS loop nest): C [M, N] row-major is cut into NC-column blocks; K into
 * KC slices; op(B)'s KC x NC block is packed in NR-wide panels (lives in L2/L3); op(A)'s
 * MC x KC block in MR-high panels (L2); the micro-kernel keeps an MR x NR tile of C in 28 zmm
 * registers over one KC slice while its B panel stays in L1. Threads: C is split into one band
 * of rows (or of columns, when C is wider than tall) per thread, each run through that loop
 * nest with the thread's own packing memory, so no thread waits for another until the end;
 * every C element is summed by one thread in one fixed order, and results do not depend on
 * the thread count.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

static int gemm_path = GEMM_AUTO;

int gemm_set_path(int path)
{
    int old = gemm_path;
    if (path == GEMM_AUTO || path == GEMM_BLAS) gemm_path = path;
    return old;
}

static void gemm_blas(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A,
                      size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta,
                C, (blasint)ldc);
}

#if (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2) &&              \
    !defined(DB_KERNELS_NO_AVX512)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))

enum {
    MR = 14,       /* rows of the C tile: 14 x 2 accumulators + 2 B vectors + 1 broadcast */
    NR = 32,       /* columns of the C tile: two zmm */
    KC = 256,      /* K slice: a B panel, KC x NR floats = 32 KiB, stays in L1 */
    MC = MR * 24,  /* A block, MC x KC floats = 336 KiB, stays in L2 */
    NC = NR * 128, /* B block, KC x NC floats = 4 MiB, in L3 */
};

/* Packing memory: an A block (MC * KC) and a B block (KC * NC) for each of pack_threads
 * threads; allocated on first use, kept for the process (grown if the thread count grows). */
#define PACK_FLOATS ((size_t)MC * KC + (size_t)KC * NC)
static float *pack_mem;
static size_t pack_threads;
static pthread_mutex_t pack_lock = PTHREAD_MUTEX_INITIALIZER;

/* With pack_lock held: packing memory for omp_get_max_threads() threads; 0 if out of memory. */
static int pack_alloc(void)
{
    size_t threads = (size_t)omp_get_max_threads();
    if (threads > pack_threads) { /* first call, or more threads than before: (re)allocate */
        void *p = NULL;
        free(pack_mem);
        if (posix_memalign(&p, 64, threads * PACK_FLOATS * sizeof(float))) p = NULL;
        pack_mem = p;
        pack_threads = p ? threads : 0;
    }
    return pack_mem != NULL;
}

static int have_avx512(void)
{
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx512f") != 0; /* same value from any thread */
    return have;
}

/* Lane masks of an NR-wide tile with n valid columns: lanes 0..15, lanes 16..31. */
static inline __mmask16 lo_mask(size_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }
static inline __mmask16 hi_mask(size_t n)
{
    return n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
}

/* r [16] rows of 16 -> r [16] columns: r[c][i] = old r[i][c]. Two unpack stages within
 * 128-bit lanes, then two lane shuffles (0x88 picks lanes 0, 2 of each operand, 0xDD 1, 3). */
AVX512 static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);     /* a0 b0 a1 b1 per lane */
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]); /* a2 b2 a3 b3 */
    }
    for (int i = 0; i < 4; i++) { /* r[4i + j], lane L: column 4L + j of rows 4i .. 4i+3 */
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
    }
}

/* r [16] = columns k0 .. k0+nk-1 (nk <= 16, zero past it) of rows src + i * ld, i < nrow
 * (zero rows past nrow), transposed: r[k][i] = src[i * ld + k0 + k]. */
AVX512 static inline void load_transposed(__m512 r[16], const float *src, size_t ld, size_t nrow,
                                          size_t k0, size_t nk)
{
    __mmask16 m = lo_mask(nk);
    for (size_t i = 0; i < 16; i++)
        r[i] = i < nrow ? _mm512_maskz_loadu_ps(m, src + i * ld + k0) : _mm512_setzero_ps();
    transpose16(r);
}

/* dst [kc, MR]: op(A) rows i0 .. i0+mr-1 at columns p0 .. p0+kc-1, rows past mr zero.
 * ta: A is stored [K, M] (op(A)(i, k) = A[k * lda + i]): row copies. Else A is [M, K] (the
 * weights of a convolution): 16 x 16 blocks transposed in registers. */
AVX512 static void pack_a(float *dst, const float *A, size_t lda, int ta, size_t i0, size_t mr,
                          size_t p0, size_t kc)
{
    if (ta) {
        __mmask16 m = lo_mask(mr);
        for (size_t k = 0; k < kc; k++)
            _mm512_mask_storeu_ps(dst + k * MR, (1u << MR) - 1,
                                  _mm512_maskz_loadu_ps(m, A + (p0 + k) * lda + i0));
        return;
    }
    __m512 r[16];
    for (size_t k0 = 0; k0 < kc; k0 += 16) {
        size_t nk = kc - k0 < 16 ? kc - k0 : 16;
        load_transposed(r, A + i0 * lda + p0, lda, mr, k0, nk);
        for (size_t k = 0; k < nk; k++)
            _mm512_mask_storeu_ps(dst + (k0 + k) * MR, (1u << MR) - 1, r[k]);
    }
}

/* dst [kc, NR] (64-byte aligned): op(B) rows p0 .. p0+kc-1 at columns j0 .. j0+nr-1, columns
 * past nr zero. tb: B is stored [N, K] (op(B)(k, j) = B[j * ldb + k]; a linear layer's
 * weight): 16 x 16 blocks transposed in registers. Else B is [K, N]: row copies. */
AVX512 static void pack_b(float *dst, const float *B, size_t ldb, int tb, size_t j0, size_t nr,
                          size_t p0, size_t kc)
{
    if (!tb) {
        __mmask16 m0 = lo_mask(nr), m1 = hi_mask(nr);
        for (size_t k = 0; k < kc; k++) {
            const float *src = B + (p0 + k) * ldb + j0;
            _mm512_store_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, src));
            _mm512_store_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
        }
        return;
    }
    __m512 r[16];
    for (size_t h = 0; h < 2; h++) { /* columns j0 + 16h .. j0 + 16h + 15 */
        size_t nj = nr > 16 * h ? nr - 16 * h : 0;
        for (size_t k0 = 0; k0 < kc; k0 += 16) {
            size_t nk = kc - k0 < 16 ? kc - k0 : 16;
            load_transposed(r, B + (j0 + 16 * h) * ldb + p0, ldb, nj < 16 ? nj : 16, k0, nk);
            for (size_t k = 0; k < nk; k++)
                _mm512_store_ps(dst + (k0 + k) * NR + 16 * h, r[k]);
        }
    }
}

/* c [mr, nr] (row stride ldc) = alpha * a [kc, MR]^T @ b [kc, NR] + beta * c; beta == 0 never
 * reads c. The accumulators are indexed by constants only (loops fully unrolled), so they stay
 * in registers. */
AVX512 static void micro_kernel(size_t kc, const float *a, const float *b, float *c, size_t ldc,
                                size_t mr, size_t nr, float alpha, float beta)
{
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += NR;
    }
    __mmask16 m0 = lo_mask(nr), m1 = hi_mask(nr);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        if ((size_t)i >= mr) break;
        float *ci = c + (size_t)i * ldc;
        __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
        if (beta != 0.0f) {
            r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), r0);
            r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), r1);
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* The loop nest above for one thread: ap holds an A block (MC x KC), bp a B block (KC x NC). */
static void gemm_serial(float *ap, float *bp, int ta, int tb, size_t M, size_t N, size_t K,
                        float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                        float beta, float *C, size_t ldc, const float *pa, size_t mpad,
                        size_t pa_row)
{
    for (size_t jc = 0; jc < N; jc += NC) {
        size_t nc = min_size(NC, N - jc), nb = (nc + NR - 1) / NR;
        for (size_t pc = 0; pc < K; pc += KC) {
            size_t kc = min_size(KC, K - pc);
            float bet = pc == 0 ? beta : 1.0f; /* later K slices add to the first's sum */
            for (size_t q = 0; q < nb; q++)
                pack_b(bp + q * kc * NR, B, ldb, tb, jc + q * NR, min_size(NR, nc - q * NR), pc,
                       kc);
            for (size_t ic = 0; ic < M; ic += MC) {
                size_t mc = min_size(MC, M - ic), mb = (mc + MR - 1) / MR;
                const float *a = ap;
                if (pa) /* prepacked: panel ((pa_row + ic) / MR + q) of the slice at pc */
                    a = pa + pc * mpad + (pa_row + ic) * kc;
                else
                    for (size_t q = 0; q < mb; q++)
                        pack_a(ap + q * kc * MR, A, lda, ta, ic + q * MR,
                               min_size(MR, mc - q * MR), pc, kc);
                for (size_t jq = 0; jq < nb; jq++) /* B panel outer: it stays in L1 */
                    for (size_t iq = 0; iq < mb; iq++)
                        micro_kernel(kc, a + iq * kc * MR, bp + jq * kc * NR,
                                     C + (ic + iq * MR) * ldc + jc + jq * NR, ldc,
                                     min_size(MR, mc - iq * MR), min_size(NR, nc - jq * NR),
                                     alpha, bet);
            }
        }
    }
}

/* The threads split C into bands, each computed by gemm_serial with the thread's own packing
 * memory: no barriers, no shared buffers. Bands of rows (multiples of MR) when C is at least
 * as tall as wide, so that each thread packs only its rows of A and all of the (smaller) B;
 * else bands of columns (multiples of NR), each packing all of A. pack: per thread, an A block
 * then a B block. */
static void gemm_threads(float *pack, int ta, int tb, size_t M, size_t N, size_t K, float alpha,
                         const float *A, size_t lda, const float *B, size_t ldb, float beta,
                         float *C, size_t ldc, const float *pa, size_t mpad)
{
    const int by_rows = M >= N;
    const size_t unit = by_rows ? MR : NR, units = ((by_rows ? M : N) + unit - 1) / unit;
#pragma omp parallel
    {
        size_t nth = (size_t)omp_get_num_threads(), tid = (size_t)omp_get_thread_num();
        size_t u0 = units * tid / nth, u1 = units * (tid + 1) / nth;
        size_t total = by_rows ? M : N, lo = min_size(u0 * unit, total);
        size_t hi = min_size(u1 * unit, total);
        float *ap = pack + tid * PACK_FLOATS, *bp = ap + (size_t)MC * KC;
        if (hi > lo) {
            if (by_rows) /* a packed A's band starts at panel lo / MR of each slice */
                gemm_serial(ap, bp, ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + lo * lda,
                            lda, B, ldb, beta, C + lo * ldc, ldc, pa, mpad, lo);
            else
                gemm_serial(ap, bp, ta, tb, M, hi - lo, K, alpha, A, lda,
                            tb ? B + lo * ldb : B + lo, ldb, beta, C + lo, ldc, pa, mpad, 0);
        }
    }
}

/* Our path when the CPU has AVX-512F, the product is big enough to pay for packing and a
 * thread team (and not so thin that most of a 14 x 32 tile would be padding), and no other
 * thread holds the packing memory (then OpenBLAS takes the call). */
static int gemm_try_packed(int ta, int tb, size_t M, size_t N, size_t K, float alpha,
                           const float *A, size_t lda, const float *B, size_t ldb, float beta,
                           float *C, size_t ldc)
{
    if (gemm_path != GEMM_AUTO || !have_avx512()) return 0;
    if (M < MR / 2 || N < NR / 4 || K == 0 || (double)M * (double)N * (double)K < 32768.0)
        return 0;
    if (pthread_mutex_trylock(&pack_lock) != 0) return 0;
    if (!pack_alloc()) {
        pthread_mutex_unlock(&pack_lock);
        return 0;
    }
    gemm_threads(pack_mem, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, 0);
    pthread_mutex_unlock(&pack_lock);
    return 1;
}

int gemm_fast_available(void) { return have_avx512(); }

GemmPa gemm_pa_layout(size_t M, size_t K)
{
    GemmPa L = {0, 0, 0};
    if (gemm_path == GEMM_AUTO && have_avx512() && M >= MR / 2 && K > 0) {
        L.mr = MR;
        L.kc = KC;
        L.mpad = (M + MR - 1) / MR * MR;
    }
    return L;
}

void gemm_pa(const float *PA, GemmPa L, size_t M, size_t N, size_t K, float alpha, const float *B,
             size_t ldb, float beta, float *C, size_t ldc)
{
    if (M == 0 || N == 0) return;
    if (!L.mr) {
        gemm(0, 0, M, N, K, alpha, PA, K, B, ldb, beta, C, ldc);
        return;
    }
    /* the packed A fixes the path: wait for the packing memory rather than fall back */
    pthread_mutex_lock(&pack_lock);
    if (pack_alloc()) {
        gemm_threads(pack_mem, 0, 0, M, N, K, alpha, PA, K, B, ldb, beta, C, ldc, PA, L.mpad);
    } else { /* out of memory for 4 MiB of packing: unpack A, one row at a time, slowly */
        for (size_t i = 0; i < M; i++)
            for (size_t j = 0; j < N; j++) {
                float acc = 0.0f;
                for (size_t k = 0; k < K; k++)
                    acc += PA[gemm_pa_at(L, K, i, k)] * B[k * ldb + j];
                C[i * ldc + j] = alpha * acc + (beta != 0.0f ? beta * C[i * ldc + j] : 0.0f);
            }
    }
    pthread_mutex_unlock(&pack_lock);
}

#else
static int gemm_try_packed(int ta, int tb, size_t M, size_t N, size_t K, float alpha,
                           const float *A, size_t lda, const float *B, size_t ldb, float beta,
                           float *C, size_t ldc)
{
    return 0;
}

int gemm_fast_available(void) { return 0; }

GemmPa gemm_pa_layout(size_t M, size_t K)
{
    GemmPa L = {0, 0, 0};
    return L;
}

void gemm_pa(const float *PA, GemmPa L, size_t M, size_t N, size_t K, float alpha, const float *B,
             size_t ldb, float beta, float *C, size_t ldc)
{
    gemm(0, 0, M, N, K, alpha, PA, K, B, ldb, beta, C, ldc);
}
#endif

size_t gemm_pa_floats(GemmPa L, size_t M, size_t K) { return (L.mr ? L.mpad : M) * K; }

void gemm_pa_clear_pad(float *PA, GemmPa L, size_t M, size_t K)
{
    if (!L.mr || L.mpad == M) return;
    for (size_t k0 = 0; k0 < K; k0 += L.kc) {
        size_t kcs = K - k0 < L.kc ? K - k0 : L.kc;
        float *panel = PA + k0 * L.mpad + (M / L.mr) * kcs * L.mr; /* the last, partial panel */
        for (size_t k = 0; k < kcs; k++)
            for (size_t i = M % L.mr; i < L.mr; i++)
                panel[k * L.mr + i] = 0.0f;
    }
}

void gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
          const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    if (M == 0 || N == 0) return;
    if (!gemm_try_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        gemm_blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
