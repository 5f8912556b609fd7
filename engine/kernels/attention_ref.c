/* Plain reference for attention_forward (tests only): one full score row per query,
 * softmax accumulated in double.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>

/* out [b, i, h*D + d] = sum_j softmax_j(scale * q_i . k_j) v [b, j, h*D + d], j <= i if causal;
 * lse [b, h, i] = log sum_j exp(scale * q_i . k_j). Allocates one score row (tests only). */
void attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                           size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float scale,
                           int causal)
{
    size_t ld = H * D;
    double *row = malloc((Nk ? Nk : 1) * sizeof(double));
    if (!row) return;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < Nq; i++) {
                const float *qi = q + (b * Nq + i) * ld + h * D;
                size_t nk = causal ? (i + 1 < Nk ? i + 1 : Nk) : Nk;
                double mx = -INFINITY;
                for (size_t j = 0; j < nk; j++) {
                    const float *kj = k + (b * Nk + j) * ld + h * D;
                    double dot = 0.0;
                    for (size_t d = 0; d < D; d++)
                        dot += (double)qi[d] * (double)kj[d];
                    row[j] = dot * (double)scale;
                    if (row[j] > mx) mx = row[j];
                }
                double sum = 0.0;
                for (size_t j = 0; j < nk; j++) {
                    row[j] = exp(row[j] - mx);
                    sum += row[j];
                }
                float *oi = out + (b * Nq + i) * ld + h * D;
                for (size_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (size_t j = 0; j < nk; j++)
                        acc += row[j] * (double)v[(b * Nk + j) * ld + h * D + d];
                    oi[d] = nk ? (float)(acc / sum) : 0.0f;
                }
                if (lse) lse[(b * H + h) * Nq + i] = nk ? (float)(mx + log(sum)) : -INFINITY;
            }
    free(row);
}
