/* Linear (fully connected) layer on gemm (kernels/gemm.c), forward and backward, and its LoRA.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <string.h>

/* torch.nn.Linear: out [N, OC] = inp [N, IC] @ weight [OC, IC]^T + bias [OC].
 * The bias is broadcast into out first and gemm accumulates onto it (beta = 1).
 * gemm runs outside any OpenMP region and threads itself. */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias, size_t N,
                    size_t IC, size_t OC)
{
    if (N == 0 || OC == 0) return;
    float beta = 0.0f;
    if (bias) {
        for (size_t n = 0; n < N; n++)
            memcpy(out + n * OC, bias, OC * sizeof *out);
        beta = 1.0f;
    }
    if (IC == 0) {
        if (!bias) memset(out, 0, N * OC * sizeof *out);
        return;
    }
    gemm(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, OC);
}

/* Backward of linear_forward, accumulating:
 *   dinp [N, IC] += dout [N, OC] @ weight [OC, IC]
 *   dweight [OC, IC] += dout^T @ inp [N, IC],  dbias [OC] += sum_n dout [n, :]
 * Any of dinp, dweight, dbias may be NULL (frozen weight, first layer): its GEMM is skipped. */
void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, size_t N, size_t IC, size_t OC)
{
    if (N == 0 || OC == 0) return;
    if (dinp && IC > 0)
        gemm(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight && IC > 0)
        gemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
    if (dbias) {
        /* parallel over blocks of output columns (each owns its dbias entries), rows inner */
        size_t nblk = (OC + 63) / 64;
#pragma omp parallel for schedule(static)
        for (size_t blk = 0; blk < nblk; blk++) {
            size_t o0 = blk * 64, no = OC - o0 < 64 ? OC - o0 : 64;
            double acc[64] = {0};
            for (size_t n = 0; n < N; n++)
                for (size_t o = 0; o < no; o++)
                    acc[o] += dout[n * OC + o0 + o];
            for (size_t o = 0; o < no; o++)
                dbias[o0 + o] += (float)acc[o];
        }
    }
}

/* LoRA (kohya-ss networks/lora.py LoRAModule, linear): out [N, OC] += scale * xa @ up^T with
 * xa [N, R] = inp [N, IC] @ down^T; down [R, IC] ("lora_down"), up [OC, R] ("lora_up"),
 * scale = alpha / R (times the multiplier). xa is saved for backward. */
void lora_linear_forward(float *out, float *xa, const float *inp, const float *down,
                         const float *up, float scale, size_t N, size_t IC, size_t OC, size_t R)
{
    if (N == 0 || R == 0) return;
    linear_forward(xa, inp, down, NULL, N, IC, R);
    if (OC == 0) return;
    gemm(0, 1, N, OC, R, scale, xa, R, up, R, 1.0f, out, OC);
}

/* Backward of lora_linear_forward, accumulating into dinp [N, IC], ddown [R, IC], dup [OC, R]
 * (each may be NULL):
 *   dup += scale * dout^T @ xa,   dxa = scale * dout @ up,
 *   ddown += dxa^T @ inp,          dinp += dxa @ down.
 * dxa [N, R] is caller scratch, overwritten. xa [N, R] as saved by the forward. */
void lora_linear_backward(float *dinp, float *ddown, float *dup, float *dxa, const float *xa,
                          const float *dout, const float *inp, const float *down, const float *up,
                          float scale, size_t N, size_t IC, size_t OC, size_t R)
{
    if (N == 0 || R == 0 || OC == 0) return;
    if (dup)
        gemm(1, 0, OC, R, N, scale, dout, OC, xa, R, 1.0f, dup, R);
    if (!ddown && !dinp) return;
    gemm(0, 0, N, R, OC, scale, dout, OC, up, R, 0.0f, dxa, R);
    linear_backward(dinp, ddown, NULL, dxa, inp, down, N, IC, R);
}
