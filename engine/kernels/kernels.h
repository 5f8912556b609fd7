/* Kernels: explicit forward and backward functions over raw float arrays.
 * Forward argument order: outputs, saved activations, inputs, weights, sizes.
 * Backward (llm.c style, each *_backward beside its *_forward in the same .c file):
 *   gradients written (dinp, then dweight, dbias; or LoRA's dinp, ddown, dup), saved
 *   activations (mean/rstd, lse, out, xa), upstream gradient dout, forward inputs, weights,
 *   scratch, sizes.
 * Backward ACCUMULATES (+=) into every gradient it writes (the caller zeroes them once per
 * step); a NULL gradient pointer skips that gradient's work entirely (frozen weights get
 * dweight = dbias = NULL, the first layer dinp = NULL). Scratch arguments are overwritten.
 * Shapes in PyTorch order. Each fast kernel has a plain *_ref twin (dense_ref.c,
 * attention_ref.c, conv_ref.c, grad_ref.c) used by the tests.
 * No kernel allocates; none calls BLAS from inside an OpenMP parallel region.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_KERNELS_H
#define DB_KERNELS_H

#include <stddef.h>

/* C [M, N] = alpha * op(A) [M, K] @ op(B) [K, N] + beta * C, all row-major with leading
 * dimensions lda, ldb, ldc; ta: A is stored [K, M] (op(A) = A^T), tb: B is stored [N, K].
 * beta == 0 never reads C. A packed AVX-512 kernel where the CPU has it, else OpenBLAS
 * (gemm.c). Threads itself: call it from outside any OpenMP parallel region. */
void gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
          const float *B, size_t ldb, float beta, float *C, size_t ldc);
enum { GEMM_AUTO = 0, GEMM_BLAS = 1 };
/* Which path gemm takes: GEMM_AUTO (the fast kernel where available) or GEMM_BLAS (always
 * OpenBLAS; the tests' and the benchmark's comparison). Returns the previous setting. */
int gemm_set_path(int path);
/* 1 when this CPU and build run gemm's own kernel under GEMM_AUTO. */
int gemm_fast_available(void);

/* A left operand packed once and used by several gemm_pa calls (Winograd's transformed
 * weights, reused by every chunk of tiles). Layout: mr == 0: plain row-major [M, K]; else
 * gemm's panels: K in slices of kc, each slice [mpad / mr panels][kcs][mr] (kcs: the slice's
 * length; rows past M zero). gemm_pa_at gives where A (i, k) goes. */
typedef struct {
    size_t mr, kc, mpad;
} GemmPa;
/* The layout gemm_pa will take for an [M, K] operand now (the fast kernel where gemm would
 * use it, else plain), and its size in floats. */
GemmPa gemm_pa_layout(size_t M, size_t K);
size_t gemm_pa_floats(GemmPa L, size_t M, size_t K);
static inline size_t gemm_pa_at(GemmPa L, size_t K, size_t i, size_t k)
{
    if (!L.mr) return i * K + k;
    size_t k0 = k - k % L.kc, kcs = K - k0 < L.kc ? K - k0 : L.kc;
    return k0 * L.mpad + (i / L.mr) * kcs * L.mr + (k - k0) * L.mr + i % L.mr;
}
/* Zero the padding rows (M .. mpad-1) of a packed operand. They never reach C; zeroed, the
 * kernel multiplies no leftover scratch (NaN, denormals) into them. */
void gemm_pa_clear_pad(float *PA, GemmPa L, size_t M, size_t K);
/* C [M, N] = alpha * A @ B [K, N] + beta * C with A packed in layout L (from gemm_pa_layout for
 * the same M, K). Call it from outside any OpenMP parallel region. */
void gemm_pa(const float *PA, GemmPa L, size_t M, size_t N, size_t K, float alpha, const float *B,
             size_t ldb, float beta, float *C, size_t ldc);

/* out [N, OC] = inp [N, IC] @ weight [OC, IC]^T + bias [OC] (bias may be NULL). gemm. */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias, size_t N,
                    size_t IC, size_t OC);

