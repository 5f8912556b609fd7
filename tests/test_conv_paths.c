/* conv2d_forward's paths against a double-precision direct convolution: Winograd F(2x2, 3x3)
 * and F(4x4, 3x3) (3x3 stride 1, >= 64 channels, enough tiles; both tile sizes and U in parts
 * also forced through wino_conv), images grouped into one GEMM (N > 1, few pixels) and
 * chunked im2col, on odd sizes (partial tiles), asymmetric padding, batch > 1, partial last
 * groups/chunks, biasless; Winograd against im2col on SD-shaped layers; wino_plan's choice at
 * UNet/VAE shapes and scratch sizes. conv2d_backward's input gradient (Winograd with the
 * flipped weight for 3x3 stride 1, else col2im) against a double loop, accumulated onto a
 * random dinp, with and without dweight, whole and chunked.
 * Tolerance: relative L2 (||fast - ref|| / ||ref||) 1e-5 for every output tensor; the
 * Winograd-vs-im2col agreement on the VAE-shaped layer also 1e-5.
 * Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"
#include "winograd.h"

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

/* floats of one transform point's U [OC, C] in the layout gemm_pa takes here (padded panels
 * where the AVX-512 GEMM runs) */
static size_t u_point(size_t OC, size_t C) { return gemm_pa_floats(gemm_pa_layout(OC, C), OC, C); }

/* Winograd (big scratch) against im2col (scratch below 16 U points) on one VAE-shaped layer. */
static int agree(size_t C, size_t H, size_t W, size_t OC)
{
    size_t n_in = C * H * W, no = OC * H * W;
    float *inp = rand_f(n_in, 1.0f), *w = rand_f(OC * C * 9, 0.05f), *b = rand_f(OC, 1.0f);
    size_t big = 16 * u_point(OC, C) + 16 * (C + OC) * W * 4, small = 16 * OC * C - 1;
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

/* wino_conv forced to tile m with `rows` tile rows per chunk and U in `groups` parts (scratch
 * exactly U + rows tile rows, filled with garbage), against the double reference. */
static int check_tile(size_t m, size_t groups, size_t rows, size_t N, size_t C, size_t H, size_t W, size_t OC,
                      size_t pl, size_t ph, int bias)
{
    size_t OH = conv2d_out_size(H, 3, 1, pl, ph), OW = conv2d_out_size(W, 3, 1, pl, ph);
    size_t no = N * OC * OH * OW, X = (m + 2) * (m + 2), TW = (OW + m - 1) / m;
    if (rows > N * ((OH + m - 1) / m)) rows = N * ((OH + m - 1) / m); /* all tiles in one chunk */
    size_t scr_n = X / groups * u_point(OC, C) + rows * X * (C + OC) * TW;
    float *inp = rand_f(N * C * H * W, 1.0f), *w = rand_f(OC * C * 9, 0.2f);
    float *b = bias ? rand_f(OC, 1.0f) : NULL, *scr = rand_f(scr_n, 9.0f);
    float *out = rand_f(no, 9.0f);
    double *ref = malloc(no * sizeof *ref);
    if (!ref) exit(2);
    size_t got = groups == 1 ? wino_rows_for(m, N, C, OC, OH, OW, scr_n) : rows;
    WinoPlan p = {m, rows, groups};
    wino_conv(out, inp, w, b, scr, p, N, C, H, W, OC, pl, OH, OW, 0);
    conv_ref_double(ref, inp, w, b, N, C, H, W, OC, 3, 1, pl, OH, OW);
    double e = got == rows ? rel_l2(out, ref, no) : INFINITY;
    int ok = e <= 1e-5;
    printf("F(%zux%zu)    [%zu,%zu,%zu,%zu]->%zu pad %zu,%zu%s rows/chunk %zu: rel L2 %.2e (tol 1e-5) "
           "%s\n", m, m, N, C, H, W, OC, pl, ph, bias ? " bias" : "", rows, e, ok ? "ok" : "FAIL");
    if (groups > 1) printf("  (U in %zu parts)\n", groups);
    free(inp), free(w), free(b), free(scr), free(out), free(ref);
    return ok;
}

/* dinp [N, C, H, W] += conv2d backward-data of dout [N, OC, OH, OW], in double */
static void dx_ref_double(double *dx, const float *dout, const float *w, size_t N, size_t C,
                          size_t H, size_t W, size_t OC, size_t K, size_t s, size_t pl, size_t OH,
                          size_t OW)
{
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < OC; oc++)
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double g = dout[((n * OC + oc) * OH + oh) * OW + ow];
                    for (size_t c = 0; c < C; c++)
                        for (size_t kh = 0; kh < K; kh++)
                            for (size_t kw = 0; kw < K; kw++) {
                                long iy = (long)(oh * s + kh) - (long)pl;
                                long ix = (long)(ow * s + kw) - (long)pl;
                                if (iy < 0 || ix < 0 || iy >= (long)H || ix >= (long)W) continue;
                                dx[((n * C + c) * H + (size_t)iy) * W + (size_t)ix] +=
                                    g * w[((oc * C + c) * K + kh) * K + kw];
                            }
                }
}

