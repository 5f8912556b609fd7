/* PyTorch-compatible CPU random numbers (see rng.h for the sources and the algorithm).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "rng.h"

#include <math.h>
#include <string.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UMASK 0x80000000u
#define MT_LMASK 0x7fffffffu

/* Seeds every field: the state may be uninitialised memory (a stack variable). The fill
 * mode starts as torch's x86-64 AVX2 path; rng_set_fill() changes it after seeding. */
void rng_seed(DbRng *r, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->fill = RNG_FILL_AVX2;
    r->seed = seed;
    r->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < RNG_MT_N; j++)
        r->state[j] = 1812433253u * (r->state[j - 1] ^ (r->state[j - 1] >> 30)) + j;
    r->left = 1;
    r->next = 0;
}

void rng_set_fill(DbRng *r, RngFill fill)
{
    r->fill = fill == RNG_FILL_SCALAR ? RNG_FILL_SCALAR : RNG_FILL_AVX2;
}

static uint32_t mt_twist(uint32_t u, uint32_t v)
{
    return (((u & MT_UMASK) | (v & MT_LMASK)) >> 1) ^ ((v & 1u) ? MT_MATRIX_A : 0u);
}

static void mt_next_state(DbRng *r)
{
    uint32_t *s = r->state;
    int i = 0;
    for (; i < RNG_MT_N - MT_M; i++) s[i] = s[i + MT_M] ^ mt_twist(s[i], s[i + 1]);
    for (; i < RNG_MT_N - 1; i++) s[i] = s[i + MT_M - RNG_MT_N] ^ mt_twist(s[i], s[i + 1]);
    s[RNG_MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[RNG_MT_N - 1], s[0]);
    r->left = RNG_MT_N;
    r->next = 0;
}

uint32_t rng_u32(DbRng *r)
{
    if (--r->left == 0) mt_next_state(r);
    uint32_t y = r->state[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t rng_u64(DbRng *r)
{
    uint64_t hi = rng_u32(r);
    uint64_t lo = rng_u32(r);
    return (hi << 32) | lo;
}

/* at::uniform_real_distribution<float>(0, 1): low 24 bits * 2^-24. */
static float uniform_f32(DbRng *r)
{
    return (float)(rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): low 53 bits * 2^-53. */
static double uniform_f64(DbRng *r)
{
    return (double)(rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

void rng_uniform(DbRng *r, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(r);
}

/* ---- avx_mathfun.h (Cephes) log and sincos, one lane at a time -------------------------
 * Each vector operation becomes one float operation in the same order, so the results are
 * those of torch's normal_fill_16_AVX2. torch's build (GCC, -mfma, fp-contract=fast) fused
 * multiplies and adds; which product of `a*b + c*d` went into the FMA was found by trying
 * every choice against torch 1.13 (Debian) on 2 x 16384 draws: this is the one (of 128
 * equivalent ones) with every pair fused. fmaf() does the same single rounding. */

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* log256_ps for x > 0 (u1 = 1 - uniform lies in (0, 1]). */
static float cephes_logf(float x)
{
    const float one = 1.0f;
    if (x < u2f(0x00800000u)) x = u2f(0x00800000u); /* cut off denormals */
    int32_t ex = (int32_t)(f2u(x) >> 23);
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f)); /* mantissa in [0.5, 1) */
    ex -= 0x7f;
    float e = (float)ex + one;
    float tmp = 0.0f;
    if (x < 0.707106781186547524f) { /* x < sqrt(1/2): e -= 1, x = x + x - 1 */
        tmp = x;
        e = e - one;
    }
    x = x - one;
    x = x + tmp;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f); /* GCC fused (y z) + (e q1) this way */
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, 0.693359375f, x);
    return x;
}

/* sincos256_ps for 0 <= x (theta = 2 pi u2 lies in [0, 2 pi)). */
static void cephes_sincosf(float x, float *s, float *c)
{
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = fabsf(x);
    float y = x * 1.27323954473516f; /* 4 / pi */
    int32_t j = (int32_t)y;          /* truncation, as cvttps */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sign_sin = ((uint32_t)j & 4u) << 29;
    int poly_mask = (j & 2) == 0;
    /* extended precision modular arithmetic: x = ((x - y DP1) - y DP2) - y DP3 */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    sign_sin ^= swap_sign_sin;

    float z = x * x;
    float yc = 2.443315711809948E-005f; /* cos polynomial, 0 <= x <= pi/4 */
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f)); /* (yc z) - (z / 2) fused on the first product */
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f; /* sin polynomial */
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    float ysin2 = poly_mask ? ys : 0.0f;
    float ysin1 = poly_mask ? 0.0f : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    *s = u2f(f2u(ysin1 + ysin2) ^ sign_sin);
    *c = u2f(f2u(yc + ys) ^ sign_cos);
}

/* Box-Muller on data [16] holding uniforms: data[j], data[j+8] <- two normals. */
static void normal_fill_16(float *data, RngFill fill)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - data[j]; /* [0,1) -> (0,1] for the log */
        float u2 = data[j + 8];
        if (fill == RNG_FILL_AVX2) {
            float radius = sqrtf(-2.0f * cephes_logf(u1));
            float theta = (float)(2.0 * M_PI) * u2;
            float st, ct;
            cephes_sincosf(theta, &st, &ct);
            data[j] = radius * ct;
            data[j + 8] = radius * st;
        } else {
            float radius = sqrtf(-2.0f * logf(u1));
            float theta = (float)(2.0 * M_PI * (double)u2);
            data[j] = radius * cosf(theta);
            data[j + 8] = radius * sinf(theta);
        }
    }
}

/* at::normal_distribution<double>(0, 1) with the generator's cached second sample. */
static double normal_f64(DbRng *r)
{
    if (r->has_cached_normal) {
        r->has_cached_normal = 0;
        return r->cached_normal;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double rad = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    r->cached_normal = rad * sin(theta);
    r->has_cached_normal = 1;
    return rad * cos(theta);
}

void rng_randn(DbRng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_f64(r);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(r);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i, r->fill);
    if (n % 16 != 0) {
        float *tail = out + n - 16; /* redraw and transform the last 16 */
        for (size_t i = 0; i < 16; i++) tail[i] = uniform_f32(r);
        normal_fill_16(tail, r->fill);
    }
}