/* Layer norm over the last axis. out [N, C]; mean, rstd [N] saved for backward (may be NULL);
 * inp [N, C]; weight, bias [C]. Statistics accumulated in double. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C, float eps);

/* Activations, elementwise, out may equal inp. */
void gelu_forward(float *out, const float *inp, size_t n);       /* x * Phi(x), erf form */
void quick_gelu_forward(float *out, const float *inp, size_t n); /* x * sigmoid(1.702 x) */
void silu_forward(float *out, const float *inp, size_t n);

/* out [n] += inp [n] */
void residual_add(float *out, const float *inp, size_t n);

/* Backward: dinp [n] += dout [n] * f'(inp [n]); inp is the forward input. gelu uses the same
 * Phi as gelu_forward and geglu (vmath.h). */
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* out = out + inp: both operands get dout; this adds it to the other operand's gradient,
 * dinp [n] += dout [n]. */
void residual_backward(float *dinp, const float *dout, size_t n);

/* linear: dinp [N, IC] += dout [N, OC] @ weight [OC, IC]; dweight [OC, IC] += dout^T @ inp;
 * dbias [OC] += sum_n dout. Each of dinp, dweight, dbias may be NULL. gemm. */
void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, size_t N, size_t IC, size_t OC);

/* Layer norm backward with the saved mean, rstd [N]: dinp [N, C], dweight, dbias [C] (each may
 * be NULL); dout, inp [N, C]; weight [C]. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *mean,
                        const float *rstd, const float *dout, const float *inp, const float *weight,
                        size_t N, size_t C);

/* LoRA on a linear layer (kohya-ss LoRAModule): down [R, IC] ("lora_down"), up [OC, R]
 * ("lora_up"), scale = alpha / R. Forward: xa [N, R] = inp [N, IC] @ down^T (saved),
 * out [N, OC] += scale * xa @ up^T (adds to the base layer's output).
 * Backward: dup [OC, R] += scale * dout^T @ xa; dxa = scale * dout @ up (dxa [N, R] is
 * scratch, overwritten); ddown [R, IC] += dxa^T @ inp; dinp [N, IC] += dxa @ down. dinp,
 * ddown, dup may each be NULL. */
void lora_linear_forward(float *out, float *xa, const float *inp, const float *down,
                         const float *up, float scale, size_t N, size_t IC, size_t OC, size_t R);
void lora_linear_backward(float *dinp, float *ddown, float *dup, float *dxa, const float *xa,
                          const float *dout, const float *inp, const float *down, const float *up,
                          float scale, size_t N, size_t IC, size_t OC, size_t R);

/* Scaled dot-product attention, never materialising [B, H, Nq, Nk]: tiled with online
 * softmax. q [B, Nq, H*D], k [B, Nk, H*D], v [B, Nk, H*D] (head h in columns h*D..h*D+D-1),
 * out [B, Nq, H*D]; lse [B, H, Nq] receives the row log-sum-exp of the scaled scores for
 * backward (may be NULL). causal: query i sees keys j <= i (requires Nq == Nk). */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float scale, int causal);

/* Attention backward (flash style, recomputing score tiles from q, k, v and the saved lse;
 * no [Nq, Nk] buffer): dq [B, Nq, H*D], dk, dv [B, Nk, H*D] accumulate; out [B, Nq, H*D] and
 * lse [B, H, Nq] as saved by attention_forward; dout [B, Nq, H*D]; q, k, v, sizes, scale,
 * causal as the forward. OpenMP over (b, h), or over key tiles then query tiles when B*H is
 * small; each gradient row has one writer, and the result does not depend on the threads. */
void attention_backward(float *dq, float *dk, float *dv, const float *out, const float *lse,
                        const float *dout, const float *q, const float *k, const float *v, size_t B,
                        size_t Nq, size_t Nk, size_t H, size_t D, float scale, int causal);

/* Plain references (tests only). */
void linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t IC, size_t OC);
/* Layer norm in double: out [N, C]; mean, rstd [N] (may be NULL); inp [N, C]; weight, bias [C]. */
void layernorm_forward_ref(double *out, double *mean, double *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C, float eps);
void attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                           size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float scale,
                           int causal);

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
 * 3x3 stride-1 convs with >= 64 channels in and out run Winograd F(4x4, 3x3) or F(2x2, 3x3)
 * instead (winograd.c) when enough tiles and the scratch allow: the transformed weights
 * (36 or 16 * OC*C floats, or a part of them) and at least one row of tiles must fit.
 * Calls sgemm: call it from outside any OpenMP parallel region.
 * Saves nothing: backward needs inp and weight (dW recomputes im2col chunks). */
int conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                   float *scratch, size_t scratch_floats, size_t N, size_t C, size_t H, size_t W,
                   size_t OC, size_t K, size_t stride, size_t pad_lo, size_t pad_hi);

/* Adjoint of conv2d_im2col: dinp [C, H, W] += col2im(col [C*K*K, p1-p0]) (same layout).
 * OpenMP over channels inside; no BLAS. */
void conv2d_col2im_add(float *dinp, const float *col, size_t C, size_t H, size_t W, size_t K,
                       size_t stride, size_t pad, size_t OW, size_t p0, size_t p1);

/* Backward of conv2d_forward, accumulating: dinp [N, C, H, W] += col2im(weight^T @ dout),
 * dweight [OC, C, K, K] += dout @ im2col(inp)^T, dbias [OC] += sum over n, pixels of dout
 * (each may be NULL: dweight = NULL skips the im2col and its GEMM). dout [N, OC, OH, OW];
 * inp, weight, sizes as the forward; scratch as the forward (same chunks, same minimum).
 * For 3x3 stride-1 convs (pad_lo, pad_hi <= 2) dinp is a Winograd convolution of dout with
 * the flipped, transposed weight when the forward's Winograd rules take that shape.
 * Returns 0, or -1 (nothing written) when scratch is too small. Calls sgemm: call it from
 * outside any OpenMP parallel region. */
int conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                    const float *weight, float *scratch, size_t scratch_floats, size_t N, size_t C,
                    size_t H, size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo,
                    size_t pad_hi);

/* LoRA on a convolution: down [R, C, K, K] (stride, padding of the base layer), up [OC, R]
 * (1x1). Forward: xa [N, R, OH, OW] = conv2d(inp, down) (saved), out [N, OC, OH, OW] +=
 * scale * up @ xa. Backward: dup [OC, R] += scale * sum_n dout @ xa^T; dxa = scale * up^T @
 * dout (dxa [N, R, OH, OW] scratch, overwritten); ddown, dinp through conv2d_backward. dinp,
 * ddown, dup may each be NULL. scratch as conv2d_forward with C input channels. Return 0 or -1
 * as conv2d_forward. */
int lora_conv2d_forward(float *out, float *xa, const float *inp, const float *down, const float *up,
                        float scale, float *scratch, size_t scratch_floats, size_t N, size_t C,
                        size_t H, size_t W, size_t OC, size_t R, size_t K, size_t stride,
                        size_t pad_lo, size_t pad_hi);
int lora_conv2d_backward(float *dinp, float *ddown, float *dup, float *dxa, const float *xa,
                         const float *dout, const float *inp, const float *down, const float *up,
                         float scale, float *scratch, size_t scratch_floats, size_t N, size_t C,
                         size_t H, size_t W, size_t OC, size_t R, size_t K, size_t stride,
                         size_t pad_lo, size_t pad_hi);

/* Group norm (torch.nn.GroupNorm, biased variance), optionally followed by SiLU:
 * out [N, C, HW] = silu?((inp - mean[n, g]) * rstd[n, g] * weight [C] + bias [C]), groups of
 * C/G consecutive channels (G divides C). mean, rstd [N, G] saved for backward (may be NULL);
 * statistics in double. With silu, backward recomputes the pre-SiLU value from inp, mean,
 * rstd, weight, bias. out may not alias inp. */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C, size_t HW, size_t G, float eps,
                       int silu);

/* Group norm backward (with silu: through the SiLU too, recomputing the pre-SiLU value from
 * inp, the saved mean, rstd [N, G], weight and bias): dinp [N, C, HW], dweight, dbias [C]
 * (each may be NULL); dout, inp [N, C, HW]; weight, bias [C]. */
void groupnorm_backward(float *dinp, float *dweight, float *dbias, const float *mean,
                        const float *rstd, const float *dout, const float *inp, const float *weight,
                        const float *bias, size_t N, size_t C, size_t HW, size_t G, int silu);

/* Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")):
 * out [N, C, 2H, 2W], inp [N, C, H, W]. Saves nothing. */
