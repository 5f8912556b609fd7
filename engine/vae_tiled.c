/* VAE public entries: db_vae_encode / db_vae_decode, untiled or tiled.
 *
 * Tiling (in the spirit of diffusers AutoencoderKL.tiled_encode / tiled_decode): the input
 * is cut into equal tiles of t latent cells per side (t*f image pixels) starting every
 * t - ov cells, the last tile of a row or column moved back to end at the border (so every
 * tile has the same size and one activation arena fits all). Each tile runs through the
 * same forward on its own; the outputs are blended linearly over the overlaps:
 *   out(y, x) = sum_k wy_k(y) wx_k(x) tile_k(y, x) / (Wy(y) Wx(x)),  Wy = sum_k wy_k, ...
 * with wy_k a trapezoid that ramps from 0 to 1 over ov*u output cells at a tile edge that is
 * not an image border (u = f when decoding, 1 when encoding). The weights are separable and
 * the tiles form a grid, so the normaliser is the product of two 1-D sums: no image-sized
 * weight buffer. Encoding blends the moments (mean and logvar) and clamps logvar after.
 *
 * diffusers blends each tile into its already blended upper/left neighbours with ramps of
 * the overlap and crops tiles at a fixed row_limit; the results differ near seams from
 * these (both are approximations: a tile's group norms and mid-block attention see only
 * the tile). Untiled output equals the plain forward bit for bit (weights 1, normaliser 1).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "vae.h"

#include "bigalloc.h"
#include "weights.h"

#include <stdlib.h>
#include <string.h>

#define VAE_MAX_SIDE 16384                    /* image pixels per side */
#define VAE_DEFAULT_MAX_BYTES ((size_t)2 << 30) /* automatic tiling above 2 GiB of activations */

typedef struct {
    size_t n;        /* latent cells of the whole input along this axis */
    size_t t, step;  /* tile length and stride in latent cells */
    size_t count;    /* tiles */
} TileAxis;

static void axis_init(TileAxis *a, size_t n, size_t t, size_t ov)
{
    a->n = n;
    a->t = t < n ? t : n;
    a->step = a->t > ov ? a->t - ov : 1;
    a->count = a->t >= n ? 1 : 1 + (n - a->t + a->step - 1) / a->step;
}

static size_t axis_start(const TileAxis *a, size_t k)
{
    size_t s = k * a->step;
    return s + a->t > a->n ? a->n - a->t : s;
}

/* Blend weight of output cell p (0 <= p < t*u) of the tile starting at latent cell s:
 * linear ramps of R output cells at edges inside the image. */
static float axis_weight(const TileAxis *a, size_t s, size_t p, size_t u, size_t R)
{
    float w = 1.0f;
    if (R == 0) return w;
    if (s > 0) {
        float r = ((float)p + 0.5f) / (float)R;
        if (r < w) w = r;
    }
    if (s + a->t < a->n) {
        float r = ((float)(a->t * u - p) - 0.5f) / (float)R;
        if (r < w) w = r;
    }
    return w;
}

/* W [n*u] = sum over the tiles of their weights. */
static void axis_norm(float *W, const TileAxis *a, size_t u, size_t R)
{
    memset(W, 0, a->n * u * sizeof *W);
    for (size_t k = 0; k < a->count; k++) {
        size_t s = axis_start(a, k);
        for (size_t p = 0; p < a->t * u; p++)
            W[s * u + p] += axis_weight(a, s, p, u, R);
    }
}

/* dst [C, th, tw] = src [C, H, W] at (y0, x0) */
static void crop(float *dst, const float *src, size_t C, size_t H, size_t W, size_t y0,
                 size_t x0, size_t th, size_t tw)
{
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < C; c++)
        for (size_t y = 0; y < th; y++)
            memcpy(dst + (c * th + y) * tw, src + (c * H + y0 + y) * W + x0, tw * sizeof *dst);
}

