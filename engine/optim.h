/* Optimizers over one flat parameter vector (TrainParams values/grads).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_OPTIM_H
#define DB_OPTIM_H

#include <stddef.h>

/* torch.optim.AdamW defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2. */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} AdamWConfig;

#define ADAMW_DEFAULTS {1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f}

/* One AdamW step (torch.optim.AdamW, amsgrad off, maximize off), step t >= 1 counting this
 * one: param [n], m [n], v [n] (optimizer state, zero before step 1) updated in place from
 * grad [n]:
 *   param *= 1 - lr wd                          (decoupled weight decay)
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
 *   param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
void adamw_update(float *param, float *m, float *v, const float *grad, size_t n, long t,
                  const AdamWConfig *c);

#endif
