/* Config files of the models init-model writes, as data: the defaults diffusers 0.25 /
 * transformers 4.36 save for a StableDiffusionPipeline, and per-kind overrides
 * (tests/reference/sd_configs.py holds the same dicts: keep them in step).
 *
 * Texts are merged with json-glib and printed as Python's json.dumps(d, indent=2,
 * sort_keys=True) prints them (save_pretrained's format: keys sorted, "key": value, floats in
 * shortest round-trip form such as 1e-05), so the files are byte-identical to the reference.
 * json-glib 1.6's own generator prints "key" : value and 1e-05 as 1.0000000000000001e-05.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "init_model.h"

#include <glib.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keymap.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const InitArch arches[] = {
    {"sd15", "sd15", DB_FAMILY_SD1, DB_PRED_EPS, "stable-diffusion-v1"},
    {"sd21", "sd21", DB_FAMILY_SD2, DB_PRED_V, "stable-diffusion-v2-768-v"},
    {"sd21-v", "sd21", DB_FAMILY_SD2, DB_PRED_V, "stable-diffusion-v2-768-v"},
    {"sd21-base", "sd21-base", DB_FAMILY_SD2, DB_PRED_EPS, "stable-diffusion-v2-512"},
    {"tiny-sd1", "tiny-sd1", DB_FAMILY_SD1, DB_PRED_EPS, "stable-diffusion-v1"},
    {"tiny-sd2", "tiny-sd2", DB_FAMILY_SD2, DB_PRED_EPS, "stable-diffusion-v2-512"},
};

const InitArch *init_arch_find(const char *arch)
{
    for (size_t i = 0; arch && i < N_OF(arches); i++)
        if (!strcmp(arch, arches[i].arch)) return &arches[i];
    return NULL;
}

const char *init_arch_list(void) { return "sd15, sd21, sd21-v, sd21-base, tiny-sd1, tiny-sd2"; }

/* ---- the texts ------------------------------------------------------------------------- */

#define DIFFUSERS_VERSION "\"0.25.0\""

