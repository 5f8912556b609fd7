/* Backward kernels against finite differences and plain references. Exit status is the verdict.
 *
 * For every backward:
 *  - small odd shapes: central finite differences (h = 1e-5) of the double-precision
 *    reference forward (grad_ref.c) for L = sum(dout * f(inputs)); the float backward must
 *    match per tensor with relative L2 error <= 1e-5, and the double reference backward
 *    (where there is one) with <= 1e-7 (FD truncation ~1e-10 relative at this h);
 *  - larger shapes (several attention tiles, D chunks, conv chunks, > 64 channels): float
 *    backward vs the double reference backward, relative L2 <= 1e-5 per tensor;
 *  - accumulation: a second call on the same gradients gives twice the first,
 *    relative L2 <= 1e-6;
 *  - NULL weight gradients (ops with parameters): dinp alone equals dinp of the full call,
 *    relative L2 <= 1e-6 (it is the same computation, so in practice exact).
 * Then prints timings of attention backward [2, 4096, 8*40] and conv2d backward
 * [2, 320, 64, 64] 3x3 next to their forwards (informational; no threshold).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXT 3

static int failures;
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static float urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void *xmalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    size_t N, C, H, W, OC, K, stride, plo, phi, G, Nq, Nk, Hh, D, F, R, scratch;
    int silu, causal;
    float scale;
} Cfg;

/* One op: nt tensors (t [0] the main input), their sizes, nout outputs. fwd_d is the double
 * forward; bwd runs the fast forward (for saved activations) and the fast backward with
 * gradient pointers g [i] (NULL for the tensors not in mask); ref the double backward. */
typedef struct {
    const char *name;
    int nt;
    int has_weights;
    void (*sizes)(size_t *n, size_t *nout, const Cfg *c);
    void (*fwd_d)(double *out, double *const *t, const Cfg *c);
    void (*bwd)(float *const *g, float *const *t, const float *dout, const Cfg *c);
    void (*ref)(double *const *g, double *const *t, const double *dout, const Cfg *c);
    float init_scale[MAXT];
} Op;

/* ---- ops ---- */
static void linear_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C, n[1] = c->OC * c->C, n[2] = c->OC, *no = c->N * c->OC;
}
static void linear_fd(double *o, double *const *t, const Cfg *c)
{
    linear_fwd_d(o, t[0], t[1], t[2], c->N, c->C, c->OC);
}
static void linear_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    linear_backward(g[0], g[1], g[2], dy, t[0], t[1], c->N, c->C, c->OC);
}
static void linear_rf(double *const *g, double *const *t, const double *dy, const Cfg *c)
{
    for (size_t n = 0; n < c->N; n++)
        for (size_t o = 0; o < c->OC; o++) {
            double gy = dy[n * c->OC + o];
            g[2][o] += gy;
            for (size_t i = 0; i < c->C; i++) {
                g[0][n * c->C + i] += gy * t[1][o * c->C + i];
                g[1][o * c->C + i] += gy * t[0][n * c->C + i];
            }
        }
}

static void ln_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C, n[1] = n[2] = c->C, *no = c->N * c->C;
}
static void ln_fd(double *o, double *const *t, const Cfg *c)
{
    layernorm_fwd_d(o, t[0], t[1], t[2], c->N, c->C, 1e-5);
}
static void ln_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    float *y = xmalloc(c->N * c->C * sizeof *y), *m = xmalloc(c->N * 4), *r = xmalloc(c->N * 4);
    layernorm_forward(y, m, r, t[0], t[1], t[2], c->N, c->C, 1e-5f);
    layernorm_backward(g[0], g[1], g[2], m, r, dy, t[0], t[1], c->N, c->C);
    free(y), free(m), free(r);
}
static void ln_rf(double *const *g, double *const *t, const double *dy, const Cfg *c)
{
    layernorm_bwd_ref(g[0], g[1], g[2], dy, t[0], t[1], c->N, c->C, 1e-5);
}

