/* LDM single-file (A1111 / ComfyUI) <-> diffusers names, as data.
 *
 * Prefix rules come from the config's block structure (sources: diffusers
 * loaders/single_file_utils.py and scripts/convert_diffusers_to_original_stable_diffusion.py);
 * the names inside a block come from the static tables below. With layers_per_block L:
 *   input_blocks.{1 + (L+1)b + j}.0  = down_blocks.b.resnets.j, .1 = down_blocks.b.attentions.j
 *   input_blocks.{(L+1)(b+1)}.0.op   = down_blocks.b.downsamplers.0.conv
 *   middle_block.0 / .1 / .2         = mid_block.resnets.0 / attentions.0 / resnets.1
 *   output_blocks.{(L+1)b + j}.0     = up_blocks.b.resnets.j (j <= L), .1 = attentions.j
 *   output_blocks.{(L+1)b + L}.{1|2} = up_blocks.b.upsamplers.0 (2 when the block has attention)
 *   VAE decoder.up.{n-1-i}           = decoder.up_blocks.i (reversed)
 * The same file infers a single file's configs from its tensor shapes (ldm_infer_configs).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "keymap.h"

#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* diffusers ResnetBlock2D <- LDM ResBlock (openaimodel.py). */
static const KeyPair unet_resnet[] = {
    {"in_layers.0.", "norm1.", -1},       {"in_layers.2.", "conv1.", -1},
    {"emb_layers.1.", "time_emb_proj.", -1}, {"out_layers.0.", "norm2.", -1},
    {"out_layers.3.", "conv2.", -1},      {"skip_connection.", "conv_shortcut.", -1},
};
_Static_assert(N_OF(unet_resnet) == 6, "unet_resnet table");

/* Top level of the UNet (time embedding, conv_in, output head). */
static const KeyPair unet_top[] = {
    {"time_embed.0.", "time_embedding.linear_1.", -1},
    {"time_embed.2.", "time_embedding.linear_2.", -1},
    {"input_blocks.0.0.", "conv_in.", -1},
    {"out.0.", "conv_norm_out.", -1},
    {"out.2.", "conv_out.", -1},
};
_Static_assert(N_OF(unet_top) == 5, "unet_top table");

/* VAE ResnetBlock (ldm/modules/diffusionmodules/model.py). */
static const KeyPair vae_resnet[] = {
    {"norm1.", "norm1.", -1}, {"conv1.", "conv1.", -1}, {"norm2.", "norm2.", -1},
    {"conv2.", "conv2.", -1}, {"nin_shortcut.", "conv_shortcut.", -1},
};
_Static_assert(N_OF(vae_resnet) == 5, "vae_resnet table");

/* VAE mid AttnBlock: 1x1 convs in LDM, Linear in diffusers (shapes handled by the loader). */
static const KeyPair vae_attn[] = {
    {"norm.", "group_norm.", -1}, {"q.", "to_q.", -1}, {"k.", "to_k.", -1},
    {"v.", "to_v.", -1},          {"proj_out.", "to_out.0.", -1},
};
_Static_assert(N_OF(vae_attn) == 5, "vae_attn table");

/* Encoder / decoder top level. */
static const KeyPair vae_top[] = {
    {"conv_in.", "conv_in.", -1}, {"conv_out.", "conv_out.", -1},
    {"norm_out.", "conv_norm_out.", -1},
};
_Static_assert(N_OF(vae_top) == 3, "vae_top table");

/* OpenCLIP text tower (SD2) top level, under text_model. */
static const KeyPair openclip_top[] = {
    {"token_embedding.", "embeddings.token_embedding.", -1},
    {"positional_embedding", "embeddings.position_embedding.weight", -1},
    {"ln_final.", "final_layer_norm.", -1},
};
_Static_assert(N_OF(openclip_top) == 3, "openclip_top table");

