/* UNet training forward and backward: unet_forward's list of blocks (unet.c), kept as data
 * (a plan of steps), run top-down by unet_train_forward and bottom-up by unet_train_backward.
 *
 *   temb = SiLU(linear_2(SiLU(linear_1(timestep_embedding(t)))))   (t gets no gradient)
 *   x_0 = conv_in(sample)
 *   steps: x_out = block(x_in [, skip]) for every resnet / transformer / down- / upsampler;
 *          an up-block resnet reads cat[x_in, skip] (skip = a down-block output)
 *   out = conv_out(SiLU(GroupNorm(x_last)))
 *
 * Every step output has its own buffer x[id] and gradient dx[id]: a tensor read by two steps
 * (a skip: the next block and an up-block resnet) gets both contributions accumulated before
 * its producer's backward runs, since both readers come later in the forward. Gradients of
 * the shared inputs: dtemb [B, T] (every resnet's time_emb_proj) flows into linear_2/linear_1;
 * dctx [B, S, X] sums the cross-attention K/V gradients of every transformer.
 *
 * Selective checkpointing (unet_train_new's budget): a step is either "kept" (its internals
 * have their own region of the acts buffer, written by the forward and read by the backward)
 * or checkpointed (its internals go to one shared region sized to the largest checkpointed
 * step and are recomputed by step_forward right before its backward). Steps are kept
 * greedily by recompute FLOPs saved per byte of internals (step_flops / acts bytes) while the
 * kept bytes fit the budget; steps no gradient can reach in a plain LoRA/partial step (below
 * the earliest trainable one) come last. Both kinds give the same gradients: same kernels,
 * same order.
 *
 * Skipped work: without dsample and dctx, the backward stops at the earliest step holding a
 * trainable tensor (first_train), unless the time-embedding MLP or conv_in are trainable; that
 * step gets no input gradient. With dctx, it runs down to the first transformer as well.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "unet.h"

#include "bigalloc.h"
#include "kernels.h"
#include "weights.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum { STEP_RES, STEP_ATTN, STEP_DOWN, STEP_UP } StepKind;

typedef struct {
    StepKind kind;
    const void *p;      /* UnetResnet, UnetTransformer or UnetLin */
    size_t h, w;        /* input size */
    size_t cin, cx;     /* input channels (a cat: cx from x_in, cin - cx from the skip) */
    int in, skip, out;  /* tensor ids; skip -1: none */
    int keep;           /* internals kept from the forward (else recomputed) */
    size_t acts_n;      /* floats of its internals */
    size_t acts_off;    /* into the kept internals (keep) */
    double flops;       /* step_flops */
} Step;

#define MAX_STEPS (DB_MAX_BLOCKS * (4 * UNET_MAX_LAYERS + 6) + 3)
#define MAX_TENSORS (MAX_STEPS + 1)
#define STEP_LINS 12 /* most layers in one step (a transformer) */
#define MAX_WLINS (MAX_STEPS * STEP_LINS + 4)

/* GEMM flops that cost as much time as widening one half-precision weight element (one
 * memory pass: 2 bytes read, 4 written, about 0.3 ns, against sgemm at about 60 GFLOP/s on
 * two cores): the value of an fp32 copy is uses * WIDEN_FLOPS per element, 4 bytes. */
#define WIDEN_FLOPS 16.0

typedef struct {
    double value;
    int i;
} ValueRank;

/* A frozen half-precision weight that may get an fp32 copy (wf) for the training run. */
typedef struct {
    UnetLin *l; /* in UnetTrain.pv */
    int step;   /* its step, -1: time MLP, conv_in, conv_out */
    double uses; /* widenings per training step without the copy */
    int keep;
} WLin;

struct UnetTrain {
    UnetParams pv; /* the caller's view, copied: cached weights set wf */
    const UnetParams *p; /* &pv */
    const UnetConfig *c;
    UnetDims d;
    size_t R;
    Step step[MAX_STEPS];
    int first_train, first_attn; /* earliest step with a trainable tensor / a transformer
                                    (n_step: none) */
    int all_needed;              /* time MLP or conv_in trainable: every step runs */
    int n_kept;
    size_t kept_floats, shared_floats;
    WLin wl[MAX_WLINS];
    int n_wl, n_wcached;
    size_t wcache_floats;
    ValueRank rank[MAX_WLINS]; /* choose_kept's work */
    size_t rank_n[MAX_WLINS];
    int rank_keep[MAX_WLINS];
    int n_step, n_tensor;
    float *x[MAX_TENSORS], *dx[MAX_TENSORS];
    size_t n[MAX_TENSORS];
    float *mem;
    size_t total;
    /* regions of mem */
    float *t_sin, *t_h1, *t_h1a, *t_h2, *temb, *dtemb, *dt_a, *dt_b;
    float *cat, *dcat, *gn_mean, *gn_rstd, *nout, *dnout, *acts, *shared, *scratch;
    UnetWork wk;
    const float *sample, *timesteps, *ctx;
};

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

