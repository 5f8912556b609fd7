/* AutoencoderKL forward, one sample at a time (diffusers autoencoders/vae.py Encoder/Decoder,
 * resnet.py ResnetBlock2D, downsampling.py Downsample2D, upsampling.py Upsample2D,
 * attention_processor.py Attention / AttnProcessor, unet_2d_blocks.py UNetMidBlock2D).
 *
 *   encoder: x = conv_in(image); per level b: layers_per_block resnets, then (b < n-1)
 *            Downsample2D: pad (left 0, right 1, top 0, bottom 1) with zeros, 3x3 conv stride 2
 *            padding 0 (diffusers' padding=0 case of the VAE); mid; conv_out(silu(norm_out(x)))
 *            -> [2z]; quant_conv 1x1 -> moments = (mean, logvar)
 *   decoder: x = conv_in(post_quant_conv(z)); mid; per up level: layers_per_block + 1 resnets,
 *            then (not on the last) nearest 2x + 3x3 conv; conv_out(silu(norm_out(x)))
 *   mid:     resnet; x = x + to_out(softmax(q k^T / sqrt(C)) v) with q, k, v = to_*(gn(x))
 *            over the H*W tokens, one head of dim C; resnet
 * Every GroupNorm has eps 1e-6; SiLU follows every norm except the attention's.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "vae.h"

#include "kernels.h"
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int mul_ok(size_t *r, size_t a, size_t b) { return !__builtin_mul_overflow(a, b, r); }

DbStatus vae_config_check(const VaeConfig *c, DbError *err)
{
    if (c->n_blocks < 1 || c->n_blocks > DB_MAX_BLOCKS || c->layers_per_block < 1 ||
        c->layers_per_block + 1 > VAE_MAX_RESNETS || c->norm_groups < 1 ||
        c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1)
        return db_fail(err, DB_ERR_MODEL, "vae config: %d blocks, %d layers per block, %d groups "
                       "are out of range", c->n_blocks, c->layers_per_block, c->norm_groups);
    for (int b = 0; b < c->n_blocks; b++)
        if (c->block_out[b] < 1 || c->block_out[b] % c->norm_groups)
            return db_fail(err, DB_ERR_MODEL, "vae config: block_out_channels[%d] = %d is not a "
                           "positive multiple of %d groups", b, c->block_out[b], c->norm_groups);
    return DB_OK;
}

int vae_scale(const VaeConfig *c) { return 1 << (c->n_blocks - 1); }

/* ---- Parameters ------------------------------------------------------------------- */

/* Looks up prefix.weight / prefix.bias. kind: 'c' conv [o, i, k, k], 'l' linear [o, i]
 * (a 1x1 conv [o, i, 1, 1] is accepted too), 'n' group norm [o]. */
static DbStatus layer_get(VaeLayer *l, const DbModel *m, const char *prefix, char kind,
                          int64_t o, int64_t i, int64_t k, DbError *err)
{
    const char *path = m->path ? m->path : "model";
    char name[192];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const DbWeight *w = model_weight(m, name);
    snprintf(name, sizeof name, "%s.bias", prefix);
    const DbWeight *b = model_weight(m, name);
    if (!w || !b)
        return db_fail(err, DB_ERR_MODEL, "%s: vae weight %s.%s is missing", path, prefix,
                       w ? "bias" : "weight");
    int64_t want[4] = {o, i, k, k};
    int nd = kind == 'c' ? 4 : kind == 'l' ? 2 : 1;
    int ok = w->t.ndim == nd || (kind == 'l' && w->t.ndim == 4 && w->t.shape[2] == 1 &&
                                 w->t.shape[3] == 1);
    for (int d = 0; ok && d < nd; d++)
        ok = w->t.shape[d] == want[d];
    ok = ok && b->t.ndim == 1 && b->t.shape[0] == o;
    if (!ok) {
        char got[96], exp[96];
        return db_fail(err, DB_ERR_MODEL, "%s: %s.weight (%s) has shape %s, expected %s (bias [%lld])",
                       w->file, prefix, w->src_name,
                       tensor_shape_str(w->t.shape, w->t.ndim, got, sizeof got),
                       tensor_shape_str(want, nd, exp, sizeof exp), (long long)o);
    }
    if (!dtype_is_float_weight(w->t.dtype) || !dtype_is_float_weight(b->t.dtype))
        return db_fail(err, DB_ERR_MODEL, "%s: %s has dtype %s, expected F32, F16 or BF16",
                       w->file, prefix, dtype_name(w->t.dtype));
    l->weight = w;
    l->bias = b;
    return DB_OK;
}