static void gn_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C * c->H, n[1] = n[2] = c->C, *no = n[0];
}
static void gn_fd(double *o, double *const *t, const Cfg *c)
{
    groupnorm_fwd_d(o, t[0], t[1], t[2], c->N, c->C, c->H, c->G, 1e-5, c->silu);
}
static void gn_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    size_t n = c->N * c->C * c->H;
    float *y = xmalloc(n * 4), *m = xmalloc(c->N * c->G * 4), *r = xmalloc(c->N * c->G * 4);
    groupnorm_forward(y, m, r, t[0], t[1], t[2], c->N, c->C, c->H, c->G, 1e-5f, c->silu);
    groupnorm_backward(g[0], g[1], g[2], m, r, dy, t[0], t[1], t[2], c->N, c->C, c->H, c->G,
                       c->silu);
    free(y), free(m), free(r);
}
static void gn_rf(double *const *g, double *const *t, const double *dy, const Cfg *c)
{
    groupnorm_bwd_ref(g[0], g[1], g[2], dy, t[0], t[1], t[2], c->N, c->C, c->H, c->G, 1e-5,
                      c->silu);
}

/* elementwise: c->silu selects 0 gelu, 1 quick_gelu, 2 silu */
static void ew_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = *no = c->N;
}
static void ew_fd(double *o, double *const *t, const Cfg *c)
{
    for (size_t i = 0; i < c->N; i++)
        o[i] = c->silu == 0   ? gelu_ref_d(t[0][i])
               : c->silu == 1 ? quick_gelu_ref_d(t[0][i])
                              : silu_ref_d(t[0][i]);
}
static void ew_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    if (c->silu == 0)
        gelu_backward(g[0], dy, t[0], c->N);
    else if (c->silu == 1)
        quick_gelu_backward(g[0], dy, t[0], c->N);
    else
        silu_backward(g[0], dy, t[0], c->N);
}

static void geglu_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = 2 * c->N * c->F, *no = c->N * c->F;
}
static void geglu_fd(double *o, double *const *t, const Cfg *c)
{
    for (size_t n = 0; n < c->N; n++)
        for (size_t f = 0; f < c->F; f++)
            o[n * c->F + f] = t[0][n * 2 * c->F + f] * gelu_ref_d(t[0][n * 2 * c->F + c->F + f]);
}
static void geglu_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    geglu_backward(g[0], dy, t[0], c->N, c->F);
}

static void up_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C * c->H * c->W, *no = 4 * n[0];
}
static void up_fd(double *o, double *const *t, const Cfg *c)
{
    size_t W2 = 2 * c->W;
    for (size_t r = 0; r < c->N * c->C * 2 * c->H; r++)
        for (size_t x = 0; x < W2; x++)
            o[r * W2 + x] = t[0][(r / 2) * c->W + x / 2];
}
static void up_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    upsample_nearest2x_backward(g[0], dy, c->N, c->C, c->H, c->W);
}

static void cat_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C * c->H, n[1] = c->N * c->OC * c->H, *no = n[0] + n[1];
}
static void cat_fd(double *o, double *const *t, const Cfg *c)
{
    size_t na = c->C * c->H, nb = c->OC * c->H;
    for (size_t n = 0; n < c->N; n++) {
        memcpy(o + n * (na + nb), t[0] + n * na, na * sizeof *o);
        memcpy(o + n * (na + nb) + na, t[1] + n * nb, nb * sizeof *o);
    }
}
static void cat_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    concat_channels_backward(g[0], g[1], dy, c->N, c->C, c->OC, c->H);
}

static size_t conv_P(const Cfg *c)
{
    return conv2d_out_size(c->H, c->K, c->stride, c->plo, c->phi) *
           conv2d_out_size(c->W, c->K, c->stride, c->plo, c->phi);
}
static void conv_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C * c->H * c->W, n[1] = c->OC * c->C * c->K * c->K, n[2] = c->OC;
    *no = c->N * c->OC * conv_P(c);
}
static void conv_fd(double *o, double *const *t, const Cfg *c)
{
    conv2d_fwd_d(o, t[0], t[1], t[2], c->N, c->C, c->H, c->W, c->OC, c->K, c->stride, c->plo,
                 c->phi);
}
static void conv_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    float *scratch = xmalloc(c->scratch * 4);
    if (conv2d_backward(g[0], g[1], g[2], dy, t[0], t[1], scratch, c->scratch, c->N, c->C, c->H,
                        c->W, c->OC, c->K, c->stride, c->plo, c->phi) != 0) {
        printf("FAIL conv2d_backward refused scratch %zu\n", c->scratch);
        failures++;
    }
    free(scratch);
}
static void conv_rf(double *const *g, double *const *t, const double *dy, const Cfg *c)
{
    conv2d_bwd_ref(g[0], g[1], g[2], dy, t[0], t[1], c->N, c->C, c->H, c->W, c->OC, c->K, c->stride,
                   c->plo, c->phi);
}

