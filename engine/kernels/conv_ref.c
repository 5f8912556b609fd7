/* Plain references for the UNet/VAE kernels (tests only): direct loops, double accumulation,
 * no BLAS, no threads.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* out [n, oc, oh, ow] = bias [oc] + sum_{c, kh, kw} weight [oc, c, kh, kw] *
 *   inp [n, c, oh*stride + kh - pad_lo, ow*stride + kw - pad_lo]  (zero outside) */
void conv2d_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K, size_t stride,
                        size_t pad_lo, size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < OC; oc++)
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double acc = bias ? bias[oc] : 0.0;
                    for (size_t c = 0; c < C; c++)
                        for (size_t kh = 0; kh < K; kh++)
                            for (size_t kw = 0; kw < K; kw++) {
                                long iy = (long)(oh * stride + kh) - (long)pad_lo;
                                long ix = (long)(ow * stride + kw) - (long)pad_lo;
                                if (iy < 0 || ix < 0 || iy >= (long)H || ix >= (long)W) continue;
                                acc += (double)weight[((oc * C + c) * K + kh) * K + kw] *
                                       (double)inp[((n * C + c) * H + (size_t)iy) * W + (size_t)ix];
                            }
                    out[((n * OC + oc) * OH + oh) * OW + ow] = (float)acc;
                }
}

/* Two-pass statistics in double (mean, then sum of squared deviations). */
void groupnorm_forward_ref(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C, size_t HW,
                           size_t G, float eps, int silu)
{
    size_t cpg = C / G, M = cpg * HW;
    for (size_t n = 0; n < N; n++)
        for (size_t g = 0; g < G; g++) {
            const float *x = inp + (n * G + g) * M;
            double m = 0.0, var = 0.0;
            for (size_t i = 0; i < M; i++)
                m += x[i];
            m /= (double)M;
            for (size_t i = 0; i < M; i++)
                var += ((double)x[i] - m) * ((double)x[i] - m);
            var /= (double)M;
            double rs = 1.0 / sqrt(var + (double)eps);
            if (mean) mean[n * G + g] = (float)m;
            if (rstd) rstd[n * G + g] = (float)rs;
            for (size_t i = 0; i < M; i++) {
                size_t c = g * cpg + i / HW;
                double y = ((double)x[i] - m) * rs * weight[c] + bias[c];
                if (silu) y = y / (1.0 + exp(-y));
                out[(n * G + g) * M + i] = (float)y;
            }
        }
}

void upsample_nearest2x_forward_ref(float *out, const float *inp, size_t N, size_t C, size_t H,
                                    size_t W)
{
    for (size_t nc = 0; nc < N * C; nc++)
        for (size_t y = 0; y < 2 * H; y++)
            for (size_t x = 0; x < 2 * W; x++)
                out[(nc * 2 * H + y) * 2 * W + x] = inp[(nc * H + y / 2) * W + x / 2];
}

void concat_channels_forward_ref(float *out, const float *a, const float *b, size_t N, size_t Ca,
                                 size_t Cb, size_t HW)
{
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < Ca + Cb; c++)
            for (size_t p = 0; p < HW; p++)
                out[(n * (Ca + Cb) + c) * HW + p] =
                    c < Ca ? a[(n * Ca + c) * HW + p] : b[(n * Cb + c - Ca) * HW + p];
}

/* The same formula entirely in double (no float rounding of the argument). */
void timestep_embedding_ref(float *out, const float *timesteps, size_t N, size_t dim,
                            int flip_sin_to_cos, float freq_shift)
{
    size_t half = dim / 2;
    for (size_t n = 0; n < N; n++) {
        for (size_t i = 0; i < half; i++) {
            double arg = (double)timesteps[n] *
                         exp(-log(10000.0) * (double)i / ((double)half - (double)freq_shift));
            out[n * dim + (flip_sin_to_cos ? half + i : i)] = (float)sin(arg);
            out[n * dim + (flip_sin_to_cos ? i : half + i)] = (float)cos(arg);
        }
        if (dim % 2) out[n * dim + dim - 1] = 0.0f;
    }
}

void geglu_forward_ref(float *out, const float *inp, size_t N, size_t F)
{
    for (size_t n = 0; n < N; n++)
        for (size_t f = 0; f < F; f++) {
            double a = inp[n * 2 * F + f], b = inp[n * 2 * F + F + f];
            out[n * F + f] = (float)(a * 0.5 * b * (1.0 + erf(b / sqrt(2.0))));
        }
}
