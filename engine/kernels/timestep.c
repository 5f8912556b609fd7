/* Timestep embedding (diffusers get_timestep_embedding) and GEGLU (diffusers GEGLU, the
 * feed-forward activation of the UNet's transformer blocks).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"
#include "vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define TG_ALWAYS_INLINE __attribute__((always_inline))
#else
#define TG_ALWAYS_INLINE
#endif

/* half = dim / 2; for i < half:
 *   freq [i] = exp(-ln(10000) * i / (half - freq_shift)),  arg = t * freq [i]
 *   out [n, i] = sin(arg), out [n, half + i] = cos(arg)   (swapped with flip_sin_to_cos)
 * and out [n, dim - 1] = 0 when dim is odd. Every step is rounded to float as PyTorch's
 * float32 ops do (the argument reaches ~1000 rad, where that rounding is visible in the
 * result); sin and cos of the float argument are taken in double. Saves nothing.
 * No backward: the timesteps are integers sampled by the trainer and the embedding has no
 * parameters, so nothing upstream needs a gradient (the UNet's time_embedding linears that
 * follow get theirs from linear_backward with dinp = NULL). */
void timestep_embedding(float *out, const float *timesteps, size_t N, size_t dim,
                        int flip_sin_to_cos, float freq_shift)
{
    size_t half = dim / 2;
    float neg_log_period = (float)-log(10000.0);
    float denom = (float)half - freq_shift;
    for (size_t n = 0; n < N; n++) {
        float *o = out + n * dim;
        float t = timesteps[n];
        for (size_t i = 0; i < half; i++) {
            float e = neg_log_period * (float)i;
            e = e / denom;
            float freq = (float)exp((double)e);
            float arg = t * freq;
            float s = (float)sin((double)arg), c = (float)cos((double)arg);
            o[i] = flip_sin_to_cos ? c : s;
            o[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) o[dim - 1] = 0.0f;
    }
}

/* diffusers GEGLU: hidden_states, gate = proj(x).chunk(2, dim=-1);
 * return hidden_states * gelu(gate). So with inp [n] = [a | b]:
 *   out [n, f] = a [f] * gelu(b [f]),  gelu(b) = b * Phi(b) (erf form, F.gelu default). */
static inline TG_ALWAYS_INLINE void tg_geglu_row_body(float *o, const float *a, const float *b,
                                                      size_t F)
{
    for (size_t f = 0; f < F; f++)
        o[f] = a[f] * vm_gelu(b[f]);
}

typedef void (*TgRowFn)(float *, const float *, const float *, size_t);

static void tg_geglu_row_generic(float *o, const float *a, const float *b, size_t F)
{
    tg_geglu_row_body(o, a, b, F);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2)
#define TG_HAVE_AVX2 1
/* the same code compiled for AVX2 (8-wide), picked at run time */
__attribute__((target("avx2,fma"))) static void tg_geglu_row_avx2(float *o, const float *a,
                                                                  const float *b, size_t F)
{
    tg_geglu_row_body(o, a, b, F);
}
#endif

void geglu_forward(float *out, const float *inp, size_t N, size_t F)
{
    TgRowFn row = tg_geglu_row_generic;
#ifdef TG_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) row = tg_geglu_row_avx2;
#endif
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++)
        row(out + n * F, inp + n * 2 * F, inp + n * 2 * F + F, F);
}

/* Backward of geglu_forward, accumulating into dinp [N, 2F] = [da | db]:
 *   da [f] += dout [f] * gelu(b [f]),  db [f] += dout [f] * a [f] * gelu'(b [f])
 * with the same Phi as the forward (vmath.h), evaluated once per element for both:
 * gelu(b) = b Phi(b), gelu'(b) = Phi(b) + b phi(b). inp [N, 2F] is the forward input. */
static inline TG_ALWAYS_INLINE void tg_geglu_bwd_row_body(float *da, float *db, const float *g,
                                                          const float *a, const float *b,
                                                          size_t F)
{
    for (size_t f = 0; f < F; f++) {
        const float x = b[f], cdf = vm_normal_cdf(x);
        const float pdf = 0.39894228040143268f * vm_exp_nonpos(-0.5f * x * x);
        da[f] += g[f] * (x * cdf);
        db[f] += g[f] * a[f] * (cdf + x * pdf);
    }
}

typedef void (*TgBwdRowFn)(float *, float *, const float *, const float *, const float *, size_t);

static void tg_geglu_bwd_row_generic(float *da, float *db, const float *g, const float *a,
                                     const float *b, size_t F)
{
    tg_geglu_bwd_row_body(da, db, g, a, b, F);
}

#ifdef TG_HAVE_AVX2
__attribute__((target("avx2,fma"))) static void tg_geglu_bwd_row_avx2(float *da, float *db,
                                                                      const float *g,
                                                                      const float *a,
                                                                      const float *b, size_t F)
{
    tg_geglu_bwd_row_body(da, db, g, a, b, F);
}
#endif

void geglu_backward(float *dinp, const float *dout, const float *inp, size_t N, size_t F)
{
    TgBwdRowFn row = tg_geglu_bwd_row_generic;
#ifdef TG_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        row = tg_geglu_bwd_row_avx2;
#endif
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *a = inp + n * 2 * F;
        float *da = dinp + n * 2 * F;
        row(da, da + F, dout + n * F, a, a + F, F);
    }
}
