/* safetensors writer: tensors are copied in, then saved atomically: a temp file in the target's
 * folder, written in full, fsync'd, renamed over the target, and the folder fsync'd. Any failure
 * (ENOSPC, EFBIG past RLIMIT_FSIZE, ...) removes the temp file and leaves an old file intact.
 *
 * Layout as the reference writer makes it: compact header JSON with "__metadata__" first, then
 * the tensors (here sorted by name, data in the same order), header padded with spaces so the
 * data starts at a multiple of 8 bytes.
 *
 * A process that exceeds RLIMIT_FSIZE gets SIGXFSZ, whose default action kills it; a caller
 * that wants EFBIG reported as an error must ignore SIGXFSZ. The library does not touch signals.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    DbDtype dtype;
    int ndim;
    int64_t shape[DB_MAX_DIMS];
    size_t nbytes;
    void *data; /* owned copy, NULL when nbytes == 0 */
} WriterEntry;

struct SafetensorsWriter {
    GPtrArray *entries;   /* WriterEntry* */
    GHashTable *names;    /* name -> WriterEntry* (borrowed keys) */
    GPtrArray *meta_keys; /* char* */
    GPtrArray *meta_vals; /* char* */
};

static void entry_free(gpointer p)
{
    WriterEntry *e = p;
    g_free(e->name);
    g_free(e->data);
    g_free(e);
}

SafetensorsWriter *safetensors_writer_new(void)
{
    SafetensorsWriter *w = g_new0(SafetensorsWriter, 1);
    w->entries = g_ptr_array_new_with_free_func(entry_free);
    w->names = g_hash_table_new(g_str_hash, g_str_equal);
    w->meta_keys = g_ptr_array_new_with_free_func(g_free);
    w->meta_vals = g_ptr_array_new_with_free_func(g_free);
    return w;
}

void safetensors_writer_free(SafetensorsWriter *w)
{
    if (!w) return;
    g_hash_table_destroy(w->names);
    g_ptr_array_free(w->entries, TRUE);
    g_ptr_array_free(w->meta_keys, TRUE);
    g_ptr_array_free(w->meta_vals, TRUE);
    g_free(w);
}

DbStatus safetensors_writer_add(SafetensorsWriter *w, const char *name, DbDtype dtype, int ndim,
                                const int64_t *shape, const void *data, DbError *err)
{
    if (!w || !name || !g_utf8_validate(name, -1, NULL))
        return db_fail(err, DB_ERR_ARG, "safetensors writer: tensor name missing or not UTF-8");
    if (!strcmp(name, "__metadata__"))
        return db_fail(err, DB_ERR_ARG, "safetensors writer: '__metadata__' is not a tensor name");
    if ((unsigned)dtype >= DB_DTYPE_COUNT)
        return db_fail(err, DB_ERR_ARG, "safetensors writer: tensor '%.200s': invalid dtype %d",
                       name, (int)dtype);
    if (ndim < 0 || ndim > DB_MAX_DIMS || (ndim > 0 && !shape))
        return db_fail(err, DB_ERR_ARG, "safetensors writer: tensor '%.200s': rank %d not in 0..%d",
                       name, ndim, DB_MAX_DIMS);
    if (g_hash_table_contains(w->names, name))
        return db_fail(err, DB_ERR_ARG, "safetensors writer: duplicate tensor name '%.200s'", name);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX ||
            __builtin_mul_overflow(n, (size_t)shape[i], &n))
            return db_fail(err, DB_ERR_ARG,
                           "safetensors writer: tensor '%.200s': invalid or overflowing shape", name);
    }
    size_t nbytes;
    if (__builtin_mul_overflow(n, dtype_size(dtype), &nbytes))
        return db_fail(err, DB_ERR_ARG, "safetensors writer: tensor '%.200s': byte size overflows",
                       name);
    if (nbytes && !data)
        return db_fail(err, DB_ERR_ARG, "safetensors writer: tensor '%.200s': no data", name);
    WriterEntry *e = g_new0(WriterEntry, 1);
    if (nbytes) {
        e->data = g_try_malloc(nbytes);
        if (!e->data) {
            g_free(e);
            return db_fail(err, DB_ERR_NOMEM, "safetensors writer: tensor '%.200s': cannot copy %zu bytes",
                           name, nbytes);
        }
        memcpy(e->data, data, nbytes);
    }
    e->name = g_strdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    if (ndim) memcpy(e->shape, shape, sizeof(int64_t) * (size_t)ndim);
    e->nbytes = nbytes;
    g_ptr_array_add(w->entries, e);
    g_hash_table_add(w->names, e->name);
    return DB_OK;
}

void safetensors_writer_meta(SafetensorsWriter *w, const char *key, const char *value)
{
    if (!w || !key || !value) return;
    for (guint i = 0; i < w->meta_keys->len; i++)
        if (!strcmp(g_ptr_array_index(w->meta_keys, i), key)) {
            g_free(w->meta_vals->pdata[i]);
            w->meta_vals->pdata[i] = g_strdup(value);
            return;
        }
    g_ptr_array_add(w->meta_keys, g_strdup(key));
    g_ptr_array_add(w->meta_vals, g_strdup(value));
}

