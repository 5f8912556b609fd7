/* init-model: a random-weight Stable Diffusion model with the real names and configs.
 *
 * Each output file is a "plan": a list of tensors, each made of pieces (an OpenCLIP
 * attn.in_proj_weight is the q, k and v pieces stacked). A piece is generated from its
 * canonical (diffusers) name, so a weight holds the same values in both layouts and every
 * dtype. The generator is counter-based: normal number i of a piece is Box-Muller (float) on
 * splitmix64(key + i/2), key = splitmix64(seed ^ splitmix64(fnv1a64(name))); tensors are
 * generated and written in 1 Mi-element chunks, so memory stays a few MiB at any model size.
 *
 * Scales (the Python reference modules' init_random_, so forward passes stay O(1)):
 *   UNet and VAE (tests/reference/sd_unet.py): weights randn / sqrt(fan_in) with fan_in =
 *     prod(shape[1:]), 1-D norm weights 1 + 0.1 randn, biases 0.1 randn;
 *   CLIP text (tests/reference/clip_text.py): layer norms 1 + 0.1 randn / 0.1 randn,
 *     embeddings 0.08 randn, weights randn / sqrt(in), biases 0.02 randn.
 *
 * Single files follow tests/reference/make_model.py + ldm_convert.py: LDM names through
 * keymap_to_ldm, VAE attention as 1x1 convs, SD2: OpenCLIP packed in_proj, one more text block
 * than diffusers keeps, text_projection and logit_scale; the DDPM schedule buffers and the
 * model_ema entries LDM training saves; modelspec.* metadata.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "init_model.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keymap.h"
#include "safetensors.h"

#define CHUNK ((size_t)1 << 20)

typedef enum { RULE_UNET = 0, RULE_CLIP, RULE_PROJ, RULE_VALUES } Rule;

typedef struct {
    char key[192];        /* canonical name: seeds the generator, picks the scale */
    Rule rule;
    int ndim;
    int64_t shape[4];     /* canonical shape */
    size_t n;
    const float *values;  /* RULE_VALUES: n values owned by the plan */
} Piece;

typedef struct {
    char name[192];       /* name in the file */
    DbDtype dtype;
    int ndim;
    int64_t shape[4];
    int n_pieces;
    Piece piece[3];
} Item;

typedef struct {
    GArray *items;        /* Item */
    GHashTable *index;    /* name -> item index + 1 (packed tensors) */
    GPtrArray *owned;     /* value arrays */
    DbDtype dtype;
    Rule rule;
    uint64_t bytes;
} Plan;

static void plan_init(Plan *p, DbDtype dtype)
{
    p->items = g_array_new(FALSE, TRUE, sizeof(Item));
    p->index = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    p->owned = g_ptr_array_new_with_free_func(g_free);
    p->dtype = dtype;
    p->rule = RULE_UNET;
    p->bytes = 0;
}

static void plan_clear(Plan *p)
{
    g_array_free(p->items, TRUE);
    g_hash_table_destroy(p->index);
    g_ptr_array_free(p->owned, TRUE);
}

static size_t numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

/* Adds tensor `name` of file shape [fndim] fshape with one piece of canonical name key and
 * shape [ndim] shape (the same element count); part >= 0 puts the piece as row block `part` of
 * 3 of a packed tensor of that name. values: RULE_VALUES data (owned by the plan) or NULL. */
static void plan_add(Plan *p, const char *name, DbDtype dt, int fndim, const int64_t *fshape,
                     const char *key, Rule rule, int ndim, const int64_t *shape, int part,
                     const float *values)
{
    gpointer found = g_hash_table_lookup(p->index, name);
    Item *it;
    if (found) {
        it = &g_array_index(p->items, Item, GPOINTER_TO_SIZE(found) - 1);
    } else {
        Item fresh = {0};
        g_array_append_val(p->items, fresh);
        it = &g_array_index(p->items, Item, p->items->len - 1);
        g_strlcpy(it->name, name, sizeof it->name);
        it->dtype = dt;
        it->ndim = fndim;
        if (fndim) memcpy(it->shape, fshape, sizeof(int64_t) * (size_t)fndim);
        if (part >= 0) it->shape[0] *= 3;
        g_hash_table_insert(p->index, g_strdup(name), GSIZE_TO_POINTER((gsize)p->items->len));
    }
    Piece *pc = &it->piece[part >= 0 ? part : 0];
    g_strlcpy(pc->key, key, sizeof pc->key);
    pc->rule = rule;
    pc->ndim = ndim;
    if (ndim) memcpy(pc->shape, shape, sizeof(int64_t) * (size_t)ndim);
    pc->n = numel(ndim, shape);
    pc->values = values;
    int need = part >= 0 ? part + 1 : 1;
    if (need > it->n_pieces) it->n_pieces = need;
    p->bytes += pc->n * dtype_size(dt);
}

