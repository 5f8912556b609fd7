/* Samplers: the diffusers scheduler loops (StableDiffusionPipeline's denoising loop plus
 * each scheduler's scale_model_input and step) over a denoise callback, so they run with
 * any model. The callback gets the scaled model input and the timestep and returns the
 * model output (epsilon or v) for the latents, with classifier-free guidance already
 * combined (sampler_cfg_combine), exactly as the pipeline hands noise_pred to step().
 *
 * Random draws follow diffusers with one torch.Generator: the caller draws the initial
 * latents with rng_randn (prepare_latents), then every ancestral step draws one
 * randn_tensor of the latents' shape from the same DbRng: DDIM with eta > 0 (every step),
 * Euler ancestral (every step, the last one included), DDPM (every step with t > 0).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_SAMPLERS_H
#define DB_SAMPLERS_H

#include "rng.h"
#include "schedule.h"

typedef enum {
    DB_SAMPLER_DDIM = 0,
    DB_SAMPLER_EULER,
    DB_SAMPLER_EULER_A,
    DB_SAMPLER_DPMPP_2M,
    DB_SAMPLER_DPMPP_2M_KARRAS,
    DB_SAMPLER_DDPM,
    DB_SAMPLER_COUNT
} DbSampler;

/* "ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddpm" (indexed by DbSampler). */
extern const char *const db_sampler_names[DB_SAMPLER_COUNT];
/* -1 when the name is unknown. */
int sampler_from_name(const char *name);
/* The diffusers scheduler class a sampler mirrors, and whether it forces Karras sigmas. */
SchedKind sampler_sched_kind(DbSampler s, int *karras);

/* x_in [B,C,h,w]: the model input (already scaled by the sampler); t: the timestep given to
 * the UNet; model_out [B,C,h,w]: epsilon or v (per the schedule config), guidance applied.
 * x_in and model_out do not alias. Returns DB_OK or fills err. */
typedef DbStatus (*DenoiseFn)(void *user, const float *x_in, float t, float *model_out,
                              DbError *err);

/* Classifier-free guidance as StableDiffusionPipeline: out = uncond + scale * (cond - uncond),
 * float32, one rounding per operation. out [n] may alias uncond or cond. */
void sampler_cfg_combine(float *out, const float *uncond, const float *cond, float scale,
                         size_t n);

typedef struct {
    DbSampler sampler;
    int steps;
    float eta;              /* DDIM only: 0 deterministic, 1 DDPM-like noise */
    DbProgressFn progress;  /* may be NULL; called after each step with fraction (i+1)/steps */
    void *progress_user;
} SamplerOptions;

/* Runs the whole sampling loop on x [n] (n = B*C*h*w).
 * On input x holds unit-variance noise as drawn by rng_randn(rng, x, n); the sampler
 * multiplies it by the schedule's init_noise_sigma. On output x holds the denoised latents
 * (still to be divided by the VAE scaling factor). rng is used for ancestral noise (may be
 * NULL only for deterministic samplers: DDIM with eta 0, Euler, DPM++ 2M).
 * Allocates one workspace of 3 x n floats (+ n for DPM++) per call, nothing in the loop.
 * Progress cancel -> DB_ERR_CANCELLED (x then holds the latents after the last step run). */
DbStatus sampler_run(const SamplerOptions *opt, const DbSchedConfig *cfg, DbRng *rng, float *x,
                     size_t n, DenoiseFn fn, void *user, DbError *err);

#endif