static int add_tensor(UnetTrain *t, size_t n)
{
    t->n[t->n_tensor] = n;
    return t->n_tensor++;
}

static int add_step(UnetTrain *t, StepKind kind, const void *p, int in, int skip, size_t h,
                    size_t w, size_t cx, size_t cin, size_t cout_elems)
{
    Step *s = &t->step[t->n_step++];
    s->kind = kind, s->p = p, s->in = in, s->skip = skip, s->h = h, s->w = w, s->cx = cx;
    s->cin = cin;
    s->out = add_tensor(t, cout_elems);
    return s->out;
}

/* The plan: unet_forward's order (unet.c). */
static void plan(UnetTrain *t)
{
    const UnetConfig *c = t->c;
    const UnetParams *p = t->p;
    const int nb = c->n_blocks, L = c->layers_per_block;
    const size_t B = t->d.B;
    size_t h = t->d.H, w = t->d.W;
    int down_res[DB_MAX_BLOCKS][UNET_MAX_LAYERS], down_ds[DB_MAX_BLOCKS];
    int cur = add_tensor(t, B * (size_t)c->block_out[0] * h * w); /* conv_in output */
    const int skip_in = cur;
    size_t ch = (size_t)c->block_out[0];
    for (int b = 0; b < nb; b++) {
        const UnetDownBlock *db = &p->down[b];
        const size_t o = (size_t)c->block_out[b];
        for (int j = 0; j < L; j++) {
            cur = add_step(t, STEP_RES, &db->res[j], cur, -1, h, w, ch, ch, B * o * h * w);
            ch = o;
            if (db->has_attn)
                cur = add_step(t, STEP_ATTN, &db->attn[j], cur, -1, h, w, o, o, B * o * h * w);
            down_res[b][j] = cur;
        }
        if (db->has_down) {
            cur = add_step(t, STEP_DOWN, &db->down, cur, -1, h, w, o, o, B * o * (h / 2) * (w / 2));
            down_ds[b] = cur;
            h /= 2, w /= 2;
        }
    }
    const size_t top = (size_t)c->block_out[nb - 1];
    cur = add_step(t, STEP_RES, &p->mid_res0, cur, -1, h, w, top, top, B * top * h * w);
    cur = add_step(t, STEP_ATTN, &p->mid_attn, cur, -1, h, w, top, top, B * top * h * w);
    cur = add_step(t, STEP_RES, &p->mid_res1, cur, -1, h, w, top, top, B * top * h * w);
    for (int u = 0; u < nb; u++) {
        const UnetUpBlock *ub = &p->up[u];
        const int dbi = nb - 1 - u;
        const size_t o = (size_t)c->block_out[dbi];
        for (int j = 0; j <= L; j++) {
            const int skip = j < L ? down_res[dbi][L - 1 - j] : dbi > 0 ? down_ds[dbi - 1] : skip_in;
            cur = add_step(t, STEP_RES, &ub->res[j], cur, skip, h, w, ch,
                           (size_t)ub->res[j].cin, B * o * h * w);
            ch = o;
            if (ub->has_attn)
                cur = add_step(t, STEP_ATTN, &ub->attn[j], cur, -1, h, w, o, o, B * o * h * w);
        }
        if (ub->has_up) {
            cur = add_step(t, STEP_UP, &ub->up, cur, -1, h, w, o, o, B * o * h * w * 4);
            h *= 2, w *= 2;
        }
    }
}

/* Internals and backward scratch of step s (floats). */
static void step_sizes(const UnetTrain *t, const Step *s, size_t *acts, size_t *bwd)
{
    const size_t B = t->d.B, HW = s->h * s->w, G = (size_t)t->c->norm_groups, R = t->R;
    switch (s->kind) {
    case STEP_RES: {
        const UnetResnet *r = s->p;
        *acts = unet_resnet_acts_size(s->cin, (size_t)r->cout, B, HW, G, R);
        *bwd = unet_resnet_bwd_size(s->cin, (size_t)r->cout, B, HW, R);
        break;
    }
    case STEP_ATTN: {
        const UnetTransformer *a = s->p;
        *acts = unet_transformer_acts_size(s->cin, (size_t)a->heads, B, HW, t->d.S, G, R);
        *bwd = unet_transformer_bwd_size(s->cin, B, HW, t->d.S, R);
        break;
    }
    default:
        *acts = unet_sample_acts_size(s->kind == STEP_UP, s->cin, B, HW, R);
        *bwd = unet_sample_bwd_size(s->kind == STEP_UP, s->cin, B, HW, R);
    }
}

