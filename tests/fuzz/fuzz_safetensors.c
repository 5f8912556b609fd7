/* libFuzzer target: safetensors_open on arbitrary bytes. A file it accepts must satisfy the
 * invariants the loaders rely on (every tensor inside the mapping, sizes consistent, tiling
 * exact, lookups by name and metadata consistent); its float data is widened to f32.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz_util.h"
#include "safetensors.h"

#define CONVERT_MAX (1u << 20) /* elements widened per input */

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_safetensors: invariant broken: %s\n", what);
        abort();
    }
}

static void walk(const SafetensorsFile *f)
{
    static float buf[CONVERT_MAX];
    const char *base = f->map;
    size_t at = f->data_start, converted = 0;
    check(f->data_start >= 8 && f->data_start <= f->map_size, "data_start");
    for (int i = 0; i < f->n_tensors; i++) {
        const SafetensorsEntry *e = &f->tensors[i];
        const DbTensor *t = &e->t;
        check(e->name != NULL, "name");
        check(safetensors_find(f, e->name) == e, "find by name");
        check(t->dtype >= 0 && t->dtype < DB_DTYPE_COUNT, "dtype");
        check(t->ndim >= 0 && t->ndim <= DB_MAX_DIMS, "ndim");
        size_t nelem = 1;
        for (int d = 0; d < t->ndim; d++) {
            check(t->shape[d] >= 0, "shape");
            nelem *= (size_t)t->shape[d];
        }
        check(nelem == t->nelem && t->nbytes == nelem * dtype_size(t->dtype), "sizes");
        check((const char *)t->data == base + at, "tiling");
        at += t->nbytes;
        check(at <= f->map_size, "inside the mapping");
        if (dtype_is_float_weight(t->dtype) && converted + t->nelem <= CONVERT_MAX) {
            dtype_to_f32(buf, t->data, t->dtype, t->nelem);
            converted += t->nelem;
        }
        char s[96];
        tensor_shape_str(t->shape, t->ndim, s, sizeof s);
    }
    check(at == f->map_size, "no trailing bytes");
    for (int i = 0; i < f->n_meta; i++)
        check(f->meta_keys[i] && f->meta_values[i] && safetensors_meta(f, f->meta_keys[i]) != NULL,
              "metadata");
    check(safetensors_meta(f, "\x01never") == NULL, "absent metadata");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)safetensors_sniff(data, size);
    const char *path = fuzz_write(0, "in.safetensors", data, size);
    SafetensorsFile *f = NULL;
    DbError err = {0};
    DbStatus st = safetensors_open(&f, path, &err);
    fuzz_check_error(st, err.msg);
    check((st == DB_OK) == (f != NULL), "status and file agree");
    if (f) walk(f);
    safetensors_close(f);
    return 0;
}
