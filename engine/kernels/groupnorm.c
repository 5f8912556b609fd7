/* Group norm with optional fused SiLU (diffusers ResnetBlock2D: norm -> SiLU -> conv).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Pass 1, per (n, g) over the C/G * HW values of the group, in double (eight lanes):
 *   mean = sum x / M,  var = sum x^2 / M - mean^2 (biased, as torch),  rstd = 1/sqrt(var+eps)
 * Pass 2, per channel c of the group, fused: y = (x - mean) * a + bias [c] with
 *   a = rstd * weight [c] (x - mean first: no cancellation when |mean| >> std), then
 *   out = y, or y * sigmoid(y) with silu.
 * Both passes for one group run on one thread (parallel over N*G groups), so the group is
 * still in cache for pass 2. Saved for backward: mean, rstd [N, G]. */
#include "kernels.h"
#include "vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define GN_ALWAYS_INLINE __attribute__((always_inline))
#else
#define GN_ALWAYS_INLINE
#endif

/* y * sigmoid(y) without a float compare-and-select: t = exp(-|y|) <= 1,
 * sigmoid(y) = 1 / (1 + t) for y >= 0 and t / (1 + t) for y < 0, selected arithmetically
 * with neg = sign bit of y (0 or 1; both products are exact). */
static inline GN_ALWAYS_INLINE float gn_silu(float y)
{
    uint32_t u;
    memcpy(&u, &y, sizeof u);
    uint32_t un = u | 0x80000000u; /* -|y| */
    float mabs;
    memcpy(&mabs, &un, sizeof mabs);
    float t = vm_exp_nonpos(mabs);
    float neg = (float)(u >> 31);
    float num = neg * t + (1.0f - neg);
    return y * num / (1.0f + t);
}

/* Both passes for group ng = n*G + g (M = C/G * HW values at inp + ng*M). */
static inline GN_ALWAYS_INLINE void gn_group_body(float *out, float *mean, float *rstd,
                                                  const float *inp, const float *weight,
                                                  const float *bias, size_t ng, size_t G,
                                                  size_t cpg, size_t HW, float eps, int silu)
{
    size_t M = cpg * HW;
    const float *x = inp + ng * M;
    /* pass 1: statistics in eight double lanes (lane t sums the positions = t mod 8, in
     * order; explicit vectors, which the compiler does not form from the lanes itself) */
    double s[8] = {0}, q[8] = {0};
    size_t i = 0;
#if defined(__GNUC__)
    typedef double gn_v4d __attribute__((vector_size(32)));
    gn_v4d s0 = {0, 0, 0, 0}, s1 = s0, q0 = s0, q1 = s0;
    for (; i + 8 <= M; i += 8) {
        const float *xi = x + i;
        gn_v4d a = {xi[0], xi[1], xi[2], xi[3]}, b = {xi[4], xi[5], xi[6], xi[7]};
        s0 += a, s1 += b;
        q0 += a * a, q1 += b * b;
    }
    for (int t = 0; t < 4; t++)
        s[t] = s0[t], s[4 + t] = s1[t], q[t] = q0[t], q[4 + t] = q1[t];
#endif
    for (; i + 8 <= M; i += 8)
        for (int t = 0; t < 8; t++) {
            double v = x[i + t];
            s[t] += v;
            q[t] += v * v;
        }
    for (; i < M; i++) {
        double v = x[i];
        s[0] += v;
        q[0] += v * v;
    }
    double sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    double sq = ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
    double m = M ? sum / (double)M : 0.0;
    double var = M ? sq / (double)M - m * m : 0.0;
    if (var < 0.0) var = 0.0;
    double rs = 1.0 / sqrt(var + (double)eps);
    if (mean) mean[ng] = (float)m;
    if (rstd) rstd[ng] = (float)rs;
    /* pass 2 over the group's channels while the group is still warm in cache */
    for (size_t cc = 0; cc < cpg; cc++) {
        size_t c = (ng % G) * cpg + cc;
        /* (m - mf) * a: the part of the double mean lost by rounding it to float, which
         * rstd amplifies when |mean| >> std */
        double a = rs * (double)weight[c];
        float mf = (float)m, af = (float)a;
        float bf = (float)((double)bias[c] - (m - (double)mf) * a);
        const float *xc = x + cc * HW;
        float *y = out + ng * M + cc * HW;
        if (silu) {
            for (size_t p = 0; p < HW; p++)
                y[p] = gn_silu((xc[p] - mf) * af + bf);
        } else {
            for (size_t p = 0; p < HW; p++)
                y[p] = (xc[p] - mf) * af + bf;
        }
    }
}

