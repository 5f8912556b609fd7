/* Model loading: parameter enumeration (counts and order), the LDM key map (round trips on
 * SD1.5/SD2.1-shaped configs), config parsing (incl. the legacy attention_head_dim trap and
 * malformed values), and db_model_open end to end on tiny models this test writes in both
 * layouts (diffusers folder; LDM single file, SD1 and SD2/OpenCLIP) plus broken variants.
 * Weights loaded must equal the bytes written exactly. Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "keymap.h"
#include "unet.h"

#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_failed, n_checks;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        n_checks++;                                                                        \
        if (!(cond)) {                                                                     \
            printf("FAIL %s:%d: ", __func__, __LINE__);                                    \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
            n_failed++;                                                                    \
        }                                                                                  \
    } while (0)

/* ---- enumeration ---------------------------------------------------------------------- */

typedef struct {
    int n;
    int64_t params;
    GPtrArray *names; /* may be NULL */
} Count;

static int count_cb(void *user, const char *name, int ndim, const int64_t *shape)
{
    Count *c = user;
    int64_t e = 1;
    for (int i = 0; i < ndim; i++) e *= shape[i];
    c->n++;
    c->params += e;
    if (c->names) g_ptr_array_add(c->names, g_strdup(name));
    return 0;
}

static int index_of(GPtrArray *a, const char *name)
{
    for (guint i = 0; i < a->len; i++)
        if (strcmp(g_ptr_array_index(a, i), name) == 0) return (int)i;
    return -1;
}

static void test_enum_counts(void)
{
    UnetConfig u1, u2;
    VaeConfig v;
    ClipConfig c1, c2;
    unet_config_sd1(&u1);
    unet_config_sd2(&u2);
    vae_config_sd(&v);
    clip_config_sd1(&c1);
    clip_config_sd2(&c2);
    Count k = {0, 0, g_ptr_array_new_with_free_func(g_free)};
    unet_enum_params(&u1, count_cb, &k);
    CHECK(k.n == 686 && k.params == 859520964, "SD1.5 UNet: %d tensors, %lld params", k.n, (long long)k.params);
    /* diffusers state_dict order: conv_in, time_embedding, down, up, mid, conv_norm_out, conv_out */
    CHECK(strcmp(g_ptr_array_index(k.names, 0), "conv_in.weight") == 0, "first UNet param");
    CHECK(strcmp(g_ptr_array_index(k.names, k.names->len - 1), "conv_out.bias") == 0, "last UNet param");
    int iu = index_of(k.names, "up_blocks.0.resnets.0.norm1.weight");
    int im = index_of(k.names, "mid_block.attentions.0.norm.weight");
    int ia = index_of(k.names, "down_blocks.0.attentions.0.norm.weight");
    int ir = index_of(k.names, "down_blocks.0.resnets.0.norm1.weight");
    CHECK(iu >= 0 && im > iu && ia >= 0 && ir > ia, "UNet order: up %d < mid %d, attn %d < resnet %d", iu, im, ia, ir);
    g_ptr_array_free(k.names, TRUE);

    Count k2 = {0, 0, NULL};
    unet_enum_params(&u2, count_cb, &k2);
    CHECK(k2.n == 686 && k2.params == 865910724, "SD2.1 UNet: %d tensors, %lld params", k2.n, (long long)k2.params);
    Count kv = {0, 0, NULL};
    vae_enum_params(&v, count_cb, &kv);
    CHECK(kv.n == 248 && kv.params == 83653863, "VAE: %d tensors, %lld params", kv.n, (long long)kv.params);
    Count kc = {0, 0, NULL};
    clip_enum_params(&c1, count_cb, &kc);
    CHECK(kc.n == 196 && kc.params == 123060480, "SD1 text: %d tensors, %lld params", kc.n, (long long)kc.params);
    Count kc2 = {0, 0, NULL};
    clip_enum_params(&c2, count_cb, &kc2);
    CHECK(kc2.n == 372 && kc2.params == 340387840, "SD2 text: %d tensors, %lld params", kc2.n, (long long)kc2.params);
}

/* ---- key map -------------------------------------------------------------------------- */

typedef struct {
    const Keymap *km;
    GHashTable *seen; /* "ldm#part" */
    int n, bad;
} Trip;

static int trip_cb(void *user, const char *name, int ndim, const int64_t *shape)
{
    Trip *t = user;
    char ldm[256], back[256];
    int part = -2;
    t->n++;
    if (!keymap_to_ldm(t->km, name, ldm, sizeof ldm, &part)) {
        if (t->bad++ < 5) printf("FAIL: %s has no LDM name\n", name);
        return 0;
    }
    if (!keymap_from_ldm(t->km, ldm, part, back, sizeof back) || strcmp(back, name) != 0) {
        if (t->bad++ < 5) printf("FAIL: %s -> %s (part %d) -> %s\n", name, ldm, part, back);
        return 0;
    }
    char *key = g_strdup_printf("%s#%d", ldm, part);
    if (g_hash_table_contains(t->seen, key)) {
        if (t->bad++ < 5) printf("FAIL: two names map to %s\n", key);
        g_free(key);
    } else {
        g_hash_table_add(t->seen, key);
    }
    return 0;
}

static void expect_map(const Keymap *km, const char *canonical, const char *ldm_want, int part_want)
{
    char ldm[256];
    int part = -2;
    int ok = keymap_to_ldm(km, canonical, ldm, sizeof ldm, &part);
    CHECK(ok && strcmp(ldm, ldm_want) == 0 && part == part_want, "%s -> %s part %d (want %s part %d)",
          canonical, ok ? ldm : "(none)", part, ldm_want, part_want);
}