static void att_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->Nq * c->Hh * c->D, n[1] = n[2] = c->N * c->Nk * c->Hh * c->D, *no = n[0];
}
static void att_fd(double *o, double *const *t, const Cfg *c)
{
    if (attention_fwd_d(o, t[0], t[1], t[2], c->N, c->Nq, c->Nk, c->Hh, c->D, c->scale,
                        c->causal) != 0)
        exit(2);
}
static void att_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    size_t no = c->N * c->Nq * c->Hh * c->D;
    float *o = xmalloc(no * 4), *lse = xmalloc(c->N * c->Hh * c->Nq * 4);
    attention_forward(o, lse, t[0], t[1], t[2], c->N, c->Nq, c->Nk, c->Hh, c->D, c->scale,
                      c->causal);
    attention_backward(g[0], g[1], g[2], o, lse, dy, t[0], t[1], t[2], c->N, c->Nq, c->Nk, c->Hh,
                       c->D, c->scale, c->causal);
    free(o), free(lse);
}
static void att_rf(double *const *g, double *const *t, const double *dy, const Cfg *c)
{
    if (attention_bwd_ref(g[0], g[1], g[2], dy, t[0], t[1], t[2], c->N, c->Nq, c->Nk, c->Hh, c->D,
                          c->scale, c->causal) != 0)
        exit(2);
}

/* LoRA linear: t = x [N, C], down [R, C], up [OC, R]; out = scale (x down^T) up^T */
static void loral_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C, n[1] = c->R * c->C, n[2] = c->OC * c->R, *no = c->N * c->OC;
}
static void loral_fd(double *o, double *const *t, const Cfg *c)
{
    double *xa = xmalloc(c->N * c->R * sizeof *xa);
    linear_fwd_d(xa, t[0], t[1], NULL, c->N, c->C, c->R);
    linear_fwd_d(o, xa, t[2], NULL, c->N, c->R, c->OC);
    for (size_t i = 0; i < c->N * c->OC; i++)
        o[i] *= c->scale;
    free(xa);
}
static void loral_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    float *o = xmalloc(c->N * c->OC * 4), *xa = xmalloc(c->N * c->R * 4);
    float *dxa = xmalloc(c->N * c->R * 4);
    lora_linear_forward(o, xa, t[0], t[1], t[2], c->scale, c->N, c->C, c->OC, c->R);
    lora_linear_backward(g[0], g[1], g[2], dxa, xa, dy, t[0], t[1], t[2], c->scale, c->N, c->C,
                         c->OC, c->R);
    free(o), free(xa), free(dxa);
}

/* LoRA conv: t = x [N, C, H, W], down [R, C, K, K], up [OC, R] */
static void lorac_sizes(size_t *n, size_t *no, const Cfg *c)
{
    n[0] = c->N * c->C * c->H * c->W, n[1] = c->R * c->C * c->K * c->K, n[2] = c->OC * c->R;
    *no = c->N * c->OC * conv_P(c);
}
static void lorac_fd(double *o, double *const *t, const Cfg *c)
{
    size_t P = conv_P(c);
    double *xa = xmalloc(c->N * c->R * P * sizeof *xa);
    conv2d_fwd_d(xa, t[0], t[1], NULL, c->N, c->C, c->H, c->W, c->R, c->K, c->stride, c->plo,
                 c->phi);
    for (size_t n = 0; n < c->N; n++)
        for (size_t oc = 0; oc < c->OC; oc++)
            for (size_t p = 0; p < P; p++) {
                double acc = 0.0;
                for (size_t r = 0; r < c->R; r++)
                    acc += t[2][oc * c->R + r] * xa[(n * c->R + r) * P + p];
                o[(n * c->OC + oc) * P + p] = c->scale * acc;
            }
    free(xa);
}
static void lorac_bw(float *const *g, float *const *t, const float *dy, const Cfg *c)
{
    size_t P = conv_P(c);
    float *o = xmalloc(c->N * c->OC * P * 4), *xa = xmalloc(c->N * c->R * P * 4);
    float *dxa = xmalloc(c->N * c->R * P * 4), *scratch = xmalloc(c->scratch * 4);
    if (lora_conv2d_forward(o, xa, t[0], t[1], t[2], c->scale, scratch, c->scratch, c->N, c->C,
                            c->H, c->W, c->OC, c->R, c->K, c->stride, c->plo, c->phi) != 0 ||
        lora_conv2d_backward(g[0], g[1], g[2], dxa, xa, dy, t[0], t[1], t[2], c->scale, scratch,
                             c->scratch, c->N, c->C, c->H, c->W, c->OC, c->R, c->K, c->stride,
                             c->plo, c->phi) != 0) {
        printf("FAIL lora_conv2d refused scratch\n");
        failures++;
    }
    free(o), free(xa), free(dxa), free(scratch);
}

