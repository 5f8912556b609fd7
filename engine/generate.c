/* txt2img: StableDiffusionPipeline.__call__ over the engine's networks.
 *
 *   ids = tokenize([negative, prompt])                 (negative "" when absent)
 *   ctx = text_encoder(ids)                           once, [2, 77, D] (uncond first)
 *   for each image i: rng = manual_seed(seed + i); x = randn(rng) or the given noise
 *     sampler loop (samplers.c): model_out = uncond + cfg * (cond - uncond), both halves from
 *     one batch-2 UNet call; cfg <= 1 runs the prompt alone (diffusers:
 *     do_classifier_free_guidance = guidance_scale > 1)
 *     image = vae_decode(x / scaling_factor)
 * The latent of one image never depends on the other images (A1111's seed + i convention),
 * so image i of a run equals a count-1 run with seed + i.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "generate.h"
#include "samplers.h"
#include "unet.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define GEN_MAX_SIZE 2048
#define GEN_MAX_COUNT 1000
#define GEN_MAX_STEPS 1000
#define GEN_DEFAULT_STEPS 25
#define GEN_DEFAULT_SAMPLER "dpm++2m-karras"

DbStatus generate_sched_config(const DbModel *m, DbSchedConfig *c, DbError *err)
{
    sched_config_sd(c, m->prediction);
    if (m->layout != DB_LAYOUT_DIFFUSERS) return DB_OK;
    char *p = g_build_filename(m->path, "scheduler", "scheduler_config.json", NULL);
    DbStatus st = g_file_test(p, G_FILE_TEST_EXISTS) ? sched_config_load(c, p, m->prediction, err)
                                                     : DB_OK;
    g_free(p);
    return st;
}

void db_generate_sizes(const DbModel *m, int *native_width, int *native_height, int *multiple)
{
    int f = 0, q = 0, native = 0;
    if (m) {
        f = db_vae_scale_factor(m);
        q = f << (m->unet.n_blocks > 0 ? m->unet.n_blocks - 1 : 0);
        native = m->unet.sample_size * f;
    }
    if (native_width) *native_width = native;
    if (native_height) *native_height = native;
    if (multiple) *multiple = q;
}

void db_image_to_rgb8(uint8_t *out, const float *image, int height, int width)
{
    size_t hw = (size_t)height * (size_t)width;
    for (size_t p = 0; p < hw; p++)
        for (int c = 0; c < 3; c++) {
            float v = image[(size_t)c * hw + p] / 2.0f + 0.5f;
            v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; /* NaN -> 0 */
            out[3 * p + (size_t)c] = (uint8_t)rintf(v * 255.0f);
        }
}

/* One run's state: the denoise callback and the progress bookkeeping. */
typedef struct {
    DbModel *m;
    int batch;             /* 2 with guidance (uncond, cond), else 1 */
    float cfg;
    int h, w;              /* latent size */
    size_t n;              /* C * h * w */
    const float *context;  /* [batch, 77, D] */
    float *x2;             /* [batch, C, h, w] UNet input */
    float *out2;           /* [batch, C, h, w] UNet output */
    float t2[2];           /* [batch] */
    DbProgressFn progress;
    void *user;
    int image, count, steps, step; /* step: UNet calls done for this image */
    double unit0;          /* units done before the current stage */
    char stage[96];
} GenRun;

static double run_units(const GenRun *r) { return (double)r->count * (r->steps + 1); }

static int report(GenRun *r, double units_in_stage)
{
    if (!r->progress) return 0;
    double f = (r->unit0 + units_in_stage) / run_units(r);
    return r->progress(r->user, f > 1.0 ? 1.0 : f, r->stage);
}

/* UNet and VAE call this after each block: the fraction of one stage. */
static int stage_progress(void *user, double fraction, const char *stage)
{
    (void)stage;
    GenRun *r = user;
    return report(r, fraction);
}

/* The sampler calls this after each step. */
static int step_progress(void *user, double fraction, const char *stage)
{
    (void)fraction;
    (void)stage;
    GenRun *r = user;
    r->unit0 += 1.0;
    if (r->step < r->steps)
        snprintf(r->stage, sizeof r->stage, "image %d/%d: step %d/%d", r->image + 1, r->count,
                 r->step + 1, r->steps);
    return report(r, 0.0);
}

