/* 2-D convolution (torch.nn.Conv2d, NCHW) as chunked im2col + sgemm (darknet style).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * For one image and a chunk of output pixels P = p0 .. p1-1:
 *   col [C*K*K, |P|]        = im2col(inp [C, H, W])
 *   out [OC, P] (ld OH*OW)  = weight [OC, C*K*K] @ col + bias [OC]
 * The chunk is as many whole output rows as the caller's scratch holds, so the VAE's large
 * layers (C*K*K*OH*OW floats would be 1-2 GB at 512x512) run in a bounded buffer. A 1x1,
 * stride-1, unpadded convolution is a plain GEMM over the image and needs no im2col.
 *
 * Two faster forward paths, chosen by shape and scratch (conv2d_forward):
 *   - Winograd F(4x4, 3x3) or F(2x2, 3x3) (winograd.c) for 3x3 stride-1 convs with >= 64
 *     channels in and out when the scratch holds the 36*OC*C (16*OC*C) transformed weights
 *     and a row of tiles (wino_plan);
 *   - several images im2col'd side by side into one GEMM when each has few output pixels
 *     (UNet 8x8/16x16 levels), so sgemm packs the weights once per group (conv_group).
 * Threads: im2col and the bias fill run in OpenMP loops; gemm (kernels/gemm.c: an AVX-512
 * kernel, or OpenBLAS) is called outside any parallel region and threads itself.
 *
 * Backward, over the same chunks of output pixels and the same scratch:
 *   dW [OC, C*K*K] += dout [OC, P] @ col [C*K*K, P]^T   (col = conv2d_im2col again; the
 *                     contraction runs over the chunk's pixels)
 *   dcol [C*K*K, P] = weight^T @ dout,  dX += col2im(dcol)  (scatter-add, parallel over
 *                     input channels, each owning its plane); for 3x3 stride-1 convs that
 *                     wino_plan takes, dX += conv3x3(dout, flipped weight^T) by Winograd
 *                     instead (top/left padding 2 - pad_lo; whole images, own scratch use)
 *   db [OC] += sum over images and pixels of dout.
 * LoRA for convolutions (lora_conv2d_*) is at the end. */
#include "kernels.h"
#include "winograd.h"

#include <string.h>

size_t conv2d_out_size(size_t H, size_t K, size_t stride, size_t pad_lo, size_t pad_hi)
{
    size_t padded = H + pad_lo + pad_hi;
    if (stride == 0 || padded < K) return 0;
    return (padded - K) / stride + 1;
}

/* First t in [0, n) with (ow + t) * stride + k >= lim (n if none). */
static size_t first_at_least(size_t ow, size_t stride, size_t k, size_t lim, size_t n)
{
    size_t x = ow * stride + k;
    if (x >= lim) return 0;
    size_t t = (lim - x + stride - 1) / stride;
    return t < n ? t : n;
}

/* dst [np] (row r = (c*K + kh)*K + kw of one image's im2col chunk p0 .. p1-1) from img
 * [H, W]: each output row is a zero prefix, a (strided) copy and a zero suffix. */
static void im2col_row(float *dst, const float *img, size_t H, size_t W, size_t K, size_t r,
                       size_t stride, size_t pad, size_t OW, size_t p0, size_t p1)
{
    size_t kh = (r / K) % K, kw = r % K;
    size_t p = p0;
    while (p < p1) {
        size_t oh = p / OW, ow = p % OW;
        size_t n = OW - ow < p1 - p ? OW - ow : p1 - p; /* pixels left in this row */
        /* iy = oh*stride + kh - pad, in unsigned arithmetic via the shifted value */
        size_t iys = oh * stride + kh;
        if (iys < pad || iys - pad >= H) {
            memset(dst, 0, n * sizeof(float));
        } else {
            const float *src = img + (iys - pad) * W;
            /* valid t: pad <= (ow + t)*stride + kw < W + pad */
            size_t lo = first_at_least(ow, stride, kw, pad, n);
            size_t hi = first_at_least(ow, stride, kw, W + pad, n);
            if (hi < lo) hi = lo;
            memset(dst, 0, lo * sizeof(float));
            if (stride == 1) {
                if (hi > lo) memcpy(dst + lo, src + ow + lo + kw - pad, (hi - lo) * sizeof(float));
            } else {
                for (size_t t = lo; t < hi; t++)
                    dst[t] = src[(ow + t) * stride + kw - pad];
            }
            memset(dst + hi, 0, (n - hi) * sizeof(float));
        }
        dst += n;
        p += n;
    }
}

/* Row r = (c*K + kh)*K + kw of col: for output pixel p = oh*OW + ow the input sample is
 * (iy, ix) = (oh*stride + kh - pad, ow*stride + kw - pad). Walked one output row at a time
 * so each row is a zero prefix, a contiguous (stride 1) copy and a zero suffix. */
