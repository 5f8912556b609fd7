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
 *   - Winograd F(2x2, 3x3) for 3x3 stride-1 convs with >= 64 channels in and out when the
 *     scratch holds the 16*OC*C transformed weights and a row of tiles (wino_rows);
 *   - several images im2col'd side by side into one GEMM when each has few output pixels
 *     (UNet 8x8/16x16 levels), so sgemm packs the weights once per group (conv_group).
 * Threads: im2col and the bias fill run in OpenMP loops; sgemm (OpenBLAS, OpenMP build) is
 * called outside any parallel region and threads itself.
 *
 * Backward, over the same chunks of output pixels and the same scratch:
 *   dW [OC, C*K*K] += dout [OC, P] @ col [C*K*K, P]^T   (col = conv2d_im2col again; the
 *                     contraction runs over the chunk's pixels)
 *   dcol [C*K*K, P] = weight^T @ dout,  dX += col2im(dcol)  (scatter-add, parallel over
 *                     input channels, each owning its plane)
 *   db [OC] += sum over images and pixels of dout.
 * LoRA for convolutions (lora_conv2d_*) is at the end. */
#include "kernels.h"

#include <cblas.h>
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

/* ---- Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015) ----------
 * Output tiles of 2x2 pixels, each from a 4x4 input patch d at (2ty - pad_lo, 2tx - pad_lo):
 *   U [16, OC, C] = G g G^T per (oc, c)         (weights, once per call)
 *   V [16, C, T]  = B^T d B per (c, tile)      (a chunk of T tiles: whole tile rows, over
 *                                               all images of the call)
 *   M [16, OC, T] = U [xi] @ V [xi]            (16 sgemm, K = C)
 *   y [2x2]       = A^T m A + bias             (per (oc, tile), clipped at the border)
 *   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
 *   0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
 * 2.25x fewer multiplies than im2col + sgemm; the transforms are exact in the weights' and
 * inputs' additions (relative L2 error vs im2col ~1e-7 on SD shapes). */
#define WINO_MIN_CH 64   /* narrower convs (conv_in/conv_out) stay on im2col */
#define WINO_MIN_TILES 64 /* tiles in the call: fewer and the weight transform dominates */

/* U [16, OC, C] = G g G^T for each g = weight [oc, c, 3, 3] */
static void wino_weights(float *U, const float *weight, size_t OC, size_t C)
{
    size_t S = OC * C;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < S; i++) {
        const float *g = weight + i * 9;
        float t[4][3], u[4][4];
        for (int j = 0; j < 3; j++) { /* t = G g (4x3) */
            t[0][j] = g[j];
            t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
        }
        for (int r = 0; r < 4; r++) { /* u = t G^T (4x4) */
            u[r][0] = t[r][0];
            u[r][1] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
            u[r][2] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
            u[r][3] = t[r][2];
        }
        for (int x = 0; x < 16; x++)
            U[x * S + i] = u[x / 4][x % 4];
    }
}

#define WINO_SEG 64 /* tiles per segment of a tile row in the input transform */

/* V [16, C, T] for tile rows R0 .. R1-1 (R = n*TH + ty) of inp [N, C, H, W]. Per (c, tile
 * row), in segments of WINO_SEG tiles: the 4 input rows (zero padded) into d, B^T d down the
 * columns (elementwise over the row), then B across each tile (stride-2 reads): loops the
 * compiler vectorises. */