/* conv2d_backward's dinp (accumulated onto random values; with dweight too when with_dw)
 * against dx_ref_double; want: the Winograd tile the shape and scratch should take (0 for
 * col2im or a 1x1 GEMM). */
static int check_dx(size_t want, size_t N, size_t C, size_t H, size_t W, size_t OC,
                    size_t K, size_t s, size_t pl, size_t ph, int with_dw, size_t scratch_floats)
{
    size_t OH = conv2d_out_size(H, K, s, pl, ph), OW = conv2d_out_size(W, K, s, pl, ph);
    size_t ni = N * C * H * W;
    float *inp = rand_f(ni, 1.0f), *w = rand_f(OC * C * K * K, 0.2f);
    float *dout = rand_f(N * OC * OH * OW, 1.0f), *dinp = rand_f(ni, 1.0f);
    float *dw = with_dw ? rand_f(OC * C * K * K, 0.0f) : NULL, *scr = rand_f(scratch_floats, 9.0f);
    double *ref = malloc(ni * sizeof *ref);
    if (!ref) exit(2);
    for (size_t i = 0; i < ni; i++)
        ref[i] = dinp[i];
    dx_ref_double(ref, dout, w, N, C, H, W, OC, K, s, pl, OH, OW);
    int rc = conv2d_backward(dinp, dw, NULL, dout, inp, w, scr, scratch_floats, N, C, H, W, OC, K,
                             s, pl, ph);
    WinoPlan p = {0, 0, 0};
    if (K == 3 && s == 1) p = wino_plan(N, OC, C, H, W, scratch_floats);
    double e = rc == 0 && p.m == want ? rel_l2(dinp, ref, ni) : INFINITY;
    int ok = e <= 1e-5;
    if (p.groups > 1) printf("  (U in %zu parts)\n", p.groups);
    printf("dX F(%zu) (want %zu) [%zu,%zu,%zu,%zu]->%zu K%zu s%zu pad %zu,%zu%s scr %zu: rel L2 %.2e "
           "(tol 1e-5) %s\n", p.m, want, N, C, H, W, OC, K, s, pl, ph, with_dw ? " +dW" : "",
           scratch_floats, e, ok ? "ok" : "FAIL");
    free(inp), free(w), free(dout), free(dinp), free(dw), free(scr), free(ref);
    return ok;
}

/* wino_plan picks tile `want` (0 = im2col) for this shape and scratch */
static int check_plan(size_t want, size_t want_groups, size_t N, size_t C, size_t OC, size_t OH, size_t OW,
                      size_t scratch_floats)
{
    WinoPlan p = wino_plan(N, C, OC, OH, OW, scratch_floats);
    int ok = p.m == want && (!want || p.groups == want_groups);
    printf("plan [%zu,%zu,%zu,%zu]->%zu scr %zu: F(%zu) rows %zu U parts %zu (want F(%zu), %zu) %s\n",
           N, C, OH, OW, OC, scratch_floats, p.m, p.rows, p.groups, want, want_groups,
           ok ? "ok" : "FAIL");
    return ok;
}

