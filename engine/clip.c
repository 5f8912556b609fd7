/* CLIP text encoder forward: transformers CLIPTextModel (models/clip/modeling_clip.py).
 *
 *   x = token_embedding[ids] + position_embedding[0..T-1]             CLIPTextEmbeddings
 *   per layer (CLIPEncoderLayer, pre-norm):
 *     x = x + out_proj(attention(q_proj(ln1(x)), k_proj(.), v_proj(.)))  causal, head_dim^-0.5
 *     x = x + fc2(act(fc1(ln2(x))))                                 act: quick_gelu (SD1), gelu (SD2)
 *   last_hidden_state = final_layer_norm(x)
 * SD2 single files run 23 of 24 layers (the penultimate hidden state) and still apply
 * final_layer_norm, as diffusers' converted checkpoints do; the loader sets ClipConfig.layers.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "clip.h"

#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_CTX ((size_t)DB_CONTEXT_LEN)

struct ClipState {
    ClipParams p;
    ClipLayerParams *layers; /* [layers] */
    float *owned;            /* widened F16/BF16 (and unaligned F32) weights */
};

static int mul_ok(size_t *r, size_t a, size_t b) { return !__builtin_mul_overflow(a, b, r); }
static int add_ok(size_t *r, size_t a, size_t b) { return !__builtin_add_overflow(a, b, r); }

DbStatus clip_config_check(const ClipConfig *c, DbError *err)
{
    if (c->vocab_size < 1 || c->hidden < 1 || c->intermediate < 1 || c->heads < 1 ||
        c->layers < 1)
        return db_fail(err, DB_ERR_MODEL,
                       "text encoder config: vocab_size %d, hidden %d, intermediate %d, "
                       "heads %d, layers %d must all be positive",
                       c->vocab_size, c->hidden, c->intermediate, c->heads, c->layers);
    if (c->hidden % c->heads != 0)
        return db_fail(err, DB_ERR_MODEL,
                       "text encoder config: hidden size %d is not divisible by %d heads",
                       c->hidden, c->heads);
    if (c->max_pos < DB_CONTEXT_LEN)
        return db_fail(err, DB_ERR_MODEL,
                       "text encoder config: max_position_embeddings %d is below the "
                       "context length %d", c->max_pos, DB_CONTEXT_LEN);
    if (!(c->ln_eps >= 0.0f) || !isfinite(c->ln_eps))
        return db_fail(err, DB_ERR_MODEL, "text encoder config: layer_norm_eps %g is invalid",
                       (double)c->ln_eps);
    if (c->act != CLIP_ACT_QUICK_GELU && c->act != CLIP_ACT_GELU)
        return db_fail(err, DB_ERR_MODEL, "text encoder config: unknown activation %d",
                       (int)c->act);
    return DB_OK;
}

/* ---- Parameters ------------------------------------------------------------------- */

typedef enum { SH_D, SH_I, SH_DD, SH_ID, SH_DI, SH_VD, SH_PD } ShapeKind;

typedef struct {
    const char *name;
    size_t offset; /* of the const float * in ClipLayerParams */
    ShapeKind shape;
} LayerParamEntry;

/* CLIPEncoderLayer parameters: canonical name suffix -> field. */
static const LayerParamEntry clip_layer_table[] = {
    {"layer_norm1.weight", offsetof(ClipLayerParams, ln1_w), SH_D},
    {"layer_norm1.bias", offsetof(ClipLayerParams, ln1_b), SH_D},
    {"self_attn.q_proj.weight", offsetof(ClipLayerParams, q_w), SH_DD},
    {"self_attn.q_proj.bias", offsetof(ClipLayerParams, q_b), SH_D},
    {"self_attn.k_proj.weight", offsetof(ClipLayerParams, k_w), SH_DD},
    {"self_attn.k_proj.bias", offsetof(ClipLayerParams, k_b), SH_D},
    {"self_attn.v_proj.weight", offsetof(ClipLayerParams, v_w), SH_DD},
    {"self_attn.v_proj.bias", offsetof(ClipLayerParams, v_b), SH_D},
    {"self_attn.out_proj.weight", offsetof(ClipLayerParams, o_w), SH_DD},
    {"self_attn.out_proj.bias", offsetof(ClipLayerParams, o_b), SH_D},
    {"layer_norm2.weight", offsetof(ClipLayerParams, ln2_w), SH_D},
    {"layer_norm2.bias", offsetof(ClipLayerParams, ln2_b), SH_D},
    {"mlp.fc1.weight", offsetof(ClipLayerParams, fc1_w), SH_ID},
    {"mlp.fc1.bias", offsetof(ClipLayerParams, fc1_b), SH_I},
    {"mlp.fc2.weight", offsetof(ClipLayerParams, fc2_w), SH_DI},
    {"mlp.fc2.bias", offsetof(ClipLayerParams, fc2_b), SH_D},
};
_Static_assert(sizeof clip_layer_table / sizeof clip_layer_table[0] ==
                   sizeof(ClipLayerParams) / sizeof(const float *),
               "clip_layer_table must name every ClipLayerParams field");

