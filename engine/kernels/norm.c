/* Layer norm over the last axis (torch.nn.LayerNorm, biased variance).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>

/* For each row n of inp [N, C]:
 *   mean = sum_c x / C,  var = sum_c (x - mean)^2 / C  (two passes, double accumulators)
 *   rstd = 1 / sqrt(var + eps)
 *   out [n, c] = (x [n, c] - mean) * rstd * weight [c] + bias [c]
 * mean, rstd [N] are saved for backward when not NULL. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, size_t C, float eps)
{
    if (C == 0)
        return;
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float *y = out + n * C;
        double sum = 0.0;
        for (size_t c = 0; c < C; c++)
            sum += x[c];
        double m = sum / (double)C;
        double var = 0.0;
        for (size_t c = 0; c < C; c++) {
            double d = (double)x[c] - m;
            var += d * d;
        }
        var /= (double)C;
        double rs = 1.0 / sqrt(var + (double)eps);
        float mf = (float)m;
        float rsf = (float)rs;
        for (size_t c = 0; c < C; c++)
            y[c] = (float)(((double)x[c] - m) * rs) * weight[c] + bias[c];
        if (mean)
            mean[n] = mf;
        if (rstd)
            rstd[n] = rsf;
    }
}
