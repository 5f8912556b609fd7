/* Elementwise activations and the residual add, forward and backward. out may equal inp.
 * Backward: dinp [n] += dout [n] * f'(inp [n]) (accumulates; needs the forward input).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"
#include "vmath.h"

#include <math.h>

/* torch.nn.GELU() (approximate='none'), transformers "gelu":
 *   y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))
 * vm_gelu (vmath.h): the same branch-free Phi as geglu_forward, ~2e-7 relative. */
void gelu_forward(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = vm_gelu(inp[i]);
}

/* gelu'(x) = Phi(x) + x phi(x) */
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * vm_gelu_grad(inp[i]);
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

/* d/dx x s(1.702 x) = s + 1.702 x s (1 - s), s = sigmoid(1.702 x) */
void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], s = vm_sigmoid(1.702f * x);
        dinp[i] += dout[i] * (s + 1.702f * x * s * (1.0f - s));
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

/* d/dx x s(x) = s + x s (1 - s), s = sigmoid(x) */
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], s = vm_sigmoid(x);
        dinp[i] += dout[i] * (s + x * s * (1.0f - s));
    }
}

/* out [n] += inp [n] */
void residual_add(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] += inp[i];
}

/* out = out + inp passes dout unchanged to both operands: the caller keeps dout as the
 * gradient of out's previous value and accumulates it into the other operand with this. */
void residual_backward(float *dinp, const float *dout, size_t n)
{
    residual_add(dinp, dout, n);
}
