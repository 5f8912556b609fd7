/* safetensors reader: mmap the file, parse the JSON header with a small strict parser, and
 * validate every rule of shared/docs/reliability.md before any tensor is handed out.
 *
 * The header is parsed here rather than with json-glib because json-glib keeps the last of
 * duplicate keys silently, reads 1.0 as a double and large integers lossily: a scanner and a
 * loader could then see different tensors. The parser knows the one schema:
 *   {"NAME": {"dtype": S, "shape": [INT...], "data_offsets": [INT, INT]}, ...,
 *    "__metadata__": {S: S, ...}}
 * and rejects anything else, with duplicate keys detected at every level.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *path;
    const unsigned char *s; /* header bytes [n] */
    size_t n, pos;
    DbError *err;
} Json;

typedef struct {
    SafetensorsEntry e;
    uint64_t begin, end;
} RawEntry;

#define NAME_FMT "%.200s" /* names in messages are cut to keep the message one short line */

static void ws(Json *j)
{
    while (j->pos < j->n && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' ||
                             j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

static int peek(Json *j)
{
    ws(j);
    return j->pos < j->n ? j->s[j->pos] : -1;
}

static DbStatus syntax(Json *j, const char *what)
{
    if (j->pos >= j->n)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: header JSON ends early (%s)", j->path, what);
    return db_fail(j->err, DB_ERR_FORMAT, "%s: header JSON: %s at byte %zu", j->path, what,
                   j->pos);
}

static DbStatus expect(Json *j, int c, const char *what)
{
    if (peek(j) != c) return syntax(j, what);
    j->pos++;
    return DB_OK;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

/* A JSON string into a new NUL-terminated UTF-8 buffer. The header was validated as UTF-8
 * already; escapes are decoded, surrogates must pair, and \u0000 is refused (C strings would
 * cut the name, so two different keys could compare equal). */
static DbStatus json_string(Json *j, char **out)
{
    *out = NULL;
    if (peek(j) != '"') return syntax(j, "expected a string");
    size_t i = ++j->pos;
    GString *b = g_string_new(NULL);
    for (;;) {
        if (i >= j->n) {
            j->pos = i;
            g_string_free(b, TRUE);
            return syntax(j, "unterminated string");
        }
        unsigned char c = j->s[i];
        if (c == '"') break;
        if (c < 0x20) {
            j->pos = i;
            g_string_free(b, TRUE);
            return syntax(j, "control character inside a string");
        }
        if (c != '\\') {
            g_string_append_c(b, (char)c);
            i++;
            continue;
        }
        if (i + 1 >= j->n) {
            j->pos = i + 1;
            g_string_free(b, TRUE);
            return syntax(j, "unterminated string");
        }
        unsigned char e = j->s[i + 1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            g_string_append_c(b, map[simple - "\"\\/bfnrt"]);
            i += 2;
            continue;
        }
        unsigned u, lo;
        if (e != 'u' || i + 6 > j->n || !hex4(j->s + i + 2, &u)) {
            j->pos = i;
            g_string_free(b, TRUE);
            return syntax(j, "invalid escape in a string");
        }
        i += 6;
        if (u >= 0xdc00 && u <= 0xdfff) u = 0x110000; /* lone low surrogate: invalid */
        if (u >= 0xd800 && u <= 0xdbff) {
            if (i + 6 <= j->n && j->s[i] == '\\' && j->s[i + 1] == 'u' &&
                hex4(j->s + i + 2, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            } else {
                u = 0x110000;
            }
        }
        if (u == 0 || u >= 0x110000) {
            j->pos = i;
            g_string_free(b, TRUE);
            return syntax(j, u ? "unpaired surrogate escape in a string"
                               : "\\u0000 inside a string");
        }
        g_string_append_unichar(b, (gunichar)u);
    }
    j->pos = i + 1;
    *out = g_string_free(b, FALSE);
    return DB_OK;
}

/* A non-negative JSON integer that fits int64. ctx names the tensor and field. */
static DbStatus json_int(Json *j, int64_t *out, const char *name, const char *field)
{
    int c = peek(j);
    size_t start = j->pos;
    if (c == -1) return syntax(j, "expected a value");
    if (c != '-' && !(c >= '0' && c <= '9'))
        return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': %s must hold integers",
                       j->path, name, field);
    int neg = c == '-', frac = 0, overflow = 0;
    if (neg) j->pos++;
    if (j->pos >= j->n || j->s[j->pos] < '0' || j->s[j->pos] > '9')
        return syntax(j, "invalid number");
    if (j->s[j->pos] == '0' && j->pos + 1 < j->n && j->s[j->pos + 1] >= '0' &&
        j->s[j->pos + 1] <= '9')
        return syntax(j, "number with a leading zero");
    uint64_t v = 0;
    while (j->pos < j->n && j->s[j->pos] >= '0' && j->s[j->pos] <= '9') {
        unsigned d = j->s[j->pos++] - '0';
        if (v > ((uint64_t)INT64_MAX - d) / 10) overflow = 1;
        else v = v * 10 + d;
    }
    if (j->pos < j->n && j->s[j->pos] == '.') {
        j->pos++;
        if (j->pos >= j->n || j->s[j->pos] < '0' || j->s[j->pos] > '9')
            return syntax(j, "invalid number");
        while (j->pos < j->n && j->s[j->pos] >= '0' && j->s[j->pos] <= '9') j->pos++;
        frac = 1;
    }
    if (j->pos < j->n && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        j->pos++;
        if (j->pos < j->n && (j->s[j->pos] == '+' || j->s[j->pos] == '-')) j->pos++;
        if (j->pos >= j->n || j->s[j->pos] < '0' || j->s[j->pos] > '9')
            return syntax(j, "invalid number");
        while (j->pos < j->n && j->s[j->pos] >= '0' && j->s[j->pos] <= '9') j->pos++;
        frac = 1;
    }
    int len = (int)MIN(j->pos - start, 40);
    const char *problem = neg ? "negative" : frac ? "non-integer" : overflow ? "too large" : NULL;
    if (problem)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': %s: %s number %.*s",
                       j->path, name, field, problem, len, (const char *)j->s + start);
    *out = (int64_t)v;
    return DB_OK;
}

/* [INT, ...] with at most max values (max + 1 are read to report the excess). */
static DbStatus json_int_array(Json *j, int64_t *vals, int max, int *count, const char *name,
                               const char *field)
{
    *count = 0;
    if (peek(j) == -1) return syntax(j, "expected a value");
    if (peek(j) != '[')
        return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': %s is not an array",
                       j->path, name, field);
    j->pos++;
    if (peek(j) == ']') {
        j->pos++;
        return DB_OK;
    }
    for (;;) {
        int64_t v = 0;
        DbStatus st = json_int(j, &v, name, field);
        if (st) return st;
        if (*count == max)
            return db_fail(j->err, DB_ERR_FORMAT,
                           "%s: tensor '" NAME_FMT "': %s has more than %d values", j->path,
                           name, field, max);
        vals[(*count)++] = v;
        int c = peek(j);
        j->pos++;
        if (c == ']') return DB_OK;
        if (c != ',') {
            j->pos--;
            return syntax(j, "expected ',' or ']'");
        }
    }
}

static DbStatus parse_entry(Json *j, RawEntry *r)
{
    const char *name = r->e.name;
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    int c = peek(j);
    if (c == -1) return syntax(j, "expected a value");
    if (c != '{')
        return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': entry is not a JSON object",
                       j->path, name);
    j->pos++;
    c = peek(j);
    if (c == '}') j->pos++;
    while (c != '}') {
        char *key;
        DbStatus st = json_string(j, &key);
        if (!st) st = expect(j, ':', "expected ':'");
        if (st) {
            g_free(key);
            return st;
        }
        int *have = !strcmp(key, "dtype") ? &have_dtype : !strcmp(key, "shape") ? &have_shape
                  : !strcmp(key, "data_offsets") ? &have_offsets : NULL;
        if (!have) {
            st = db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': unknown field '%.60s'",
                         j->path, name, key);
        } else if (*have) {
            st = db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': duplicate field '%s'",
                         j->path, name, key);
        }
        g_free(key);
        if (st) return st;
        *have = 1;
        if (have == &have_dtype) {
            char *dt;
            if (peek(j) == -1) return syntax(j, "expected a value");
            if (peek(j) != '"')
                return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': dtype is not a string",
                               j->path, name);
            if ((st = json_string(j, &dt))) return st;
            int d = dtype_from_name(dt);
            if (d < 0)
                st = db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': unknown dtype '%.40s'",
                             j->path, name, dt);
            g_free(dt);
            if (st) return st;
            r->e.t.dtype = (DbDtype)d;
        } else if (have == &have_shape) {
            int64_t dims[DB_MAX_DIMS];
            if ((st = json_int_array(j, dims, DB_MAX_DIMS, &r->e.t.ndim, name, "shape")))
                return st;
            memcpy(r->e.t.shape, dims, sizeof(int64_t) * (size_t)r->e.t.ndim);
        } else {
            int64_t off[3] = {0, 0, 0};
            int n;
            if ((st = json_int_array(j, off, 2, &n, name, "data_offsets"))) return st;
            if (n != 2)
                return db_fail(j->err, DB_ERR_FORMAT,
                               "%s: tensor '" NAME_FMT "': data_offsets must hold 2 values, has %d",
                               j->path, name, n);
            r->begin = (uint64_t)off[0];
            r->end = (uint64_t)off[1];
        }
        c = peek(j);
        j->pos++;
        if (c != ',' && c != '}') {
            j->pos--;
            return syntax(j, "expected ',' or '}'");
        }
    }
    const char *missing = !have_dtype ? "dtype" : !have_shape ? "shape"
                        : !have_offsets ? "data_offsets" : NULL;
    if (missing)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': missing \"%s\"", j->path,
                       name, missing);
    return DB_OK;
}

