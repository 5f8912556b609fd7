/* diffusers noise schedules (see schedule.h). SPDX-License-Identifier: GPL-3.0-or-later */
#include "schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sched_config_sd(DbSchedConfig *c, DbPrediction pred)
{
    memset(c, 0, sizeof *c);
    c->num_train_timesteps = 1000;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->beta_schedule = SCHED_BETA_SCALED_LINEAR;
    c->prediction = pred == DB_PRED_V ? DB_PRED_V : DB_PRED_EPS;
    c->steps_offset = 1;
    c->spacing = SCHED_SPACING_DEFAULT;
    c->set_alpha_to_one = 0;
    c->clip_sample = 0;
    c->clip_sample_range = 1.0;
    c->use_karras_sigmas = 0;
}

/* torch.linspace(start, end, n, dtype=float32) on the CPU (torch 1.13, AVX2 build):
 * step = (end - start) / (n - 1) in float; element i = start + step*i below n/2, else
 * end - step*(n-1-i), each one fused multiply-add as GCC compiled it; in runs of 16 each
 * 8-lane vector starts from that value at its first index and adds the rounded k*step
 * (Vectorized::arange); the last n % 16 elements are scalar. Checked bit for bit against
 * torch 1.13 on six (start, end, n) cases. */
static float linspace_at(float start, float end, float step, int n, int i)
{
    return i < n / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

static void torch_linspace_f32(float *out, float start, float end, int n)
{
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int v = i; v < i + 16; v += 8) {
            float base = linspace_at(start, end, step, n, v);
            for (int k = 0; k < 8; k++) out[v + k] = base + (float)k * step;
        }
    for (; i < n; i++) out[i] = linspace_at(start, end, step, n, i);
}

void sched_alphas_cumprod(float *betas, float *alphas_cumprod, const DbSchedConfig *c)
{
    int n = c->num_train_timesteps;
    if (c->beta_schedule == SCHED_BETA_SCALED_LINEAR) {
        torch_linspace_f32(betas, (float)sqrt(c->beta_start), (float)sqrt(c->beta_end), n);
        for (int i = 0; i < n; i++) betas[i] = betas[i] * betas[i];
    } else {
        torch_linspace_f32(betas, (float)c->beta_start, (float)c->beta_end, n);
    }
    double acc = 1.0; /* torch's CPU cumprod accumulates float32 in double */
    for (int i = 0; i < n; i++) {
        acc *= (double)(1.0f - betas[i]);
        alphas_cumprod[i] = (float)acc;
    }
}

static SchedSpacing spacing_of(const DbSchedConfig *c, SchedKind kind)
{
    if (c->spacing != SCHED_SPACING_DEFAULT) return c->spacing;
    return (kind == SCHED_DDIM || kind == SCHED_DDPM) ? SCHED_SPACING_LEADING
                                                       : SCHED_SPACING_LINSPACE;
}

/* Inference timesteps (descending) as doubles, before each scheduler's cast. */
static void timesteps_spaced(double *t, int steps, int n_train, SchedSpacing sp, SchedKind kind,
                             int offset)
{
    int dpm = kind == SCHED_DPMPP;
    if (sp == SCHED_SPACING_LINSPACE) {
        /* np.linspace(0, N-1, steps) (DPM: steps+1 points, the 0 dropped); ints rounded */
        int pts = dpm ? steps + 1 : steps;
        double delta = pts > 1 ? (double)(n_train - 1) / (double)(pts - 1) : 0.0;
        for (int i = 0; i < steps; i++) {
            int k = pts - 1 - i;
            double v = k == pts - 1 && pts > 1 ? (double)(n_train - 1) : (double)k * delta;
            t[i] = (kind == SCHED_EULER || kind == SCHED_EULER_A) ? v : nearbyint(v);
        }
    } else if (sp == SCHED_SPACING_LEADING) {
        /* np.arange(steps) * (N // steps) reversed, + steps_offset (DPM: N // (steps+1)) */
        int ratio = n_train / (dpm ? steps + 1 : steps);
        for (int i = 0; i < steps; i++)
            t[i] = (double)((dpm ? steps - i : steps - 1 - i) * ratio + offset);
    } else {
        /* np.arange(N, 0, -N/steps).round() - 1: numpy fills start + i*((start+step)-start) */
        double ratio = (double)n_train / (double)steps;
        double start = (double)n_train, delta = (start - ratio) - start;
        for (int i = 0; i < steps; i++) t[i] = nearbyint(start + (double)i * delta) - 1.0;
    }
}

