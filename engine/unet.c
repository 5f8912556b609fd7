/* UNet2DConditionModel forward (diffusers unet_2d_condition.py; SD 1.x / 2.x subset):
 *
 *   temb = linear_2(SiLU(linear_1(timestep_embedding(t))))        TimestepEmbedding
 *   x = conv_in(sample);                         skip_in
 *   down block b: for j < L: x = resnet(x, temb) (-> transformer(x, ctx));  down_res[b][j]
 *                 x = downsample(x) (b < n-1);                              down_ds[b]
 *   mid: x = resnet1(transformer(resnet0(x, temb), ctx), temb)
 *   up block u:   for j <= L: x = resnet(cat[x, skip(u, j)], temb) (-> transformer(x, ctx))
 *                 x = upsample(x) (u < n-1)
 *   out = conv_out(SiLU(GroupNorm(x)))
 * Heads per block from the config (up blocks reversed; mid = last). Latent height and width
 * must be multiples of 2^(n_blocks-1) (8 for SD): diffusers' odd-size path (upsample to the
 * skip's size) is not implemented.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "unet.h"

#include "bigalloc.h"
#include "kernels.h"
#include "weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sizes below: with channels <= 2^16 (config check) and UNET_MAX_* (unet.h) every size is a sum
 * of a few dozen products bounded by batch 2^10 x channels 2^16 x pixels 2^24, far from
 * SIZE_MAX; the final byte count is checked. */

struct UnetState {
    UnetParams p;
    float *vec;        /* 1-D parameters widened to f32 */
    size_t wmax;       /* floats the widened-weight scratch must hold */
    float *cache;      /* fp32 copies of half-precision matrices and kernels (wf) */
    size_t cache_floats; /* allocated */
    size_t cache_used;   /* floats holding copies */
    int n_cached;
};

/* ---- parameters ---------------------------------------------------------------------- */

typedef struct {
    const DbModel *m;
    int pass;      /* 0: count 1-D floats and the largest matrix; 1: resolve; 2: bind to tp */
    TrainParams *tp;
    float *vec;
    size_t nvec;   /* floats used (pass 1) or needed (pass 0) */
    size_t wmax;
    DbError *err;
    float *cache;  /* pass 1: fp32 copies go here while cache_left floats remain */
    size_t cache_left;
    int n_cached;
} Walk;

/* name must exist with exactly shape s[0..ndim-1] and a float dtype. */
static DbStatus walk_find(Walk *k, const DbWeight **out, const char *name, int ndim,
                          const int64_t *s)
{
    const DbWeight *w = model_weight(k->m, name);
    if (!w)
        return db_fail(k->err, DB_ERR_MODEL, "%s: UNet weight %s is missing",
                       k->m->path ? k->m->path : "model", name);
    int same = w->t.ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = w->t.shape[i] == s[i];
    if (!same) {
        char got[96], want[96];
        return db_fail(k->err, DB_ERR_MODEL, "%s: %s (%s) has shape %s, expected %s", w->file,
                       name, w->src_name, tensor_shape_str(w->t.shape, w->t.ndim, got, sizeof got),
                       tensor_shape_str(s, ndim, want, sizeof want));
    }
    if (!dtype_is_float_weight(w->t.dtype))
        return db_fail(k->err, DB_ERR_MODEL, "%s: %s (%s) has dtype %s, expected F32, F16 or BF16",
                       w->file, name, w->src_name, dtype_name(w->t.dtype));
    *out = w;
    return DB_OK;
}

/* 1-D parameter [c] -> f32 copy. */
static DbStatus walk_vec(Walk *k, const float **slot, float **grad, const char *prefix,
                         const char *suffix, int64_t c)
{
    char name[224];
    if ((size_t)snprintf(name, sizeof name, "%s%s", prefix, suffix) >= sizeof name)
        name[0] = '\0'; /* fails the lookup below */
    const DbWeight *w;
    DbStatus st = walk_find(k, &w, name, 1, &c);
    if (st != DB_OK)
        return st;
    if (k->pass == 1) {
        dtype_to_f32(k->vec + k->nvec, w->t.data, w->t.dtype, (size_t)c);
        *slot = k->vec + k->nvec;
    }
    if (k->pass == 2)
        train_params_bind(k->tp, name, slot, grad);
    k->nvec += (size_t)c;
    return DB_OK;
}