/* out [C, H, W] at (y0, x0) += wy [th] x wx [tw] * tile [C, th, tw] */
static void accumulate(float *out, const float *tile, const float *wy, const float *wx, size_t C,
                       size_t H, size_t W, size_t y0, size_t x0, size_t th, size_t tw)
{
#pragma omp parallel for schedule(static)
    for (size_t cy = 0; cy < C * th; cy++) {
        size_t c = cy / th, y = cy % th;
        float *o = out + (c * H + y0 + y) * W + x0;
        const float *s = tile + cy * tw;
        for (size_t x = 0; x < tw; x++)
            o[x] += wy[y] * wx[x] * s[x];
    }
}

/* out [C, H, W] /= Wy [H] x Wx [W]; logvar clamp to [-30, 20] when clamp. */
static void normalise(float *out, const float *Wy, const float *Wx, size_t C, size_t H,
                      size_t W, int clamp)
{
#pragma omp parallel for schedule(static)
    for (size_t cy = 0; cy < C * H; cy++) {
        float *o = out + cy * W;
        float wy = Wy[cy % H];
        for (size_t x = 0; x < W; x++) {
            float v = o[x] / (wy * Wx[x]);
            if (clamp) v = v < -30.0f ? -30.0f : v > 20.0f ? 20.0f : v;
            o[x] = v;
        }
    }
}

typedef struct {
    VaeSide side;
    const float *in;   /* [B, cin, h*u_in, w*u_in] */
    float *out[2];     /* encoder: mean, logvar [B, z, h, w]; decoder: sample [B, cout, h*f, w*f] */
    size_t B, h, w;    /* latent size */
} VaeJob;

/* Tile size in latent cells from the options (0: untiled), after the automatic choice. */
static DbStatus choose_tiles(size_t *t, size_t *ov, const VaeConfig *c, VaeSide side, size_t h,
                             size_t w, const DbVaeOptions *o, DbError *err)
{
    const size_t f = (size_t)vae_scale(c);
    int tile = o ? o->tile : -1, overlap = o ? o->overlap : 0;
    if (tile < -1 || overlap < 0)
        return db_fail(err, DB_ERR_ARG, "vae: tile %d and overlap %d must not be negative", tile,
                       overlap);
    *t = 0, *ov = 0;
    if (tile == 0) return DB_OK;
    if (tile == -1) {
        size_t need, max = o && o->max_bytes ? o->max_bytes : VAE_DEFAULT_MAX_BYTES;
        size_t in = side == VAE_ENCODER ? f : 1;
        /* an overflow here just means "too large": tile */
        if (vae_acts_size(&need, c, side, h * in, w * in, NULL) == DB_OK &&
            need <= max / sizeof(float))
            return DB_OK;
        tile = c->sample_size >= (int)(4 * f) ? c->sample_size / (int)f * (int)f : (int)(64 * f);
    }
    if ((size_t)tile % f || (size_t)tile < 2 * f)
        return db_fail(err, DB_ERR_ARG, "vae: tile %d must be a multiple of the scale factor %zu "
                       "and at least %zu", tile, f, 2 * f);
    if (overlap == 0) overlap = (int)((size_t)tile / 4 / f * f);
    if ((size_t)overlap % f || overlap >= tile)
        return db_fail(err, DB_ERR_ARG, "vae: overlap %d must be a multiple of %zu below the tile "
                       "size %d", overlap, f, tile);
    *t = (size_t)tile / f, *ov = (size_t)overlap / f;
    return DB_OK;
}