/* np.interp(x, arange(n), fp) */
static double interp_unit(double x, const float *fp, int n)
{
    if (x <= 0.0) return fp[0];
    if (x >= (double)(n - 1)) return fp[n - 1];
    int j = (int)floor(x);
    double slope = (double)fp[j + 1] - (double)fp[j];
    return slope * (x - (double)j) + (double)fp[j];
}

/* diffusers _sigma_to_t: piecewise-linear in log sigma over log_sigmas [n] (ascending). */
static double sigma_to_t(double sigma, const float *log_sigmas, int n)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int i = 0; i < n; i++)
        if (ls - (double)log_sigmas[i] >= 0.0) low = i;
    if (low > n - 2) low = n - 2;
    double lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = (lo - ls) / (lo - hi);
    w = w < 0.0 ? 0.0 : (w > 1.0 ? 1.0 : w);
    return (1.0 - w) * (double)low + w * (double)(low + 1);
}

/* Karras et al. (2022) sigmas, rho = 7: sigmas [n] from sigma_max down to sigma_min. */
static void karras_sigmas(double *out, int n, double sigma_min, double sigma_max)
{
    double rho = 7.0, min_inv = pow(sigma_min, 1.0 / rho), max_inv = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < n; i++) {
        double ramp = n > 1 ? (i == n - 1 ? 1.0 : (double)i * (1.0 / (double)(n - 1))) : 0.0;
        out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
    }
}

static DbStatus check_config(const DbSchedConfig *c, int steps, DbError *err)
{
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > SCHED_MAX_TRAIN_TIMESTEPS)
        return db_fail(err, DB_ERR_ARG, "scheduler: num_train_timesteps %d out of range [2, %d]",
                       c->num_train_timesteps, SCHED_MAX_TRAIN_TIMESTEPS);
    if (!(c->beta_start > 0.0 && c->beta_start < 1.0 && c->beta_end > 0.0 && c->beta_end < 1.0))
        return db_fail(err, DB_ERR_ARG, "scheduler: beta_start %g / beta_end %g not in (0, 1)",
                       c->beta_start, c->beta_end);
    if (c->beta_schedule != SCHED_BETA_LINEAR && c->beta_schedule != SCHED_BETA_SCALED_LINEAR)
        return db_fail(err, DB_ERR_UNSUPPORTED, "scheduler: beta_schedule not supported");
    if (c->prediction != DB_PRED_EPS && c->prediction != DB_PRED_V)
        return db_fail(err, DB_ERR_ARG, "scheduler: prediction_type must be epsilon or v_prediction");
    if (c->spacing < SCHED_SPACING_DEFAULT || c->spacing > SCHED_SPACING_LINSPACE)
        return db_fail(err, DB_ERR_ARG, "scheduler: unknown timestep_spacing");
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return db_fail(err, DB_ERR_ARG, "scheduler: steps_offset %d out of range", c->steps_offset);
    if (c->clip_sample && !(c->clip_sample_range > 0.0))
        return db_fail(err, DB_ERR_ARG, "scheduler: clip_sample_range must be > 0");
    if (steps < 1 || steps > c->num_train_timesteps)
        return db_fail(err, DB_ERR_ARG, "scheduler: %d steps not in [1, num_train_timesteps = %d]",
                       steps, c->num_train_timesteps);
    return DB_OK;
}

