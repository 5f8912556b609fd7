/* AutoencoderKL (diffusers autoencoders/autoencoder_kl.py + autoencoders/vae.py): encoder to
 * (mean, logvar), decoder back to pixels, as plain per-block forward functions.
 *
 * Weights stay as stored (F16/BF16 half-size in the mmap): each layer widens its weight into
 * one reused scratch (weights.h). Activations come from one allocation per call, carved by
 * vae_arena_size / vae_arena_carve; samples of a batch are run one after another (nothing in
 * the VAE mixes samples), so memory does not grow with the batch. Tiling (vae_tiled.c) runs
 * the same forward on overlapping tiles and blends them linearly.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_VAE_H
#define DB_VAE_H

#include "model.h"

#define VAE_MAX_RESNETS 17 /* decoder: layers_per_block (<= 16) + 1 per up block */
#define VAE_EPS 1e-6f      /* every VAE GroupNorm (resnets, mid attention, norm_out) */

/* One conv, linear or group norm: weight and bias (weight NULL: layer absent). */
typedef struct {
    const DbWeight *weight, *bias;
} VaeLayer;

/* diffusers ResnetBlock2D without time embedding:
 * out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), shortcut a 1x1 conv when
 * cin != cout (shortcut.weight NULL otherwise). */
typedef struct {
    VaeLayer norm1, conv1, norm2, conv2, shortcut;
    int cin, cout;
} VaeResnetParams;

/* diffusers Attention in UNetMidBlock2D: one head of dim C, group_norm, q/k/v with bias,
 * to_out.0, residual, rescale 1. */
typedef struct {
    VaeLayer norm, q, k, v, out;
} VaeAttnParams;

typedef struct {
    VaeResnetParams res0, res1;
    VaeAttnParams attn;
} VaeMidParams;

/* One half of the autoencoder. Encoder: conv_in, down_blocks (layers_per_block resnets,
 * Downsample2D except on the last), mid, conv_norm_out, conv_out, then quant_conv.
 * Decoder: post_quant_conv first, conv_in, mid, up_blocks (layers_per_block + 1 resnets,
 * Upsample2D except on the last), conv_norm_out, conv_out. */
typedef struct {
    VaeLayer quant; /* encoder: quant_conv (applied last); decoder: post_quant_conv (first) */
    VaeLayer conv_in;
    VaeResnetParams res[DB_MAX_BLOCKS][VAE_MAX_RESNETS];
    int n_res;                       /* resnets per block */
    VaeLayer resample[DB_MAX_BLOCKS]; /* downsamplers.0.conv / upsamplers.0.conv */
    VaeMidParams mid;
    VaeLayer norm_out, conv_out;
} VaeCoderParams;

/* Per-call scratch and progress state: weight scratch, conv im2col scratch, callback. */
typedef struct {
    const VaeConfig *c;
    float *wbuf;      /* [max weight elements] widened conv/linear weights */
    float *vbuf[2];   /* [max channels] each: widened bias, or norm weight and bias */
    float *col;       /* [col_size] conv im2col scratch */
    size_t col_size;
    DbProgressFn progress;
    void *user;
    const char *stage; /* "vae encoder" / "vae decoder" */
    size_t done, total; /* block steps over the whole call */
    int fault;          /* a conv found its scratch too small (a sizing bug) */
} VaeRun;

/* Activations of one sample's forward at one size: three rotating buffers, each able to hold
 * the largest [C, H, W] tensor of the pass, and q, k, v [N, C] of the mid-block attention. */
typedef struct {
    float *buf[3];
    float *q, *k, *v;
} VaeActs;

typedef enum { VAE_ENCODER = 0, VAE_DECODER = 1 } VaeSide;

/* Checks the config values the forward relies on. */
DbStatus vae_config_check(const VaeConfig *c, DbError *err);
/* 2^(n_blocks - 1). */
int vae_scale(const VaeConfig *c);

/* Looks up and shape-checks every weight of one side. */
DbStatus vae_params_build(VaeCoderParams *p, const DbModel *m, VaeSide side, DbError *err);

/* Floats of VaeActs for one sample of a side at an input of H x W (image pixels for the
 * encoder, latent cells for the decoder). Checked arithmetic. */
DbStatus vae_acts_size(size_t *nfloats, const VaeConfig *c, VaeSide side, size_t H, size_t W,
                       DbError *err);
void vae_acts_carve(VaeActs *a, float *mem, const VaeConfig *c, VaeSide side, size_t H,
                    size_t W);
/* Floats of VaeRun's weight scratch (wbuf + vbuf) for the weights of p that need widening. */
size_t vae_wscratch_size(const VaeCoderParams *p, const VaeConfig *c);
/* Points r->wbuf and r->vbuf into mem [vae_wscratch_size floats]. */
void vae_wscratch_carve(VaeRun *r, float *mem, const VaeCoderParams *p, const VaeConfig *c);
/* Conv im2col scratch floats for a pass at H x W (bounded: convs are chunked). */
size_t vae_col_size(const VaeConfig *c, VaeSide side, size_t H, size_t W);
/* Block steps (progress units) of one forward. */
size_t vae_steps(const VaeConfig *c, VaeSide side);

/* Encoder + quant_conv for one sample: moments [2z, H/f, W/f] (mean then logvar, logvar not
 * yet clamped) from image [Cin, H, W]. Returns the buffer of a that holds the moments. */
DbStatus vae_encoder_forward(float **moments, VaeActs *a, const float *image,
                             const VaeCoderParams *p, VaeRun *r, size_t H, size_t W);
/* post_quant_conv + decoder for one sample: sample [Cout, h*f, w*f] from latent [z, h, w]
 * (unscaled). Returns the buffer of a that holds the sample. */
DbStatus vae_decoder_forward(float **sample, VaeActs *a, const float *latent,
                             const VaeCoderParams *p, VaeRun *r, size_t h, size_t w);

#endif
