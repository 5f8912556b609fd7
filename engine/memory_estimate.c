/* Peak memory of a run from the networks' own size functions (unet.h, vae.h, clip.h) plus the
 * weights it maps: with mmap'd weights every page read stays resident (and counts in RSS), so
 * the estimate is weights + the widened copies the model keeps (text encoder; the UNet's fp32
 * weight cache, whose half-precision pages are released) + the largest call's one allocation
 * (each network call allocates once; the UNet keeps its allocation across calls, released
 * before a VAE decode) + the caller's buffers + a fixed base. Calls run one after another, so
 * the work term is a max, not a sum.
 * A network's weights are read (NaN/Inf scan, weights_check.c) on its first use, so the
 * mapped weights resident are those of the networks the task runs (file pages: reclaimable,
 * but they count in the peak RSS the estimate is checked against).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "memory_estimate.h"

#include "model.h"
#include "unet.h"
#include "vae.h"

#include <glib.h>
#include <stdio.h>
#include <string.h>

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

typedef struct {
    uint64_t bytes[NET_COUNT];     /* stored bytes per network */
    uint64_t widened[NET_COUNT];   /* f32 bytes of non-F32 weights */
    uint64_t largest[NET_COUNT];   /* floats of the largest weight (widening scratch) */
    uint64_t vae_side[2];          /* stored bytes of the VAE encoder / decoder (VaeSide) */
} WeightSums;

static NetKind net_of(const char *name)
{
    if (!strncmp(name, "text_model.", 11)) return NET_TEXT;
    if (!strncmp(name, "encoder.", 8) || !strncmp(name, "decoder.", 8) ||
        !strncmp(name, "quant_conv.", 11) || !strncmp(name, "post_quant_conv.", 16))
        return NET_VAE;
    return NET_UNET;
}

static void sum_weights(const DbModel *m, WeightSums *s)
{
    memset(s, 0, sizeof *s);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, m->weights);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const DbWeight *w = v;
        NetKind n = net_of(k);
        s->bytes[n] += w->t.nbytes;
        if (n == NET_VAE) /* encoder.*, quant_conv.* / decoder.*, post_quant_conv.* */
            s->vae_side[*(const char *)k == 'e' || *(const char *)k == 'q' ? VAE_ENCODER : VAE_DECODER] +=
                w->t.nbytes;
        if (w->t.dtype != DB_DTYPE_F32) s->widened[n] += (uint64_t)w->t.nelem * 4;
        if (w->t.nelem > s->largest[n]) s->largest[n] = w->t.nelem;
    }
}

/* One db_unet_forward: activations + block work + im2col + widening scratch (unet.c's one
 * allocation; the block work is the largest resnet/transformer work at any level). */
static uint64_t unet_bytes(const DbModel *m, const WeightSums *s, size_t B, size_t h, size_t w)
{
    const UnetConfig *c = &m->unet;
    UnetDims d = {B, h, w, DB_CONTEXT_LEN};
    size_t acts = 0;
    if (unet_acts_size(&acts, c, &d, NULL) != DB_OK) return 0;
    size_t work = 0, G = (size_t)c->norm_groups;
    for (int b = 0; b < c->n_blocks; b++) {
        size_t C = (size_t)c->block_out[b], hw = (h >> b) * (w >> b);
        size_t up = (size_t)c->block_out[b + 1 < c->n_blocks ? b + 1 : b];
        work = zmax(work, unet_resnet_work_size(C + zmax(C, up), C, B, hw, G));
        work = zmax(work, unet_transformer_work_size(C, B, hw, DB_CONTEXT_LEN, G));
    }
    return 4 * ((uint64_t)acts + work + unet_conv_scratch_size(c, &d) + s->largest[NET_UNET]);
}

/* One VAE call on one sample (samples run one after another), tiled as vae_tiled.c does:
 * automatic = untiled unless the activations exceed max_bytes (2 GiB), then sample_size tiles. */
static uint64_t vae_bytes(const DbModel *m, const WeightSums *s, VaeSide side, size_t H, size_t W,
                          const DbVaeOptions *o)
{
    const VaeConfig *c = &m->vae;
    /* vae_acts_size and vae_col_size take image pixels for the encoder, latent pixels for
     * the decoder */
    const size_t f = side == VAE_ENCODER ? 1 : (size_t)db_vae_scale_factor(m);
    size_t tile = 0, acts = 0;
    if (!o || o->tile < 0) {
        size_t lim = o && o->max_bytes ? o->max_bytes : (size_t)2 << 30;
        if (vae_acts_size(&acts, c, side, H / f, W / f, NULL) != DB_OK) return 0;
        if (acts * 4 > lim) tile = (size_t)(c->sample_size > 0 ? c->sample_size : 512);
    } else {
        tile = (size_t)o->tile;
    }
    size_t th = tile && tile < H ? tile : H, tw = tile && tile < W ? tile : W;
    if (vae_acts_size(&acts, c, side, th / f, tw / f, NULL) != DB_OK) return 0;
    uint64_t n = (uint64_t)acts + vae_col_size(c, side, th / f, tw / f) + 2 * s->largest[NET_VAE];
    if (tile) n += (uint64_t)(c->out_channels + 4) * th * tw; /* tile copies and blend weights */
    return 4 * n;
}