#define TRY(x) do { DbStatus st_ = (x); if (st_ != DB_OK) return st_; } while (0)

static DbStatus resnet_get(VaeResnetParams *r, const DbModel *m, const char *p, int cin,
                           int cout, DbError *err)
{
    char n[192];
    r->cin = cin, r->cout = cout;
    snprintf(n, sizeof n, "%s.norm1", p);
    TRY(layer_get(&r->norm1, m, n, 'n', cin, 0, 0, err));
    snprintf(n, sizeof n, "%s.conv1", p);
    TRY(layer_get(&r->conv1, m, n, 'c', cout, cin, 3, err));
    snprintf(n, sizeof n, "%s.norm2", p);
    TRY(layer_get(&r->norm2, m, n, 'n', cout, 0, 0, err));
    snprintf(n, sizeof n, "%s.conv2", p);
    TRY(layer_get(&r->conv2, m, n, 'c', cout, cout, 3, err));
    r->shortcut.weight = r->shortcut.bias = NULL;
    if (cin != cout) {
        snprintf(n, sizeof n, "%s.conv_shortcut", p);
        TRY(layer_get(&r->shortcut, m, n, 'c', cout, cin, 1, err));
    }
    return DB_OK;
}

static DbStatus mid_get(VaeMidParams *mp, const DbModel *m, const char *side, int c,
                        DbError *err)
{
    char n[192];
    snprintf(n, sizeof n, "%s.mid_block.resnets.0", side);
    TRY(resnet_get(&mp->res0, m, n, c, c, err));
    snprintf(n, sizeof n, "%s.mid_block.resnets.1", side);
    TRY(resnet_get(&mp->res1, m, n, c, c, err));
    static const char *const names[5] = {"group_norm", "to_q", "to_k", "to_v", "to_out.0"};
    VaeLayer *slots[5] = {&mp->attn.norm, &mp->attn.q, &mp->attn.k, &mp->attn.v, &mp->attn.out};
    for (int i = 0; i < 5; i++) {
        snprintf(n, sizeof n, "%s.mid_block.attentions.0.%s", side, names[i]);
        TRY(layer_get(slots[i], m, n, i == 0 ? 'n' : 'l', c, c, 0, err));
    }
    return DB_OK;
}

