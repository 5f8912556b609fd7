/* Configs: diffusers/transformers config.json files (json-glib) and, for single files,
 * inference from tensor shapes. Every size is range-checked before anything uses it.
 *
 * UNet trap (diffusers unet_2d_condition.py): `num_attention_heads = num_attention_heads or
 * attention_head_dim`, i.e. the legacy `attention_head_dim` is the NUMBER of heads.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "keymap.h"

#include <json-glib/json-glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_CHANNELS 65536

/* ---- JSON getters: absent or null -> default; wrong type or range -> "PATH: KEY: ..." ---- */

typedef struct {
    JsonObject *o;
    const char *path;
    DbError *err;
} Js;

static JsonNode *js_get(const Js *j, const char *key)
{
    JsonNode *n = json_object_has_member(j->o, key) ? json_object_get_member(j->o, key) : NULL;
    return n && !JSON_NODE_HOLDS_NULL(n) ? n : NULL;
}

static int is_int(JsonNode *n)
{
    return JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64;
}

static DbStatus js_int(const Js *j, const char *key, int def, int lo, int hi, int *out)
{
    JsonNode *n = js_get(j, key);
    if (!n) {
        *out = def;
        return DB_OK;
    }
    if (!is_int(n)) return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected an integer", j->path, key);
    gint64 v = json_node_get_int(n);
    if (v < lo || v > hi)
        return db_fail(j->err, DB_ERR_MODEL, "%s: %s: %lld is outside [%d, %d]", j->path, key,
                       (long long)v, lo, hi);
    *out = (int)v;
    return DB_OK;
}

static DbStatus js_float(const Js *j, const char *key, double def, double lo, double hi, float *out)
{
    JsonNode *n = js_get(j, key);
    double v = def;
    if (n) {
        GType t = JSON_NODE_HOLDS_VALUE(n) ? json_node_get_value_type(n) : G_TYPE_INVALID;
        if (t != G_TYPE_INT64 && t != G_TYPE_DOUBLE)
            return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected a number", j->path, key);
        v = json_node_get_double(n);
    }
    if (!(v >= lo && v <= hi))
        return db_fail(j->err, DB_ERR_MODEL, "%s: %s: %g is outside [%g, %g]", j->path, key, v, lo, hi);
    *out = (float)v;
    return DB_OK;
}

static DbStatus js_bool(const Js *j, const char *key, int def, int *out)
{
    JsonNode *n = js_get(j, key);
    if (!n) {
        *out = def;
        return DB_OK;
    }
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected true or false", j->path, key);
    *out = json_node_get_boolean(n);
    return DB_OK;
}

/* A string; absent/null -> def (may be NULL). */
static DbStatus js_str(const Js *j, const char *key, const char *def, const char **out)
{
    JsonNode *n = js_get(j, key);
    if (!n) {
        *out = def;
        return DB_OK;
    }
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected a string", j->path, key);
    *out = json_node_get_string(n);
    return DB_OK;
}

/* An int (broadcast to n values) or a list of exactly n ints (n = -1: any length 1..MAX,
 * returned in *n_out). Absent/null -> def broadcast. */
static DbStatus js_ints(const Js *j, const char *key, int def, int lo, int hi, int n, int *vals,
                        int *n_out)
{
    JsonNode *node = js_get(j, key);
    if (!node || is_int(node)) {
        int v;
        DbStatus st = js_int(j, key, def, lo, hi, &v);
        if (st) return st;
        if (n < 0) return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected a list", j->path, key);
        for (int i = 0; i < n; i++) vals[i] = v;
        if (n_out) *n_out = n;
        return DB_OK;
    }
    if (!JSON_NODE_HOLDS_ARRAY(node))
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected an integer or a list", j->path, key);
    JsonArray *a = json_node_get_array(node);
    guint len = json_array_get_length(a);
    if (n < 0 ? (len < 1 || len > DB_MAX_BLOCKS) : len != (guint)n)
        return db_fail(j->err, DB_ERR_MODEL, "%s: %s: %u entries, expected %s%d", j->path, key, len,
                       n < 0 ? "1 to " : "", n < 0 ? DB_MAX_BLOCKS : n);
    for (guint i = 0; i < len; i++) {
        JsonNode *e = json_array_get_element(a, i);
        if (!is_int(e))
            return db_fail(j->err, DB_ERR_FORMAT, "%s: %s[%u]: expected an integer", j->path, key, i);
        gint64 v = json_node_get_int(e);
        if (v < lo || v > hi)
            return db_fail(j->err, DB_ERR_MODEL, "%s: %s[%u]: %lld is outside [%d, %d]", j->path,
                           key, i, (long long)v, lo, hi);
        vals[i] = (int)v;
    }
    if (n_out) *n_out = (int)len;
    return DB_OK;
}

