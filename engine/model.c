/* Model loading: layout detection by content, configs, canonical (diffusers) names, and
 * validation of every tensor (name, shape, dtype) of every network; tokenizer discovery and
 * the prediction type. Rules: shared/docs/formats.md and reliability.md.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "clip.h"
#include "keymap.h"
#include "weights.h"

#include <glib.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- canonical lookup ---------------------------------------------------------------- */

const DbWeight *model_weight(const DbModel *m, const char *name)
{
    return m && m->weights && name ? g_hash_table_lookup(m->weights, name) : NULL;
}

const DbWeight *model_weightf(const DbModel *m, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < sizeof name ? model_weight(m, name) : NULL;
}

/* ---- validation: one pass over the parameters a config implies ------------------------ */

typedef struct {
    DbModel *m;
    NetKind net;
    SafetensorsFile **files;  /* this network's files (diffusers shards) or the single file */
    int n_files;
    const char *where;        /* file or index named in "missing" messages */
    const Keymap *km;         /* single files: canonical -> LDM names; NULL for diffusers */
    DbError *err;
    DbStatus st;
    unsigned dtypes;          /* bit per DbDtype seen */
} Check;

/* Old diffusers VAE attention names (before diffusers 0.14), accepted as aliases. */
static const char *const vae_old_attn[4][2] = {
    {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."},
};
_Static_assert(sizeof vae_old_attn / sizeof vae_old_attn[0] == 4, "vae_old_attn table");

static const SafetensorsEntry *find_in(const Check *c, const char *name, const SafetensorsFile **from,
                                       int *dups)
{
    const SafetensorsEntry *hit = NULL;
    *dups = 0;
    for (int i = 0; i < c->n_files; i++) {
        const SafetensorsEntry *e = safetensors_find(c->files[i], name);
        if (e && hit) (*dups)++;
        if (e && !hit) {
            hit = e;
            *from = c->files[i];
        }
    }
    return hit;
}

static const SafetensorsEntry *find_alias(const Check *c, const char *name, const SafetensorsFile **from,
                                          int *dups)
{
    if (c->net != NET_VAE || !strstr(name, "mid_block.attentions.0.")) return NULL;
    for (int i = 0; i < 4; i++) {
        const char *hit = strstr(name, vae_old_attn[i][0]);
        if (!hit) continue;
        char alias[256];
        snprintf(alias, sizeof alias, "%.*s%s%s", (int)(hit - name), name, vae_old_attn[i][1],
                 hit + strlen(vae_old_attn[i][0]));
        return find_in(c, alias, from, dups);
    }
    return NULL;
}

/* Exact shape, a packed row block (part >= 0: [3*d0, ...]), or 1x1 conv <-> Linear. */
static int shape_ok(const DbTensor *t, int part, int ndim, const int64_t *want)
{
    if (part >= 0) {
        if (t->ndim != ndim || t->shape[0] != 3 * want[0]) return 0;
        for (int i = 1; i < ndim; i++)
            if (t->shape[i] != want[i]) return 0;
        return 1;
    }
    if (t->ndim == ndim) {
        for (int i = 0; i < ndim; i++)
            if (t->shape[i] != want[i]) return 0;
        return 1;
    }
    const int64_t *s4 = t->ndim == 4 ? t->shape : want, *s2 = t->ndim == 4 ? want : t->shape;
    return ((t->ndim == 4 && ndim == 2) || (t->ndim == 2 && ndim == 4)) && s4[2] == 1 &&
           s4[3] == 1 && s4[0] == s2[0] && s4[1] == s2[1];
}

static int check_param(void *user, const char *name, int ndim, const int64_t *shape)
{
    Check *c = user;
    char src[256], ws[96], fs[96];
    int part = -1, dups = 0;
    const SafetensorsFile *from = NULL;
    const SafetensorsEntry *e = NULL;
    tensor_shape_str(shape, ndim, ws, sizeof ws);
    if (c->km) {
        if (keymap_to_ldm(c->km, name, src, sizeof src, &part)) e = find_in(c, src, &from, &dups);
        if (!e) {
            c->st = db_fail(c->err, DB_ERR_MODEL, "%s: missing tensor %s %s (diffusers %s)", c->where,
                            src, ws, name);
            return 1;
        }
    } else {
        e = find_in(c, name, &from, &dups);
        if (!e) e = find_alias(c, name, &from, &dups);
        if (!e) {
            c->st = db_fail(c->err, DB_ERR_MODEL, "%s: missing tensor %s %s", c->where, name, ws);
            return 1;
        }
        if (dups) {
            c->st = db_fail(c->err, DB_ERR_MODEL, "%s: tensor %s is in more than one shard", c->where,
                            e->name);
            return 1;
        }
    }
    const DbTensor *t = &e->t;
    if (!dtype_is_float_weight(t->dtype)) {
        c->st = db_fail(c->err, DB_ERR_MODEL, "%s: tensor %s has dtype %s, expected F32, F16 or BF16",
                        from->path, e->name, dtype_name(t->dtype));
        return 1;
    }
    if (!shape_ok(t, part, ndim, shape)) {
        tensor_shape_str(t->shape, t->ndim, fs, sizeof fs);
        if (part >= 0) {
            int64_t packed[DB_MAX_DIMS];
            memcpy(packed, shape, (size_t)ndim * sizeof *packed);
            packed[0] *= 3;
            tensor_shape_str(packed, ndim, ws, sizeof ws);
        }
        c->st = db_fail(c->err, DB_ERR_MODEL, "%s: tensor %s has shape %s, expected %s", from->path,
                        e->name, fs, ws);
        return 1;
    }
    DbWeight *w = g_new0(DbWeight, 1);
    w->t = *t;
    w->t.ndim = ndim;
    size_t nelem = 1;
    for (int i = 0; i < ndim; i++) {
        w->t.shape[i] = shape[i];
        nelem *= (size_t)shape[i]; /* equals (a block of) a tensor the reader checked */
    }
    w->t.nelem = nelem;
    w->t.nbytes = nelem * dtype_size(t->dtype);
    if (part >= 0) w->t.data = (const char *)t->data + (size_t)part * w->t.nbytes;
    w->file = from->path;
    w->src_name = e->name;
    if (g_hash_table_contains(c->m->weights, name)) {
        g_free(w);
        c->st = db_fail(c->err, DB_ERR_MODEL, "%s: canonical name %s used twice", c->where, name);
        return 1;
    }
    g_hash_table_insert(c->m->weights, g_strdup(name), w);
    g_ptr_array_add(c->m->net_weights[c->net], g_strdup(name)); /* NaN/Inf scan: first use */
    c->m->n_params[c->net] += (int64_t)nelem;
    c->dtypes |= 1u << t->dtype;
    return 0;
}

static DbStatus check_net(DbModel *m, NetKind net, SafetensorsFile **files, int n_files,
                          const char *where, const Keymap *km, unsigned *dtypes, DbError *err)
{
    Check c = {m, net, files, n_files, where, km, err, DB_OK, 0};
    if (net == NET_TEXT) clip_enum_params(&m->clip, check_param, &c);
    else if (net == NET_UNET) unet_enum_params(&m->unet, check_param, &c);
    else vae_enum_params(&m->vae, check_param, &c);
    *dtypes |= c.dtypes;
    return c.st;
}

/* ---- diffusers folders ---------------------------------------------------------------- */

static SafetensorsFile *add_file(DbModel *m, SafetensorsFile *f)
{
    g_ptr_array_add(m->files, f);
    return f;
}

/* Opens one network's weights: BASE.safetensors, else BASE.fp16.safetensors, else a sharded
 * BASE[.fp16].safetensors.index.json. files[] receives up to max_files entries. */
static DbStatus open_net_files(DbModel *m, const char *dir, const char *base, SafetensorsFile **files,
                               int max_files, int *n_files, char **where, DbError *err)
{
    static const char *const plain[2] = {".safetensors", ".fp16.safetensors"};
    static const char *const index[2] = {".safetensors.index.json", ".fp16.safetensors.index.json"};
    DbStatus st;
    *n_files = 0;
    for (int i = 0; i < 2; i++) {
        char *p = g_strconcat(dir, G_DIR_SEPARATOR_S, base, plain[i], NULL);
        if (g_file_test(p, G_FILE_TEST_EXISTS)) {
            SafetensorsFile *f;
            *where = p;
            if ((st = safetensors_open(&f, p, err))) return st;
            files[(*n_files)++] = add_file(m, f);
            return DB_OK;
        }
        g_free(p);
    }
    for (int i = 0; i < 2; i++) {
        char *p = g_strconcat(dir, G_DIR_SEPARATOR_S, base, index[i], NULL);
        if (!g_file_test(p, G_FILE_TEST_EXISTS)) {
            g_free(p);
            continue;
        }
        char **shards;
        *where = p;
        if ((st = shard_index_load(p, &shards, err))) return st;
        for (int s = 0; shards[s] && st == DB_OK; s++) {
            SafetensorsFile *f;
            char *sp = g_build_filename(dir, shards[s], NULL);
            if (*n_files == max_files)
                st = db_fail(err, DB_ERR_UNSUPPORTED, "%s: more than %d shards", p, max_files);
            else if ((st = safetensors_open(&f, sp, err)) == DB_OK)
                files[(*n_files)++] = add_file(m, f);
            g_free(sp);
        }
        g_strfreev(shards);
        return st;
    }
    char *bin = g_strconcat(dir, G_DIR_SEPARATOR_S, strcmp(base, "model") ? base : "pytorch_model", ".bin", NULL);
    st = g_file_test(bin, G_FILE_TEST_EXISTS)
             ? db_fail(err, DB_ERR_UNSUPPORTED, "%s: .bin pickles are not loaded because unpickling can run code; convert the model to .safetensors", bin)
             : db_fail(err, DB_ERR_IO, "%s%s%s.safetensors: missing (nor .fp16 or sharded variants)", dir, G_DIR_SEPARATOR_S, base);
    g_free(bin);
    return st;
}

#define MAX_SHARDS 64

static DbStatus open_diffusers(DbModel *m, unsigned *dtypes, DbError *err)
{
    static const char *const sub[NET_COUNT] = {"text_encoder", "unet", "vae"};
    static const char *const base[NET_COUNT] = {"model", "diffusion_pytorch_model", "diffusion_pytorch_model"};
    DbStatus st = DB_OK;
    for (int n = 0; n < NET_COUNT && st == DB_OK; n++) {
        char *dir = g_build_filename(m->path, sub[n], NULL);
        char *cfg = g_build_filename(dir, "config.json", NULL);
        if (!g_file_test(dir, G_FILE_TEST_IS_DIR))
            st = db_fail(err, DB_ERR_IO, "%s: missing folder (a diffusers model needs text_encoder/, unet/ and vae/)", dir);
        else if (!g_file_test(cfg, G_FILE_TEST_EXISTS))
            st = db_fail(err, DB_ERR_IO, "%s: missing", cfg);
        else if (n == NET_TEXT) st = clip_config_load(&m->clip, cfg, err);
        else if (n == NET_UNET) st = unet_config_load(&m->unet, cfg, err);
        else st = vae_config_load(&m->vae, cfg, err);
        g_free(cfg);
        SafetensorsFile *files[MAX_SHARDS];
        int n_files = 0;
        char *where = NULL;
        if (st == DB_OK) st = open_net_files(m, dir, base[n], files, MAX_SHARDS, &n_files, &where, err);
        if (st == DB_OK && n == NET_UNET) {
            /* SD1: quick_gelu OpenAI CLIP, 768; SD2: gelu OpenCLIP, 1024 (tiny test models:
             * by activation and projection type) */
            m->family = m->unet.cross_dim == 1024 || (m->unet.cross_dim != 768 &&
                        (m->clip.act == CLIP_ACT_GELU || m->unet.use_linear_projection))
                            ? DB_FAMILY_SD2 : DB_FAMILY_SD1;
            if (m->clip.hidden != m->unet.cross_dim)
                st = db_fail(err, DB_ERR_MODEL, "%s: cross_attention_dim %d does not match the text encoder hidden_size %d", where, m->unet.cross_dim, m->clip.hidden);
        }
        if (st == DB_OK) st = check_net(m, (NetKind)n, files, n_files, where, NULL, dtypes, err);
        g_free(where);
        g_free(dir);
    }
    return st;
}

/* ---- single files --------------------------------------------------------------------- */

static DbStatus open_single(DbModel *m, unsigned *dtypes, DbError *err)
{
    SafetensorsFile *f;
    DbStatus st = safetensors_open(&f, m->path, err);
    if (st) return st;
    add_file(m, f);
    if (!safetensors_find(f, LDM_UNET_PREFIX "input_blocks.0.0.weight") &&
        (safetensors_find(f, "conv_in.weight") || safetensors_find(f, "encoder.conv_in.weight") ||
         safetensors_find(f, "text_model.embeddings.token_embedding.weight")))
        return db_fail(err, DB_ERR_MODEL, "%s: this is one network of a diffusers model; open the model folder instead", m->path);
    KeymapClip clip;
    if ((st = ldm_infer_configs(f, &m->family, &m->unet, &m->vae, &m->clip, &clip, err))) return st;
    Keymap km;
    if ((st = keymap_ldm_build(&km, &m->unet, &m->vae, m->clip.layers, clip, err))) return st;
    for (int n = 0; n < NET_COUNT && st == DB_OK; n++)
        st = check_net(m, (NetKind)n, &f, 1, m->path, &km, dtypes, err);
    keymap_free(&km);
    return st;
}

/* ---- prediction type ------------------------------------------------------------------ */

static DbStatus find_prediction(DbModel *m, const DbModelOptions *opts, DbError *err)
{
    DbStatus st = DB_OK;
    if (opts && opts->prediction != DB_PRED_UNKNOWN) {
        m->prediction = opts->prediction;
        m->prediction_from_user = 1;
        m->prediction_source = g_strdup("user override");
    } else if (m->layout == DB_LAYOUT_DIFFUSERS) {
        char *p = g_build_filename(m->path, "scheduler", "scheduler_config.json", NULL);
        if (g_file_test(p, G_FILE_TEST_EXISTS)) {
            st = scheduler_prediction_load(p, &m->prediction, err);
            m->prediction_source = g_strdup_printf("%s (prediction_type)", p);
        } else {
            m->prediction = DB_PRED_EPS;
            m->prediction_source = g_strdup("default (no scheduler/scheduler_config.json)");
        }
        g_free(p);
    } else {
        const SafetensorsFile *f = g_ptr_array_index((GPtrArray *)m->files, 0);
        const char *s = safetensors_meta(f, "modelspec.prediction_type");
        if (!s) {
            m->prediction = DB_PRED_EPS;
            m->prediction_source = g_strdup("default (single files do not say; use --prediction v for 768-v models)");
        } else if (strcmp(s, "epsilon") == 0 || strcmp(s, "v") == 0 || strcmp(s, "v_prediction") == 0) {
            m->prediction = s[0] == 'e' ? DB_PRED_EPS : DB_PRED_V;
            m->prediction_source = g_strdup("metadata modelspec.prediction_type");
        } else {
            st = db_fail(err, DB_ERR_UNSUPPORTED, "%s: modelspec.prediction_type \"%s\" is not supported (epsilon or v)", m->path, s);
        }
    }
    return st;
}

/* ---- tokenizer ------------------------------------------------------------------------ */

static int is_hf_tokenizer_dir(const char *dir)
{
    char *v = g_build_filename(dir, "vocab.json", NULL), *mg = g_build_filename(dir, "merges.txt", NULL);
    int ok = g_file_test(v, G_FILE_TEST_IS_REGULAR) && g_file_test(mg, G_FILE_TEST_IS_REGULAR);
    g_free(v);
    g_free(mg);
    return ok;
}

/* A tokenizer/ folder (vocab.json + merges.txt) or an OpenAI bpe file. */
static DbStatus load_tokenizer(DbModel *m, const char *p, DbError *err)
{
    DbStatus st;
    if (g_file_test(p, G_FILE_TEST_IS_DIR)) {
        if (!is_hf_tokenizer_dir(p))
            return db_fail(err, DB_ERR_IO, "%s: tokenizer folder without vocab.json and merges.txt", p);
        char *v = g_build_filename(p, "vocab.json", NULL), *mg = g_build_filename(p, "merges.txt", NULL);
        st = clip_tokenizer_load_hf(&m->tokenizer, v, mg, err);
        g_free(v);
        g_free(mg);
    } else if (g_file_test(p, G_FILE_TEST_IS_REGULAR)) {
        st = clip_tokenizer_load_bpe(&m->tokenizer, p, err);
    } else {
        return db_fail(err, DB_ERR_IO, "%s: tokenizer not found", p);
    }
    if (st == DB_OK) m->tokenizer_source = g_strdup(p);
    return st;
}

static DbStatus find_tokenizer(DbModel *m, const DbModelOptions *opts, DbError *err)
{
    DbStatus st = DB_OK;
    char *model_tok = m->layout == DB_LAYOUT_DIFFUSERS ? g_build_filename(m->path, "tokenizer", NULL) : NULL;
    /* padding is the model's: its own tokenizer files, else the family's */
    m->clip.pad_id = m->family == DB_FAMILY_SD2 ? 0 : CLIP_EOS;
    static const char *const pad_files[2] = {"special_tokens_map.json", "tokenizer_config.json"};
    for (int i = 0; model_tok && i < 2 && st == DB_OK; i++) {
        char *p = g_build_filename(model_tok, pad_files[i], NULL);
        int pad = -1;
        if (g_file_test(p, G_FILE_TEST_EXISTS)) st = tokenizer_pad_load(p, &pad, err);
        g_free(p);
        if (pad >= 0) {
            m->clip.pad_id = pad;
            break;
        }
    }
    if (st == DB_OK) {
        if (opts && opts->tokenizer) {
            st = load_tokenizer(m, opts->tokenizer, err);
        } else {
            char *dir = g_path_get_dirname(m->path);
            char *cand[4] = {
                model_tok ? g_strdup(model_tok) : g_build_filename(dir, "tokenizer", NULL),
                g_build_filename(g_get_user_data_dir(), "dreambooth", "tokenizer", NULL),
                g_build_filename(g_get_user_data_dir(), "dreambooth", "bpe_simple_vocab_16e6.txt.gz", NULL),
                NULL,
            };
            for (int i = 0; cand[i]; i++)
                if (!m->tokenizer && st == DB_OK &&
                    (is_hf_tokenizer_dir(cand[i]) || (i == 2 && g_file_test(cand[i], G_FILE_TEST_IS_REGULAR))))
                    st = load_tokenizer(m, cand[i], err);
            for (int i = 0; cand[i]; i++) g_free(cand[i]);
            g_free(dir);
        }
    }
    g_free(model_tok);
    return st;
}

DbStatus db_tokenize(const DbModel *m, const char *prompt, int32_t ids[DB_CONTEXT_LEN],
                     int *truncated, DbError *err)
{
    if (!m || !prompt || !ids) return db_fail(err, DB_ERR_ARG, "db_tokenize: NULL argument");
    if (!m->tokenizer) {
        char *ud = g_build_filename(g_get_user_data_dir(), "dreambooth", NULL);
        DbStatus st = db_fail(err, DB_ERR_IO,
            "%s: no tokenizer found: pass --tokenizer, or put a diffusers tokenizer/ folder (vocab.json + merges.txt) next to the model or in %s%stokenizer/, or OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz (github.com/openai/CLIP, clip/) in %s%s",
            m->path, ud, G_DIR_SEPARATOR_S, ud, G_DIR_SEPARATOR_S);
        g_free(ud);
        return st;
    }
    return clip_tokenizer_encode_padded(m->tokenizer, prompt, DB_CONTEXT_LEN, m->clip.pad_id, ids,
                                        truncated, err);
}

/* ---- open / free / info --------------------------------------------------------------- */

static DbStatus detect_layout(const char *path, DbLayout *layout, DbError *err)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
        static const char *const marks[4] = {"model_index.json", "unet", "text_encoder", "vae"};
        for (int i = 0; i < 4; i++) {
            char *p = g_build_filename(path, marks[i], NULL);
            int ok = g_file_test(p, G_FILE_TEST_EXISTS);
            g_free(p);
            if (ok) {
                *layout = DB_LAYOUT_DIFFUSERS;
                return DB_OK;
            }
        }
        return db_fail(err, DB_ERR_MODEL, "%s: folder is not a diffusers model (no model_index.json, unet/, text_encoder/ or vae/)", path);
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) return db_fail(err, DB_ERR_IO, "%s: cannot open: %s", path, g_strerror(errno));
    unsigned char head[16];
    size_t n = fread(head, 1, sizeof head, fp);
    fclose(fp);
    if (safetensors_sniff(head, n)) {
        *layout = DB_LAYOUT_SINGLE_FILE;
        return DB_OK;
    }
    if ((n >= 1 && head[0] == 0x80) || (n >= 4 && memcmp(head, "PK\x03\x04", 4) == 0))
        return db_fail(err, DB_ERR_UNSUPPORTED,
                       "%s: .ckpt pickles are not loaded because unpickling can run code; convert with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py (or any tool that saves .safetensors) to .safetensors",
                       path);
    return db_fail(err, DB_ERR_FORMAT, "%s: neither a safetensors file nor a diffusers model folder", path);
}

