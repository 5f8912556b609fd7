/* Noise schedules of the diffusers schedulers used for Stable Diffusion sampling: betas,
 * alphas_cumprod, the inference timesteps per timestep_spacing, sigmas and Karras sigmas,
 * computed as each diffusers scheduler computes them (they differ: DDIM/DDPM index
 * alphas_cumprod by integer timesteps; Euler interpolates sigmas at float timesteps;
 * DPM-Solver++ uses integer timesteps and its own Karras timesteps, rounded).
 *
 * Sources (diffusers 0.40): schedulers/scheduling_ddim.py, scheduling_ddpm.py,
 * scheduling_euler_discrete.py, scheduling_euler_ancestral_discrete.py,
 * scheduling_dpmsolver_multistep.py (__init__, set_timesteps, _convert_to_karras,
 * _sigma_to_t, init_noise_sigma).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_SCHEDULE_H
#define DB_SCHEDULE_H

#include "dreambooth.h"

#define SCHED_MAX_TRAIN_TIMESTEPS 100000

typedef enum { SCHED_BETA_LINEAR = 0, SCHED_BETA_SCALED_LINEAR } SchedBetaSchedule;

typedef enum {
    SCHED_SPACING_DEFAULT = 0, /* the scheduler's own default (DDIM/DDPM leading, others linspace) */
    SCHED_SPACING_LEADING,
    SCHED_SPACING_TRAILING,
    SCHED_SPACING_LINSPACE
} SchedSpacing;

/* Which diffusers scheduler's formulas to mirror. */
typedef enum {
    SCHED_DDIM = 0,
    SCHED_DDPM,
    SCHED_EULER,
    SCHED_EULER_A,
    SCHED_DPMPP /* DPMSolverMultistepScheduler */
} SchedKind;

/* scheduler_config.json values. */
typedef struct {
    int num_train_timesteps;        /* 1000 */
    double beta_start, beta_end;    /* SD: 0.00085, 0.012 */
    SchedBetaSchedule beta_schedule;
    DbPrediction prediction;        /* DB_PRED_EPS or DB_PRED_V */
    int steps_offset;               /* SD: 1 */
    SchedSpacing spacing;
    int set_alpha_to_one;           /* DDIM; SD: 0 */
    int clip_sample;                /* DDIM, DDPM; SD: 0 */
    double clip_sample_range;       /* 1.0 */
    int use_karras_sigmas;          /* Euler, DPM++ */
} DbSchedConfig;

/* The values of Stable Diffusion 1.x/2.x scheduler_config.json files. */
void sched_config_sd(DbSchedConfig *c, DbPrediction pred);

/* One schedule for `steps` inference steps. All arrays live in one allocation (mem). */
typedef struct {
    SchedKind kind;
    int n_train;
    float *alphas_cumprod;     /* [n_train] as torch.cumprod(1 - betas) (float32) */
    float final_alpha_cumprod; /* DDIM: 1 (set_alpha_to_one) or alphas_cumprod[0] */
    int steps;
    float *timesteps;          /* [steps] the t given to the model */
    int *t_index;              /* [steps] integer timesteps (DDIM, DDPM, DPM++) */
    float *sigmas;             /* [steps + 1] Euler, DPM++: sigmas[steps] = 0 (else all 0) */
    float init_noise_sigma;    /* multiply the initial randn latents by this */
    void *mem;
} DbSchedule;

/* betas and alphas_cumprod [c->num_train_timesteps] as diffusers computes them: betas by
 * torch.linspace in float32 (squared for scaled_linear), cumprod accumulated in double by
 * torch on the CPU and stored as float32. */
void sched_alphas_cumprod(float *betas, float *alphas_cumprod, const DbSchedConfig *c);

/* Validates the config (errors name the field) and fills s; sched_free releases it. */
DbStatus sched_build(DbSchedule *s, const DbSchedConfig *c, SchedKind kind, int steps,
                     DbError *err);
void sched_free(DbSchedule *s);

#endif
