/* Internal vectorisable float math shared by the kernels (not part of the API): exp for
 * non-positive arguments, the normal CDF and GELU, all branch-free so GCC vectorises the
 * loops that inline them (libm expf / erff are scalar calls). Static inline; forced inline
 * so a caller compiled with target("avx2,fma") gets the 8-wide version.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_KERNELS_VMATH_H
#define DB_KERNELS_VMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define VM_INLINE static inline __attribute__((always_inline))
#else
#define VM_INLINE static inline
#endif

/* exp(x) for x <= 0 (tiny positive x also fine), about 1 ulp.
 * Range reduction x = n ln2 + r, |r| <= ln2/2, with ln2 split in two (Cody & Waite) so
 * n ln2 is exact; exp(r) by a degree-7 minimax polynomial (Cephes expf coefficients);
 * 2^n built in the exponent bits. Inputs below -87 are clamped: exp(-87) ~ 1.6e-38 keeps
 * 2^n a normal number. The clamp compares the bit patterns as unsigned integers (every
 * negative float at or below -87 has a pattern >= that of -87, +-0 and the rest below it),
 * which GCC vectorises; a float compare-and-select is not if-converted under the default
 * -ftrapping-math. */
VM_INLINE float vm_exp_nonpos(float x)
{
    const uint32_t lim = 0xC2AE0000u; /* bits of -87.0f */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u > lim ? lim : u;
    float v;
    memcpy(&v, &u, sizeof v);
    float t = v * 1.44269504088896341f + 12582912.0f; /* round to nearest via 1.5*2^23 */
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

/* 2^x for x <= 0 (tiny positive x also fine), max relative error 8.0e-8 (measured over every
 * float in [-126, 0] with FMA contraction; vm_exp_nonpos: 8.5e-8). x = n + r, |r| <= 1/2,
 * n = round(x) and r = x - n both exact, so no Cody-Waite split is needed; 2^r by the
 * degree-6 polynomial of Cephes exp2f; 2^n built in the exponent bits. Inputs below -126
 * are clamped (2^-126 is the smallest normal float), as in vm_exp_nonpos. exp(y) =
 * vm_exp2_nonpos(y log2(e)) saves a third of the multiply-adds where y log2(e) comes for
 * free (a scale folded into an operand). */
VM_INLINE float vm_exp2_nonpos(float x)
{
    const uint32_t lim = 0xC2FC0000u; /* bits of -126.0f */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u > lim ? lim : u;
    float v;
    memcpy(&v, &u, sizeof v);
    float nf = (v + 12582912.0f) - 12582912.0f; /* round to nearest via 1.5*2^23 */
    float r = v - nf;
    float p = 1.535336188319500e-4f;
    p = p * r + 1.339887440266574e-3f;
    p = p * r + 9.618437357674640e-3f;
    p = p * r + 5.550332471162809e-2f;
    p = p * r + 2.402264791363012e-1f;
    p = p * r + 6.931472028550421e-1f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)nf + 127) * (1 << 23);
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* Phi(x) = 0.5 erfc(-x / sqrt(2)), the standard normal CDF. With z = |x| / sqrt(2),
 * t = 1 / (1 + z/2):
 *   erfc(z) = t * exp(-z^2 + g(t)),  g(t) = log(erfc(z) / t) + z^2,
 * g a degree-9 polynomial in t fitted (Chebyshev least squares, numpy) on t in [0.15, 1]
 * (z <= 11.3, beyond which erfc underflows in float); max |error of g| 2.1e-7 in float
 * Horner, i.e. erfc to ~2e-7 relative (the form of Numerical Recipes' erfcc, own fit).
 * e = 0.5 erfc(z) = Phi(-|x|); Phi(x) = e for x < 0, 1 - e otherwise, selected with the
 * sign bit as a 0/1 factor (both products exact). */
VM_INLINE float vm_normal_cdf(float x)
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
    float e = 0.5f * t * vm_exp_nonpos(g - z * z);
    float neg = (float)(u >> 31);
    return neg * e + (1.0f - neg) * (1.0f - e);
}

/* gelu(x) = x * Phi(x) (erf form: torch.nn.GELU(), F.gelu default, transformers "gelu"). */
VM_INLINE float vm_gelu(float x)
{
    return x * vm_normal_cdf(x);
}

/* gelu'(x) = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi). */
VM_INLINE float vm_gelu_grad(float x)
{
    return vm_normal_cdf(x) + x * (0.39894228040143268f * vm_exp_nonpos(-0.5f * x * x));
}

/* sigmoid(x) = 1 / (1 + exp(-x)) without a float compare-and-select: t = exp(-|x|) <= 1,
 * sigmoid = 1 / (1 + t) for x >= 0 and t / (1 + t) for x < 0, selected arithmetically with
 * the sign bit (0 or 1; both products are exact). */
VM_INLINE float vm_sigmoid(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t un = u | 0x80000000u; /* -|x| */
    float mabs;
    memcpy(&mabs, &un, sizeof mabs);
    float t = vm_exp_nonpos(mabs);
    float neg = (float)(u >> 31);
    float num = neg * t + (1.0f - neg);
    return num / (1.0f + t);
}

#endif