void upsample_nearest2x_forward(float *out, const float *inp, size_t N, size_t C, size_t H,
                                size_t W);
/* dinp [N, C, H, W] += sum of each 2x2 block of dout [N, C, 2H, 2W]. */
void upsample_nearest2x_backward(float *dinp, const float *dout, size_t N, size_t C, size_t H,
                                 size_t W);

/* Concatenation along channels (torch.cat([a, b], dim=1)): out [N, Ca+Cb, HW],
 * a [N, Ca, HW], b [N, Cb, HW]. */
void concat_channels_forward(float *out, const float *a, const float *b, size_t N, size_t Ca,
                             size_t Cb, size_t HW);
/* da [N, Ca, HW] += dout [:, :Ca], db [N, Cb, HW] += dout [:, Ca:] (either may be NULL). */
void concat_channels_backward(float *da, float *db, const float *dout, size_t N, size_t Ca,
                              size_t Cb, size_t HW);

/* Sinusoidal timestep embedding as diffusers get_timestep_embedding (max_period 10000,
 * scale 1): half = dim / 2, freq [i] = exp(-ln(10000) * i / (half - freq_shift)),
 * out [N, dim] = [sin(t freq), cos(t freq)] ([cos, sin] with flip_sin_to_cos), a zero last
 * column when dim is odd; t = timesteps [N]. Arguments rounded to float as PyTorch does.
 * SD UNets: flip_sin_to_cos = 1, freq_shift = 0. No backward: the timesteps need no gradient
 * and the embedding has no parameters. */
void timestep_embedding(float *out, const float *timesteps, size_t N, size_t dim,
                        int flip_sin_to_cos, float freq_shift);

/* GEGLU (diffusers GEGLU after its proj): inp [N, 2F] = [a | b] (chunk(2, dim=-1)),
 * out [N, F] = a * gelu(b), erf form. Backward needs inp. */
void geglu_forward(float *out, const float *inp, size_t N, size_t F);
/* dinp [N, 2F] = [da | db] += [dout * gelu(b) | dout * a * gelu'(b)]; dout [N, F]; inp the
 * forward input. */
void geglu_backward(float *dinp, const float *dout, const float *inp, size_t N, size_t F);

/* Plain references (tests only), double accumulation. */
void conv2d_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K, size_t stride,
                        size_t pad_lo, size_t pad_hi);
void groupnorm_forward_ref(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C, size_t HW,
                           size_t G, float eps, int silu);
void upsample_nearest2x_forward_ref(float *out, const float *inp, size_t N, size_t C, size_t H,
                                    size_t W);
void concat_channels_forward_ref(float *out, const float *a, const float *b, size_t N, size_t Ca,
                                 size_t Cb, size_t HW);
void timestep_embedding_ref(float *out, const float *timesteps, size_t N, size_t dim,
                            int flip_sin_to_cos, float freq_shift);
void geglu_forward_ref(float *out, const float *inp, size_t N, size_t F);

/* ---- Gradient references (grad_ref.c, tests only): everything in double. *_fwd_d are the
 * forwards for finite differences; *_bwd_ref plain backward loops that accumulate (+=).
 * Argument order and shapes as the float kernels. attention_* return -1 when out of memory. */
double gelu_ref_d(double x);
double quick_gelu_ref_d(double x);
double silu_ref_d(double x);
void linear_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                  size_t IC, size_t OC);
void layernorm_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                     size_t C, double eps);
void layernorm_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                       const double *w, size_t N, size_t C, double eps);
void groupnorm_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                     size_t C, size_t HW, size_t G, double eps, int silu);
void groupnorm_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                       const double *w, const double *b, size_t N, size_t C, size_t HW, size_t G,
                       double eps, int silu);
void conv2d_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                  size_t C, size_t H, size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo,
                  size_t pad_hi);
void conv2d_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K,
                    size_t stride, size_t pad_lo, size_t pad_hi);
int attention_fwd_d(double *out, const double *q, const double *k, const double *v, size_t B,
                    size_t Nq, size_t Nk, size_t H, size_t D, double scale, int causal);
int attention_bwd_ref(double *dq, double *dk, double *dv, const double *dout, const double *q,
                      const double *k, const double *v, size_t B, size_t Nq, size_t Nk, size_t H,
                      size_t D, double scale, int causal);

#endif