/* The UNet's fp32 weight cache (unet_run.c), sized as db_unet_forward sizes it for a first
 * call of *work bytes: its copies are owned, the half-precision pages they replace are
 * released, and with every weight copied the widening scratch is never touched. */
static void unet_cache(const DbModel *m, const WeightSums *s, uint64_t available,
                       DbMemoryEstimate *est, uint64_t *work)
{
    const uint64_t scratch = 4 * s->largest[NET_UNET];
    const uint64_t full = unet_weight_cache_full(m);
    int n_cached;
    size_t made;
    unet_run_cache_info(m, &n_cached, &made); /* a cache already made (0 before the first call) */
    const uint64_t cache = m->unet_run ? made : unet_weight_cache_bytes(m, *work - scratch, available);
    est->owned += cache;
    est->weights -= cache / 2 < est->weights ? cache / 2 : est->weights;
    if (full && cache == full)
        *work -= scratch;
}

uint64_t db_memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

int db_estimate_memory(const DbModel *m, DbTask task, int batch, int width, int height,
                       float cfg, const DbVaeOptions *vae, DbMemoryEstimate *est)
{
    memset(est, 0, sizeof *est);
    if (!m || batch < 1 || width < 0 || height < 0 || width > 65536 || height > 65536 ||
        batch > 100000)
        return 0;
    WeightSums s;
    sum_weights(m, &s);
    const uint64_t available = db_memory_available();
    const size_t f = (size_t)db_vae_scale_factor(m), B = (size_t)batch;
    const size_t H = (size_t)height, W = (size_t)width;
    const uint64_t D = (uint64_t)m->clip.hidden, ctx = 4 * DB_CONTEXT_LEN * D;
    const uint64_t C = (uint64_t)m->vae.latent_channels;
    const uint64_t all = s.bytes[NET_TEXT] + s.bytes[NET_UNET] + s.bytes[NET_VAE];
    switch (task) {
    case DB_TASK_TEXT_ENCODER:
        est->weights = s.bytes[NET_TEXT];
        est->owned = s.widened[NET_TEXT];
        est->work = B * ctx * 8; /* clip_acts_size: a few [B, 77, D] and [B, 77, 4D] */
        est->buffers = B * ctx;
        break;
    case DB_TASK_UNET: /* width, height: latent size */
        est->weights = s.bytes[NET_UNET];
        est->work = unet_bytes(m, &s, B, H, W);
        if (est->work) unet_cache(m, &s, available, est, &est->work);
        est->buffers = 4 * B * (2 * (uint64_t)m->unet.in_channels * H * W) + B * ctx;
        if (!est->work) return 0;
        break;
    case DB_TASK_VAE_ENCODE:
    case DB_TASK_VAE_DECODE:
        if (!f || H % f || W % f) return 0;
        est->weights = s.vae_side[task == DB_TASK_VAE_ENCODE ? VAE_ENCODER : VAE_DECODER];
        est->work = vae_bytes(m, &s, task == DB_TASK_VAE_ENCODE ? VAE_ENCODER : VAE_DECODER, H, W, vae);
        est->buffers = 4 * B * (3 * H * W + 2 * C * (H / f) * (W / f));
        if (!est->work) return 0;
        break;
    case DB_TASK_GENERATE: {
        if (!f || H % f || W % f) return 0;
        const size_t ub = cfg > 1.0f ? 2 : 1;
        est->weights = all;
        est->owned = s.widened[NET_TEXT];
        uint64_t u = unet_bytes(m, &s, ub, H / f, W / f);
        uint64_t v = vae_bytes(m, &s, VAE_DECODER, H, W, vae);
        if (!u || !v) return 0;
        unet_cache(m, &s, available, est, &u);
        est->work = u > v ? u : v;
        /* generate.c: 5 latents + context + one image; the CLI keeps 8-bit copies */
        est->buffers = 4 * (5 * C * (H / f) * (W / f) + ub * ctx / 4 + 3 * H * W) + 3 * H * W;
        break;
    }
    default:
        return 0;
    }
    est->bytes = est->weights + est->owned + est->work + est->buffers + DB_MEMORY_BASE_BYTES;
    est->available = available;
    return 1;
}
