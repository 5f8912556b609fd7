/* Double-precision references for the backward tests (tests only): forwards in double, used
 * for central finite differences, and plain backward loops (obvious, unoptimised, the same
 * math as the fast kernels' comments) used on shapes too large for finite differences.
 * Every *_bwd_ref accumulates (+=) like the fast kernels. All arrays double, PyTorch order.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>

double gelu_ref_d(double x)
{
    return 0.5 * x * erfc(-x / sqrt(2.0));
}
double quick_gelu_ref_d(double x)
{
    return x / (1.0 + exp(-1.702 * x));
}
double silu_ref_d(double x)
{
    return x / (1.0 + exp(-x));
}

/* out [N, OC] = inp [N, IC] @ w [OC, IC]^T + b [OC] (b may be NULL) */
void linear_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                  size_t IC, size_t OC)
{
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            double acc = b ? b[o] : 0.0;
            for (size_t i = 0; i < IC; i++)
                acc += inp[n * IC + i] * w[o * IC + i];
            out[n * OC + o] = acc;
        }
}

/* Normalise groups of M consecutive values with per-value affine parameters: the core of
 * layer norm (group = row, channel = column) and group norm. ch (i) gives the parameter index. */
static void norm_fwd_d(double *out, const double *inp, const double *w, const double *b,
                       size_t ngroups, size_t M, size_t HW, size_t cpg, size_t G, double eps,
                       int silu, int layer)
{
    for (size_t ng = 0; ng < ngroups; ng++) {
        const double *x = inp + ng * M;
        double m = 0.0, v = 0.0;
        for (size_t i = 0; i < M; i++)
            m += x[i];
        m /= (double)M;
        for (size_t i = 0; i < M; i++)
            v += (x[i] - m) * (x[i] - m);
        v /= (double)M;
        double rs = 1.0 / sqrt(v + eps);
        for (size_t i = 0; i < M; i++) {
            size_t c = layer ? i : (ng % G) * cpg + i / HW;
            double y = (x[i] - m) * rs * w[c] + b[c];
            out[ng * M + i] = silu ? silu_ref_d(y) : y;
        }
    }
}

static void norm_bwd_d(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                       const double *w, const double *b, size_t ngroups, size_t M, size_t HW,
                       size_t cpg, size_t G, double eps, int silu, int layer)
{
    for (size_t ng = 0; ng < ngroups; ng++) {
        const double *x = inp + ng * M, *g = dout + ng * M;
        double m = 0.0, v = 0.0;
        for (size_t i = 0; i < M; i++)
            m += x[i];
        m /= (double)M;
        for (size_t i = 0; i < M; i++)
            v += (x[i] - m) * (x[i] - m);
        v /= (double)M;
        double rs = 1.0 / sqrt(v + eps), sg = 0.0, sgx = 0.0;
        for (size_t pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < M; i++) {
                size_t c = layer ? i : (ng % G) * cpg + i / HW;
                double xh = (x[i] - m) * rs, gy = g[i];
                if (silu) {
                    double y = xh * w[c] + b[c], s = 1.0 / (1.0 + exp(-y));
                    gy *= s * (1.0 + y * (1.0 - s));
                }
                if (pass == 0) {
                    sg += gy * w[c];
                    sgx += gy * w[c] * xh;
                    if (dw) dw[c] += gy * xh;
                    if (db) db[c] += gy;
                } else if (dinp) {
                    dinp[ng * M + i] += rs * (gy * w[c] - sg / (double)M - xh * sgx / (double)M);
                }
            }
    }
}

void layernorm_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                     size_t C, double eps)
{
    norm_fwd_d(out, inp, w, b, N, C, 1, 1, 1, eps, 0, 1);
}

void layernorm_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                       const double *w, size_t N, size_t C, double eps)
{
    norm_bwd_d(dinp, dw, db, dout, inp, w, w, N, C, 1, 1, 1, eps, 0, 1);
}

void groupnorm_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                     size_t C, size_t HW, size_t G, double eps, int silu)
{
    norm_fwd_d(out, inp, w, b, N * G, C / G * HW, HW, C / G, G, eps, silu, 0);
}

void groupnorm_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                       const double *w, const double *b, size_t N, size_t C, size_t HW, size_t G,
                       double eps, int silu)
{
    norm_bwd_d(dinp, dw, db, dout, inp, w, b, N * G, C / G * HW, HW, C / G, G, eps, silu, 0);
}

/* Index of the input sample under (output pixel o, kernel tap kk) along one axis, or -1. */
static long conv_src(size_t o, size_t kk, size_t stride, size_t pad, size_t H)
{
    long i = (long)(o * stride + kk) - (long)pad;
    return i < 0 || i >= (long)H ? -1 : i;
}

void conv2d_fwd_d(double *out, const double *inp, const double *w, const double *b, size_t N,
                  size_t C, size_t H, size_t W, size_t OC, size_t K, size_t stride, size_t pad_lo,
                  size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < OC; oc++)
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double acc = b ? b[oc] : 0.0;
                    for (size_t c = 0; c < C; c++)
                        for (size_t kh = 0; kh < K; kh++)
                            for (size_t kw = 0; kw < K; kw++) {
                                long iy = conv_src(oh, kh, stride, pad_lo, H);
                                long ix = conv_src(ow, kw, stride, pad_lo, W);
                                if (iy < 0 || ix < 0) continue;
                                acc += w[((oc * C + c) * K + kh) * K + kw] *
                                       inp[((n * C + c) * H + (size_t)iy) * W + (size_t)ix];
                            }
                    out[((n * OC + oc) * OH + oh) * OW + ow] = acc;
                }
}