static int shape_of(int64_t shape[2], ShapeKind k, const ClipConfig *c)
{
    const int64_t D = c->hidden, I = c->intermediate;
    switch (k) {
    case SH_D: shape[0] = D; return 1;
    case SH_I: shape[0] = I; return 1;
    case SH_DD: shape[0] = D, shape[1] = D; return 2;
    case SH_ID: shape[0] = I, shape[1] = D; return 2;
    case SH_DI: shape[0] = D, shape[1] = I; return 2;
    case SH_VD: shape[0] = c->vocab_size, shape[1] = D; return 2;
    case SH_PD: shape[0] = c->max_pos, shape[1] = D; return 2;
    }
    return 0;
}

/* Pass 0 counts the floats to widen into *cursor; pass 1 fills *slot (widening into
 * s->owned + *cursor where needed). */
static DbStatus param_resolve(ClipState *s, const DbModel *m, int pass, const char *name,
                              ShapeKind k, const float **slot, size_t *cursor, DbError *err)
{
    const DbWeight *w = model_weight(m, name);
    if (!w)
        return db_fail(err, DB_ERR_MODEL, "%s: text encoder weight %s is missing",
                       m->path ? m->path : "model", name);
    int64_t shape[2];
    int ndim = shape_of(shape, k, &m->clip);
    int same = w->t.ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = w->t.shape[i] == shape[i];
    if (!same) {
        char got[96], want[96];
        return db_fail(err, DB_ERR_MODEL, "%s: %s (%s) has shape %s, expected %s", w->file,
                       name, w->src_name, tensor_shape_str(w->t.shape, w->t.ndim, got, sizeof got),
                       tensor_shape_str(shape, ndim, want, sizeof want));
    }
    if (!dtype_is_float_weight(w->t.dtype))
        return db_fail(err, DB_ERR_MODEL, "%s: %s (%s) has dtype %s, expected F32, F16 or BF16",
                       w->file, name, w->src_name, dtype_name(w->t.dtype));
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (!mul_ok(&n, n, (size_t)shape[i]))
            return db_fail(err, DB_ERR_NOMEM, "%s: %s is too large", w->file, name);
    if (n != w->t.nelem)
        return db_fail(err, DB_ERR_MODEL, "%s: %s (%s) has %zu elements, expected %zu", w->file,
                       name, w->src_name, w->t.nelem, n);
    int in_place = w->t.dtype == DB_DTYPE_F32 && (uintptr_t)w->t.data % _Alignof(float) == 0;
    if (pass == 0) {
        if (!in_place && !add_ok(cursor, *cursor, n))
            return db_fail(err, DB_ERR_NOMEM, "%s: text encoder weights are too large", w->file);
        return DB_OK;
    }
    if (in_place) {
        *slot = w->t.data;
    } else {
        dtype_to_f32(s->owned + *cursor, w->t.data, w->t.dtype, n);
        *slot = s->owned + *cursor;
        *cursor += n;
    }
    return DB_OK;
}

