/* The model's UNet runtime: db_unet_forward, with what it keeps between calls.
 *
 * A sampling run calls the UNet once per step at one shape. Rebuilding the parameter view,
 * widening ~860M half-precision weights and faulting in a fresh ~1-2 GB activation
 * allocation on every call cost about a quarter of a 256x256 step, so m->unet_run keeps the
 * UnetState (1-D parameters widened, plus the fp32 weight cache of DbWeightCache) and the
 * largest activation allocation made so far. unet_run_release gives the activations back
 * (generate does before the VAE decode), unet_run_free everything (model free, LoRA merge).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "bigalloc.h"
#include "memory_estimate.h"
#include "unet.h"
#include "weights.h"

#include <glib.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    UnetState *s;
    float *mem;       /* activations + work + scratch of the largest call so far */
    size_t mem_floats;
} UnetRun;

#define CACHE_HEADROOM ((uint64_t)1 << 30)

uint64_t unet_weight_cache_full(const DbModel *m)
{
    const GPtrArray *names = m->net_weights[NET_UNET];
    uint64_t bytes = 0;
    for (guint i = 0; names && i < names->len; i++) {
        const DbWeight *w = model_weight(m, g_ptr_array_index((GPtrArray *)names, i));
        if (w && w->t.ndim >= 2 && weight_needs_scratch(w))
            bytes += (uint64_t)w->t.nelem * sizeof(float);
    }
    return bytes;
}

uint64_t unet_weight_cache_bytes(const DbModel *m, uint64_t work_bytes, uint64_t available)
{
    const uint64_t full = unet_weight_cache_full(m);
    switch (m->weight_cache) {
    case DB_WEIGHT_CACHE_NONE:
        return 0;
    case DB_WEIGHT_CACHE_ALL:
        return full;
    default:
        if (available <= work_bytes + CACHE_HEADROOM)
            return 0;
        return available - work_bytes - CACHE_HEADROOM < full
                   ? available - work_bytes - CACHE_HEADROOM
                   : full;
    }
}

void unet_run_release(DbModel *m)
{
    UnetRun *r = m->unet_run;
    if (!r)
        return;
    free(r->mem);
    r->mem = NULL, r->mem_floats = 0;
}

void unet_run_free(DbModel *m)
{
    UnetRun *r = m->unet_run;
    if (!r)
        return;
    unet_state_free(r->s);
    free(r->mem);
    free(r);
    m->unet_run = NULL;
}

void unet_run_cache_info(const DbModel *m, int *n_cached, size_t *bytes)
{
    const UnetRun *r = m->unet_run;
    *n_cached = 0, *bytes = 0;
    if (r && r->s)
        unet_state_cache_info(r->s, n_cached, bytes);
}

int db_unet_out_channels(const DbModel *m) { return m ? m->unet.out_channels : 0; }

DbStatus db_unet_forward(DbModel *m, const float *sample, const float *timesteps,
                         const float *context, int batch, int h, int w, int seq, float *out,
                         DbProgressFn progress, void *user, DbError *err)
{
    if (!m || !sample || !timesteps || !context || !out)
        return db_fail(err, DB_ERR_ARG, "UNet: model, sample, timesteps, context and output are required");
    const UnetConfig *c = &m->unet;
    const int mult = 1 << (c->n_blocks - 1);
    if (batch < 1 || batch > UNET_MAX_BATCH)
        return db_fail(err, DB_ERR_ARG, "UNet: batch %d is outside [1, %d]", batch, UNET_MAX_BATCH);
    if (h < 1 || w < 1 || h > UNET_MAX_SIDE || w > UNET_MAX_SIDE || h % mult || w % mult)
        return db_fail(err, DB_ERR_ARG,
                       "UNet: latent size %dx%d must be a multiple of %d between %d and %d",
                       h, w, mult, mult, UNET_MAX_SIDE);
    if (seq < 1 || seq > UNET_MAX_SEQ)
        return db_fail(err, DB_ERR_ARG, "UNet: context length %d is outside [1, %d]", seq,
                       UNET_MAX_SEQ);
    const UnetDims d = {(size_t)batch, (size_t)h, (size_t)w, (size_t)seq};
    DbStatus st = model_check_finite(m, NET_UNET, err);
    if (st != DB_OK)
        return st;
    UnetRun *r = m->unet_run;
    if (!r) {
        if (!(r = calloc(1, sizeof *r)))
            return db_fail(err, DB_ERR_NOMEM, "UNet: out of memory");
        m->unet_run = r;
        m->free_unet_run = unet_run_free;
    }
    if (!r->s) {
        /* the cache is sized once, for the first call's work (the estimate does the same) */
        size_t floats;
        if ((st = unet_forward_size(&floats, c, &d, 0, err)) != DB_OK)
            return st;
        const uint64_t cache = unet_weight_cache_bytes(m, (uint64_t)floats * sizeof(float),
                                                       db_memory_available());
        if ((st = unet_state_build(&r->s, m, (size_t)cache, err)) != DB_OK)
            return st;
    }
    size_t total;
    if ((st = unet_forward_size(&total, c, &d, unet_state_wscratch_size(r->s), err)) != DB_OK)
        return st;
    if (total > r->mem_floats) {
        free(r->mem);
        r->mem_floats = 0;
        r->mem = total <= SIZE_MAX / sizeof(float) ? db_big_alloc(total * sizeof(float)) : NULL;
        if (!r->mem)
            return db_fail(err, DB_ERR_NOMEM, "UNet: cannot allocate %.1f MiB of activations",
                           (double)total * sizeof(float) / 1048576.0);
        r->mem_floats = total;
    }
    UnetActs a;
    UnetWork wk;
    unet_forward_carve(&a, &wk, r->mem, c, &d);
    UnetProgress pr = {progress, user, 0, unet_block_count(c)};
    return unet_forward(out, &a, &wk, sample, timesteps, context, unet_state_params(r->s), c, &d,
                        &pr, err);
}
