/* Kernels: explicit forward (and, later, backward) functions over raw float arrays.
 * Argument order: outputs, saved activations, inputs, weights, sizes. Shapes in PyTorch
 * order. Each fast kernel has a plain *_ref twin (dense_ref.c, attention_ref.c, conv_ref.c) used by the tests.
 * No kernel allocates; none calls BLAS from inside an OpenMP parallel region.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_KERNELS_H
#define DB_KERNELS_H

#include <stddef.h>

/* out [N, OC] = inp [N, IC] @ weight [OC, IC]^T + bias [OC] (bias may be NULL). sgemm. */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    size_t N, size_t IC, size_t OC);

/* Layer norm over the last axis. out [N, C]; mean, rstd [N] saved for backward (may be NULL);
 * inp [N, C]; weight, bias [C]. Statistics accumulated in double. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, size_t C, float eps);

/* Activations, elementwise, out may equal inp. */
void gelu_forward(float *out, const float *inp, size_t n);        /* x * Phi(x), erf form */
void quick_gelu_forward(float *out, const float *inp, size_t n);  /* x * sigmoid(1.702 x) */
void silu_forward(float *out, const float *inp, size_t n);

/* out [n] += inp [n] */
void residual_add(float *out, const float *inp, size_t n);

/* Scaled dot-product attention, never materialising [B, H, Nq, Nk]: tiled with online
 * softmax. q [B, Nq, H*D], k [B, Nk, H*D], v [B, Nk, H*D] (head h in columns h*D..h*D+D-1),
 * out [B, Nq, H*D]; lse [B, H, Nq] receives the row log-sum-exp of the scaled scores for
 * backward (may be NULL). causal: query i sees keys j <= i (requires Nq == Nk). */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float scale,
                       int causal);

/* Plain references (tests only). */
void linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t IC, size_t OC);
/* Layer norm in double: out [N, C]; mean, rstd [N] (may be NULL); inp [N, C]; weight, bias [C]. */
void layernorm_forward_ref(double *out, double *mean, double *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C,
                           float eps);
void attention_forward_ref(float *out, float *lse, const float *q, const float *k,
                           const float *v, size_t B, size_t Nq, size_t Nk, size_t H, size_t D,
                           float scale, int causal);

/* ---- UNet / VAE kernels (conv2d.c, groupnorm.c, upsample.c, timestep.c; refs in conv_ref.c) */

/* Output length of a convolution along one axis: (H + pad_lo + pad_hi - K) / stride + 1
 * (0 when the padded input is shorter than K). */
size_t conv2d_out_size(size_t H, size_t K, size_t stride, size_t pad_lo, size_t pad_hi);

/* im2col for output pixels p0 .. p1-1 (p = oh * OW + ow) of one image inp [C, H, W]:
 * col [C*K*K, p1-p0], row (c*K + kh)*K + kw, column p - p0, holds
 * inp [c, oh*stride + kh - pad, ow*stride + kw - pad], 0 outside the image. Reused by the
 * backward pass (dW = dout @ col^T). OpenMP inside; no BLAS. */
void conv2d_im2col(float *col, const float *inp, size_t C, size_t H, size_t W, size_t K,
                   size_t stride, size_t pad, size_t OW, size_t p0, size_t p1);

/* 2-D convolution, NCHW, square kernel K, zero padding pad_lo (top, left) and pad_hi (bottom,
 * right): out [N, OC, OH, OW] = weight [OC, C, K, K] * inp [N, C, H, W] + bias [OC] (bias may
 * be NULL), OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi), same for OW.
 * Chunked im2col + sgemm: scratch [scratch_floats] holds one im2col chunk of C*K*K rows by
 * as many output pixels as fit (whole output rows when at least C*K*K*OW floats). It needs at
 * least C*K*K floats, except for K = 1, stride 1, no padding, which needs none (scratch may
 * be NULL). Returns 0, or -1 (nothing written) when scratch is too small.
 * Saves nothing: backward needs inp and weight (dW recomputes im2col chunks). */
int conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                   float *scratch, size_t scratch_floats, size_t N, size_t C, size_t H,
                   size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo, size_t pad_hi);

/* Group norm (torch.nn.GroupNorm, biased variance), optionally followed by SiLU:
 * out [N, C, HW] = silu?((inp - mean[n, g]) * rstd[n, g] * weight [C] + bias [C]), groups of
 * C/G consecutive channels (G divides C). mean, rstd [N, G] saved for backward (may be NULL);
 * statistics in double. With silu, backward recomputes the pre-SiLU value from inp, mean,
 * rstd, weight, bias. out may not alias inp. */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, size_t C, size_t HW,
                       size_t G, float eps, int silu);

/* Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")):
 * out [N, C, 2H, 2W], inp [N, C, H, W]. Saves nothing. */
void upsample_nearest2x_forward(float *out, const float *inp, size_t N, size_t C, size_t H,
                                size_t W);

/* Concatenation along channels (torch.cat([a, b], dim=1)): out [N, Ca+Cb, HW],
 * a [N, Ca, HW], b [N, Cb, HW]. */
void concat_channels_forward(float *out, const float *a, const float *b, size_t N, size_t Ca,
                             size_t Cb, size_t HW);

/* Sinusoidal timestep embedding as diffusers get_timestep_embedding (max_period 10000,
 * scale 1): half = dim / 2, freq [i] = exp(-ln(10000) * i / (half - freq_shift)),
 * out [N, dim] = [sin(t freq), cos(t freq)] ([cos, sin] with flip_sin_to_cos), a zero last
 * column when dim is odd; t = timesteps [N]. Arguments rounded to float as PyTorch does.
 * SD UNets: flip_sin_to_cos = 1, freq_shift = 0. */
void timestep_embedding(float *out, const float *timesteps, size_t N, size_t dim,
                        int flip_sin_to_cos, float freq_shift);

/* GEGLU (diffusers GEGLU after its proj): inp [N, 2F] = [a | b] (chunk(2, dim=-1)),
 * out [N, F] = a * gelu(b), erf form. Backward needs inp. */
void geglu_forward(float *out, const float *inp, size_t N, size_t F);

/* Plain references (tests only), double accumulation. */
void conv2d_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K,
                        size_t stride, size_t pad_lo, size_t pad_hi);
void groupnorm_forward_ref(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C,
                           size_t HW, size_t G, float eps, int silu);
void upsample_nearest2x_forward_ref(float *out, const float *inp, size_t N, size_t C, size_t H,
                                    size_t W);
void concat_channels_forward_ref(float *out, const float *a, const float *b, size_t N,
                                 size_t Ca, size_t Cb, size_t HW);
void timestep_embedding_ref(float *out, const float *timesteps, size_t N, size_t dim,
                            int flip_sin_to_cos, float freq_shift);
void geglu_forward_ref(float *out, const float *inp, size_t N, size_t F);

#endif
