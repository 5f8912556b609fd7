/* Canonical parameters (diffusers / transformers names and shapes) implied by a config, in
 * the order of the modules' state_dict (registration order in __init__):
 *   UNet2DConditionModel: conv_in, time_embedding, down_blocks, up_blocks, mid_block,
 *     conv_norm_out, conv_out (down_blocks and up_blocks are both registered before mid_block);
 *   Cross-attention blocks: attentions before resnets, then down/upsamplers;
 *   AutoencoderKL: encoder, decoder, quant_conv, post_quant_conv (decoder: conv_in, up_blocks,
 *     mid_block, conv_norm_out, conv_out);
 *   CLIPTextModel: embeddings, encoder.layers (self_attn k, v, q, out; layer_norm1; mlp;
 *     layer_norm2), final_layer_norm.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "model.h"

#include <stdio.h>

typedef struct {
    ParamFn fn;
    void *user;
    int stop;
} Emit;

/* name = prefix + suffix; shape of ndim dims from d[]. */
static void emit(Emit *e, const char *prefix, const char *suffix, int ndim, int64_t d0, int64_t d1,
                 int64_t d2, int64_t d3)
{
    if (e->stop) return;
    char name[256];
    int64_t shape[4] = {d0, d1, d2, d3};
    if ((size_t)snprintf(name, sizeof name, "%s%s", prefix, suffix) >= sizeof name) name[0] = '\0';
    e->stop = e->fn(e->user, name, ndim, shape);
}

static void emit_linear(Emit *e, const char *p, int64_t out, int64_t in, int bias)
{
    emit(e, p, ".weight", 2, out, in, 0, 0);
    if (bias) emit(e, p, ".bias", 1, out, 0, 0, 0);
}

static void emit_conv(Emit *e, const char *p, int64_t out, int64_t in, int64_t k)
{
    emit(e, p, ".weight", 4, out, in, k, k);
    emit(e, p, ".bias", 1, out, 0, 0, 0);
}

static void emit_norm(Emit *e, const char *p, int64_t c)
{
    emit(e, p, ".weight", 1, c, 0, 0, 0);
    emit(e, p, ".bias", 1, c, 0, 0, 0);
}

/* a + b into buf; names here are far shorter than 192 bytes (an overlong one would come out
 * empty and then fail every lookup rather than alias another name). */
static const char *cat(char buf[192], const char *a, const char *b)
{
    if ((size_t)snprintf(buf, 192, "%s%s", a, b) >= 192) buf[0] = '\0';
    return buf;
}

/* diffusers ResnetBlock2D; temb = 0: no time_emb_proj (VAE). */
static void emit_resnet(Emit *e, const char *p, int64_t in, int64_t out, int64_t temb)
{
    char b[192];
    emit_norm(e, cat(b, p, ".norm1"), in);
    emit_conv(e, cat(b, p, ".conv1"), out, in, 3);
    if (temb) emit_linear(e, cat(b, p, ".time_emb_proj"), out, temb, 1);
    emit_norm(e, cat(b, p, ".norm2"), out);
    emit_conv(e, cat(b, p, ".conv2"), out, out, 3);
    if (in != out) emit_conv(e, cat(b, p, ".conv_shortcut"), out, in, 1);
}

/* diffusers Attention: to_q/k/v (bias only in the VAE), to_out.0 with bias. */
static void emit_attention(Emit *e, const char *p, int64_t c, int64_t kv, int qkv_bias)
{
    char b[192];
    emit_linear(e, cat(b, p, ".to_q"), c, c, qkv_bias);
    emit_linear(e, cat(b, p, ".to_k"), c, kv, qkv_bias);
    emit_linear(e, cat(b, p, ".to_v"), c, kv, qkv_bias);
    emit_linear(e, cat(b, p, ".to_out.0"), c, c, 1);
}

/* Transformer2DModel with one BasicTransformerBlock (norm1, attn1, norm2, attn2, norm3,
 * ff: GEGLU proj [8C, C] then Linear [C, 4C]). proj_in/out: Linear (SD2) or 1x1 conv (SD1). */
static void emit_transformer(Emit *e, const char *p, int64_t c, int64_t cross, int linear)
{
    char b[192];
    emit_norm(e, cat(b, p, ".norm"), c);
    if (linear) emit_linear(e, cat(b, p, ".proj_in"), c, c, 1);
    else emit_conv(e, cat(b, p, ".proj_in"), c, c, 1);
    char t[192];
    cat(t, p, ".transformer_blocks.0");
    emit_norm(e, cat(b, t, ".norm1"), c);
    emit_attention(e, cat(b, t, ".attn1"), c, c, 0);
    emit_norm(e, cat(b, t, ".norm2"), c);
    emit_attention(e, cat(b, t, ".attn2"), c, cross, 0);
    emit_norm(e, cat(b, t, ".norm3"), c);
    emit_linear(e, cat(b, t, ".ff.net.0.proj"), 8 * c, c, 1);
    emit_linear(e, cat(b, t, ".ff.net.2"), c, 4 * c, 1);
    if (linear) emit_linear(e, cat(b, p, ".proj_out"), c, c, 1);
    else emit_conv(e, cat(b, p, ".proj_out"), c, c, 1);
}