static DbStatus denoise(void *user, const float *x_in, float t, float *model_out, DbError *err)
{
    GenRun *r = user;
    for (int b = 0; b < r->batch; b++) {
        memcpy(r->x2 + (size_t)b * r->n, x_in, r->n * sizeof(float));
        r->t2[b] = t;
    }
    DbStatus st = db_unet_forward(r->m, r->x2, r->t2, r->context, r->batch, r->h, r->w,
                                  DB_CONTEXT_LEN, r->out2, stage_progress, r, err);
    if (st != DB_OK) return st;
    if (r->batch == 2)
        sampler_cfg_combine(model_out, r->out2, r->out2 + r->n, r->cfg, r->n);
    else
        memcpy(model_out, r->out2, r->n * sizeof(float));
    r->step++;
    return DB_OK;
}

static DbStatus check_options(const DbModel *m, const DbGenerateOptions *o, int *sampler,
                              int *steps, int *count, int *W, int *H, DbError *err)
{
    if (!o->prompt) return db_fail(err, DB_ERR_ARG, "generate: no prompt");
    *sampler = sampler_from_name(o->sampler ? o->sampler : GEN_DEFAULT_SAMPLER);
    if (*sampler < 0) {
        GString *s = g_string_new(NULL);
        for (int i = 0; i < DB_SAMPLER_COUNT; i++)
            g_string_append_printf(s, "%s%s", i ? ", " : "", db_sampler_names[i]);
        DbStatus st = db_fail(err, DB_ERR_ARG, "sampler '%s' is unknown (valid: %s)", o->sampler,
                              s->str);
        g_string_free(s, TRUE);
        return st;
    }
    *steps = o->steps ? o->steps : GEN_DEFAULT_STEPS;
    if (*steps < 1 || *steps > GEN_MAX_STEPS)
        return db_fail(err, DB_ERR_ARG, "steps %d out of range (1..%d)", *steps, GEN_MAX_STEPS);
    if (!(o->cfg >= 0.0f && o->cfg <= 100.0f))
        return db_fail(err, DB_ERR_ARG, "cfg %g out of range (0..100)", (double)o->cfg);
    if (!(o->eta >= 0.0f && o->eta <= 1.0f))
        return db_fail(err, DB_ERR_ARG, "eta %g out of range (0..1)", (double)o->eta);
    *count = o->count ? o->count : 1;
    if (*count < 1 || *count > GEN_MAX_COUNT)
        return db_fail(err, DB_ERR_ARG, "count %d out of range (1..%d)", *count, GEN_MAX_COUNT);
    int nw, nh, q;
    db_generate_sizes(m, &nw, &nh, &q);
    if (q <= 0) return db_fail(err, DB_ERR_MODEL, "%s: no VAE scale factor", m->path);
    *W = o->width ? o->width : nw;
    *H = o->height ? o->height : nh;
    if (*W < q || *W > GEN_MAX_SIZE || *W % q || *H < q || *H > GEN_MAX_SIZE || *H % q)
        return db_fail(err, DB_ERR_ARG,
                       "size %dx%d not supported: width and height must be multiples of %d in "
                       "%d..%d", *W, *H, q, q, GEN_MAX_SIZE);
    return DB_OK;
}

/* ctx [batch, 77, D] of [negative, prompt] (batch 2) or [prompt] (batch 1). */
static DbStatus encode_prompts(DbModel *m, const DbGenerateOptions *o, int batch, float *ctx,
                               DbError *err)
{
    int32_t ids[2 * DB_CONTEXT_LEN];
    DbStatus st = DB_OK;
    if (batch == 2) st = db_tokenize(m, o->negative ? o->negative : "", ids, NULL, err);
    if (st == DB_OK)
        st = db_tokenize(m, o->prompt, ids + (batch - 1) * DB_CONTEXT_LEN, NULL, err);
    if (st == DB_OK) st = db_text_encoder_forward(m, ids, batch, ctx, err);
    return st;
}

