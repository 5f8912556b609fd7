/* CLIP text encoder backward: directional gradient check over all parameters (KANN style).
 *
 * A random tiny encoder (both activations), every parameter trainable plus rank-3 LoRA
 * adapters (nonzero up) on all six linears of every layer. Loss L = sum(out * w) for a fixed
 * random w, accumulated in double. One random direction u over the whole parameter vector:
 *   numeric  D(h) = (L(theta + h u) - L(theta - h u)) / (2 h) at h = 1e-3 and 5e-4 (float
 *            forwards), Richardson-extrapolated (4 D(h/2) - D(h)) / 3
 *   analytic g . u                                        (one backward, dot in double)
 * must agree to TOL_DIR relative (what is left is float32 rounding in the forwards, about
 * 1e-4; a wrong term in any gradient shows as O(1e-2) or more).
 * Also: backward accumulates (a second call doubles every gradient), and with frozen
 * embeddings and layer 0 (NULL gradients) the remaining gradients equal those of the full
 * run (the skipped layer must not change them). Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "clip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_DIR 1e-3   /* relative, directional derivative (measured <= 1.5e-4) */
#define TOL_ACC 1e-6   /* relative L2, second backward = 2 x first */
#define TOL_FROZEN 1e-6 /* relative L2, frozen-prefix gradients vs full */
#define NDIR 3         /* directions per activation */

static int failures;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void)
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float nrand(void)
{
    double u1 = urand(), u2 = urand();
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
}

/* All parameters (and grads) in one block, carved in a fixed order. */
typedef struct {
    ClipConfig c;
    size_t R, n;
    float *theta, *grad;
    ClipParams p;
    ClipGrads g;
    ClipLayerParams *lp;
    ClipLayerGrads *lg;
    ClipLayerLora *lo;
    ClipLayerLoraGrads *lgo;
} Net;

typedef struct {
    Net *net;
    size_t off;
    int fill; /* 0: count only */
} Carver;

/* kind: 0 weight ~ N(0, 1/fan_in), 1 bias ~ N(0, 0.1), 2 LN weight 1 + N(0, 0.1), 3 LN bias,
 * 4 embedding N(0, 0.5) */
static void take(Carver *cv, const float **slot, float **gslot, size_t n, size_t fan_in,
                 int kind)
{
    if (cv->fill) {
        float *v = cv->net->theta + cv->off;
        for (size_t i = 0; i < n; i++) {
            float r = nrand();
            v[i] = kind == 0 ? r / sqrtf((float)fan_in)
                 : kind == 2 ? 1.0f + 0.1f * r
                 : kind == 4 ? 0.5f * r : 0.1f * r;
        }
        *slot = v;
        *gslot = cv->net->grad + cv->off;
    }
    cv->off += n;
}