static DbStatus clip_state_walk(ClipState *s, const DbModel *m, int pass, size_t *cursor,
                                DbError *err)
{
    static const char *const global_names[4] = {
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"};
    const float **global_slots[4] = {&s->p.token_embedding, &s->p.position_embedding,
                                     &s->p.lnf_w, &s->p.lnf_b};
    const ShapeKind global_shapes[4] = {SH_VD, SH_PD, SH_D, SH_D};
    DbStatus st;
    for (int i = 0; i < 4; i++)
        if ((st = param_resolve(s, m, pass, global_names[i], global_shapes[i], global_slots[i],
                                cursor, err)) != DB_OK)
            return st;
    char name[160];
    for (int l = 0; l < m->clip.layers; l++)
        for (size_t i = 0; i < sizeof clip_layer_table / sizeof clip_layer_table[0]; i++) {
            const LayerParamEntry *e = &clip_layer_table[i];
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", l, e->name);
            const float **slot = (const float **)((char *)&s->layers[l] + e->offset);
            if ((st = param_resolve(s, m, pass, name, e->shape, slot, cursor, err)) != DB_OK)
                return st;
        }
    return DB_OK;
}

DbStatus clip_state_build(ClipState **out, const DbModel *m, DbError *err)
{
    *out = NULL;
    DbStatus st = clip_config_check(&m->clip, err);
    if (st != DB_OK)
        return st;
    ClipState *s = calloc(1, sizeof *s);
    if (s)
        s->layers = calloc((size_t)m->clip.layers, sizeof *s->layers);
    if (!s || !s->layers) {
        clip_state_free(s);
        return db_fail(err, DB_ERR_NOMEM, "text encoder: out of memory");
    }
    s->p.layer = s->layers;
    size_t n_owned = 0;
    if ((st = clip_state_walk(s, m, 0, &n_owned, err)) != DB_OK) {
        clip_state_free(s);
        return st;
    }
    if (n_owned > 0) {
        size_t bytes;
        if (!mul_ok(&bytes, n_owned, sizeof(float)) || !(s->owned = malloc(bytes))) {
            clip_state_free(s);
            return db_fail(err, DB_ERR_NOMEM,
                           "text encoder: cannot allocate %.1f MiB for f32 weights",
                           (double)n_owned * sizeof(float) / 1048576.0);
        }
    }
    size_t cursor = 0;
    if ((st = clip_state_walk(s, m, 1, &cursor, err)) != DB_OK) {
        clip_state_free(s);
        return st;
    }
    *out = s;
    return DB_OK;
}

const ClipParams *clip_state_params(const ClipState *s) { return &s->p; }

void clip_state_free(void *state)
{
    ClipState *s = state;
    if (!s)
        return;
    free(s->owned);
    free(s->layers);
    free(s);
}

/* ---- Trainable view ----------------------------------------------------------------- */

_Static_assert(sizeof(ClipLayerGrads) == sizeof(ClipLayerParams) &&
                   offsetof(ClipLayerGrads, fc2_b) == offsetof(ClipLayerParams, fc2_b) &&
                   offsetof(ClipLayerGrads, q_w) == offsetof(ClipLayerParams, q_w),
               "ClipLayerGrads must mirror ClipLayerParams (clip_layer_table offsets)");

DbStatus clip_train_view_build(ClipTrainView *v, const ClipParams *base, const ClipConfig *c,
                               TrainParams *tp, DbError *err)
{
    static const char *const lora_names[CLIP_LORA_SLOTS] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "mlp.fc1", "mlp.fc2"};
    const size_t L = (size_t)c->layers;
    memset(v, 0, sizeof *v);
    v->layers = calloc(L, sizeof *v->layers);
    v->glayers = calloc(L, sizeof *v->glayers);
    v->lora = calloc(L, sizeof *v->lora);
    v->glora = calloc(L, sizeof *v->glora);
    if (!v->layers || !v->glayers || !v->lora || !v->glora) {
        clip_train_view_free(v);
        return db_fail(err, DB_ERR_NOMEM, "text encoder: out of memory");
    }
    v->p = *base;
    v->p.layer = v->layers;
    v->g.layer = v->glayers;
    train_params_bind_reset(tp);
    train_params_bind(tp, "text_model.embeddings.token_embedding.weight", &v->p.token_embedding,
                      &v->g.token_embedding);
    train_params_bind(tp, "text_model.embeddings.position_embedding.weight",
                      &v->p.position_embedding, &v->g.position_embedding);
    train_params_bind(tp, "text_model.final_layer_norm.weight", &v->p.lnf_w, &v->g.lnf_w);
    train_params_bind(tp, "text_model.final_layer_norm.bias", &v->p.lnf_b, &v->g.lnf_b);
    char name[160];
    int any_lora = 0;
    for (size_t l = 0; l < L; l++) {
        v->layers[l] = base->layer[l];
        for (size_t i = 0; i < sizeof clip_layer_table / sizeof clip_layer_table[0]; i++) {
            const LayerParamEntry *e = &clip_layer_table[i];
            snprintf(name, sizeof name, "text_model.encoder.layers.%zu.%s", l, e->name);
            train_params_bind(tp, name, (const float **)((char *)&v->layers[l] + e->offset),
                              (float **)((char *)&v->glayers[l] + e->offset));
        }
        ClipLayerLora *lo = &v->lora[l];
        ClipLayerLoraGrads *go = &v->glora[l];
        LoraParams *lp[CLIP_LORA_SLOTS] = {&lo->q, &lo->k, &lo->v, &lo->o, &lo->fc1, &lo->fc2};
        LoraGrads *lg[CLIP_LORA_SLOTS] = {&go->q, &go->k, &go->v, &go->o, &go->fc1, &go->fc2};
        for (size_t j = 0; j < CLIP_LORA_SLOTS; j++) {
            snprintf(name, sizeof name, "text_model.encoder.layers.%zu.%s", l, lora_names[j]);
            train_params_bind_lora(tp, name, lp[j], lg[j]);
            any_lora |= lp[j]->down != NULL;
        }
    }
    if (any_lora) {
        v->p.lora = v->lora;
        v->g.lora = v->glora;
    }
    if (train_params_bound(tp) != train_params_count_tensors(tp)) {
        size_t n = train_params_count_tensors(tp) - train_params_bound(tp);
        clip_train_view_free(v);
        return db_fail(err, DB_ERR_MODEL, "text encoder: %zu trainable tensor(s) have no place "
                       "in the network", n);
    }
    return DB_OK;
}