DbStatus vae_params_build(VaeCoderParams *p, const DbModel *m, VaeSide side, DbError *err)
{
    const VaeConfig *c = &m->vae;
    TRY(vae_config_check(c, err));
    memset(p, 0, sizeof *p);
    const int n = c->n_blocks, z = c->latent_channels, top = c->block_out[n - 1];
    const char *s = side == VAE_ENCODER ? "encoder" : "decoder";
    char name[192];
    if (side == VAE_ENCODER) {
        TRY(layer_get(&p->quant, m, "quant_conv", 'c', 2 * z, 2 * z, 1, err));
        TRY(layer_get(&p->conv_in, m, "encoder.conv_in", 'c', c->block_out[0], c->in_channels,
                      3, err));
        p->n_res = c->layers_per_block;
        int out = c->block_out[0];
        for (int b = 0; b < n; b++) {
            int in = out;
            out = c->block_out[b];
            for (int j = 0; j < p->n_res; j++) {
                snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", b, j);
                TRY(resnet_get(&p->res[b][j], m, name, j == 0 ? in : out, out, err));
            }
            if (b < n - 1) {
                snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", b);
                TRY(layer_get(&p->resample[b], m, name, 'c', out, out, 3, err));
            }
        }
        TRY(layer_get(&p->conv_out, m, "encoder.conv_out", 'c', 2 * z, top, 3, err));
        TRY(layer_get(&p->norm_out, m, "encoder.conv_norm_out", 'n', top, 0, 0, err));
    } else {
        TRY(layer_get(&p->quant, m, "post_quant_conv", 'c', z, z, 1, err));
        TRY(layer_get(&p->conv_in, m, "decoder.conv_in", 'c', top, z, 3, err));
        p->n_res = c->layers_per_block + 1;
        int prev = top;
        for (int b = 0; b < n; b++) {
            int o = c->block_out[n - 1 - b];
            for (int j = 0; j < p->n_res; j++) {
                snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", b, j);
                TRY(resnet_get(&p->res[b][j], m, name, j == 0 ? prev : o, o, err));
            }
            if (b < n - 1) {
                snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", b);
                TRY(layer_get(&p->resample[b], m, name, 'c', o, o, 3, err));
            }
            prev = o;
        }
        TRY(layer_get(&p->norm_out, m, "decoder.conv_norm_out", 'n', c->block_out[0], 0, 0,
                      err));
        TRY(layer_get(&p->conv_out, m, "decoder.conv_out", 'c', c->out_channels,
                      c->block_out[0], 3, err));
    }
    return mid_get(&p->mid, m, s, top, err);
}

/* ---- Sizes -------------------------------------------------------------------------- */

/* Largest [C, H, W] tensor each of the three rotating buffers holds (checked products). */
typedef struct {
    size_t buf[3]; /* floats of x, y, t (a->buf[0..2]) */
    int overflow;
} VaeSizes;

/* The forwards below write three buffers x, y, t (a->buf[0..2]) and swap x and y after
 * each block; vae_sizes replays that sequence to size each buffer to the largest tensor it
 * ever holds (one size for all three wastes a whole 256-channel 512x512 plane). */
static void track(VaeSizes *s, const int slot[3], int which, size_t c, size_t h, size_t w)
{
    size_t n;
    if (!mul_ok(&n, c, h) || !mul_ok(&n, n, w)) {
        s->overflow = 1;
        return;
    }
    if (n > s->buf[slot[which]]) s->buf[slot[which]] = n;
}

enum { SX = 0, SY = 1, ST = 2 };

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static void swap_xy(int slot[3])
{
    int k = slot[SX];
    slot[SX] = slot[SY], slot[SY] = k;
}

/* vae_resnet_forward(y, t, x): out cout, tmp max(cin, cout) (norm1 of x, then norm2 and the
 * shortcut); then the caller swaps x and y. */
static void track_resnet(VaeSizes *s, int slot[3], size_t cin, size_t cout, size_t h, size_t w)
{
    track(s, slot, SY, cout, h, w);
    track(s, slot, ST, max_sz(cin, cout), h, w);
    swap_xy(slot);
}

/* vae_mid_forward(x, y, t): resnet into y, attention on y with x and t as scratch, resnet
 * back into x (no swap at the end). */
static void track_mid(VaeSizes *s, const int slot[3], size_t C, size_t h, size_t w)
{
    for (int i = 0; i < 3; i++)
        track(s, slot, i, C, h, w);
}