void conv2d_bwd_ref(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, size_t N, size_t C, size_t H, size_t W, size_t OC, size_t K,
                    size_t stride, size_t pad_lo, size_t pad_hi)
{
    size_t OH = conv2d_out_size(H, K, stride, pad_lo, pad_hi);
    size_t OW = conv2d_out_size(W, K, stride, pad_lo, pad_hi);
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < OC; oc++)
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double g = dout[((n * OC + oc) * OH + oh) * OW + ow];
                    if (db) db[oc] += g;
                    for (size_t c = 0; c < C; c++)
                        for (size_t kh = 0; kh < K; kh++)
                            for (size_t kw = 0; kw < K; kw++) {
                                long iy = conv_src(oh, kh, stride, pad_lo, H);
                                long ix = conv_src(ow, kw, stride, pad_lo, W);
                                if (iy < 0 || ix < 0) continue;
                                size_t wi = ((oc * C + c) * K + kh) * K + kw;
                                size_t xi = ((n * C + c) * H + (size_t)iy) * W + (size_t)ix;
                                if (dw) dw[wi] += g * inp[xi];
                                if (dinp) dinp[xi] += g * w[wi];
                            }
                }
}

/* Softmax row i of head (b, h) into p [Nk] (0 for masked keys). */
static void attn_row_d(double *p, const double *q, const double *k, size_t b, size_t h, size_t i,
                       size_t Nq, size_t Nk, size_t H, size_t D, double scale, int causal)
{
    size_t ld = H * D, nk = causal ? i + 1 : Nk;
    double mx = -INFINITY, sum = 0.0;
    for (size_t j = 0; j < Nk; j++) {
        double s = 0.0;
        for (size_t d = 0; d < D; d++)
            s += q[(b * Nq + i) * ld + h * D + d] * k[(b * Nk + j) * ld + h * D + d];
        p[j] = j < nk ? s * scale : -INFINITY;
        if (p[j] > mx) mx = p[j];
    }
    for (size_t j = 0; j < Nk; j++) {
        p[j] = j < nk ? exp(p[j] - mx) : 0.0;
        sum += p[j];
    }
    for (size_t j = 0; j < Nk; j++)
        p[j] /= sum;
}

/* Allocates one row (tests only); returns -1 when out of memory. */
int attention_fwd_d(double *out, const double *q, const double *k, const double *v, size_t B,
                    size_t Nq, size_t Nk, size_t H, size_t D, double scale, int causal)
{
    double *p = malloc((Nk ? Nk : 1) * sizeof *p);
    if (!p) return -1;
    size_t ld = H * D;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < Nq; i++) {
                attn_row_d(p, q, k, b, h, i, Nq, Nk, H, D, scale, causal);
                for (size_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (size_t j = 0; j < Nk; j++)
                        acc += p[j] * v[(b * Nk + j) * ld + h * D + d];
                    out[(b * Nq + i) * ld + h * D + d] = acc;
                }
            }
    free(p);
    return 0;
}

/* dV_j += P_ij dO_i; dP_ij = dO_i . V_j; dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij');
 * dQ_i += scale sum_j dS_ij K_j; dK_j += scale dS_ij Q_i. Allocates two rows. */
int attention_bwd_ref(double *dq, double *dk, double *dv, const double *dout, const double *q,
                      const double *k, const double *v, size_t B, size_t Nq, size_t Nk, size_t H,
                      size_t D, double scale, int causal)
{
    double *p = malloc((Nk ? Nk : 1) * sizeof *p), *dp = malloc((Nk ? Nk : 1) * sizeof *dp);
    if (!p || !dp) {
        free(p);
        free(dp);
        return -1;
    }
    size_t ld = H * D;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < Nq; i++) {
                attn_row_d(p, q, k, b, h, i, Nq, Nk, H, D, scale, causal);
                const double *g = dout + (b * Nq + i) * ld + h * D;
                double delta = 0.0;
                for (size_t j = 0; j < Nk; j++) {
                    const double *vj = v + (b * Nk + j) * ld + h * D;
                    double acc = 0.0;
                    for (size_t d = 0; d < D; d++) {
                        acc += g[d] * vj[d];
                        dv[(b * Nk + j) * ld + h * D + d] += p[j] * g[d];
                    }
                    dp[j] = acc;
                    delta += p[j] * acc;
                }
                for (size_t j = 0; j < Nk; j++) {
                    double ds = p[j] * (dp[j] - delta) * scale;
                    for (size_t d = 0; d < D; d++) {
                        dq[(b * Nq + i) * ld + h * D + d] += ds * k[(b * Nk + j) * ld + h * D + d];
                        dk[(b * Nk + j) * ld + h * D + d] += ds * q[(b * Nq + i) * ld + h * D + d];
                    }
                }
            }
    free(p);
    free(dp);
    return 0;
}