static const char *storage_name(unsigned dtypes)
{
    if (dtypes == 1u << DB_DTYPE_F32) return "F32";
    if (dtypes == 1u << DB_DTYPE_F16) return "F16";
    if (dtypes == 1u << DB_DTYPE_BF16) return "BF16";
    return "mixed";
}

static void weight_free(gpointer p) { g_free(p); }

int db_weight_cache_from_name(const char *name, DbWeightCache *out)
{
    static const char *const names[] = {"auto", "none", "all"}; /* DbWeightCache order */
    for (int k = 0; name && k < 3; k++)
        if (!strcmp(name, names[k])) {
            *out = (DbWeightCache)k;
            return 0;
        }
    return -1;
}

DbStatus db_model_open(DbModel **out, const char *path, const DbModelOptions *opts, DbError *err)
{
    if (!out || !path) return db_fail(err, DB_ERR_ARG, "db_model_open: NULL argument");
    *out = NULL;
    if (opts && (opts->weight_cache < DB_WEIGHT_CACHE_AUTO || opts->weight_cache > DB_WEIGHT_CACHE_ALL))
        return db_fail(err, DB_ERR_ARG, "%s: invalid weight cache mode %d", path, (int)opts->weight_cache);
    if (opts && (opts->prediction < DB_PRED_UNKNOWN || opts->prediction > DB_PRED_V))
        return db_fail(err, DB_ERR_ARG, "%s: invalid prediction override %d", path, (int)opts->prediction);
    DbLayout layout;
    DbStatus st = detect_layout(path, &layout, err);
    if (st) return st;
    DbModel *m = g_new0(DbModel, 1);
    m->path = g_strdup(path);
    m->layout = layout;
    m->weight_cache = opts ? opts->weight_cache : DB_WEIGHT_CACHE_AUTO;
    m->files = g_ptr_array_new_with_free_func((GDestroyNotify)safetensors_close);
    m->weights = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, weight_free);
    for (int n = 0; n < NET_COUNT; n++) m->net_weights[n] = g_ptr_array_new_with_free_func(g_free);
    unsigned dtypes = 0;
    st = layout == DB_LAYOUT_DIFFUSERS ? open_diffusers(m, &dtypes, err) : open_single(m, &dtypes, err);
    if (st == DB_OK) st = find_prediction(m, opts, err);
    if (st == DB_OK) st = find_tokenizer(m, opts, err);
    if (st) {
        db_model_free(m);
        return st;
    }
    m->storage_dtype = g_strdup(storage_name(dtypes));
    *out = m;
    return DB_OK;
}