static VaeSizes vae_sizes(const VaeConfig *c, VaeSide side, size_t H, size_t W)
{
    VaeSizes s = {{0, 0, 0}, 0};
    int slot[3] = {0, 1, 2};
    const int n = c->n_blocks, L = c->layers_per_block;
    const size_t z = (size_t)c->latent_channels, top = (size_t)c->block_out[n - 1];
    if (side == VAE_ENCODER) {
        size_t C = (size_t)c->block_out[0];
        track(&s, slot, SX, C, H, W); /* conv_in */
        for (int b = 0; b < n; b++) {
            for (int j = 0; j < L; j++) {
                track_resnet(&s, slot, C, (size_t)c->block_out[b], H, W);
                C = (size_t)c->block_out[b];
            }
            if (b < n - 1) { /* downsample into y, swap */
                H /= 2, W /= 2;
                track(&s, slot, SY, C, H, W);
                swap_xy(slot);
            }
        }
        track_mid(&s, slot, C, H, W);
        track(&s, slot, ST, C, H, W);     /* norm_out */
        track(&s, slot, SY, 2 * z, H, W); /* conv_out */
        track(&s, slot, SX, 2 * z, H, W); /* quant_conv */
    } else {
        size_t C = top;
        track(&s, slot, SY, z, H, W); /* post_quant_conv */
        track(&s, slot, SX, C, H, W); /* conv_in */
        track_mid(&s, slot, C, H, W);
        for (int b = 0; b < n; b++) {
            for (int j = 0; j < L + 1; j++) { /* decoder up blocks: layers_per_block + 1 */
                track_resnet(&s, slot, C, (size_t)c->block_out[n - 1 - b], H, W);
                C = (size_t)c->block_out[n - 1 - b];
            }
            if (b < n - 1) { /* nearest 2x into t, conv into y, swap */
                H *= 2, W *= 2;
                track(&s, slot, ST, C, H, W);
                track(&s, slot, SY, C, H, W);
                swap_xy(slot);
            }
        }
        track(&s, slot, ST, C, H, W);                          /* norm_out */
        track(&s, slot, SY, (size_t)c->out_channels, H, W); /* conv_out */
    }
    return s;
}

DbStatus vae_acts_size(size_t *nfloats, const VaeConfig *c, VaeSide side, size_t H, size_t W,
                       DbError *err)
{
    const int f = vae_scale(c);
    size_t h = side == VAE_ENCODER ? H / (size_t)f : H, w = side == VAE_ENCODER ? W / (size_t)f : W;
    VaeSizes s = vae_sizes(c, side, H, W);
    size_t attn, total, t;
    int ok = !s.overflow && mul_ok(&attn, h, w) &&
             mul_ok(&attn, attn, (size_t)c->block_out[c->n_blocks - 1]) &&
             !__builtin_add_overflow(s.buf[0], s.buf[1], &total) &&
             !__builtin_add_overflow(total, s.buf[2], &total) && mul_ok(&t, attn, 3) &&
             !__builtin_add_overflow(total, t, &total) && mul_ok(&t, total, sizeof(float));
    if (!ok)
        return db_fail(err, DB_ERR_NOMEM, "vae %s: activations for %zu x %zu are too large",
                       side == VAE_ENCODER ? "encoder" : "decoder", H, W);
    *nfloats = total;
    return DB_OK;
}

void vae_acts_carve(VaeActs *a, float *mem, const VaeConfig *c, VaeSide side, size_t H, size_t W)
{
    const size_t f = (size_t)vae_scale(c);
    const size_t h = side == VAE_ENCODER ? H / f : H, w = side == VAE_ENCODER ? W / f : W;
    const VaeSizes s = vae_sizes(c, side, H, W);
    const size_t attn = h * w * (size_t)c->block_out[c->n_blocks - 1];
    for (int i = 0; i < 3; i++)
        a->buf[i] = mem, mem += s.buf[i];
    a->q = mem, mem += attn;
    a->k = mem, mem += attn;
    a->v = mem;
}

/* Conv and linear weights widen into wbuf, their biases into vbuf[0]; a group norm's weight
 * and bias into vbuf[0] and vbuf[1]. */
