/* Trainable parameters: selection by glob, fp32 master copies, one gradient block, LoRA
 * adapters (see train_params.h for the layout and the view protocol).
 * Sources: peft tuners/lora/layer.py (reset_lora_parameters: kaiming_uniform_(lora_A,
 * a=sqrt(5)), zeros_(lora_B); scaling = lora_alpha / r), kohya-ss sd-scripts networks/lora.py
 * (create_modules: Linear and Conv2d children of the target module classes).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "train_params.h"

#include "rng.h"
#include "safetensors.h"

#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *module;
    size_t down, up; /* tensor indices */
    float scale;
    size_t rank;
} TrainLora;

struct TrainParams {
    NetKind net;
    GArray *tensors;   /* TrainTensor */
    GArray *loras;     /* TrainLora */
    GHashTable *by_name;   /* tensor name -> index + 1 (borrowed keys) */
    GHashTable *by_module; /* LoRA module -> adapter index + 1 (borrowed keys) */
    float *values, *grads; /* [count] each */
    size_t count, max_rank, bound;
};

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Is module (with a weight of ndim dims and kernel kh x kw) in the LoRA target set? */
static int lora_targeted(NetKind net, const char *module, int ndim, int64_t kh, int64_t kw,
                         TrainLoraTargets t)
{
    static const char *const clip_attn[] = {".self_attn.q_proj", ".self_attn.k_proj",
                                            ".self_attn.v_proj", ".self_attn.out_proj"};
    static const char *const unet_attn[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    if (t == TRAIN_LORA_NONE || (ndim != 2 && ndim != 4)) return 0;
    const int is_1x1 = ndim == 2 || (kh == 1 && kw == 1);
    if (net == NET_TEXT) {
        for (size_t i = 0; i < G_N_ELEMENTS(clip_attn); i++)
            if (ends_with(module, clip_attn[i])) return 1;
        return t >= TRAIN_LORA_TRANSFORMER &&
               (ends_with(module, ".mlp.fc1") || ends_with(module, ".mlp.fc2"));
    }
    if (net != NET_UNET) return 0;
    if (strstr(module, ".attentions.")) { /* Transformer2DModel */
        for (size_t i = 0; i < G_N_ELEMENTS(unet_attn); i++)
            if (ends_with(module, unet_attn[i])) return 1;
        return t >= TRAIN_LORA_TRANSFORMER && is_1x1;
    }
    return t >= TRAIN_LORA_CONV && (strstr(module, ".resnets.") ||
                                    strstr(module, ".downsamplers.") ||
                                    strstr(module, ".upsamplers."));
}

DbStatus train_lora_parse(TrainSpec *spec, const char *text, DbError *err)
{
    char **f = g_strsplit(text, ":", -1);
    guint n = g_strv_length(f);
    char *end;
    DbStatus st = DB_OK;
    long r = n >= 1 ? strtol(f[0], &end, 10) : 0;
    if (n < 1 || n > 3 || end == f[0] || *end || r < 1 || r > 4096) {
        st = db_fail(err, DB_ERR_ARG, "--lora %s: expected RANK[:ALPHA[:TARGETS]] with RANK in "
                     "1..4096", text);
        goto out;
    }
    spec->lora_rank = (int)r;
    spec->lora_alpha = (float)r;
    spec->lora_targets = TRAIN_LORA_ATTN;
    if (n >= 2 && f[1][0]) {
        double a = strtod(f[1], &end);
        if (end == f[1] || *end || !(a > 0.0) || !isfinite(a) || a > 1e6) {
            st = db_fail(err, DB_ERR_ARG, "--lora %s: alpha '%s' must be a positive number",
                         text, f[1]);
            goto out;
        }
        spec->lora_alpha = (float)a;
    }
    if (n == 3) {
        if (!strcmp(f[2], "attn")) spec->lora_targets = TRAIN_LORA_ATTN;
        else if (!strcmp(f[2], "transformer")) spec->lora_targets = TRAIN_LORA_TRANSFORMER;
        else if (!strcmp(f[2], "conv")) spec->lora_targets = TRAIN_LORA_CONV;
        else
            st = db_fail(err, DB_ERR_ARG, "--lora %s: unknown targets '%s' (attn, transformer, "
                         "conv)", text, f[2]);
    }
out:
    g_strfreev(f);
    return st;
}

/* ---- Selection ------------------------------------------------------------------------ */

typedef struct {
    TrainParams *tp;
    const TrainSpec *spec;
    GPatternSpec **pat;
    guint n_pat;
    guint *hits;   /* [n_pat] */
    GArray *pending_lora; /* TrainTensor pairs (down, up), appended after the full tensors */
    GPtrArray *lora_modules;
    int overflow;
} Select;

static int nelem_of(size_t *n, int ndim, const int64_t *shape)
{
    *n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(*n, (size_t)shape[i], n)) return 0;
    return 1;
}

