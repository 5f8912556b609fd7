/* Linear (fully connected) layer on OpenBLAS sgemm.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <cblas.h>
#include <string.h>

/* torch.nn.Linear: out [N, OC] = inp [N, IC] @ weight [OC, IC]^T + bias [OC].
 * The bias is broadcast into out first and sgemm accumulates onto it (beta = 1).
 * sgemm runs outside any OpenMP region; OpenBLAS threads it itself. */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    size_t N, size_t IC, size_t OC)
{
    if (N == 0 || OC == 0)
        return;
    float beta = 0.0f;
    if (bias) {
        for (size_t n = 0; n < N; n++)
            memcpy(out + n * OC, bias, OC * sizeof *out);
        beta = 1.0f;
    }
    if (IC == 0) {
        if (!bias)
            memset(out, 0, N * OC * sizeof *out);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)N, (blasint)OC, (blasint)IC,
                1.0f, inp, (blasint)IC, weight, (blasint)IC, beta, out, (blasint)OC);
}