static const Op op_linear = {"linear",  3,         1,         linear_sizes,
                             linear_fd, linear_bw, linear_rf, {1, 1, 1}};
static const Op op_ln = {"layernorm", 3, 1, ln_sizes, ln_fd, ln_bw, ln_rf, {2, 1, 1}};
static const Op op_gn = {"groupnorm", 3, 1, gn_sizes, gn_fd, gn_bw, gn_rf, {2, 1, 1}};
static const Op op_ew = {"activation", 1, 0, ew_sizes, ew_fd, ew_bw, NULL, {4}};
static const Op op_geglu = {"geglu", 1, 0, geglu_sizes, geglu_fd, geglu_bw, NULL, {3}};
static const Op op_up = {"upsample2x", 1, 0, up_sizes, up_fd, up_bw, NULL, {1}};
static const Op op_cat = {"concat", 2, 0, cat_sizes, cat_fd, cat_bw, NULL, {1, 1}};
static const Op op_conv = {"conv2d", 3, 1, conv_sizes, conv_fd, conv_bw, conv_rf, {1, 0.5f, 1}};
static const Op op_att = {"attention", 3, 0, att_sizes, att_fd, att_bw, att_rf, {1.5f, 1.5f, 1}};
static const Op op_loral = {"lora_linear", 3, 1, loral_sizes, loral_fd, loral_bw, NULL, {1, 1, 1}};
static const Op op_lorac = {"lora_conv2d", 3,        1,    lorac_sizes,
                            lorac_fd,      lorac_bw, NULL, {1, 0.5f, 1}};

/* ---- driver ---- */
static double rel_l2(const float *a, const double *ref, size_t n, double mul)
{
    double e = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - mul * ref[i];
        e += d * d;
        r += mul * ref[i] * mul * ref[i];
    }
    return sqrt(e) / (r > 0.0 ? sqrt(r) : 1e-300);
}

static double rel_l2_d(const double *a, const double *ref, size_t n)
{
    double e = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += (a[i] - ref[i]) * (a[i] - ref[i]);
        r += ref[i] * ref[i];
    }
    return sqrt(e) / (r > 0.0 ? sqrt(r) : 1e-300);
}

static void verdict(const char *op, const char *label, const char *what, int t, double err,
                    double tol)
{
    int ok = err <= tol && !isnan(err);
    printf("%s %-12s %-34s t%d %-22s rel L2 %.2e (tol %.0e)\n", ok ? "ok  " : "FAIL", op, label, t,
           what, err, tol);
    if (!ok) failures++;
}

/* fd: finite differences of the double forward (small shapes); otherwise the reference
 * backward is the truth. */