static void round_trip(const UnetConfig *u, const VaeConfig *v, const ClipConfig *c, KeymapClip clip,
                       const char *what)
{
    Keymap km;
    DbError err;
    CHECK(keymap_ldm_build(&km, u, v, c->layers, clip, &err) == DB_OK, "%s: build", what);
    Trip t = {&km, g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL), 0, 0};
    unet_enum_params(u, trip_cb, &t);
    vae_enum_params(v, trip_cb, &t);
    clip_enum_params(c, trip_cb, &t);
    CHECK(t.bad == 0 && t.n > 1000, "%s: %d of %d names do not round-trip", what, t.bad, t.n);
    g_hash_table_destroy(t.seen);
    /* anchors (formats.md, diffusers single_file_utils.py) */
    expect_map(&km, "conv_in.weight", "model.diffusion_model.input_blocks.0.0.weight", -1);
    expect_map(&km, "time_embedding.linear_2.bias", "model.diffusion_model.time_embed.2.bias", -1);
    expect_map(&km, "down_blocks.0.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight", -1);
    expect_map(&km, "down_blocks.1.resnets.0.conv_shortcut.weight", "model.diffusion_model.input_blocks.4.0.skip_connection.weight", -1);
    expect_map(&km, "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight",
               "model.diffusion_model.input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight", -1);
    expect_map(&km, "mid_block.resnets.1.time_emb_proj.weight", "model.diffusion_model.middle_block.2.emb_layers.1.weight", -1);
    expect_map(&km, "mid_block.attentions.0.proj_in.bias", "model.diffusion_model.middle_block.1.proj_in.bias", -1);
    expect_map(&km, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.1.conv.weight", -1);
    expect_map(&km, "up_blocks.1.upsamplers.0.conv.bias", "model.diffusion_model.output_blocks.5.2.conv.bias", -1);
    expect_map(&km, "up_blocks.3.attentions.2.proj_out.weight", "model.diffusion_model.output_blocks.11.1.proj_out.weight", -1);
    expect_map(&km, "conv_norm_out.weight", "model.diffusion_model.out.0.weight", -1);
    expect_map(&km, "decoder.up_blocks.0.resnets.2.conv1.weight", "first_stage_model.decoder.up.3.block.2.conv1.weight", -1);
    expect_map(&km, "decoder.up_blocks.3.resnets.0.conv_shortcut.bias", "first_stage_model.decoder.up.0.block.0.nin_shortcut.bias", -1);
    expect_map(&km, "encoder.mid_block.attentions.0.to_out.0.weight", "first_stage_model.encoder.mid.attn_1.proj_out.weight", -1);
    expect_map(&km, "encoder.conv_norm_out.bias", "first_stage_model.encoder.norm_out.bias", -1);
    if (clip == KEYMAP_CLIP_OPENCLIP) {
        expect_map(&km, "text_model.encoder.layers.22.self_attn.k_proj.weight",
                   "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight", 1);
        expect_map(&km, "text_model.encoder.layers.0.self_attn.v_proj.bias",
                   "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", 2);
        expect_map(&km, "text_model.embeddings.position_embedding.weight", "cond_stage_model.model.positional_embedding", -1);
        expect_map(&km, "text_model.final_layer_norm.bias", "cond_stage_model.model.ln_final.bias", -1);
        char out[256];
        CHECK(!keymap_from_ldm(&km, "cond_stage_model.model.transformer.resblocks.23.ln_1.weight", -1, out, sizeof out),
              "the 24th OpenCLIP block must not map (diffusers keeps 23)");
        CHECK(!keymap_from_ldm(&km, "cond_stage_model.model.text_projection", -1, out, sizeof out), "text_projection ignored");
    } else {
        expect_map(&km, "text_model.encoder.layers.11.mlp.fc2.bias",
                   clip == KEYMAP_CLIP_OPENAI ? "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"
                                              : "cond_stage_model.transformer.encoder.layers.11.mlp.fc2.bias", -1);
    }
    keymap_free(&km);
}

static void test_keymap(void)
{
    UnetConfig u1, u2;
    VaeConfig v;
    ClipConfig c1, c2;
    unet_config_sd1(&u1);
    unet_config_sd2(&u2);
    vae_config_sd(&v);
    clip_config_sd1(&c1);
    clip_config_sd2(&c2);
    round_trip(&u1, &v, &c1, KEYMAP_CLIP_OPENAI, "SD1.5");
    round_trip(&u1, &v, &c1, KEYMAP_CLIP_OPENAI_BARE, "SD1.5 without text_model.");
    round_trip(&u2, &v, &c2, KEYMAP_CLIP_OPENCLIP, "SD2.1");
    /* an odd structure: 3 blocks, 1 layer, attention only in the middle block */
    UnetConfig u3 = u1;
    u3.n_blocks = 3;
    u3.layers_per_block = 1;
    int dc[3] = {0, 1, 0}, uc[3] = {0, 1, 0};
    memcpy(u3.down_cross, dc, sizeof dc);
    memcpy(u3.up_cross, uc, sizeof uc);
    Keymap km;
    DbError err;
    keymap_ldm_build(&km, &u3, &v, c1.layers, KEYMAP_CLIP_OPENAI, &err);
    Trip t = {&km, g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL), 0, 0};
    unet_enum_params(&u3, trip_cb, &t);
    CHECK(t.bad == 0, "3-block L=1 UNet: %d names do not round-trip", t.bad);
    expect_map(&km, "down_blocks.1.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.4.0.op.weight", -1);
    expect_map(&km, "up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.3.2.conv.weight", -1);
    expect_map(&km, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.1.1.conv.weight", -1);
    g_hash_table_destroy(t.seen);
    keymap_free(&km);
}

/* ---- config parsing ------------------------------------------------------------------- */

/* diffusers' published SD 1.5 unet/config.json (abridged to the keys that matter). */
static const char *sd15_unet_json =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"attention_head_dim\": 8,"
    " \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false,"
    " \"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1,"
    " \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2,"
    " \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4,"
    " \"sample_size\": 64, \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"], \"class_embed_type\": null,"
    " \"num_attention_heads\": null}";

/* SD 2.1: heads as a list under the legacy key (5, 10, 20, 20 heads: head dim 64). */
static const char *sd21_unet_json =
    "{\"attention_head_dim\": [5, 10, 20, 20], \"block_out_channels\": [320, 640, 1280, 1280],"
    " \"cross_attention_dim\": 1024, \"down_block_types\": [\"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"layers_per_block\": 2,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\"], \"use_linear_projection\": true, \"upcast_attention\": true,"
    " \"sample_size\": 96, \"dual_cross_attention\": false}";

static void expect_unet_err(const char *json, DbStatus want, const char *needle)
{
    UnetConfig c;
    DbError err = {0};
    DbStatus st = unet_config_parse(&c, json, "x/unet/config.json", &err);
    CHECK(st == want && strstr(err.msg, "x/unet/config.json") && strstr(err.msg, needle),
          "unet %s: got %s \"%s\" (want %s mentioning %s)", json, db_status_name(st), err.msg,
          db_status_name(want), needle);
}