static void wmax(size_t *big, size_t *vec, const VaeLayer *l)
{
    if (!l->weight) return;
    size_t *slot = l->weight->t.ndim == 1 ? vec : big;
    if (weight_needs_scratch(l->weight) && l->weight->t.nelem > *slot)
        *slot = l->weight->t.nelem;
    if (weight_needs_scratch(l->bias) && l->bias->t.nelem > *vec)
        *vec = l->bias->t.nelem;
}

static void wmax_resnet(size_t *big, size_t *vec, const VaeResnetParams *r)
{
    wmax(big, vec, &r->norm1), wmax(big, vec, &r->conv1), wmax(big, vec, &r->norm2);
    wmax(big, vec, &r->conv2), wmax(big, vec, &r->shortcut);
}

/* Layout: wbuf [big], vbuf[0] [vec], vbuf[1] [vec]. */
static void wscratch_dims(size_t *pbig, size_t *pvec, const VaeCoderParams *p, const VaeConfig *c)
{
    size_t big = 0, vec = 0;
    wmax(&big, &vec, &p->quant), wmax(&big, &vec, &p->conv_in);
    for (int b = 0; b < c->n_blocks; b++) {
        for (int j = 0; j < p->n_res; j++)
            wmax_resnet(&big, &vec, &p->res[b][j]);
        wmax(&big, &vec, &p->resample[b]);
    }
    wmax_resnet(&big, &vec, &p->mid.res0), wmax_resnet(&big, &vec, &p->mid.res1);
    wmax(&big, &vec, &p->mid.attn.norm), wmax(&big, &vec, &p->mid.attn.q);
    wmax(&big, &vec, &p->mid.attn.k), wmax(&big, &vec, &p->mid.attn.v);
    wmax(&big, &vec, &p->mid.attn.out);
    wmax(&big, &vec, &p->norm_out), wmax(&big, &vec, &p->conv_out);
    *pbig = big, *pvec = vec;
}

size_t vae_wscratch_size(const VaeCoderParams *p, const VaeConfig *c)
{
    size_t big, vec;
    wscratch_dims(&big, &vec, p, c);
    return big + 2 * vec;
}

void vae_wscratch_carve(VaeRun *r, float *mem, const VaeCoderParams *p, const VaeConfig *c)
{
    size_t big, vec;
    wscratch_dims(&big, &vec, p, c);
    r->wbuf = mem;
    r->vbuf[0] = mem + big;
    r->vbuf[1] = mem + big + vec;
}

size_t vae_steps(const VaeConfig *c, VaeSide side)
{
    const size_t n = (size_t)c->n_blocks;
    const size_t L = (size_t)c->layers_per_block + (side == VAE_DECODER);
    /* conv_in, resnets, resamplers, mid (3), output */
    return 1 + n * L + (n - 1) + 3 + 1;
}

/* ---- Layers (weights widened per call into the run's scratch) ------------------------ */

/* out [cout, Ho, Wo] = conv2d(inp [cin, H, W]), k x k kernel, stride, zero padding pad_lo
 * (top, left) and pad_hi (bottom, right). r->fault is set if the im2col scratch is too small
 * (vae_col_size makes that impossible). */
static void vae_conv(float *out, const float *inp, const VaeLayer *l, VaeRun *r, size_t cin,
                     size_t cout, size_t H, size_t W, size_t k, size_t stride, size_t pad_lo,
                     size_t pad_hi)
{
    const float *w = weight_f32(l->weight, r->wbuf);
    const float *b = weight_f32(l->bias, r->vbuf[0]);
    if (conv2d_forward(out, inp, w, b, r->col, r->col_size, 1, cin, H, W, cout, k, stride,
                       pad_lo, pad_hi) != 0)
        r->fault = 1;
}