static DbStatus parse_metadata(Json *j, SafetensorsFile *f)
{
    if (peek(j) == -1) return syntax(j, "expected a value");
    if (peek(j) != '{')
        return db_fail(j->err, DB_ERR_FORMAT, "%s: __metadata__ is not a string-to-string map",
                       j->path);
    j->pos++;
    GPtrArray *keys = g_ptr_array_new(), *vals = g_ptr_array_new();
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    DbStatus st = DB_OK;
    int c = peek(j);
    if (c == '}') j->pos++;
    while (!st && c != '}') {
        char *k = NULL, *v = NULL;
        st = json_string(j, &k);
        if (!st) st = expect(j, ':', "expected ':'");
        if (!st && peek(j) == -1) st = syntax(j, "expected a value");
        if (!st && peek(j) != '"')
            st = db_fail(j->err, DB_ERR_FORMAT,
                         "%s: __metadata__ value of '%.60s' is not a string", j->path, k);
        if (!st) st = json_string(j, &v);
        if (!st && !g_hash_table_add(seen, k))
            st = db_fail(j->err, DB_ERR_FORMAT, "%s: __metadata__ has duplicate key '%.60s'",
                         j->path, k);
        if (k) g_ptr_array_add(keys, k);
        if (v) g_ptr_array_add(vals, v);
        if (!st) {
            c = peek(j);
            j->pos++;
            if (c != ',' && c != '}') {
                j->pos--;
                st = syntax(j, "expected ',' or '}'");
            }
        }
    }
    g_hash_table_destroy(seen);
    if (keys->len > INT_MAX / 2) st = db_fail(j->err, DB_ERR_FORMAT, "%s: too many metadata keys", j->path);
    f->n_meta = (int)MIN(keys->len, vals->len);
    g_ptr_array_add(keys, NULL);
    g_ptr_array_add(vals, NULL);
    f->meta_keys = (char **)g_ptr_array_free(keys, FALSE);
    f->meta_values = (char **)g_ptr_array_free(vals, FALSE);
    return st;
}