static void wino_input(float *V, const float *inp, size_t C, size_t H, size_t W, size_t pad,
                       size_t TH, size_t TW, size_t R0, size_t R1)
{
    size_t T = (R1 - R0) * TW, nr = R1 - R0, st = C * T;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < C * nr; i++) {
        size_t c = i / nr, R = R0 + i % nr, n = R / TH, ty = R % TH;
        const float *img = inp + (n * C + c) * H * W;
        float d[4][2 * WINO_SEG + 2], e[4][2 * WINO_SEG + 2];
        float *v = V + c * T + (R - R0) * TW;
        for (size_t tx0 = 0; tx0 < TW; tx0 += WINO_SEG) {
            size_t nt = TW - tx0 < WINO_SEG ? TW - tx0 : WINO_SEG, len = 2 * nt + 2;
            size_t xs = 2 * tx0; /* input column of d [k][j] is xs + j - pad */
            size_t lo = pad > xs ? pad - xs : 0, hi = W + pad > xs ? W + pad - xs : 0;
            if (lo > len) lo = len;
            if (hi > len) hi = len;
            if (hi < lo) hi = lo;
            for (int k = 0; k < 4; k++) { /* iy = 2ty - pad + k */
                size_t iys = 2 * ty + (size_t)k;
                if (iys < pad || iys - pad >= H) {
                    memset(d[k], 0, len * sizeof(float));
                    continue;
                }
                const float *src = img + (iys - pad) * W;
                memset(d[k], 0, lo * sizeof(float));
                if (hi > lo) memcpy(d[k] + lo, src + xs + lo - pad, (hi - lo) * sizeof(float));
                memset(d[k] + hi, 0, (len - hi) * sizeof(float));
            }
            for (size_t j = 0; j < len; j++) { /* e = B^T d */
                e[0][j] = d[0][j] - d[2][j];
                e[1][j] = d[1][j] + d[2][j];
                e[2][j] = d[2][j] - d[1][j];
                e[3][j] = d[1][j] - d[3][j];
            }
            for (int k = 0; k < 4; k++) { /* (B^T d) B */
                const float *q = e[k];
                float *o0 = v + (size_t)(4 * k) * st + tx0, *o1 = o0 + st, *o2 = o1 + st,
                      *o3 = o2 + st;
                for (size_t t = 0; t < nt; t++) {
                    o0[t] = q[2 * t] - q[2 * t + 2];
                    o1[t] = q[2 * t + 1] + q[2 * t + 2];
                    o2[t] = q[2 * t + 2] - q[2 * t + 1];
                    o3[t] = q[2 * t + 1] - q[2 * t + 3];
                }
            }
        }
    }
}

/* out [N, OC, OH, OW] for tile rows R0 .. R1-1 = A^T M A + bias. */
static void wino_output(float *out, const float *M, const float *bias, size_t OC, size_t OH,
                        size_t OW, size_t TH, size_t TW, size_t R0, size_t R1)
{
    size_t T = (R1 - R0) * TW, nr = R1 - R0, st = OC * T;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < OC * nr; i++) {
        size_t oc = i / nr, R = R0 + i % nr, n = R / TH, ty = R % TH;
        float b = bias ? bias[oc] : 0.0f;
        const float *m = M + oc * T + (R - R0) * TW;
        float *o0 = out + ((n * OC + oc) * OH + 2 * ty) * OW;
        float *o1 = 2 * ty + 1 < OH ? o0 + OW : NULL;
        for (size_t tx = 0; tx < TW; tx++) {
            float a[16], r[2][4];
            for (int x = 0; x < 16; x++)
                a[x] = m[(size_t)x * st + tx];
            for (int j = 0; j < 4; j++) { /* A^T m */
                r[0][j] = a[j] + a[4 + j] + a[8 + j];
                r[1][j] = a[4 + j] - a[8 + j] - a[12 + j];
            }
            size_t ox = 2 * tx;
            o0[ox] = r[0][0] + r[0][1] + r[0][2] + b;
            if (o1) o1[ox] = r[1][0] + r[1][1] + r[1][2] + b;
            if (ox + 1 < OW) {
                o0[ox + 1] = r[0][1] - r[0][2] - r[0][3] + b;
                if (o1) o1[ox + 1] = r[1][1] - r[1][2] - r[1][3] + b;
            }
        }
    }
}

/* Tile rows per chunk for a Winograd conv, or 0 when it should not (or cannot) be used. */
static size_t wino_rows(size_t N, size_t C, size_t OC, size_t OH, size_t OW, size_t K,
                        size_t stride, size_t scratch_floats)
{
    if (K != 3 || stride != 1 || C < WINO_MIN_CH || OC < WINO_MIN_CH) return 0;
    size_t TH = (OH + 1) / 2, TW = (OW + 1) / 2, u, per, tiles;
    if (__builtin_mul_overflow(16 * OC, C, &u) || u >= scratch_floats ||
        __builtin_mul_overflow(16 * (C + OC), TW, &per) ||
        __builtin_mul_overflow(N * TH, TW, &tiles) || tiles < WINO_MIN_TILES)
        return 0;
    size_t tr = (scratch_floats - u) / per;
    if (tr == 0) return 0;
    return tr < N * TH ? tr : N * TH;
}