/* Recompute cost of step s: multiply-adds x 2 of its matrix products (norms, activations and
 * copies are O(elements) and left out). N = B*H*W pixels of the input, Ci/Co channels:
 *   resnet       2 N 9 Ci Co (conv1) + 2 N 9 Co^2 (conv2) + 2 N Ci Co (1x1 shortcut, Ci != Co)
 *                + 2 B T Co (time projection)
 *   transformer  C channels, S context tokens of width X, P = H*W:
 *                2 N C^2 (2 proj + 4 self q/k/v/out + 2 cross q/out + 8 GEGLU in + 4 ff out)
 *                + 4 B P^2 C (self QK^T, AV) + 4 N S C (cross QK^T, AV) + 4 B S X C (cross K, V)
 *   downsample   2 (N/4) 9 C^2;   upsample  2 (4N) 9 C^2 */
static double step_flops(const UnetTrain *t, const Step *s)
{
    const double B = (double)t->d.B, P = (double)(s->h * s->w), N = B * P, Ci = (double)s->cin;
    switch (s->kind) {
    case STEP_RES: {
        const double Co = (double)((const UnetResnet *)s->p)->cout;
        const double T = (double)t->c->time_embed_dim;
        return 2 * N * 9 * Ci * Co + 2 * N * 9 * Co * Co + (Ci != Co ? 2 * N * Ci * Co : 0) +
               2 * B * T * Co;
    }
    case STEP_ATTN: {
        const double S = (double)t->d.S, X = (double)t->c->cross_dim;
        return 2 * N * Ci * Ci * 20 + 4 * B * P * P * Ci + 4 * N * S * Ci + 4 * B * S * X * Ci;
    }
    case STEP_DOWN:
        return 2 * (N / 4) * 9 * Ci * Ci;
    case STEP_UP:
        return 2 * (4 * N) * 9 * Ci * Ci;
    }
    return 0;
}

/* Whether a block holds a tensor that gets a gradient (dw/db, or a LoRA adapter). */
static int lin_trainable(const UnetLin *l) { return l->dw || l->db || l->lora.down; }
static int norm_trainable(const UnetNorm *n) { return n->dw || n->db; }

static int resnet_trainable(const UnetResnet *r)
{
    return norm_trainable(&r->norm1) || norm_trainable(&r->norm2) || lin_trainable(&r->conv1) ||
           lin_trainable(&r->time_emb_proj) || lin_trainable(&r->conv2) ||
           lin_trainable(&r->conv_shortcut);
}

static int transformer_trainable(const UnetTransformer *a)
{
    const UnetLin *lin[] = {&a->proj_in, &a->q1, &a->k1, &a->v1, &a->o1, &a->q2,
                            &a->k2, &a->v2, &a->o2, &a->ff_in, &a->ff_out, &a->proj_out};
    const UnetNorm *nrm[] = {&a->norm, &a->norm1, &a->norm2, &a->norm3};
    int any = 0;
    for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++)
        any |= lin_trainable(lin[i]);
    for (size_t i = 0; i < sizeof nrm / sizeof nrm[0]; i++)
        any |= norm_trainable(nrm[i]);
    return any;
}

static int step_trainable(const Step *s)
{
    switch (s->kind) {
    case STEP_RES:
        return resnet_trainable(s->p);
    case STEP_ATTN:
        return transformer_trainable(s->p);
    default:
        return lin_trainable(s->p);
    }
}

static float *step_acts(const UnetTrain *t, const Step *s)
{
    return s->keep ? t->acts + s->acts_off : t->shared;
}

/* Runs step s forward, saving its internals; an up-block resnet first builds its cat. */
static int step_forward(UnetTrain *t, const Step *s)
{
    const size_t B = t->d.B, G = (size_t)t->c->norm_groups, T = (size_t)t->c->time_embed_dim;
    const size_t X = (size_t)t->c->cross_dim, R = t->R;
    float *acts = step_acts(t, s), *out = t->x[s->out];
    const float *in = t->x[s->in];
    switch (s->kind) {
    case STEP_RES:
        if (s->skip >= 0) {
            concat_channels_forward(t->cat, in, t->x[s->skip], B, s->cx, s->cin - s->cx,
                                    s->h * s->w);
            in = t->cat;
        }
        return unet_resnet_train_forward(out, acts, &t->wk, in, t->temb, s->p, B, s->h, s->w, T,
                                         G, t->c->norm_eps, R);
    case STEP_ATTN:
        unet_transformer_train_forward(out, acts, &t->wk, in, t->ctx, s->p, B, s->h, s->w,
                                       t->d.S, X, G, R);
        return 0;
    case STEP_DOWN:
        return unet_downsample_train_forward(out, acts, &t->wk, in, s->p, B, s->cin, s->h, s->w);
    case STEP_UP:
        return unet_upsample_train_forward(out, acts, &t->wk, in, s->p, B, s->cin, s->h, s->w);
    }
    return 0;
}

