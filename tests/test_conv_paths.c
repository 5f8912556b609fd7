/* conv2d_forward's three paths against a double-precision direct convolution: Winograd
 * F(2x2, 3x3) (3x3 stride 1, >= 64 channels, scratch for 16*OC*C weights), images grouped
 * into one GEMM (N > 1, few pixels) and chunked im2col (scratch too small for the others),
 * on odd sizes, asymmetric padding and partial last groups/chunks; and that Winograd agrees
 * with im2col on an SD-shaped layer. Each case prints its path choice implicitly through
 * the scratch it gets.
 * Tolerance: relative L2 (||fast - ref|| / ||ref||) 1e-5 for every output tensor; the
 * Winograd-vs-im2col agreement on the VAE-shaped layer also 1e-5.
 * Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *alloc_f(size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return x;
}

static float *rand_f(size_t n, float scale)
{
    float *x = alloc_f(n);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rnd();
    return x;
}

/* ref [N, OC, OH, OW] in double */
static void conv_ref_double(double *ref, const float *inp, const float *w, const float *b,
                            size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K,
                            size_t s, size_t pl, size_t OH, size_t OW)
{
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < OC; oc++)
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double acc = b ? b[oc] : 0.0;
                    for (size_t c = 0; c < C; c++)
                        for (size_t kh = 0; kh < K; kh++)
                            for (size_t kw = 0; kw < K; kw++) {
                                long iy = (long)(oh * s + kh) - (long)pl;
                                long ix = (long)(ow * s + kw) - (long)pl;
                                if (iy < 0 || ix < 0 || iy >= (long)H || ix >= (long)W) continue;
                                acc += (double)w[((oc * C + c) * K + kh) * K + kw] *
                                       inp[((n * C + c) * H + (size_t)iy) * W + (size_t)ix];
                            }
                    ref[((n * OC + oc) * OH + oh) * OW + ow] = acc;
                }
}

static double rel_l2(const float *a, const double *r, size_t n)
{
    double e = 0.0, t = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - r[i];
        if (isnan(a[i])) return INFINITY;
        e += d * d;
        t += r[i] * r[i];
    }
    return t > 0.0 ? sqrt(e / t) : sqrt(e);
}

static int check(const char *path, size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K,
                 size_t s, size_t pl, size_t ph, int bias, size_t scratch_floats)
{
    size_t OH = conv2d_out_size(H, K, s, pl, ph), OW = conv2d_out_size(W, K, s, pl, ph);
    size_t no = N * OC * OH * OW;
    float *inp = rand_f(N * C * H * W, 1.0f), *w = rand_f(OC * C * K * K, 0.2f);
    float *b = bias ? rand_f(OC, 1.0f) : NULL, *scr = rand_f(scratch_floats, 9.0f);
    float *out = rand_f(no, 9.0f);
    double *ref = malloc(no * sizeof *ref);
    if (!ref) exit(2);
    int rc = conv2d_forward(out, inp, w, b, scr, scratch_floats, N, C, H, W, OC, K, s, pl, ph);
    conv_ref_double(ref, inp, w, b, N, C, H, W, OC, K, s, pl, OH, OW);
    double e = rc == 0 ? rel_l2(out, ref, no) : INFINITY;
    int ok = e <= 1e-5;
    printf("%-9s [%zu,%zu,%zu,%zu]->%zu K%zu s%zu pad %zu,%zu%s scr %zu: rel L2 %.2e (tol 1e-5) %s\n",
           path, N, C, H, W, OC, K, s, pl, ph, bias ? " bias" : "", scratch_floats, e,
           ok ? "ok" : "FAIL");
    free(inp), free(w), free(b), free(scr), free(out), free(ref);
    return ok;
}