/* Linear (ksz 0: weight [oc, ic]) or conv (weight [oc, ic, ksz, ksz]), bias [oc]. */
static DbStatus walk_lin(Walk *k, UnetLin *l, const char *prefix, int64_t oc, int64_t ic,
                         int ksz, int bias)
{
    char name[224];
    int64_t s[4] = {oc, ic, ksz, ksz};
    if ((size_t)snprintf(name, sizeof name, "%s.weight", prefix) >= sizeof name)
        name[0] = '\0';
    DbStatus st = walk_find(k, &l->w, name, ksz ? 4 : 2, s);
    if (st != DB_OK)
        return st;
    if (l->w->t.nelem > k->wmax)
        k->wmax = l->w->t.nelem;
    if (k->pass == 1 && k->cache && weight_needs_scratch(l->w) && l->w->t.nelem <= k->cache_left) {
        const UnetWork into = {.wscratch = k->cache};
        l->wf = NULL;
        unet_weight(l, &into); /* it needs scratch: widened into the cache */
        weight_release_pages(k->m, l->w);
        l->wf = k->cache;
        k->cache += l->w->t.nelem, k->cache_left -= l->w->t.nelem, k->n_cached++;
    }
    if (k->pass == 2) {
        train_params_bind(k->tp, name, &l->wf, &l->dw);
        train_params_bind_lora(k->tp, prefix, &l->lora, &l->dlora);
    } else {
        l->b = NULL;
    }
    return bias ? walk_vec(k, &l->b, &l->db, prefix, ".bias", oc) : DB_OK;
}

static DbStatus walk_norm(Walk *k, UnetNorm *n, const char *prefix, int64_t c)
{
    DbStatus st = walk_vec(k, &n->w, &n->dw, prefix, ".weight", c);
    return st != DB_OK ? st : walk_vec(k, &n->b, &n->db, prefix, ".bias", c);
}

#define TRY(x) do { DbStatus st_ = (x); if (st_ != DB_OK) return st_; } while (0)

static DbStatus walk_resnet(Walk *k, UnetResnet *r, const char *p, int cin, int cout, int T)
{
    char b[224];
    r->cin = cin, r->cout = cout;
#define SUB(s) ((size_t)snprintf(b, sizeof b, "%s%s", p, s) >= sizeof b ? "" : b)
    TRY(walk_norm(k, &r->norm1, SUB(".norm1"), cin));
    TRY(walk_lin(k, &r->conv1, SUB(".conv1"), cout, cin, 3, 1));
    TRY(walk_lin(k, &r->time_emb_proj, SUB(".time_emb_proj"), cout, T, 0, 1));
    TRY(walk_norm(k, &r->norm2, SUB(".norm2"), cout));
    TRY(walk_lin(k, &r->conv2, SUB(".conv2"), cout, cout, 3, 1));
    if (k->pass != 2)
        memset(&r->conv_shortcut, 0, sizeof r->conv_shortcut);
    if (cin != cout)
        TRY(walk_lin(k, &r->conv_shortcut, SUB(".conv_shortcut"), cout, cin, 1, 1));
    return DB_OK;
}

