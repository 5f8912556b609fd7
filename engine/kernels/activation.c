/* Elementwise activations and the residual add. out may equal inp.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>

/* torch.nn.GELU() (approximate='none'), transformers "gelu":
 *   y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))) */
void gelu_forward(float *out, const float *inp, size_t n)
{
    const float inv_sqrt2 = 0.70710678118654752440f;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * inv_sqrt2));
    }
}

/* transformers "quick_gelu" (OpenAI CLIP): y = x * sigmoid(1.702 x) = x / (1 + exp(-1.702 x)).
 * For very negative x, exp overflows to inf and y becomes -0, the correct limit. */
void quick_gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + expf(-1.702f * x));
    }
}

/* torch.nn.SiLU: y = x * sigmoid(x) = x / (1 + exp(-x)) */
void silu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

/* out [n] += inp [n] */
void residual_add(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] += inp[i];
}
