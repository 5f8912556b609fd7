/* Sampling loops mirroring diffusers' schedulers (see samplers.h). Per-step scalars are
 * computed in float32 in the order diffusers computes its 0-dim float32 tensors, and each
 * element update uses the same float operations, so results track PyTorch to rounding.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "samplers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const db_sampler_names[DB_SAMPLER_COUNT] = {
    "ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddpm",
};
_Static_assert(sizeof db_sampler_names / sizeof db_sampler_names[0] == DB_SAMPLER_COUNT,
               "one name per sampler");

int sampler_from_name(const char *name)
{
    for (int i = 0; name && i < DB_SAMPLER_COUNT; i++)
        if (strcmp(name, db_sampler_names[i]) == 0) return i;
    return -1;
}

SchedKind sampler_sched_kind(DbSampler s, int *karras)
{
    if (karras) *karras = s == DB_SAMPLER_DPMPP_2M_KARRAS;
    switch (s) {
    case DB_SAMPLER_DDIM: return SCHED_DDIM;
    case DB_SAMPLER_EULER: return SCHED_EULER;
    case DB_SAMPLER_EULER_A: return SCHED_EULER_A;
    case DB_SAMPLER_DDPM: return SCHED_DDPM;
    default: return SCHED_DPMPP;
    }
}

void sampler_cfg_combine(float *out, const float *uncond, const float *cond, float scale,
                         size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = cond[i] - uncond[i];
        d = scale * d;
        out[i] = uncond[i] + d;
    }
}

/* x0 [n] <- clamp(x0, -r, r) when the config clips (DDIM, DDPM clip_sample). */
static void clip_x0(float *x0, size_t n, const DbSchedConfig *c)
{
    if (!c->clip_sample) return;
    float r = (float)c->clip_sample_range;
    for (size_t i = 0; i < n; i++) x0[i] = x0[i] < -r ? -r : (x0[i] > r ? r : x0[i]);
}

/* DDIMScheduler.step. x [n] updated in place; e [n] the model output, overwritten with
 * pred_epsilon; x0 [n] scratch; noise [n] filled when eta > 0. */
static void step_ddim(float *x, float *e, float *x0, float *noise, size_t n, const DbSchedule *s,
                      const DbSchedConfig *c, int i, float eta, DbRng *rng)
{
    int t = s->t_index[i];
    int prev_t = t - s->n_train / s->steps;
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    float b_t = 1.0f - a_t;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    for (size_t k = 0; k < n; k++) {
        if (c->prediction == DB_PRED_V) {
            x0[k] = sa * x[k] - sb * e[k];
            e[k] = sa * e[k] + sb * x[k];
        } else {
            x0[k] = (x[k] - sb * e[k]) / sa;
        }
    }
    clip_x0(x0, n, c);
    float b_prev = 1.0f - a_prev;
    float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
    float std_dev = eta * sqrtf(variance);
    float dir = sqrtf(1.0f - a_prev - std_dev * std_dev);
    float sa_prev = sqrtf(a_prev);
    for (size_t k = 0; k < n; k++) x[k] = sa_prev * x0[k] + dir * e[k];
    if (eta > 0.0f) {
        rng_randn(rng, noise, n);
        for (size_t k = 0; k < n; k++) x[k] = x[k] + std_dev * noise[k];
    }
}

/* DDPMScheduler.step (variance_type fixed_small). */
static void step_ddpm(float *x, const float *e, float *x0, float *noise, size_t n,
                      const DbSchedule *s, const DbSchedConfig *c, int i, DbRng *rng)
{
    int t = s->t_index[i];
    int prev_t = i + 1 < s->steps ? s->t_index[i + 1] : -1;
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : 1.0f;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    for (size_t k = 0; k < n; k++)
        x0[k] = c->prediction == DB_PRED_V ? sa * x[k] - sb * e[k] : (x[k] - sb * e[k]) / sa;
    clip_x0(x0, n, c);
    float c_x0 = (sqrtf(a_prev) * cur_beta) / b_t;
    float c_x = sqrtf(cur_alpha) * b_prev / b_t;
    for (size_t k = 0; k < n; k++) x[k] = c_x0 * x0[k] + c_x * x[k];
    if (t > 0) {
        float variance = (1.0f - a_prev) / (1.0f - a_t) * cur_beta;
        if (variance < 1e-20f) variance = 1e-20f;
        float sd = sqrtf(variance);
        rng_randn(rng, noise, n);
        for (size_t k = 0; k < n; k++) x[k] = x[k] + sd * noise[k];
    }
}