/* A tensor of given values (copied), 0-rank when n == 1 and ndim == 0. */
static void plan_values(Plan *p, const char *name, DbDtype dt, int ndim, const int64_t *shape,
                        const double *v, size_t n)
{
    float *f = g_new(float, n ? n : 1);
    for (size_t i = 0; i < n; i++) f[i] = (float)v[i];
    g_ptr_array_add(p->owned, f);
    plan_add(p, name, dt, ndim, shape, name, RULE_VALUES, ndim, shape, -1, f);
}

/* ---- the generator ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t piece_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *s = (const unsigned char *)name; *s; s++) h = (h ^ *s) * 0x100000001b3ull;
    return splitmix64(seed ^ splitmix64(h));
}

/* dst [n] = shift + scale * (standard normal numbers start .. start+n-1 of stream key); start
 * and n even. Box-Muller in float on 24-bit uniforms (|z| <= 5.8). */
static void fill_normal(float *dst, size_t n, uint64_t key, size_t start, float scale, float shift)
{
    const float two_pi = 6.28318530717958648f, inv24 = 1.0f / 16777216.0f;
    long long pairs = (long long)(n / 2);
#pragma omp parallel for schedule(static) if (pairs >= 32768)
    for (long long q = 0; q < pairs; q++) {
        uint64_t h = splitmix64(key + start / 2 + (uint64_t)q);
        float u1 = ((float)(h >> 40) + 1.0f) * inv24;           /* (0, 1] */
        float u2 = (float)(uint32_t)(h & 0xffffffu) * inv24;    /* [0, 1) */
        float r = sqrtf(-2.0f * logf(u1)), a = two_pi * u2;
        dst[2 * q] = shift + scale * (r * cosf(a));
        dst[2 * q + 1] = shift + scale * (r * sinf(a));
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* dst [n (+1 when n is odd)] = the piece's values start .. start+n-1. */
static void piece_fill(float *dst, const Piece *pc, uint64_t seed, size_t start, size_t n)
{
    if (pc->rule == RULE_VALUES) {
        memcpy(dst, pc->values + start, n * sizeof(float));
        return;
    }
    float scale = 1.0f, shift = 0.0f;
    if (pc->rule == RULE_UNET) {
        if (ends_with(pc->key, "bias")) scale = 0.1f;
        else if (pc->ndim == 1) scale = 0.1f, shift = 1.0f;
        else scale = (float)(1.0 / sqrt((double)numel(pc->ndim - 1, pc->shape + 1)));
    } else if (pc->rule == RULE_CLIP) {
        if (strstr(pc->key, "layer_norm")) scale = 0.1f, shift = ends_with(pc->key, "weight") ? 1.0f : 0.0f;
        else if (strstr(pc->key, "embedding")) scale = 0.08f;
        else if (pc->ndim > 1) scale = (float)(1.0 / sqrt((double)pc->shape[pc->ndim - 1]));
        else scale = 0.02f;
    } else { /* RULE_PROJ: OpenCLIP text_projection */
        scale = (float)(1.0 / sqrt((double)pc->shape[0]));
    }
    fill_normal(dst, n + (n & 1), piece_key(seed, pc->key), start, scale, shift);
}

/* ---- writing a plan ------------------------------------------------------------------------ */

typedef struct {
    DbProgressFn fn;
    void *user;
    uint64_t done, total;
} Progress;

static int item_cmp(const void *a, const void *b)
{
    return strcmp(((const Item *)a)->name, ((const Item *)b)->name);
}

static DbStatus plan_write(Plan *p, const char *path, const char *const *meta, uint64_t seed,
                           Progress *prog, DbError *err)
{
    g_array_sort(p->items, item_cmp);
    SafetensorsStream *s = safetensors_stream_new();
    DbStatus st = DB_OK;
    for (int i = 0; meta && meta[i]; i += 2) safetensors_stream_meta(s, meta[i], meta[i + 1]);
    for (guint i = 0; i < p->items->len && st == DB_OK; i++) {
        const Item *it = &g_array_index(p->items, Item, i);
        st = safetensors_stream_declare(s, it->name, it->dtype, it->ndim, it->shape, err);
    }
    if (st == DB_OK) st = safetensors_stream_begin(s, path, err);
    float *f = g_new(float, CHUNK + 1);
    void *raw = g_malloc(CHUNK * sizeof(float));
    for (guint i = 0; i < p->items->len && st == DB_OK; i++) {
        const Item *it = &g_array_index(p->items, Item, i);
        for (int k = 0; k < it->n_pieces && st == DB_OK; k++) {
            const Piece *pc = &it->piece[k];
            for (size_t at = 0; at < pc->n && st == DB_OK; at += CHUNK) {
                size_t n = MIN(CHUNK, pc->n - at);
                piece_fill(f, pc, seed, at, n);
                dtype_from_f32(raw, it->dtype, f, n);
                size_t nb = n * dtype_size(it->dtype);
                st = safetensors_stream_write(s, raw, nb, err);
                prog->done += nb;
                if (st == DB_OK && prog->fn &&
                    prog->fn(prog->user, prog->total ? (double)prog->done / (double)prog->total : 1.0, "writing weights"))
                    st = db_fail(err, DB_ERR_CANCELLED, "%s: cancelled", path);
            }
        }
    }
    if (st == DB_OK) st = safetensors_stream_finish(s, err);
    g_free(f);
    g_free(raw);
    safetensors_stream_free(s);
    return st;
}

/* ---- what goes into each file ------------------------------------------------------------- */

typedef struct {
    Plan *plan;
    Rule rule;
    const Keymap *km;     /* NULL: diffusers names */
    int64_t count;
    DbStatus st;
    DbError *err;
} AddCtx;

static int add_param(void *user, const char *name, int ndim, const int64_t *shape)
{
    AddCtx *c = user;
    char ldm[256];
    int part = -1;
    int64_t sh[4] = {0, 0, 1, 1};
    memcpy(sh, shape, sizeof(int64_t) * (size_t)ndim);
    c->count += (int64_t)numel(ndim, shape);
    if (!c->km) {
        plan_add(c->plan, name, c->plan->dtype, ndim, shape, name, c->rule, ndim, shape, -1, NULL);
        return 0;
    }
    if (!keymap_to_ldm(c->km, name, ldm, sizeof ldm, &part)) {
        c->st = db_fail(c->err, DB_ERR_MODEL, "init-model: no single-file name for '%s'", name);
        return 1;
    }
    /* VAE mid attention q/k/v/proj_out: Linear [C, C] in diffusers, 1x1 conv in LDM */
    int file_ndim = strstr(ldm, ".mid.attn_1.") && ndim == 2 ? 4 : ndim;
    plan_add(c->plan, ldm, c->plan->dtype, file_ndim, sh, name, c->rule, ndim, shape, part, NULL);
    return 0;
}

static int64_t add_net(Plan *p, int net, const void *cfg, Rule rule, const Keymap *km,
                       DbStatus *st, DbError *err)
{
    AddCtx c = {p, rule, km, 0, DB_OK, err};
    if (net == NET_UNET) unet_enum_params(cfg, add_param, &c);
    else if (net == NET_VAE) vae_enum_params(cfg, add_param, &c);
    else clip_enum_params(cfg, add_param, &c);
    if (*st == DB_OK) *st = c.st;
    return c.count;
}

/* The DDPM buffers of an LDM checkpoint (scaled_linear betas 0.00085..0.012, 1000 steps). */
static void add_schedule(Plan *p)
{
    enum { T = 1000 };
    static const char *const names[] = {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2"};
    double *b = g_new(double, 12 * T);
    double a = sqrt(0.00085), e = sqrt(0.012), ac = 1.0;
    for (int t = 0; t < T; t++) {
        double x = a + (e - a) * t / (T - 1), beta = x * x, acp = ac;
        ac *= 1.0 - beta;
        double pv = beta * (1.0 - acp) / (1.0 - ac);
        double row[12] = {beta, ac, acp, sqrt(ac), sqrt(1.0 - ac), log(1.0 - ac), sqrt(1.0 / ac),
                          sqrt(1.0 / ac - 1.0), pv, log(pv > 1e-20 ? pv : 1e-20),
                          beta * sqrt(acp) / (1.0 - ac), (1.0 - acp) * sqrt(1.0 - beta) / (1.0 - ac)};
        for (int k = 0; k < 12; k++) b[k * T + t] = row[k];
    }
    int64_t shape[1] = {T};
    for (int k = 0; k < 12; k++) plan_values(p, names[k], p->dtype, 1, shape, b + k * T, T);
    g_free(b);
}

/* model_ema.* as LDM training saves them: decay, num_updates and (as make_model.py writes)
 * EMA copies of the first four UNet tensors, named without dots. */
static void add_ema(Plan *p, const Keymap *km, const UnetConfig *u)
{
    static const char *const first[4] = {"conv_in.weight", "conv_in.bias",
                                         "time_embedding.linear_1.weight", "time_embedding.linear_1.bias"};
    const int64_t shapes[4][4] = {{u->block_out[0], u->in_channels, 3, 3}, {u->block_out[0]},
                                  {u->time_embed_dim, u->block_out[0]}, {u->time_embed_dim}};
    static const int ndims[4] = {4, 1, 2, 1};
    double decay = 0.9999, zero = 0.0;
    plan_values(p, "model_ema.decay", p->dtype, 0, NULL, &decay, 1);
    plan_values(p, "model_ema.num_updates", DB_DTYPE_I32, 0, NULL, &zero, 1);
    for (int i = 0; i < 4; i++) {
        char ldm[256], name[300];
        int part;
        if (!keymap_to_ldm(km, first[i], ldm, sizeof ldm, &part)) continue;
        GString *g = g_string_new("model_ema.diffusion_model");
        for (const char *s = ldm + strlen(LDM_UNET_PREFIX); *s; s++)
            if (*s != '.') g_string_append_c(g, *s);
        g_strlcpy(name, g->str, sizeof name);
        g_string_free(g, TRUE);
        plan_add(p, name, p->dtype, ndims[i], shapes[i], first[i], RULE_UNET, ndims[i], shapes[i], -1, NULL);
    }
}

static void add_sd2_text_extras(Plan *p, int64_t hidden)
{
    const int64_t proj[2] = {hidden, hidden};
    plan_add(p, LDM_CLIP_OPENCLIP_PREFIX "text_projection", p->dtype, 2, proj,
             LDM_CLIP_OPENCLIP_PREFIX "text_projection", RULE_PROJ, 2, proj, -1, NULL);
    double logit_scale = log(1.0 / 0.07);
    plan_values(p, LDM_CLIP_OPENCLIP_PREFIX "logit_scale", p->dtype, 0, NULL, &logit_scale, 1);
}

/* ---- files and folders -------------------------------------------------------------------- */

/* Removes a tree this call created or was told to replace; symlinks are removed, not followed. */
static void rm_tree(const char *path)
{
    GStatBuf sb;
    if (g_lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        GDir *d = g_dir_open(path, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d))) {
            char *child = g_build_filename(path, n, NULL);
            rm_tree(child);
            g_free(child);
        }
        if (d) g_dir_close(d);
        g_rmdir(path);
    } else {
        g_unlink(path);
    }
}

static int dir_is_empty(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    int empty = d && !g_dir_read_name(d);
    if (d) g_dir_close(d);
    return empty;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0 && (e == EINVAL || e == ENOTSUP)) r = 0;
    errno = e;
    return r;
}