typedef void (*GnGroupFn)(float *, float *, float *, const float *, const float *, const float *,
                          size_t, size_t, size_t, size_t, float, int);

static void gn_group_generic(float *out, float *mean, float *rstd, const float *inp,
                             const float *weight, const float *bias, size_t ng, size_t G,
                             size_t cpg, size_t HW, float eps, int silu)
{
    gn_group_body(out, mean, rstd, inp, weight, bias, ng, G, cpg, HW, eps, silu);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2)
#define GN_HAVE_AVX2 1
/* the same code compiled for AVX2 (8-wide SiLU), picked at run time */
__attribute__((target("avx2,fma"))) static void
gn_group_avx2(float *out, float *mean, float *rstd, const float *inp, const float *weight,
              const float *bias, size_t ng, size_t G, size_t cpg, size_t HW, float eps, int silu)
{
    gn_group_body(out, mean, rstd, inp, weight, bias, ng, G, cpg, HW, eps, silu);
}
#endif

void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C, size_t HW, size_t G, float eps,
                       int silu)
{
    if (N == 0 || C == 0 || G == 0) return;
    GnGroupFn group = gn_group_generic;
#ifdef GN_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) group = gn_group_avx2;
#endif
#pragma omp parallel for schedule(static)
    for (size_t ng = 0; ng < N * G; ng++)
        group(out, mean, rstd, inp, weight, bias, ng, G, C / G, HW, eps, silu);
}

/* ---- backward ----
 * With xhat = (x - mean) * rstd (saved mean, rstd [N, G]), y = xhat * weight [c] + bias [c]
 * recomputed, and the gradient at y  gy = dout (plain) or dout * silu'(y),
 * silu'(y) = s + y s (1 - s), s = sigmoid(y); per group, over its M = C/G * HW values,
 * with gw = gy * weight [c]:
 *   dinp += rstd * (gw - mean(gw) - xhat * mean(gw * xhat))
 *   dweight [c] += sum_{n, p} gy * xhat,  dbias [c] += sum_{n, p} gy */
static inline GN_ALWAYS_INLINE float gn_grad_pre(float dy, float xh, float w, float b, int silu)
{
    if (!silu) return dy;
    float y = xh * w + b, s = vm_sigmoid(y);
    return dy * (s + y * s * (1.0f - s));
}

/* One channel row of group statistics: lg/lgx [8] += gw, gw * xhat in eight float lanes
 * (position mod 8; the loop vectorises without reassociating a sum), the tail into lane 0. */
static inline GN_ALWAYS_INLINE void gn_bwd_row_sums(float *lg, float *lgx, const float *xc,
                                                    const float *dc, float m, float rs, float w,
                                                    float b, size_t HW, int silu)
{
    size_t p = 0;
    for (; p + 8 <= HW; p += 8)
        for (int l = 0; l < 8; l++) {
            const float xh = (xc[p + l] - m) * rs;
            const float gw = gn_grad_pre(dc[p + l], xh, w, b, silu) * w;
            lg[l] += gw;
            lgx[l] += gw * xh;
        }
    for (; p < HW; p++) {
        const float xh = (xc[p] - m) * rs;
        const float gw = gn_grad_pre(dc[p], xh, w, b, silu) * w;
        lg[0] += gw;
        lgx[0] += gw * xh;
    }
}

static inline GN_ALWAYS_INLINE void gn_bwd_row_dx(float *dxc, const float *xc, const float *dc,
                                                  float m, float rs, float w, float b, float mg,
                                                  float mgx, size_t HW, int silu)
{
    for (size_t p = 0; p < HW; p++) {
        const float xh = (xc[p] - m) * rs;
        const float gw = gn_grad_pre(dc[p], xh, w, b, silu) * w;
        dxc[p] += rs * (gw - mg - xh * mgx);
    }
}

/* dinp for group ng (its M = cpg * HW values at offset ng * M): pass 1 sums gw and gw * xhat
 * (float lanes per channel row, rows added in double), pass 2 recomputes gw and writes the
 * group's dinp. silu is branched on outside the loops so each loop is specialised. */