static void test_configs(void)
{
    UnetConfig c, ref;
    DbError err = {0};
    CHECK(unet_config_parse(&c, sd15_unet_json, "sd15", &err) == DB_OK, "sd15: %s", err.msg);
    unet_config_sd1(&ref);
    CHECK(memcmp(&c, &ref, sizeof c) == 0, "SD1.5 config.json differs from unet_config_sd1");
    CHECK(c.heads[0] == 8 && c.heads[3] == 8, "SD1.5: attention_head_dim 8 means 8 heads");
    CHECK(unet_config_parse(&c, sd21_unet_json, "sd21", &err) == DB_OK, "sd21: %s", err.msg);
    unet_config_sd2(&ref);
    CHECK(memcmp(&c, &ref, sizeof c) == 0, "SD2.1 config.json differs from unet_config_sd2");
    CHECK(c.heads[0] == 5 && c.heads[2] == 20, "SD2.1: attention_head_dim [5,10,20,20] are head counts");
    /* num_attention_heads, when given, wins over the legacy key */
    CHECK(unet_config_parse(&c, "{\"num_attention_heads\": 4, \"attention_head_dim\": 64}", "x", &err) == DB_OK &&
          c.heads[0] == 4 && c.heads[3] == 4, "num_attention_heads 4 over attention_head_dim 64: %d", c.heads[0]);
    CHECK(unet_config_parse(&c, "{\"attention_head_dim\": 5}", "x", &err) == DB_OK && c.heads[1] == 5,
          "attention_head_dim 5 means 5 heads");

    expect_unet_err("[1, 2]", DB_ERR_FORMAT, "not a JSON object");
    expect_unet_err("{\"in_channels\": 4,", DB_ERR_FORMAT, "invalid JSON");
    expect_unet_err("{\"block_out_channels\": \"320\"}", DB_ERR_FORMAT, "block_out_channels");
    expect_unet_err("{\"block_out_channels\": [320, -640, 1280, 1280]}", DB_ERR_MODEL, "block_out_channels[1]");
    expect_unet_err("{\"block_out_channels\": [320, 640, 1280, 70000]}", DB_ERR_MODEL, "block_out_channels[3]");
    expect_unet_err("{\"block_out_channels\": [32, 32, 32, 32, 32, 32, 32, 32, 32]}", DB_ERR_MODEL, "block_out_channels");
    expect_unet_err("{\"block_out_channels\": [320.5, 640, 1280, 1280]}", DB_ERR_FORMAT, "block_out_channels[0]");
    expect_unet_err("{\"attention_head_dim\": 7}", DB_ERR_MODEL, "heads");
    expect_unet_err("{\"attention_head_dim\": [8, 8]}", DB_ERR_MODEL, "attention_head_dim");
    expect_unet_err("{\"num_attention_heads\": \"8\"}", DB_ERR_FORMAT, "num_attention_heads");
    expect_unet_err("{\"layers_per_block\": 1000}", DB_ERR_MODEL, "layers_per_block");
    expect_unet_err("{\"norm_num_groups\": 48}", DB_ERR_MODEL, "norm_num_groups");
    expect_unet_err("{\"in_channels\": 9}", DB_ERR_UNSUPPORTED, "inpainting");
    expect_unet_err("{\"use_linear_projection\": 1}", DB_ERR_FORMAT, "use_linear_projection");
    expect_unet_err("{\"down_block_types\": [\"CrossAttnDownBlock2D\", \"SimpleCrossAttnDownBlock2D\", "
                    "\"CrossAttnDownBlock2D\", \"DownBlock2D\"]}", DB_ERR_UNSUPPORTED, "down_block_types[1]");
    expect_unet_err("{\"addition_embed_type\": \"text_time\"}", DB_ERR_UNSUPPORTED, "addition_embed_type");
    expect_unet_err("{\"transformer_layers_per_block\": 2}", DB_ERR_MODEL, "transformer_layers_per_block");

    VaeConfig v, vref;
    CHECK(vae_config_parse(&v, "{\"block_out_channels\": [128, 256, 512, 512], \"layers_per_block\": 2,"
                               " \"sample_size\": 512, \"down_block_types\": [\"DownEncoderBlock2D\","
                               " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]}",
                          "vae", &err) == DB_OK, "vae: %s", err.msg);
    vae_config_sd(&vref);
    CHECK(memcmp(&v, &vref, sizeof v) == 0, "SD VAE config differs from vae_config_sd");
    DbStatus st = vae_config_parse(&v, "{\"latent_channels\": -4}", "x/vae/config.json", &err);
    CHECK(st == DB_ERR_MODEL && strstr(err.msg, "x/vae/config.json: latent_channels"), "vae latent -4: %s", err.msg);

    ClipConfig t, tref;
    CHECK(clip_config_parse(&t, "{\"hidden_act\": \"gelu\", \"hidden_size\": 1024, \"intermediate_size\": 4096,"
                                " \"num_attention_heads\": 16, \"num_hidden_layers\": 23}", "te", &err) == DB_OK,
          "sd2 text: %s", err.msg);
    clip_config_sd2(&tref);
    t.pad_id = tref.pad_id; /* padding comes from the tokenizer files, not config.json */
    CHECK(memcmp(&t, &tref, sizeof t) == 0, "SD2 text config differs from clip_config_sd2");
    st = clip_config_parse(&t, "{\"hidden_size\": 768, \"num_attention_heads\": 10}", "x/te.json", &err);
    CHECK(st == DB_ERR_MODEL && strstr(err.msg, "x/te.json: num_attention_heads"), "heads 10 of 768: %s", err.msg);
    st = clip_config_parse(&t, "{\"hidden_act\": \"relu\"}", "x/te.json", &err);
    CHECK(st == DB_ERR_UNSUPPORTED && strstr(err.msg, "hidden_act"), "relu: %s", err.msg);
    st = clip_config_parse(&t, "{\"num_hidden_layers\": true}", "x/te.json", &err);
    CHECK(st == DB_ERR_FORMAT && strstr(err.msg, "num_hidden_layers"), "layers true: %s", err.msg);
}

/* ---- end to end: tiny models written here in both layouts ----------------------------- */

static char *tmpdir;

typedef struct {
    char *name;
    int ndim;
    int64_t shape[4];
    size_t nbytes;
    DbDtype dt;
    unsigned char *data;
} Param;

typedef struct {
    GPtrArray *ps; /* Param* */
    DbDtype dt;
    uint32_t seed;
} Gen;

static void param_free(gpointer p)
{
    Param *q = p;
    g_free(q->name);
    g_free(q->data);
    g_free(q);
}

static int gen_cb(void *user, const char *name, int ndim, const int64_t *shape)
{
    Gen *g = user;
    Param *p = g_new0(Param, 1);
    p->name = g_strdup(name);
    p->ndim = ndim;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)(p->shape[i] = shape[i]);
    p->dt = g->dt;
    p->nbytes = n * dtype_size(g->dt);
    p->data = g_malloc(p->nbytes);
    float *f = g_new(float, n);
    for (size_t i = 0; i < n; i++) {
        g->seed = g->seed * 1664525u + 1013904223u;
        f[i] = (float)(g->seed >> 8) / 16777216.0f - 0.5f;
    }
    dtype_from_f32(p->data, g->dt, f, n);
    g_free(f);
    g_ptr_array_add(g->ps, p);
    return 0;
}

typedef struct {
    UnetConfig u;
    VaeConfig v;
    ClipConfig c;
    DbFamily family;
    GPtrArray *net[NET_COUNT];
} Tiny;