/* Element count and byte size with checked multiplication; then the span of the offsets. */
static DbStatus check_sizes(const char *path, RawEntry *r, DbError *err)
{
    DbTensor *t = &r->e.t;
    char sh[256];
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        if ((uint64_t)t->shape[i] > SIZE_MAX || __builtin_mul_overflow(n, (size_t)t->shape[i], &n))
            return db_fail(err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': element count of shape %s overflows",
                           path, r->e.name, tensor_shape_str(t->shape, t->ndim, sh, sizeof sh));
    if (__builtin_mul_overflow(n, dtype_size(t->dtype), &t->nbytes))
        return db_fail(err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': byte size of shape %s %s overflows",
                       path, r->e.name, tensor_shape_str(t->shape, t->ndim, sh, sizeof sh),
                       dtype_name(t->dtype));
    t->nelem = n;
    if (r->begin > r->end)
        return db_fail(err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "': data_offsets begin %llu > end %llu",
                       path, r->e.name, (unsigned long long)r->begin, (unsigned long long)r->end);
    if (r->end - r->begin != (uint64_t)t->nbytes)
        return db_fail(err, DB_ERR_FORMAT,
                       "%s: tensor '" NAME_FMT "': data_offsets span %llu bytes but %s %s needs %zu",
                       path, r->e.name, (unsigned long long)(r->end - r->begin),
                       dtype_name(t->dtype), tensor_shape_str(t->shape, t->ndim, sh, sizeof sh),
                       t->nbytes);
    return DB_OK;
}