void clip_train_view_free(ClipTrainView *v)
{
    free(v->layers);
    free(v->glayers);
    free(v->lora);
    free(v->glora);
    memset(v, 0, sizeof *v);
}

/* ---- Activations ------------------------------------------------------------------ */

DbStatus clip_acts_size(size_t *nfloats, const ClipConfig *c, size_t B, int save_all,
                        size_t lora_rank, DbError *err)
{
    size_t BT, BTD, BTI, BHT, per_layer, res, total, t;
    size_t L = save_all ? (size_t)c->layers : 1;
    int ok = mul_ok(&BT, B, T_CTX) && mul_ok(&BTD, BT, (size_t)c->hidden) &&
             mul_ok(&BTI, BT, (size_t)c->intermediate) && mul_ok(&BHT, BT, (size_t)c->heads) &&
             /* ln1, q, k, v, att, res2, ln2: 7 x BTD; 4 statistics x BT; lse; fc1, act */
             mul_ok(&per_layer, BTD, 7) && mul_ok(&t, BT, 4) && add_ok(&per_layer, per_layer, t) &&
             add_ok(&per_layer, per_layer, BHT) && mul_ok(&t, BTI, 2) &&
             add_ok(&per_layer, per_layer, t) &&
             /* LoRA xa: 6 slots of BT x R */
             mul_ok(&t, BT, lora_rank) && mul_ok(&t, t, CLIP_LORA_SLOTS) &&
             add_ok(&per_layer, per_layer, t) && mul_ok(&total, per_layer, L) &&
             mul_ok(&res, BTD, L + 1) && add_ok(&total, total, res) && mul_ok(&t, BT, 2) &&
             add_ok(&total, total, t) && mul_ok(&t, total, sizeof(float));
    if (!ok)
        return db_fail(err, DB_ERR_NOMEM, "text encoder: activations for batch %zu are too large",
                       B);
    *nfloats = total;
    return DB_OK;
}

