/* LoRA files merged into working copies of the weights (see dreambooth.h).
 *
 * Names: every UNet and text-encoder parameter "<module>.weight" of 2 or 4 dims (from
 * unet_enum_params / clip_enum_params, the canonical diffusers/transformers names) gives the
 * LoRA module keys
 *   kohya:  lora_unet_<module with '.' -> '_'>,  lora_te_<module with '.' -> '_'>
 *   PEFT:   unet.<module>,                       text_encoder.<module>
 * and tensors <key>.lora_down.weight | .lora_A.weight [r, in] or [r, in, kh, kw],
 * <key>.lora_up.weight | .lora_B.weight [out, r] or [out, r, 1, 1], optional <key>.alpha (a
 * scalar; absent: alpha = r). Sources: kohya-ss/sd-scripts networks/lora.py (LoRAModule:
 * scale = alpha / lora_dim, lora_up(lora_down(x)) * multiplier * scale), diffusers
 * loaders/lora_conversion_utils.py, peft tuners/lora/layer.py (Linear, Conv2d).
 *
 * Merge (as networks/lora.py merge_to): W' = W + multiplier * (alpha / r) *
 * up[out, r] @ down[r, in * kh * kw], reshaped to W's shape, one sgemm in float32.
 * A merged weight is a MergedWeight: the DbWeight header and its F32 values in one block
 * that replaces the entry in m->weights, so the hash table's g_free releases both.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "lora.h"
#include "clip.h"
#include "safetensors.h"
#include "unet.h"

#include <cblas.h>
#include <glib.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    DbWeight w;
    float data[]; /* [w.t.nelem] */
} MergedWeight;

int lora_weight_is_merged(const DbWeight *w)
{
    return w && w->t.data == (const void *)((const MergedWeight *)w)->data;
}

/* ---- names ------------------------------------------------------------------------------ */

typedef struct {
    GHashTable *map; /* LoRA module key -> canonical weight name (both owned) */
    const char *kohya, *peft;
} NameMap;

static int add_module(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)shape;
    NameMap *nm = user;
    size_t len = strlen(name);
    if ((ndim != 2 && ndim != 4) || len <= 7 || strcmp(name + len - 7, ".weight") != 0) return 0;
    char *module = g_strndup(name, len - 7);
    char *peft = g_strconcat(nm->peft, module, NULL);
    for (char *p = module; *p; p++)
        if (*p == '.') *p = '_';
    char *kohya = g_strconcat(nm->kohya, module, NULL);
    g_hash_table_insert(nm->map, kohya, g_strdup(name));
    g_hash_table_insert(nm->map, peft, g_strdup(name));
    g_free(module);
    return 0;
}

static GHashTable *lora_name_map(const DbModel *m)
{
    NameMap nm = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free), "lora_unet_",
                  "unet."};
    unet_enum_params(&m->unet, add_module, &nm);
    nm.kohya = "lora_te_";
    nm.peft = "text_encoder.";
    clip_enum_params(&m->clip, add_module, &nm);
    return nm.map;
}

/* ---- reading and checking a file --------------------------------------------------------- */

enum { SLOT_DOWN = 0, SLOT_UP, SLOT_ALPHA, SLOT_COUNT };

static const struct {
    const char *suffix;
    int slot;
} lora_suffixes[5] = {
    {".lora_down.weight", SLOT_DOWN}, {".lora_up.weight", SLOT_UP}, {".alpha", SLOT_ALPHA},
    {".lora_A.weight", SLOT_DOWN},    {".lora_B.weight", SLOT_UP},
};
_Static_assert(sizeof lora_suffixes / sizeof lora_suffixes[0] == 5, "lora_suffixes table");

typedef struct {
    char *key;                                /* module key in the file */
    const SafetensorsEntry *part[SLOT_COUNT]; /* down, up, alpha (may be NULL) */
    const char *canon;                        /* canonical weight name (from the name map) */
    int text;                                 /* 1: text encoder */
    int64_t out, r, in_flat;
    float alpha;
} LoraModule;

typedef struct {
    SafetensorsFile *f;
    GHashTable *names;
    GArray *mods;                             /* LoraModule, in file order */
} LoraPlan;

static void plan_free(LoraPlan *p)
{
    if (p->mods) {
        for (guint i = 0; i < p->mods->len; i++) g_free(g_array_index(p->mods, LoraModule, i).key);
        g_array_free(p->mods, TRUE);
    }
    if (p->names) g_hash_table_destroy(p->names);
    if (p->f) safetensors_close(p->f);
}

static int all_finite(const SafetensorsEntry *e)
{
    float buf[256];
    for (size_t i = 0; i < e->t.nelem; i += 256) {
        size_t n = e->t.nelem - i < 256 ? e->t.nelem - i : 256;
        dtype_to_f32(buf, (const char *)e->t.data + i * dtype_size(e->t.dtype), e->t.dtype, n);
        for (size_t k = 0; k < n; k++)
            if (!isfinite(buf[k])) return 0;
    }
    return 1;
}