void unet_enum_params(const UnetConfig *c, ParamFn fn, void *user)
{
    Emit e = {fn, user, 0};
    Emit *E = &e;
    char p[192];
    int n = c->n_blocks, L = c->layers_per_block;
    int64_t T = c->time_embed_dim, X = c->cross_dim;
    int lin = c->use_linear_projection;

    emit_conv(E, "conv_in", c->block_out[0], c->in_channels, 3);
    emit_linear(E, "time_embedding.linear_1", T, c->block_out[0], 1);
    emit_linear(E, "time_embedding.linear_2", T, T, 1);

    int64_t out = c->block_out[0];
    for (int b = 0; b < n; b++) {
        int64_t in = out;
        out = c->block_out[b];
        if (c->down_cross[b])
            for (int j = 0; j < L; j++) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", b, j);
                emit_transformer(E, p, out, X, lin);
            }
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", b, j);
            emit_resnet(E, p, j == 0 ? in : out, out, T);
        }
        if (b < n - 1) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", b);
            emit_conv(E, p, out, out, 3);
        }
    }

    /* up: channels reversed; resnet j takes the previous output (j = 0) or this block's
     * output, concatenated with a skip of width out (j < L) or of the next-lower block. */
    int64_t prev = c->block_out[n - 1];
    for (int b = 0; b < n; b++) {
        int64_t o = c->block_out[n - 1 - b];
        int64_t in = c->block_out[n - 1 - (b + 1 < n ? b + 1 : n - 1)];
        if (c->up_cross[b])
            for (int j = 0; j <= L; j++) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", b, j);
                emit_transformer(E, p, o, X, lin);
            }
        for (int j = 0; j <= L; j++) {
            int64_t skip = j == L ? in : o;
            int64_t res_in = j == 0 ? prev : o;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", b, j);
            emit_resnet(E, p, res_in + skip, o, T);
        }
        if (b < n - 1) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", b);
            emit_conv(E, p, o, o, 3);
        }
        prev = o;
    }

    int64_t m = c->block_out[n - 1];
    emit_transformer(E, "mid_block.attentions.0", m, X, lin);
    emit_resnet(E, "mid_block.resnets.0", m, m, T);
    emit_resnet(E, "mid_block.resnets.1", m, m, T);

    emit_norm(E, "conv_norm_out", c->block_out[0]);
    emit_conv(E, "conv_out", c->out_channels, c->block_out[0], 3);
}

/* diffusers UNetMidBlock2D as used by the VAE: one single-head Attention with group_norm. */
static void emit_vae_mid(Emit *e, const char *side, int64_t c)
{
    char p[192], b[192];
    snprintf(p, sizeof p, "%s.mid_block.attentions.0", side);
    emit_norm(e, cat(b, p, ".group_norm"), c);
    emit_attention(e, p, c, c, 1);
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", side);
    emit_resnet(e, p, c, c, 0);
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", side);
    emit_resnet(e, p, c, c, 0);
}

void vae_enum_params(const VaeConfig *c, ParamFn fn, void *user)
{
    Emit e = {fn, user, 0};
    Emit *E = &e;
    char p[192];
    int n = c->n_blocks, L = c->layers_per_block;
    int64_t z = c->latent_channels, top = c->block_out[n - 1];

    emit_conv(E, "encoder.conv_in", c->block_out[0], c->in_channels, 3);
    int64_t out = c->block_out[0];
    for (int b = 0; b < n; b++) {
        int64_t in = out;
        out = c->block_out[b];
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", b, j);
            emit_resnet(E, p, j == 0 ? in : out, out, 0);
        }
        if (b < n - 1) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.conv", b);
            emit_conv(E, p, out, out, 3);
        }
    }
    emit_vae_mid(E, "encoder", top);
    emit_norm(E, "encoder.conv_norm_out", top);
    emit_conv(E, "encoder.conv_out", 2 * z, top, 3);

    emit_conv(E, "decoder.conv_in", top, z, 3);
    int64_t prev = top;
    for (int b = 0; b < n; b++) {
        int64_t o = c->block_out[n - 1 - b];
        for (int j = 0; j <= L; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", b, j);
            emit_resnet(E, p, j == 0 ? prev : o, o, 0);
        }
        if (b < n - 1) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", b);
            emit_conv(E, p, o, o, 3);
        }
        prev = o;
    }
    emit_vae_mid(E, "decoder", top);
    emit_norm(E, "decoder.conv_norm_out", c->block_out[0]);
    emit_conv(E, "decoder.conv_out", c->out_channels, c->block_out[0], 3);

    emit_conv(E, "quant_conv", 2 * z, 2 * z, 1);
    emit_conv(E, "post_quant_conv", z, z, 1);
}

void clip_enum_params(const ClipConfig *c, ParamFn fn, void *user)
{
    Emit e = {fn, user, 0};
    Emit *E = &e;
    char p[192], b[192];
    int64_t D = c->hidden;
    emit(E, "text_model.embeddings.token_embedding", ".weight", 2, c->vocab_size, D, 0, 0);
    emit(E, "text_model.embeddings.position_embedding", ".weight", 2, c->max_pos, D, 0, 0);
    for (int l = 0; l < c->layers; l++) {
        snprintf(p, sizeof p, "text_model.encoder.layers.%d", l);
        emit_linear(E, cat(b, p, ".self_attn.k_proj"), D, D, 1);
        emit_linear(E, cat(b, p, ".self_attn.v_proj"), D, D, 1);
        emit_linear(E, cat(b, p, ".self_attn.q_proj"), D, D, 1);
        emit_linear(E, cat(b, p, ".self_attn.out_proj"), D, D, 1);
        emit_norm(E, cat(b, p, ".layer_norm1"), D);
        emit_linear(E, cat(b, p, ".mlp.fc1"), c->intermediate, D, 1);
        emit_linear(E, cat(b, p, ".mlp.fc2"), D, c->intermediate, 1);
        emit_norm(E, cat(b, p, ".layer_norm2"), D);
    }
    emit_norm(E, "text_model.final_layer_norm", D);
}
