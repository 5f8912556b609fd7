/* AdamW as torch.optim.AdamW's single-tensor path (torch/optim/adamw.py, _single_tensor_adamw):
 * weight decay first, then the moment updates, then the bias-corrected step.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "optim.h"

#include <math.h>

void adamw_update(float *param, float *m, float *v, const float *grad, size_t n, long t,
                  const AdamWConfig *c)
{
    const float decay = 1.0f - c->lr * c->weight_decay;
    const double bc1 = 1.0 - pow((double)c->beta1, (double)t);
    const double bc2 = 1.0 - pow((double)c->beta2, (double)t);
    const float step_size = (float)(c->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i];
        const float p = param[i] * decay;
        const float mi = m[i] + (g - m[i]) * (1.0f - b1); /* torch: exp_avg.lerp_(grad, 1 - b1) */
        const float vi = v[i] * b2 + (1.0f - b2) * g * g;
        m[i] = mi, v[i] = vi;
        param[i] = p - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}
