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

/* Releases the whole pages of w's data when they lie in one of m's file mappings (an fp32
 * copy replaces them; a later read faults them in again from the file). Owned data (a merged
 * LoRA) is left alone. */
void weight_release_pages(const DbModel *m, const DbWeight *w);

/* weights_check.c: index of the first NaN/Inf among nelem values of dtype (F32, F16, BF16) at
 * data (any alignment), or SIZE_MAX when all are finite; *is_nan (may be NULL) says which. */
size_t weights_find_nonfinite(const void *data, DbDtype dtype, size_t nelem, int *is_nan);
/* DB_OK, or DB_ERR_MODEL "FILE: tensor NAME holds NaN at element i of n: ..." (one line). */
DbStatus weight_check_finite(const DbWeight *w, DbError *err);

#endif