/* Every key UNet2DConditionModel.__init__ registers, with its default (SD 1.5 values). */
static const char unet_defaults[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": " DIFFUSERS_VERSION ","
    "\"act_fn\": \"silu\", \"addition_embed_type\": null, \"addition_embed_type_num_heads\": 64,"
    "\"addition_time_embed_dim\": null, \"attention_head_dim\": 8, \"attention_type\": \"default\","
    "\"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false,"
    "\"class_embed_type\": null, \"class_embeddings_concat\": false, \"conv_in_kernel\": 3,"
    "\"conv_out_kernel\": 3, \"cross_attention_dim\": 768, \"cross_attention_norm\": null,"
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
    "  \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    "\"downsample_padding\": 1, \"dropout\": 0.0, \"dual_cross_attention\": false,"
    "\"encoder_hid_dim\": null, \"encoder_hid_dim_type\": null, \"flip_sin_to_cos\": true,"
    "\"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2,"
    "\"mid_block_only_cross_attention\": null, \"mid_block_scale_factor\": 1,"
    "\"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_eps\": 1e-05, \"norm_num_groups\": 32,"
    "\"num_attention_heads\": null, \"num_class_embeds\": null, \"only_cross_attention\": false,"
    "\"out_channels\": 4, \"projection_class_embeddings_input_dim\": null,"
    "\"resnet_out_scale_factor\": 1.0, \"resnet_skip_time_act\": false,"
    "\"resnet_time_scale_shift\": \"default\", \"reverse_transformer_layers_per_block\": null,"
    "\"sample_size\": 64, \"time_cond_proj_dim\": null, \"time_embedding_act_fn\": null,"
    "\"time_embedding_dim\": null, \"time_embedding_type\": \"positional\","
    "\"timestep_post_act\": null, \"transformer_layers_per_block\": 1,"
    "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\","
    "  \"CrossAttnUpBlock2D\"],"
    "\"upcast_attention\": false, \"use_linear_projection\": false}";

static const char vae_defaults[] =
    "{\"_class_name\": \"AutoencoderKL\", \"_diffusers_version\": " DIFFUSERS_VERSION ","
    "\"act_fn\": \"silu\", \"block_out_channels\": [128, 256, 512, 512],"
    "\"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\","
    "  \"DownEncoderBlock2D\"],"
    "\"force_upcast\": true, \"in_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2,"
    "\"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 512, \"scaling_factor\": 0.18215,"
    "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
    "  \"UpDecoderBlock2D\"]}";

/* CLIPTextConfig as the real SD text_encoder/config.json files hold it. */
static const char text_defaults[] =
    "{\"architectures\": [\"CLIPTextModel\"], \"attention_dropout\": 0.0, \"bos_token_id\": 0,"
    "\"dropout\": 0.0, \"eos_token_id\": 2, \"hidden_act\": \"quick_gelu\", \"hidden_size\": 768,"
    "\"initializer_factor\": 1.0, \"initializer_range\": 0.02, \"intermediate_size\": 3072,"
    "\"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77, \"model_type\": \"clip_text_model\","
    "\"num_attention_heads\": 12, \"num_hidden_layers\": 12, \"pad_token_id\": 1,"
    "\"projection_dim\": 768, \"torch_dtype\": \"float32\", \"transformers_version\": \"4.36.2\","
    "\"vocab_size\": 49408}";

/* PNDMScheduler, the scheduler StableDiffusionPipeline folders ship with. */
static const char scheduler_defaults[] =
    "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": " DIFFUSERS_VERSION ","
    "\"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
    "\"clip_sample\": false,"
    "\"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", \"set_alpha_to_one\": false,"
    "\"skip_prk_steps\": true, \"steps_offset\": 1, \"timestep_spacing\": \"leading\","
    "\"trained_betas\": null}";

/* StableDiffusionPipeline.save_pretrained without a safety checker. */
static const char model_index[] =
    "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": " DIFFUSERS_VERSION ","
    "\"feature_extractor\": [null, null], \"image_encoder\": [null, null],"
    "\"requires_safety_checker\": false, \"safety_checker\": [null, null],"
    "\"scheduler\": [\"diffusers\", \"PNDMScheduler\"], \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],"
    "\"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
    "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}";

#define SD2_TEXT "{\"hidden_act\": \"gelu\", \"hidden_size\": 1024, \"intermediate_size\": 4096," \
    "\"num_attention_heads\": 16, \"num_hidden_layers\": 23, \"projection_dim\": 512}"

/* Per kind: UNet, VAE, text overrides. The tiny kinds exercise the real configs' traps
 * (tiny-sd1: legacy attention_head_dim 8 = 8 heads; tiny-sd2: per-block head counts [1, 2],
 * head dim 64) and keep the rules single files are read by (text heads = width / 64). */
static const struct {
    const char *kind, *unet, *vae, *text;
} overrides[] = {
    {"sd15", "{}", "{}", "{}"},
    {"sd21",
     "{\"attention_head_dim\": [5, 10, 20, 20], \"cross_attention_dim\": 1024,"
     "\"use_linear_projection\": true, \"upcast_attention\": true, \"sample_size\": 96}",
     "{\"sample_size\": 768}", SD2_TEXT},
    {"sd21-base",
     "{\"attention_head_dim\": [5, 10, 20, 20], \"cross_attention_dim\": 1024,"
     "\"use_linear_projection\": true, \"upcast_attention\": false, \"sample_size\": 64}",
     "{}", SD2_TEXT},
    {"tiny-sd1",
     "{\"attention_head_dim\": 8, \"block_out_channels\": [32, 64], \"cross_attention_dim\": 128,"
     "\"layers_per_block\": 2, \"norm_num_groups\": 8,"
     "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
     "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"sample_size\": 16}",
     "{\"block_out_channels\": [32, 64], \"layers_per_block\": 1, \"norm_num_groups\": 8,"
     "\"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
     "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"], \"sample_size\": 32}",
     "{\"hidden_size\": 128, \"intermediate_size\": 200, \"num_attention_heads\": 2,"
     "\"num_hidden_layers\": 2, \"projection_dim\": 32}"},
    {"tiny-sd2",
     "{\"attention_head_dim\": [1, 2], \"block_out_channels\": [64, 128], \"cross_attention_dim\": 128,"
     "\"layers_per_block\": 1, \"norm_num_groups\": 32, \"use_linear_projection\": true,"
     "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
     "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"sample_size\": 16}",
     "{\"block_out_channels\": [16, 32, 32, 32], \"layers_per_block\": 1, \"norm_num_groups\": 8,"
     "\"sample_size\": 128}",
     "{\"hidden_act\": \"gelu\", \"hidden_size\": 128, \"intermediate_size\": 256,"
     "\"num_attention_heads\": 2, \"num_hidden_layers\": 3, \"projection_dim\": 64}"},
};

