/* UNet backward: directional gradient check over all parameters and inputs (KANN style).
 *
 * A random tiny-sd1 UNet (db_init_model, F32 diffusers folder in a temporary directory),
 * every parameter trainable plus rank-3 LoRA adapters on every layer of the "conv" target
 * set (nonzero up), per-block checkpointing on. Loss L = sum(out * w) for a fixed random w,
 * accumulated in double. One random direction u over all parameters, the sample and the
 * context, each tensor's part scaled by that tensor's RMS:
 *   numeric  D(h) = (L(theta + h u) - L(theta - h u)) / (2 h) at h = 1e-3 and 5e-4 (float
 *            forwards), Richardson-extrapolated (4 D(h/2) - D(h)) / 3
 *   analytic g . u                       (one backward, dot product in double)
 * must agree to TOL_DIR relative (float32 rounding in the forwards leaves about 1e-4; one
 * wrong term in any gradient shows as 1e-2 or more). Also: a second backward without zeroing
 * doubles every gradient (backward accumulates).
 * Selective checkpointing and skipped work (bit-identical, memcmp, since the same kernels run
 * in the same order): the gradients above (all parameters, dsample, dctx) with activation
 * budgets UNET_CKPT_ALL, UNET_CKPT_NONE and half of the kept-all bytes (some steps kept, some
 * recomputed); LoRA attn (every step from the first transformer on trainable) and full
 * training of up_blocks.1.resnets.0 (the earliest trainable step is an up-block resnet that
 * reads a skip) with dsample = dctx = NULL (backward stops at the earliest trainable step)
 * against the full backward (dsample given), and with dctx alone against dsample + dctx;
 * also at budget NONE and a middle budget; the same for a partial set whose earliest trainable
 * step is a resnet with frozen norm1/conv1 (up_blocks.1.resnets.0.conv2: its conv1 input
 * gradient and GroupNorm1 backward are skipped).
 * fp32 weight copies (unet_train_new widens frozen half-precision weights once when the budget
 * leaves room): an F16 tiny-sd1 with LoRA attn, gradients (parameters, dsample, dctx, and the
 * skipping backward) at budget ALL (no copies) against NONE (no copies), all internals plus half
 * the copies' bytes (some copied; internals of steps a plain step reaches all kept, those below
 * the earliest trainable step come after the copies) and SIZE_MAX - 1 (every frozen weight
 * copied): bit-identical. Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "train_params.h"
#include "unet.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_DIR 1e-3 /* relative, directional derivative */
#define TOL_ACC 1e-5 /* relative L2, second backward = 2 x first (sgemm accumulating into
                     * a nonzero gradient rounds differently: measured 7.6e-7) */
#define NDIR 2

static int failures;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
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

static void check(int ok, const char *fmt, double a, double b, double tol)
{
    printf("%s ", ok ? "ok  " : "FAIL");
    printf(fmt, a, b, tol);
    printf("\n");
    if (!ok)
        failures++;
}

typedef struct {
    UnetTrain *tr;
    float *out, *wout, *x, *ctx, *t;
    size_t n_out;
} Run;

static double loss(Run *r)
{
    DbError err;
    if (unet_train_forward(r->tr, r->out, r->x, r->t, r->ctx, &err) != DB_OK) {
        printf("FAIL forward: %s\n", err.msg);
        exit(1);
    }
    double s = 0.0;
    for (size_t i = 0; i < r->n_out; i++)
        s += (double)r->out[i] * r->wout[i];
    return s;
}

/* v [n] += h * u [n] */
static void axpy(float *v, const float *u, float h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] += h * u[i];
}

/* One forward and backward with tr; *g (np floats) = the parameter gradients; dsample, dctx
 * may be NULL (else zeroed first). */
static void grads(float *g, UnetTrain *tr, TrainParams *tp, Run *r, float *dsample, size_t nx,
                  float *dctx, size_t nc)
{
    DbError err;
    UnetTrain *keep = r->tr;
    r->tr = tr;
    train_params_zero_grads(tp);
    if (dsample) memset(dsample, 0, nx * sizeof *dsample);
    if (dctx) memset(dctx, 0, nc * sizeof *dctx);
    loss(r);
    if (unet_train_backward(tr, dsample, dctx, r->wout, &err) != DB_OK) {
        printf("FAIL backward: %s\n", err.msg);
        exit(1);
    }
    memcpy(g, train_params_grads(tp), train_params_count(tp) * sizeof *g);
    r->tr = keep;
}