static int select_param(void *user, const char *name, int ndim, const int64_t *shape)
{
    Select *s = user;
    if (ndim < 1 || ndim > 4) return 0;
    int full = 0;
    for (guint i = 0; i < s->n_pat; i++)
        if (g_pattern_spec_match_string(s->pat[i], name)) {
            s->hits[i]++;
            full = 1;
        }
    if (full) {
        TrainTensor t = {g_strdup(name), TRAIN_FULL, ndim, {0}, 0, 0};
        memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
        if (!nelem_of(&t.nelem, ndim, shape)) s->overflow = 1;
        g_array_append_val(s->tp->tensors, t);
    }
    const size_t len = strlen(name);
    if (s->spec->lora_rank > 0 && ends_with(name, ".weight") && len > 7) {
        char *module = g_strndup(name, len - 7);
        int64_t kh = ndim == 4 ? shape[2] : 1, kw = ndim == 4 ? shape[3] : 1;
        if (!lora_targeted(s->tp->net, module, ndim, kh, kw, s->spec->lora_targets)) {
            g_free(module);
            return 0;
        }
        const int64_t R = s->spec->lora_rank;
        TrainTensor d = {g_strconcat(module, ".lora_A.weight", NULL), TRAIN_LORA_DOWN, ndim,
                         {R, shape[1], kh, kw}, 0, 0};
        TrainTensor u = {g_strconcat(module, ".lora_B.weight", NULL), TRAIN_LORA_UP, ndim,
                         {shape[0], R, 1, 1}, 0, 0};
        if (!nelem_of(&d.nelem, ndim, d.shape) || !nelem_of(&u.nelem, ndim, u.shape))
            s->overflow = 1;
        g_array_append_val(s->pending_lora, d);
        g_array_append_val(s->pending_lora, u);
        g_ptr_array_add(s->lora_modules, module);
    }
    return 0;
}

static void tensor_clear(gpointer p) { g_free(((TrainTensor *)p)->name); }
static void lora_clear(gpointer p) { g_free(((TrainLora *)p)->module); }

void train_params_free(TrainParams *tp)
{
    if (!tp) return;
    if (tp->by_name) g_hash_table_destroy(tp->by_name);
    if (tp->by_module) g_hash_table_destroy(tp->by_module);
    if (tp->tensors) g_array_free(tp->tensors, TRUE);
    if (tp->loras) g_array_free(tp->loras, TRUE);
    free(tp->values);
    free(tp->grads);
    g_free(tp);
}

/* Copies the selected weights to fp32 and initialises the adapters. */
static DbStatus fill_values(TrainParams *tp, const DbModel *m, uint64_t seed, DbError *err)
{
    DbRng rng;
    rng_seed(&rng, seed);
    for (guint i = 0; i < tp->tensors->len; i++) {
        const TrainTensor *t = &g_array_index(tp->tensors, TrainTensor, i);
        float *v = tp->values + t->offset;
        if (t->kind == TRAIN_FULL) {
            const DbWeight *w = model_weight(m, t->name);
            if (!w)
                return db_fail(err, DB_ERR_MODEL, "%s: weight %s is missing",
                               m->path ? m->path : "model", t->name);
            if (w->t.nelem != t->nelem || !dtype_is_float_weight(w->t.dtype))
                return db_fail(err, DB_ERR_MODEL, "%s: %s (%s) has %zu %s values, expected %zu "
                               "float values", w->file, t->name, w->src_name, w->t.nelem,
                               dtype_name(w->t.dtype), t->nelem);
            dtype_to_f32(v, w->t.data, w->t.dtype, t->nelem);
        } else if (t->kind == TRAIN_LORA_DOWN) {
            /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) */
            const size_t fan_in = t->nelem / (size_t)t->shape[0];
            const float bound = (float)(1.0 / sqrt((double)fan_in));
            rng_uniform(&rng, v, t->nelem);
            for (size_t j = 0; j < t->nelem; j++)
                v[j] = v[j] * (bound - -bound) + -bound; /* torch uniform_(from, to) */
        } else {
            memset(v, 0, t->nelem * sizeof *v);
        }
    }
    return DB_OK;
}