/* Backward of step s; need_din 0: no input gradient (nothing below needs one). */
static int step_backward(UnetTrain *t, const Step *s, float *dctx, int need_din)
{
    const size_t B = t->d.B, G = (size_t)t->c->norm_groups, T = (size_t)t->c->time_embed_dim;
    const size_t X = (size_t)t->c->cross_dim, R = t->R;
    const float *acts = step_acts(t, s), *dout = t->dx[s->out], *in = t->x[s->in];
    float *din = need_din ? t->dx[s->in] : NULL;
    /* dtemb feeds only the time MLP's backward */
    const UnetParams *p = t->p;
    float *dtemb = p->time_1.dw || p->time_1.db || p->time_2.dw || p->time_2.db ? t->dtemb : NULL;
    int rc = 0;
    switch (s->kind) {
    case STEP_RES:
        if (s->skip < 0)
            return unet_resnet_backward(din, dtemb, acts, dout, in, t->temb, s->p, &t->wk,
                                        t->scratch, B, s->h, s->w, T, G, R);
        /* the cat was rebuilt by step_forward (recomputed step) or is rebuilt here (kept) */
        if (s->keep)
            concat_channels_forward(t->cat, in, t->x[s->skip], B, s->cx, s->cin - s->cx,
                                    s->h * s->w);
        if (need_din)
            memset(t->dcat, 0, B * s->cin * s->h * s->w * sizeof(float));
        rc = unet_resnet_backward(need_din ? t->dcat : NULL, dtemb, acts, dout, t->cat,
                                  t->temb, s->p, &t->wk, t->scratch, B, s->h, s->w, T, G, R);
        if (need_din)
            concat_channels_backward(din, t->dx[s->skip], t->dcat, B, s->cx, s->cin - s->cx,
                                     s->h * s->w);
        return rc;
    case STEP_ATTN:
        unet_transformer_backward(din, dctx, acts, dout, in, t->ctx, s->p, &t->wk, t->scratch, B,
                                  s->h, s->w, t->d.S, X, G, R);
        return 0;
    case STEP_DOWN:
        return unet_downsample_backward(din, acts, dout, in, s->p, &t->wk, t->scratch, B, s->cin,
                                        s->h, s->w);
    case STEP_UP:
        return unet_upsample_backward(din, acts, dout, s->p, &t->wk, t->scratch, B, s->cin, s->h,
                                      s->w);
    }
    return 0;
}

static int add_ok(size_t *acc, size_t n) { return !__builtin_add_overflow(*acc, n, acc); }

/* Earliest trainable step, earliest transformer, and whether the time MLP or conv_in train. */
static void mark_needed(UnetTrain *t)
{
    const UnetParams *p = t->p;
    t->first_train = t->first_attn = t->n_step;
    for (int i = t->n_step; i-- > 0;) {
        if (step_trainable(&t->step[i]))
            t->first_train = i;
        if (t->step[i].kind == STEP_ATTN)
            t->first_attn = i;
    }
    t->all_needed = lin_trainable(&p->time_1) || lin_trainable(&p->time_2) ||
                    lin_trainable(&p->conv_in);
}

/* Adds l to the weight candidates when it is a frozen weight that unet_weight widens (half
 * precision, or unaligned F32); bwd: read by the backward of a reached step. */
static void add_wlin(UnetTrain *t, const UnetLin *cl, int step, double fwd_uses, int bwd)
{
    UnetLin *l = (UnetLin *)cl; /* points into t->pv, which t owns */
    if (!l->w || l->wf || !weight_needs_scratch(l->w))
        return;
    WLin *w = &t->wl[t->n_wl++];
    w->l = l, w->step = step, w->uses = fwd_uses + bwd, w->keep = 0;
}

/* The candidates for fp32 copies and their widenings per plain training step (no dsample,
 * no dctx): once in the forward, again when a reached step is recomputed, once in a reached
 * step's backward (except the cross-attention K/V and the time projection, whose input
 * gradients only a trainable time MLP or dctx need). */