static void run_case(const Op *op, const Cfg *c, const char *label, int fd)
{
    size_t n[MAXT] = {0}, nout = 0;
    op->sizes(n, &nout, c);
    float *t[MAXT] = {0}, *g[MAXT] = {0}, *g2[MAXT] = {0};
    double *td[MAXT] = {0}, *truth[MAXT] = {0}, *rg[MAXT] = {0};
    for (int i = 0; i < op->nt; i++) {
        t[i] = xmalloc(n[i] * 4), g[i] = xmalloc(n[i] * 4), g2[i] = xmalloc(n[i] * 4);
        td[i] = xmalloc(n[i] * 8), truth[i] = xmalloc(n[i] * 8), rg[i] = xmalloc(n[i] * 8);
        for (size_t e = 0; e < n[i]; e++) {
            t[i][e] = op->init_scale[i] * urand();
            /* norm weights around 1 */
            if ((op == &op_ln || op == &op_gn) && i == 1) t[i][e] += 1.0f;
            td[i][e] = t[i][e];
        }
    }
    float *dy = xmalloc(nout * 4);
    double *dyd = xmalloc(nout * 8), *o1 = xmalloc(nout * 8), *o2 = xmalloc(nout * 8);
    for (size_t e = 0; e < nout; e++)
        dy[e] = urand(), dyd[e] = dy[e];

    op->bwd(g, t, dy, c);
    if (op->ref) op->ref(rg, td, dyd, c);
    if (fd) {
        const double h = 1e-5;
        for (int i = 0; i < op->nt; i++)
            for (size_t e = 0; e < n[i]; e++) {
                double save = td[i][e], lp = 0.0, lm = 0.0;
                td[i][e] = save + h;
                op->fwd_d(o1, td, c);
                td[i][e] = save - h;
                op->fwd_d(o2, td, c);
                td[i][e] = save;
                for (size_t k = 0; k < nout; k++)
                    lp += dyd[k] * o1[k], lm += dyd[k] * o2[k];
                truth[i][e] = (lp - lm) / (2.0 * h);
            }
        for (int i = 0; i < op->nt; i++) {
            verdict(op->name, label, "fast vs FD", i, rel_l2(g[i], truth[i], n[i], 1.0), 1e-5);
            if (op->ref)
                verdict(op->name, label, "ref vs FD", i, rel_l2_d(rg[i], truth[i], n[i]), 1e-7);
        }
    } else {
        for (int i = 0; i < op->nt; i++)
            verdict(op->name, label, "fast vs ref", i, rel_l2(g[i], rg[i], n[i], 1.0), 1e-5);
    }
    /* accumulation: a second call adds the same gradient again */
    double *first[MAXT] = {0};
    for (int i = 0; i < op->nt; i++) {
        first[i] = xmalloc(n[i] * 8);
        for (size_t e = 0; e < n[i]; e++)
            first[i][e] = g[i][e];
    }
    op->bwd(g, t, dy, c);
    for (int i = 0; i < op->nt; i++)
        verdict(op->name, label, "twice = 2x once", i, rel_l2(g[i], first[i], n[i], 2.0), 1e-6);
    /* NULL weight gradients: dinp only */
    if (op->has_weights) {
        float *only[MAXT] = {g2[0], NULL, NULL};
        op->bwd(only, t, dy, c);
        verdict(op->name, label, "dinp with NULL dW", 0, rel_l2(g2[0], first[0], n[0], 1.0), 1e-6);
    }
    for (int i = 0; i < op->nt; i++)
        free(t[i]), free(g[i]), free(g2[i]), free(td[i]), free(truth[i]), free(rg[i]),
            free(first[i]);
    free(dy), free(dyd), free(o1), free(o2);
}

static void bench(void)
{
    /* attention [2, 4096, 8*40] self-attention, scale 1/sqrt(40) */
    size_t B = 2, N = 4096, H = 8, D = 40, n = B * N * H * D;
    float *q = xmalloc(n * 4), *k = xmalloc(n * 4), *v = xmalloc(n * 4), *o = xmalloc(n * 4);
    float *lse = xmalloc(B * H * N * 4), *dq = xmalloc(n * 4), *dk = xmalloc(n * 4);
    float *dv = xmalloc(n * 4), *dout = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        q[i] = urand(), k[i] = urand(), v[i] = urand(), dout[i] = urand();
    float scale = 1.0f / sqrtf((float)D);
    double t0 = now();
    attention_forward(o, lse, q, k, v, B, N, N, H, D, scale, 0);
    double t1 = now();
    attention_backward(dq, dk, dv, o, lse, dout, q, k, v, B, N, N, H, D, scale, 0);
    double t2 = now();
    double fl = 4.0 * (double)B * H * N * N * D;
    printf("time attention [2, 4096, 8*40]: forward %.3f s (%.1f GFLOP/s), backward %.3f s "
           "(%.1f GFLOP/s counting 2.5x the forward's flops), backward/forward %.2f\n",
           t1 - t0, fl / (t1 - t0) * 1e-9, t2 - t1, 2.5 * fl / (t2 - t1) * 1e-9,
           (t2 - t1) / (t1 - t0));
    free(q), free(k), free(v), free(o), free(lse), free(dq), free(dk), free(dv), free(dout);

    /* conv2d [2, 320, 64, 64] -> 320, 3x3, stride 1, pad 1; scratch one whole image chunk */
    size_t C = 320, HH = 64, WW = 64, OC = 320, K = 3, P = HH * WW, rows = C * K * K;
    size_t nx = 2 * C * P, ny = 2 * OC * P, nw = OC * rows, ns = rows * P;
    float *x = xmalloc(nx * 4), *w = xmalloc(nw * 4), *b = xmalloc(OC * 4), *y = xmalloc(ny * 4);
    float *dx = xmalloc(nx * 4), *dw = xmalloc(nw * 4), *db = xmalloc(OC * 4),
          *dy = xmalloc(ny * 4);
    float *scratch = xmalloc(ns * 4);
    for (size_t i = 0; i < nx; i++)
        x[i] = urand();
    for (size_t i = 0; i < nw; i++)
        w[i] = 0.05f * urand();
    for (size_t i = 0; i < ny; i++)
        dy[i] = urand();
    t0 = now();
    int rc = conv2d_forward(y, x, w, b, scratch, ns, 2, C, HH, WW, OC, K, 1, 1, 1);
    t1 = now();
    rc |= conv2d_backward(dx, dw, db, dy, x, w, scratch, ns, 2, C, HH, WW, OC, K, 1, 1, 1);
    t2 = now();
    rc |= conv2d_backward(dx, NULL, NULL, dy, x, w, scratch, ns, 2, C, HH, WW, OC, K, 1, 1, 1);
    double t3 = now();
    if (rc) {
        printf("FAIL conv2d bench refused scratch\n");
        failures++;
    }
    fl = 2.0 * 2 * OC * rows * P;
    printf("time conv2d [2, 320, 64, 64] 3x3 -> 320: forward %.3f s (%.1f GFLOP/s), backward "
           "(dX, dW, db) %.3f s (%.1f GFLOP/s), backward/forward %.2f; dX only (dW = NULL) "
           "%.3f s\n",
           t1 - t0, fl / (t1 - t0) * 1e-9, t2 - t1, 2.0 * fl / (t2 - t1) * 1e-9,
           (t2 - t1) / (t1 - t0), t3 - t2);
    free(x), free(w), free(b), free(y), free(dx), free(dw), free(db), free(dy), free(scratch);
}