DbStatus train_params_new(TrainParams **out, const DbModel *m, NetKind net,
                          const TrainSpec *spec, DbError *err)
{
    *out = NULL;
    if (net != NET_TEXT && net != NET_UNET)
        return db_fail(err, DB_ERR_UNSUPPORTED, "training: only the text encoder and the UNet "
                       "have trainable parameters");
    if (net == NET_TEXT && spec->lora_rank > 0 && spec->lora_targets == TRAIN_LORA_CONV)
        return db_fail(err, DB_ERR_ARG, "--lora: target set 'conv' applies to the UNet only");
    TrainParams *tp = g_new0(TrainParams, 1);
    tp->net = net;
    tp->tensors = g_array_new(FALSE, TRUE, sizeof(TrainTensor));
    g_array_set_clear_func(tp->tensors, tensor_clear);
    tp->loras = g_array_new(FALSE, TRUE, sizeof(TrainLora));
    g_array_set_clear_func(tp->loras, lora_clear);
    tp->by_name = g_hash_table_new(g_str_hash, g_str_equal);
    tp->by_module = g_hash_table_new(g_str_hash, g_str_equal);

    Select s = {tp, spec, NULL, 0, NULL, g_array_new(FALSE, TRUE, sizeof(TrainTensor)),
                g_ptr_array_new(), 0};
    char **globs = g_strsplit(spec->params ? spec->params : "", ",", -1);
    s.pat = g_new0(GPatternSpec *, g_strv_length(globs) + 1);
    s.hits = g_new0(guint, g_strv_length(globs) + 1);
    for (guint i = 0; globs[i]; i++)
        if (globs[i][0]) s.pat[s.n_pat++] = g_pattern_spec_new(globs[i]);
    if (net == NET_TEXT) clip_enum_params(&m->clip, select_param, &s);
    else unet_enum_params(&m->unet, select_param, &s);

    DbStatus st = DB_OK;
    guint n_pat = 0;
    for (guint i = 0; globs[i]; i++) {
        if (!globs[i][0]) continue;
        if (st == DB_OK && s.hits[n_pat] == 0)
            st = db_fail(err, DB_ERR_ARG, "--params: '%s' matches no %s parameter", globs[i],
                         net == NET_TEXT ? "text encoder" : "UNet");
        g_pattern_spec_free(s.pat[n_pat++]);
    }
    g_free(s.pat);
    g_free(s.hits);
    g_strfreev(globs);
    if (st == DB_OK && spec->lora_rank > 0 && s.lora_modules->len == 0)
        st = db_fail(err, DB_ERR_ARG, "--lora: the target set matches no layer");
    /* adapters after the full tensors; the GArray copies take over the names */
    for (guint i = 0; i < s.lora_modules->len; i++) {
        TrainLora l = {g_ptr_array_index(s.lora_modules, i), tp->tensors->len,
                       tp->tensors->len + 1, spec->lora_alpha / (float)spec->lora_rank,
                       (size_t)spec->lora_rank};
        g_array_append_vals(tp->tensors, &g_array_index(s.pending_lora, TrainTensor, 2 * i), 2);
        g_array_append_val(tp->loras, l);
    }
    g_array_free(s.pending_lora, TRUE);
    g_ptr_array_free(s.lora_modules, TRUE);
    if (st == DB_OK && s.overflow)
        st = db_fail(err, DB_ERR_NOMEM, "training: parameter sizes overflow");
    if (st != DB_OK) {
        train_params_free(tp);
        return st;
    }
    for (guint i = 0; i < tp->tensors->len; i++) {
        TrainTensor *t = &g_array_index(tp->tensors, TrainTensor, i);
        t->offset = tp->count;
        if (__builtin_add_overflow(tp->count, t->nelem, &tp->count)) {
            train_params_free(tp);
            return db_fail(err, DB_ERR_NOMEM, "training: parameter sizes overflow");
        }
        g_hash_table_insert(tp->by_name, t->name, GSIZE_TO_POINTER(i + 1));
    }
    for (guint i = 0; i < tp->loras->len; i++) {
        TrainLora *l = &g_array_index(tp->loras, TrainLora, i);
        g_hash_table_insert(tp->by_module, l->module, GSIZE_TO_POINTER(i + 1));
        if (l->rank > tp->max_rank) tp->max_rank = l->rank;
    }
    size_t bytes;
    if (__builtin_mul_overflow(tp->count ? tp->count : 1, sizeof(float), &bytes) ||
        !(tp->values = malloc(bytes)) || !(tp->grads = calloc(1, bytes))) {
        train_params_free(tp);
        return db_fail(err, DB_ERR_NOMEM, "training: cannot allocate 2 x %.1f MiB for parameters "
                       "and gradients", (double)tp->count * sizeof(float) / 1048576.0);
    }
    if ((st = fill_values(tp, m, spec->seed, err)) != DB_OK) {
        train_params_free(tp);
        return st;
    }
    *out = tp;
    return DB_OK;
}