static void collect_wlins(UnetTrain *t)
{
    const UnetParams *p = t->p;
    t->n_wl = 0;
    for (int i = 0; i < t->n_step; i++) {
        const Step *s = &t->step[i];
        const int reached = t->all_needed || i >= t->first_train;
        const double fwd = 1.0 + (reached && !s->keep);
        switch (s->kind) {
        case STEP_RES: {
            const UnetResnet *r = s->p;
            add_wlin(t, &r->conv1, i, fwd, reached);
            add_wlin(t, &r->time_emb_proj, i, fwd, reached && t->all_needed);
            add_wlin(t, &r->conv2, i, fwd, reached);
            add_wlin(t, &r->conv_shortcut, i, fwd, reached);
            break;
        }
        case STEP_ATTN: {
            const UnetTransformer *a = s->p;
            const UnetLin *lin[] = {&a->proj_in, &a->q1, &a->k1, &a->v1, &a->o1, &a->q2,
                                    &a->o2, &a->ff_in, &a->ff_out, &a->proj_out};
            for (size_t k = 0; k < sizeof lin / sizeof lin[0]; k++)
                add_wlin(t, lin[k], i, fwd, reached);
            add_wlin(t, &a->k2, i, fwd, 0);
            add_wlin(t, &a->v2, i, fwd, 0);
            break;
        }
        default:
            add_wlin(t, s->p, i, fwd, reached);
        }
    }
    add_wlin(t, &p->time_1, -1, 1.0, 0);
    add_wlin(t, &p->time_2, -1, 1.0, t->all_needed);
    add_wlin(t, &p->conv_in, -1, 1.0, 0);
    add_wlin(t, &p->conv_out, -1, 1.0, 1);
}

static int value_order(const void *pa, const void *pb)
{
    const ValueRank *a = pa, *b = pb;
    if (a->value != b->value)
        return a->value > b->value ? -1 : 1;
    return a->i - b->i;
}

/* Keeps the items of r (n, sorted) whose floats fit *left bytes, in order; sizes[i] floats,
 * keep[i] set. */
static void greedy(const ValueRank *r, int n, const size_t *sizes, int *keep, size_t *left)
{
    for (int k = 0; k < n; k++) {
        const size_t f = sizes[r[k].i];
        keep[r[k].i] = f <= *left / sizeof(float);
        if (keep[r[k].i])
            *left -= f * sizeof(float);
    }
}

/* Spends budget bytes (see the top) in three rounds, each greedy by value per byte:
 *   1. internals of the steps a plain training step runs backward (recompute FLOPs per byte);
 *   2. fp32 copies of frozen half-precision weights (uses * WIDEN_FLOPS per element): a few
 *      FLOPs per byte against hundreds for internals, so they take what round 1 leaves;
 *      UNET_CKPT_NONE keeps every step but copies no weight (memory as without copies);
 *   3. internals of the steps below the earliest trainable one (only a dsample/dctx backward
 *      reads them).
 * Lays out the kept internals; the other steps share t->shared. */
static void choose_kept(UnetTrain *t, size_t budget)
{
    ValueRank *r = t->rank;
    size_t *sz = t->rank_n;
    int *keep = t->rank_keep;
    size_t left = budget;
    for (int round = 1; round <= 3; round++) {
        int n = 0;
        if (round == 2) {
            collect_wlins(t);
            if (budget != UNET_CKPT_NONE)
                for (int k = 0; k < t->n_wl; k++) {
                    sz[k] = t->wl[k].l->w->t.nelem;
                    r[n].value = t->wl[k].uses * WIDEN_FLOPS / sizeof(float);
                    r[n++].i = k;
                }
        } else {
            for (int i = 0; i < t->n_step; i++) {
                const Step *s = &t->step[i];
                const int tier = i < t->first_train && !t->all_needed;
                sz[i] = s->acts_n;
                if (tier != (round == 3))
                    continue;
                r[n].value = s->acts_n ? s->flops / ((double)s->acts_n * sizeof(float)) : INFINITY;
                r[n++].i = i;
            }
        }
        qsort(r, (size_t)n, sizeof r[0], value_order);
        for (int k = 0; k < n; k++)
            keep[r[k].i] = 0;
        greedy(r, n, sz, keep, &left);
        for (int k = 0; k < n; k++) {
            if (round == 2)
                t->wl[r[k].i].keep = keep[r[k].i];
            else
                t->step[r[k].i].keep = keep[r[k].i];
        }
    }
    t->n_kept = 0, t->kept_floats = t->shared_floats = 0;
    for (int i = 0; i < t->n_step; i++) {
        Step *s = &t->step[i];
        if (s->keep) /* no overflow: the kept sum is at most budget / sizeof(float) */
            s->acts_off = t->kept_floats, t->kept_floats += s->acts_n, t->n_kept++;
        else
            t->shared_floats = zmax(t->shared_floats, s->acts_n);
    }
    t->n_wcached = 0, t->wcache_floats = 0;
    for (int k = 0; k < t->n_wl; k++)
        if (t->wl[k].keep)
            t->wcache_floats += t->wl[k].l->w->t.nelem, t->n_wcached++;
}