static void tiny_make(Tiny *t, DbFamily family, DbDtype dt)
{
    static const UnetConfig u = {
        .in_channels = 4, .out_channels = 4, .sample_size = 64, .n_blocks = 2, .block_out = {64, 128},
        .layers_per_block = 1, .down_cross = {1, 0}, .up_cross = {0, 1}, .heads = {8, 8},
        .cross_dim = 64, .norm_groups = 32, .norm_eps = 1e-5f, .flip_sin_to_cos = 1,
        .time_embed_dim = 256,
    };
    static const VaeConfig v = {
        .in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_blocks = 2, .block_out = {32, 64},
        .layers_per_block = 1, .norm_groups = 32, .scaling_factor = 0.18215f, .sample_size = 512,
    };
    static const ClipConfig c = {
        .vocab_size = 1000, .hidden = 64, .intermediate = 96, .heads = 1, .layers = 2, .max_pos = 77,
        .ln_eps = 1e-5f, .act = CLIP_ACT_QUICK_GELU, .pad_id = CLIP_EOS,
    };
    t->u = u;
    t->v = v;
    t->c = c;
    t->family = family;
    if (family == DB_FAMILY_SD2) { /* SD2 rules: head dim 64, Linear proj_in, OpenCLIP gelu */
        t->u.heads[0] = 1;
        t->u.heads[1] = 2;
        t->u.use_linear_projection = 1;
        t->c.act = CLIP_ACT_GELU;
        t->c.pad_id = 0;
    }
    for (int n = 0; n < NET_COUNT; n++) {
        Gen g = {g_ptr_array_new_with_free_func(param_free), dt, 12345u + (uint32_t)n};
        if (n == NET_TEXT) clip_enum_params(&t->c, gen_cb, &g);
        else if (n == NET_UNET) unet_enum_params(&t->u, gen_cb, &g);
        else vae_enum_params(&t->v, gen_cb, &g);
        t->net[n] = g.ps;
    }
}

static void tiny_free(Tiny *t)
{
    for (int n = 0; n < NET_COUNT; n++) g_ptr_array_free(t->net[n], TRUE);
}

static void put(const char *path, const char *text)
{
    GError *e = NULL;
    char *dir = g_path_get_dirname(path);
    g_mkdir_with_parents(dir, 0700);
    g_free(dir);
    if (!g_file_set_contents(path, text, -1, &e)) {
        printf("FAIL: cannot write %s: %s\n", path, e->message);
        exit(1);
    }
}

static void save(SafetensorsWriter *w, const char *path)
{
    DbError err;
    char *dir = g_path_get_dirname(path);
    g_mkdir_with_parents(dir, 0700);
    g_free(dir);
    if (safetensors_writer_save(w, path, &err) != DB_OK) {
        printf("FAIL: %s\n", err.msg);
        exit(1);
    }
    safetensors_writer_free(w);
}

static void add(SafetensorsWriter *w, const char *name, DbDtype dt, int ndim, const int64_t *shape,
                const void *data)
{
    DbError err;
    if (safetensors_writer_add(w, name, dt, ndim, shape, data, &err) != DB_OK) {
        printf("FAIL: writer: %s\n", err.msg);
        exit(1);
    }
}

static char *ints(const int *v, int n)
{
    GString *s = g_string_new("[");
    for (int i = 0; i < n; i++) g_string_append_printf(s, "%s%d", i ? ", " : "", v[i]);
    g_string_append(s, "]");
    return g_string_free(s, FALSE);
}

/* A diffusers folder; old_vae_names: query/key/value/proj_attn as diffusers < 0.14 wrote. */
static char *write_diffusers(const Tiny *t, const char *name, int old_vae_names)
{
    char *root = g_build_filename(tmpdir, name, NULL), *p;
    const UnetConfig *u = &t->u;
    char *bo = ints(u->block_out, u->n_blocks), *hd = ints(u->heads, u->n_blocks), *vbo = ints(t->v.block_out, t->v.n_blocks);
    char *js = g_strdup_printf(
        "{\"block_out_channels\": %s, \"attention_head_dim\": %s, \"layers_per_block\": 1, \"cross_attention_dim\": 64,"
        " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\","
        " \"CrossAttnUpBlock2D\"], \"use_linear_projection\": %s, \"sample_size\": 64}", bo, hd,
        u->use_linear_projection ? "true" : "false");
    put((p = g_build_filename(root, "unet", "config.json", NULL)), js);
    g_free(p);
    g_free(js);
    js = g_strdup_printf("{\"block_out_channels\": %s, \"layers_per_block\": 1, \"down_block_types\": [\"DownEncoderBlock2D\","
                         " \"DownEncoderBlock2D\"], \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"],"
                         " \"sample_size\": 512}", vbo);
    put((p = g_build_filename(root, "vae", "config.json", NULL)), js);
    g_free(p);
    g_free(js);
    js = g_strdup_printf("{\"vocab_size\": 1000, \"hidden_size\": 64, \"intermediate_size\": 96, \"num_attention_heads\": 1,"
                         " \"num_hidden_layers\": 2, \"hidden_act\": \"%s\"}", t->c.act == CLIP_ACT_GELU ? "gelu" : "quick_gelu");
    put((p = g_build_filename(root, "text_encoder", "config.json", NULL)), js);
    g_free(p);
    g_free(js);
    g_free(bo);
    g_free(hd);
    g_free(vbo);
    put((p = g_build_filename(root, "model_index.json", NULL)), "{\"_class_name\": \"StableDiffusionPipeline\"}");
    g_free(p);
    put((p = g_build_filename(root, "scheduler", "scheduler_config.json", NULL)), "{\"prediction_type\": \"v_prediction\"}");
    g_free(p);
    put((p = g_build_filename(root, "tokenizer", "special_tokens_map.json", NULL)),
        t->family == DB_FAMILY_SD2 ? "{\"pad_token\": \"!\"}" : "{\"pad_token\": {\"content\": \"<|endoftext|>\"}}");
    g_free(p);
    static const char *const files[NET_COUNT] = {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                                                 "vae/diffusion_pytorch_model.safetensors"};
    for (int n = 0; n < NET_COUNT; n++) {
        SafetensorsWriter *w = safetensors_writer_new();
        for (guint i = 0; i < t->net[n]->len; i++) {
            const Param *q = g_ptr_array_index(t->net[n], i);
            char nm[256];
            g_strlcpy(nm, q->name, sizeof nm);
            char *hit;
            if (old_vae_names && n == NET_VAE && (hit = strstr(nm, "attentions.0.to_q."))) {
                char *o = g_strdup_printf("%.*sattentions.0.query.%s", (int)(hit - nm), nm, hit + strlen("attentions.0.to_q."));
                g_strlcpy(nm, o, sizeof nm);
                g_free(o);
            }
            if (old_vae_names && n == NET_VAE && (hit = strstr(nm, "attentions.0.to_out.0."))) {
                char *o = g_strdup_printf("%.*sattentions.0.proj_attn.%s", (int)(hit - nm), nm, hit + strlen("attentions.0.to_out.0."));
                g_strlcpy(nm, o, sizeof nm);
                g_free(o);
            }
            add(w, nm, q->dt, q->ndim, q->shape, q->data);
        }
        if (n == NET_TEXT) { /* a buffer older transformers saved: tolerated, unused */
            int64_t ids[77], shape[2] = {1, 77};
            for (int i = 0; i < 77; i++) ids[i] = i;
            add(w, "text_model.embeddings.position_ids", DB_DTYPE_I64, 2, shape, ids);
        }
        save(w, (p = g_build_filename(root, files[n], NULL)));
        g_free(p);
    }
    return root;
}

