/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "cli_io.h"

#include "cli.h"

#include <glib.h>
#include <inttypes.h>
#include <string.h>

DbStatus cli_read_ids(const SafetensorsFile *in, int vocab, int32_t **ids, int *batch,
                      DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, "input_ids");
    char sh[128];
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor 'input_ids' (expected I64 or I32 [B, %d])",
                       in->path, DB_CONTEXT_LEN);
    if (e->t.ndim != 2 || e->t.shape[1] != DB_CONTEXT_LEN || e->t.shape[0] < 1 ||
        e->t.shape[0] > 4096 || (e->t.dtype != DB_DTYPE_I64 && e->t.dtype != DB_DTYPE_I32))
        return db_fail(err, DB_ERR_ARG, "%s: 'input_ids' is %s %s, expected I64 or I32 [B, %d] "
                       "with 1 <= B <= 4096", in->path, dtype_name(e->t.dtype),
                       tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh), DB_CONTEXT_LEN);
    const int64_t limit = vocab > 0 ? vocab : (int64_t)INT32_MAX + 1;
    int32_t *out = g_new(int32_t, e->t.nelem);
    for (size_t i = 0; i < e->t.nelem; i++) {
        int64_t v;
        if (e->t.dtype == DB_DTYPE_I64) {
            memcpy(&v, (const char *)e->t.data + 8 * i, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const char *)e->t.data + 4 * i, 4);
            v = v32;
        }
        if (v < 0 || v >= limit) {
            g_free(out);
            return db_fail(err, DB_ERR_ARG, "%s: 'input_ids' holds id %" PRId64 " at [%zu, %zu], "
                           "outside [0, %" PRId64 ")", in->path, v, i / DB_CONTEXT_LEN,
                           i % DB_CONTEXT_LEN, limit);
        }
        out[i] = (int32_t)v;
    }
    *ids = out;
    *batch = (int)e->t.shape[0];
    return DB_OK;
}

DbStatus cli_read_f32(const SafetensorsFile *in, const char *name, int ndim, int64_t *shape,
                      float **out, DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, name);
    char sh[128];
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor '%s' (expected F32 with %d dims)", in->path,
                       name, ndim);
    int ok = e->t.dtype == DB_DTYPE_F32 && e->t.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = e->t.shape[i] >= 1 && e->t.shape[i] <= 65536;
    if (!ok)
        return db_fail(err, DB_ERR_ARG, "%s: '%s' is %s %s, expected F32 with %d dims in [1, 65536]",
                       in->path, name, dtype_name(e->t.dtype),
                       tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh), ndim);
    memcpy(shape, e->t.shape, (size_t)ndim * sizeof *shape);
    if (!(*out = g_try_new(float, e->t.nelem ? e->t.nelem : 1)))
        return db_fail(err, DB_ERR_NOMEM, "%s: cannot allocate '%s'", in->path, name);
    memcpy(*out, e->t.data, e->t.nelem * sizeof(float));
    return DB_OK;
}

DbStatus cli_read_timesteps(const SafetensorsFile *in, size_t batch, float **out, DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, "timestep");
    char sh[128];
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor 'timestep' (expected [B], [1] or [])",
                       in->path);
    const DbDtype dt = e->t.dtype;
    if (!(e->t.ndim == 0 ||
          (e->t.ndim == 1 && (e->t.shape[0] == (int64_t)batch || e->t.shape[0] == 1))) ||
        (dt != DB_DTYPE_F32 && dt != DB_DTYPE_F64 && dt != DB_DTYPE_I64 && dt != DB_DTYPE_I32))
        return db_fail(err, DB_ERR_ARG, "%s: 'timestep' is %s %s, expected F32|F64|I64|I32 [%zu], "
                       "[1] or []", in->path, dtype_name(dt),
                       tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh), batch);
    float *t = g_new(float, batch);
    for (size_t b = 0; b < batch; b++) {
        const char *src = (const char *)e->t.data + (e->t.nelem == 1 ? 0 : b) * dtype_size(dt);
        double v;
        if (dt == DB_DTYPE_F32) {
            float f;
            memcpy(&f, src, 4);
            v = f;
        } else if (dt == DB_DTYPE_F64) {
            memcpy(&v, src, 8);
        } else if (dt == DB_DTYPE_I64) {
            int64_t i;
            memcpy(&i, src, 8);
            v = (double)i;
        } else {
            int32_t i;
            memcpy(&i, src, 4);
            v = i;
        }
        t[b] = (float)v;
    }
    *out = t;
    return DB_OK;
}

/* ---- network tables ---------------------------------------------------------------- */

static const CliNetDoc *net_row(const void *rows, size_t stride, size_t i)
{
    return (const CliNetDoc *)((const char *)rows + i * stride);
}

char *cli_net_names(const void *rows, size_t stride, size_t n)
{
    GString *s = g_string_new(NULL);
    for (size_t i = 0; i < n; i++)
        g_string_append_printf(s, "%s%s", i ? ", " : "", net_row(rows, stride, i)->name);
    return g_string_free(s, FALSE);
}

void cli_net_describe(GOptionContext *ctx, const void *rows, size_t stride, size_t n)
{
    GString *desc = g_string_new("Networks (inputs -> outputs):\n");
    for (size_t i = 0; i < n; i++) {
        const CliNetDoc *d = net_row(rows, stride, i);
        g_string_append_printf(desc, "  %-14s %s -> %s\n", d->name, d->inputs, d->outputs);
    }
    g_option_context_set_description(ctx, desc->str);
    g_string_free(desc, TRUE);
}

const void *cli_net_find(const char *name, const void *rows, size_t stride, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, net_row(rows, stride, i)->name)) return net_row(rows, stride, i);
    g_autofree char *names = cli_net_names(rows, stride, n);
    cli_error("--net: unknown network '%s' (available: %s)", name, names);
    return NULL;
}