static DbStatus walk_transformer(Walk *k, UnetTransformer *t, const char *p, int c, int heads,
                                 const UnetConfig *cfg)
{
    char b[224];
    const int pk = cfg->use_linear_projection ? 0 : 1, X = cfg->cross_dim;
    t->c = c, t->heads = heads;
    TRY(walk_norm(k, &t->norm, SUB(".norm"), c));
    TRY(walk_lin(k, &t->proj_in, SUB(".proj_in"), c, c, pk, 1));
    TRY(walk_norm(k, &t->norm1, SUB(".transformer_blocks.0.norm1"), c));
    TRY(walk_lin(k, &t->q1, SUB(".transformer_blocks.0.attn1.to_q"), c, c, 0, 0));
    TRY(walk_lin(k, &t->k1, SUB(".transformer_blocks.0.attn1.to_k"), c, c, 0, 0));
    TRY(walk_lin(k, &t->v1, SUB(".transformer_blocks.0.attn1.to_v"), c, c, 0, 0));
    TRY(walk_lin(k, &t->o1, SUB(".transformer_blocks.0.attn1.to_out.0"), c, c, 0, 1));
    TRY(walk_norm(k, &t->norm2, SUB(".transformer_blocks.0.norm2"), c));
    TRY(walk_lin(k, &t->q2, SUB(".transformer_blocks.0.attn2.to_q"), c, c, 0, 0));
    TRY(walk_lin(k, &t->k2, SUB(".transformer_blocks.0.attn2.to_k"), c, X, 0, 0));
    TRY(walk_lin(k, &t->v2, SUB(".transformer_blocks.0.attn2.to_v"), c, X, 0, 0));
    TRY(walk_lin(k, &t->o2, SUB(".transformer_blocks.0.attn2.to_out.0"), c, c, 0, 1));
    TRY(walk_norm(k, &t->norm3, SUB(".transformer_blocks.0.norm3"), c));
    TRY(walk_lin(k, &t->ff_in, SUB(".transformer_blocks.0.ff.net.0.proj"), 8 * (int64_t)c, c, 0, 1));
    TRY(walk_lin(k, &t->ff_out, SUB(".transformer_blocks.0.ff.net.2"), c, 4 * (int64_t)c, 0, 1));
    TRY(walk_lin(k, &t->proj_out, SUB(".proj_out"), c, c, pk, 1));
#undef SUB
    /* the feed-forward keeps ff_in and ff_out widened together */
    if ((size_t)c * (size_t)c * 12 > k->wmax)
        k->wmax = (size_t)c * (size_t)c * 12;
    return DB_OK;
}