static void carve(Carver *cv)
{
    Net *N = cv->net;
    const size_t D = (size_t)N->c.hidden, I = (size_t)N->c.intermediate, R = N->R;
    take(cv, &N->p.token_embedding, &N->g.token_embedding, (size_t)N->c.vocab_size * D, 1, 4);
    take(cv, &N->p.position_embedding, &N->g.position_embedding, (size_t)N->c.max_pos * D, 1, 4);
    for (int l = 0; l < N->c.layers; l++) {
        ClipLayerParams *p = &N->lp[l];
        ClipLayerGrads *g = &N->lg[l];
        take(cv, &p->ln1_w, &g->ln1_w, D, 1, 2), take(cv, &p->ln1_b, &g->ln1_b, D, 1, 3);
        take(cv, &p->q_w, &g->q_w, D * D, D, 0), take(cv, &p->q_b, &g->q_b, D, 1, 1);
        take(cv, &p->k_w, &g->k_w, D * D, D, 0), take(cv, &p->k_b, &g->k_b, D, 1, 1);
        take(cv, &p->v_w, &g->v_w, D * D, D, 0), take(cv, &p->v_b, &g->v_b, D, 1, 1);
        take(cv, &p->o_w, &g->o_w, D * D, D, 0), take(cv, &p->o_b, &g->o_b, D, 1, 1);
        take(cv, &p->ln2_w, &g->ln2_w, D, 1, 2), take(cv, &p->ln2_b, &g->ln2_b, D, 1, 3);
        take(cv, &p->fc1_w, &g->fc1_w, I * D, D, 0), take(cv, &p->fc1_b, &g->fc1_b, I, 1, 1);
        take(cv, &p->fc2_w, &g->fc2_w, D * I, I, 0), take(cv, &p->fc2_b, &g->fc2_b, D, 1, 1);
        LoraParams *lo[6] = {&N->lo[l].q, &N->lo[l].k, &N->lo[l].v, &N->lo[l].o, &N->lo[l].fc1,
                             &N->lo[l].fc2};
        LoraGrads *lgo[6] = {&N->lgo[l].q, &N->lgo[l].k, &N->lgo[l].v, &N->lgo[l].o,
                             &N->lgo[l].fc1, &N->lgo[l].fc2};
        const size_t in[6] = {D, D, D, D, D, I}, out[6] = {D, D, D, D, I, D};
        for (int j = 0; j < 6; j++) {
            take(cv, &lo[j]->down, &lgo[j]->ddown, R * in[j], in[j], 0);
            take(cv, &lo[j]->up, &lgo[j]->dup, out[j] * R, R, 0);
            lo[j]->rank = R;
            lo[j]->scale = 2.0f / (float)R;
        }
    }
    take(cv, &N->p.lnf_w, &N->g.lnf_w, D, 1, 2), take(cv, &N->p.lnf_b, &N->g.lnf_b, D, 1, 3);
}

static double loss(float *out, ClipActs *a, const int32_t *ids, const Net *N, const float *w,
                   size_t n_out)
{
    clip_forward(out, a, ids, &N->p, &N->c);
    double s = 0;
    for (size_t i = 0; i < n_out; i++)
        s += (double)out[i] * w[i];
    return s;
}

static double rel_l2(const float *a, const float *b, double fb, size_t n)
{
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - fb * b[i];
        e += d * d, r += fb * b[i] * fb * b[i];
    }
    return sqrt(e / (r > 0 ? r : 1e-300));
}

