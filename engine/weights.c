/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "weights.h"

#include <stdint.h>

int weight_needs_scratch(const DbWeight *w)
{
    return w->t.dtype != DB_DTYPE_F32 || ((uintptr_t)w->t.data % sizeof(float)) != 0;
}

const float *weight_f32(const DbWeight *w, float *scratch)
{
    if (!weight_needs_scratch(w))
        return (const float *)w->t.data;
    dtype_to_f32(scratch, w->t.data, w->t.dtype, w->t.nelem);
    return scratch;
}