typedef enum { MUT_NONE, MUT_SHAPE, MUT_DTYPE, MUT_MISSING, MUT_INPAINT } Mutation;

static const Param *find_param(const Tiny *t, int net, const char *name)
{
    for (guint i = 0; i < t->net[net]->len; i++) {
        const Param *q = g_ptr_array_index(t->net[net], i);
        if (strcmp(q->name, name) == 0) return q;
    }
    return NULL;
}

/* An LDM single file with the extras real files carry (EMA, buffers, SD2's 24th block). */
static char *write_single(const Tiny *t, const char *name, KeymapClip clip, Mutation mut, const char *pred)
{
    Keymap km;
    DbError err;
    keymap_ldm_build(&km, &t->u, &t->v, t->c.layers, clip, &err);
    SafetensorsWriter *w = safetensors_writer_new();
    for (int n = 0; n < NET_COUNT; n++)
        for (guint i = 0; i < t->net[n]->len; i++) {
            const Param *q = g_ptr_array_index(t->net[n], i);
            char ldm[256];
            int part;
            keymap_to_ldm(&km, q->name, ldm, sizeof ldm, &part);
            int64_t shape[4];
            memcpy(shape, q->shape, sizeof shape);
            int ndim = q->ndim;
            DbDtype dt = q->dt;
            if (part > 0) continue;
            if (part == 0) { /* pack q, k, v rows into in_proj [3C, ...] */
                size_t nb = q->nbytes;
                unsigned char *packed = g_malloc(3 * nb);
                static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
                for (int s = 0; s < 3; s++) {
                    char *other = g_strdup(q->name);
                    memcpy(strstr(other, "q_proj"), qkv[s], 6);
                    memcpy(packed + s * nb, find_param(t, n, other)->data, nb);
                    g_free(other);
                }
                shape[0] *= 3;
                add(w, ldm, dt, ndim, shape, packed);
                g_free(packed);
                continue;
            }
            if (n == NET_VAE && strstr(q->name, "mid_block.attentions.0.to_") && ndim == 2) {
                shape[2] = shape[3] = 1; /* LDM: 1x1 convs */
                ndim = 4;
            }
            const void *data = q->data;
            unsigned char *big = NULL;
            if (mut == MUT_SHAPE && strcmp(q->name, "down_blocks.0.resnets.0.conv1.weight") == 0) {
                ndim = 3;
                shape[2] = 9;
            }
            if (mut == MUT_DTYPE && strcmp(q->name, "conv_in.bias") == 0) dt = DB_DTYPE_I16;
            if (mut == MUT_MISSING && strcmp(q->name, "mid_block.resnets.1.conv2.weight") == 0) continue;
            if (mut == MUT_INPAINT && strcmp(q->name, "conv_in.weight") == 0) {
                shape[1] = 9;
                data = big = g_malloc0(q->nbytes / 4 * 9);
            }
            add(w, ldm, dt, ndim, shape, data);
            g_free(big);
        }
    float zero = 0.0f, alphas[10] = {0};
    int64_t s10[1] = {10}, s1[1] = {64};
    add(w, "model_ema.decay", DB_DTYPE_F32, 0, s10, &zero);
    add(w, "alphas_cumprod", DB_DTYPE_F32, 1, s10, alphas);
    if (clip == KEYMAP_CLIP_OPENCLIP) {
        float ln[64] = {0};
        char nm[128];
        snprintf(nm, sizeof nm, "cond_stage_model.model.transformer.resblocks.%d.ln_1.weight", t->c.layers);
        add(w, nm, DB_DTYPE_F32, 1, s1, ln);
        add(w, "cond_stage_model.model.logit_scale", DB_DTYPE_F32, 0, s10, &zero);
        /* the whole OpenCLIP text tower, as Stability's files carry it: the last block is
         * then skipped (penultimate layer) */
        static float proj[64 * 64];
        int64_t s2[2] = {64, 64};
        add(w, "cond_stage_model.model.text_projection", DB_DTYPE_F32, 2, s2, proj);
    } else {
        int64_t ids[77], shape[2] = {1, 77};
        for (int i = 0; i < 77; i++) ids[i] = i;
        add(w, clip == KEYMAP_CLIP_OPENAI ? "cond_stage_model.transformer.text_model.embeddings.position_ids"
                                          : "cond_stage_model.transformer.embeddings.position_ids",
            DB_DTYPE_I64, 2, shape, ids);
    }
    if (pred) safetensors_writer_meta(w, "modelspec.prediction_type", pred);
    char *path = g_build_filename(tmpdir, name, NULL);
    save(w, path);
    keymap_free(&km);
    return path;
}

/* Every weight equals the bytes written, with the canonical shape; configs and counts match. */
static void compare(const DbModel *m, const Tiny *t, const char *what)
{
    int bad = 0;
    for (int n = 0; n < NET_COUNT; n++) {
        int64_t total = 0;
        for (guint i = 0; i < t->net[n]->len; i++) {
            const Param *q = g_ptr_array_index(t->net[n], i);
            const DbWeight *w = model_weight(m, q->name);
            int ok = w && w->t.dtype == q->dt && w->t.ndim == q->ndim && w->t.nbytes == q->nbytes &&
                     memcmp(w->t.shape, q->shape, (size_t)q->ndim * sizeof(int64_t)) == 0 &&
                     memcmp(w->t.data, q->data, q->nbytes) == 0;
            if (!ok && bad++ < 5) printf("FAIL: %s: weight %s differs (%s)\n", what, q->name, w ? w->src_name : "missing");
            total += (int64_t)(q->nbytes / dtype_size(q->dt));
        }
        CHECK(m->n_params[n] == total, "%s: net %d has %lld params, want %lld", what, n, (long long)m->n_params[n], (long long)total);
    }
    CHECK(bad == 0, "%s: %d weights differ", what, bad);
    CHECK(memcmp(&m->unet, &t->u, sizeof t->u) == 0, "%s: UNet config differs", what);
    CHECK(memcmp(&m->vae, &t->v, sizeof t->v) == 0, "%s: VAE config differs", what);
    CHECK(memcmp(&m->clip, &t->c, sizeof t->c) == 0, "%s: text config differs (pad %d)", what, m->clip.pad_id);
    CHECK(m->family == t->family, "%s: family %d", what, m->family);
    CHECK(model_weightf(m, "text_model.encoder.layers.%d.mlp.fc1.bias", 1) != NULL, "%s: model_weightf", what);
}

static DbModel *open_ok(const char *path, const DbModelOptions *opts)
{
    DbModel *m = NULL;
    DbError err = {0};
    DbStatus st = db_model_open(&m, path, opts, &err);
    CHECK(st == DB_OK && m, "open %s: %s", path, err.msg);
    return m;
}