void clip_acts_carve(ClipActs *a, float *mem, const ClipConfig *c, size_t B, int save_all,
                     size_t lora_rank)
{
    const size_t L = save_all ? (size_t)c->layers : 1;
    const size_t BT = B * T_CTX, BTD = BT * (size_t)c->hidden;
    const size_t BTI = BT * (size_t)c->intermediate, BHT = BT * (size_t)c->heads;
    float *p = mem;
    a->B = B;
    a->save_all = save_all;
    a->res = p, p += (L + 1) * BTD;
    a->ln1 = p, p += L * BTD;
    a->ln1_mean = p, p += L * BT;
    a->ln1_rstd = p, p += L * BT;
    a->q = p, p += L * BTD;
    a->k = p, p += L * BTD;
    a->v = p, p += L * BTD;
    a->att = p, p += L * BTD;
    a->att_lse = p, p += L * BHT;
    a->res2 = p, p += L * BTD;
    a->ln2 = p, p += L * BTD;
    a->ln2_mean = p, p += L * BT;
    a->ln2_rstd = p, p += L * BT;
    a->fc1 = p, p += L * BTI;
    a->act = p, p += L * BTI;
    a->lnf_mean = p, p += BT;
    a->lnf_rstd = p, p += BT;
    a->lora_rank = lora_rank;
    a->lora_xa = lora_rank ? p : NULL;
}

/* ---- Forward ---------------------------------------------------------------------- */

/* CLIPTextEmbeddings: x [B, T, D] = token_embedding [V, D][ids [B, T]] + position_embedding
 * [P, D][t] (position_ids 0..T-1). */
static void clip_embed(float *x, const int32_t *ids, const float *tok, const float *pos,
                       size_t B, size_t D)
{
#pragma omp parallel for schedule(static)
    for (size_t bt = 0; bt < B * T_CTX; bt++) {
        const float *te = tok + (size_t)ids[bt] * D;
        const float *pe = pos + (bt % T_CTX) * D;
        float *o = x + bt * D;
        for (size_t d = 0; d < D; d++)
            o[d] = te[d] + pe[d];
    }
}

/* Adds the LoRA term of one linear (no-op without an adapter): out [N, OC] += scale *
 * (inp [N, IC] @ down^T) @ up^T, saving xa [N, r]. */
static void clip_lora_forward(float *out, float *xa, const float *inp, const LoraParams *lp,
                              size_t N, size_t IC, size_t OC)
{
    if (lp->down)
        lora_linear_forward(out, xa, inp, lp->down, lp->up, lp->scale, N, IC, OC, lp->rank);
}

