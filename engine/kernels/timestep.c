/* Timestep embedding (diffusers get_timestep_embedding) and GEGLU (diffusers GEGLU, the
 * feed-forward activation of the UNet's transformer blocks).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* half = dim / 2; for i < half:
 *   freq [i] = exp(-ln(10000) * i / (half - freq_shift)),  arg = t * freq [i]
 *   out [n, i] = sin(arg), out [n, half + i] = cos(arg)   (swapped with flip_sin_to_cos)
 * and out [n, dim - 1] = 0 when dim is odd. Every step is rounded to float as PyTorch's
 * float32 ops do (the argument reaches ~1000 rad, where that rounding is visible in the
 * result); sin and cos of the float argument are taken in double. Saves nothing (no
 * trainable input). */
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
        if (dim % 2)
            o[dim - 1] = 0.0f;
    }
}

/* exp(x) for x <= 0 (tiny positive x also fine), about 1 ulp: the reduction and polynomial
 * of attention.c (Cody & Waite split of ln2, Cephes expf minimax coefficients); inputs below
 * -87 are clamped through their bit patterns, which GCC vectorises. */
static inline float tg_exp_nonpos(float x)
{
    const uint32_t lim = 0xC2AE0000u; /* bits of -87.0f */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u > lim ? lim : u;
    float v;
    memcpy(&v, &u, sizeof v);
    float t = v * 1.44269504088896341f + 12582912.0f;
    float nf = t - 12582912.0f;
    float r = v - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)nf + 127) * (1 << 23);
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* gelu(x) = x * Phi(x), Phi(x) = 0.5 erfc(-x / sqrt(2)), branch-free so loops vectorise
 * (libm erff is scalar and costs ~12 ns here). With z = |x| / sqrt(2), t = 1 / (1 + z/2):
 *   erfc(z) = t * exp(-z^2 + g(t)),  g(t) = log(erfc(z) / t) + z^2,
 * g a degree-9 polynomial in t fitted (Chebyshev least squares, numpy) on t in [0.15, 1]
 * (z <= 11.3, beyond which erfc underflows in float); max |error of g| 2.1e-7 in float
 * Horner, i.e. erfc to ~2e-7 relative (the form of Numerical Recipes' erfcc, own fit).
 * e = 0.5 erfc(z) = Phi(-|x|); Phi(x) = e for x < 0, 1 - e otherwise, selected with the
 * sign bit as a 0/1 factor (both products exact). */
static inline float tg_gelu(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t ua = u & 0x7FFFFFFFu;
    float ax;
    memcpy(&ax, &ua, sizeof ax);
    float z = ax * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float g = 1.541896979e-01f;
    g = g * t - 7.310516362e-01f;
    g = g * t + 1.274351214e+00f;
    g = g * t - 8.518753306e-01f;
    g = g * t + 4.751273987e-02f;
    g = g * t - 6.603416138e-02f;
    g = g * t + 5.724947705e-02f;
    g = g * t + 3.819630397e-01f;
    g = g * t + 9.991689199e-01f;
    g = g * t - 1.265473906e+00f;
    float e = 0.5f * t * tg_exp_nonpos(g - z * z);
    float neg = (float)(u >> 31);
    float phi = neg * e + (1.0f - neg) * (1.0f - e);
    return x * phi;
}

/* diffusers GEGLU: hidden_states, gate = proj(x).chunk(2, dim=-1);
 * return hidden_states * gelu(gate). So with inp [n] = [a | b]:
 *   out [n, f] = a [f] * gelu(b [f]),  gelu(b) = b * Phi(b) (erf form, F.gelu default). */
void geglu_forward(float *out, const float *inp, size_t N, size_t F)
{
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *a = inp + n * 2 * F, *b = a + F;
        float *o = out + n * F;
        for (size_t f = 0; f < F; f++)
            o[f] = a[f] * tg_gelu(b[f]);
    }
}