/* Groups the file's tensors by module. */
static DbStatus plan_group(LoraPlan *p, DbError *err)
{
    GHashTable *index = g_hash_table_new(g_str_hash, g_str_equal); /* key -> position + 1 */
    DbStatus st = DB_OK;
    for (int i = 0; i < p->f->n_tensors && st == DB_OK; i++) {
        const SafetensorsEntry *e = &p->f->tensors[i];
        size_t len = strlen(e->name);
        int slot = -1;
        size_t klen = 0;
        for (size_t s = 0; s < G_N_ELEMENTS(lora_suffixes) && slot < 0; s++) {
            size_t sl = strlen(lora_suffixes[s].suffix);
            if (len > sl && strcmp(e->name + len - sl, lora_suffixes[s].suffix) == 0) {
                slot = lora_suffixes[s].slot;
                klen = len - sl;
            }
        }
        if (slot < 0) {
            st = db_fail(err, DB_ERR_UNSUPPORTED, "%s: %s: not a LoRA tensor (expected "
                         ".lora_down.weight, .lora_up.weight, .alpha, .lora_A.weight or "
                         ".lora_B.weight)", p->f->path, e->name);
            break;
        }
        if (!dtype_is_float_weight(e->t.dtype)) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: %s has dtype %s (F32, F16 or BF16 expected)",
                         p->f->path, e->name, dtype_name(e->t.dtype));
            break;
        }
        if (!all_finite(e)) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: %s holds NaN or infinite values", p->f->path,
                         e->name);
            break;
        }
        char *key = g_strndup(e->name, klen);
        guint pos = GPOINTER_TO_UINT(g_hash_table_lookup(index, key));
        if (pos == 0) {
            LoraModule mod = {0};
            mod.key = key;
            g_array_append_val(p->mods, mod);
            pos = p->mods->len;
            g_hash_table_insert(index, key, GUINT_TO_POINTER(pos));
        } else {
            g_free(key);
        }
        LoraModule *mod = &g_array_index(p->mods, LoraModule, pos - 1);
        if (mod->part[slot])
            st = db_fail(err, DB_ERR_FORMAT, "%s: %s: two tensors for the same part of module %s",
                         p->f->path, e->name, mod->key);
        mod->part[slot] = e;
    }
    g_hash_table_destroy(index);
    return st;
}

/* Shapes of one module against its target weight. */
static DbStatus plan_check_module(LoraPlan *p, const DbModel *m, LoraModule *mod, DbError *err)
{
    const char *path = p->f->path;
    const SafetensorsEntry *down = mod->part[SLOT_DOWN], *up = mod->part[SLOT_UP],
                           *alpha = mod->part[SLOT_ALPHA];
    if (!down || !up)
        return db_fail(err, DB_ERR_FORMAT, "%s: %s: has no %s", path, mod->key,
                       down ? "lora_up/lora_B weight" : "lora_down/lora_A weight");
    mod->canon = g_hash_table_lookup(p->names, mod->key);
    const DbWeight *w = mod->canon ? model_weight(m, mod->canon) : NULL;
    if (!w)
        return db_fail(err, DB_ERR_MODEL, "%s: %s: no such module in this model (%s)", path,
                       mod->key, m->path);
    mod->text = g_str_has_prefix(mod->key, "lora_te_") || g_str_has_prefix(mod->key, "text_encoder.");
    char ws[128], ds[128], us[128];
    tensor_shape_str(w->t.shape, w->t.ndim, ws, sizeof ws);
    tensor_shape_str(down->t.shape, down->t.ndim, ds, sizeof ds);
    tensor_shape_str(up->t.shape, up->t.ndim, us, sizeof us);
    mod->out = w->t.shape[0];
    mod->in_flat = (int64_t)(w->t.nelem / (size_t)mod->out);
    mod->r = down->t.ndim >= 2 ? down->t.shape[0] : 0;
    int ok = mod->r <= (1 << 20) && mod->out <= INT32_MAX && mod->in_flat <= INT32_MAX &&
             (down->t.ndim == 2 || down->t.ndim == 4) && (up->t.ndim == 2 || up->t.ndim == 4) &&
             mod->r >= 1 && down->t.shape[1] == w->t.shape[1] &&
             down->t.nelem / (size_t)mod->r == (size_t)mod->in_flat &&
             down->t.nelem % (size_t)mod->r == 0 && up->t.shape[0] == mod->out &&
             up->t.shape[1] == mod->r && up->t.nelem == (size_t)(mod->out * mod->r);
    if (ok && down->t.ndim == 4 && w->t.ndim == 4)
        ok = down->t.shape[2] == w->t.shape[2] && down->t.shape[3] == w->t.shape[3];
    if (!ok)
        return db_fail(err, DB_ERR_MODEL, "%s: %s: down %s and up %s do not fit %s %s", path,
                       mod->key, ds, us, mod->canon, ws);
    mod->alpha = (float)mod->r;
    if (alpha) {
        if (alpha->t.nelem != 1)
            return db_fail(err, DB_ERR_FORMAT, "%s: %s.alpha has %zu values (1 expected)", path,
                           mod->key, alpha->t.nelem);
        dtype_to_f32(&mod->alpha, alpha->t.data, alpha->t.dtype, 1);
    }
    return DB_OK;
}