void clip_forward(float *out, ClipActs *a, const int32_t *ids, const ClipParams *p,
                  const ClipConfig *c)
{
    const size_t B = a->B, BT = B * T_CTX, D = (size_t)c->hidden, I = (size_t)c->intermediate;
    const size_t H = (size_t)c->heads, hd = D / H;
    const size_t BTD = BT * D, BTI = BT * I;
    /* layer strides into the saved activations: 0 in inference (one reused slice) */
    const size_t s_btd = a->save_all ? BTD : 0, s_bt = a->save_all ? BT : 0;
    const size_t s_bti = a->save_all ? BTI : 0, s_bht = a->save_all ? BT * H : 0;
    const float scale = (float)(1.0 / sqrt((double)hd));
    void (*act_fn)(float *, const float *, size_t) =
        c->act == CLIP_ACT_GELU ? gelu_forward : quick_gelu_forward;

    clip_embed(a->res, ids, p->token_embedding, p->position_embedding, B, D);
    for (size_t l = 0; l < (size_t)c->layers; l++) {
        const ClipLayerParams *lp = &p->layer[l];
        const float *res = a->res + l * s_btd;
        float *res_next = a->res + (l + 1) * s_btd; /* may alias res: res is dead by then */
        float *ln1 = a->ln1 + l * s_btd, *ln2 = a->ln2 + l * s_btd;
        float *q = a->q + l * s_btd, *k = a->k + l * s_btd, *v = a->v + l * s_btd;
        float *att = a->att + l * s_btd, *res2 = a->res2 + l * s_btd;
        float *fc1 = a->fc1 + l * s_bti, *act = a->act + l * s_bti;
        const ClipLayerLora *lo = p->lora ? &p->lora[l] : NULL;
        /* LoRA xa slot j of this layer: [BT, R] */
        const size_t s_xa = BT * a->lora_rank;
        float *xa = a->lora_xa ? a->lora_xa + (a->save_all ? l : 0) * CLIP_LORA_SLOTS * s_xa
                               : NULL;

        /* self-attention block: res2 = res + out_proj(attention(ln1(res))) */
        layernorm_forward(ln1, a->ln1_mean + l * s_bt, a->ln1_rstd + l * s_bt, res, lp->ln1_w,
                          lp->ln1_b, BT, D, c->ln_eps);
        linear_forward(q, ln1, lp->q_w, lp->q_b, BT, D, D);
        linear_forward(k, ln1, lp->k_w, lp->k_b, BT, D, D);
        linear_forward(v, ln1, lp->v_w, lp->v_b, BT, D, D);
        if (lo) {
            clip_lora_forward(q, xa + 0 * s_xa, ln1, &lo->q, BT, D, D);
            clip_lora_forward(k, xa + 1 * s_xa, ln1, &lo->k, BT, D, D);
            clip_lora_forward(v, xa + 2 * s_xa, ln1, &lo->v, BT, D, D);
        }
        attention_forward(att, a->att_lse + l * s_bht, q, k, v, B, T_CTX, T_CTX, H, hd, scale,
                          1);
        linear_forward(res2, att, lp->o_w, lp->o_b, BT, D, D);
        if (lo) clip_lora_forward(res2, xa + 3 * s_xa, att, &lo->o, BT, D, D);
        residual_add(res2, res, BTD);

        /* MLP block: res_next = res2 + fc2(act(fc1(ln2(res2)))) */
        layernorm_forward(ln2, a->ln2_mean + l * s_bt, a->ln2_rstd + l * s_bt, res2, lp->ln2_w,
                          lp->ln2_b, BT, D, c->ln_eps);
        linear_forward(fc1, ln2, lp->fc1_w, lp->fc1_b, BT, D, I);
        if (lo) clip_lora_forward(fc1, xa + 4 * s_xa, ln2, &lo->fc1, BT, D, I);
        act_fn(act, fc1, BTI);
        linear_forward(res_next, act, lp->fc2_w, lp->fc2_b, BT, I, D);
        if (lo) clip_lora_forward(res_next, xa + 5 * s_xa, act, &lo->fc2, BT, I, D);
        residual_add(res_next, res2, BTD);
    }
    layernorm_forward(out, a->lnf_mean, a->lnf_rstd, a->res + (size_t)c->layers * s_btd,
                      p->lnf_w, p->lnf_b, BT, D, c->ln_eps);
}

/* ---- Public entry ----------------------------------------------------------------- */

DbStatus db_text_encoder_forward(DbModel *m, const int32_t *ids, int batch, float *out,
                                 DbError *err)
{
    if (!m || !ids || !out)
        return db_fail(err, DB_ERR_ARG, "text encoder: model, input_ids and output are required");
    if (batch < 1)
        return db_fail(err, DB_ERR_ARG, "input_ids: batch must be at least 1, got %d", batch);
    DbStatus st = clip_config_check(&m->clip, err);
    if (st != DB_OK)
        return st;
    const size_t B = (size_t)batch;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T_CTX; t++) {
            int32_t id = ids[b * T_CTX + t];
            if (id < 0 || id >= m->clip.vocab_size)
                return db_fail(err, DB_ERR_ARG,
                               "input_ids: id %d at [%zu, %zu] is out of range [0, %d)",
                               (int)id, b, t, m->clip.vocab_size);
        }
    if (!m->text_state) {
        ClipState *s;
        if ((st = model_check_finite(m, NET_TEXT, err)) != DB_OK ||
            (st = clip_state_build(&s, m, err)) != DB_OK)
            return st;
        m->text_state = s;
    }
    size_t n;
    if ((st = clip_acts_size(&n, &m->clip, B, 0, 0, err)) != DB_OK)
        return st;
    float *mem = malloc(n * sizeof *mem);
    if (!mem)
        return db_fail(err, DB_ERR_NOMEM, "text encoder: cannot allocate %.1f MiB of activations",
                       (double)n * sizeof *mem / 1048576.0);
    ClipActs acts;
    clip_acts_carve(&acts, mem, &m->clip, B, 0, 0);
    clip_forward(out, &acts, ids, clip_state_params(m->text_state), &m->clip);
    free(mem);
    return DB_OK;
}