static DbStatus vae_run_job(DbModel *m, const VaeJob *j, const DbVaeOptions *o,
                            DbProgressFn progress, void *user, DbError *err)
{
    const VaeConfig *c = &m->vae;
    VaeCoderParams *p = malloc(sizeof *p);
    if (!p) return db_fail(err, DB_ERR_NOMEM, "vae: out of memory");
    DbStatus st = vae_params_build(p, m, j->side, err);
    size_t t = 0, ov = 0;
    if (st == DB_OK) st = choose_tiles(&t, &ov, c, j->side, j->h, j->w, o, err);
    if (st != DB_OK) {
        free(p);
        return st;
    }
    const int enc = j->side == VAE_ENCODER;
    const size_t f = (size_t)vae_scale(c);
    const size_t u_in = enc ? f : 1, u_out = enc ? 1 : f;
    const size_t cin = (size_t)(enc ? c->in_channels : c->latent_channels);
    const size_t cout = (size_t)(enc ? c->latent_channels : c->out_channels);
    TileAxis ay, ax;
    axis_init(&ay, j->h, t ? t : j->h, ov);
    axis_init(&ax, j->w, t ? t : j->w, ov);
    const int tiled = ay.count > 1 || ax.count > 1;
    const size_t th = ay.t, tw = ax.t, R = ov * u_out;
    const size_t Hin = th * u_in, Win = tw * u_in, Hout = j->h * u_out, Wout = j->w * u_out;

    /* one allocation: activations, weight scratch, im2col, input crop, blend weights */
    size_t n_acts, n_w = vae_wscratch_size(p, c), n_col = vae_col_size(c, j->side, Hin, Win);
    size_t n_crop = tiled ? cin * Hin * Win : 0, n_blend = Hout + Wout + (th + tw) * u_out;
    size_t total = 0;
    st = vae_acts_size(&n_acts, c, j->side, Hin, Win, err);
    int ok = st == DB_OK && !__builtin_add_overflow(n_acts, n_w, &total) &&
             !__builtin_add_overflow(total, n_col, &total) &&
             !__builtin_add_overflow(total, n_crop, &total) &&
             !__builtin_add_overflow(total, n_blend, &total) && total < SIZE_MAX / sizeof(float);
    float *mem = ok ? db_big_alloc(total * sizeof *mem) : NULL;
    if (!mem) {
        free(p);
        if (st != DB_OK) return st;
        return db_fail(err, DB_ERR_NOMEM, "vae %s: cannot allocate %.1f MiB for %zu x %zu",
                       enc ? "encoder" : "decoder", (double)total * sizeof(float) / 1048576.0,
                       Hin, Win);
    }
    VaeActs acts;
    vae_acts_carve(&acts, mem, c, j->side, Hin, Win);
    float *q = mem + n_acts;
    VaeRun run = {.c = c, .progress = progress, .user = user,
                  .stage = enc ? "vae encoder" : "vae decoder"};
    vae_wscratch_carve(&run, q, p, c);
    q += n_w;
    run.col = q, run.col_size = n_col, q += n_col;
    float *crop_buf = q;
    q += n_crop;
    float *Wy = q, *Wx = Wy + Hout, *wy = Wx + Wout, *wx = wy + th * u_out;
    axis_norm(Wy, &ay, u_out, R);
    axis_norm(Wx, &ax, u_out, R);
    run.total = j->B * ay.count * ax.count * vae_steps(c, j->side);

    const size_t in_img = cin * j->h * u_in * j->w * u_in, out_img = cout * Hout * Wout;
    for (int i = 0; i < (enc ? 2 : 1); i++)
        memset(j->out[i], 0, j->B * out_img * sizeof(float));
    for (size_t b = 0; b < j->B && st == DB_OK; b++)
        for (size_t ky = 0; ky < ay.count && st == DB_OK; ky++)
            for (size_t kx = 0; kx < ax.count && st == DB_OK; kx++) {
                size_t sy = axis_start(&ay, ky), sx = axis_start(&ax, kx);
                const float *x = j->in + b * in_img;
                if (tiled) {
                    crop(crop_buf, x, cin, j->h * u_in, j->w * u_in, sy * u_in, sx * u_in, Hin,
                         Win);
                    x = crop_buf;
                }
                float *y;
                st = enc ? vae_encoder_forward(&y, &acts, x, p, &run, Hin, Win)
                         : vae_decoder_forward(&y, &acts, x, p, &run, th, tw);
                if (st != DB_OK) break;
                if (run.fault) {
                    st = db_fail(err, DB_ERR_NOMEM, "vae %s: conv scratch too small (a sizing "
                                 "bug)", enc ? "encoder" : "decoder");
                    break;
                }
                for (size_t i = 0; i < th * u_out; i++)
                    wy[i] = axis_weight(&ay, sy, i, u_out, R);
                for (size_t i = 0; i < tw * u_out; i++)
                    wx[i] = axis_weight(&ax, sx, i, u_out, R);
                size_t ch = cout * th * u_out * tw * u_out;
                for (int i = 0; i < (enc ? 2 : 1); i++)
                    accumulate(j->out[i] + b * out_img, y + (size_t)i * ch, wy, wx, cout, Hout,
                               Wout, sy * u_out, sx * u_out, th * u_out, tw * u_out);
            }
    if (st == DB_OK)
        for (size_t b = 0; b < j->B; b++)
            for (int i = 0; i < (enc ? 2 : 1); i++)
                normalise(j->out[i] + b * out_img, Wy, Wx, cout, Hout, Wout, i == 1);
    else if (st == DB_ERR_CANCELLED)
        db_fail(err, st, "vae %s: cancelled", enc ? "encoder" : "decoder");
    free(mem);
    free(p);
    return st;
}