int main(int argc, char **argv)
{
    Cfg c;
    /* dense */
    c = (Cfg){.N = 5, .C = 7, .OC = 3};
    run_case(&op_linear, &c, "N5 IC7 OC3", 1);
    c = (Cfg){.N = 67, .C = 131, .OC = 97};
    run_case(&op_linear, &c, "N67 IC131 OC97", 0);
    c = (Cfg){.N = 5, .C = 11};
    run_case(&op_ln, &c, "N5 C11", 1);
    c = (Cfg){.N = 33, .C = 150};
    run_case(&op_ln, &c, "N33 C150", 0);
    for (int a = 0; a < 3; a++) {
        c = (Cfg){.N = 41, .silu = a};
        run_case(&op_ew, &c, a == 0 ? "gelu n41" : a == 1 ? "quick_gelu n41" : "silu n41", 1);
    }
    c = (Cfg){.N = 3, .F = 7};
    run_case(&op_geglu, &c, "N3 F7", 1);
    c = (Cfg){.N = 2, .C = 3, .H = 5, .W = 7};
    run_case(&op_up, &c, "N2 C3 5x7", 1);
    c = (Cfg){.N = 2, .C = 3, .OC = 2, .H = 5};
    run_case(&op_cat, &c, "N2 Ca3 Cb2 HW5", 1);
    /* group norm: H holds HW */
    for (int s = 0; s < 2; s++) {
        c = (Cfg){.N = 2, .C = 6, .H = 35, .G = 3, .silu = s};
        run_case(&op_gn, &c, s ? "N2 C6 HW35 G3 silu" : "N2 C6 HW35 G3", 1);
        c = (Cfg){.N = 2, .C = 96, .H = 77, .G = 32, .silu = s};
        run_case(&op_gn, &c, s ? "N2 C96 HW77 G32 silu" : "N2 C96 HW77 G32", 0);
    }
    /* convolutions: scratch rows (1 pixel per chunk), a partial row, whole image */
    struct {
        size_t C, H, W, OC, K, s, lo, hi, scratch_px;
        const char *label;
    } cv[] = {
        {3, 5, 7, 4, 3, 2, 1, 1, 1, "C3 5x7 k3 s2 p1 chunk 1px"},
        {3, 5, 7, 4, 3, 1, 1, 1, 3, "C3 5x7 k3 s1 p1 chunk 3px"},
        {3, 5, 7, 4, 3, 2, 0, 1, 1000, "C3 5x7 k3 s2 p0/1 (VAE)"},
        {3, 5, 7, 4, 1, 1, 0, 0, 0, "C3 5x7 1x1 direct"},
        {3, 6, 7, 2, 3, 1, 0, 0, 5, "C3 6x7 k3 s1 p0 chunk 5px"},
    };
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) {
        c = (Cfg){.N = 2,
                  .C = cv[i].C,
                  .H = cv[i].H,
                  .W = cv[i].W,
                  .OC = cv[i].OC,
                  .K = cv[i].K,
                  .stride = cv[i].s,
                  .plo = cv[i].lo,
                  .phi = cv[i].hi,
                  .scratch = cv[i].C * cv[i].K * cv[i].K * cv[i].scratch_px};
        run_case(&op_conv, &c, cv[i].label, 1);
    }
    c = (Cfg){.N = 2,
              .C = 32,
              .H = 17,
              .W = 19,
              .OC = 24,
              .K = 3,
              .stride = 1,
              .plo = 1,
              .phi = 1,
              .scratch = 32 * 9 * 40};
    run_case(&op_conv, &c, "C32 17x19 k3 s1 p1 chunks", 0);
    c = (Cfg){.N = 2,
              .C = 32,
              .H = 17,
              .W = 19,
              .OC = 24,
              .K = 3,
              .stride = 2,
              .plo = 0,
              .phi = 1,
              .scratch = 32 * 9 * 1000};
    run_case(&op_conv, &c, "C32 17x19 k3 s2 p0/1", 0);
    c = (Cfg){.N = 2, .C = 40, .H = 9, .W = 11, .OC = 70, .K = 1, .stride = 1};
    run_case(&op_conv, &c, "C40 9x11 1x1 -> 70", 0);
    /* attention: N holds B, Hh the heads */
    c = (Cfg){.N = 2, .Nq = 7, .Nk = 13, .Hh = 3, .D = 5, .scale = 0.4472136f};
    run_case(&op_att, &c, "B2 Nq7 Nk13 H3 D5 cross", 1);
    c = (Cfg){.N = 2, .Nq = 13, .Nk = 13, .Hh = 3, .D = 5, .scale = 0.4472136f, .causal = 1};
    run_case(&op_att, &c, "B2 N13 H3 D5 causal", 1);
    c = (Cfg){.N = 1, .Nq = 9, .Nk = 6, .Hh = 1, .D = 70, .scale = 0.12f};
    run_case(&op_att, &c, "B1 Nq9 Nk6 H1 D70 (2 chunks)", 1);
    c = (Cfg){.N = 1, .Nq = 150, .Nk = 200, .Hh = 1, .D = 40, .scale = 0.158f};
    run_case(&op_att, &c, "B1 Nq150 Nk200 H1 D40 split", 0);
    c = (Cfg){.N = 2, .Nq = 150, .Nk = 77, .Hh = 4, .D = 80, .scale = 0.11f};
    run_case(&op_att, &c, "B2 Nq150 Nk77 H4 D80 head", 0);
    c = (Cfg){.N = 1, .Nq = 141, .Nk = 141, .Hh = 1, .D = 24, .scale = 0.2f, .causal = 1};
    run_case(&op_att, &c, "B1 N141 H1 D24 causal split", 0);
    c = (Cfg){.N = 2, .Nq = 141, .Nk = 141, .Hh = 3, .D = 24, .scale = 0.2f, .causal = 1};
    run_case(&op_att, &c, "B2 N141 H3 D24 causal head", 0);
    /* LoRA */
    c = (Cfg){.N = 5, .C = 7, .OC = 6, .R = 3, .scale = 0.75f};
    run_case(&op_loral, &c, "N5 IC7 OC6 R3", 1);
    c = (Cfg){.N = 2,
              .C = 3,
              .H = 5,
              .W = 7,
              .OC = 4,
              .R = 2,
              .K = 3,
              .stride = 2,
              .plo = 1,
              .phi = 1,
              .scratch = 27 * 4,
              .scale = 0.5f};
    run_case(&op_lorac, &c, "C3 5x7 k3 s2 R2", 1);
    c = (Cfg){.N = 2, .C = 3, .H = 5, .W = 7, .OC = 4, .R = 2, .K = 1, .stride = 1, .scale = 0.5f};
    run_case(&op_lorac, &c, "C3 5x7 1x1 R2", 1);

    if (!(argc > 1 && strcmp(argv[1], "--no-bench") == 0)) bench();
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