static inline GN_ALWAYS_INLINE void gn_bwd_group_body(float *dinp, const float *mean,
                                                      const float *rstd, const float *dout,
                                                      const float *inp, const float *weight,
                                                      const float *bias, size_t ng, size_t G,
                                                      size_t cpg, size_t HW, int silu)
{
    const size_t M = cpg * HW;
    const float *x = inp + ng * M, *dy = dout + ng * M;
    const float m = mean[ng], rs = rstd[ng];
    double tg = 0.0, tgx = 0.0;
    for (size_t cc = 0; cc < cpg; cc++) {
        const size_t c = (ng % G) * cpg + cc;
        float lg[8] = {0}, lgx[8] = {0};
        if (silu)
            gn_bwd_row_sums(lg, lgx, x + cc * HW, dy + cc * HW, m, rs, weight[c], bias[c], HW, 1);
        else
            gn_bwd_row_sums(lg, lgx, x + cc * HW, dy + cc * HW, m, rs, weight[c], bias[c], HW, 0);
        for (int l = 0; l < 8; l++)
            tg += lg[l], tgx += lgx[l];
    }
    const float mg = (float)(tg / (double)M), mgx = (float)(tgx / (double)M);
    float *dx = dinp + ng * M;
    for (size_t cc = 0; cc < cpg; cc++) {
        const size_t c = (ng % G) * cpg + cc, o = cc * HW;
        if (silu)
            gn_bwd_row_dx(dx + o, x + o, dy + o, m, rs, weight[c], bias[c], mg, mgx, HW, 1);
        else
            gn_bwd_row_dx(dx + o, x + o, dy + o, m, rs, weight[c], bias[c], mg, mgx, HW, 0);
    }
}

typedef void (*GnBwdGroupFn)(float *, const float *, const float *, const float *, const float *,
                             const float *, const float *, size_t, size_t, size_t, size_t, int);

static void gn_bwd_group_generic(float *dinp, const float *mean, const float *rstd,
                                 const float *dout, const float *inp, const float *weight,
                                 const float *bias, size_t ng, size_t G, size_t cpg, size_t HW,
                                 int silu)
{
    gn_bwd_group_body(dinp, mean, rstd, dout, inp, weight, bias, ng, G, cpg, HW, silu);
}

#ifdef GN_HAVE_AVX2
__attribute__((target("avx2,fma"))) static void
gn_bwd_group_avx2(float *dinp, const float *mean, const float *rstd, const float *dout,
                  const float *inp, const float *weight, const float *bias, size_t ng, size_t G,
                  size_t cpg, size_t HW, int silu)
{
    gn_bwd_group_body(dinp, mean, rstd, dout, inp, weight, bias, ng, G, cpg, HW, silu);
}
#endif

void groupnorm_backward(float *dinp, float *dweight, float *dbias, const float *mean,
                        const float *rstd, const float *dout, const float *inp, const float *weight,
                        const float *bias, size_t N, size_t C, size_t HW, size_t G, int silu)
{
    if (N == 0 || C == 0 || G == 0 || HW == 0) return;
    size_t cpg = C / G;
    if (dinp) {
        GnBwdGroupFn group = gn_bwd_group_generic;
#ifdef GN_HAVE_AVX2
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            group = gn_bwd_group_avx2;
#endif
        /* parallel over groups: each owns its M values of dinp */
#pragma omp parallel for schedule(static)
        for (size_t ng = 0; ng < N * G; ng++)
            group(dinp, mean, rstd, dout, inp, weight, bias, ng, G, cpg, HW, silu);
    }
    if (dweight || dbias) {
        /* parallel over channels: each owns dweight [c], dbias [c] */
#pragma omp parallel for schedule(static)
        for (size_t c = 0; c < C; c++) {
            double aw = 0.0, ab = 0.0;
            float w = weight[c], b = bias[c];
            for (size_t n = 0; n < N; n++) {
                size_t ng = n * G + c / cpg;
                const float *x = inp + (n * C + c) * HW, *dy = dout + (n * C + c) * HW;
                float m = mean[ng], rs = rstd[ng];
                for (size_t p = 0; p < HW; p++) {
                    float xh = (x[p] - m) * rs;
                    float gy = gn_grad_pre(dy[p], xh, w, b, silu);
                    aw += (double)gy * xh;
                    ab += gy;
                }
            }
            if (dweight) dweight[c] += (float)aw;
            if (dbias) dbias[c] += (float)ab;
        }
    }
}