/* out [C, HW] = GroupNorm(groups, C, eps 1e-6)(inp [C, HW]), then SiLU when silu. */
static void vae_norm(float *out, const float *inp, const VaeLayer *l, VaeRun *r, size_t C,
                     size_t HW, int silu)
{
    const float *w = weight_f32(l->weight, r->vbuf[0]);
    const float *b = weight_f32(l->bias, r->vbuf[1]);
    groupnorm_forward(out, NULL, NULL, inp, w, b, 1, C, HW, (size_t)r->c->norm_groups, VAE_EPS,
                      silu);
}

/* out [N, OC] = inp [N, IC] @ weight^T + bias (a 1x1 conv stored [OC, IC, 1, 1] is the same) */
static void vae_linear(float *out, const float *inp, const VaeLayer *l, VaeRun *r, size_t N,
                       size_t IC, size_t OC)
{
    const float *w = weight_f32(l->weight, r->wbuf);
    const float *b = weight_f32(l->bias, r->vbuf[0]);
    linear_forward(out, inp, w, b, N, IC, OC);
}

#define VAE_TB 32 /* transpose tile */

/* out [N, C] = inp [C, N]^T */
static void transpose_cn(float *out, const float *inp, size_t C, size_t N)
{
#pragma omp parallel for schedule(static)
    for (size_t n0 = 0; n0 < N; n0 += VAE_TB)
        for (size_t c0 = 0; c0 < C; c0 += VAE_TB)
            for (size_t n = n0; n < n0 + VAE_TB && n < N; n++)
                for (size_t c = c0; c < c0 + VAE_TB && c < C; c++)
                    out[n * C + c] = inp[c * N + n];
}

/* x [C, N] += inp [N, C]^T */
static void add_transposed(float *x, const float *inp, size_t C, size_t N)
{
#pragma omp parallel for schedule(static)
    for (size_t c0 = 0; c0 < C; c0 += VAE_TB)
        for (size_t n0 = 0; n0 < N; n0 += VAE_TB)
            for (size_t c = c0; c < c0 + VAE_TB && c < C; c++)
                for (size_t n = n0; n < n0 + VAE_TB && n < N; n++)
                    x[c * N + n] += inp[n * C + c];
}

/* ---- Blocks ------------------------------------------------------------------------- */

/* out [cout, H, W] = ResnetBlock2D(x [cin, H, W]); tmp [max(cin, cout), H, W] scratch:
 * h = conv1(silu(norm1(x))); h = conv2(silu(norm2(h))); out = shortcut(x) + h. */
static void vae_resnet_forward(float *out, float *tmp, const float *x, const VaeResnetParams *p,
                               VaeRun *r, size_t H, size_t W)
{
    const size_t cin = (size_t)p->cin, cout = (size_t)p->cout, HW = H * W;
    vae_norm(tmp, x, &p->norm1, r, cin, HW, 1);
    vae_conv(out, tmp, &p->conv1, r, cin, cout, H, W, 3, 1, 1, 1);
    vae_norm(tmp, out, &p->norm2, r, cout, HW, 1);
    vae_conv(out, tmp, &p->conv2, r, cout, cout, H, W, 3, 1, 1, 1);
    if (p->shortcut.weight) {
        vae_conv(tmp, x, &p->shortcut, r, cin, cout, H, W, 1, 1, 0, 0);
        residual_add(out, tmp, cout * HW);
    } else {
        residual_add(out, x, cout * HW);
    }
}

/* x [C, N] += to_out(softmax(q k^T / sqrt(C)) v), q, k, v = to_q/k/v(group_norm(x)^T) over
 * the N = H*W tokens (one head of dim C). t1, t2 [C * N] scratch; q, k, v [N, C]. */