static DbStatus plan_open(LoraPlan *p, const DbModel *m, const char *path, DbError *err)
{
    memset(p, 0, sizeof *p);
    if (!m || !path) return db_fail(err, DB_ERR_ARG, "LoRA: NULL argument");
    DbStatus st = safetensors_open(&p->f, path, err);
    if (st != DB_OK) return st;
    if (p->f->n_tensors == 0) return db_fail(err, DB_ERR_FORMAT, "%s: no tensors", path);
    p->names = lora_name_map(m);
    p->mods = g_array_new(FALSE, TRUE, sizeof(LoraModule));
    st = plan_group(p, err);
    for (guint i = 0; st == DB_OK && i < p->mods->len; i++)
        st = plan_check_module(p, m, &g_array_index(p->mods, LoraModule, i), err);
    return st;
}

DbStatus lora_check(const DbModel *m, const char *path, int *n_unet, int *n_text, DbError *err)
{
    LoraPlan p;
    DbStatus st = plan_open(&p, m, path, err);
    int nu = 0, nt = 0;
    for (guint i = 0; st == DB_OK && i < p.mods->len; i++)
        if (g_array_index(p.mods, LoraModule, i).text) nt++;
        else nu++;
    if (n_unet) *n_unet = nu;
    if (n_text) *n_text = nt;
    plan_free(&p);
    return st;
}

/* ---- merging ---------------------------------------------------------------------------- */

/* The F32 working copy of weight `name` (made on first use). */
static MergedWeight *working_copy(DbModel *m, const char *name)
{
    DbWeight *w = g_hash_table_lookup(m->weights, name);
    if (lora_weight_is_merged(w)) return (MergedWeight *)w;
    size_t bytes = sizeof(MergedWeight) + w->t.nelem * sizeof(float);
    MergedWeight *mw = g_try_malloc(bytes);
    if (!mw) return NULL;
    mw->w = *w;
    dtype_to_f32(mw->data, w->t.data, w->t.dtype, w->t.nelem);
    mw->w.t.dtype = DB_DTYPE_F32;
    mw->w.t.nbytes = w->t.nelem * sizeof(float);
    mw->w.t.data = mw->data;
    g_hash_table_insert(m->weights, g_strdup(name), mw); /* frees the old DbWeight */
    return mw;
}

/* e's values as f32: the mapping itself when F32 and aligned, else widened into *tmp. */
static const float *values_f32(const SafetensorsEntry *e, float **tmp)
{
    *tmp = NULL;
    if (e->t.dtype == DB_DTYPE_F32 && (uintptr_t)e->t.data % sizeof(float) == 0)
        return e->t.data;
    *tmp = g_try_new(float, e->t.nelem);
    if (*tmp) dtype_to_f32(*tmp, e->t.data, e->t.dtype, e->t.nelem);
    return *tmp;
}

DbStatus db_model_apply_lora(DbModel *m, const char *path, float weight, DbError *err)
{
    if (!isfinite(weight))
        return db_fail(err, DB_ERR_ARG, "%s: LoRA weight %g is not finite", path ? path : "?",
                       (double)weight);
    LoraPlan p;
    DbStatus st = plan_open(&p, m, path, err);
    int text = 0;
    for (guint i = 0; st == DB_OK && i < p.mods->len; i++) {
        const LoraModule *mod = &g_array_index(p.mods, LoraModule, i);
        float *tmp_d, *tmp_u;
        const float *down = values_f32(mod->part[SLOT_DOWN], &tmp_d);
        const float *up = values_f32(mod->part[SLOT_UP], &tmp_u);
        MergedWeight *mw = down && up ? working_copy(m, mod->canon) : NULL;
        if (!mw) {
            st = db_fail(err, DB_ERR_NOMEM, "%s: %s: out of memory merging into %s (the model is "
                         "partly merged: reopen it)", path, mod->key, mod->canon);
        } else {
            float scale = weight * (mod->alpha / (float)mod->r);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)mod->out,
                        (blasint)mod->in_flat, (blasint)mod->r, scale, up, (blasint)mod->r, down,
                        (blasint)mod->in_flat, 1.0f, mw->data, (blasint)mod->in_flat);
            text |= mod->text;
        }
        g_free(tmp_d);
        g_free(tmp_u);
    }
    if (text) { /* the text encoder caches its (widened) weights: rebuild on next use */
        clip_state_free(m->text_state);
        m->text_state = NULL;
    }
    unet_run_free(m); /* so may the UNet (fp32 copies of merged weights) */
    plan_free(&p);
    return st;
}
