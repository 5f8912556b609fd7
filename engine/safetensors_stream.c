/* safetensors streaming writer: the header comes from declarations made up front, the data is
 * appended piece by piece, so a file of any size is written with a small buffer. Saved
 * atomically like safetensors_write.c: a temp file in the target's folder, fsync'd when
 * complete, renamed over the target, the folder fsync'd; any failure removes the temp file.
 *
 * Layout as the reference writer makes it: compact header JSON with "__metadata__" first (keys
 * sorted), tensors in declaration order with contiguous data_offsets, header padded with
 * spaces so the data starts at a multiple of 8 bytes.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STREAM_BUF (1u << 20)

struct SafetensorsStream {
    GString *entries;     /* "name":{...} JSON of the declared tensors, comma-separated */
    GHashTable *names;    /* declared names (owned) */
    GHashTable *meta;     /* key -> value (owned) */
    uint64_t total;       /* data bytes declared */
    uint64_t written;     /* data bytes written */
    char *path, *tmp, *dir;
    int fd;               /* -1 before begin and after finish */
    unsigned char *buf;   /* STREAM_BUF bytes */
    size_t buf_len;
};

SafetensorsStream *safetensors_stream_new(void)
{
    SafetensorsStream *s = g_new0(SafetensorsStream, 1);
    s->entries = g_string_new(NULL);
    s->names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    s->meta = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    s->fd = -1;
    return s;
}

void safetensors_stream_free(SafetensorsStream *s)
{
    if (!s) return;
    if (s->fd >= 0) {
        close(s->fd);
        g_unlink(s->tmp);
    }
    g_string_free(s->entries, TRUE);
    g_hash_table_destroy(s->names);
    g_hash_table_destroy(s->meta);
    g_free(s->path);
    g_free(s->tmp);
    g_free(s->dir);
    g_free(s->buf);
    g_free(s);
}

/* JSON string literal, escaped as serde_json does. */
static void json_str(GString *g, const char *s)
{
    g_string_append_c(g, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': g_string_append(g, "\\\""); break;
        case '\\': g_string_append(g, "\\\\"); break;
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

DbStatus safetensors_stream_declare(SafetensorsStream *s, const char *name, DbDtype dtype,
                                    int ndim, const int64_t *shape, DbError *err)
{
    if (!s || !name || !g_utf8_validate(name, -1, NULL))
        return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor name missing or not UTF-8");
    if (s->fd >= 0 || s->path)
        return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor '%.200s' declared after begin", name);
    if (!strcmp(name, "__metadata__"))
        return db_fail(err, DB_ERR_ARG, "safetensors stream: '__metadata__' is not a tensor name");
    if ((unsigned)dtype >= DB_DTYPE_COUNT)
        return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor '%.200s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > DB_MAX_DIMS || (ndim > 0 && !shape))
        return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor '%.200s': rank %d not in 0..%d",
                       name, ndim, DB_MAX_DIMS);
    if (g_hash_table_contains(s->names, name))
        return db_fail(err, DB_ERR_ARG, "safetensors stream: duplicate tensor name '%.200s'", name);
    uint64_t n = 1, nbytes, end;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor '%.200s': invalid or overflowing shape", name);
    if (__builtin_mul_overflow(n, (uint64_t)dtype_size(dtype), &nbytes) ||
        __builtin_add_overflow(s->total, nbytes, &end))
        return db_fail(err, DB_ERR_ARG, "safetensors stream: tensor '%.200s': byte size overflows", name);
    GString *g = s->entries;
    if (g->len) g_string_append_c(g, ',');
    json_str(g, name);
    g_string_append_printf(g, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(dtype));
    for (int d = 0; d < ndim; d++) g_string_append_printf(g, "%s%lld", d ? "," : "", (long long)shape[d]);
    g_string_append_printf(g, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)s->total,
                           (unsigned long long)end);
    s->total = end;
    g_hash_table_add(s->names, g_strdup(name));
    return DB_OK;
}

void safetensors_stream_meta(SafetensorsStream *s, const char *key, const char *value)
{
    if (s && key && value) g_hash_table_insert(s->meta, g_strdup(key), g_strdup(value));
}

uint64_t safetensors_stream_data_size(const SafetensorsStream *s) { return s ? s->total : 0; }

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static GString *build_header(SafetensorsStream *s)
{
    GString *g = g_string_new(NULL);
    g_string_append_len(g, "\0\0\0\0\0\0\0\0{", 9);
    guint nm = 0;
    char **keys = (char **)g_hash_table_get_keys_as_array(s->meta, &nm);
    if (nm) {
        qsort(keys, nm, sizeof *keys, str_cmp);
        g_string_append(g, "\"__metadata__\":{");
        for (guint i = 0; i < nm; i++) {
            if (i) g_string_append_c(g, ',');
            json_str(g, keys[i]);
            g_string_append_c(g, ':');
            json_str(g, g_hash_table_lookup(s->meta, keys[i]));
        }
        g_string_append_c(g, '}');
        if (s->entries->len) g_string_append_c(g, ',');
    }
    g_free(keys);
    g_string_append_len(g, s->entries->str, (gssize)s->entries->len);
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

/* Closes and removes the temp file after a failure; returns the error. */
static DbStatus stream_fail(SafetensorsStream *s, DbError *err, const char *stage, int e)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
        g_unlink(s->tmp);
    }
    return db_fail(err, DB_ERR_IO, "%s: %s: %s", s->path, stage, g_strerror(e));
}