static void same(const char *what, const float *a, const float *b, size_t n)
{
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += memcmp(&a[i], &b[i], sizeof *a) != 0;
    printf("%s %s: %zu of %zu values differ (bit-identical required)\n", diff ? "FAIL" : "ok  ",
           what, diff, n);
    if (diff)
        failures++;
}

static UnetTrain *train_new(const UnetParams *view, const UnetConfig *c, const UnetDims *d,
                            size_t R, const UnetState *state, size_t budget, UnetTrainInfo *info)
{
    DbError err;
    UnetTrain *tr = NULL;
    if (unet_train_new(&tr, view, c, d, R, unet_state_wscratch_size(state), budget, &err) !=
        DB_OK) {
        printf("FAIL unet_train_new: %s\n", err.msg);
        exit(1);
    }
    unet_train_info(tr, info);
    return tr;
}

/* Gradients of view/tp (np floats) at budgets ALL, NONE and a middle one: identical; and, for a
 * partial trainable set (partial = 1), the skipping backward against the full one. */
static void check_budgets(const char *name, const UnetParams *view, TrainParams *tp,
                          const UnetConfig *c, const UnetDims *d, size_t R,
                          const UnetState *state, Run *r, size_t nx, size_t nc, int partial)
{
    const size_t np = train_params_count(tp);
    float *g0 = g_new(float, np), *g1 = g_new(float, np), *dx0 = g_new(float, nx);
    float *dx1 = g_new(float, nx), *dc0 = g_new(float, nc), *dc1 = g_new(float, nc);
    UnetTrainInfo ia, in, im;
    UnetTrain *ta = train_new(view, c, d, R, state, UNET_CKPT_ALL, &ia);
    UnetTrain *tn = train_new(view, c, d, R, state, UNET_CKPT_NONE, &in);
    UnetTrain *tm = train_new(view, c, d, R, state, in.kept_bytes / 2, &im);
    char what[160];
    printf("     %s: %d steps, first trainable %d; kept: ALL %d (%zu B), NONE %d (%zu B), "
           "middle %d (%zu B, shared %zu B)\n", name, in.n_steps, in.first_train, ia.n_kept,
           ia.kept_bytes, in.n_kept, in.kept_bytes, im.n_kept, im.kept_bytes, im.shared_bytes);
    if (!(in.n_kept == in.n_steps && ia.kept_bytes == 0 && im.n_kept > ia.n_kept &&
          im.n_kept < in.n_steps && im.kept_bytes <= in.kept_bytes / 2)) {
        printf("FAIL %s: budgets did not give all / none / some steps kept\n", name);
        failures++;
    }
    grads(g0, ta, tp, r, dx0, nx, dc0, nc);
    UnetTrain *const cmp[2] = {tn, tm};
    const char *const cname[2] = {"NONE", "middle"};
    for (int k = 0; k < 2; k++) {
        grads(g1, cmp[k], tp, r, dx1, nx, dc1, nc);
        snprintf(what, sizeof what, "%s: budget %s vs ALL, parameter gradients", name, cname[k]);
        same(what, g1, g0, np);
        snprintf(what, sizeof what, "%s: budget %s vs ALL, dsample", name, cname[k]);
        same(what, dx1, dx0, nx);
        snprintf(what, sizeof what, "%s: budget %s vs ALL, dctx", name, cname[k]);
        same(what, dc1, dc0, nc);
    }
    if (partial) {
        if (in.first_train <= 0 || in.first_train >= in.n_steps) {
            printf("FAIL %s: expected a partial trainable set (first trainable step %d)\n", name,
                   in.first_train);
            failures++;
        }
        UnetTrain *const all[3] = {ta, tn, tm};
        for (int k = 0; k < 3; k++) {
            const char *bn = k == 0 ? "ALL" : cname[k - 1];
            grads(g1, all[k], tp, r, NULL, nx, NULL, nc);
            snprintf(what, sizeof what, "%s: budget %s, backward without dsample/dctx (skipping) "
                     "vs full, parameter gradients", name, bn);
            same(what, g1, g0, np);
            grads(g1, all[k], tp, r, NULL, nx, dc1, nc);
            snprintf(what, sizeof what, "%s: budget %s, backward with dctx only vs full, "
                     "parameter gradients", name, bn);
            same(what, g1, g0, np);
            snprintf(what, sizeof what, "%s: budget %s, backward with dctx only vs full, dctx",
                     name, bn);
            same(what, dc1, dc0, nc);
        }
    }
    unet_train_free(ta), unet_train_free(tn), unet_train_free(tm);
    g_free(g0), g_free(g1), g_free(dx0), g_free(dx1), g_free(dc0), g_free(dc1);
}