/* A list of n block-type strings: flags[i] = 1 for `with_attn`, 0 for `plain`. */
static DbStatus js_block_types(const Js *j, const char *key, int n, const char *with_attn,
                               const char *plain, const int *defaults, int *flags)
{
    JsonNode *node = js_get(j, key);
    if (!node) {
        memcpy(flags, defaults, (size_t)n * sizeof *flags);
        return DB_OK;
    }
    if (!JSON_NODE_HOLDS_ARRAY(node))
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s: expected a list of strings", j->path, key);
    JsonArray *a = json_node_get_array(node);
    if (json_array_get_length(a) != (guint)n)
        return db_fail(j->err, DB_ERR_MODEL, "%s: %s: %u entries for %d blocks", j->path, key,
                       json_array_get_length(a), n);
    for (int i = 0; i < n; i++) {
        JsonNode *e = json_array_get_element(a, (guint)i);
        const char *s = JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_STRING
                            ? json_node_get_string(e) : NULL;
        if (!s) return db_fail(j->err, DB_ERR_FORMAT, "%s: %s[%d]: expected a string", j->path, key, i);
        if (with_attn && strcmp(s, with_attn) == 0) flags[i] = 1;
        else if (strcmp(s, plain) == 0) flags[i] = 0;
        else
            return db_fail(j->err, DB_ERR_UNSUPPORTED, "%s: %s[%d]: block type \"%s\" is not supported",
                           j->path, key, i, s);
    }
    return DB_OK;
}

/* key must be absent/null or equal `want` (NULL: must be absent/null). */
static DbStatus js_expect_str(const Js *j, const char *key, const char *want)
{
    const char *s = NULL;
    DbStatus st = js_str(j, key, want, &s);
    if (st) return st;
    if ((s == NULL) != (want == NULL) || (s && strcmp(s, want) != 0))
        return db_fail(j->err, DB_ERR_UNSUPPORTED, "%s: %s: \"%s\" is not supported (only %s%s%s)",
                       j->path, key, s ? s : "null", want ? "\"" : "", want ? want : "null",
                       want ? "\"" : "");
    return DB_OK;
}

/* json-glib parses nested arrays/objects recursively: a config of a few MiB of '[' overflows
 * the stack (found by tests/fuzz). Our files nest 3 levels at most. */
#define JSON_MAX_DEPTH 64

static int json_depth_ok(const char *s)
{
    int depth = 0, in_str = 0;
    for (; *s; s++) {
        if (in_str) {
            if (*s == '\\' && s[1]) s++;
            else if (*s == '"') in_str = 0;
        } else if (*s == '"') {
            in_str = 1;
        } else if (*s == '[' || *s == '{') {
            if (++depth > JSON_MAX_DEPTH) return 0;
        } else if (*s == ']' || *s == '}') {
            depth--;
        }
    }
    return 1;
}

static DbStatus js_parse(JsonParser **parser, Js *j, const char *json, const char *path, DbError *err)
{
    GError *gerr = NULL;
    *parser = NULL;
    if (!json_depth_ok(json))
        return db_fail(err, DB_ERR_FORMAT, "%s: invalid JSON: nested deeper than %d levels", path, JSON_MAX_DEPTH);
    *parser = json_parser_new();
    if (!json_parser_load_from_data(*parser, json, -1, &gerr)) {
        DbStatus st = db_fail(err, DB_ERR_FORMAT, "%s: invalid JSON: %s", path, gerr->message);
        g_error_free(gerr);
        return st;
    }
    JsonNode *root = json_parser_get_root(*parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root))
        return db_fail(err, DB_ERR_FORMAT, "%s: not a JSON object", path);
    j->o = json_node_get_object(root);
    j->path = path;
    j->err = err;
    return DB_OK;
}