static void run(ClipAct act, const char *name)
{
    Net N = {0};
    N.c = (ClipConfig){.vocab_size = 50, .hidden = 32, .intermediate = 48, .heads = 2,
                       .layers = 2, .max_pos = 77, .ln_eps = 1e-5f, .act = act, .pad_id = 49};
    N.R = 3;
    const size_t B = 2, L = (size_t)N.c.layers, BTD = B * 77 * (size_t)N.c.hidden;
    N.lp = calloc(L, sizeof *N.lp), N.lg = calloc(L, sizeof *N.lg);
    N.lo = calloc(L, sizeof *N.lo), N.lgo = calloc(L, sizeof *N.lgo);
    N.p.layer = N.lp, N.g.layer = N.lg, N.p.lora = N.lo, N.g.lora = N.lgo;
    Carver cv = {&N, 0, 0};
    carve(&cv);
    N.n = cv.off;
    N.theta = malloc(N.n * sizeof(float));
    N.grad = calloc(N.n, sizeof(float));
    cv = (Carver){&N, 0, 1};
    carve(&cv);

    size_t n_acts, n_scr;
    if (clip_acts_size(&n_acts, &N.c, B, 1, N.R, NULL) != DB_OK ||
        clip_backward_scratch_size(&n_scr, &N.c, B, N.R, NULL) != DB_OK) {
        printf("FAIL %s: sizes\n", name);
        failures++;
        return;
    }
    float *acts_mem = malloc(n_acts * sizeof(float)), *scr = malloc(n_scr * sizeof(float));
    float *out = malloc(BTD * sizeof(float)), *w = malloc(BTD * sizeof(float));
    float *u = malloc(N.n * sizeof(float)), *theta0 = malloc(N.n * sizeof(float));
    float *g1 = malloc(N.n * sizeof(float));
    int32_t ids[2 * 77];
    for (size_t i = 0; i < 2 * 77; i++)
        ids[i] = i % 77 > 30 ? 49 : (int32_t)(urand() * 50); /* repeated "padding" ids */
    for (size_t i = 0; i < BTD; i++)
        w[i] = nrand();
    ClipActs a;
    clip_acts_carve(&a, acts_mem, &N.c, B, 1, N.R);

    /* analytic gradient */
    loss(out, &a, ids, &N, w, BTD);
    clip_backward(&N.g, &a, w, ids, &N.p, scr, &N.c);
    memcpy(g1, N.grad, N.n * sizeof(float));
    memcpy(theta0, N.theta, N.n * sizeof(float));

    /* central differences at h and h/2, Richardson-extrapolated: (4 D(h/2) - D(h)) / 3
     * cancels the O(h^2) term (measured: D(h) alone is off by up to 4e-3 at h = 1e-3) */
    const double h = 1e-3;
    for (int dir = 0; dir < NDIR; dir++) {
        for (size_t i = 0; i < N.n; i++)
            u[i] = nrand();
        double gu = 0, dh[2];
        for (size_t i = 0; i < N.n; i++)
            gu += (double)g1[i] * u[i];
        for (int k = 0; k < 2; k++) {
            const double hk = k ? h / 2 : h;
            for (size_t i = 0; i < N.n; i++)
                N.theta[i] = (float)(theta0[i] + hk * u[i]);
            double lp = loss(out, &a, ids, &N, w, BTD);
            for (size_t i = 0; i < N.n; i++)
                N.theta[i] = (float)(theta0[i] - hk * u[i]);
            double lm = loss(out, &a, ids, &N, w, BTD);
            dh[k] = (lp - lm) / (2 * hk);
        }
        memcpy(N.theta, theta0, N.n * sizeof(float));
        double num = (4 * dh[1] - dh[0]) / 3, e = fabs(num - gu) / fmax(fabs(gu), 1e-30);
        int ok = e <= TOL_DIR;
        printf("%s %s: direction %d over %zu params: numeric %.8g analytic %.8g rel err %.3g "
               "(tol %g)\n", ok ? "ok  " : "FAIL", name, dir, N.n, num, gu, e, TOL_DIR);
        failures += !ok;
    }

    /* accumulation: a second backward (same forward) doubles every gradient */
    loss(out, &a, ids, &N, w, BTD);
    clip_backward(&N.g, &a, w, ids, &N.p, scr, &N.c);
    double e = rel_l2(N.grad, g1, 2.0, N.n);
    printf("%s %s: second backward accumulates: rel L2 vs 2 x first %.3g (tol %g)\n",
           e <= TOL_ACC ? "ok  " : "FAIL", name, e, TOL_ACC);
    failures += !(e <= TOL_ACC);

    /* frozen embeddings and layer 0: the rest of the gradients unchanged */
    ClipGrads gf = N.g;
    ClipLayerGrads *lgf = calloc(L, sizeof *lgf);
    ClipLayerLoraGrads *lof = calloc(L, sizeof *lof);
    for (size_t l = 1; l < L; l++)
        lgf[l] = N.lg[l], lof[l] = N.lgo[l];
    gf.token_embedding = gf.position_embedding = NULL;
    gf.layer = lgf, gf.lora = lof;
    memset(N.grad, 0, N.n * sizeof(float));
    clip_backward(&gf, &a, w, ids, &N.p, scr, &N.c);
    const size_t first = (size_t)(N.lp[1].ln1_w - N.theta); /* layer 1 onwards */
    size_t untouched = 0;
    for (size_t i = 0; i < first; i++)
        untouched += N.grad[i] == 0.0f;
    e = rel_l2(N.grad + first, g1 + first, 1.0, N.n - first);
    int ok = e <= TOL_FROZEN && untouched == first;
    printf("%s %s: frozen embeddings + layer 0: %zu/%zu frozen grads untouched, rest rel L2 %.3g "
           "(tol %g)\n", ok ? "ok  " : "FAIL", name, untouched, first, e, TOL_FROZEN);
    failures += !ok;

    free(lgf), free(lof), free(g1), free(theta0), free(u), free(w), free(out), free(scr);
    free(acts_mem), free(N.theta), free(N.grad), free(N.lp), free(N.lg), free(N.lo), free(N.lgo);
}

int main(void)
{
    run(CLIP_ACT_QUICK_GELU, "quick_gelu");
    run(CLIP_ACT_GELU, "gelu");
    printf("test_clip_grad: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