/* The view/tp of spec on m, LoRA up made nonzero. */
static UnetParams *view_new(TrainParams **tp, const char *name, const DbModel *m,
                            const UnetState *state, const TrainSpec *spec)
{
    DbError err;
    UnetParams *view = g_new0(UnetParams, 1);
    if (train_params_new(tp, m, NET_UNET, spec, &err) != DB_OK ||
        unet_train_view_build(view, state, m, *tp, &err) != DB_OK) {
        printf("FAIL setup %s: %s\n", name, err.msg);
        exit(1);
    }
    float *theta = train_params_values(*tp);
    for (size_t i = 0; i < train_params_count_tensors(*tp); i++) {
        const TrainTensor *tt = train_params_tensor(*tp, i);
        if (tt->kind == TRAIN_LORA_UP)
            for (size_t j = 0; j < tt->nelem; j++)
                theta[tt->offset + j] = 0.05f * nrand();
    }
    return view;
}

/* fp32 weight copies on an F16 model (see the top). */
static void check_wcache(const DbModel *m, const UnetState *state, const UnetDims *d, Run *r,
                         size_t nx, size_t nc)
{
    const TrainSpec spec = {NULL, 3, 5.0f, TRAIN_LORA_ATTN, 1};
    TrainParams *tp = NULL;
    UnetParams *view = view_new(&tp, "F16 LoRA attn", m, state, &spec);
    const size_t R = train_params_lora_max_rank(tp), np = train_params_count(tp);
    const UnetConfig *c = &m->unet;
    UnetTrainInfo ia, in, iw, im;
    UnetTrain *ta = train_new(view, c, d, R, state, UNET_CKPT_ALL, &ia);
    UnetTrain *tn = train_new(view, c, d, R, state, UNET_CKPT_NONE, &in);
    UnetTrain *tw = train_new(view, c, d, R, state, SIZE_MAX - 1, &iw);
    UnetTrain *tm = train_new(view, c, d, R, state, in.kept_bytes + iw.wcache_bytes / 2, &im);
    g_free(view); /* unet_train_new copies the view */
    printf("     F16 LoRA attn: fp32 copies: ALL %d, NONE %d, every %d (%zu B), middle %d (%zu B, "
           "%d of %d steps kept)\n", ia.n_wcached, in.n_wcached, iw.n_wcached, iw.wcache_bytes,
           im.n_wcached, im.wcache_bytes, im.n_kept, im.n_steps);
    if (!(ia.n_wcached == 0 && in.n_wcached == 0 && iw.n_wcached > 0 && im.n_wcached > 0 &&
          im.n_wcached < iw.n_wcached && im.n_kept >= im.n_steps - im.first_train &&
          iw.n_kept == iw.n_steps)) {
        printf("FAIL F16 LoRA attn: budgets did not give no / some / every weight copied\n");
        failures++;
    }
    float *g0 = g_new(float, np), *g1 = g_new(float, np), *dx0 = g_new(float, nx);
    float *dx1 = g_new(float, nx), *dc0 = g_new(float, nc), *dc1 = g_new(float, nc);
    grads(g0, ta, tp, r, dx0, nx, dc0, nc);
    UnetTrain *const cmp[3] = {tn, tw, tm};
    const char *const cname[3] = {"NONE", "every weight copied", "some weights copied"};
    char what[160];
    for (int k = 0; k < 3; k++) {
        grads(g1, cmp[k], tp, r, dx1, nx, dc1, nc);
        snprintf(what, sizeof what, "F16 LoRA attn: %s vs ALL, parameter gradients", cname[k]);
        same(what, g1, g0, np);
        snprintf(what, sizeof what, "F16 LoRA attn: %s vs ALL, dsample", cname[k]);
        same(what, dx1, dx0, nx);
        snprintf(what, sizeof what, "F16 LoRA attn: %s vs ALL, dctx", cname[k]);
        same(what, dc1, dc0, nc);
        grads(g1, cmp[k], tp, r, NULL, nx, NULL, nc);
        snprintf(what, sizeof what, "F16 LoRA attn: %s, skipping backward vs ALL full, parameter "
                 "gradients", cname[k]);
        same(what, g1, g0, np);
    }
    unet_train_free(ta), unet_train_free(tn), unet_train_free(tw), unet_train_free(tm);
    train_params_free(tp);
    g_free(g0), g_free(g1), g_free(dx0), g_free(dx1), g_free(dc0), g_free(dc1);
}