static void vae_attn_forward(float *x, float *t1, float *t2, float *q, float *k, float *v,
                             const VaeAttnParams *p, VaeRun *r, size_t C, size_t N)
{
    vae_norm(t1, x, &p->norm, r, C, N, 0);
    transpose_cn(t2, t1, C, N);
    vae_linear(q, t2, &p->q, r, N, C, C);
    vae_linear(k, t2, &p->k, r, N, C, C);
    vae_linear(v, t2, &p->v, r, N, C, C);
    attention_forward(t1, NULL, q, k, v, 1, N, N, 1, C, (float)(1.0 / sqrt((double)C)), 0);
    vae_linear(t2, t1, &p->out, r, N, C, C);
    add_transposed(x, t2, C, N);
}

/* out [C, H/2, W/2] = Downsample2D(x [C, H, W]): F.pad(x, (0, 1, 0, 1)) then a 3x3 conv
 * with stride 2 and no padding, i.e. zero padding 0 at the top/left and 1 at the
 * bottom/right (diffusers Downsample2D with padding=0, as the VAE encoder uses it). */
static void vae_downsample_forward(float *out, const float *x, const VaeLayer *conv, VaeRun *r,
                                   size_t C, size_t H, size_t W)
{
    vae_conv(out, x, conv, r, C, C, H, W, 3, 2, 0, 1);
}

/* out [C, 2H, 2W] = Upsample2D(x [C, H, W]) (nearest 2x, 3x3 conv); tmp [C, 2H, 2W]. */
static void vae_upsample_forward(float *out, float *tmp, const float *x, const VaeLayer *conv,
                                 VaeRun *r, size_t C, size_t H, size_t W)
{
    upsample_nearest2x_forward(tmp, x, 1, C, H, W);
    vae_conv(out, tmp, conv, r, C, C, 2 * H, 2 * W, 3, 1, 1, 1);
}

/* One finished block: progress and cancellation. */
static DbStatus vae_step(VaeRun *r)
{
    r->done++;
    if (r->progress && r->progress(r->user, r->total ? (double)r->done / (double)r->total : 1.0,
                                   r->stage))
        return DB_ERR_CANCELLED;
    return DB_OK;
}

/* UNetMidBlock2D in place on x [C, H, W]: resnet, attention, resnet; y, t scratch. */
static DbStatus vae_mid_forward(float *x, float *y, float *t, VaeActs *a, const VaeMidParams *p,
                                VaeRun *r, size_t C, size_t H, size_t W)
{
    vae_resnet_forward(y, t, x, &p->res0, r, H, W);
    TRY(vae_step(r));
    vae_attn_forward(y, x, t, a->q, a->k, a->v, &p->attn, r, C, H * W);
    TRY(vae_step(r));
    vae_resnet_forward(x, t, y, &p->res1, r, H, W);
    return vae_step(r);
}

#define SWAP(a, b) do { float *s_ = (a); (a) = (b); (b) = s_; } while (0)

DbStatus vae_encoder_forward(float **moments, VaeActs *a, const float *image,
                             const VaeCoderParams *p, VaeRun *r, size_t H, size_t W)
{
    const VaeConfig *c = r->c;
    const int n = c->n_blocks;
    const size_t z2 = 2 * (size_t)c->latent_channels;
    float *x = a->buf[0], *y = a->buf[1], *t = a->buf[2];
    size_t C = (size_t)c->block_out[0];
    vae_conv(x, image, &p->conv_in, r, (size_t)c->in_channels, C, H, W, 3, 1, 1, 1);
    TRY(vae_step(r));
    for (int b = 0; b < n; b++) {
        for (int j = 0; j < p->n_res; j++) {
            vae_resnet_forward(y, t, x, &p->res[b][j], r, H, W);
            SWAP(x, y);
            C = (size_t)p->res[b][j].cout;
            TRY(vae_step(r));
        }
        if (b < n - 1) {
            vae_downsample_forward(y, x, &p->resample[b], r, C, H, W);
            SWAP(x, y);
            H /= 2, W /= 2;
            TRY(vae_step(r));
        }
    }
    TRY(vae_mid_forward(x, y, t, a, &p->mid, r, C, H, W));
    vae_norm(t, x, &p->norm_out, r, C, H * W, 1);
    vae_conv(y, t, &p->conv_out, r, C, z2, H, W, 3, 1, 1, 1);
    vae_conv(x, y, &p->quant, r, z2, z2, H, W, 1, 1, 0, 0);
    *moments = x;
    return vae_step(r);
}