DbStatus safetensors_stream_begin(SafetensorsStream *s, const char *path, DbError *err)
{
    if (!s || !path) return db_fail(err, DB_ERR_ARG, "safetensors stream: no stream or path");
    if (s->path) return db_fail(err, DB_ERR_ARG, "%s: safetensors stream already begun", path);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, s->meta);
    while (g_hash_table_iter_next(&it, &k, &v))
        if (!g_utf8_validate(k, -1, NULL) || !g_utf8_validate(v, -1, NULL))
            return db_fail(err, DB_ERR_ARG, "%s: metadata key or value is not UTF-8", path);
    GString *h = build_header(s);
    if (h->len - 8 > SAFETENSORS_MAX_HEADER) {
        g_string_free(h, TRUE);
        return db_fail(err, DB_ERR_ARG, "%s: header would exceed %llu bytes", path, SAFETENSORS_MAX_HEADER);
    }
    s->path = g_strdup(path);
    s->dir = g_path_get_dirname(path);
    char *base = g_path_get_basename(path);
    s->tmp = g_strdup_printf("%s/.%s.tmp-XXXXXX", s->dir, base);
    g_free(base);
    s->fd = g_mkstemp_full(s->tmp, O_RDWR | O_CLOEXEC, 0666);
    if (s->fd < 0) {
        int e = errno;
        g_string_free(h, TRUE);
        return db_fail(err, DB_ERR_IO, "%s: cannot create a temp file: %s", path, g_strerror(e));
    }
    int ok = write_all(s->fd, h->str, h->len) == 0;
    int e = errno;
    g_string_free(h, TRUE);
    if (!ok) return stream_fail(s, err, "write failed", e);
    s->buf = g_malloc(STREAM_BUF);
    return DB_OK;
}

DbStatus safetensors_stream_write(SafetensorsStream *s, const void *data, size_t nbytes,
                                  DbError *err)
{
    if (!s || s->fd < 0) return db_fail(err, DB_ERR_ARG, "safetensors stream: write before begin or after an error");
    if (nbytes > s->total - s->written)
        return db_fail(err, DB_ERR_ARG, "%s: %llu data bytes written, more than the %llu declared", s->path,
                       (unsigned long long)s->written + nbytes, (unsigned long long)s->total);
    const unsigned char *p = data;
    s->written += nbytes;
    while (nbytes) {
        if (s->buf_len == 0 && nbytes >= STREAM_BUF) { /* large piece: straight through */
            if (write_all(s->fd, p, nbytes) != 0) return stream_fail(s, err, "write failed", errno);
            break;
        }
        size_t k = MIN(nbytes, STREAM_BUF - s->buf_len);
        memcpy(s->buf + s->buf_len, p, k);
        s->buf_len += k;
        p += k;
        nbytes -= k;
        if (s->buf_len == STREAM_BUF) {
            if (write_all(s->fd, s->buf, s->buf_len) != 0) return stream_fail(s, err, "write failed", errno);
            s->buf_len = 0;
        }
    }
    return DB_OK;
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

DbStatus safetensors_stream_finish(SafetensorsStream *s, DbError *err)
{
    if (!s || s->fd < 0) return db_fail(err, DB_ERR_ARG, "safetensors stream: finish before begin or after an error");
    if (s->written != s->total) {
        DbStatus st = db_fail(err, DB_ERR_ARG, "%s: %llu of %llu declared data bytes written", s->path,
                              (unsigned long long)s->written, (unsigned long long)s->total);
        close(s->fd);
        s->fd = -1;
        g_unlink(s->tmp);
        return st;
    }
    if (s->buf_len && write_all(s->fd, s->buf, s->buf_len) != 0) return stream_fail(s, err, "write failed", errno);
    s->buf_len = 0;
    if (fsync(s->fd) != 0) return stream_fail(s, err, "fsync failed", errno);
    int r = close(s->fd);
    s->fd = -1;
    if (r != 0 || rename(s->tmp, s->path) != 0) {
        int e = errno;
        g_unlink(s->tmp);
        return db_fail(err, DB_ERR_IO, "%s: %s: %s", s->path, r ? "close failed" : "rename failed", g_strerror(e));
    }
    if (fsync_dir(s->dir) != 0)
        return db_fail(err, DB_ERR_IO, "%s: fsync of the folder failed: %s", s->path, g_strerror(errno));
    return DB_OK;
}
