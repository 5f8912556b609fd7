/* Value checks of weights: NaN or Inf anywhere in a weight turns every image black (or into
 * noise) without any other symptom, so each network's weights are scanned once, on the first
 * call that runs that network (model_check_finite; db_model_check_weights scans all three, as
 * `dreambooth info` does), and the first bad tensor is named. Scanning at first use rather than
 * at db_model_open keeps the other networks' pages out of memory (a VAE decode never touches
 * the 1.7 GB of an fp16 UNet). The scan tests the exponent bits only (all ones = Inf or NaN),
 * byte-wise so it vectorises and needs no alignment: F32 s eeeeeeee m23 (little-endian bytes
 * b3 = s e7..e1, b2 = e0 m22..m16), F16 s eeeee m10 (b1 = s e4..e0 m9 m8), BF16 s eeeeeeee m7
 * (b1 = s e7..e1, b0 = e0 m6..m0). Cost: one read of the mapped file (~2 GB for SD 1.5 F32,
 * about 0.2-0.4 s from the page cache on two cores); the pages then stay cached for the run.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "weights.h"

#include <glib.h>
#include <math.h>
#include <stdint.h>

#define CHECK_CHUNK ((size_t)1 << 16) /* elements per parallel piece */

/* 1 when any of the n elements at p (dtype) has an all-ones exponent. */
static int chunk_has_nonfinite(const unsigned char *p, DbDtype dtype, size_t n)
{
    unsigned bad = 0;
    if (dtype == DB_DTYPE_F32) {
        for (size_t i = 0; i < n; i++)
            bad |= (unsigned)((p[4 * i + 3] & 0x7f) == 0x7f) & (unsigned)(p[4 * i + 2] >> 7);
    } else if (dtype == DB_DTYPE_F16) {
        for (size_t i = 0; i < n; i++)
            bad |= (unsigned)((p[2 * i + 1] & 0x7c) == 0x7c);
    } else if (dtype == DB_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++)
            bad |= (unsigned)((p[2 * i + 1] & 0x7f) == 0x7f) & (unsigned)(p[2 * i] >> 7);
    }
    return bad != 0;
}

size_t weights_find_nonfinite(const void *data, DbDtype dtype, size_t nelem, int *is_nan)
{
    const unsigned char *p = data;
    size_t es = dtype == DB_DTYPE_F32 ? 4 : 2;
    if (dtype != DB_DTYPE_F32 && dtype != DB_DTYPE_F16 && dtype != DB_DTYPE_BF16) return SIZE_MAX;
    size_t n_chunks = (nelem + CHECK_CHUNK - 1) / CHECK_CHUNK;
    size_t first = SIZE_MAX; /* first bad chunk */
    #pragma omp parallel for schedule(static) reduction(min : first) if (n_chunks > 1)
    for (size_t c = 0; c < n_chunks; c++) {
        size_t begin = c * CHECK_CHUNK, n = nelem - begin < CHECK_CHUNK ? nelem - begin : CHECK_CHUNK;
        if (c < first && chunk_has_nonfinite(p + begin * es, dtype, n)) first = c;
    }
    if (first == SIZE_MAX) return SIZE_MAX;
    for (size_t i = first * CHECK_CHUNK; i < nelem; i++) {
        float v;
        dtype_to_f32(&v, p + i * es, dtype, 1);
        if (!isfinite(v)) {
            if (is_nan) *is_nan = isnan(v) != 0;
            return i;
        }
    }
    return SIZE_MAX; /* not reached: the chunk scan saw one */
}

DbStatus weight_check_finite(const DbWeight *w, DbError *err)
{
    int is_nan = 0;
    size_t i = weights_find_nonfinite(w->t.data, w->t.dtype, w->t.nelem, &is_nan);
    if (i == SIZE_MAX) return DB_OK;
    return db_fail(err, DB_ERR_MODEL,
                   "%s: tensor %s holds %s at element %zu of %zu: the weights are damaged (they "
                   "would give black or noise images); re-download or re-convert the model",
                   w->file, w->src_name, is_nan ? "NaN" : "Inf", i, w->t.nelem);
}

DbStatus model_check_finite(DbModel *m, NetKind net, DbError *err)
{
    if (m->finite_checked & (1u << net)) return DB_OK;
    GPtrArray *ws = m->net_weights[net];
    for (guint i = 0; ws && i < ws->len; i++) {
        const DbWeight *w = model_weight(m, g_ptr_array_index(ws, i));
        DbStatus st = w ? weight_check_finite(w, err) : DB_OK;
        if (st != DB_OK) return st;
    }
    m->finite_checked |= 1u << net;
    return DB_OK;
}

DbStatus db_model_check_weights(DbModel *m, DbError *err)
{
    if (!m) return db_fail(err, DB_ERR_ARG, "db_model_check_weights: NULL model");
    for (int n = 0; n < NET_COUNT; n++) {
        DbStatus st = model_check_finite(m, (NetKind)n, err);
        if (st != DB_OK) return st;
    }
    return DB_OK;
}