size_t train_params_count(const TrainParams *tp) { return tp->count; }
size_t train_params_count_tensors(const TrainParams *tp) { return tp->tensors->len; }
const TrainTensor *train_params_tensor(const TrainParams *tp, size_t i)
{
    return i < tp->tensors->len ? &g_array_index(tp->tensors, TrainTensor, i) : NULL;
}
float *train_params_values(TrainParams *tp) { return tp->values; }
float *train_params_grads(TrainParams *tp) { return tp->grads; }
void train_params_zero_grads(TrainParams *tp) { memset(tp->grads, 0, tp->count * sizeof(float)); }
size_t train_params_lora_max_rank(const TrainParams *tp) { return tp->max_rank; }
size_t train_params_n_lora(const TrainParams *tp) { return tp->loras->len; }

DbStatus train_params_load_lora(TrainParams *tp, const char *path, DbError *err)
{
    SafetensorsFile *f;
    DbStatus st = safetensors_open(&f, path, err);
    if (st != DB_OK) return st;
    const char *prefix = tp->net == NET_TEXT ? "text_encoder." : "unet.";
    for (int i = 0; i < f->n_tensors && st == DB_OK; i++) {
        const SafetensorsEntry *e = &f->tensors[i];
        const char *name = g_str_has_prefix(e->name, prefix) ? e->name + strlen(prefix) : e->name;
        gpointer idx = g_hash_table_lookup(tp->by_name, name);
        const TrainTensor *t = idx ? train_params_tensor(tp, GPOINTER_TO_SIZE(idx) - 1) : NULL;
        if (!t || t->kind == TRAIN_FULL) {
            st = db_fail(err, DB_ERR_ARG, "%s: '%s' is not a LoRA tensor of the trained adapters",
                         path, e->name);
            break;
        }
        int same = e->t.ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = e->t.shape[d] == t->shape[d];
        char got[96], want[96];
        if (!same)
            st = db_fail(err, DB_ERR_ARG, "%s: '%s' has shape %s, expected %s", path, e->name,
                         tensor_shape_str(e->t.shape, e->t.ndim, got, sizeof got),
                         tensor_shape_str(t->shape, t->ndim, want, sizeof want));
        else if (!dtype_is_float_weight(e->t.dtype))
            st = db_fail(err, DB_ERR_ARG, "%s: '%s' has dtype %s, expected F32, F16 or BF16",
                         path, e->name, dtype_name(e->t.dtype));
        else
            dtype_to_f32(tp->values + t->offset, e->t.data, e->t.dtype, t->nelem);
    }
    safetensors_close(f);
    return st;
}

void train_params_bind(TrainParams *tp, const char *name, const float **slot, float **grad)
{
    gpointer idx = g_hash_table_lookup(tp->by_name, name);
    const TrainTensor *t = idx ? train_params_tensor(tp, GPOINTER_TO_SIZE(idx) - 1) : NULL;
    if (!t || t->kind != TRAIN_FULL) {
        *grad = NULL;
        return;
    }
    *slot = tp->values + t->offset;
    *grad = tp->grads + t->offset;
    tp->bound++;
}

void train_params_bind_lora(TrainParams *tp, const char *module, LoraParams *lp, LoraGrads *lg)
{
    gpointer idx = g_hash_table_lookup(tp->by_module, module);
    memset(lp, 0, sizeof *lp);
    memset(lg, 0, sizeof *lg);
    if (!idx) return;
    const TrainLora *l = &g_array_index(tp->loras, TrainLora, GPOINTER_TO_SIZE(idx) - 1);
    const TrainTensor *d = train_params_tensor(tp, l->down), *u = train_params_tensor(tp, l->up);
    lp->down = tp->values + d->offset;
    lp->up = tp->values + u->offset;
    lp->scale = l->scale;
    lp->rank = l->rank;
    lg->ddown = tp->grads + d->offset;
    lg->dup = tp->grads + u->offset;
    tp->bound += 2;
}

size_t train_params_bound(const TrainParams *tp) { return tp->bound; }
void train_params_bind_reset(TrainParams *tp) { tp->bound = 0; }