static void conv2d_winograd(float *out, const float *inp, const float *weight, const float *bias,
                            float *scratch, size_t rows_per_chunk, size_t N, size_t C, size_t H,
                            size_t W, size_t OC, size_t pad, size_t OH, size_t OW)
{
    size_t TH = (OH + 1) / 2, TW = (OW + 1) / 2;
    float *U = scratch, *V = U + 16 * OC * C;
    wino_weights(U, weight, OC, C);
    for (size_t R0 = 0; R0 < N * TH; R0 += rows_per_chunk) {
        size_t R1 = N * TH - R0 < rows_per_chunk ? N * TH : R0 + rows_per_chunk;
        size_t T = (R1 - R0) * TW;
        float *M = V + 16 * C * T;
        wino_input(V, inp, C, H, W, pad, TH, TW, R0, R1);
        for (size_t x = 0; x < 16; x++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)T, (int)C, 1.0f,
                        U + x * OC * C, (int)C, V + x * C * T, (int)T, 0.0f, M + x * OC * T,
                        (int)T);
        wino_output(out, M, bias, OC, OH, OW, TH, TW, R0, R1);
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

    size_t wr = wino_rows(N, C, OC, OH, OW, K, stride, scratch_floats);
    if (wr) {
        conv2d_winograd(out, inp, weight, bias, scratch, wr, N, C, H, W, OC, pad_lo, OH, OW);
        return 0;
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
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)(g * P), (int)kr,
                        1.0f, weight, (int)kr, col, (int)(g * P), 0.0f, tmp, (int)(g * P));
            scatter_images(out + n * OC * P, tmp, bias, g, OC, P);
        }
        return 0;
    }

    if (direct) {
        /* out [n] [OC, HW] = weight [OC, C] @ inp [n] [C, HW] + bias */
        for (size_t n = 0; n < N; n++) {
            float *o = out + n * OC * P;
            conv2d_fill_bias(o, bias, OC, P, P);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)P, (int)C, 1.0f,
                        weight, (int)C, inp + n * C * H * W, (int)P, 1.0f, o, (int)P);
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
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)np, (int)rows,
                        1.0f, weight, (int)rows, scratch, (int)np, 1.0f, o + p0, (int)P);
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

    if (direct) {
        for (size_t n = 0; n < N; n++) {
            const float *g = dout + n * OC * P;
            if (dweight)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)OC, (int)C, (int)P, 1.0f,
                            g, (int)P, inp + n * C * P, (int)P, 1.0f, dweight, (int)C);
            if (dinp)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)C, (int)P, (int)OC, 1.0f,
                            weight, (int)C, g, (int)P, 1.0f, dinp + n * C * P, (int)P);
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
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)OC, (int)rows, (int)np,
                            1.0f, g + p0, (int)P, scratch, (int)np, 1.0f, dweight, (int)rows);
            }
            if (dinp) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)rows, (int)np, (int)OC,
                            1.0f, weight, (int)rows, g + p0, (int)P, 0.0f, scratch, (int)np);
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
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)P, (int)R, scale, up,
                    (int)R, xa + n * R * P, (int)P, 1.0f, out + n * OC * P, (int)P);
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
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)OC, (int)R, (int)P, scale, g,
                        (int)P, xa + n * R * P, (int)P, 1.0f, dup, (int)R);
        if (dinp || ddown)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)R, (int)P, (int)OC, scale, up,
                        (int)R, g, (int)P, 0.0f, dxa + n * R * P, (int)P);
    }
    if (!dinp && !ddown) return 0;
    return conv2d_backward(dinp, ddown, NULL, dxa, inp, down, scratch, scratch_floats, N, C, H, W,
                           R, K, stride, pad_lo, pad_hi);
}