/* JSON string literal, escaped as serde_json does. */
static void json_str(GString *g, const char *s)
{
    g_string_append_c(g, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': g_string_append(g, "\\\""); break;
        case '\\': g_string_append(g, "\\\\"); break;
        case '\b': g_string_append(g, "\\b"); break;
        case '\f': g_string_append(g, "\\f"); break;
        case '\n': g_string_append(g, "\\n"); break;
        case '\r': g_string_append(g, "\\r"); break;
        case '\t': g_string_append(g, "\\t"); break;
        default:
            if (*p < 0x20) g_string_append_printf(g, "\\u%04x", *p);
            else g_string_append_c(g, (char)*p);
        }
    }
    g_string_append_c(g, '"');
}

static int entry_cmp(const void *a, const void *b)
{
    const WriterEntry *x = *(WriterEntry *const *)a, *y = *(WriterEntry *const *)b;
    return strcmp(x->name, y->name);
}

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 8-byte length + padded header JSON; tensors must already be in data order. */
static GString *build_header(SafetensorsWriter *w)
{
    GString *g = g_string_new(NULL);
    g_string_append_len(g, "\0\0\0\0\0\0\0\0{", 9);
    guint nm = w->meta_keys->len;
    if (nm) {
        /* keys sorted; index order kept in a side array of pointers to pairs */
        char **pairs = g_new(char *, 2 * (gsize)nm);
        for (guint i = 0; i < nm; i++) {
            pairs[2 * i] = w->meta_keys->pdata[i];
            pairs[2 * i + 1] = w->meta_vals->pdata[i];
        }
        qsort(pairs, nm, 2 * sizeof(char *), meta_cmp);
        g_string_append(g, "\"__metadata__\":{");
        for (guint i = 0; i < nm; i++) {
            if (i) g_string_append_c(g, ',');
            json_str(g, pairs[2 * i]);
            g_string_append_c(g, ':');
            json_str(g, pairs[2 * i + 1]);
        }
        g_string_append_c(g, '}');
        g_free(pairs);
    }
    uint64_t off = 0;
    for (guint i = 0; i < w->entries->len; i++) {
        const WriterEntry *e = w->entries->pdata[i];
        if (nm || i) g_string_append_c(g, ',');
        json_str(g, e->name);
        g_string_append_printf(g, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(e->dtype));
        for (int d = 0; d < e->ndim; d++)
            g_string_append_printf(g, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        g_string_append_printf(g, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                               (unsigned long long)(off + e->nbytes));
        off += e->nbytes;
    }
    g_string_append_c(g, '}');
    while (g->len % 8) g_string_append_c(g, ' ');
    uint64_t hlen = g->len - 8;
    for (int i = 0; i < 8; i++) g->str[i] = (char)((hlen >> (8 * i)) & 0xff);
    return g;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, MIN(n, (size_t)1 << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        if (k == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0 && (e == EINVAL || e == ENOTSUP)) r = 0; /* folders that cannot be synced */
    errno = e;
    return r;
}

DbStatus safetensors_writer_save(SafetensorsWriter *w, const char *path, DbError *err)
{
    if (!w || !path) return db_fail(err, DB_ERR_ARG, "safetensors writer: no writer or path");
    for (guint i = 0; i < w->meta_keys->len; i++)
        if (!g_utf8_validate(w->meta_keys->pdata[i], -1, NULL) ||
            !g_utf8_validate(w->meta_vals->pdata[i], -1, NULL))
            return db_fail(err, DB_ERR_ARG, "%s: metadata key or value is not UTF-8", path);
    g_ptr_array_sort(w->entries, entry_cmp);
    GString *h = build_header(w);
    if (h->len - 8 > SAFETENSORS_MAX_HEADER) {
        g_string_free(h, TRUE);
        return db_fail(err, DB_ERR_ARG, "%s: header would exceed %llu bytes", path,
                       SAFETENSORS_MAX_HEADER);
    }
    char *dir = g_path_get_dirname(path), *base = g_path_get_basename(path);
    char *tmp = g_strdup_printf("%s/.%s.tmp-XXXXXX", dir, base);
    const char *stage = "cannot create a temp file";
    int fd = g_mkstemp_full(tmp, O_RDWR | O_CLOEXEC, 0666);
    int ok = fd >= 0;
    if (ok) {
        stage = "write failed";
        ok = write_all(fd, h->str, h->len) == 0;
        for (guint i = 0; ok && i < w->entries->len; i++) {
            const WriterEntry *e = w->entries->pdata[i];
            ok = write_all(fd, e->data, e->nbytes) == 0;
        }
        if (ok) {
            stage = "fsync failed";
            ok = fsync(fd) == 0;
        }
        int e = errno;
        if (close(fd) != 0 && ok) {
            stage = "close failed";
            ok = 0;
        } else {
            errno = e;
        }
        if (ok) {
            stage = "rename failed";
            ok = rename(tmp, path) == 0;
        }
        if (!ok) {
            e = errno;
            g_unlink(tmp);
            errno = e;
        }
    }
    DbStatus st = DB_OK;
    if (!ok) st = db_fail(err, DB_ERR_IO, "%s: %s: %s", path, stage, g_strerror(errno));
    else if (fsync_dir(dir) != 0)
        st = db_fail(err, DB_ERR_IO, "%s: fsync of the folder failed: %s", path, g_strerror(errno));
    g_string_free(h, TRUE);
    g_free(tmp);
    g_free(dir);
    g_free(base);
    return st;
}