DbStatus vae_decoder_forward(float **sample, VaeActs *a, const float *latent,
                             const VaeCoderParams *p, VaeRun *r, size_t H, size_t W)
{
    const VaeConfig *c = r->c;
    const int n = c->n_blocks;
    const size_t z = (size_t)c->latent_channels;
    float *x = a->buf[0], *y = a->buf[1], *t = a->buf[2];
    size_t C = (size_t)c->block_out[n - 1];
    vae_conv(y, latent, &p->quant, r, z, z, H, W, 1, 1, 0, 0);
    vae_conv(x, y, &p->conv_in, r, z, C, H, W, 3, 1, 1, 1);
    TRY(vae_step(r));
    TRY(vae_mid_forward(x, y, t, a, &p->mid, r, C, H, W));
    for (int b = 0; b < n; b++) {
        for (int j = 0; j < p->n_res; j++) {
            vae_resnet_forward(y, t, x, &p->res[b][j], r, H, W);
            SWAP(x, y);
            C = (size_t)p->res[b][j].cout;
            TRY(vae_step(r));
        }
        if (b < n - 1) {
            vae_upsample_forward(y, t, x, &p->resample[b], r, C, H, W);
            SWAP(x, y);
            H *= 2, W *= 2;
            TRY(vae_step(r));
        }
    }
    vae_norm(t, x, &p->norm_out, r, C, H * W, 1);
    vae_conv(y, t, &p->conv_out, r, C, (size_t)c->out_channels, H, W, 3, 1, 1, 1);
    *sample = y;
    return vae_step(r);
}

/* im2col chunk: every conv gets at least one whole output row (C*K*K*OW floats, the most
 * any conv of the pass needs), and up to VAE_COL_FLOATS so that sgemm sees a few thousand
 * output pixels at a time; never the whole im2col matrix of a large image. The same scratch
 * serves conv2d_forward's Winograd path (3x3 stride 1): the 16*C*C transformed weights of
 * the widest layer plus at least one row of tiles (16*2C*W), so that path is open to every
 * 3x3 conv of the pass (64 MiB at SD shapes: the 512-channel layers get ~2000-tile GEMMs). */
#define VAE_COL_FLOATS ((size_t)1 << 24)

static void col_track(size_t *row, size_t *full, size_t C, size_t K, size_t OH, size_t OW)
{
    size_t r = C * K * K * OW;
    if (r > *row) *row = r;
    if (r * OH > *full) *full = r * OH;
}

size_t vae_col_size(const VaeConfig *c, VaeSide side, size_t H, size_t W)
{
    /* no overflow: the entries cap H, W at 16384 image pixels and the config channels at
     * 65536, so C*9*H*W < 2^50 */
    size_t row = 0, full = 0;
    const int n = c->n_blocks;
    size_t cmax = (size_t)(side == VAE_ENCODER ? c->in_channels : c->latent_channels);
    for (int b = 0; b < n; b++)
        if ((size_t)c->block_out[b] > cmax) cmax = (size_t)c->block_out[b];
    if (side == VAE_DECODER)
        for (int b = 0; b < n - 1; b++)
            H *= 2, W *= 2;
    /* an upper bound: the widest input at the largest resolution */
    col_track(&row, &full, cmax, 3, H, W);
    size_t cap = full < VAE_COL_FLOATS ? full : row > VAE_COL_FLOATS ? row : VAE_COL_FLOATS;
    size_t wino = 16 * cmax * cmax + 32 * cmax * W;
    return cap > wino ? cap : wino;
}
