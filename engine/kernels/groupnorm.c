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

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0, about 1 ulp; the same reduction and polynomial as attention.c (Cody &
 * Waite split of ln2, Cephes expf minimax coefficients), inputs below -87 clamped through
 * their bit patterns so GCC vectorises the loop under -ftrapping-math. */
static inline float gn_exp_nonpos(float x)
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

/* y * sigmoid(y) without a float compare-and-select: t = exp(-|y|) <= 1,
 * sigmoid(y) = 1 / (1 + t) for y >= 0 and t / (1 + t) for y < 0, selected arithmetically
 * with neg = sign bit of y (0 or 1; both products are exact). */
static inline float gn_silu(float y)
{
    uint32_t u;
    memcpy(&u, &y, sizeof u);
    uint32_t un = u | 0x80000000u; /* -|y| */
    float mabs;
    memcpy(&mabs, &un, sizeof mabs);
    float t = gn_exp_nonpos(mabs);
    float neg = (float)(u >> 31);
    float num = neg * t + (1.0f - neg);
    return y * num / (1.0f + t);
}

void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, size_t C, size_t HW,
                       size_t G, float eps, int silu)
{
    if (N == 0 || C == 0 || G == 0)
        return;
    size_t cpg = C / G, M = cpg * HW;

    /* pass 1: statistics; four partial sums keep the double adds from one long chain */
#pragma omp parallel for schedule(static)
    for (size_t ng = 0; ng < N * G; ng++) {
        const float *x = inp + ng * M;
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
        if (var < 0.0)
            var = 0.0;
        double rs = 1.0 / sqrt(var + (double)eps);
        if (mean)
            mean[ng] = (float)m;
        if (rstd)
            rstd[ng] = (float)rs;
        /* pass 2 for this group's channels: the group is done by one thread, so the
         * statistics stay in registers and the data is still warm in cache */
        for (size_t cc = 0; cc < cpg; cc++) {
            size_t c = (ng % G) * cpg + cc;
            /* (m - mf) * a: the part of the double mean lost by rounding it to float,
             * which rstd amplifies when |mean| >> std */
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
}