#define TRY(x) do { if ((st = (x)) != DB_OK) goto out; } while (0)

DbStatus unet_config_parse(UnetConfig *c, const char *json, const char *path, DbError *err)
{
    static const int sd_down[4] = {1, 1, 1, 0}, sd_up[4] = {0, 1, 1, 1};
    JsonParser *p = NULL;
    Js j;
    DbStatus st;
    int n = 0, v, ones[DB_MAX_BLOCKS];
    const char *heads_key;
    memset(c, 0, sizeof *c);
    TRY(js_parse(&p, &j, json, path, err));
    if (js_get(&j, "block_out_channels")) {
        TRY(js_ints(&j, "block_out_channels", 0, 1, MAX_CHANNELS, -1, c->block_out, &n));
    } else {
        static const int sd[4] = {320, 640, 1280, 1280};
        n = 4;
        memcpy(c->block_out, sd, sizeof sd);
    }
    c->n_blocks = n;
    int all_cross[DB_MAX_BLOCKS] = {1, 1, 1, 1, 1, 1, 1, 1};
    const int *dd = n == 4 ? sd_down : all_cross, *du = n == 4 ? sd_up : all_cross;
    TRY(js_block_types(&j, "down_block_types", n, "CrossAttnDownBlock2D", "DownBlock2D", dd, c->down_cross));
    TRY(js_block_types(&j, "up_block_types", n, "CrossAttnUpBlock2D", "UpBlock2D", du, c->up_cross));
    TRY(js_expect_str(&j, "mid_block_type", "UNetMidBlock2DCrossAttn"));
    TRY(js_ints(&j, "layers_per_block", 2, 1, 16, n, ones, NULL));
    c->layers_per_block = ones[0];
    for (int i = 1; i < n; i++)
        if (ones[i] != ones[0])
            TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: layers_per_block: different values per block are not supported", path));
    TRY(js_ints(&j, "transformer_layers_per_block", 1, 1, 1, n, ones, NULL));
    TRY(js_ints(&j, "cross_attention_dim", 1280, 1, MAX_CHANNELS, n, ones, NULL));
    c->cross_dim = ones[0];
    for (int i = 1; i < n; i++)
        if (ones[i] != ones[0])
            TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: cross_attention_dim: different values per block are not supported", path));
    /* the trap: heads = num_attention_heads, or else the legacy attention_head_dim */
    heads_key = js_get(&j, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
    TRY(js_ints(&j, heads_key, 8, 1, MAX_CHANNELS, n, c->heads, NULL));
    TRY(js_int(&j, "in_channels", 4, 1, 1024, &c->in_channels));
    TRY(js_int(&j, "out_channels", 4, 1, 1024, &c->out_channels));
    TRY(js_int(&j, "sample_size", 0, 0, 65536, &c->sample_size));
    TRY(js_int(&j, "norm_num_groups", 32, 1, MAX_CHANNELS, &c->norm_groups));
    TRY(js_float(&j, "norm_eps", 1e-5, 1e-12, 1.0, &c->norm_eps));
    TRY(js_bool(&j, "flip_sin_to_cos", 1, &c->flip_sin_to_cos));
    TRY(js_float(&j, "freq_shift", 0.0, -1e6, 1e6, &c->freq_shift));
    TRY(js_bool(&j, "use_linear_projection", 0, &c->use_linear_projection));
    TRY(js_bool(&j, "upcast_attention", 0, &c->upcast_attention));
    TRY(js_bool(&j, "only_cross_attention", 0, &v));
    TRY(js_bool(&j, "dual_cross_attention", 0, &v));
    TRY(js_int(&j, "conv_in_kernel", 3, 3, 3, &v));
    TRY(js_int(&j, "conv_out_kernel", 3, 3, 3, &v));
    TRY(js_expect_str(&j, "act_fn", "silu"));
    TRY(js_expect_str(&j, "time_embedding_type", "positional"));
    TRY(js_expect_str(&j, "resnet_time_scale_shift", "default"));
    TRY(js_expect_str(&j, "class_embed_type", NULL));
    TRY(js_expect_str(&j, "addition_embed_type", NULL));
    TRY(js_expect_str(&j, "encoder_hid_dim_type", NULL));
    TRY(js_int(&j, "time_embedding_dim", 0, 0, 0, &v));
    TRY(js_int(&j, "time_cond_proj_dim", 0, 0, 0, &v));
    c->time_embed_dim = c->block_out[0] * 4;
    st = unet_config_validate(c, path, err);
out:
    if (p) g_object_unref(p);
    return st;
}

DbStatus vae_config_parse(VaeConfig *c, const char *json, const char *path, DbError *err)
{
    JsonParser *p = NULL;
    Js j;
    DbStatus st;
    int v, ones[DB_MAX_BLOCKS] = {1, 1, 1, 1, 1, 1, 1, 1};
    memset(c, 0, sizeof *c);
    TRY(js_parse(&p, &j, json, path, err));
    if (js_get(&j, "block_out_channels")) {
        TRY(js_ints(&j, "block_out_channels", 0, 1, MAX_CHANNELS, -1, c->block_out, &c->n_blocks));
    } else {
        c->n_blocks = 1;
        c->block_out[0] = 64;
    }
    TRY(js_block_types(&j, "down_block_types", c->n_blocks, NULL, "DownEncoderBlock2D", ones, ones));
    TRY(js_block_types(&j, "up_block_types", c->n_blocks, NULL, "UpDecoderBlock2D", ones, ones));
    TRY(js_int(&j, "in_channels", 3, 1, 1024, &c->in_channels));
    TRY(js_int(&j, "out_channels", 3, 1, 1024, &c->out_channels));
    TRY(js_int(&j, "latent_channels", 4, 1, 1024, &c->latent_channels));
    TRY(js_int(&j, "layers_per_block", 1, 1, 16, &c->layers_per_block));
    TRY(js_int(&j, "norm_num_groups", 32, 1, MAX_CHANNELS, &c->norm_groups));
    TRY(js_int(&j, "sample_size", 32, 0, 65536, &c->sample_size));
    TRY(js_float(&j, "scaling_factor", 0.18215, 1e-6, 1e6, &c->scaling_factor));
    TRY(js_expect_str(&j, "act_fn", "silu"));
    TRY(js_bool(&j, "use_quant_conv", 1, &v));
    if (!v) TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: use_quant_conv: false is not supported", path));
    TRY(js_bool(&j, "use_post_quant_conv", 1, &v));
    if (!v) TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: use_post_quant_conv: false is not supported", path));
    TRY(js_bool(&j, "mid_block_add_attention", 1, &v));
    if (!v) TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: mid_block_add_attention: false is not supported", path));
    st = vae_config_validate(c, path, err);
out:
    if (p) g_object_unref(p);
    return st;
}

DbStatus clip_config_parse(ClipConfig *c, const char *json, const char *path, DbError *err)
{
    JsonParser *p = NULL;
    Js j;
    DbStatus st;
    const char *act = NULL;
    memset(c, 0, sizeof *c);
    /* transformers CLIPTextConfig defaults */
    TRY(js_parse(&p, &j, json, path, err));
    TRY(js_int(&j, "vocab_size", 49408, 1, 1 << 20, &c->vocab_size));
    TRY(js_int(&j, "hidden_size", 512, 1, MAX_CHANNELS, &c->hidden));
    TRY(js_int(&j, "intermediate_size", 2048, 1, 4 * MAX_CHANNELS, &c->intermediate));
    TRY(js_int(&j, "num_attention_heads", 8, 1, MAX_CHANNELS, &c->heads));
    TRY(js_int(&j, "num_hidden_layers", 12, 1, 256, &c->layers));
    TRY(js_int(&j, "max_position_embeddings", 77, 1, MAX_CHANNELS, &c->max_pos));
    TRY(js_float(&j, "layer_norm_eps", 1e-5, 1e-12, 1.0, &c->ln_eps));
    TRY(js_str(&j, "hidden_act", "quick_gelu", &act));
    if (strcmp(act, "quick_gelu") == 0) c->act = CLIP_ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) c->act = CLIP_ACT_GELU;
    else TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: hidden_act: \"%s\" is not supported (quick_gelu or gelu)", path, act));
    c->pad_id = CLIP_EOS;
    st = clip_config_validate(c, path, err);
