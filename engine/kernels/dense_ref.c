/* Plain references for the dense kernels (tests only): obvious loops, double accumulation.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>

/* out [N, OC] = inp [N, IC] @ weight [OC, IC]^T + bias [OC] (bias may be NULL) */
void linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                        size_t N, size_t IC, size_t OC)
{
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            double acc = bias ? (double)bias[o] : 0.0;
            for (size_t i = 0; i < IC; i++)
                acc += (double)inp[n * IC + i] * (double)weight[o * IC + i];
            out[n * OC + o] = (float)acc;
        }
}

/* Layer norm, everything in double: out [N, C], mean, rstd [N] (may be NULL), inp [N, C],
 * weight, bias [C]; biased variance. */
void layernorm_forward_ref(double *out, double *mean, double *rstd, const float *inp,
                           const float *weight, const float *bias, size_t N, size_t C,
                           float eps)
{
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        double m = 0.0, v = 0.0;
        for (size_t c = 0; c < C; c++)
            m += x[c];
        m /= (double)C;
        for (size_t c = 0; c < C; c++)
            v += ((double)x[c] - m) * ((double)x[c] - m);
        v /= (double)C;
        double rs = 1.0 / sqrt(v + (double)eps);
        for (size_t c = 0; c < C; c++)
            out[n * C + c] = ((double)x[c] - m) * rs * weight[c] + bias[c];
        if (mean)
            mean[n] = m;
        if (rstd)
            rstd[n] = rs;
    }
}