void conv2d_im2col(float *col, const float *inp, size_t C, size_t H, size_t W, size_t K,
                   size_t stride, size_t pad, size_t OW, size_t p0, size_t p1)
{
    size_t rows = C * K * K, np = p1 - p0;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        im2col_row(col + r * np, inp + (r / (K * K)) * H * W, H, W, K, r, stride, pad, OW, p0,
                   p1);
}

/* col [C*K*K, G*P]: image g of inp [G, C, H, W] in columns g*P .. g*P + P-1 (all P pixels). */
static void im2col_images(float *col, const float *inp, size_t G, size_t C, size_t H, size_t W,
                          size_t K, size_t stride, size_t pad, size_t OW, size_t P)
{
    size_t rows = C * K * K;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < G * rows; i++) {
        size_t g = i / rows, r = i % rows;
        im2col_row(col + r * G * P + g * P, inp + (g * C + r / (K * K)) * H * W, H, W, K, r,
                   stride, pad, OW, 0, P);
    }
}

/* out [G, OC, P] = tmp [OC, G*P] + bias [OC] (bias may be NULL). */
static void scatter_images(float *out, const float *tmp, const float *bias, size_t G, size_t OC,
                           size_t P)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < G * OC; i++) {
        size_t g = i / OC, oc = i % OC;
        float b = bias ? bias[oc] : 0.0f;
        const float *s = tmp + oc * G * P + g * P;
        float *o = out + i * P;
        for (size_t p = 0; p < P; p++)
            o[p] = s[p] + b;
    }
}

/* dst [C, G*P] = src [G, C, P] (images side by side). */
static void gather_images(float *dst, const float *src, size_t G, size_t C, size_t P)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < G * C; i++) {
        size_t g = i / C, c = i % C;
        memcpy(dst + c * G * P + g * P, src + i * P, P * sizeof(float));
    }
}

/* Images per GEMM when each has few output pixels: sgemm packs the weights once per call,
 * which at P = 64 (8x8 UNet levels, C*K*K up to 23040) costs as much as the multiply. Groups
 * of G images share one GEMM through scratch holding the [rows, G*P] input matrix and the
 * [OC, G*P] result; 1 (no grouping) when N is 1, P is large, or scratch holds fewer than 2. */
#define CONV_GROUP_PIXELS 4096

static size_t conv_group(size_t N, size_t P, size_t rows, size_t OC, size_t scratch_floats)
{
    if (N < 2 || P >= CONV_GROUP_PIXELS) return 1;
    size_t per;
    if (__builtin_mul_overflow(rows + OC, P, &per)) return 1;
    size_t g = scratch_floats / per;
    size_t want = (CONV_GROUP_PIXELS * 4 + P - 1) / P; /* up to ~16k pixels per GEMM */
    if (g > want) g = want;
    if (g > N) g = N;
    return g < 2 ? 1 : g;
}

/* out [OC, np] (row stride ld) = bias [OC] broadcast, or 0. */
static void conv2d_fill_bias(float *out, const float *bias, size_t OC, size_t np, size_t ld)
{
#pragma omp parallel for schedule(static)
    for (size_t oc = 0; oc < OC; oc++) {
        float b = bias ? bias[oc] : 0.0f;
        float *o = out + oc * ld;
        for (size_t p = 0; p < np; p++)
            o[p] = b;
    }
}

int conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                   float *scratch, size_t scratch_floats, size_t N, size_t C, size_t H, size_t W,
                   size_t OC, size_t K, size_t stride, size_t pad_lo, size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    size_t P = OH * OW, rows = C * K * K;
    int direct = K == 1 && stride == 1 && pad_lo == 0 && pad_hi == 0;
    if (!direct && scratch_floats < rows) return -1;
    if (N == 0 || OC == 0 || P == 0) return 0;
    if (C == 0) {
        for (size_t n = 0; n < N; n++)
            conv2d_fill_bias(out + n * OC * P, bias, OC, P, P);
        return 0;
    }

    if (K == 3 && stride == 1 && pad_lo <= 2) {
        WinoPlan wp = wino_plan(N, C, OC, OH, OW, scratch_floats);
        if (wp.m) {
            wino_conv(out, inp, weight, bias, scratch, wp, N, C, H, W, OC, pad_lo, OH, OW, 0);
            return 0;
        }
    }

    size_t G = conv_group(N, P, direct ? C : rows, OC, scratch_floats);
    if (G > 1) {
        /* groups of G images: col [rows, G*P] (or the gathered inputs for a 1x1), then
         * tmp [OC, G*P] = weight @ col, out [n .. n+G-1] = tmp + bias */
        size_t kr = direct ? C : rows;
        float *col = scratch, *tmp = scratch + kr * G * P;
        for (size_t n = 0; n < N; n += G) {
            size_t g = N - n < G ? N - n : G;
            if (direct)
                gather_images(col, inp + n * C * H * W, g, C, P);
            else
                im2col_images(col, inp + n * C * H * W, g, C, H, W, K, stride, pad_lo, OW, P);
            gemm(0, 0, OC, (g * P), kr, 1.0f, weight, kr, col, (g * P), 0.0f, tmp, (g * P));
            scatter_images(out + n * OC * P, tmp, bias, g, OC, P);
        }
        return 0;
    }

    if (direct) {
        /* out [n] [OC, HW] = weight [OC, C] @ inp [n] [C, HW] + bias */
        for (size_t n = 0; n < N; n++) {
            float *o = out + n * OC * P;
            conv2d_fill_bias(o, bias, OC, P, P);
            gemm(0, 0, OC, P, C, 1.0f, weight, C, inp + n * C * H * W, P, 1.0f, o, P);
        }
        return 0;
    }

    /* pixels per chunk: whole output rows when possible */
    size_t chunk = scratch_floats / rows;
    if (chunk > P) chunk = P;
    if (chunk >= OW) chunk -= chunk % OW;
    for (size_t n = 0; n < N; n++) {
        const float *img = inp + n * C * H * W;
        float *o = out + n * OC * P;
        for (size_t p0 = 0; p0 < P; p0 += chunk) {
            size_t np = P - p0 < chunk ? P - p0 : chunk;
            conv2d_im2col(scratch, img, C, H, W, K, stride, pad_lo, OW, p0, p0 + np);
            conv2d_fill_bias(o + p0, bias, OC, np, P);
            gemm(0, 0, OC, np, rows, 1.0f, weight, rows, scratch, np, 1.0f, o + p0, P);
        }
    }
    return 0;
}

/* Adjoint of conv2d_im2col: dinp [c, iy, ix] += col [r, p - p0] for every (r, p) that
 * im2col read from (iy, ix). Parallel over input channels c (rows c*K*K .. c*K*K + K*K - 1
 * all land in plane c, so no two threads write the same value). */
void conv2d_col2im_add(float *dinp, const float *col, size_t C, size_t H, size_t W, size_t K,
                       size_t stride, size_t pad, size_t OW, size_t p0, size_t p1)
{
    size_t np = p1 - p0;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < C; c++) {
        float *img = dinp + c * H * W;
        for (size_t kk = 0; kk < K * K; kk++) {
            size_t kh = kk / K, kw = kk % K;
            const float *src = col + (c * K * K + kk) * np;
            size_t p = p0;
            while (p < p1) {
                size_t oh = p / OW, ow = p % OW;
                size_t n = OW - ow < p1 - p ? OW - ow : p1 - p;
                size_t iys = oh * stride + kh;
                if (iys >= pad && iys - pad < H) {
                    float *dst = img + (iys - pad) * W;
                    for (size_t t = 0; t < n; t++) {
                        size_t ixs = (ow + t) * stride + kw;
                        if (ixs >= pad && ixs - pad < W) dst[ixs - pad] += src[t];
                    }
                }
                src += n;
                p += n;
            }
        }
    }
}

int conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                    const float *weight, float *scratch, size_t scratch_floats, size_t N, size_t C,
                    size_t H, size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo,
                    size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    size_t P = OH * OW, rows = C * K * K;
    int direct = K == 1 && stride == 1 && pad_lo == 0 && pad_hi == 0;
    if (!direct && scratch_floats < rows && (dinp || dweight)) return -1;
    if (N == 0 || OC == 0 || P == 0) return 0;

    if (dbias) {
#pragma omp parallel for schedule(static)
        for (size_t oc = 0; oc < OC; oc++) {
            double acc = 0.0;
            for (size_t n = 0; n < N; n++) {
                const float *g = dout + (n * OC + oc) * P;
                float part[8] = {0}; /* 8 interleaved partial sums, then double */
                size_t p = 0;
                for (; p + 8 <= P; p += 8)
                    for (int t = 0; t < 8; t++)
                        part[t] += g[p + t];
                for (; p < P; p++)
                    acc += g[p];
                for (int t = 0; t < 8; t++)
                    acc += part[t];
            }
            dbias[oc] += (float)acc;
        }
    }
    if (C == 0 || (!dinp && !dweight)) return 0;

    if (dinp && K == 3 && stride == 1 && pad_lo <= 2 && pad_hi <= 2) {
        /* dinp [n, c, iy, ix] += sum over (oc, kh, kw) of dout [n, oc, iy + pad_lo - kh,
         * ix + pad_lo - kw] weight [oc, c, kh, kw]: a 3x3 correlation of dout with
         * W' [c, oc, kh, kw] = weight [oc, c, 2-kh, 2-kw] and top/left padding 2 - pad_lo */
        WinoPlan wp = wino_plan(N, OC, C, H, W, scratch_floats);
        if (wp.m) {
            wino_conv(dinp, dout, weight, NULL, scratch, wp, N, OC, OH, OW, C, 2 - pad_lo, H, W,
                      WINO_FLIP | WINO_ACCUMULATE);
            dinp = NULL;
            if (!dweight) return 0;
        }
    }

    if (direct) {
        for (size_t n = 0; n < N; n++) {
            const float *g = dout + n * OC * P;
            if (dweight)
                gemm(0, 1, OC, C, P, 1.0f, g, P, inp + n * C * P, P, 1.0f, dweight, C);
            if (dinp)
                gemm(1, 0, C, P, OC, 1.0f, weight, C, g, P, 1.0f, dinp + n * C * P, P);
        }
        return 0;
    }

    size_t chunk = scratch_floats / rows;
    if (chunk > P) chunk = P;
    if (chunk >= OW) chunk -= chunk % OW;
    for (size_t n = 0; n < N; n++) {
        const float *img = inp + n * C * H * W;
        const float *g = dout + n * OC * P;
        for (size_t p0 = 0; p0 < P; p0 += chunk) {
            size_t np = P - p0 < chunk ? P - p0 : chunk;
            if (dweight) {
                conv2d_im2col(scratch, img, C, H, W, K, stride, pad_lo, OW, p0, p0 + np);
                gemm(0, 1, OC, rows, np, 1.0f, g + p0, P, scratch, np, 1.0f, dweight, rows);
            }
            if (dinp) {
                gemm(1, 0, rows, np, OC, 1.0f, weight, rows, g + p0, P, 0.0f, scratch, np);
                conv2d_col2im_add(dinp + n * C * H * W, scratch, C, H, W, K, stride, pad_lo, OW, p0,
                                  p0 + np);
            }
        }
    }
    return 0;
}

/* LoRA on a convolution (kohya-ss LoRAModule for Conv2d): down = conv K x K, stride, padding
 * as the base layer, down [R, C, K, K]; up = 1x1 conv, up [OC, R, 1, 1]:
 *   xa [N, R, OH, OW] = conv2d(inp, down),  out [N, OC, OH, OW] += scale * up @ xa [n].
 * xa is saved for backward. scratch as conv2d_forward (C*K*K floats at least). */
int lora_conv2d_forward(float *out, float *xa, const float *inp, const float *down, const float *up,
                        float scale, float *scratch, size_t scratch_floats, size_t N, size_t C,
                        size_t H, size_t W, size_t OC, size_t R, size_t K, size_t stride,
                        size_t pad_lo, size_t pad_hi)
{
    if (conv2d_forward(xa, inp, down, NULL, scratch, scratch_floats, N, C, H, W, R, K, stride,
                       pad_lo, pad_hi) != 0)
        return -1;
    size_t P = conv2d_out_size(H, K, stride, pad_lo, pad_hi) *
               conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    if (P == 0 || OC == 0 || R == 0) return 0;
    for (size_t n = 0; n < N; n++)
        gemm(0, 0, OC, P, R, scale, up, R, xa + n * R * P, P, 1.0f, out + n * OC * P, P);
    return 0;
}

/* Backward of lora_conv2d_forward, accumulating into dinp [N, C, H, W], ddown [R, C, K, K],
 * dup [OC, R] (each may be NULL):
 *   dup += scale * sum_n dout [n] @ xa [n]^T,  dxa [n] = scale * up^T @ dout [n],
 *   then conv2d_backward(dinp, ddown, dxa) through the down convolution.
 * dxa [N, R, OH, OW] is caller scratch, overwritten. */
int lora_conv2d_backward(float *dinp, float *ddown, float *dup, float *dxa, const float *xa,
                         const float *dout, const float *inp, const float *down, const float *up,
                         float scale, float *scratch, size_t scratch_floats, size_t N, size_t C,
                         size_t H, size_t W, size_t OC, size_t R, size_t K, size_t stride,
                         size_t pad_lo, size_t pad_hi)
{
    size_t P = conv2d_out_size(H, K, stride, pad_lo, pad_hi) *
               conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    if (P == 0 || OC == 0 || R == 0 || N == 0) return 0;
    for (size_t n = 0; n < N; n++) {
        const float *g = dout + n * OC * P;
        if (dup)
            gemm(0, 1, OC, R, P, scale, g, P, xa + n * R * P, P, 1.0f, dup, R);
        if (dinp || ddown)
            gemm(1, 0, R, P, OC, scale, up, R, g, P, 0.0f, dxa + n * R * P, P);
    }
    if (!dinp && !ddown) return 0;
    return conv2d_backward(dinp, ddown, NULL, dxa, inp, down, scratch, scratch_floats, N, C, H, W,
                           R, K, stride, pad_lo, pad_hi);
}
