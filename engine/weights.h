/* Weights as kernels see them: f32 arrays. Half-precision (F16/BF16) weights stay half-size
 * in the mapped file and are widened per layer into a caller-owned, reused scratch buffer.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_WEIGHTS_H
#define DB_WEIGHTS_H

#include "model.h"

/* Returns w's values as f32: the mapped data itself when it is F32 and 4-byte aligned,
 * otherwise widened into scratch (which must hold w->t.nelem floats). */
const float *weight_f32(const DbWeight *w, float *scratch);

/* 1 when weight_f32 would need scratch for w. */
int weight_needs_scratch(const DbWeight *w);

#endif