out:
    if (p) g_object_unref(p);
    return st;
}

/* Reads a whole config file (at most 16 MiB); *text is g_free'd by the caller. */
static DbStatus read_text(const char *path, gchar **text, DbError *err)
{
    gsize len = 0;
    GError *gerr = NULL;
    if (!g_file_get_contents(path, text, &len, &gerr)) {
        DbStatus st = db_fail(err, DB_ERR_IO, "%s: cannot read: %s", path, gerr->message);
        g_error_free(gerr);
        return st;
    }
    if (len > (1u << 24)) {
        g_free(*text);
        *text = NULL;
        return db_fail(err, DB_ERR_FORMAT, "%s: config larger than 16 MiB", path);
    }
    return DB_OK;
}

DbStatus unet_config_load(UnetConfig *c, const char *path, DbError *err)
{
    gchar *text = NULL;
    DbStatus st = read_text(path, &text, err);
    if (st == DB_OK) st = unet_config_parse(c, text, path, err);
    g_free(text);
    return st;
}

DbStatus vae_config_load(VaeConfig *c, const char *path, DbError *err)
{
    gchar *text = NULL;
    DbStatus st = read_text(path, &text, err);
    if (st == DB_OK) st = vae_config_parse(c, text, path, err);
    g_free(text);
    return st;
}