typedef struct {
    size_t bwd, cat, conv, total;
} TrainSizes;

/* Plans t (p, c, d, R set) and sizes its allocation; 0 on overflow. */
static int train_layout(UnetTrain *t, TrainSizes *z, size_t budget, size_t wscratch_floats)
{
    const UnetConfig *c = t->c;
    const size_t B = t->d.B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out[0];
    const size_t G = (size_t)c->norm_groups, HW0 = t->d.H * t->d.W;
    plan(t);
    mark_needed(t);
    int ok = 1;
    z->bwd = z->cat = z->total = 0;
    for (int i = 0; i < t->n_step; i++) {
        Step *s = &t->step[i];
        size_t b;
        step_sizes(t, s, &s->acts_n, &b);
        s->flops = step_flops(t, s);
        z->bwd = zmax(z->bwd, b);
        if (s->skip >= 0)
            z->cat = zmax(z->cat, B * s->cin * s->h * s->w);
    }
    choose_kept(t, budget);
    for (int i = 0; i < t->n_tensor; i++)
        ok &= add_ok(&z->total, 2 * t->n[i]);
    z->conv = unet_conv_scratch_size(c, &t->d);
    ok &= add_ok(&z->total, B * C0 + 7 * B * T) && add_ok(&z->total, 2 * z->cat) &&
          add_ok(&z->total, 2 * B * G + 2 * B * C0 * HW0) && add_ok(&z->total, t->kept_floats) &&
          add_ok(&z->total, t->shared_floats) && add_ok(&z->total, t->wcache_floats) &&
          add_ok(&z->total, z->bwd) &&
          add_ok(&z->total, z->conv) && add_ok(&z->total, wscratch_floats) &&
          z->total <= SIZE_MAX / sizeof(float);
    return ok;
}

static DbStatus check_config(const UnetConfig *c, DbError *err)
{
    if (c->n_blocks < 1 || c->n_blocks > DB_MAX_BLOCKS || c->layers_per_block < 1 ||
        c->layers_per_block > UNET_MAX_LAYERS)
        return db_fail(err, DB_ERR_MODEL, "UNet: %d blocks of %d layers are not supported",
                       c->n_blocks, c->layers_per_block);
    return DB_OK;
}

DbStatus unet_train_size(size_t *bytes, const UnetParams *view, const UnetConfig *c,
                         const UnetDims *d, size_t lora_rank, size_t wscratch_floats,
                         size_t act_budget, DbError *err)
{
    *bytes = 0;
    DbStatus st = check_config(c, err);
    if (st != DB_OK)
        return st;
    UnetTrain *t = calloc(1, sizeof *t);
    if (!t)
        return db_fail(err, DB_ERR_NOMEM, "UNet training: out of memory");
    t->pv = *view, t->p = &t->pv, t->c = c, t->d = *d, t->R = lora_rank;
    TrainSizes z;
    const int ok = train_layout(t, &z, act_budget, wscratch_floats);
    free(t);
    if (!ok)
        return db_fail(err, DB_ERR_NOMEM, "UNet training: batch %zu at %zux%zu is too large",
                       d->B, d->H, d->W);
    *bytes = z.total * sizeof(float);
    return DB_OK;
}

size_t unet_train_default_budget(size_t limit_bytes, size_t resident_bytes, size_t fixed_bytes)
{
    const size_t margin = limit_bytes / 16;
    if (resident_bytes >= limit_bytes || fixed_bytes >= limit_bytes - resident_bytes ||
        margin >= limit_bytes - resident_bytes - fixed_bytes)
        return 0;
    return limit_bytes - resident_bytes - fixed_bytes - margin;
}

