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
 * Threads: im2col and the bias fill run in OpenMP loops; sgemm (OpenBLAS, OpenMP build) is
 * called outside any parallel region and threads itself.
 *
 * Backward (later): dW [OC, C*K*K] += dout [OC, P] @ col [C*K*K, P]^T over the same chunks
 * (conv2d_im2col again), dcol = weight^T @ dout and col2im scatter-add for dX. */
#include "kernels.h"

#include <cblas.h>
#include <string.h>

size_t conv2d_out_size(size_t H, size_t K, size_t stride, size_t pad_lo, size_t pad_hi)
{
    size_t padded = H + pad_lo + pad_hi;
    if (stride == 0 || padded < K)
        return 0;
    return (padded - K) / stride + 1;
}

/* Row r = (c*K + kh)*K + kw of col: for output pixel p = oh*OW + ow the input sample is
 * (iy, ix) = (oh*stride + kh - pad, ow*stride + kw - pad). Walked one output row at a time
 * so the stride-1 case is a zero prefix, a contiguous copy and a zero suffix. */
void conv2d_im2col(float *col, const float *inp, size_t C, size_t H, size_t W, size_t K,
                   size_t stride, size_t pad, size_t OW, size_t p0, size_t p1)
{
    size_t rows = C * K * K, np = p1 - p0;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        size_t c = r / (K * K), kh = (r / K) % K, kw = r % K;
        const float *img = inp + c * H * W;
        float *dst = col + r * np;
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
                for (size_t t = 0; t < n; t++) {
                    size_t ixs = (ow + t) * stride + kw;
                    dst[t] = (ixs < pad || ixs - pad >= W) ? 0.0f : src[ixs - pad];
                }
            }
            dst += n;
            p += n;
        }
    }
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
                   float *scratch, size_t scratch_floats, size_t N, size_t C, size_t H,
                   size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo, size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    size_t P = OH * OW, rows = C * K * K;
    int direct = K == 1 && stride == 1 && pad_lo == 0 && pad_hi == 0;
    if (!direct && scratch_floats < rows)
        return -1;
    if (N == 0 || OC == 0 || P == 0)
        return 0;
    if (C == 0) {
        for (size_t n = 0; n < N; n++)
            conv2d_fill_bias(out + n * OC * P, bias, OC, P, P);
        return 0;
    }

    if (direct) {
        /* out [n] [OC, HW] = weight [OC, C] @ inp [n] [C, HW] + bias */
        for (size_t n = 0; n < N; n++) {
            float *o = out + n * OC * P;
            conv2d_fill_bias(o, bias, OC, P, P);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)P, (int)C,
                        1.0f, weight, (int)C, inp + n * C * H * W, (int)P, 1.0f, o, (int)P);
        }
        return 0;
    }

    /* pixels per chunk: whole output rows when possible */
    size_t chunk = scratch_floats / rows;
    if (chunk > P)
        chunk = P;
    if (chunk >= OW)
        chunk -= chunk % OW;
    for (size_t n = 0; n < N; n++) {
        const float *img = inp + n * C * H * W;
        float *o = out + n * OC * P;
        for (size_t p0 = 0; p0 < P; p0 += chunk) {
            size_t np = P - p0 < chunk ? P - p0 : chunk;
            conv2d_im2col(scratch, img, C, H, W, K, stride, pad_lo, OW, p0, p0 + np);
            conv2d_fill_bias(o + p0, bias, OC, np, P);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)OC, (int)np,
                        (int)rows, 1.0f, weight, (int)rows, scratch, (int)np, 1.0f, o + p0,
                        (int)P);
        }
    }
    return 0;
}