static int raw_cmp(const void *a, const void *b)
{
    const RawEntry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->e.name, y->e.name);
}

static DbStatus parse_header(Json *j, SafetensorsFile *f, GArray *raw)
{
    if (j->n == 0 || j->s[0] != '{')
        return db_fail(j->err, DB_ERR_FORMAT, "%s: header is not a JSON object (must start with '{')",
                       j->path);
    j->pos = 1;
    GHashTable *names = g_hash_table_new(g_str_hash, g_str_equal);
    int have_meta = 0;
    DbStatus st = DB_OK;
    int c = peek(j);
    if (c == '}') j->pos++;
    while (!st && c != '}') {
        char *key;
        if ((st = json_string(j, &key))) break;
        if ((st = expect(j, ':', "expected ':'"))) {
            g_free(key);
            break;
        }
        if (!strcmp(key, "__metadata__")) {
            g_free(key);
            if (have_meta++)
                st = db_fail(j->err, DB_ERR_FORMAT, "%s: duplicate \"__metadata__\"", j->path);
            else
                st = parse_metadata(j, f);
        } else {
            RawEntry r = {.e = {.name = key}};
            g_array_append_val(raw, r);
            if (!g_hash_table_add(names, key))
                st = db_fail(j->err, DB_ERR_FORMAT, "%s: duplicate tensor name '" NAME_FMT "'",
                             j->path, key);
            else if (raw->len > INT_MAX)
                st = db_fail(j->err, DB_ERR_FORMAT, "%s: too many tensors", j->path);
            else
                st = parse_entry(j, &g_array_index(raw, RawEntry, raw->len - 1));
        }
        if (!st) {
            c = peek(j);
            j->pos++;
            if (c != ',' && c != '}') {
                j->pos--;
                st = syntax(j, "expected ',' or '}'");
            }
        }
    }
    g_hash_table_destroy(names);
    if (!st && peek(j) != -1)
        st = db_fail(j->err, DB_ERR_FORMAT, "%s: header has bytes after the JSON object (byte %zu)",
                     j->path, j->pos);
    return st;
}

/* Sorted by offsets, the tensors must tile [0, data size) exactly. */
static DbStatus check_tiling(const char *path, RawEntry *r, size_t n, uint64_t data_size,
                             DbError *err)
{
    uint64_t at = 0;
    if (n) qsort(r, n, sizeof *r, raw_cmp);
    for (size_t i = 0; i < n; i++) {
        if (r[i].begin < at)
            return db_fail(err, DB_ERR_FORMAT, "%s: tensor '" NAME_FMT "' overlaps tensor '" NAME_FMT "'",
                           path, r[i].e.name, r[i - 1].e.name);
        if (r[i].begin > at)
            return db_fail(err, DB_ERR_FORMAT,
                           "%s: hole of %llu bytes in the data before tensor '" NAME_FMT "'", path,
                           (unsigned long long)(r[i].begin - at), r[i].e.name);
        at = r[i].end;
    }
    if (at > data_size)
        return db_fail(err, DB_ERR_FORMAT,
                       "%s: truncated: tensor data needs %llu bytes, the file has %llu", path,
                       (unsigned long long)at, (unsigned long long)data_size);
    if (at < data_size)
        return db_fail(err, DB_ERR_FORMAT, "%s: %llu trailing bytes after the last tensor", path,
                       (unsigned long long)(data_size - at));
    return DB_OK;
}

