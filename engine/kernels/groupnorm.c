/* Group norm with optional fused SiLU (diffusers ResnetBlock2D: norm -> SiLU -> conv).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Pass 1, per (n, g) over the C/G * HW values of the group, in double:
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
    /* pass 1: statistics; four partial sums keep the double adds from one long chain */
    double s[4] = {0.0, 0.0, 0.0, 0.0}, q[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= M; i += 4)
        for (int t = 0; t < 4; t++) {
            double v = x[i + t];
            s[t] += v;
            q[t] += v * v;
        }
    for (; i < M; i++) {
        double v = x[i];
        s[0] += v;
        q[0] += v * v;
    }
    double sum = (s[0] + s[1]) + (s[2] + s[3]), sq = (q[0] + q[1]) + (q[2] + q[3]);
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

void groupnorm_backward(float *dinp, float *dweight, float *dbias, const float *mean,
                        const float *rstd, const float *dout, const float *inp, const float *weight,
                        const float *bias, size_t N, size_t C, size_t HW, size_t G, int silu)
{
    if (N == 0 || C == 0 || G == 0 || HW == 0) return;
    size_t cpg = C / G, M = cpg * HW;
    if (dinp) {
        /* parallel over groups: each owns its M values of dinp */
#pragma omp parallel for schedule(static)
        for (size_t ng = 0; ng < N * G; ng++) {
            const float *x = inp + ng * M, *dy = dout + ng * M;
            float m = mean[ng], rs = rstd[ng];
            double sg = 0.0, sgx = 0.0;
            for (size_t cc = 0; cc < cpg; cc++) {
                size_t c = (ng % G) * cpg + cc;
                float w = weight[c], b = bias[c];
                for (size_t p = 0; p < HW; p++) {
                    float xh = (x[cc * HW + p] - m) * rs;
                    float gw = gn_grad_pre(dy[cc * HW + p], xh, w, b, silu) * w;
                    sg += gw;
                    sgx += (double)gw * xh;
                }
            }
            float mg = (float)(sg / (double)M), mgx = (float)(sgx / (double)M);
            float *dx = dinp + ng * M;
            for (size_t cc = 0; cc < cpg; cc++) {
                size_t c = (ng % G) * cpg + cc;
                float w = weight[c], b = bias[c];
                for (size_t p = 0; p < HW; p++) {
                    size_t i = cc * HW + p;
                    float xh = (x[i] - m) * rs;
                    float gw = gn_grad_pre(dy[i], xh, w, b, silu) * w;
                    dx[i] += rs * (gw - mg - xh * mgx);
                }
            }
        }
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