/* OpenCLIP residual block -> transformers CLIPEncoderLayer. */
static const KeyPair openclip_layer[] = {
    {"ln_1.", "layer_norm1.", -1},
    {"ln_2.", "layer_norm2.", -1},
    {"mlp.c_fc.", "mlp.fc1.", -1},
    {"mlp.c_proj.", "mlp.fc2.", -1},
    {"attn.out_proj.", "self_attn.out_proj.", -1},
    {"attn.in_proj_weight", "self_attn.q_proj.weight", 0},
    {"attn.in_proj_weight", "self_attn.k_proj.weight", 1},
    {"attn.in_proj_weight", "self_attn.v_proj.weight", 2},
    {"attn.in_proj_bias", "self_attn.q_proj.bias", 0},
    {"attn.in_proj_bias", "self_attn.k_proj.bias", 1},
    {"attn.in_proj_bias", "self_attn.v_proj.bias", 2},
};
_Static_assert(N_OF(openclip_layer) == 11, "openclip_layer table");

static void rule_push(Keymap *k, const char *ldm, const char *diff, const KeyPair *inner,
                      int n_inner)
{
    if (k->n_rules == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 64;
        k->rules = g_renew(KeyRule, k->rules, k->cap);
    }
    KeyRule *r = &k->rules[k->n_rules++];
    g_strlcpy(r->ldm, ldm, sizeof r->ldm);
    g_strlcpy(r->diffusers, diff, sizeof r->diffusers);
    r->inner = inner;
    r->n_inner = n_inner;
}

/* printf into a rule-sized buffer; returns it. Names here are short and bounded. */
static const char *fmt(char buf[96], const char *f, ...) __attribute__((format(printf, 2, 3)));
static const char *fmt(char buf[96], const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, 96, f, ap);
    va_end(ap);
    return buf;
}

#define U LDM_UNET_PREFIX
#define V LDM_VAE_PREFIX

#define RES_UNET unet_resnet, (int)N_OF(unet_resnet)
#define RES_VAE vae_resnet, (int)N_OF(vae_resnet)

static void build_unet(Keymap *k, const UnetConfig *u)
{
    int n = u->n_blocks, L = u->layers_per_block;
    char a[96], d[96];
    rule_push(k, U, "", unet_top, (int)N_OF(unet_top));
    for (int b = 0; b < n; b++) {
        for (int j = 0; j < L; j++) {
            int idx = 1 + (L + 1) * b + j;
            rule_push(k, fmt(a, U "input_blocks.%d.0.", idx),
                      fmt(d, "down_blocks.%d.resnets.%d.", b, j), RES_UNET);
            if (u->down_cross[b])
                rule_push(k, fmt(a, U "input_blocks.%d.1.", idx),
                          fmt(d, "down_blocks.%d.attentions.%d.", b, j), NULL, 0);
        }
        if (b < n - 1)
            rule_push(k, fmt(a, U "input_blocks.%d.0.op.", (L + 1) * (b + 1)),
                      fmt(d, "down_blocks.%d.downsamplers.0.conv.", b), NULL, 0);
    }
    rule_push(k, U "middle_block.0.", "mid_block.resnets.0.", RES_UNET);
    rule_push(k, U "middle_block.1.", "mid_block.attentions.0.", NULL, 0);
    rule_push(k, U "middle_block.2.", "mid_block.resnets.1.", RES_UNET);
    for (int b = 0; b < n; b++) {
        for (int j = 0; j <= L; j++) {
            int idx = (L + 1) * b + j;
            rule_push(k, fmt(a, U "output_blocks.%d.0.", idx),
                      fmt(d, "up_blocks.%d.resnets.%d.", b, j), RES_UNET);
            if (u->up_cross[b])
                rule_push(k, fmt(a, U "output_blocks.%d.1.", idx),
                          fmt(d, "up_blocks.%d.attentions.%d.", b, j), NULL, 0);
        }
        if (b < n - 1)
            rule_push(k, fmt(a, U "output_blocks.%d.%d.", (L + 1) * b + L, u->up_cross[b] ? 2 : 1),
                      fmt(d, "up_blocks.%d.upsamplers.0.", b), NULL, 0);
    }
}

