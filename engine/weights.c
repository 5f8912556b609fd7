/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "weights.h"

#include "safetensors.h"

#include <glib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

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

void weight_release_pages(const DbModel *m, const DbWeight *w)
{
    const GPtrArray *files = m->files;
    const uintptr_t a = (uintptr_t)w->t.data, e = a + w->t.nbytes;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (guint i = 0; files && i < files->len; i++) {
        const SafetensorsFile *f = g_ptr_array_index((GPtrArray *)files, i);
        const uintptr_t base = (uintptr_t)f->map;
        if (!f->map || a < base || e > base + f->map_size)
            continue;
        const uintptr_t lo = (a + page - 1) / page * page, hi = e / page * page;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}