DbStatus unet_train_new(UnetTrain **out, const UnetParams *view, const UnetConfig *c,
                        const UnetDims *d, size_t lora_rank, size_t wscratch_floats,
                        size_t act_budget, DbError *err)
{
    *out = NULL;
    DbStatus st = check_config(c, err);
    if (st != DB_OK)
        return st;
    UnetTrain *t = calloc(1, sizeof *t);
    if (!t)
        return db_fail(err, DB_ERR_NOMEM, "UNet training: out of memory");
    t->pv = *view, t->p = &t->pv, t->c = c, t->d = *d, t->R = lora_rank;
    const size_t B = d->B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out[0];
    const size_t G = (size_t)c->norm_groups, HW0 = d->H * d->W;
    TrainSizes z;
    const int ok = train_layout(t, &z, act_budget, wscratch_floats);
    if (!ok || !(t->mem = db_big_alloc(z.total * sizeof(float)))) {
        free(t);
        return db_fail(err, DB_ERR_NOMEM, "UNet training: cannot allocate %.1f MiB for batch %zu "
                       "at %zux%zu", ok ? (double)z.total * sizeof(float) / 1048576.0 : -1.0, B,
                       d->H, d->W);
    }
    t->total = z.total;
    float *m = t->mem;
    for (int i = 0; i < t->n_tensor; i++)
        t->x[i] = m, m += t->n[i], t->dx[i] = m, m += t->n[i];
    t->t_sin = m, m += B * C0;
    t->t_h1 = m, m += B * T;
    t->t_h1a = m, m += B * T;
    t->t_h2 = m, m += B * T;
    t->temb = m, m += B * T;
    t->dtemb = m, m += B * T;
    t->dt_a = m, m += B * T;
    t->dt_b = m, m += B * T;
    t->cat = m, m += z.cat;
    t->dcat = m, m += z.cat;
    t->gn_mean = m, m += B * G;
    t->gn_rstd = m, m += B * G;
    t->nout = m, m += B * C0 * HW0;
    t->dnout = m, m += B * C0 * HW0;
    t->acts = m, m += t->kept_floats;
    t->shared = m, m += t->shared_floats;
    float *wcache = m;
    m += t->wcache_floats;
    t->scratch = m, m += z.bwd;
    t->wk.conv_scratch = m, t->wk.conv_scratch_n = z.conv, m += z.conv;
    t->wk.wscratch = m;
    t->wk.work = t->scratch; /* a resnet's shortcut output in its train forward */
    /* fp32 copies: widened once, then unet_weight returns them (wf) */
    for (int k = 0; k < t->n_wl; k++) {
        if (!t->wl[k].keep)
            continue;
        UnetLin *l = t->wl[k].l;
        const UnetWork into = {.wscratch = wcache};
        const float *w = unet_weight(l, &into);
        if (w != wcache)
            memcpy(wcache, w, l->w->t.nelem * sizeof *w);
        l->wf = wcache;
        wcache += l->w->t.nelem;
    }
    *out = t;
    return DB_OK;
}

void unet_train_info(const UnetTrain *t, UnetTrainInfo *info)
{
    info->n_steps = t->n_step;
    info->n_kept = t->n_kept;
    info->kept_bytes = t->kept_floats * sizeof(float);
    info->shared_bytes = t->shared_floats * sizeof(float);
    info->first_train = t->first_train;
    info->n_wcached = t->n_wcached;
    info->wcache_bytes = t->wcache_floats * sizeof(float);
}

size_t unet_train_floats(const UnetTrain *t) { return t->total; }

void unet_train_free(UnetTrain *t)
{
    if (!t)
        return;
    free(t->mem);
    free(t);
}

#define CONV(x)                                                                            \
    do {                                                                                   \
        if ((x) != 0)                                                                      \
            return db_fail(err, DB_ERR_NOMEM, "UNet: internal error: conv scratch too small"); \
    } while (0)

DbStatus unet_train_forward(UnetTrain *t, float *out, const float *sample, const float *timesteps,
                            const float *ctx, DbError *err)
{
    const UnetConfig *c = t->c;
    const UnetParams *p = t->p;
    const size_t B = t->d.B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out[0];
    const size_t G = (size_t)c->norm_groups, H = t->d.H, W = t->d.W;
    const UnetWork *wk = &t->wk;
    t->sample = sample, t->timesteps = timesteps, t->ctx = ctx;

    timestep_embedding(t->t_sin, timesteps, B, C0, c->flip_sin_to_cos, c->freq_shift);
    linear_forward(t->t_h1, t->t_sin, unet_weight(&p->time_1, wk), p->time_1.b, B, C0, T);
    silu_forward(t->t_h1a, t->t_h1, B * T);
    linear_forward(t->t_h2, t->t_h1a, unet_weight(&p->time_2, wk), p->time_2.b, B, T, T);
    silu_forward(t->temb, t->t_h2, B * T);
    CONV(conv2d_forward(t->x[0], sample, unet_weight(&p->conv_in, wk), p->conv_in.b,
                        wk->conv_scratch, wk->conv_scratch_n, B, (size_t)c->in_channels, H, W, C0,
                        3, 1, 1, 1));
    for (int i = 0; i < t->n_step; i++)
        CONV(step_forward(t, &t->step[i]));
    const float *last = t->x[t->step[t->n_step - 1].out];
    groupnorm_forward(t->nout, t->gn_mean, t->gn_rstd, last, p->norm_out.w, p->norm_out.b, B, C0,
                      H * W, G, c->norm_eps, 1);
    CONV(conv2d_forward(out, t->nout, unet_weight(&p->conv_out, wk), p->conv_out.b,
                        wk->conv_scratch, wk->conv_scratch_n, B, C0, H, W,
                        (size_t)c->out_channels, 3, 1, 1, 1));
    return DB_OK;
}