static DbStatus make_dir(const char *path, DbError *err)
{
    if (g_mkdir_with_parents(path, 0777) != 0)
        return db_fail(err, DB_ERR_IO, "%s: cannot create the folder: %s", path, g_strerror(errno));
    return DB_OK;
}

static DbStatus write_text(const char *root, const char *rel, const char *text, DbError *err)
{
    char *path = g_build_filename(root, rel, NULL), *dir = g_path_get_dirname(path);
    GError *e = NULL;
    DbStatus st = make_dir(dir, err);
    if (st == DB_OK && !g_file_set_contents_full(path, text, -1,
                                                 G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                                 0666, &e)) {
        st = db_fail(err, DB_ERR_IO, "%s: %s", path, e->message);
        g_error_free(e);
    }
    g_free(dir);
    g_free(path);
    return st;
}

static int count_param(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)name;
    *(int64_t *)user += (int64_t)numel(ndim, shape);
    return 0;
}

typedef struct {
    const InitArch *a;
    UnetConfig u;
    VaeConfig v;
    ClipConfig c;
    DbDtype dtype;
    uint64_t seed;
    int force;
    const char *tokenizer_from;
    DbInitModelReport *rep;
    Progress prog;
} Job;

static DbStatus write_single(Job *j, const char *out, DbError *err)
{
    GStatBuf sb;
    if (g_stat(out, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return db_fail(err, DB_ERR_ARG, "%s: is a folder; a single file needs a file path (or use --layout diffusers)", out);
        if (sb.st_size > 0 && !j->force)
            return db_fail(err, DB_ERR_ARG, "%s: exists (use --force to replace it)", out);
    }
    char *parent = g_path_get_dirname(out);
    DbStatus st = make_dir(parent, err);
    g_free(parent);
    if (st != DB_OK) return st;

    int sd2 = j->a->family == DB_FAMILY_SD2;
    ClipConfig file_clip = j->c;
    if (sd2) file_clip.layers += 1; /* diffusers drops the last OpenCLIP block (penultimate rule) */
    Keymap km;
    if ((st = keymap_ldm_build(&km, &j->u, &j->v, file_clip.layers,
                               sd2 ? KEYMAP_CLIP_OPENCLIP : KEYMAP_CLIP_OPENAI, err)) != DB_OK)
        return st;
    Plan p;
    plan_init(&p, j->dtype);
    add_net(&p, NET_UNET, &j->u, RULE_UNET, &km, &st, err);
    add_net(&p, NET_VAE, &j->v, RULE_UNET, &km, &st, err);
    add_net(&p, NET_TEXT, &file_clip, RULE_CLIP, &km, &st, err);
    if (sd2) add_sd2_text_extras(&p, j->c.hidden);
    add_schedule(&p);
    add_ema(&p, &km, &j->u);
    char *title = g_strdup_printf("random-weight %s (dreambooth init-model, seed %llu)", j->a->arch,
                                  (unsigned long long)j->seed);
    const char *meta[] = {
        "format", "pt",
        "modelspec.sai_model_spec", "1.0.0",
        "modelspec.architecture", j->a->modelspec_arch,
        "modelspec.implementation", "https://github.com/Stability-AI/generative-models",
        "modelspec.title", title,
        "modelspec.prediction_type", j->a->prediction == DB_PRED_V ? "v" : "epsilon",
        NULL};
    j->prog.total = p.bytes;
    if (st == DB_OK) st = plan_write(&p, out, meta, j->seed, &j->prog, err);
    j->rep->bytes = p.bytes;
    g_free(title);
    plan_clear(&p);
    keymap_free(&km);
    return st;
}

/* The tokenizer/ folder: from --tokenizer-from, else OpenAI's file in the user data folder;
 * none found is a note, not an error. */
static DbStatus write_tokenizer(Job *j, const char *root, DbError *err)
{
    char *found = NULL;
    if (j->tokenizer_from) {
        found = g_strdup(j->tokenizer_from);
    } else {
        char *cand = g_build_filename(g_get_user_data_dir(), "dreambooth", "bpe_simple_vocab_16e6.txt.gz", NULL);
        if (g_file_test(cand, G_FILE_TEST_IS_REGULAR)) found = cand;
        else {
            g_snprintf(j->rep->note, sizeof j->rep->note,
                       "no tokenizer/ folder written: %s not found (pass --tokenizer-from, or --tokenizer when using the model)",
                       cand);
            g_free(cand);
        }
    }
    DbStatus st = DB_OK;
    if (found) {
        char *dir = g_build_filename(root, "tokenizer", NULL);
        if ((st = make_dir(dir, err)) == DB_OK)
            st = tokenizer_write_hf(dir, found, j->a->family == DB_FAMILY_SD2 ? "!" : "<|endoftext|>", err);
        j->rep->tokenizer_written = st == DB_OK;
        g_free(dir);
    }
    g_free(found);
    return st;
}

static DbStatus write_diffusers_files(Job *j, const char *root, DbError *err)
{
    static const char *const subdirs[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    DbStatus st = DB_OK;
    for (int w = 0; w < INIT_CFG_COUNT && st == DB_OK; w++) {
        char *text = init_config_json(j->a, (InitConfigFile)w);
        st = text ? write_text(root, init_config_path((InitConfigFile)w), text, err)
                  : db_fail(err, DB_ERR_FORMAT, "%s: built-in config is not valid JSON", init_config_path((InitConfigFile)w));
        g_free(text);
    }
    if (st == DB_OK) st = write_tokenizer(j, root, err);
    const char *var = j->dtype == DB_DTYPE_F16 ? ".fp16" : "";
    char *files[3] = {
        g_strdup_printf("%s/unet/diffusion_pytorch_model%s.safetensors", root, var),
        g_strdup_printf("%s/vae/diffusion_pytorch_model%s.safetensors", root, var),
        g_strdup_printf("%s/text_encoder/model%s.safetensors", root, var)};
    static const int nets[3] = {NET_UNET, NET_VAE, NET_TEXT};
    const void *cfgs[3] = {&j->u, &j->v, &j->c};
    Plan p[3];
    j->prog.total = 0;
    for (int i = 0; i < 3; i++) {
        plan_init(&p[i], j->dtype);
        add_net(&p[i], nets[i], cfgs[i], nets[i] == NET_TEXT ? RULE_CLIP : RULE_UNET, NULL, &st, err);
        j->prog.total += p[i].bytes;
        j->rep->bytes += p[i].bytes;
    }
    const char *meta[] = {"format", "pt", NULL};
    for (int i = 0; i < 3 && st == DB_OK; i++) st = plan_write(&p[i], files[i], meta, j->seed, &j->prog, err);
    for (int i = 0; i < 3; i++) {
        plan_clear(&p[i]);
        g_free(files[i]);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(subdirs) && st == DB_OK; i++) {
        char *d = g_build_filename(root, subdirs[i], NULL);
        if (g_file_test(d, G_FILE_TEST_IS_DIR) && fsync_dir(d) != 0)
            st = db_fail(err, DB_ERR_IO, "%s: fsync failed: %s", d, g_strerror(errno));
        g_free(d);
    }
    if (st == DB_OK && fsync_dir(root) != 0)
        st = db_fail(err, DB_ERR_IO, "%s: fsync failed: %s", root, g_strerror(errno));
    return st;
}

/* Built in a temp folder next to out, then renamed into place (an empty folder is replaced by
 * the rename; with --force a model folder is first moved aside, removed once the new one is in). */
static DbStatus write_diffusers(Job *j, const char *out, DbError *err)
{
    if (g_str_has_suffix(out, ".safetensors") || g_str_has_suffix(out, ".ckpt"))
        return db_fail(err, DB_ERR_ARG, "--out: '%s' looks like a file name: use --layout single-file, or a folder path", out);
    GStatBuf sb;
    int exists = g_stat(out, &sb) == 0, replace = 0;
    if (exists) {
        if (!S_ISDIR(sb.st_mode)) return db_fail(err, DB_ERR_ARG, "%s: exists and is not a folder", out);
        if (!dir_is_empty(out)) {
            char *mi = g_build_filename(out, "model_index.json", NULL);
            int is_model = g_file_test(mi, G_FILE_TEST_IS_REGULAR);
            g_free(mi);
            if (!j->force) return db_fail(err, DB_ERR_ARG, "%s: folder exists and is not empty (use --force to replace it)", out);
            if (!is_model)
                return db_fail(err, DB_ERR_ARG, "%s: not replacing a folder that is not a diffusers model (no model_index.json)", out);
            replace = 1;
        }
    }
    char *parent = g_path_get_dirname(out), *base = g_path_get_basename(out);
    char *tmp = g_strdup_printf("%s/.%s.tmp-XXXXXX", parent, base);
    char *old = g_strdup_printf("%s/.%s.old-XXXXXX", parent, base);
    DbStatus st = make_dir(parent, err);
    if (st == DB_OK && !g_mkdtemp_full(tmp, 0777))
        st = db_fail(err, DB_ERR_IO, "%s: cannot create a temp folder: %s", parent, g_strerror(errno));
    else if (st == DB_OK) {
        st = write_diffusers_files(j, tmp, err);
        if (st == DB_OK && replace) {
            if (!g_mkdtemp_full(old, 0700) || rename(out, old) != 0)
                st = db_fail(err, DB_ERR_IO, "%s: cannot move the old model aside: %s", out, g_strerror(errno));
        }
        if (st == DB_OK && rename(tmp, out) != 0) {
            st = db_fail(err, DB_ERR_IO, "%s: rename failed: %s", out, g_strerror(errno));
            if (replace) rename(old, out); /* put the old model back */
        }
        if (st == DB_OK && fsync_dir(parent) != 0)
            st = db_fail(err, DB_ERR_IO, "%s: fsync of the folder failed: %s", parent, g_strerror(errno));
        if (st != DB_OK) rm_tree(tmp);
        if (st == DB_OK && replace) rm_tree(old);
        else if (replace) g_rmdir(old);
    }
    g_free(parent);
    g_free(base);
    g_free(tmp);
    g_free(old);
    return st;
}

DbStatus db_init_model(const char *arch, const char *out, const DbInitModelOptions *opts,
                       DbInitModelReport *report, DbProgressFn progress, void *user,
                       DbError *err)
{
    DbInitModelOptions o = {0};
    DbInitModelReport local;
    if (opts) o = *opts;
    Job j = {0};
    j.rep = report ? report : &local;
    memset(j.rep, 0, sizeof *j.rep);
    j.a = init_arch_find(arch);
    if (!j.a)
        return db_fail(err, DB_ERR_ARG, "--arch: '%s' is not one of %s", arch ? arch : "", init_arch_list());
    if (!out || !*out) return db_fail(err, DB_ERR_ARG, "--out: no output path");
    if (!o.dtype || !strcmp(o.dtype, "f32")) j.dtype = DB_DTYPE_F32;
    else if (!strcmp(o.dtype, "f16")) j.dtype = DB_DTYPE_F16;
    else if (!strcmp(o.dtype, "bf16")) j.dtype = DB_DTYPE_BF16;
    else return db_fail(err, DB_ERR_ARG, "--dtype: '%s' is not one of f32, f16, bf16", o.dtype);
    DbLayout layout = o.layout ? o.layout : DB_LAYOUT_DIFFUSERS;
    if (layout != DB_LAYOUT_DIFFUSERS && layout != DB_LAYOUT_SINGLE_FILE)
        return db_fail(err, DB_ERR_ARG, "--layout: %d is not diffusers or single-file", (int)layout);
    j.seed = o.seed;
    j.force = o.force;
    j.tokenizer_from = o.tokenizer_from;
    j.prog.fn = progress;
    j.prog.user = user;
    DbStatus st = init_arch_configs(j.a, &j.u, &j.v, &j.c, err);
    if (st == DB_OK && layout == DB_LAYOUT_SINGLE_FILE) {
        init_configs_inferable(j.a->family, &j.u, &j.v, &j.c);
        if ((st = unet_config_validate(&j.u, out, err)) == DB_OK &&
            (st = vae_config_validate(&j.v, out, err)) == DB_OK)
            st = clip_config_validate(&j.c, out, err);
    }
    if (st != DB_OK) return st;
    unet_enum_params(&j.u, count_param, &j.rep->params_unet);
    vae_enum_params(&j.v, count_param, &j.rep->params_vae);
    clip_enum_params(&j.c, count_param, &j.rep->params_text_encoder);
    st = layout == DB_LAYOUT_SINGLE_FILE ? write_single(&j, out, err) : write_diffusers(&j, out, err);
    if (st == DB_OK && progress) progress(user, 1.0, "done");
    return st;
}