void db_model_free(DbModel *m)
{
    if (!m) return;
    clip_state_free(m->text_state);
    if (m->free_unet_run) m->free_unet_run(m);
    for (int n = 0; n < NET_COUNT; n++)
        if (m->net_weights[n]) g_ptr_array_free(m->net_weights[n], TRUE);
    if (m->weights) g_hash_table_destroy(m->weights);
    if (m->files) g_ptr_array_free(m->files, TRUE);
    if (m->tokenizer) clip_tokenizer_free(m->tokenizer);
    g_free(m->tokenizer_source);
    g_free(m->prediction_source);
    g_free(m->storage_dtype);
    g_free(m->path);
    g_free(m);
}

void db_model_get_info(const DbModel *m, DbModelInfo *info)
{
    memset(info, 0, sizeof *info);
    if (!m) return;
    info->family = m->family;
    info->layout = m->layout;
    info->storage_dtype = m->storage_dtype;
    info->prediction = m->prediction;
    info->prediction_from_user = m->prediction_from_user;
    info->prediction_source = m->prediction_source;
    info->tokenizer_source = m->tokenizer_source;
    info->params_text_encoder = m->n_params[NET_TEXT];
    info->params_unet = m->n_params[NET_UNET];
    info->params_vae = m->n_params[NET_VAE];
    info->text_hidden = m->clip.hidden;
    info->text_layers = m->clip.layers;
    info->text_heads = m->clip.heads;
    info->unet_in_channels = m->unet.in_channels;
    info->unet_cross_dim = m->unet.cross_dim;
    info->vae_latent_channels = m->vae.latent_channels;
    info->vae_scaling_factor = m->vae.scaling_factor;
}