DbStatus db_generate(DbModel *m, const DbGenerateOptions *o, float *images_out,
                     DbProgressFn progress, void *user, DbError *err)
{
    if (!m || !o) return db_fail(err, DB_ERR_ARG, "db_generate: NULL argument");
    int sampler = 0, steps = 0, count = 0, W = 0, H = 0;
    DbStatus st = check_options(m, o, &sampler, &steps, &count, &W, &H, err);
    if (st != DB_OK) return st;
    DbSchedConfig sc;
    if ((st = generate_sched_config(m, &sc, err)) != DB_OK) return st;

    int f, C, Cout;
    int Cin;
    db_vae_dims(m, &f, &Cin, &C, &Cout);
    if (C != m->unet.in_channels || C != db_unet_out_channels(m) || Cout != 3)
        return db_fail(err, DB_ERR_UNSUPPORTED,
                       "%s: txt2img needs UNet in/out channels = VAE latent channels (%d, %d, %d) "
                       "and 3 image channels (%d)", m->path, m->unet.in_channels,
                       db_unet_out_channels(m), C, Cout);
    GenRun r = {0};
    r.m = m;
    r.cfg = o->cfg;
    r.batch = o->cfg > 1.0f ? 2 : 1;
    r.h = H / f;
    r.w = W / f;
    r.n = (size_t)C * (size_t)r.h * (size_t)r.w;
    r.progress = progress;
    r.user = user;
    r.count = count;
    r.steps = steps;
    size_t D = (size_t)m->clip.hidden, img_n = (size_t)3 * (size_t)H * (size_t)W;
    size_t ctx_n = (size_t)r.batch * DB_CONTEXT_LEN * D;
    /* x [n], x2 and out2 [2n], ctx, image: sizes bounded by the checks above */
    size_t total = 5 * r.n + ctx_n + img_n;
    float *mem = g_try_new(float, total);
    if (!mem)
        return db_fail(err, DB_ERR_NOMEM, "generate: cannot allocate %.1f MiB",
                       (double)total * sizeof(float) / 1048576.0);
    float *x = mem, *ctx = mem + r.n;
    r.x2 = ctx + ctx_n;
    r.out2 = r.x2 + 2 * r.n;
    float *image = r.out2 + 2 * r.n;
    r.context = ctx;
    snprintf(r.stage, sizeof r.stage, "encoding the prompt");
    st = encode_prompts(m, o, r.batch, ctx, err);

    SamplerOptions so = {(DbSampler)sampler, steps, o->eta, step_progress, &r};
    const float scaling = m->vae.scaling_factor;
    for (int i = 0; i < count && st == DB_OK; i++) {
        uint64_t seed = o->seed + (uint64_t)i;
        DbRng rng;
        rng_seed(&rng, seed);
        if (o->noise) memcpy(x, o->noise + (size_t)i * r.n, r.n * sizeof(float));
        else rng_randn(&rng, x, r.n);
        r.image = i;
        r.step = 0;
        r.unit0 = (double)i * (steps + 1);
        snprintf(r.stage, sizeof r.stage, "image %d/%d: step 1/%d", i + 1, count, steps);
        st = sampler_run(&so, &sc, &rng, x, r.n, denoise, &r, err);
        unet_run_release(m); /* the UNet's activations, before the VAE's */
        if (st != DB_OK) break;
        /* decode latents / scaling_factor (x2 is free now) */
        for (size_t k = 0; k < r.n; k++) r.x2[k] = x[k] / scaling;
        snprintf(r.stage, sizeof r.stage, "image %d/%d: decoding", i + 1, count);
        st = db_vae_decode(m, r.x2, 1, r.h, r.w, image, o->vae, stage_progress, &r, err);
        if (st != DB_OK) break;
        if (images_out) memcpy(images_out + (size_t)i * img_n, image, img_n * sizeof(float));
        if (o->on_image) st = o->on_image(o->image_user, i, seed, x, image, err);
        r.unit0 += 1.0;
        if (st == DB_OK && report(&r, 0.0))
            st = db_fail(err, DB_ERR_CANCELLED, "generate: cancelled after image %d of %d", i + 1,
                         count);
    }
    g_free(mem);
    return st;
}