static void build_vae(Keymap *k, const VaeConfig *v)
{
    int n = v->n_blocks, L = v->layers_per_block;
    char a[96], d[96];
    rule_push(k, V "encoder.", "encoder.", vae_top, (int)N_OF(vae_top));
    rule_push(k, V "decoder.", "decoder.", vae_top, (int)N_OF(vae_top));
    rule_push(k, V "quant_conv.", "quant_conv.", NULL, 0);
    rule_push(k, V "post_quant_conv.", "post_quant_conv.", NULL, 0);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L; j++)
            rule_push(k, fmt(a, V "encoder.down.%d.block.%d.", i, j),
                      fmt(d, "encoder.down_blocks.%d.resnets.%d.", i, j), RES_VAE);
        if (i < n - 1)
            rule_push(k, fmt(a, V "encoder.down.%d.downsample.", i),
                      fmt(d, "encoder.down_blocks.%d.downsamplers.0.", i), NULL, 0);
        int l = n - 1 - i; /* LDM decoder.up is numbered from the lowest resolution up */
        for (int j = 0; j <= L; j++)
            rule_push(k, fmt(a, V "decoder.up.%d.block.%d.", l, j),
                      fmt(d, "decoder.up_blocks.%d.resnets.%d.", i, j), RES_VAE);
        if (i < n - 1)
            rule_push(k, fmt(a, V "decoder.up.%d.upsample.", l),
                      fmt(d, "decoder.up_blocks.%d.upsamplers.0.", i), NULL, 0);
    }
    static const char *const sides[2] = {"encoder", "decoder"};
    for (int s = 0; s < 2; s++) {
        rule_push(k, fmt(a, V "%s.mid.block_1.", sides[s]),
                  fmt(d, "%s.mid_block.resnets.0.", sides[s]), RES_VAE);
        rule_push(k, fmt(a, V "%s.mid.block_2.", sides[s]),
                  fmt(d, "%s.mid_block.resnets.1.", sides[s]), RES_VAE);
        rule_push(k, fmt(a, V "%s.mid.attn_1.", sides[s]),
                  fmt(d, "%s.mid_block.attentions.0.", sides[s]), vae_attn, (int)N_OF(vae_attn));
    }
}

static void build_clip(Keymap *k, int layers, KeymapClip clip)
{
    char a[96], d[96];
    if (clip == KEYMAP_CLIP_OPENAI) {
        rule_push(k, LDM_CLIP_OPENAI_PREFIX "text_model.", "text_model.", NULL, 0);
    } else if (clip == KEYMAP_CLIP_OPENAI_BARE) {
        rule_push(k, LDM_CLIP_OPENAI_PREFIX, "text_model.", NULL, 0);
    } else {
        rule_push(k, LDM_CLIP_OPENCLIP_PREFIX, "text_model.", openclip_top, (int)N_OF(openclip_top));
        for (int i = 0; i < layers; i++)
            rule_push(k, fmt(a, LDM_CLIP_OPENCLIP_PREFIX "transformer.resblocks.%d.", i),
                      fmt(d, "text_model.encoder.layers.%d.", i), openclip_layer,
                      (int)N_OF(openclip_layer));
    }
}

DbStatus keymap_ldm_build(Keymap *k, const UnetConfig *u, const VaeConfig *v, int text_layers,
                          KeymapClip clip, DbError *err)
{
    memset(k, 0, sizeof *k);
    if (u->n_blocks < 1 || u->n_blocks > DB_MAX_BLOCKS || v->n_blocks < 1 ||
        v->n_blocks > DB_MAX_BLOCKS || u->layers_per_block < 1 || v->layers_per_block < 1 ||
        text_layers < 0)
        return db_fail(err, DB_ERR_ARG, "key map: invalid block structure");
    build_unet(k, u);
    build_vae(k, v);
    build_clip(k, text_layers, clip);
    return DB_OK;
}

void keymap_free(Keymap *k)
{
    g_free(k->rules);
    memset(k, 0, sizeof *k);
}

/* Applies a rule's inner table to `rest` in one direction (to_ldm: diffusers -> LDM). */
static int map_inner(const KeyRule *r, const char *rest, int to_ldm, int part_in, char *out,
                     size_t outsize, int *part_out)
{
    const char *dst_prefix = to_ldm ? r->ldm : r->diffusers;
    if (!r->inner) {
        *part_out = -1;
        if (!to_ldm && part_in >= 0) return 0;
        return (size_t)snprintf(out, outsize, "%s%s", dst_prefix, rest) < outsize;
    }
    for (int i = 0; i < r->n_inner; i++) {
        const KeyPair *p = &r->inner[i];
        const char *from = to_ldm ? p->diffusers : p->ldm;
        const char *to = to_ldm ? p->ldm : p->diffusers;
        size_t n = strlen(from);
        int is_prefix = n > 0 && from[n - 1] == '.';
        if (is_prefix ? strncmp(rest, from, n) != 0 : strcmp(rest, from) != 0) continue;
        if (!to_ldm && p->part != part_in) continue;
        *part_out = p->part;
        const char *tail = is_prefix ? rest + n : "";
        return (size_t)snprintf(out, outsize, "%s%s%s", dst_prefix, to, tail) < outsize;
    }
    return 0;
}