/* A trainable set of spec on m (LoRA up made nonzero): checks check_budgets. */
static void check_partial(const char *name, const DbModel *m, const UnetState *state,
                          const TrainSpec *spec, const UnetDims *d, Run *r, size_t nx, size_t nc)
{
    TrainParams *tp = NULL;
    UnetParams *view = view_new(&tp, name, m, state, spec);
    check_budgets(name, view, tp, &m->unet, d, train_params_lora_max_rank(tp), state, r, nx, nc,
                  1);
    train_params_free(tp);
    g_free(view);
}

int main(void)
{
    DbError err;
    db_error_clear(&err);
    char *dir = g_dir_make_tmp("test_unet_grad-XXXXXX", NULL);
    char *path = g_build_filename(dir, "model", NULL);
    DbInitModelOptions io = {0};
    io.seed = 3;
    DbModel *m = NULL;
    if (db_init_model("tiny-sd1", path, &io, NULL, NULL, NULL, &err) != DB_OK ||
        db_model_open(&m, path, NULL, &err) != DB_OK) {
        printf("FAIL model: %s\n", err.msg);
        return 1;
    }
    const UnetConfig *c = &m->unet;
    TrainSpec spec = {"*", 3, 5.0f, TRAIN_LORA_CONV, 1};
    UnetState *state = NULL;
    TrainParams *tp = NULL;
    UnetParams *view = g_new0(UnetParams, 1);
    const UnetDims d = {2, 8, 8, 5};
    Run r = {0};
    if (unet_state_build(&state, m, 0, &err) != DB_OK ||
        train_params_new(&tp, m, NET_UNET, &spec, &err) != DB_OK ||
        unet_train_view_build(view, state, m, tp, &err) != DB_OK ||
        unet_train_new(&r.tr, view, c, &d, 3, unet_state_wscratch_size(state), UNET_CKPT_ALL,
                       &err) != DB_OK) {
        printf("FAIL setup: %s\n", err.msg);
        return 1;
    }
    const size_t np = train_params_count(tp), nt = train_params_count_tensors(tp);
    const size_t nx = d.B * (size_t)c->in_channels * d.H * d.W;
    const size_t nc = d.B * d.S * (size_t)c->cross_dim;
    r.n_out = d.B * (size_t)c->out_channels * d.H * d.W;
    float *theta = train_params_values(tp), *grad = train_params_grads(tp);
    /* LoRA up starts at zero: make it nonzero so that every adapter gradient matters */
    for (size_t i = 0; i < nt; i++) {
        const TrainTensor *tt = train_params_tensor(tp, i);
        if (tt->kind == TRAIN_LORA_UP)
            for (size_t j = 0; j < tt->nelem; j++)
                theta[tt->offset + j] = 0.05f * nrand();
    }
    r.out = g_new(float, r.n_out), r.wout = g_new(float, r.n_out);
    r.x = g_new(float, nx), r.ctx = g_new(float, nc);
    float t[2] = {999.0f, 41.0f};
    r.t = t;
    for (size_t i = 0; i < r.n_out; i++) r.wout[i] = nrand();
    for (size_t i = 0; i < nx; i++) r.x[i] = nrand();
    for (size_t i = 0; i < nc; i++) r.ctx[i] = nrand();
    float *dx = g_new0(float, nx), *dctx = g_new0(float, nc), *g1 = g_new(float, np);
    float *up = g_new(float, np), *ux = g_new(float, nx), *uc = g_new(float, nc);

    train_params_zero_grads(tp);
    loss(&r);
    if (unet_train_backward(r.tr, dx, dctx, r.wout, &err) != DB_OK) {
        printf("FAIL backward: %s\n", err.msg);
        return 1;
    }
    memcpy(g1, grad, np * sizeof *g1);
    printf("     %zu parameters in %zu tensors (%zu LoRA adapters), %zu input values\n", np, nt,
           train_params_n_lora(tp), nx + nc);

    for (int k = 0; k < NDIR; k++) {
        for (size_t i = 0; i < nt; i++) {
            const TrainTensor *tt = train_params_tensor(tp, i);
            double ss = 0.0;
            for (size_t j = 0; j < tt->nelem; j++)
                ss += (double)theta[tt->offset + j] * theta[tt->offset + j];
            const float rms = (float)sqrt(ss / (double)tt->nelem) + 1e-3f;
            for (size_t j = 0; j < tt->nelem; j++)
                up[tt->offset + j] = rms * nrand();
        }
        for (size_t i = 0; i < nx; i++) ux[i] = nrand();
        for (size_t i = 0; i < nc; i++) uc[i] = nrand();
        double an = 0.0;
        for (size_t i = 0; i < np; i++) an += (double)g1[i] * up[i];
        for (size_t i = 0; i < nx; i++) an += (double)dx[i] * ux[i];
        for (size_t i = 0; i < nc; i++) an += (double)dctx[i] * uc[i];
        double D[2];
        const float hs[2] = {1e-3f, 5e-4f};
        for (int e = 0; e < 2; e++) {
            const float h = hs[e];
            axpy(theta, up, h, np), axpy(r.x, ux, h, nx), axpy(r.ctx, uc, h, nc);
            const double lp = loss(&r);
            axpy(theta, up, -2 * h, np), axpy(r.x, ux, -2 * h, nx), axpy(r.ctx, uc, -2 * h, nc);
            const double lm = loss(&r);
            axpy(theta, up, h, np), axpy(r.x, ux, h, nx), axpy(r.ctx, uc, h, nc);
            D[e] = (lp - lm) / (2.0 * h);
        }
        const double num = (4.0 * D[1] - D[0]) / 3.0;
        const double rel = fabs(num - an) / fmax(fabs(an), 1e-30);
        check(rel <= TOL_DIR, "direction: numeric %.9g vs analytic %.9g (rel err within %g)", num,
              an, TOL_DIR);
        if (rel > TOL_DIR) printf("     rel err %.3g\n", rel);
    }

    /* backward accumulates: a second call (same forward state) doubles the gradients */
    loss(&r);
    if (unet_train_backward(r.tr, NULL, NULL, r.wout, &err) != DB_OK) {
        printf("FAIL backward: %s\n", err.msg);
        return 1;
    }
    double e2 = 0.0, n2 = 0.0;
    for (size_t i = 0; i < np; i++) {
        const double dd = (double)grad[i] - 2.0 * g1[i];
        e2 += dd * dd, n2 += 4.0 * (double)g1[i] * g1[i];
    }
    check(sqrt(e2 / n2) <= TOL_ACC, "accumulate: second backward = 2 x first, rel L2 %.3g "
          "(of %.0f; tol %g)", sqrt(e2 / n2), 2.0, TOL_ACC);

    /* selective checkpointing: full training (every step runs) at three budgets */
    check_budgets("all parameters + LoRA conv", view, tp, c, &d, 3, state, &r, nx, nc, 0);
    const TrainSpec lora_attn = {NULL, 3, 5.0f, TRAIN_LORA_ATTN, 1};
    const TrainSpec up_res = {"up_blocks.1.resnets.0.*", 0, 0.0f, TRAIN_LORA_NONE, 1};
    check_partial("LoRA attn", m, state, &lora_attn, &d, &r, nx, nc);
    check_partial("up_blocks.1.resnets.0", m, state, &up_res, &d, &r, nx, nc);
    const TrainSpec up_conv2 = {"up_blocks.1.resnets.0.conv2.*", 0, 0.0f, TRAIN_LORA_NONE, 1};
    check_partial("up_blocks.1.resnets.0.conv2", m, state, &up_conv2, &d, &r, nx, nc);

    /* fp32 copies of frozen weights: an F16 model of the same shapes */
    char *path16 = g_build_filename(dir, "model16", NULL);
    DbInitModelOptions io16 = {0};
    io16.seed = 3, io16.dtype = "f16";
    DbModel *m16 = NULL;
    UnetState *state16 = NULL;
    if (db_init_model("tiny-sd1", path16, &io16, NULL, NULL, NULL, &err) != DB_OK ||
        db_model_open(&m16, path16, NULL, &err) != DB_OK ||
        unet_state_build(&state16, m16, 0, &err) != DB_OK) {
        printf("FAIL F16 model: %s\n", err.msg);
        return 1;
    }
    check_wcache(m16, state16, &d, &r, nx, nc);
    unet_state_free(state16);
    db_model_free(m16);
    g_free(path16);

    unet_train_free(r.tr);
    train_params_free(tp);
    unet_state_free(state);
    db_model_free(m);
    g_free(view);
    g_free(r.out), g_free(r.wout), g_free(r.x), g_free(r.ctx);
    g_free(dx), g_free(dctx), g_free(g1), g_free(up), g_free(ux), g_free(uc);
    char *rm[] = {"rm", "-rf", dir, NULL};
    g_spawn_sync(NULL, rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
    g_free(path), g_free(dir);
    printf("test_unet_grad: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