static DbStatus map_file(SafetensorsFile *f, const char *path, DbError *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return db_fail(err, DB_ERR_IO, "%s: %s", path, g_strerror(errno));
    struct stat sb;
    DbStatus st = DB_OK;
    if (fstat(fd, &sb) != 0)
        st = db_fail(err, DB_ERR_IO, "%s: %s", path, g_strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = db_fail(err, DB_ERR_IO, "%s: not a regular file", path);
    else if (sb.st_size < 8)
        st = db_fail(err, DB_ERR_FORMAT,
                     "%s: %lld bytes is too short for a safetensors file (needs 8 + header)",
                     path, (long long)sb.st_size);
    else if ((uint64_t)sb.st_size > SIZE_MAX)
        st = db_fail(err, DB_ERR_IO, "%s: file too large to map", path);
    if (!st) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED)
            st = db_fail(err, DB_ERR_IO, "%s: cannot map: %s", path, g_strerror(errno));
        else {
            f->map = m;
            f->map_size = (size_t)sb.st_size;
        }
    }
    close(fd);
    return st;
}

DbStatus safetensors_open(SafetensorsFile **out, const char *path, DbError *err)
{
    *out = NULL;
    SafetensorsFile *f = g_new0(SafetensorsFile, 1);
    f->path = g_strdup(path);
    DbStatus st = map_file(f, path, err);
    GArray *raw = g_array_new(FALSE, TRUE, sizeof(RawEntry));
    const unsigned char *b = f->map;
    uint64_t hlen = 0, data_start = 0;
    if (!st) {
        for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
        if (hlen > SAFETENSORS_MAX_HEADER)
            st = db_fail(err, DB_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu",
                         path, (unsigned long long)hlen, SAFETENSORS_MAX_HEADER);
        else if (__builtin_add_overflow(hlen, 8u, &data_start) || data_start > f->map_size)
            st = db_fail(err, DB_ERR_FORMAT,
                         "%s: truncated: header length %llu runs past the end of the %zu-byte file",
                         path, (unsigned long long)hlen, f->map_size);
    }
    if (!st && memchr(b + 8, 0, hlen))
        st = db_fail(err, DB_ERR_FORMAT, "%s: header contains a NUL byte", path);
    if (!st && !g_utf8_validate_len((const char *)b + 8, hlen, NULL))
        st = db_fail(err, DB_ERR_FORMAT, "%s: header is not valid UTF-8", path);
    if (!st) {
        Json j = {.path = path, .s = b + 8, .n = hlen, .err = err};
        f->data_start = data_start;
        st = parse_header(&j, f, raw);
    }
    RawEntry *r = (RawEntry *)(void *)raw->data;
    for (guint i = 0; !st && i < raw->len; i++) st = check_sizes(path, &r[i], err);
    if (!st) st = check_tiling(path, r, raw->len, f->map_size - data_start, err);
    f->n_tensors = (int)raw->len;
    f->tensors = g_new0(SafetensorsEntry, raw->len + 1);
    for (guint i = 0; i < raw->len; i++) {
        f->tensors[i] = r[i].e;
        if (!st) f->tensors[i].t.data = b + data_start + r[i].begin;
    }
    g_array_free(raw, TRUE);
    if (st) {
        safetensors_close(f);
        return st;
    }
    GHashTable *index = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < f->n_tensors; i++)
        g_hash_table_insert(index, f->tensors[i].name, &f->tensors[i]);
    f->index = index;
    *out = f;
    return DB_OK;
}

void safetensors_close(SafetensorsFile *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    if (f->index) g_hash_table_destroy(f->index);
    for (int i = 0; f->tensors && i < f->n_tensors; i++) g_free(f->tensors[i].name);
    g_free(f->tensors);
    g_strfreev(f->meta_keys);
    g_strfreev(f->meta_values);
    g_free(f->path);
    g_free(f);
}

const SafetensorsEntry *safetensors_find(const SafetensorsFile *f, const char *name)
{
    return f && f->index && name ? g_hash_table_lookup(f->index, name) : NULL;
}

const char *safetensors_meta(const SafetensorsFile *f, const char *key)
{
    for (int i = 0; f && key && i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

int safetensors_sniff(const unsigned char *head, size_t n)
{
    if (!head || n < 9) return 0;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | head[i];
    return len >= 2 && len <= SAFETENSORS_MAX_HEADER && head[8] == '{';
}