static const char *const config_paths[INIT_CFG_COUNT] = {
    "model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
    "scheduler/scheduler_config.json",
};
_Static_assert(N_OF(config_paths) == INIT_CFG_COUNT, "config_paths table");

const char *init_config_path(InitConfigFile which) { return config_paths[which]; }

/* ---- printing as Python's json.dumps(indent=2, sort_keys=True) ------------------------- */

static void put_indent(GString *g, int depth)
{
    g_string_append_c(g, '\n');
    for (int i = 0; i < depth; i++) g_string_append(g, "  ");
}

/* ensure_ascii string literal */
static void put_string(GString *g, const char *s)
{
    g_string_append_c(g, '"');
    for (const char *p = s; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);
        if (c == '"') g_string_append(g, "\\\"");
        else if (c == '\\') g_string_append(g, "\\\\");
        else if (c == '\n') g_string_append(g, "\\n");
        else if (c == '\r') g_string_append(g, "\\r");
        else if (c == '\t') g_string_append(g, "\\t");
        else if (c == '\b') g_string_append(g, "\\b");
        else if (c == '\f') g_string_append(g, "\\f");
        else if (c < 0x20 || (c >= 0x7f && c < 0x10000)) g_string_append_printf(g, "\\u%04x", c);
        else if (c >= 0x10000)
            g_string_append_printf(g, "\\u%04x\\u%04x", 0xd800 + ((c - 0x10000) >> 10),
                                   0xdc00 + ((c - 0x10000) & 0x3ff));
        else g_string_append_c(g, (char)c);
    }
    g_string_append_c(g, '"');
}

/* Python float repr: the shortest digits that read back as d; integral values keep ".0". */
static void put_double(GString *g, double d)
{
    char buf[40];
    if (isfinite(d) && d == floor(d) && fabs(d) < 1e16) {
        g_string_append_printf(g, "%.0f.0", d);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, d);
        if (g_ascii_strtod(buf, NULL) == d) break;
    }
    g_string_append(g, buf);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void put_node(GString *g, JsonNode *n, int depth)
{
    switch (json_node_get_node_type(n)) {
    case JSON_NODE_NULL:
        g_string_append(g, "null");
        break;
    case JSON_NODE_VALUE: {
        GType t = json_node_get_value_type(n);
        if (t == G_TYPE_BOOLEAN) g_string_append(g, json_node_get_boolean(n) ? "true" : "false");
        else if (t == G_TYPE_INT64) g_string_append_printf(g, "%" G_GINT64_FORMAT, json_node_get_int(n));
        else if (t == G_TYPE_DOUBLE) put_double(g, json_node_get_double(n));
        else put_string(g, json_node_get_string(n));
        break;
    }
    case JSON_NODE_ARRAY: {
        JsonArray *a = json_node_get_array(n);
        guint len = json_array_get_length(a);
        if (!len) {
            g_string_append(g, "[]");
            break;
        }
        g_string_append_c(g, '[');
        for (guint i = 0; i < len; i++) {
            if (i) g_string_append_c(g, ',');
            put_indent(g, depth + 1);
            put_node(g, json_array_get_element(a, i), depth + 1);
        }
        put_indent(g, depth);
        g_string_append_c(g, ']');
        break;
    }
    case JSON_NODE_OBJECT: {
        JsonObject *o = json_node_get_object(n);
        GList *members = json_object_get_members(o);
        guint len = g_list_length(members), i = 0;
        if (!len) {
            g_string_append(g, "{}");
            break;
        }
        const char **keys = g_new(const char *, len);
        for (GList *l = members; l; l = l->next) keys[i++] = l->data;
        qsort(keys, len, sizeof *keys, str_cmp);
        g_string_append_c(g, '{');
        for (i = 0; i < len; i++) {
            if (i) g_string_append_c(g, ',');
            put_indent(g, depth + 1);
            put_string(g, keys[i]);
            g_string_append(g, ": ");
            put_node(g, json_object_get_member(o, keys[i]), depth + 1);
        }
        put_indent(g, depth);
        g_string_append_c(g, '}');
        g_free(keys);
        g_list_free(members);
        break;
    }
    }
}