/* Longest matching prefix wins; its inner table must then match the rest of the name. */
static int keymap_map(const Keymap *k, const char *name, int to_ldm, int part_in, char *out,
                      size_t outsize, int *part_out)
{
    const KeyRule *best = NULL;
    size_t best_len = 0;
    for (int i = 0; i < k->n_rules; i++) {
        const char *pre = to_ldm ? k->rules[i].diffusers : k->rules[i].ldm;
        size_t n = strlen(pre);
        if (strncmp(name, pre, n) == 0 && (!best || n > best_len)) {
            best = &k->rules[i];
            best_len = n;
        }
    }
    if (!best) return 0;
    return map_inner(best, name + best_len, to_ldm, part_in, out, outsize, part_out);
}

int keymap_to_ldm(const Keymap *k, const char *canonical, char *out, size_t outsize, int *part)
{
    int dummy;
    return keymap_map(k, canonical, 1, -1, out, outsize, part ? part : &dummy);
}

int keymap_from_ldm(const Keymap *k, const char *ldm, int part, char *out, size_t outsize)
{
    int dummy;
    return keymap_map(k, ldm, 0, part, out, outsize, &dummy);
}

/* ---- single files: configs from tensor shapes ------------------------------------------ */

/* Tensor by printf-style name; NULL when absent. */
static const DbTensor *ldm_t(const SafetensorsFile *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const DbTensor *ldm_t(const SafetensorsFile *f, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) return NULL;
    const SafetensorsEntry *e = safetensors_find(f, name);
    return e ? &e->t : NULL;
}

/* Dimension i, or -1 when the tensor is absent or has fewer dims (caught by the checks). */
static int dim(const DbTensor *t, int i)
{
    return t && i < t->ndim && t->shape[i] <= (1 << 22) ? (int)t->shape[i] : -1;
}

/* Counts consecutive indices 0, 1, ... for which fmt names a tensor (at most 1000). */
static int ldm_count(const SafetensorsFile *f, const char *fmt)
{
    int n = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    while (n < 1000 && ldm_t(f, fmt, n)) n++;
#pragma GCC diagnostic pop
    return n;
}

static DbStatus infer_unet(const SafetensorsFile *f, UnetConfig *c, DbError *err)
{
    const char *path = f->path;
    const DbTensor *t = ldm_t(f, U "input_blocks.0.0.weight");
    if (!t || t->ndim != 4)
        return db_fail(err, DB_ERR_MODEL, "%s: no 4-D " U "input_blocks.0.0.weight: not a Stable Diffusion checkpoint", path);
    c->in_channels = dim(t, 1);
    if (c->in_channels == 9)
        return db_fail(err, DB_ERR_UNSUPPORTED, "%s: inpainting model (9 input channels in " U "input_blocks.0.0.weight) is not supported", path);
    /* input_blocks: [conv_in] then per block L resnets (+ attention) and a downsampler. */
    int n_in = 0, L = 0;
    while (n_in < 1000 && (ldm_t(f, U "input_blocks.%d.0.in_layers.0.weight", n_in + 1) ||
                           ldm_t(f, U "input_blocks.%d.0.op.weight", n_in + 1)))
        n_in++;
    while (L < n_in && !ldm_t(f, U "input_blocks.%d.0.op.weight", L + 1)) L++;
    int n = L < n_in ? (n_in + 1) / (L + 1) : 1;
    if (L < 1 || n > DB_MAX_BLOCKS || n * (L + 1) != n_in + 1)
        return db_fail(err, DB_ERR_MODEL, "%s: " U "input_blocks.*: %d blocks do not form a UNet (layers per block %d)", path, n_in, L);
    c->n_blocks = n;
    c->layers_per_block = L;
    for (int b = 0; b < n; b++) {
        int idx = 1 + (L + 1) * b;
        c->block_out[b] = dim(ldm_t(f, U "input_blocks.%d.0.out_layers.3.weight", idx), 0);
        c->down_cross[b] = ldm_t(f, U "input_blocks.%d.1.proj_in.weight", idx) != NULL;
        c->up_cross[b] = ldm_t(f, U "output_blocks.%d.1.proj_in.weight", (L + 1) * b) != NULL;
    }
    const DbTensor *pin = ldm_t(f, U "middle_block.1.proj_in.weight");
    const DbTensor *tok = ldm_t(f, U "middle_block.1.transformer_blocks.0.attn2.to_k.weight");
    if (!pin || !tok)
        return db_fail(err, DB_ERR_UNSUPPORTED, "%s: no cross-attention in " U "middle_block.1: not an SD 1.x/2.x UNet", path);
    c->cross_dim = dim(tok, 1);
    c->use_linear_projection = pin->ndim == 2;
    c->time_embed_dim = dim(ldm_t(f, U "time_embed.0.weight"), 0);
    c->out_channels = dim(ldm_t(f, U "out.2.weight"), 0);
    c->sample_size = 64;
    c->norm_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0.0f;
    return DB_OK;
}

