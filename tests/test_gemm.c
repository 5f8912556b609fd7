/* gemm (kernels/gemm.c) against a double-accumulating reference, on odd shapes, every
 * transpose pair, alpha/beta, leading dimensions wider than the rows, and blocks that cross the
 * kernel's K slice, B block and A block; both paths: the fast kernel (where this CPU has it)
 * and OpenBLAS (GEMM_BLAS); and gemm_pa with its left operand packed in gemm_pa_layout's
 * layout (the kernel's panels, or plain under GEMM_BLAS). Exit status is the verdict.
 * Tolerance per element: |gemm - ref| <= 2e-6 * (sum_k |alpha a_ik b_kj| + |beta c_ij|) + 1e-30,
 * i.e. a few float roundings of the absolute sum; beta == 0 must ignore NaN in C, and
 * elements outside the M x N window (padding of ldc) must be untouched.
 * `test_gemm --bench` also prints GFLOP/s of both paths on 2048^3.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static float urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *alloc_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void check(const char *path, int ta, int tb, size_t M, size_t N, size_t K, float alpha,
                  float beta, size_t pad)
{
    size_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    size_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
    float *A = alloc_floats(ar * lda), *B = alloc_floats(br * ldb), *C = alloc_floats(M * ldc);
    float *C0 = alloc_floats(M * ldc);
    for (size_t i = 0; i < ar * lda; i++)
        A[i] = urand();
    for (size_t i = 0; i < br * ldb; i++)
        B[i] = urand();
    for (size_t i = 0; i < M * ldc; i++)
        C[i] = beta == 0.0f && i % 7 == 3 ? NAN : urand();
    memcpy(C0, C, M * ldc * sizeof *C);
    gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double worst = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < ldc; j++) {
            float got = C[i * ldc + j];
            if (j >= N) { /* padding: untouched */
                if (memcmp(&got, &C0[i * ldc + j], sizeof got) != 0) bad++;
                continue;
            }
            double s = 0.0, mag = 0.0;
            for (size_t k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k];
                double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b;
                mag += fabs(a * b);
            }
            double ref = alpha * s, c0 = beta == 0.0f ? 0.0 : (double)C0[i * ldc + j];
            ref += beta * c0;
            mag = fabs(alpha) * mag + fabs(beta * c0);
            double err = fabs((double)got - ref), tol = 2e-6 * mag + 1e-30;
            if (!(err <= tol)) bad++;
            if (mag > 0 && err / mag > worst) worst = err / mag;
        }
    }
    if (bad) {
        failures++;
        printf("FAIL %s ta=%d tb=%d M=%zu N=%zu K=%zu alpha=%g beta=%g pad=%zu: %zu bad, worst "
               "%.3g\n",
               path, ta, tb, M, N, K, alpha, beta, pad, bad, worst);
    }
    free(A);
    free(B);
    free(C);
    free(C0);
}

/* gemm_pa: A packed with gemm_pa_at (padding cleared by gemm_pa_clear_pad over a NaN-filled
 * buffer, so a pad the kernel reads would poison C), against the same reference. */
static void check_pa(const char *path, size_t M, size_t N, size_t K, float alpha, float beta)
{
    GemmPa L = gemm_pa_layout(M, K);
    size_t n = gemm_pa_floats(L, M, K), ldc = N + 3;
    float *A = alloc_floats(M * K), *B = alloc_floats(K * N), *PA = alloc_floats(n);
    float *C = alloc_floats(M * ldc), *C0 = alloc_floats(M * ldc);
    for (size_t i = 0; i < M * K; i++)
        A[i] = urand();
    for (size_t i = 0; i < K * N; i++)
        B[i] = urand();
    for (size_t i = 0; i < M * ldc; i++)
        C0[i] = C[i] = urand();
    for (size_t i = 0; i < n; i++)
        PA[i] = NAN;
    gemm_pa_clear_pad(PA, L, M, K);
    for (size_t i = 0; i < M; i++)
        for (size_t k = 0; k < K; k++)
            PA[gemm_pa_at(L, K, i, k)] = A[i * K + k];
    gemm_pa(PA, L, M, N, K, alpha, B, N, beta, C, ldc);
    size_t bad = 0;
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < ldc; j++) {
            if (j >= N) {
                bad += C[i * ldc + j] != C0[i * ldc + j];
                continue;
            }
            double s = 0.0, mag = 0.0;
            for (size_t k = 0; k < K; k++) {
                s += (double)A[i * K + k] * B[k * N + j];
                mag += fabs((double)A[i * K + k] * B[k * N + j]);
            }
            double ref = alpha * s + beta * (double)C0[i * ldc + j];
            mag = fabs(alpha) * mag + fabs(beta * C0[i * ldc + j]);
            if (!(fabs(C[i * ldc + j] - ref) <= 2e-6 * mag + 1e-30)) bad++;
        }
    if (bad) {
        failures++;
        printf("FAIL %s gemm_pa (mr %zu) M=%zu N=%zu K=%zu: %zu bad\n", path, L.mr, M, N, K, bad);
    }
    free(A);
    free(B);
    free(PA);
    free(C);
    free(C0);
}

static void check_all(const char *path)
{
    static const size_t dims[][3] = {
        {1, 1, 1},     {7, 40, 9},     {14, 32, 256},   {15, 33, 257},  {13, 31, 1},
        {29, 100, 77}, {336, 64, 256}, {337, 70, 513},  {50, 4097, 20}, {700, 45, 300},
        {64, 4200, 3}, {8, 8, 2000},   {100, 1, 64},    {1, 300, 50},   {350, 129, 640},
    };
    static const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {-0.5f, 2.0f}, {2.0f, -1.0f}};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (int t = 0; t < 4; t++)
            check(path, t & 1, t >> 1, dims[d][0], dims[d][1], dims[d][2], ab[(d + t) % 4][0],
                  ab[(d + t) % 4][1], (d + t) % 3 == 0 ? 0 : 5);
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        check_pa(path, dims[d][0], dims[d][1], dims[d][2], ab[d % 4][0], ab[d % 4][1]);
}

static double seconds(void) { return omp_get_wtime(); }

static void bench(void)
{
    size_t n = 2048;
    float *A = alloc_floats(n * n), *B = alloc_floats(n * n), *C = alloc_floats(n * n);
    for (size_t i = 0; i < n * n; i++)
        A[i] = urand(), B[i] = urand();
    for (int path = 0; path < 2; path++) {
        gemm_set_path(path ? GEMM_BLAS : GEMM_AUTO);
        double best = 1e30;
        for (int r = 0; r < 4; r++) {
            double t0 = seconds();
            gemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
            double t = seconds() - t0;
            if (r > 0 && t < best) best = t;
        }
        printf("%s: 2048^3 in %.4f s, %.1f GFLOP/s\n", path ? "openblas" : "gemm auto", best,
               2.0 * n * n * n / best * 1e-9);
    }
    free(A);
    free(B);
    free(C);
}

int main(int argc, char **argv)
{
    int fast = gemm_fast_available();
    printf("fast kernel on this CPU: %s\n", fast ? "yes" : "no (OpenBLAS checked twice)");
    check_all("auto");
    gemm_set_path(GEMM_BLAS);
    check_all("openblas");
    gemm_set_path(GEMM_AUTO);
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) bench();
    if (failures) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