static void expect_open_err(const char *path, DbStatus want, const char *n1, const char *n2)
{
    DbModel *m = NULL;
    DbError err = {0};
    DbStatus st = db_model_open(&m, path, NULL, &err);
    CHECK(st == want && !m && strstr(err.msg, n1) && (!n2 || strstr(err.msg, n2)) && !strchr(err.msg, '\n'),
          "open %s: got %s \"%s\" (want %s with \"%s\" \"%s\")", path, db_status_name(st), err.msg,
          db_status_name(want), n1, n2 ? n2 : "");
    db_model_free(m);
}

static const char *find_bpe(void)
{
    static const char *const cand[] = {
        "../shared/data/clip/bpe_simple_vocab_16e6.txt.gz", "../../shared/data/clip/bpe_simple_vocab_16e6.txt.gz",
        "../../../shared/data/clip/bpe_simple_vocab_16e6.txt.gz", "/work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz",
    };
    const char *env = g_getenv("DB_TEST_BPE");
    if (env && g_file_test(env, G_FILE_TEST_IS_REGULAR)) return env;
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (g_file_test(cand[i], G_FILE_TEST_IS_REGULAR)) return cand[i];
    return NULL;
}

static void expect_tokens(const DbModel *m, int pad, const char *what)
{
    static const int32_t want[7] = {49406, 320, 1125, 539, 48136, 1929, 49407};
    int32_t ids[DB_CONTEXT_LEN];
    DbError err = {0};
    int trunc = -1;
    DbStatus st = db_tokenize(m, "a photo of sks dog", ids, &trunc, &err);
    CHECK(st == DB_OK && memcmp(ids, want, sizeof want) == 0 && ids[7] == pad && ids[76] == pad && trunc == 0,
          "%s: tokenize: %s ids %d %d %d .. pad %d (want %d)", what, err.msg, ids[0], ids[1], ids[6], ids[7], pad);
}

/* The UNet runtime (unet_run.c) on an F16 model: with the fp32 weight cache (all) and without
 * (none) every output is bit-identical, across repeated calls and a change of shape in between;
 * all copies every half-precision matrix and kernel, none copies nothing; a freed runtime is
 * rebuilt on the next call. */
static void test_unet_cache(const char *dir)
{
    DbModelOptions none = {NULL, DB_PRED_UNKNOWN, DB_WEIGHT_CACHE_NONE};
    DbModelOptions all = {NULL, DB_PRED_UNKNOWN, DB_WEIGHT_CACHE_ALL};
    DbModel *a = open_ok(dir, &none), *b = open_ok(dir, &all);
    if (!a || !b) {
        db_model_free(a);
        db_model_free(b);
        return;
    }
    const int B = 2, S = 7, X = a->unet.cross_dim, C = a->unet.in_channels;
    const int shapes[4][3] = {{2, 16, 16}, {1, 8, 24}, {2, 16, 16}, {2, 24, 8}}; /* batch, h, w */
    float *x = g_new(float, (size_t)B * C * 24 * 24), *ctx = g_new(float, (size_t)B * S * X);
    float *o1 = g_new(float, (size_t)B * C * 24 * 24), *o2 = g_new(float, (size_t)B * C * 24 * 24);
    float *first = g_new(float, (size_t)B * C * 16 * 16);
    const float t[2] = {999.0f, 1.0f};
    uint32_t r = 7u;
    for (size_t i = 0; i < (size_t)B * C * 24 * 24; i++) r = r * 1664525u + 1013904223u, x[i] = (float)(r >> 8) / 8388608.0f - 1.0f;
    for (size_t i = 0; i < (size_t)B * S * X; i++) r = r * 1664525u + 1013904223u, ctx[i] = (float)(r >> 8) / 8388608.0f - 1.0f;
    for (int k = 0; k < 4; k++) {
        const int nb = shapes[k][0], h = shapes[k][1], w = shapes[k][2];
        const size_t n = (size_t)nb * C * h * w;
        DbError e1 = {0}, e2 = {0};
        DbStatus s1 = db_unet_forward(a, x, t, ctx, nb, h, w, S, o1, NULL, NULL, &e1);
        DbStatus s2 = db_unet_forward(b, x, t, ctx, nb, h, w, S, o2, NULL, NULL, &e2);
        CHECK(s1 == DB_OK && s2 == DB_OK, "unet forward %dx%dx%d: %s / %s", nb, h, w, e1.msg, e2.msg);
        if (s1 != DB_OK || s2 != DB_OK) break;
        int finite = 1;
        for (size_t i = 0; i < n; i++) finite &= isfinite(o1[i]) != 0;
        CHECK(finite, "unet forward %dx%dx%d: non-finite output", nb, h, w);
        CHECK(memcmp(o1, o2, n * sizeof *o1) == 0, "weight cache all vs none differ at %dx%dx%d", nb, h, w);
        if (k == 0) memcpy(first, o1, n * sizeof *o1);
        if (k == 2) CHECK(memcmp(first, o1, n * sizeof *o1) == 0, "a repeated call differs");
        if (k == 2) unet_run_free(b); /* the next call rebuilds it */
    }
    int na, nb;
    size_t ba, bb;
    unet_run_cache_info(a, &na, &ba);
    unet_run_cache_info(b, &nb, &bb);
    CHECK(na == 0 && ba == 0, "weight cache none made %d copies (%zu bytes)", na, ba);
    CHECK(nb > 0 && bb == unet_weight_cache_full(b) && bb > 0,
          "weight cache all: %d copies, %zu of %llu bytes", nb, bb,
          (unsigned long long)unet_weight_cache_full(b));

    /* a partial cache (half the bytes: some weights copied, the rest widened per call) gives
     * the same bytes too */
    const uint64_t full = unet_weight_cache_full(a);
    UnetState *st = NULL;
    DbError e = {0};
    const UnetDims d = {2, 16, 16, (size_t)S};
    size_t floats = 0;
    if (unet_state_build(&st, a, (size_t)(full / 2), &e) == DB_OK &&
        unet_forward_size(&floats, &a->unet, &d, unet_state_wscratch_size(st), &e) == DB_OK) {
        int nh;
        size_t bh;
        unet_state_cache_info(st, &nh, &bh);
        CHECK(nh > 0 && nh < nb && bh <= full / 2, "half cache: %d of %d copies, %zu bytes", nh, nb, bh);
        float *mem = g_new(float, floats);
        UnetActs acts;
        UnetWork wk;
        unet_forward_carve(&acts, &wk, mem, &a->unet, &d);
        UnetProgress pr = {NULL, NULL, 0, unet_block_count(&a->unet)};
        DbStatus s3 = unet_forward(o2, &acts, &wk, x, t, ctx, unet_state_params(st), &a->unet, &d, &pr, &e);
        CHECK(s3 == DB_OK && memcmp(o2, first, (size_t)B * C * 16 * 16 * sizeof *o2) == 0,
              "half cache differs from none (%s)", e.msg);
        g_free(mem);
    } else {
        CHECK(0, "half cache: %s", e.msg);
    }
    unet_state_free(st);

    /* auto: what MemAvailable leaves after the work and 1 GiB, at most all, none when unknown */
    const uint64_t gib = (uint64_t)1 << 30, w = 100u << 20;
    a->weight_cache = DB_WEIGHT_CACHE_AUTO;
    CHECK(unet_weight_cache_bytes(a, w, 0) == 0, "auto with unknown memory caches");
    CHECK(unet_weight_cache_bytes(a, w, w + gib) == 0, "auto without room caches");
    CHECK(unet_weight_cache_bytes(a, w, w + gib + 1000) == (full < 1000 ? full : 1000),
          "auto with 1000 bytes of room: %llu", (unsigned long long)unet_weight_cache_bytes(a, w, w + gib + 1000));
    CHECK(unet_weight_cache_bytes(a, w, 64 * gib) == full, "auto with plenty of room");
    a->weight_cache = DB_WEIGHT_CACHE_NONE;
    CHECK(unet_weight_cache_bytes(a, w, 64 * gib) == 0, "none caches");
    a->weight_cache = DB_WEIGHT_CACHE_ALL;
    CHECK(unet_weight_cache_bytes(a, w, 0) == full, "all caches less than all");
    g_free(x), g_free(ctx), g_free(o1), g_free(o2), g_free(first);
    db_model_free(a);
    db_model_free(b);
}