/* EulerDiscreteScheduler.step (s_churn 0) and EulerAncestralDiscreteScheduler.step. */
static void step_euler(float *x, const float *e, float *noise, size_t n, const DbSchedule *s,
                       const DbSchedConfig *c, int i, int ancestral, DbRng *rng)
{
    float sigma = s->sigmas[i], sigma_next = s->sigmas[i + 1];
    float dt, sigma_up = 0.0f;
    if (ancestral) {
        float sf2 = sigma * sigma, st2 = sigma_next * sigma_next;
        sigma_up = sqrtf(st2 * (sf2 - st2) / sf2);
        float sigma_down = sqrtf(st2 - sigma_up * sigma_up);
        dt = sigma_down - sigma;
    } else {
        dt = sigma_next - sigma; /* sigma_hat = sigma * (gamma + 1) = sigma */
    }
    float s2p1 = sigma * sigma + 1.0f;
    float v_e = -sigma / sqrtf(s2p1);
    for (size_t k = 0; k < n; k++) {
        float x0 = c->prediction == DB_PRED_V ? e[k] * v_e + x[k] / s2p1 : x[k] - sigma * e[k];
        float derivative = (x[k] - x0) / sigma;
        x[k] = x[k] + derivative * dt;
    }
    if (ancestral) {
        rng_randn(rng, noise, n);
        for (size_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * sigma_up;
    }
}

/* _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma), float32. */
static void dpm_alpha_sigma(float sigma, float *alpha_t, float *sigma_t, float *lambda)
{
    *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha_t;
    *lambda = logf(*alpha_t) - logf(*sigma_t);
}

/* DPMSolverMultistepScheduler.step: dpmsolver++, midpoint, solver_order 2,
 * lower_order_final, final_sigmas_type zero (first order at the first and last step).
 * e [n] the model output is converted to x0 in place; prev_x0 [n] keeps the previous one. */
static void step_dpmpp_2m(float *x, float *e, float *prev_x0, size_t n, const DbSchedule *s,
                          const DbSchedConfig *c, int i)
{
    float a_s0, s_s0, l_s0, a_t, s_t, l_t;
    dpm_alpha_sigma(s->sigmas[i], &a_s0, &s_s0, &l_s0);
    for (size_t k = 0; k < n; k++) /* convert_model_output */
        e[k] = c->prediction == DB_PRED_V ? a_s0 * x[k] - s_s0 * e[k] : (x[k] - s_s0 * e[k]) / a_s0;
    dpm_alpha_sigma(s->sigmas[i + 1], &a_t, &s_t, &l_t);
    float h = l_t - l_s0;
    float c_x = s_t / s_s0;
    float c_d0 = a_t * (expf(-h) - 1.0f);
    if (i == 0 || i == s->steps - 1) {
        for (size_t k = 0; k < n; k++) x[k] = c_x * x[k] - c_d0 * e[k];
    } else {
        float a_s1, s_s1, l_s1;
        dpm_alpha_sigma(s->sigmas[i - 1], &a_s1, &s_s1, &l_s1);
        float r0 = (l_s0 - l_s1) / h;
        float inv_r0 = 1.0f / r0;
        float c_d1 = 0.5f * c_d0;
        for (size_t k = 0; k < n; k++) {
            float d1 = inv_r0 * (e[k] - prev_x0[k]);
            x[k] = c_x * x[k] - c_d0 * e[k] - c_d1 * d1;
        }
    }
    memcpy(prev_x0, e, n * sizeof *e);
}

DbStatus sampler_run(const SamplerOptions *opt, const DbSchedConfig *cfg, DbRng *rng, float *x,
                     size_t n, DenoiseFn fn, void *user, DbError *err)
{
    if (!opt || !cfg || !x || !fn || n == 0)
        return db_fail(err, DB_ERR_ARG, "sampler: missing argument");
    if (opt->sampler < 0 || opt->sampler >= DB_SAMPLER_COUNT)
        return db_fail(err, DB_ERR_ARG, "sampler: unknown sampler %d", (int)opt->sampler);
    if (!(opt->eta >= 0.0f && opt->eta <= 1.0f))
        return db_fail(err, DB_ERR_ARG, "sampler: eta %g not in [0, 1]", (double)opt->eta);
    DbSampler smp = opt->sampler;
    int stochastic = smp == DB_SAMPLER_EULER_A || smp == DB_SAMPLER_DDPM ||
                     (smp == DB_SAMPLER_DDIM && opt->eta > 0.0f);
    if (stochastic && !rng)
        return db_fail(err, DB_ERR_ARG, "sampler %s: needs a random generator",
                       db_sampler_names[smp]);
    if (n > SIZE_MAX / (4 * sizeof(float)))
        return db_fail(err, DB_ERR_ARG, "sampler: %zu elements too many", n);

    int karras;
    SchedKind kind = sampler_sched_kind(smp, &karras);
    DbSchedConfig c = *cfg;
    if (karras) c.use_karras_sigmas = 1;
    if (kind != SCHED_DPMPP && kind != SCHED_EULER) c.use_karras_sigmas = 0;
    DbSchedule s;
    DbStatus st = sched_build(&s, &c, kind, opt->steps, err);
    if (st != DB_OK) return st;

    size_t nbuf = kind == SCHED_DPMPP ? 4 : 3;
    float *work = malloc(nbuf * n * sizeof(float));
    if (!work) {
        sched_free(&s);
        return db_fail(err, DB_ERR_NOMEM, "sampler: out of memory (%zu floats)", nbuf * n);
    }
    float *x_in = work, *out = work + n, *scratch = work + 2 * n;
    float *prev_x0 = kind == SCHED_DPMPP ? work + 3 * n : NULL;

    for (size_t k = 0; k < n; k++) x[k] = x[k] * s.init_noise_sigma;
    for (int i = 0; i < s.steps && st == DB_OK; i++) {
        if (kind == SCHED_EULER || kind == SCHED_EULER_A) {
            float scale = sqrtf(s.sigmas[i] * s.sigmas[i] + 1.0f); /* scale_model_input */
            for (size_t k = 0; k < n; k++) x_in[k] = x[k] / scale;
        } else {
            memcpy(x_in, x, n * sizeof *x);
        }
        st = fn(user, x_in, s.timesteps[i], out, err);
        if (st != DB_OK) break;
        switch (kind) {
        case SCHED_DDIM: step_ddim(x, out, x_in, scratch, n, &s, &c, i, opt->eta, rng); break;
        case SCHED_DDPM: step_ddpm(x, out, x_in, scratch, n, &s, &c, i, rng); break;
        case SCHED_EULER: step_euler(x, out, scratch, n, &s, &c, i, 0, rng); break;
        case SCHED_EULER_A: step_euler(x, out, scratch, n, &s, &c, i, 1, rng); break;
        case SCHED_DPMPP: step_dpmpp_2m(x, out, prev_x0, n, &s, &c, i); break;
        }
        if (opt->progress && opt->progress(opt->progress_user, (double)(i + 1) / s.steps, "sampling"))
            st = db_fail(err, DB_ERR_CANCELLED, "sampler %s: cancelled at step %d of %d",
                         db_sampler_names[smp], i + 1, s.steps);
    }
    free(work);
    sched_free(&s);
    return st;
}