/* Parses one of the static texts above (they are valid: a failure is a bug, caught by tests). */
static JsonNode *parse_text(const char *text)
{
    JsonParser *p = json_parser_new();
    JsonNode *root = NULL;
    if (json_parser_load_from_data(p, text, -1, NULL)) root = json_node_copy(json_parser_get_root(p));
    g_object_unref(p);
    return root;
}

static const char *override_text(const InitArch *a, InitConfigFile which)
{
    for (size_t i = 0; i < N_OF(overrides); i++)
        if (!strcmp(overrides[i].kind, a->kind))
            return which == INIT_CFG_UNET ? overrides[i].unet
                 : which == INIT_CFG_VAE  ? overrides[i].vae
                                          : overrides[i].text;
    return "{}";
}

char *init_config_json(const InitArch *a, InitConfigFile which)
{
    static const char *const base[INIT_CFG_COUNT] = {model_index, unet_defaults, vae_defaults,
                                                     text_defaults, scheduler_defaults};
    JsonNode *root = parse_text(base[which]);
    if (!root) return NULL;
    JsonObject *o = json_node_get_object(root);
    if (which == INIT_CFG_UNET || which == INIT_CFG_VAE || which == INIT_CFG_TEXT) {
        JsonNode *over = parse_text(override_text(a, which));
        if (!over) {
            json_node_unref(root);
            return NULL;
        }
        JsonObject *ov = json_node_get_object(over);
        GList *members = json_object_get_members(ov);
        for (GList *l = members; l; l = l->next)
            json_object_set_member(o, l->data, json_node_copy(json_object_get_member(ov, l->data)));
        g_list_free(members);
        json_node_unref(over);
    } else if (which == INIT_CFG_SCHEDULER) {
        json_object_set_string_member(o, "prediction_type",
                                      a->prediction == DB_PRED_V ? "v_prediction" : "epsilon");
    }
    GString *g = g_string_new(NULL);
    put_node(g, root, 0);
    g_string_append_c(g, '\n');
    json_node_unref(root);
    return g_string_free(g, FALSE);
}

DbStatus init_arch_configs(const InitArch *a, UnetConfig *u, VaeConfig *v, ClipConfig *c,
                           DbError *err)
{
    DbStatus st = DB_OK;
    for (int w = INIT_CFG_UNET; w <= INIT_CFG_TEXT && st == DB_OK; w++) {
        char *text = init_config_json(a, (InitConfigFile)w);
        if (!text) return db_fail(err, DB_ERR_FORMAT, "%s: built-in %s is not valid JSON", a->arch, config_paths[w]);
        if (w == INIT_CFG_UNET) st = unet_config_parse(u, text, config_paths[w], err);
        else if (w == INIT_CFG_VAE) st = vae_config_parse(v, text, config_paths[w], err);
        else st = clip_config_parse(c, text, config_paths[w], err);
        g_free(text);
    }
    if (st == DB_OK) c->pad_id = a->family == DB_FAMILY_SD2 ? 0 : CLIP_EOS;
    return st;
}

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

void init_configs_inferable(DbFamily family, UnetConfig *u, VaeConfig *v, ClipConfig *c)
{
    if (c->hidden % 64 || c->hidden < 128) c->hidden = 128; /* at least 2 heads of 64 */
    c->heads = c->hidden / 64;
    u->cross_dim = c->hidden;
    u->norm_groups = v->norm_groups = 32;
    for (int b = 0; b < u->n_blocks; b++) {
        if (family == DB_FAMILY_SD1) {
            u->heads[b] = 8;
        } else {
            u->block_out[b] = round_up(u->block_out[b] > 64 ? u->block_out[b] : 64, 64);
            u->heads[b] = u->block_out[b] / 64;
        }
    }
    u->time_embed_dim = 4 * u->block_out[0];
    for (int b = 0; b < v->n_blocks; b++)
        v->block_out[b] = round_up(v->block_out[b] > 32 ? v->block_out[b] : 32, 32);
}