static DbStatus check_args(const DbModel *m, const void *in, const void *o1, const void *o2,
                           int batch, int h, int w, const char *what, DbError *err)
{
    if (!m || !in || !o1 || !o2)
        return db_fail(err, DB_ERR_ARG, "%s: model, input and outputs are required", what);
    if (batch < 1 || h < 1 || w < 1)
        return db_fail(err, DB_ERR_ARG, "%s: batch %d and size %d x %d must be positive", what,
                       batch, h, w);
    return vae_config_check(&m->vae, err);
}

DbStatus db_vae_encode(DbModel *m, const float *image, int batch, int height, int width,
                       float *mean, float *logvar, const DbVaeOptions *opts,
                       DbProgressFn progress, void *user, DbError *err)
{
    DbStatus st = check_args(m, image, mean, logvar, batch, height, width, "vae encoder", err);
    if (st == DB_OK) st = model_check_finite(m, NET_VAE, err);
    if (st != DB_OK) return st;
    const int f = vae_scale(&m->vae);
    if (height % f || width % f || height > VAE_MAX_SIDE || width > VAE_MAX_SIDE)
        return db_fail(err, DB_ERR_ARG, "vae encoder: image %d x %d must be a multiple of the "
                       "scale factor %d and at most %d per side", height, width, f, VAE_MAX_SIDE);
    VaeJob j = {VAE_ENCODER, image, {mean, logvar}, (size_t)batch, (size_t)(height / f),
                (size_t)(width / f)};
    return vae_run_job(m, &j, opts, progress, user, err);
}

DbStatus db_vae_decode(DbModel *m, const float *latent, int batch, int height, int width,
                       float *image, const DbVaeOptions *opts, DbProgressFn progress, void *user,
                       DbError *err)
{
    DbStatus st = check_args(m, latent, image, image, batch, height, width, "vae decoder", err);
    if (st == DB_OK) st = model_check_finite(m, NET_VAE, err);
    if (st != DB_OK) return st;
    const int f = vae_scale(&m->vae);
    if (height > VAE_MAX_SIDE / f || width > VAE_MAX_SIDE / f)
        return db_fail(err, DB_ERR_ARG, "vae decoder: latent %d x %d is above %d per side",
                       height, width, VAE_MAX_SIDE / f);
    VaeJob j = {VAE_DECODER, latent, {image, NULL}, (size_t)batch, (size_t)height,
                (size_t)width};
    return vae_run_job(m, &j, opts, progress, user, err);
}

int db_vae_scale_factor(const DbModel *m) { return m ? vae_scale(&m->vae) : 0; }

void db_vae_dims(const DbModel *m, int *scale, int *in_channels, int *latent_channels,
                 int *out_channels)
{
    *scale = m ? vae_scale(&m->vae) : 0;
    *in_channels = m ? m->vae.in_channels : 0;
    *latent_channels = m ? m->vae.latent_channels : 0;
    *out_channels = m ? m->vae.out_channels : 0;
}