static void test_open(void)
{
    DbModelOptions opts = {NULL, DB_PRED_UNKNOWN, DB_WEIGHT_CACHE_AUTO};
    DbModelInfo info;
    const char *bpe = find_bpe();
    CHECK(bpe != NULL, "fixture bpe_simple_vocab_16e6.txt.gz not found (set DB_TEST_BPE)");

    /* SD1: diffusers folder (F16 storage) and single files with and without text_model. */
    Tiny t1;
    tiny_make(&t1, DB_FAMILY_SD1, DB_DTYPE_F16);
    char *d1 = write_diffusers(&t1, "sd1-diffusers", 0);
    test_unet_cache(d1);
    DbModel *m = open_ok(d1, NULL);
    if (m) {
        compare(m, &t1, "SD1 diffusers");
        db_model_get_info(m, &info);
        CHECK(info.layout == DB_LAYOUT_DIFFUSERS && strcmp(info.storage_dtype, "F16") == 0 &&
              info.prediction == DB_PRED_V && !info.prediction_from_user && strstr(info.prediction_source, "scheduler_config.json"),
              "SD1 diffusers info: %s %d %s", info.storage_dtype, info.prediction, info.prediction_source);
        CHECK(info.tokenizer_source == NULL, "no tokenizer expected, got %s", info.tokenizer_source);
        int32_t ids[DB_CONTEXT_LEN];
        DbError err = {0};
        DbStatus st = db_tokenize(m, "a dog", ids, NULL, &err);
        CHECK(st == DB_ERR_IO && strstr(err.msg, "bpe_simple_vocab_16e6.txt.gz") && strstr(err.msg, "tokenizer/"),
              "no tokenizer: %s \"%s\"", db_status_name(st), err.msg);
        db_model_free(m);
    }
    opts.tokenizer = bpe;
    opts.prediction = DB_PRED_EPS;
    if (bpe && (m = open_ok(d1, &opts))) {
        db_model_get_info(m, &info);
        CHECK(info.prediction == DB_PRED_EPS && info.prediction_from_user && info.tokenizer_source, "override");
        expect_tokens(m, CLIP_EOS, "SD1 diffusers --tokenizer");
        db_model_free(m);
    }
    opts.tokenizer = NULL;
    opts.prediction = DB_PRED_UNKNOWN;

    char *s1 = write_single(&t1, "sd1.safetensors", KEYMAP_CLIP_OPENAI, MUT_NONE, NULL);
    if ((m = open_ok(s1, NULL))) {
        compare(m, &t1, "SD1 single file");
        db_model_get_info(m, &info);
        CHECK(info.layout == DB_LAYOUT_SINGLE_FILE && info.prediction == DB_PRED_EPS &&
              strstr(info.prediction_source, "--prediction v"), "SD1 single info: %s", info.prediction_source);
        db_model_free(m);
    }
    char *s1b = write_single(&t1, "sd1-bare.model", KEYMAP_CLIP_OPENAI_BARE, MUT_NONE, "v");
    if ((m = open_ok(s1b, NULL))) { /* extension ignored: content decides */
        compare(m, &t1, "SD1 single file without text_model.");
        CHECK(m->prediction == DB_PRED_V && strstr(m->prediction_source, "modelspec"), "modelspec v: %s", m->prediction_source);
        db_model_free(m);
    }
    /* the user data folder: $XDG_DATA_HOME/dreambooth/bpe_simple_vocab_16e6.txt.gz */
    if (bpe) {
        char *dst = g_build_filename(tmpdir, "xdg", "dreambooth", "bpe_simple_vocab_16e6.txt.gz", NULL);
        char *dir = g_path_get_dirname(dst), *abs = g_canonicalize_filename(bpe, NULL);
        g_mkdir_with_parents(dir, 0700);
        CHECK(symlink(abs, dst) == 0, "symlink %s", dst);
        if ((m = open_ok(s1, NULL))) {
            CHECK(m->tokenizer_source && strcmp(m->tokenizer_source, dst) == 0, "user data tokenizer: %s", m->tokenizer_source);
            expect_tokens(m, CLIP_EOS, "SD1 single file");
            db_model_free(m);
        }
        g_unlink(dst);
        g_free(dst);
        g_free(dir);
        g_free(abs);
    }

    /* broken single files: one line naming the file, the tensor, expected and found */
    char *p = write_single(&t1, "shape.safetensors", KEYMAP_CLIP_OPENAI, MUT_SHAPE, NULL);
    expect_open_err(p, DB_ERR_MODEL, "shape.safetensors: tensor model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                    "shape [64, 64, 9], expected [64, 64, 3, 3]");
    g_free(p);
    p = write_single(&t1, "dtype.safetensors", KEYMAP_CLIP_OPENAI, MUT_DTYPE, NULL);
    expect_open_err(p, DB_ERR_MODEL, "model.diffusion_model.input_blocks.0.0.bias has dtype I16", "F32, F16 or BF16");
    g_free(p);
    p = write_single(&t1, "missing.safetensors", KEYMAP_CLIP_OPENAI, MUT_MISSING, NULL);
    expect_open_err(p, DB_ERR_MODEL, "missing.safetensors: missing tensor model.diffusion_model.middle_block.2.out_layers.3.weight",
                    "mid_block.resnets.1.conv2.weight");
    g_free(p);
    p = write_single(&t1, "inpaint.safetensors", KEYMAP_CLIP_OPENAI, MUT_INPAINT, NULL);
    expect_open_err(p, DB_ERR_UNSUPPORTED, "inpaint.safetensors", "inpainting");
    g_free(p);

    /* SD2: F32, OpenCLIP packed q/k/v and a 3rd block that diffusers drops; old VAE names. */
    Tiny t2;
    tiny_make(&t2, DB_FAMILY_SD2, DB_DTYPE_F32);
    char *d2 = write_diffusers(&t2, "sd2-diffusers", 1);
    if ((m = open_ok(d2, NULL))) {
        compare(m, &t2, "SD2 diffusers (old VAE attention names)");
        CHECK(strcmp(m->storage_dtype, "F32") == 0, "storage %s", m->storage_dtype);
        if (bpe) {
            DbModelOptions o = {bpe, DB_PRED_UNKNOWN, DB_WEIGHT_CACHE_AUTO};
            DbModel *m2 = open_ok(d2, &o);
            if (m2) expect_tokens(m2, 0, "SD2 diffusers (pad \"!\")");
            db_model_free(m2);
        }
        db_model_free(m);
    }
    /* the UNet as two shards + diffusion_pytorch_model.safetensors.index.json */
    {
        char *unet_dir = g_build_filename(d2, "unet", NULL);
        GString *idx = g_string_new("{\"metadata\": {}, \"weight_map\": {");
        SafetensorsWriter *w[2] = {safetensors_writer_new(), safetensors_writer_new()};
        for (guint i = 0; i < t2.net[NET_UNET]->len; i++) {
            const Param *q = g_ptr_array_index(t2.net[NET_UNET], i);
            add(w[i % 2], q->name, q->dt, q->ndim, q->shape, q->data);
            g_string_append_printf(idx, "%s\"%s\": \"shard-%u.safetensors\"", i ? ", " : "", q->name, i % 2);
        }
        g_string_append(idx, "}}");
        for (int k = 0; k < 2; k++) {
            char nm[32];
            snprintf(nm, sizeof nm, "shard-%d.safetensors", k);
            char *sp = g_build_filename(unet_dir, nm, NULL);
            save(w[k], sp);
            g_free(sp);
        }
        char *ip = g_build_filename(unet_dir, "diffusion_pytorch_model.safetensors.index.json", NULL);
        char *fp16 = g_build_filename(unet_dir, "diffusion_pytorch_model.fp16.safetensors", NULL);
        put(ip, idx->str);
        g_unlink(fp16);
        if ((m = open_ok(d2, NULL))) {
            compare(m, &t2, "SD2 diffusers, sharded UNet");
            db_model_free(m);
        }
        put(ip, "{\"weight_map\": {\"conv_in.weight\": \"../../sd2.safetensors\"}}");
        expect_open_err(d2, DB_ERR_FORMAT, "diffusion_pytorch_model.safetensors.index.json", "same folder");
        g_unlink(ip);
        g_free(ip);
        g_free(fp16);
        g_free(unet_dir);
        g_string_free(idx, TRUE);
    }
    char *s2 = write_single(&t2, "sd2.safetensors", KEYMAP_CLIP_OPENCLIP, MUT_NONE, "epsilon");
    if ((m = open_ok(s2, NULL))) {
        compare(m, &t2, "SD2 single file");
        const DbWeight *wk = model_weight(m, "text_model.encoder.layers.1.self_attn.k_proj.weight");
        const DbWeight *wq = model_weight(m, "text_model.encoder.layers.1.self_attn.q_proj.weight");
        CHECK(wk && wq && (const char *)wk->t.data == (const char *)wq->t.data + wq->t.nbytes &&
              strcmp(wk->src_name, "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight") == 0,
              "k_proj must be a view into in_proj_weight");
        db_model_free(m);
    }

    /* layout detection and folder errors */
    char *ck = g_build_filename(tmpdir, "model.ckpt", NULL);
    put(ck, "\x80\x02}q\x00.");
    expect_open_err(ck, DB_ERR_UNSUPPORTED, "model.ckpt: .ckpt pickles are not loaded", "safetensors");
    char *zip = g_build_filename(tmpdir, "zip.safetensors", NULL);
    put(zip, "PK\x03\x04 archive");
    expect_open_err(zip, DB_ERR_UNSUPPORTED, "zip.safetensors: .ckpt pickles", NULL);
    char *txt = g_build_filename(tmpdir, "notes.safetensors", NULL);
    put(txt, "hello world, not a model");
    expect_open_err(txt, DB_ERR_FORMAT, "notes.safetensors", NULL);
    char *nope = g_build_filename(tmpdir, "does-not-exist", NULL);
    expect_open_err(nope, DB_ERR_IO, "does-not-exist", NULL);
    char *empty = g_build_filename(tmpdir, "empty-folder", NULL);
    g_mkdir_with_parents(empty, 0700);
    expect_open_err(empty, DB_ERR_MODEL, "empty-folder", "model_index.json");
    char *unet_only = g_build_filename(d1, "unet", "diffusion_pytorch_model.fp16.safetensors", NULL);
    expect_open_err(unet_only, DB_ERR_MODEL, "diffusion_pytorch_model.fp16.safetensors", "diffusers");
    char *vcfg = g_build_filename(d1, "vae", "config.json", NULL);
    g_unlink(vcfg);
    expect_open_err(d1, DB_ERR_IO, "vae/config.json", "missing");
    char *vst = g_build_filename(d2, "unet", "diffusion_pytorch_model.safetensors", NULL);
    expect_open_err(d2, DB_ERR_IO, "unet/diffusion_pytorch_model.safetensors", "missing");

    g_free(ck), g_free(zip), g_free(txt), g_free(nope), g_free(empty), g_free(unet_only), g_free(vcfg), g_free(vst);
    g_free(d1), g_free(s1), g_free(s1b), g_free(d2), g_free(s2);
    tiny_free(&t1);
    tiny_free(&t2);
}

static void rm_rf(const char *path)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
        GDir *d = g_dir_open(path, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d))) {
            char *c = g_build_filename(path, n, NULL);
            rm_rf(c);
            g_free(c);
        }
        if (d) g_dir_close(d);
    }
    g_remove(path);
}

int main(void)
{
    GError *e = NULL;
    tmpdir = g_dir_make_tmp("test_model-XXXXXX", &e);
    if (!tmpdir) {
        printf("FAIL: no temp folder: %s\n", e->message);
        return 1;
    }
    /* before anything calls g_get_user_data_dir(): a private, empty user data folder */
    char *xdg = g_build_filename(tmpdir, "xdg", NULL);
    g_setenv("XDG_DATA_HOME", xdg, TRUE);
    g_free(xdg);
    test_enum_counts();
    test_keymap();
    test_configs();
    test_open();
    rm_rf(tmpdir);
    g_free(tmpdir);
    printf("test_model: %s (%d checks, %d failure(s))\n", n_failed ? "FAIL" : "PASS", n_checks, n_failed);
    return n_failed ? 1 : 0;
}