static DbStatus infer_vae(const SafetensorsFile *f, VaeConfig *c, DbError *err)
{
    const DbTensor *t = ldm_t(f, V "encoder.conv_in.weight");
    if (!t || t->ndim != 4)
        return db_fail(err, DB_ERR_MODEL, "%s: no 4-D " V "encoder.conv_in.weight: the file has no VAE", f->path);
    c->in_channels = dim(t, 1);
    c->n_blocks = ldm_count(f, V "encoder.down.%d.block.0.conv1.weight");
    c->layers_per_block = ldm_count(f, V "encoder.down.0.block.%d.conv1.weight");
    if (c->n_blocks < 1 || c->n_blocks > DB_MAX_BLOCKS)
        return db_fail(err, DB_ERR_MODEL, "%s: " V "encoder.down.*: %d blocks, expected 1 to %d", f->path, c->n_blocks, DB_MAX_BLOCKS);
    for (int b = 0; b < c->n_blocks; b++)
        c->block_out[b] = dim(ldm_t(f, V "encoder.down.%d.block.0.conv2.weight", b), 0);
    c->latent_channels = dim(ldm_t(f, V "decoder.conv_in.weight"), 1);
    c->out_channels = dim(ldm_t(f, V "decoder.conv_out.weight"), 0);
    c->norm_groups = 32;
    c->scaling_factor = 0.18215f;
    c->sample_size = 512;
    return DB_OK;
}

/* Heads for a width when the file does not say: head dim 64 (CLIP ViT-L/H, SD2 UNet). */
static DbStatus heads_dim64(int width, const char *path, const char *what, int *heads, DbError *err)
{
    if (width < 64 || width % 64)
        return db_fail(err, DB_ERR_MODEL, "%s: cannot infer attention heads of %s (width %d is not a multiple of 64)", path, what, width);
    *heads = width / 64;
    return DB_OK;
}