int main(void)
{
    int ok = 1;
    const size_t big = (size_t)1 << 22;
    /* small 3x3 stride-1 convs (below Winograd's tile minimum since F(4x4) came, so im2col or
     * grouped): odd and even sizes, asymmetric padding, batch, small scratch, biasless */
    ok &= check("3x3 s1", 1, 64, 17, 15, 64, 3, 1, 1, 1, 1, big);
    ok &= check("3x3 s1", 2, 64, 12, 12, 72, 3, 1, 1, 1, 1, big);
    ok &= check("3x3 s1", 3, 80, 11, 9, 64, 3, 1, 1, 1, 0, big);
    ok &= check("3x3 s1", 1, 64, 18, 17, 64, 3, 1, 0, 1, 1, big);
    ok &= check("3x3 s1", 2, 64, 13, 14, 64, 3, 1, 0, 0, 1, big);
    ok &= check("3x3 s1", 2, 64, 17, 15, 64, 3, 1, 1, 1, 1, 16 * 64 * 64 + 16 * 128 * 8);
    ok &= check("3x3 s1", 3, 64, 17, 15, 64, 3, 1, 1, 1, 1, 16 * 64 * 64 + 16 * 128 * 8 * 4);
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

    /* both tile sizes forced: odd sizes (partial tiles at the right/bottom), asymmetric
     * padding, batch > 1, one tile row per chunk, chunks splitting images, biasless, a row
     * wider than one transform segment (32 tiles) */
    for (size_t m = 2; m <= 4; m += 2) {
        ok &= check_tile(m, 1, 1, 1, 64, 17, 15, 64, 1, 1, 1);
        ok &= check_tile(m, 1, 3, 2, 64, 13, 19, 72, 1, 1, 0);
        ok &= check_tile(m, 1, 2, 3, 80, 11, 9, 64, 0, 1, 1);
        ok &= check_tile(m, 1, 5, 2, 64, 14, 14, 64, 0, 0, 1);
        ok &= check_tile(m, 1, 64, 2, 64, 9, 7, 96, 2, 2, 1);
        ok &= check_tile(m, 1, 4, 1, 64, 6, 141, 64, 1, 1, 1);
        ok &= check_tile(m, 1, 100, 2, 3, 10, 11, 5, 1, 1, 1);
        ok &= check_tile(m, 2, 100, 2, 64, 13, 19, 72, 1, 1, 1);
    }
    /* F(4x4) rows whose interior tiles are read in place, in several whole segments between
     * the border tiles (each padding, widths leaving a partial last tile or none) */
    ok &= check_tile(4, 1, 3, 1, 64, 22, 290, 64, 1, 1, 1);
    ok &= check_tile(4, 1, 2, 2, 64, 23, 263, 64, 0, 1, 1);
    ok &= check_tile(4, 1, 2, 1, 64, 20, 270, 64, 2, 2, 0);
    ok &= check_tile(4, 1, 2, 1, 64, 18, 256, 64, 0, 0, 1);
    ok &= check_tile(4, 1, 1, 1, 64, 10, 530, 64, 1, 1, 1); /* two interior segments */
    ok &= check_tile(2, 4, 100, 2, 64, 13, 19, 72, 1, 1, 0);
    ok &= check_tile(4, 3, 100, 2, 64, 13, 19, 72, 1, 1, 1);
    ok &= check_tile(4, 6, 100, 2, 64, 13, 19, 72, 0, 1, 1);
    ok &= check_tile(4, 6, 3, 3, 64, 17, 15, 64, 1, 1, 1); /* parts and several chunks */
    /* the plan: F(4x4) with enough tiles and scratch, F(2x2) with few tiles or less scratch,
     * im2col below 64 channels; then conv2d_forward through each */
    ok &= check_plan(4, 1, 2, 320, 320, 64, 64, (size_t)24 << 20);
    ok &= check_plan(4, 1, 2, 640, 640, 32, 32, (size_t)24 << 20);
    ok &= check_plan(4, 2, 2, 1280, 640, 32, 32, (size_t)24 << 20);
    ok &= check_plan(0, 1, 2, 640, 640, 16, 16, (size_t)24 << 20);
    ok &= check_plan(2, 1, 4, 640, 640, 16, 16, (size_t)24 << 20);
    ok &= check_plan(2, 2, 4, 1280, 1280, 16, 16, (size_t)24 << 20);
    ok &= check_plan(0, 4, 4, 2560, 1280, 16, 16, (size_t)24 << 20);
    ok &= check_plan(0, 1, 2, 1280, 1280, 8, 8, (size_t)24 << 20);
    ok &= check_plan(4, 1, 1, 512, 512, 64, 64, (size_t)1 << 24);
    ok &= check_plan(0, 1, 2, 32, 64, 64, 64, (size_t)1 << 24);
    ok &= check_plan(4, 1, 2, 64, 64, 37, 41, big);
    ok &= check_plan(4, 1, 1, 96, 64, 45, 40, 36 * u_point(64, 96) + 36 * 160 * 10 * 10);
    ok &= check("wino4", 2, 64, 37, 41, 64, 3, 1, 1, 1, 1, big);
    ok &= check("wino4", 1, 96, 45, 40, 64, 3, 1, 1, 1, 0, 36 * u_point(64, 96) + 36 * 160 * 10 * 10);

    /* backward data: Winograd (3x3 stride 1, >= 64 channels: F(4x4), F(2x2), chunked, with
     * dweight, pad 0 and asymmetric pad), col2im (stride 2, narrow, K 1, scratch too small) */
    ok &= check_dx(4, 2, 64, 37, 41, 72, 3, 1, 1, 1, 0, big);
    ok &= check_dx(4, 1, 96, 40, 45, 64, 3, 1, 1, 1, 1, 36 * 96 * 64 + 36 * 160 * 12 * 9);
    ok &= check_dx(4, 1, 64, 40, 40, 64, 3, 1, 1, 1, 0, 540000); /* U in 2 parts */
    ok &= check_dx(2, 2, 64, 24, 23, 64, 3, 1, 1, 1, 0, big);
    ok &= check_dx(2, 3, 64, 17, 19, 80, 3, 1, 1, 1, 1, 16 * 64 * 80 + 16 * 144 * 10 * 9);
    ok &= check_dx(4, 2, 64, 40, 38, 64, 3, 1, 0, 0, 0, big);
    ok &= check_dx(4, 1, 64, 41, 42, 64, 3, 1, 0, 1, 1, big);
    ok &= check_dx(4, 1, 64, 41, 42, 64, 3, 1, 2, 1, 0, big);
    ok &= check_dx(0, 2, 64, 13, 11, 64, 3, 2, 1, 1, 1, big);
    ok &= check_dx(0, 2, 5, 13, 11, 7, 3, 1, 1, 1, 0, big);
    ok &= check_dx(0, 2, 64, 9, 11, 64, 3, 1, 1, 1, 0, 64 * 9 * 11 * 2 + 5);
    ok &= check_dx(0, 2, 64, 9, 11, 72, 1, 1, 0, 0, 1, big);
    return ok ? 0 : 1;
}