DbStatus unet_train_backward(UnetTrain *t, float *dsample, float *dctx, const float *dout,
                             DbError *err)
{
    const UnetConfig *c = t->c;
    const UnetParams *p = t->p;
    const size_t B = t->d.B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out[0];
    const size_t G = (size_t)c->norm_groups, H = t->d.H, W = t->d.W;
    const UnetWork *wk = &t->wk;
    const int below = dsample != NULL || t->all_needed;
    int first = below ? 0 : t->first_train;
    if (!below && dctx && t->first_attn < first)
        first = t->first_attn;
    /* zeroed: the gradients the steps that run accumulate into (outputs, and inputs that get
     * one); conv_in's output when conv_in's backward reads it */
    unsigned char zero[MAX_TENSORS] = {0};
    zero[0] = below;
    for (int i = first; i < t->n_step; i++) {
        const Step *s = &t->step[i];
        zero[s->out] = 1;
        if (i > first || below) {
            zero[s->in] = 1;
            if (s->skip >= 0)
                zero[s->skip] = 1;
        }
    }
    for (int i = 0; i < t->n_tensor; i++)
        if (zero[i])
            memset(t->dx[i], 0, t->n[i] * sizeof(float));
    memset(t->dtemb, 0, B * T * sizeof(float));

    /* out = conv_out(SiLU(GroupNorm(x_last))) */
    const int last = t->step[t->n_step - 1].out;
    memset(t->dnout, 0, B * C0 * H * W * sizeof(float));
    CONV(conv2d_backward(t->dnout, p->conv_out.dw, p->conv_out.db, dout, t->nout,
                         unet_weight(&p->conv_out, wk), wk->conv_scratch, wk->conv_scratch_n, B,
                         C0, H, W, (size_t)c->out_channels, 3, 1, 1, 1));
    groupnorm_backward(t->dx[last], p->norm_out.dw, p->norm_out.db, t->gn_mean, t->gn_rstd,
                       t->dnout, t->x[last], p->norm_out.w, p->norm_out.b, B, C0, H * W, G, 1);

    /* the steps, bottom-up, down to the lowest one a requested gradient needs (see the top);
     * a checkpointed step is recomputed first */
    for (int i = t->n_step; i-- > first;) {
        const Step *s = &t->step[i];
        if (!s->keep)
            CONV(step_forward(t, s));
        CONV(step_backward(t, s, dctx, i > first || below));
    }

    /* temb = SiLU(h2), h2 = linear_2(SiLU(h1)), h1 = linear_1(t_sin) */
    if (p->time_1.dw || p->time_1.db || p->time_2.dw || p->time_2.db) {
        memset(t->dt_a, 0, B * T * sizeof(float));
        silu_backward(t->dt_a, t->dtemb, t->t_h2, B * T);
        memset(t->dt_b, 0, B * T * sizeof(float));
        linear_backward(t->dt_b, p->time_2.dw, p->time_2.db, t->dt_a, t->t_h1a,
                        unet_weight(&p->time_2, wk), B, T, T);
        memset(t->dt_a, 0, B * T * sizeof(float));
        silu_backward(t->dt_a, t->dt_b, t->t_h1, B * T);
        if (p->time_1.dw || p->time_1.db)
            linear_backward(NULL, p->time_1.dw, p->time_1.db, t->dt_a, t->t_sin,
                            unet_weight(&p->time_1, wk), B, C0, T);
    }
    if (dsample || p->conv_in.dw || p->conv_in.db)
        CONV(conv2d_backward(dsample, p->conv_in.dw, p->conv_in.db, t->dx[0], t->sample,
                             unet_weight(&p->conv_in, wk), wk->conv_scratch, wk->conv_scratch_n,
                             B, (size_t)c->in_channels, H, W, C0, 3, 1, 1, 1));
    return DB_OK;
}