/* Winograd (big scratch) against im2col (scratch below 16*OC*C) on one VAE-shaped layer. */
static int agree(size_t C, size_t H, size_t W, size_t OC)
{
    size_t n_in = C * H * W, no = OC * H * W;
    float *inp = rand_f(n_in, 1.0f), *w = rand_f(OC * C * 9, 0.05f), *b = rand_f(OC, 1.0f);
    size_t big = 16 * OC * C + 16 * (C + OC) * W * 4, small = 16 * OC * C - 1;
    float *scr = alloc_f(big), *o1 = alloc_f(no), *o2 = alloc_f(no);
    int rc = conv2d_forward(o1, inp, w, b, scr, big, 1, C, H, W, OC, 3, 1, 1, 1);
    rc |= conv2d_forward(o2, inp, w, b, scr, small, 1, C, H, W, OC, 3, 1, 1, 1);
    double e = 0.0, t = 0.0;
    for (size_t i = 0; i < no; i++) {
        double d = (double)o1[i] - o2[i];
        e += d * d;
        t += (double)o2[i] * o2[i];
    }
    e = rc ? INFINITY : sqrt(e / t);
    int ok = e <= 1e-5;
    printf("winograd vs im2col [1,%zu,%zu,%zu]->%zu: rel L2 %.2e (tol 1e-5) %s\n", C, H, W, OC, e,
           ok ? "ok" : "FAIL");
    free(inp), free(w), free(b), free(scr), free(o1), free(o2);
    return ok;
}

int main(void)
{
    int ok = 1;
    const size_t big = (size_t)1 << 22;
    /* Winograd: odd and even sizes (partial tiles), asymmetric padding, batch, chunks of one
     * tile row (scratch = U + one tile row), several tile rows, biasless */
    ok &= check("winograd", 1, 64, 17, 15, 64, 3, 1, 1, 1, 1, big);
    ok &= check("winograd", 2, 64, 12, 12, 72, 3, 1, 1, 1, 1, big);
    ok &= check("winograd", 3, 80, 11, 9, 64, 3, 1, 1, 1, 0, big);
    ok &= check("winograd", 1, 64, 18, 17, 64, 3, 1, 0, 1, 1, big);
    ok &= check("winograd", 2, 64, 13, 14, 64, 3, 1, 0, 0, 1, big);
    ok &= check("winograd", 2, 64, 17, 15, 64, 3, 1, 1, 1, 1, 16 * 64 * 64 + 16 * 128 * 8);
    ok &= check("winograd", 3, 64, 17, 15, 64, 3, 1, 1, 1, 1, 16 * 64 * 64 + 16 * 128 * 8 * 4);
    /* grouped images: 3x3 stride 1 and 2, 1x1; groups of 2 with a partial last group */
    ok &= check("grouped", 2, 5, 4, 6, 7, 3, 1, 1, 1, 1, big);
    ok &= check("grouped", 5, 5, 4, 6, 7, 3, 2, 1, 1, 1, (5 * 9 + 7) * 12 * 2 + 3);
    ok &= check("grouped", 3, 6, 5, 5, 4, 1, 1, 0, 0, 1, big);
    ok &= check("grouped", 5, 6, 5, 5, 4, 1, 1, 0, 0, 0, (6 + 4) * 25 * 2);
    ok &= check("grouped", 3, 70, 4, 4, 70, 3, 1, 1, 1, 1, 70 * 9 * 16 * 3 + 70 * 48);
    /* chunked im2col: one image, stride 1 and 2, rows of partial chunks */
    ok &= check("im2col", 1, 5, 9, 11, 6, 3, 1, 1, 1, 1, 5 * 9 * 11 * 2 + 3);
    ok &= check("im2col", 2, 5, 9, 11, 6, 3, 2, 0, 1, 1, 5 * 9 * 7);
    ok &= check("im2col", 1, 64, 9, 11, 64, 3, 1, 1, 1, 1, 64 * 9 * 11 * 3);
    ok &= agree(128, 64, 64, 128);
    ok &= agree(256, 32, 40, 128);
    return ok ? 0 : 1;
}
