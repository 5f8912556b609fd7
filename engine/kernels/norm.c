/* Layer norm over the last axis (torch.nn.LayerNorm, biased variance), forward and backward.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>

/* For each row n of inp [N, C]:
 *   mean = sum_c x / C,  var = sum_c (x - mean)^2 / C  (two passes, double accumulators)
 *   rstd = 1 / sqrt(var + eps)
 *   out [n, c] = (x [n, c] - mean) * rstd * weight [c] + bias [c]
 * mean, rstd [N] are saved for backward when not NULL. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, size_t N, size_t C, float eps)
{
    if (C == 0) return;
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
        if (mean) mean[n] = mf;
        if (rstd) rstd[n] = rsf;
    }
}

/* Backward of layernorm_forward, accumulating. With xhat = (x - mean) * rstd (saved mean,
 * rstd [N]) and g = dout * weight:
 *   dinp [n, c] += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
 *   dweight [c] += sum_n dout * xhat,  dbias [c] += sum_n dout
 * dinp, dweight, dbias may each be NULL. Row pass parallel over n (owns dinp rows); the
 * parameter pass parallel over blocks of channels (owns dweight/dbias); sums in double. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *mean,
                        const float *rstd, const float *dout, const float *inp, const float *weight,
                        size_t N, size_t C)
{
    if (C == 0 || N == 0) return;
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *dy = dout + n * C;
            float m = mean[n], rs = rstd[n];
            double sg = 0.0, sgx = 0.0;
            for (size_t c = 0; c < C; c++) {
                double g = (double)dy[c] * weight[c];
                sg += g;
                sgx += g * (double)((x[c] - m) * rs);
            }
            float mg = (float)(sg / (double)C), mgx = (float)(sgx / (double)C);
            float *dx = dinp + n * C;
            for (size_t c = 0; c < C; c++) {
                float xh = (x[c] - m) * rs;
                dx[c] += rs * (dy[c] * weight[c] - mg - xh * mgx);
            }
        }
    }
    if (dweight || dbias) {
        size_t nblk = (C + 63) / 64;
#pragma omp parallel for schedule(static)
        for (size_t blk = 0; blk < nblk; blk++) {
            size_t c0 = blk * 64, nc = C - c0 < 64 ? C - c0 : 64;
            double aw[64] = {0}, ab[64] = {0};
            for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C + c0, *dy = dout + n * C + c0;
                float m = mean[n], rs = rstd[n];
                for (size_t c = 0; c < nc; c++) {
                    aw[c] += (double)dy[c] * (double)((x[c] - m) * rs);
                    ab[c] += dy[c];
                }
            }
            for (size_t c = 0; c < nc; c++) {
                if (dweight) dweight[c0 + c] += (float)aw[c];
                if (dbias) dbias[c0 + c] += (float)ab[c];
            }
        }
    }
}