static DbStatus unet_walk(Walk *k, UnetParams *p, const UnetConfig *c)
{
    char n[160];
    const int nb = c->n_blocks, L = c->layers_per_block, T = c->time_embed_dim;
    const int *bo = c->block_out;
    TRY(walk_lin(k, &p->conv_in, "conv_in", bo[0], c->in_channels, 3, 1));
    TRY(walk_lin(k, &p->time_1, "time_embedding.linear_1", T, bo[0], 0, 1));
    TRY(walk_lin(k, &p->time_2, "time_embedding.linear_2", T, T, 0, 1));
    for (int b = 0; b < nb; b++) {
        UnetDownBlock *d = &p->down[b];
        d->has_attn = c->down_cross[b];
        d->has_down = b < nb - 1;
        for (int j = 0; j < L; j++) {
            snprintf(n, sizeof n, "down_blocks.%d.resnets.%d", b, j);
            TRY(walk_resnet(k, &d->res[j], n, j ? bo[b] : bo[b ? b - 1 : 0], bo[b], T));
            if (d->has_attn) {
                snprintf(n, sizeof n, "down_blocks.%d.attentions.%d", b, j);
                TRY(walk_transformer(k, &d->attn[j], n, bo[b], c->heads[b], c));
            }
        }
        if (d->has_down) {
            snprintf(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", b);
            TRY(walk_lin(k, &d->down, n, bo[b], bo[b], 3, 1));
        }
    }
    TRY(walk_resnet(k, &p->mid_res0, "mid_block.resnets.0", bo[nb - 1], bo[nb - 1], T));
    TRY(walk_transformer(k, &p->mid_attn, "mid_block.attentions.0", bo[nb - 1],
                         c->heads[nb - 1], c));
    TRY(walk_resnet(k, &p->mid_res1, "mid_block.resnets.1", bo[nb - 1], bo[nb - 1], T));
    int prev = bo[nb - 1];
    for (int u = 0; u < nb; u++) {
        UnetUpBlock *up = &p->up[u];
        const int o = bo[nb - 1 - u], in = bo[nb - 1 - (u + 1 < nb ? u + 1 : nb - 1)];
        up->has_attn = c->up_cross[u];
        up->has_up = u < nb - 1;
        for (int j = 0; j <= L; j++) {
            snprintf(n, sizeof n, "up_blocks.%d.resnets.%d", u, j);
            TRY(walk_resnet(k, &up->res[j], n, (j ? o : prev) + (j == L ? in : o), o, T));
            if (up->has_attn) {
                snprintf(n, sizeof n, "up_blocks.%d.attentions.%d", u, j);
                TRY(walk_transformer(k, &up->attn[j], n, o, c->heads[nb - 1 - u], c));
            }
        }
        if (up->has_up) {
            snprintf(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", u);
            TRY(walk_lin(k, &up->up, n, o, o, 3, 1));
        }
        prev = o;
    }
    TRY(walk_norm(k, &p->norm_out, "conv_norm_out", bo[0]));
    TRY(walk_lin(k, &p->conv_out, "conv_out", c->out_channels, bo[0], 3, 1));
    return DB_OK;
}

DbStatus unet_state_build(UnetState **out, const DbModel *m, size_t cache_bytes, DbError *err)
{
    *out = NULL;
    const UnetConfig *c = &m->unet;
    if (c->n_blocks < 1 || c->n_blocks > DB_MAX_BLOCKS || c->layers_per_block < 1 ||
        c->layers_per_block > UNET_MAX_LAYERS)
        return db_fail(err, DB_ERR_MODEL, "%s: UNet with %d blocks of %d layers is not supported",
                       m->path ? m->path : "model", c->n_blocks, c->layers_per_block);
    UnetState *s = calloc(1, sizeof *s);
    if (!s)
        return db_fail(err, DB_ERR_NOMEM, "UNet: out of memory");
    Walk k = {m, 0, NULL, NULL, 0, 0, err, NULL, 0, 0};
    DbStatus st = unet_walk(&k, &s->p, c);
    if (st == DB_OK && !(s->vec = malloc((k.nvec ? k.nvec : 1) * sizeof(float))))
        st = db_fail(err, DB_ERR_NOMEM, "UNet: cannot allocate %zu floats of parameters", k.nvec);
    const uint64_t full = unet_weight_cache_full(m);
    s->cache_floats = (size_t)((cache_bytes < full ? cache_bytes : full) / sizeof(float));
    if (st == DB_OK && s->cache_floats && !(s->cache = db_big_alloc(s->cache_floats * sizeof(float))))
        st = db_fail(err, DB_ERR_NOMEM, "UNet: cannot allocate %.1f MiB of fp32 weight copies "
                     "(use no weight cache)", (double)s->cache_floats * sizeof(float) / 1048576.0);
    if (st == DB_OK) {
        Walk k1 = {m, 1, NULL, s->vec, 0, 0, err, s->cache, s->cache_floats, 0};
        st = unet_walk(&k1, &s->p, c);
        s->wmax = k1.wmax;
        s->n_cached = k1.n_cached;
        s->cache_used = s->cache_floats - k1.cache_left;
    }
    if (st != DB_OK) {
        unet_state_free(s);
        return st;
    }
    *out = s;
    return DB_OK;
}

const UnetParams *unet_state_params(const UnetState *s) { return &s->p; }

DbStatus unet_train_view_build(UnetParams *view, const UnetState *s, const DbModel *m,
                               TrainParams *tp, DbError *err)
{
    *view = s->p;
    train_params_bind_reset(tp);
    Walk k = {m, 2, tp, NULL, 0, 0, err, NULL, 0, 0};
    TRY(unet_walk(&k, view, &m->unet));
    if (train_params_bound(tp) != train_params_count_tensors(tp))
        return db_fail(err, DB_ERR_MODEL, "%s: %zu of %zu trainable UNet tensors have no slot",
                       m->path ? m->path : "model",
                       train_params_count_tensors(tp) - train_params_bound(tp),
                       train_params_count_tensors(tp));
    return DB_OK;
}
size_t unet_state_wscratch_size(const UnetState *s) { return s->wmax; }

void unet_state_cache_info(const UnetState *s, int *n_cached, size_t *bytes)
{
    *n_cached = s->n_cached;
    *bytes = s->cache_used * sizeof(float);
}

void unet_state_free(UnetState *s)
{
    if (!s)
        return;
    free(s->cache);
    free(s->vec);
    free(s);
}

/* ---- activations --------------------------------------------------------------------- */

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

static size_t level_hw(const UnetDims *d, int l) { return (d->H >> l) * (d->W >> l); }

/* Floats of each region of one forward's allocation (see UnetActs). */
typedef struct {
    size_t skips, xy, cat, work, conv;
} UnetSizes;

static void unet_sizes(UnetSizes *z, const UnetConfig *c, const UnetDims *d)
{
    const int nb = c->n_blocks, L = c->layers_per_block;
    const size_t B = d->B, G = (size_t)c->norm_groups;
    const int *bo = c->block_out;
    memset(z, 0, sizeof *z);
    z->skips = B * (size_t)bo[0] * level_hw(d, 0);
    z->xy = B * (size_t)bo[0] * level_hw(d, 0); /* conv_norm_out */
    for (int b = 0; b < nb; b++) {
        const size_t hw = level_hw(d, b), C = (size_t)bo[b];
        const size_t cin0 = (size_t)bo[b ? b - 1 : 0];
        z->skips += (size_t)L * B * C * hw + (b < nb - 1 ? B * C * level_hw(d, b + 1) : 0);
        z->xy = zmax(z->xy, B * C * hw);
        z->work = zmax(z->work, unet_resnet_work_size(cin0, C, B, hw, G));
        if (c->down_cross[b])
            z->work = zmax(z->work, unet_transformer_work_size(C, B, hw, d->S, G));
    }
    const size_t top = (size_t)bo[nb - 1], hwt = level_hw(d, nb - 1);
    z->work = zmax(z->work, unet_resnet_work_size(top, top, B, hwt, G));
    z->work = zmax(z->work, unet_transformer_work_size(top, B, hwt, d->S, G));
    size_t prev = top;
    for (int u = 0; u < nb; u++) {
        const int l = nb - 1 - u;
        const size_t hw = level_hw(d, l), o = (size_t)bo[l];
        const size_t in = (size_t)bo[nb - 1 - (u + 1 < nb ? u + 1 : nb - 1)];
        for (int j = 0; j <= L; j++) {
            const size_t cin = (j ? o : prev) + (j == L ? in : o);
            z->cat = zmax(z->cat, B * cin * hw);
            z->work = zmax(z->work, unet_resnet_work_size(cin, o, B, hw, G));
        }
        z->xy = zmax(z->xy, B * zmax(prev, o) * hw);
        if (c->up_cross[u])
            z->work = zmax(z->work, unet_transformer_work_size(o, B, hw, d->S, G));
        if (u < nb - 1) {
            z->xy = zmax(z->xy, B * o * level_hw(d, l - 1));
            z->work = zmax(z->work, unet_upsample_work_size(o, B, hw));
        }
        prev = o;
    }
    z->conv = unet_conv_scratch_size(c, d);
}

/* Carves acts from mem in the order of unet_sizes; returns the first float after them. */
static float *unet_acts_carve(UnetActs *a, float *mem, const UnetConfig *c, const UnetDims *d)
{
    const int nb = c->n_blocks, L = c->layers_per_block;
    const size_t B = d->B, T = (size_t)c->time_embed_dim;
    UnetSizes z;
    unet_sizes(&z, c, d);
    float *p = mem;
    memset(a, 0, sizeof *a);
    a->t_sin = p, p += B * (size_t)c->block_out[0];
    a->t_hidden = p, p += B * T;
    a->temb = p, p += B * T;
    a->skip_in = p, p += B * (size_t)c->block_out[0] * level_hw(d, 0);
    for (int b = 0; b < nb; b++) {
        const size_t C = (size_t)c->block_out[b];
        for (int j = 0; j < L; j++)
            a->down_res[b][j] = p, p += B * C * level_hw(d, b);
        if (b < nb - 1)
            a->down_ds[b] = p, p += B * C * level_hw(d, b + 1);
    }
    a->x = p, p += z.xy;
    a->y = p, p += z.xy;
    a->cat = p, p += z.cat;
    return p;
}

DbStatus unet_acts_size(size_t *nfloats, const UnetConfig *c, const UnetDims *d, DbError *err)
{
    UnetSizes z;
    unet_sizes(&z, c, d);
    const size_t T = (size_t)c->time_embed_dim;
    size_t n = d->B * ((size_t)c->block_out[0] + 2 * T) + z.skips + 2 * z.xy + z.cat;
    if (n > SIZE_MAX / sizeof(float) / 2)
        return db_fail(err, DB_ERR_NOMEM, "UNet: activations for batch %zu at %zux%zu are too large",
                       d->B, d->H, d->W);
    *nfloats = n;
    return DB_OK;
}

/* ---- forward ------------------------------------------------------------------------- */

int unet_block_count(const UnetConfig *c)
{
    int n = 2 + 3, L = c->layers_per_block;
    for (int b = 0; b < c->n_blocks; b++)
        n += L * (1 + !!c->down_cross[b]) + (L + 1) * (1 + !!c->up_cross[b]) +
             2 * (b < c->n_blocks - 1);
    return n;
}

static DbStatus step(UnetProgress *pr, const char *stage, DbError *err)
{
    if (!pr || !pr->fn)
        return DB_OK;
    pr->done++;
    double f = pr->total > 0 ? (double)pr->done / pr->total : 1.0;
    if (pr->fn(pr->user, f > 1.0 ? 1.0 : f, stage))
        return db_fail(err, DB_ERR_CANCELLED, "UNet: cancelled at %s", stage);
    return DB_OK;
}

#define STEP(name) TRY(step(pr, name, err))
#define CONV(x)                                                                            \
    do {                                                                                   \
        if ((x) != 0)                                                                      \
            return db_fail(err, DB_ERR_NOMEM, "UNet: internal error: conv scratch too small"); \
    } while (0)

/* Up block u, resnet j: its skip (diffusers pops the down outputs from the end). */
static const float *up_skip(const UnetActs *a, int nb, int L, int u, int j)
{
    const int db = nb - 1 - u;
    if (j < L)
        return a->down_res[db][L - 1 - j];
    return db > 0 ? a->down_ds[db - 1] : a->skip_in;
}

DbStatus unet_forward(float *out, UnetActs *a, const UnetWork *wk, const float *sample,
                      const float *timesteps, const float *ctx, const UnetParams *p,
                      const UnetConfig *c, const UnetDims *d, UnetProgress *pr, DbError *err)
{
    const int nb = c->n_blocks, L = c->layers_per_block;
    const size_t B = d->B, S = d->S, X = (size_t)c->cross_dim, T = (size_t)c->time_embed_dim;
    const size_t G = (size_t)c->norm_groups, C0 = (size_t)c->block_out[0];
    const float eps = c->norm_eps;
    size_t h = d->H, w = d->W;

    /* TimestepEmbedding; every resnet uses SiLU(temb), computed once here */
    timestep_embedding(a->t_sin, timesteps, B, C0, c->flip_sin_to_cos, c->freq_shift);
    linear_forward(a->t_hidden, a->t_sin, unet_weight(&p->time_1, wk), p->time_1.b, B, C0, T);
    silu_forward(a->t_hidden, a->t_hidden, B * T);
    linear_forward(a->temb, a->t_hidden, unet_weight(&p->time_2, wk), p->time_2.b, B, T, T);
    silu_forward(a->temb, a->temb, B * T);
    CONV(conv2d_forward(a->skip_in, sample, unet_weight(&p->conv_in, wk), p->conv_in.b,
                        wk->conv_scratch, wk->conv_scratch_n, B, (size_t)c->in_channels, h, w, C0,
                        3, 1, 1, 1));
    STEP("unet conv_in");

    const float *x = a->skip_in;
    for (int b = 0; b < nb; b++) {
        const UnetDownBlock *db = &p->down[b];
        for (int j = 0; j < L; j++) {
            float *dst = a->down_res[b][j];
            CONV(unet_resnet_forward(db->has_attn ? a->y : dst, wk, x, a->temb, &db->res[j], B,
                                     h, w, T, G, eps));
            STEP("unet down resnet");
            if (db->has_attn) {
                unet_transformer_forward(dst, wk, a->y, ctx, &db->attn[j], B, h, w, S, X, G);
                STEP("unet down attention");
            }
            x = dst;
        }
        if (db->has_down) {
            CONV(unet_downsample_forward(a->down_ds[b], wk, x, &db->down, B,
                                         (size_t)c->block_out[b], h, w));
            x = a->down_ds[b];
            h /= 2, w /= 2;
            STEP("unet downsample");
        }
    }

    CONV(unet_resnet_forward(a->x, wk, x, a->temb, &p->mid_res0, B, h, w, T, G, eps));
    STEP("unet mid resnet");
    unet_transformer_forward(a->y, wk, a->x, ctx, &p->mid_attn, B, h, w, S, X, G);
    STEP("unet mid attention");
    CONV(unet_resnet_forward(a->x, wk, a->y, a->temb, &p->mid_res1, B, h, w, T, G, eps));
    STEP("unet mid resnet");

    float *cur = a->x, *other = a->y, *t;
    size_t cx = (size_t)c->block_out[nb - 1];
    for (int u = 0; u < nb; u++) {
        const UnetUpBlock *ub = &p->up[u];
        const size_t o = (size_t)c->block_out[nb - 1 - u];
        for (int j = 0; j <= L; j++) {
            const UnetResnet *r = &ub->res[j];
            concat_channels_forward(a->cat, cur, up_skip(a, nb, L, u, j), B, cx,
                                    (size_t)r->cin - cx, h * w);
            CONV(unet_resnet_forward(other, wk, a->cat, a->temb, r, B, h, w, T, G, eps));
            t = cur, cur = other, other = t;
            cx = o;
            STEP("unet up resnet");
            if (ub->has_attn) {
                unet_transformer_forward(other, wk, cur, ctx, &ub->attn[j], B, h, w, S, X, G);
                t = cur, cur = other, other = t;
                STEP("unet up attention");
            }
        }
        if (ub->has_up) {
            CONV(unet_upsample_forward(other, wk, cur, &ub->up, B, o, h, w));
            t = cur, cur = other, other = t;
            h *= 2, w *= 2;
            STEP("unet upsample");
        }
    }

    groupnorm_forward(other, wk->work, wk->work + B * G, cur, p->norm_out.w, p->norm_out.b, B, C0,
                      h * w, G, eps, 1);
    CONV(conv2d_forward(out, other, unet_weight(&p->conv_out, wk), p->conv_out.b,
                        wk->conv_scratch, wk->conv_scratch_n, B, C0, h, w,
                        (size_t)c->out_channels, 3, 1, 1, 1));
    STEP("unet conv_out");
    return DB_OK;
}

DbStatus unet_forward_size(size_t *floats, const UnetConfig *c, const UnetDims *d,
                           size_t wscratch_floats, DbError *err)
{
    size_t n_acts;
    DbStatus st = unet_acts_size(&n_acts, c, d, err);
    if (st != DB_OK)
        return st;
    UnetSizes z;
    unet_sizes(&z, c, d);
    *floats = n_acts + z.work + z.conv + wscratch_floats;
    return DB_OK;
}

void unet_forward_carve(UnetActs *a, UnetWork *wk, float *mem, const UnetConfig *c,
                        const UnetDims *d)
{
    UnetSizes z;
    unet_sizes(&z, c, d);
    float *rest = unet_acts_carve(a, mem, c, d);
    wk->work = rest;
    wk->conv_scratch = rest + z.work;
    wk->conv_scratch_n = z.conv;
    wk->wscratch = rest + z.work + z.conv;
}

/* im2col scratch: the largest one-image column matrix [Cin*K*K, Hout*Wout] of any conv,
 * capped (conv2d_forward chunks over output rows to fit). 96 MiB holds every SD conv at
 * 64x64 latents whole: each chunk repacks the conv's weights inside sgemm. */
#define UNET_CONV_SCRATCH_MAX ((size_t)24 << 20)

size_t unet_conv_scratch_size(const UnetConfig *c, const UnetDims *d)
{
    const int nb = c->n_blocks, L = c->layers_per_block;
    const int *bo = c->block_out;
    size_t m = 9 * (size_t)c->in_channels * level_hw(d, 0);
    m = zmax(m, 9 * (size_t)bo[0] * level_hw(d, 0)); /* conv_out */
    for (int b = 0; b < nb; b++) /* down convs; the downsampler's input is at level b */
        m = zmax(m, 9 * (size_t)zmax((size_t)bo[b ? b - 1 : 0], (size_t)bo[b]) * level_hw(d, b));
    size_t prev = (size_t)bo[nb - 1];
    for (int u = 0; u < nb; u++) {
        const int l = nb - 1 - u;
        const size_t o = (size_t)bo[l];
        const size_t in = (size_t)bo[nb - 1 - (u + 1 < nb ? u + 1 : nb - 1)];
        for (int j = 0; j <= L; j++)
            m = zmax(m, 9 * ((j ? o : prev) + (j == L ? in : o)) * level_hw(d, l));
        if (u < nb - 1)
            m = zmax(m, 9 * o * level_hw(d, l - 1));
        prev = o;
    }
    /* at least one output row of any conv: inputs are at most 2 x the widest block (an
     * up-block concat) or in_channels wide, output rows at most W long */
    size_t widest = 0;
    for (int b = 0; b < nb; b++)
        widest = zmax(widest, (size_t)bo[b]);
    const size_t row = 9 * zmax((size_t)c->in_channels, 2 * widest) * d->W;
    return zmax(m < UNET_CONV_SCRATCH_MAX ? m : UNET_CONV_SCRATCH_MAX, row);
}