static DbStatus infer_clip(const SafetensorsFile *f, ClipConfig *c, KeymapClip *clip, DbError *err)
{
    const char *path = f->path;
    const DbTensor *tok;
    if ((tok = ldm_t(f, LDM_CLIP_OPENAI_PREFIX "text_model.embeddings.token_embedding.weight")) ||
        (tok = ldm_t(f, LDM_CLIP_OPENAI_PREFIX "embeddings.token_embedding.weight"))) {
        /* OpenAI CLIP ViT-L/14 in transformers names (SD1) */
        *clip = safetensors_find(f, LDM_CLIP_OPENAI_PREFIX "text_model.embeddings.token_embedding.weight")
                    ? KEYMAP_CLIP_OPENAI : KEYMAP_CLIP_OPENAI_BARE;
        const char *p = *clip == KEYMAP_CLIP_OPENAI ? LDM_CLIP_OPENAI_PREFIX "text_model." : LDM_CLIP_OPENAI_PREFIX;
        c->max_pos = dim(ldm_t(f, "%sembeddings.position_embedding.weight", p), 0);
        c->layers = 0;
        while (c->layers < 1000 && ldm_t(f, "%sencoder.layers.%d.self_attn.q_proj.weight", p, c->layers)) c->layers++;
        c->intermediate = dim(ldm_t(f, "%sencoder.layers.0.mlp.fc1.weight", p), 0);
        c->act = CLIP_ACT_QUICK_GELU;
        c->pad_id = CLIP_EOS;
    } else if ((tok = ldm_t(f, LDM_CLIP_OPENCLIP_PREFIX "token_embedding.weight"))) {
        /* OpenCLIP ViT-H/14 (SD2) uses the penultimate block's output. A file with the whole
         * text tower (Stability's checkpoints: 24 blocks, with text_projection) runs all but
         * the last block; a file converted from diffusers (scripts/convert_diffusers_to_
         * original_stable_diffusion.py) already holds only the blocks diffusers keeps (23,
         * no text_projection) and runs them all. */
        *clip = KEYMAP_CLIP_OPENCLIP;
        c->max_pos = dim(ldm_t(f, LDM_CLIP_OPENCLIP_PREFIX "positional_embedding"), 0);
        int blocks = ldm_count(f, LDM_CLIP_OPENCLIP_PREFIX "transformer.resblocks.%d.ln_1.weight");
        int whole_tower = ldm_t(f, LDM_CLIP_OPENCLIP_PREFIX "text_projection") != NULL ||
                          (blocks == 24 && dim(tok, 1) == 1024);
        c->layers = whole_tower ? blocks - 1 : blocks;
        c->intermediate = dim(ldm_t(f, LDM_CLIP_OPENCLIP_PREFIX "transformer.resblocks.0.mlp.c_fc.weight"), 0);
        c->act = CLIP_ACT_GELU;
        c->pad_id = 0;
    } else if (ldm_t(f, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight")) {
        return db_fail(err, DB_ERR_UNSUPPORTED, "%s: SDXL checkpoints are not supported (SD 1.x/2.x only)", path);
    } else {
        return db_fail(err, DB_ERR_MODEL, "%s: no text encoder (cond_stage_model.transformer.* or cond_stage_model.model.*)", path);
    }
    c->vocab_size = dim(tok, 0);
    c->hidden = dim(tok, 1);
    c->ln_eps = 1e-5f;
    return heads_dim64(c->hidden, path, "the text encoder", &c->heads, err);
}

DbStatus ldm_infer_configs(const SafetensorsFile *f, DbFamily *family, UnetConfig *u,
                           VaeConfig *v, ClipConfig *c, KeymapClip *clip, DbError *err)
{
    DbStatus st;
    memset(u, 0, sizeof *u);
    memset(v, 0, sizeof *v);
    memset(c, 0, sizeof *c);
    if (safetensors_find(f, U "label_emb.0.0.weight"))
        return db_fail(err, DB_ERR_UNSUPPORTED, "%s: SDXL (or class-conditioned) UNet is not supported (SD 1.x/2.x only)", f->path);
    if ((st = infer_unet(f, u, err)) || (st = infer_vae(f, v, err)) || (st = infer_clip(f, c, clip, err)))
        return st;
    /* SD1 (OpenAI CLIP, 1x1-conv proj_in, cross 768) vs SD2 (OpenCLIP, Linear proj_in, 1024) */
    *family = *clip == KEYMAP_CLIP_OPENCLIP ? DB_FAMILY_SD2 : DB_FAMILY_SD1;
    if ((*family == DB_FAMILY_SD2) != (u->use_linear_projection != 0))
        return db_fail(err, DB_ERR_MODEL, "%s: the text encoder is %s but " U "middle_block.1.proj_in is %s", f->path,
                       *family == DB_FAMILY_SD2 ? "OpenCLIP (SD2)" : "OpenAI CLIP (SD1)",
                       u->use_linear_projection ? "Linear (SD2)" : "a 1x1 conv (SD1)");
    if (c->hidden != u->cross_dim)
        return db_fail(err, DB_ERR_MODEL, "%s: text encoder width %d does not match the UNet cross-attention width %d", f->path, c->hidden, u->cross_dim);
    for (int b = 0; b < u->n_blocks; b++) {
        if (*family == DB_FAMILY_SD1) u->heads[b] = 8; /* SD1: 8 heads everywhere */
        else if ((st = heads_dim64(u->block_out[b], f->path, "the UNet", &u->heads[b], err))) return st;
    }
    if ((st = unet_config_validate(u, f->path, err)) || (st = vae_config_validate(v, f->path, err)) ||
        (st = clip_config_validate(c, f->path, err)))
        return st;
    return DB_OK;
}