DbStatus clip_config_load(ClipConfig *c, const char *path, DbError *err)
{
    gchar *text = NULL;
    DbStatus st = read_text(path, &text, err);
    if (st == DB_OK) st = clip_config_parse(c, text, path, err);
    g_free(text);
    return st;
}

/* ---- sanity checks (parsed and inferred configs) -------------------------------------- */

static int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

DbStatus unet_config_validate(const UnetConfig *c, const char *path, DbError *err)
{
    if (c->in_channels == 9)
        return db_fail(err, DB_ERR_UNSUPPORTED, "%s: inpainting UNet (9 input channels) is not supported", path);
    if (!in_range(c->n_blocks, 1, DB_MAX_BLOCKS))
        return db_fail(err, DB_ERR_MODEL, "%s: block_out_channels: %d blocks, expected 1 to %d", path, c->n_blocks, DB_MAX_BLOCKS);
    if (!in_range(c->in_channels, 1, 1024) || !in_range(c->out_channels, 1, 1024))
        return db_fail(err, DB_ERR_MODEL, "%s: in/out_channels out of range", path);
    if (!in_range(c->layers_per_block, 1, 16))
        return db_fail(err, DB_ERR_MODEL, "%s: layers_per_block: %d is outside [1, 16]", path, c->layers_per_block);
    if (!in_range(c->cross_dim, 1, MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: cross_attention_dim: %d is outside [1, %d]", path, c->cross_dim, MAX_CHANNELS);
    if (!in_range(c->norm_groups, 1, MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: norm_num_groups: %d is out of range", path, c->norm_groups);
    if (!in_range(c->time_embed_dim, 1, 4 * MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: time embedding width %d is out of range", path, c->time_embed_dim);
    for (int b = 0; b < c->n_blocks; b++) {
        int ch = c->block_out[b];
        if (!in_range(ch, 1, MAX_CHANNELS))
            return db_fail(err, DB_ERR_MODEL, "%s: block_out_channels[%d]: %d is outside [1, %d]", path, b, ch, MAX_CHANNELS);
        if (ch % c->norm_groups)
            return db_fail(err, DB_ERR_MODEL, "%s: norm_num_groups: %d does not divide block_out_channels[%d] = %d", path, c->norm_groups, b, ch);
        if (c->heads[b] < 1 || ch % c->heads[b])
            return db_fail(err, DB_ERR_MODEL, "%s: attention heads: %d does not divide block_out_channels[%d] = %d", path, c->heads[b], b, ch);
    }
    return DB_OK;
}

DbStatus vae_config_validate(const VaeConfig *c, const char *path, DbError *err)
{
    if (!in_range(c->n_blocks, 1, DB_MAX_BLOCKS))
        return db_fail(err, DB_ERR_MODEL, "%s: block_out_channels: %d blocks, expected 1 to %d", path, c->n_blocks, DB_MAX_BLOCKS);
    if (!in_range(c->in_channels, 1, 1024) || !in_range(c->out_channels, 1, 1024) ||
        !in_range(c->latent_channels, 1, 1024))
        return db_fail(err, DB_ERR_MODEL, "%s: in/out/latent_channels out of range", path);
    if (!in_range(c->layers_per_block, 1, 16))
        return db_fail(err, DB_ERR_MODEL, "%s: layers_per_block: %d is outside [1, 16]", path, c->layers_per_block);
    if (!in_range(c->norm_groups, 1, MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: norm_num_groups: %d is out of range", path, c->norm_groups);
    for (int b = 0; b < c->n_blocks; b++) {
        int ch = c->block_out[b];
        if (!in_range(ch, 1, MAX_CHANNELS))
            return db_fail(err, DB_ERR_MODEL, "%s: block_out_channels[%d]: %d is outside [1, %d]", path, b, ch, MAX_CHANNELS);
        if (ch % c->norm_groups)
            return db_fail(err, DB_ERR_MODEL, "%s: norm_num_groups: %d does not divide block_out_channels[%d] = %d", path, c->norm_groups, b, ch);
    }
    return DB_OK;
}

DbStatus clip_config_validate(const ClipConfig *c, const char *path, DbError *err)
{
    if (!in_range(c->vocab_size, 1, 1 << 20) || !in_range(c->max_pos, 1, MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: vocab_size/max_position_embeddings out of range", path);
    if (!in_range(c->hidden, 1, MAX_CHANNELS) || !in_range(c->intermediate, 1, 4 * MAX_CHANNELS))
        return db_fail(err, DB_ERR_MODEL, "%s: hidden_size/intermediate_size out of range", path);
    if (!in_range(c->layers, 1, 256))
        return db_fail(err, DB_ERR_MODEL, "%s: num_hidden_layers: %d is outside [1, 256]", path, c->layers);
    if (c->heads < 1 || c->hidden % c->heads)
        return db_fail(err, DB_ERR_MODEL, "%s: num_attention_heads: %d does not divide hidden_size %d", path, c->heads, c->hidden);
    if (c->max_pos < DB_CONTEXT_LEN)
        return db_fail(err, DB_ERR_MODEL, "%s: max_position_embeddings: %d is less than the context %d", path, c->max_pos, DB_CONTEXT_LEN);
    return DB_OK;
}

/* ---- reference configs (diffusers' published SD 1.5 and SD 2.1 configs) --------------- */

void unet_config_sd1(UnetConfig *c)
{
    static const UnetConfig sd1 = {
        .in_channels = 4, .out_channels = 4, .sample_size = 64, .n_blocks = 4,
        .block_out = {320, 640, 1280, 1280}, .layers_per_block = 2,
        .down_cross = {1, 1, 1, 0}, .up_cross = {0, 1, 1, 1}, .heads = {8, 8, 8, 8},
        .cross_dim = 768, .norm_groups = 32, .norm_eps = 1e-5f, .flip_sin_to_cos = 1,
        .freq_shift = 0.0f, .use_linear_projection = 0, .upcast_attention = 0,
        .time_embed_dim = 1280,
    };
    *c = sd1;
}

void unet_config_sd2(UnetConfig *c)
{
    unet_config_sd1(c);
    c->sample_size = 96;
    c->cross_dim = 1024;
    c->use_linear_projection = 1;
    c->upcast_attention = 1;
    static const int heads[4] = {5, 10, 20, 20};
    memcpy(c->heads, heads, sizeof heads);
}

void vae_config_sd(VaeConfig *c)
{
    static const VaeConfig vae = {
        .in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_blocks = 4,
        .block_out = {128, 256, 512, 512}, .layers_per_block = 2, .norm_groups = 32,
        .scaling_factor = 0.18215f, .sample_size = 512,
    };
    *c = vae;
}

void clip_config_sd1(ClipConfig *c)
{
    static const ClipConfig sd1 = {
        .vocab_size = 49408, .hidden = 768, .intermediate = 3072, .heads = 12, .layers = 12,
        .max_pos = 77, .ln_eps = 1e-5f, .act = CLIP_ACT_QUICK_GELU, .pad_id = CLIP_EOS,
    };
    *c = sd1;
}

void clip_config_sd2(ClipConfig *c)
{
    static const ClipConfig sd2 = {
        .vocab_size = 49408, .hidden = 1024, .intermediate = 4096, .heads = 16, .layers = 23,
        .max_pos = 77, .ln_eps = 1e-5f, .act = CLIP_ACT_GELU, .pad_id = 0,
    };
    *c = sd2;
}

/* ---- small JSON files next to the configs -------------------------------------------- */

static DbStatus load_object(JsonParser **p, Js *j, const char *path, DbError *err)
{
    gchar *text = NULL;
    DbStatus st = read_text(path, &text, err);
    if (st == DB_OK) st = js_parse(p, j, text, path, err);
    g_free(text);
    return st;
}

DbStatus scheduler_prediction_load(const char *path, DbPrediction *pred, DbError *err)
{
    JsonParser *p = NULL;
    Js j;
    DbStatus st;
    const char *s = NULL;
    TRY(load_object(&p, &j, path, err));
    TRY(js_str(&j, "prediction_type", "epsilon", &s)); /* diffusers' default */
    if (strcmp(s, "epsilon") == 0) *pred = DB_PRED_EPS;
    else if (strcmp(s, "v_prediction") == 0) *pred = DB_PRED_V;
    else TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: prediction_type: \"%s\" is not supported (epsilon or v_prediction)", path, s));
out:
    if (p) g_object_unref(p);
    return st;
}

DbStatus tokenizer_pad_load(const char *path, int *pad_id, DbError *err)
{
    JsonParser *p = NULL;
    Js j;
    DbStatus st;
    const char *s = NULL;
    *pad_id = -1;
    TRY(load_object(&p, &j, path, err));
    JsonNode *n = js_get(&j, "pad_token");
    if (n && JSON_NODE_HOLDS_OBJECT(n)) { /* AddedToken: {"content": "...", ...} */
        Js sub = {json_node_get_object(n), path, err};
        TRY(js_str(&sub, "content", NULL, &s));
    } else {
        TRY(js_str(&j, "pad_token", NULL, &s));
    }
    if (!s) goto out;
    if (strcmp(s, "<|endoftext|>") == 0) *pad_id = CLIP_EOS;
    else if (strcmp(s, "!") == 0) *pad_id = 0;
    else TRY(db_fail(err, DB_ERR_UNSUPPORTED, "%s: pad_token: \"%s\" is not supported (\"<|endoftext|>\" or \"!\")", path, s));
out:
    if (p) g_object_unref(p);
    return st;
}

DbStatus shard_index_load(const char *path, char ***shards, DbError *err)
{
    JsonParser *p = NULL;
    Js j;
    DbStatus st = DB_OK;
    GPtrArray *names = g_ptr_array_new();
    *shards = NULL;
    TRY(load_object(&p, &j, path, err));
    JsonNode *wm = js_get(&j, "weight_map");
    if (!wm || !JSON_NODE_HOLDS_OBJECT(wm))
        TRY(db_fail(err, DB_ERR_FORMAT, "%s: weight_map: expected an object", path));
    JsonObject *o = json_node_get_object(wm);
    GList *members = json_object_get_members(o);
    for (GList *l = members; l && st == DB_OK; l = l->next) {
        JsonNode *v = json_object_get_member(o, l->data);
        const char *s = JSON_NODE_HOLDS_VALUE(v) && json_node_get_value_type(v) == G_TYPE_STRING
                            ? json_node_get_string(v) : NULL;
        /* a plain file name in the same folder: no separators, no "..", *.safetensors */
        if (!s || !*s || strchr(s, '/') || strchr(s, '\\') || strcmp(s, "..") == 0 ||
            !g_str_has_suffix(s, ".safetensors"))
            st = db_fail(err, DB_ERR_FORMAT, "%s: weight_map[\"%s\"]: expected a .safetensors file name in the same folder", path, (const char *)l->data);
        else if (!g_ptr_array_find_with_equal_func(names, s, g_str_equal, NULL))
            g_ptr_array_add(names, g_strdup(s));
    }
    g_list_free(members);
    if (st == DB_OK && names->len == 0)
        st = db_fail(err, DB_ERR_FORMAT, "%s: weight_map is empty", path);
out:
    g_ptr_array_add(names, NULL);
    if (st == DB_OK) *shards = (char **)g_ptr_array_free(names, FALSE);
    else g_strfreev((char **)g_ptr_array_free(names, FALSE));
    if (p) g_object_unref(p);
    return st;
}
