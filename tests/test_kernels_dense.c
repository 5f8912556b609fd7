/* Dense kernels, fast against reference on odd shapes. Exit status is the verdict.
 * Tolerances (stated per check):
 *   linear:      |fast - ref| <= 1e-6 * max(1, sum_i |x_i w_i| + |b|) per element
 *                (ref: double accumulation)
 *   layernorm:   |out - ref| <= 2e-6 * (1 + |ref|); mean, rstd: relative 1e-6
 *                (ref: double everywhere), including rows with a large common offset
 *   gelu, quick_gelu, silu: |fast - f(x) in double| <= 1e-6 * |f(x)| + 1e-7
 *   residual_add: exact
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* uniform in [-1, 1) */
static float urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rand_buf(size_t n, float scale, float offset)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = offset + scale * urand();
    return p;
}

static void check(int ok, const char *what, double worst)
{
    printf("%s %s (worst %.3g)\n", ok ? "ok  " : "FAIL", what, worst);
    if (!ok)
        failures++;
}

static void test_linear(size_t N, size_t IC, size_t OC, int with_bias)
{
    float *x = rand_buf(N * IC, 1.0f, 0.0f);
    float *w = rand_buf(OC * IC, 0.5f, 0.0f);
    float *b = with_bias ? rand_buf(OC, 1.0f, 0.0f) : NULL;
    float *y = rand_buf(N * OC, 100.0f, 0.0f); /* garbage: must be overwritten */
    float *r = rand_buf(N * OC, 1.0f, 0.0f);
    linear_forward(y, x, w, b, N, IC, OC);
    linear_forward_ref(r, x, w, b, N, IC, OC);
    double worst = 0.0; /* error / allowed */
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            double mag = b ? fabs(b[o]) : 0.0;
            for (size_t i = 0; i < IC; i++)
                mag += fabs((double)x[n * IC + i] * w[o * IC + i]);
            double tol = 1e-6 * (mag > 1.0 ? mag : 1.0);
            double e = fabs((double)y[n * OC + o] - r[n * OC + o]) / tol;
            if (!(e <= worst))
                worst = isnan(e) ? INFINITY : e;
        }
    char what[96];
    snprintf(what, sizeof what, "linear N=%zu IC=%zu OC=%zu bias=%d (error/tol)", N, IC, OC,
             with_bias);
    check(worst <= 1.0, what, worst);
    free(x), free(w), free(b), free(y), free(r);
}

static void test_layernorm(size_t N, size_t C, float offset, float eps)
{
    float *x = rand_buf(N * C, 3.0f, offset);
    float *w = rand_buf(C, 1.0f, 1.0f);
    float *b = rand_buf(C, 0.5f, 0.0f);
    float *y = rand_buf(N * C, 1.0f, 0.0f);
    float *mean = rand_buf(N, 1.0f, 0.0f), *rstd = rand_buf(N, 1.0f, 0.0f);
    double *ry = malloc(N * C * sizeof *ry), *rm = malloc(N * sizeof *rm),
           *rr = malloc(N * sizeof *rr);
    if (!ry || !rm || !rr)
        exit(2);
    layernorm_forward(y, mean, rstd, x, w, b, N, C, eps);
    layernorm_forward_ref(ry, rm, rr, x, w, b, N, C, eps);
    double worst = 0.0, worst_stat = 0.0;
    for (size_t i = 0; i < N * C; i++) {
        double e = fabs(y[i] - ry[i]) / (2e-6 * (1.0 + fabs(ry[i])));
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e;
    }
    for (size_t n = 0; n < N; n++) {
        double em = fabs(mean[n] - rm[n]) / (1e-6 * fabs(rm[n]) + 1e-12);
        double er = fabs(rstd[n] - rr[n]) / (1e-6 * fabs(rr[n]));
        double e = em > er ? em : er;
        if (!(e <= worst_stat))
            worst_stat = isnan(e) ? INFINITY : e;
    }
    char what[96];
    snprintf(what, sizeof what, "layernorm N=%zu C=%zu offset=%g out (error/tol)", N, C,
             (double)offset);
    check(worst <= 1.0, what, worst);
    snprintf(what, sizeof what, "layernorm N=%zu C=%zu offset=%g mean,rstd (error/tol)", N, C,
             (double)offset);
    check(worst_stat <= 1.0, what, worst_stat);
    free(x), free(w), free(b), free(y), free(mean), free(rstd), free(ry), free(rm), free(rr);
}

static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double quick_gelu_d(double x) { return x / (1.0 + exp(-1.702 * x)); }
static double silu_d(double x) { return x / (1.0 + exp(-x)); }

static void test_activation(const char *name, void (*fn)(float *, const float *, size_t),
                            double (*ref)(double))
{
    enum { N = 4099 };
    static float x[N], y[N];
    for (size_t i = 0; i < N; i++)
        x[i] = -12.0f + 24.0f * (float)i / (N - 1);
    const float extremes[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 100.0f, -100.0f, 1e30f, -1e30f};
    for (size_t i = 0; i < sizeof extremes / sizeof *extremes; i++)
        x[i * 500] = extremes[i];
    fn(y, x, N);
    double worst = 0.0;
    for (size_t i = 0; i < N; i++) {
        double r = ref(x[i]);
        double e = fabs(y[i] - r) / (1e-6 * fabs(r) + 1e-7);
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e;
    }
    char what[96];
    snprintf(what, sizeof what, "%s on [-12, 12] and extremes (error/tol)", name);
    check(worst <= 1.0, what, worst);
    /* in place */
    for (size_t i = 0; i < N; i++)
        y[i] = x[i];
    fn(y, y, N);
    double worst_inplace = 0.0;
    for (size_t i = 0; i < N; i++) {
        double e = fabs(y[i] - ref(x[i])) / (1e-6 * fabs(ref(x[i])) + 1e-7);
        if (!(e <= worst_inplace))
            worst_inplace = isnan(e) ? INFINITY : e;
    }
    snprintf(what, sizeof what, "%s in place (error/tol)", name);
    check(worst_inplace <= 1.0, what, worst_inplace);
}

static void test_residual(void)
{
    enum { N = 1001 };
    float *a = rand_buf(N, 1.0f, 0.0f), *b = rand_buf(N, 1.0f, 0.0f);
    float *c = malloc(N * sizeof *c);
    if (!c)
        exit(2);
    for (size_t i = 0; i < N; i++)
        c[i] = a[i];
    residual_add(c, b, N);
    int ok = 1;
    for (size_t i = 0; i < N; i++)
        ok &= c[i] == a[i] + b[i];
    check(ok, "residual_add (exact)", 0.0);
    free(a), free(b), free(c);
}

int main(void)
{
    test_linear(7, 13, 5, 1);
    test_linear(7, 13, 5, 0);
    test_linear(1, 1, 1, 1);
    test_linear(77, 129, 67, 1);
    test_linear(3, 1000, 17, 1);
    test_linear(154, 64, 256, 0);
    test_layernorm(7, 13, 0.0f, 1e-5f);
    test_layernorm(77, 64, 0.0f, 1e-5f);
    test_layernorm(5, 1024, 0.0f, 1e-5f);
    test_layernorm(9, 31, 1000.0f, 1e-5f);
    test_layernorm(3, 1, 0.0f, 1e-5f);
    test_activation("gelu", gelu_forward, gelu_d);
    test_activation("quick_gelu", quick_gelu_forward, quick_gelu_d);
    test_activation("silu", silu_forward, silu_d);
    test_residual();
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