DbStatus sched_build(DbSchedule *s, const DbSchedConfig *c, SchedKind kind, int steps,
                     DbError *err)
{
    memset(s, 0, sizeof *s);
    DbStatus st = check_config(c, steps, err);
    if (st != DB_OK) return st;
    int n = c->num_train_timesteps;
    /* floats: alphas_cumprod, betas/train sigmas, log sigmas [n]; timesteps [steps];
     * sigmas [steps+1]; ints t_index [steps]; doubles [steps] scratch. n, steps <= 1e5. */
    size_t nf = 3 * (size_t)n + 2 * (size_t)steps + 1;
    size_t bytes = nf * sizeof(float) + (size_t)steps * (sizeof(int) + sizeof(double)) + 16;
    char *mem = calloc(1, bytes);
    if (!mem) return db_fail(err, DB_ERR_NOMEM, "scheduler: out of memory (%zu bytes)", bytes);
    double *td = (double *)mem; /* first, for alignment */
    float *f = (float *)(td + steps);
    s->mem = mem;
    s->kind = kind;
    s->n_train = n;
    s->steps = steps;
    s->alphas_cumprod = f;
    float *train_sigmas = f + n, *log_sigmas = f + 2 * n;
    s->timesteps = f + 3 * n;
    s->sigmas = s->timesteps + steps;
    s->t_index = (int *)(s->sigmas + steps + 1);

    sched_alphas_cumprod(train_sigmas /* betas, overwritten below */, s->alphas_cumprod, c);
    s->final_alpha_cumprod = c->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    for (int i = 0; i < n; i++) {
        float a = s->alphas_cumprod[i];
        train_sigmas[i] = sqrtf((1.0f - a) / a); /* ((1 - ac) / ac) ** 0.5 in float32 */
        log_sigmas[i] = logf(train_sigmas[i]);
    }

    SchedSpacing sp = spacing_of(c, kind);
    timesteps_spaced(td, steps, n, sp, kind, c->steps_offset);
    int replaced = kind == SCHED_DPMPP && c->use_karras_sigmas; /* Karras sets its own */
    for (int i = 0; i < steps; i++) {
        if (!replaced && !(td[i] >= 0.0 && td[i] <= (double)(n - 1))) {
            st = db_fail(err, DB_ERR_ARG, "scheduler: %d steps with this spacing/steps_offset "
                         "give timestep %g outside [0, %d]", steps, td[i], n - 1);
            sched_free(s);
            return st;
        }
        s->timesteps[i] = (float)td[i];
        s->t_index[i] = (int)td[i];
    }
    s->init_noise_sigma = 1.0f;

    if (kind == SCHED_EULER || kind == SCHED_EULER_A) {
        for (int i = 0; i < steps; i++) td[i] = interp_unit((double)s->timesteps[i], train_sigmas, n);
        if (c->use_karras_sigmas && kind == SCHED_EULER) {
            karras_sigmas(td, steps, td[steps - 1], td[0]);
            for (int i = 0; i < steps; i++) {
                s->timesteps[i] = (float)sigma_to_t(td[i], log_sigmas, n);
                s->t_index[i] = (int)nearbyint(s->timesteps[i]);
            }
        }
        float mx = 0.0f;
        for (int i = 0; i < steps; i++) {
            s->sigmas[i] = (float)td[i];
            if (s->sigmas[i] > mx) mx = s->sigmas[i];
        }
        s->init_noise_sigma = sp == SCHED_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
    } else if (kind == SCHED_DPMPP) {
        if (c->use_karras_sigmas) {
            karras_sigmas(td, steps, train_sigmas[0], train_sigmas[n - 1]);
            for (int i = 0; i < steps; i++) {
                double t = nearbyint(sigma_to_t(td[i], log_sigmas, n));
                s->timesteps[i] = (float)t;
                s->t_index[i] = (int)t;
                s->sigmas[i] = (float)td[i];
            }
        } else {
            for (int i = 0; i < steps; i++) s->sigmas[i] = train_sigmas[s->t_index[i]];
        }
        /* repeated sigmas (linspace rounding at steps = num_train_timesteps) give h = 0 and
         * NaN in the second-order update; diffusers returns NaN, we refuse */
        for (int i = 1; i < steps; i++)
            if (!(s->sigmas[i] < s->sigmas[i - 1])) {
                st = db_fail(err, DB_ERR_ARG, "scheduler: %d DPM-Solver++ steps repeat timestep "
                             "%g", steps, (double)s->timesteps[i]);
                sched_free(s);
                return st;
            }
    }
    s->sigmas[steps] = 0.0f; /* final_sigmas_type "zero" */
    return DB_OK;
}

void sched_free(DbSchedule *s)
{
    if (s) {
        free(s->mem);
        memset(s, 0, sizeof *s);
    }
}
