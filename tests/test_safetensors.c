/* safetensors reader/writer and dtype conversions. Exit status is the verdict; every failing
 * case is printed. Files are built in a fresh temp folder (g_dir_make_tmp), removed at the end.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "safetensors.h"

#include <errno.h>
#include <float.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static char *tmpdir;
static int n_cases, n_failed;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("FAIL %s:%d: ", __func__, __LINE__);                                    \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
            n_failed++;                                                                    \
        }                                                                                  \
    } while (0)

static char *tpath(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

/* Plain write. g_file_set_contents may fsync, and truncating a file with data makes ext4
 * flush it on close (auto_da_alloc): both are slow for thousands of files, so unlink first. */
static void put_file(const char *p, const void *bytes, size_t len)
{
    g_unlink(p);
    FILE *fp = fopen(p, "wb");
    if (!fp || fwrite(bytes, 1, len, fp) != len || fclose(fp) != 0) {
        printf("FAIL: cannot write %s: %s\n", p, g_strerror(errno));
        exit(1);
    }
}

static char *write_bytes(const char *name, const void *bytes, size_t len)
{
    char *p = tpath(name);
    put_file(p, bytes, len);
    return p;
}

/* 8-byte length of header, header, then datalen bytes (0, 1, 2, ...). */
static char *write_st(const char *name, const char *header, size_t hlen, size_t datalen)
{
    size_t n = 8 + hlen + datalen;
    unsigned char *b = g_malloc(n);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < datalen; i++) b[8 + hlen + i] = (unsigned char)i;
    char *p = write_bytes(name, b, n);
    g_free(b);
    return p;
}

/* Open must fail with want, *out NULL, message "PATH: ..." containing substr. */
static void expect_reject(const char *label, const char *path, DbStatus want, const char *substr)
{
    n_cases++;
    SafetensorsFile *f = (SafetensorsFile *)1;
    DbError err;
    db_error_clear(&err);
    DbStatus st = safetensors_open(&f, path, &err);
    size_t pl = strlen(path);
    int ok = st == want && f == NULL && err.status == want && !strncmp(err.msg, path, pl) &&
             !strncmp(err.msg + pl, ": ", 2) && (!substr || strstr(err.msg, substr)) &&
             !strchr(err.msg, '\n');
    CHECK(ok, "[%s] want %s with '%s', got %s: %s", label, db_status_name(want),
          substr ? substr : "", db_status_name(st), err.msg);
    if (st == DB_OK) safetensors_close(f);
}

static SafetensorsFile *expect_open(const char *label, const char *path)
{
    n_cases++;
    SafetensorsFile *f = NULL;
    DbError err;
    db_error_clear(&err);
    DbStatus st = safetensors_open(&f, path, &err);
    CHECK(st == DB_OK && f, "[%s] rejected: %s", label, err.msg);
    return st == DB_OK ? f : NULL;
}

#define T_A "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static const struct {
    const char *label, *header;
    size_t datalen;
    const char *substr;
} bad_headers[] = {
    {"not json", "nope", 0, "not a JSON object"},
    {"array", "[]", 0, "not a JSON object"},
    {"leading space", " {}", 0, "not a JSON object"},
    {"empty header", "", 0, "not a JSON object"},
    {"json ends early", "{\"a\":", 0, "ends early"},
    {"missing colon", "{\"a\" {}}", 0, "expected ':'"},
    {"bytes after object", "{} x", 0, "bytes after the JSON object"},
    {"two objects", "{}{}", 0, "bytes after the JSON object"},
    {"trailing comma", "{" T_A ",}", 8, "expected a string"},
    {"missing comma", "{" T_A " " T_A "}", 8, "expected ',' or '}'"},
    {"missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "missing \"shape\""},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing \"data_offsets\""},
    {"empty entry", "{\"a\":{}}", 0, "missing \"dtype\""},
    {"unknown field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8,
     "unknown field 'extra'"},
    {"duplicate field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     8, "duplicate field 'dtype'"},
    {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative"},
    {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "negative"},
    {"minus zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-0],\"data_offsets\":[0,0]}}", 0, "negative"},
    {"float dim 2.0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "non-integer"},
    {"float offset 8.0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8,
     "non-integer"},
    {"exponent dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]}}", 8, "non-integer"},
    {"dim beyond int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808],\"data_offsets\":[0,8]}}",
     8, "too large"},
    {"offset beyond int64", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}",
     8, "too large"},
    {"leading zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, "leading zero"},
    {"bad number", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.],\"data_offsets\":[0,8]}}", 8, "invalid number"},
    {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "not an array"},
    {"shape string", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
     "must hold integers"},
    {"shape null", "{\"a\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,8]}}", 8,
     "must hold integers"},
    {"offsets 1 value", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0]}}", 0, "must hold 2"},
    {"offsets 3 values", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
     "more than 2"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "unknown dtype 'F128'"},
    {"lowercase dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
    {"dtype number", "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype is not a string"},
    {"entry array", "{\"a\":[1]}", 0, "entry is not a JSON object"},
    {"entry true", "{\"a\":true}", 0, "entry is not a JSON object"},
    {"rank 9", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     "more than 8"},
    {"duplicate names", "{" T_A "," T_A "}", 8, "duplicate tensor name 'a'"},
    {"duplicate via escape", "{" T_A ",\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
     16, "duplicate tensor name 'a'"},
    {"duplicate __metadata__", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate \"__metadata__\""},
    {"duplicate escaped __metadata__", "{\"__metadata__\":{\"k\":\"v\"},\"__metadat\\u0061__\":{}}", 0,
     "duplicate \"__metadata__\""},
    {"metadata number", "{\"__metadata__\":{\"k\":1}}", 0, "value of 'k' is not a string"},
    {"metadata null", "{\"__metadata__\":{\"k\":null}}", 0, "is not a string"},
    {"metadata nested", "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "is not a string"},
    {"metadata array", "{\"__metadata__\":[\"k\"]}", 0, "not a string-to-string map"},
    {"metadata string", "{\"__metadata__\":\"k\"}", 0, "not a string-to-string map"},
    {"metadata duplicate key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "duplicate key 'k'"},
    {"element count overflow",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
     "element count"},
    {"byte size overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}",
     8, "byte size"},
    {"byte size overflow F64", "{\"a\":{\"dtype\":\"F64\",\"shape\":[2,1152921504606846976],\"data_offsets\":[0,8]}}",
     8, "byte size"},
    {"huge shape, small file",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,4000000000000]}}", 8, "truncated"},
    {"span mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "span 4 bytes"},
    {"begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "begin 8 > end 0"},
    {"hole at start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "hole of 4 bytes"},
    {"hole between", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20,
     "hole of 4 bytes in the data before tensor 'b'"},
    {"overlap", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
    {"same range twice", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlaps"},
    {"zero-size inside another", "{" T_A ",\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8,
     "overlaps"},
    {"zero-size past the end", "{" T_A ",\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[12,12]}}", 8,
     "hole of 4 bytes"},
    {"trailing bytes", "{" T_A "}", 12, "4 trailing bytes"},
    {"data without tensors", "{}", 3, "3 trailing bytes"},
    {"truncated data", "{" T_A "}", 6, "truncated"},
    {"invalid UTF-8", "{\"\xff\":{}}", 0, "not valid UTF-8"},
    {"overlong UTF-8", "{\"\xc0\xaf\":{}}", 0, "not valid UTF-8"},
    {"UTF-8 surrogate", "{\"\xed\xa0\x80\":{}}", 0, "not valid UTF-8"},
    {"\\u0000 in name", "{\"a\\u0000b\":{}}", 0, "\\u0000"},
    {"unpaired high surrogate", "{\"\\ud800\":{}}", 0, "unpaired surrogate"},
    {"lone low surrogate", "{\"\\udc00x\":{}}", 0, "unpaired surrogate"},
    {"control char in name", "{\"a\nb\":{}}", 0, "control character"},
    {"invalid escape", "{\"a\\x\":{}}", 0, "invalid escape"},
    {"short \\u escape", "{\"a\\u12\"}", 0, "invalid escape"},
    {"unterminated string", "{\"abc", 0, "ends early"},
};

static void test_bad_headers(void)
{
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "bad%02zu.safetensors", i);
        char *p = write_st(name, bad_headers[i].header, strlen(bad_headers[i].header),
                           bad_headers[i].datalen);
        expect_reject(bad_headers[i].label, p, DB_ERR_FORMAT, bad_headers[i].substr);
        g_free(p);
    }
    /* NUL inside the header cannot go through the table's C strings */
    char *p = write_st("nul.safetensors", "{\"a\0\":{}}", 9, 0);
    expect_reject("NUL byte in header", p, DB_ERR_FORMAT, "NUL byte");
    g_free(p);
}

static void test_bad_files(void)
{
    char *p = tpath("missing.safetensors");
    expect_reject("missing file", p, DB_ERR_IO, "No such file");
    g_free(p);
    expect_reject("directory", tmpdir, DB_ERR_IO, "not a regular file");

    p = write_bytes("empty.safetensors", "", 0);
    expect_reject("0 bytes", p, DB_ERR_FORMAT, "too short");
    g_free(p);
    p = write_bytes("seven.safetensors", "\2\0\0\0\0\0\0", 7);
    expect_reject("7 bytes", p, DB_ERR_FORMAT, "too short");
    g_free(p);

    unsigned char b[32] = {0};
    uint64_t lens[] = {SAFETENSORS_MAX_HEADER + 1, UINT64_MAX, UINT64_MAX - 7};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(lens[k] >> (8 * i));
        b[8] = '{';
        b[9] = '}';
        p = write_bytes("biglen.safetensors", b, sizeof b);
        expect_reject("header length over limit", p, DB_ERR_FORMAT, "exceeds the limit");
        g_free(p);
    }
    uint64_t past[] = {SAFETENSORS_MAX_HEADER, 25, 100};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(past[k] >> (8 * i));
        p = write_bytes("pastend.safetensors", b, sizeof b);
        expect_reject("8+N > file size", p, DB_ERR_FORMAT, "runs past the end");
        g_free(p);
    }

    /* Formats that must not be taken for safetensors, whatever the extension says. */
    static const unsigned char pickle[] = {0x80, 0x02, '}', 'q', 0, '(', 'X', 5, 0, 0, 0, 's', 't',
                                           'a', 't', 'e', 'q', 1, 'K', 1, 'u', '.'};
    static const unsigned char zip[] = {'P', 'K', 3, 4, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 'a', 'r', 'c'};
    static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
                                        'I', 'H', 'D', 'R', 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0};
    struct { const char *label, *name; const unsigned char *b; size_t n; } alien[] = {
        {"pickle", "model.safetensors", pickle, sizeof pickle},
        {"zip (torch .ckpt)", "zip.safetensors", zip, sizeof zip},
        {"PNG", "image.safetensors", png, sizeof png},
    };
    for (int k = 0; k < 3; k++) {
        p = write_bytes(alien[k].name, alien[k].b, alien[k].n);
        expect_reject(alien[k].label, p, DB_ERR_FORMAT, NULL);
        n_cases++;
        CHECK(!safetensors_sniff(alien[k].b, alien[k].n), "[%s] sniffed as safetensors", alien[k].label);
        g_free(p);
    }
}

/* A valid file cut at every length, and grown by one byte, is rejected. */
static void test_truncation(void)
{
    static const char h[] = "{\"__metadata__\":{\"format\":\"pt\"}," T_A
                            ",\"b\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[8,24]}}";
    char *p = write_st("full.safetensors", h, strlen(h), 24);
    SafetensorsFile *f = expect_open("full file", p);
    safetensors_close(f);
    gchar *bytes;
    gsize len;
    g_file_get_contents(p, &bytes, &len, NULL);
    int bad = 0;
    for (gsize cut = 0; cut < len; cut++) {
        put_file(p, bytes, cut);
        SafetensorsFile *t = NULL;
        DbError err;
        DbStatus st = safetensors_open(&t, p, &err);
        if (st != DB_ERR_FORMAT || t || strncmp(err.msg, p, strlen(p))) {
            printf("FAIL truncation at %zu of %zu: %s %s\n", (size_t)cut, (size_t)len,
                   db_status_name(st), st ? err.msg : "");
            bad++;
        }
        if (st == DB_OK) safetensors_close(t);
    }
    n_cases++;
    n_failed += bad != 0;
    bytes = g_realloc(bytes, len + 1);
    bytes[len] = 0;
    put_file(p, bytes, len + 1);
    expect_reject("one byte appended", p, DB_ERR_FORMAT, "1 trailing bytes");

    /* Single-byte mutations: each is accepted or rejected cleanly (ASan/valgrind: no crash). */
    GRand *r = g_rand_new_with_seed(1234);
    int weird = 0;
    for (int it = 0; it < 5000; it++) {
        gchar *m = g_memdup2(bytes, len);
        m[g_rand_int_range(r, 0, (gint32)len)] = (char)g_rand_int_range(r, 0, 256);
        put_file(p, m, len);
        SafetensorsFile *t = NULL;
        DbError err;
        DbStatus st = safetensors_open(&t, p, &err);
        if ((st != DB_OK && st != DB_ERR_FORMAT) || (st == DB_OK) != (t != NULL)) weird++;
        safetensors_close(t);
        g_free(m);
    }
    n_cases++;
    CHECK(weird == 0, "%d mutated files gave an unexpected status", weird);
    g_rand_free(r);
    g_free(bytes);
    g_free(p);
}

static void test_valid_edge_cases(void)
{
    SafetensorsFile *f;
    char *p = write_st("empty_obj.safetensors", "{}", 2, 0);
    if ((f = expect_open("{} and no data", p))) {
        CHECK(f->n_tensors == 0 && f->n_meta == 0, "{}: %d tensors", f->n_tensors);
        safetensors_close(f);
    }
    g_free(p);
    p = write_st("padded.safetensors", "{" T_A "}      ", strlen("{" T_A "}      "), 8);
    if ((f = expect_open("space padding", p))) {
        CHECK(f->n_tensors == 1 && f->data_start == 8 + strlen("{" T_A "}      "), "padding");
        safetensors_close(f);
    }
    g_free(p);
    p = write_st("meta_only.safetensors", "{\"__metadata__\":{}}", 19, 0);
    if ((f = expect_open("empty __metadata__", p))) safetensors_close(f);
    g_free(p);

    static const char h[] =
        "{ \"s\" : {\"shape\":[], \"dtype\":\"F32\", \"data_offsets\":[8,12]},\n"
        "  \"caf\\u00e9 \\ud83d\\ude00\\n\":{\"dtype\":\"U8\",\"shape\":[0,3],\"data_offsets\":[8,8]},\n"
        "  \"z\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[12,12]}, " T_A ",\n"
        "  \"__metadata__\":{\"k\\\"\":\"v\\\\\", \"x\":\"\"}\t}";
    p = write_st("edge.safetensors", h, strlen(h), 12);
    if ((f = expect_open("0-rank, zero-size, escapes", p))) {
        const SafetensorsEntry *s = safetensors_find(f, "s");
        const SafetensorsEntry *c = safetensors_find(f, "caf\xc3\xa9 \xf0\x9f\x98\x80\n");
        const SafetensorsEntry *a = safetensors_find(f, "a");
        n_cases++;
        CHECK(s && s->t.ndim == 0 && s->t.nelem == 1 && s->t.nbytes == 4 &&
                  s->t.data == (const char *)f->map + f->data_start + 8, "0-rank tensor");
        CHECK(c && c->t.ndim == 2 && c->t.nelem == 0 && c->t.nbytes == 0, "zero-size tensor");
        CHECK(a && a->t.dtype == DB_DTYPE_F32 && a->t.shape[0] == 2 &&
                  ((const unsigned char *)a->t.data)[1] == 1, "tensor a");
        CHECK(f->n_tensors == 4 && !strcmp(f->tensors[0].name, "a") &&
                  !strcmp(f->tensors[3].name, "z"), "entries not in offset order");
        const char *kv = safetensors_meta(f, "k\"");
        CHECK(kv && !strcmp(kv, "v\\") && safetensors_meta(f, "x") && !safetensors_meta(f, "y"),
              "metadata escapes");
        CHECK(!safetensors_find(f, "b") && !safetensors_find(f, "__metadata__"), "find absent");
        safetensors_close(f);
    }
    g_free(p);
}

static void test_many_tensors(void)
{
    enum { N = 100000 };
    GString *h = g_string_new("{");
    for (int i = N - 1; i >= 0; i--) /* reverse order: the reader sorts by offset */
        g_string_append_printf(h, "%s\"t%06d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
                               i == N - 1 ? "" : ",", i, i, i + 1);
    g_string_append_c(h, '}');
    char *p = write_st("many.safetensors", h->str, h->len, N);
    gint64 t0 = g_get_monotonic_time();
    SafetensorsFile *f = expect_open("100,000 tiny tensors", p);
    double sec = (double)(g_get_monotonic_time() - t0) / 1e6;
    if (f) {
        const SafetensorsEntry *e = safetensors_find(f, "t054321");
        CHECK(f->n_tensors == N && e && *(const unsigned char *)e->t.data == (54321 & 255) &&
                  !strcmp(f->tensors[0].name, "t000000"), "100k tensors content");
        safetensors_close(f);
    }
    printf("info: 100,000 tensors (%zu-byte header) opened in %.3f s\n", h->len, sec);
    CHECK(sec < 10.0, "100k tensors took %.1f s", sec);
    g_string_free(h, TRUE);
    g_free(p);
}

static void test_writer_roundtrip(void)
{
    SafetensorsWriter *w = safetensors_writer_new();
    DbError err;
    unsigned char buf[8 * 7 * 3];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 37 + 11);
    int64_t shape[3] = {7, 3, 1};
    for (int d = 0; d < DB_DTYPE_COUNT; d++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", dtype_name((DbDtype)d));
        CHECK(safetensors_writer_add(w, name, (DbDtype)d, 3, shape, buf, &err) == DB_OK, "%s", err.msg);
    }
    int64_t ids[5] = {49406, 320, 1125, -1, INT64_MAX};
    int64_t s5 = 5, s0 = 0;
    CHECK(!safetensors_writer_add(w, "ids", DB_DTYPE_I64, 1, &s5, ids, &err), "%s", err.msg);
    CHECK(!safetensors_writer_add(w, "scalar", DB_DTYPE_F32, 0, NULL, buf, &err), "%s", err.msg);
    CHECK(!safetensors_writer_add(w, "empty", DB_DTYPE_F16, 1, &s0, NULL, &err), "%s", err.msg);
    CHECK(!safetensors_writer_add(w, "name \"quoted\"\n\xc3\xa9", DB_DTYPE_U8, 1, &s5, buf, &err), "%s", err.msg);
    safetensors_writer_meta(w, "format", "pt");
    safetensors_writer_meta(w, "ss_note", "line1\nline2 \"q\" \\ \x01 \xe2\x82\xac");
    safetensors_writer_meta(w, "format", "pt2"); /* replaces */
    n_cases++;
    CHECK(safetensors_writer_add(w, "ids", DB_DTYPE_I32, 1, &s5, ids, &err) == DB_ERR_ARG, "duplicate add");
    int64_t neg = -1;
    CHECK(safetensors_writer_add(w, "neg", DB_DTYPE_F32, 1, &neg, buf, &err) == DB_ERR_ARG, "negative dim");
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(safetensors_writer_add(w, "r9", DB_DTYPE_F32, 9, nine, buf, &err) == DB_ERR_ARG, "rank 9");
    CHECK(safetensors_writer_add(w, "__metadata__", DB_DTYPE_F32, 0, NULL, buf, &err) == DB_ERR_ARG,
          "__metadata__ as name");
    int64_t huge[2] = {INT64_MAX, INT64_MAX};
    CHECK(safetensors_writer_add(w, "huge", DB_DTYPE_F32, 2, huge, buf, &err) == DB_ERR_ARG, "overflow");

    char *p = tpath("written.safetensors");
    n_cases++;
    CHECK(safetensors_writer_save(w, p, &err) == DB_OK, "save: %s", err.msg);
    SafetensorsFile *f = expect_open("writer output", p);
    if (f) {
        n_cases++;
        CHECK(f->data_start % 8 == 0 && ((const char *)f->map)[8] == '{', "header alignment");
        CHECK(((const char *)f->map)[f->data_start - 1] == ' ' || ((const char *)f->map)[f->data_start - 1] == '}',
              "header padding");
        CHECK(f->n_tensors == DB_DTYPE_COUNT + 4, "tensor count %d", f->n_tensors);
        for (int d = 0; d < DB_DTYPE_COUNT; d++) {
            char name[32];
            snprintf(name, sizeof name, "w.%s", dtype_name((DbDtype)d));
            const SafetensorsEntry *e = safetensors_find(f, name);
            size_t nb = 21 * dtype_size((DbDtype)d);
            CHECK(e && e->t.dtype == (DbDtype)d && e->t.ndim == 3 && e->t.shape[0] == 7 &&
                      e->t.shape[2] == 1 && e->t.nbytes == nb && !memcmp(e->t.data, buf, nb),
                  "round trip %s", name);
        }
        const SafetensorsEntry *e = safetensors_find(f, "ids");
        CHECK(e && e->t.dtype == DB_DTYPE_I64 && !memcmp(e->t.data, ids, sizeof ids), "ids");
        e = safetensors_find(f, "scalar");
        CHECK(e && e->t.ndim == 0 && !memcmp(e->t.data, buf, 4), "scalar");
        e = safetensors_find(f, "empty");
        CHECK(e && e->t.nbytes == 0 && e->t.shape[0] == 0, "empty");
        CHECK(safetensors_find(f, "name \"quoted\"\n\xc3\xa9"), "escaped name");
        const char *m1 = safetensors_meta(f, "format"), *m2 = safetensors_meta(f, "ss_note");
        CHECK(m1 && !strcmp(m1, "pt2") && m2 && !strcmp(m2, "line1\nline2 \"q\" \\ \x01 \xe2\x82\xac"),
              "metadata round trip");
        for (int i = 1; i < f->n_tensors; i++)
            CHECK(strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0, "data not in name order");
        safetensors_close(f);
    }
    safetensors_writer_free(w);

    /* An empty writer gives a valid "{}" file. */
    w = safetensors_writer_new();
    n_cases++;
    CHECK(safetensors_writer_save(w, p, &err) == DB_OK, "empty save: %s", err.msg);
    if ((f = expect_open("empty writer output", p))) {
        CHECK(f->n_tensors == 0 && f->map_size == 16, "empty writer file is %zu bytes", f->map_size);
        safetensors_close(f);
    }
    char *nodir = g_build_filename(tmpdir, "no", "such", "dir.safetensors", NULL);
    n_cases++;
    DbStatus st = safetensors_writer_save(w, nodir, &err);
    CHECK(st == DB_ERR_IO && !strncmp(err.msg, nodir, strlen(nodir)), "save into missing folder: %s",
          err.msg);
    safetensors_writer_free(w);
    g_free(nodir);
    g_free(p);
}

static int count_dir_entries(void)
{
    GDir *d = g_dir_open(tmpdir, 0, NULL);
    int n = 0;
    while (g_dir_read_name(d)) n++;
    g_dir_close(d);
    return n;
}

/* Overwrite an existing file while RLIMIT_FSIZE makes the write fail with EFBIG. */
static void test_atomic_write(void)
{
    char *p = tpath("atomic.safetensors");
    SafetensorsWriter *w = safetensors_writer_new();
    DbError err;
    float small[4] = {1, 2, 3, 4};
    int64_t s4 = 4;
    safetensors_writer_add(w, "old", DB_DTYPE_F32, 1, &s4, small, &err);
    n_cases++;
    CHECK(safetensors_writer_save(w, p, &err) == DB_OK, "first save: %s", err.msg);
    safetensors_writer_free(w);
    gchar *before;
    gsize before_len;
    g_file_get_contents(p, &before, &before_len, NULL);
    int entries = count_dir_entries();

    enum { BIG = 1 << 20 };
    float *big = g_new0(float, BIG);
    int64_t sb = BIG;
    w = safetensors_writer_new();
    safetensors_writer_add(w, "new", DB_DTYPE_F32, 1, &sb, big, &err);
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    lim = old_lim;
    lim.rlim_cur = 64 * 1024;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    int lim_ok = setrlimit(RLIMIT_FSIZE, &lim) == 0;
    DbStatus st = safetensors_writer_save(w, p, &err);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    signal(SIGXFSZ, old_handler);
    n_cases++;
    CHECK(lim_ok, "setrlimit failed: %s", g_strerror(errno));
    CHECK(st == DB_ERR_IO && !strncmp(err.msg, p, strlen(p)) && strstr(err.msg, g_strerror(EFBIG)),
          "EFBIG save: %s %s", db_status_name(st), err.msg);
    gchar *after;
    gsize after_len;
    g_file_get_contents(p, &after, &after_len, NULL);
    CHECK(after_len == before_len && !memcmp(before, after, before_len), "old file changed");
    CHECK(count_dir_entries() == entries, "temp file left behind");
    printf("info: EFBIG save gave: %s\n", err.msg);

    /* Without the limit the same writer replaces the file. */
    n_cases++;
    CHECK(safetensors_writer_save(w, p, &err) == DB_OK, "save: %s", err.msg);
    SafetensorsFile *f = expect_open("replaced file", p);
    if (f) {
        CHECK(safetensors_find(f, "new") && !safetensors_find(f, "old"), "file not replaced");
        safetensors_close(f);
    }
    CHECK(count_dir_entries() == entries, "temp file left behind after success");
    safetensors_writer_free(w);
    g_free(big);
    g_free(before);
    g_free(after);
    g_free(p);
}

/* Independent reference for f16 -> f32. */
static float f16_ref(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                       : ldexpf((float)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_f16(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        float r = f16_ref((uint16_t)h);
        int nan = ((h >> 10) & 31) == 31 && (h & 1023);
        if (nan) {
            uint32_t want = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 1023u) << 13);
            if (bits(f) != want || (f32_to_f16(f) & 0x7fff) != ((h | 0x200) & 0x7fff)) bad++;
        } else if (bits(f) != bits(r) || f32_to_f16(f) != h) {
            if (bad++ < 5) printf("f16 0x%04x: got %g want %g back 0x%04x\n", h, f, r, f32_to_f16(f));
        }
    }
    /* Rounding at every boundary between neighbouring f16 values, both signs. */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        for (int s = 0; s < 2; s++) {
            uint16_t sg = s ? 0x8000 : 0;
            double a = f16_ref((uint16_t)h), b = h == 0x7bff ? 65536.0 : f16_ref((uint16_t)(h + 1));
            float mid = (float)((a + b) / 2); /* exact: one bit more than f16 */
            if (s) mid = -mid;
            uint16_t even = (uint16_t)(((h & 1) ? h + 1 : h) | sg);
            float below = nextafterf(mid, 0), above = nextafterf(mid, s ? -INFINITY : INFINITY);
            if (f32_to_f16(mid) != even || f32_to_f16(below) != (h | sg) ||
                f32_to_f16(above) != ((h + 1) | sg)) {
                if (bad++ < 10)
                    printf("f16 rounding near 0x%04x: mid->0x%04x below->0x%04x above->0x%04x\n",
                           h | sg, f32_to_f16(mid), f32_to_f16(below), f32_to_f16(above));
            }
        }
    }
    n_cases++;
    CHECK(bad == 0, "%d f16 conversion errors", bad);
    n_cases++;
    CHECK(f32_to_f16(INFINITY) == 0x7c00 && f32_to_f16(-INFINITY) == 0xfc00, "f16 inf");
    CHECK(f32_to_f16(FLT_MAX) == 0x7c00 && f32_to_f16(-FLT_MAX) == 0xfc00, "f16 overflow");
    CHECK(f32_to_f16(65519.99f) == 0x7bff && f32_to_f16(65520.0f) == 0x7c00, "f16 max boundary");
    CHECK(f32_to_f16(-0.0f) == 0x8000 && f32_to_f16(1e-30f) == 0 && f32_to_f16(-1e-30f) == 0x8000,
          "f16 zero/underflow");
    CHECK(f32_to_f16(ldexpf(1, -25)) == 0 && f32_to_f16(nextafterf(ldexpf(1, -25), 1)) == 1 &&
              f32_to_f16(ldexpf(3, -25)) == 2, "f16 subnormal ties");
    CHECK(f32_to_f16(from_bits(0x7f800001u)) == 0x7e00 && f32_to_f16(from_bits(0xffffffffu)) == 0xffff &&
              f32_to_f16(NAN) != 0x7c00 && (f32_to_f16(NAN) & 0x7fff) > 0x7c00,
          "f16 NaN stays NaN: 0x%04x", f32_to_f16(from_bits(0x7f800001u)));
    CHECK(f32_to_f16(1.0f) == 0x3c00 && f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00 &&
              f32_to_f16(1.0f + ldexpf(3, -11)) == 0x3c02, "f16 ties to even at 1");
}

static void test_bf16(void)
{
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float f = bf16_to_f32((uint16_t)b);
        int nan = (b & 0x7fff) > 0x7f80;
        if (bits(f) != b << 16) bad++;
        else if (!nan && f32_to_bf16(f) != b) bad++;
        else if (nan && (f32_to_bf16(f) != (b | 0x40))) bad++;
        if (nan || (b & 0x7fff) >= 0x7f80) continue;
        uint32_t mid = (b << 16) + 0x8000u, even = (b & 1) ? b + 1 : b;
        if (f32_to_bf16(from_bits(mid)) != even || f32_to_bf16(from_bits(mid - 1)) != b ||
            f32_to_bf16(from_bits(mid + 1)) != b + 1)
            bad++;
    }
    n_cases++;
    CHECK(bad == 0, "%d bf16 conversion errors", bad);
    CHECK(f32_to_bf16(from_bits(0x7f800001u)) == 0x7fc0 && f32_to_bf16(from_bits(0x7fffffffu)) == 0x7fff &&
              f32_to_bf16(from_bits(0xff800001u)) == 0xffc0, "bf16 NaN must not become inf");
    CHECK(f32_to_bf16(FLT_MAX) == 0x7f80 && f32_to_bf16(INFINITY) == 0x7f80 && f32_to_bf16(-0.0f) == 0x8000,
          "bf16 inf/overflow/zero");
}

static void test_dtype_misc(void)
{
    n_cases++;
    for (int d = 0; d < DB_DTYPE_COUNT; d++)
        CHECK(dtype_from_name(dtype_name((DbDtype)d)) == d, "dtype name %d", d);
    CHECK(dtype_from_name("F128") == -1 && dtype_from_name("") == -1 && dtype_from_name(NULL) == -1,
          "unknown dtype names");
    static const size_t sizes[DB_DTYPE_COUNT] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    int nfloat = 0;
    for (int d = 0; d < DB_DTYPE_COUNT; d++) {
        CHECK(dtype_size((DbDtype)d) == sizes[d], "size of %s", dtype_name((DbDtype)d));
        nfloat += dtype_is_float_weight((DbDtype)d);
    }
    CHECK(nfloat == 3 && dtype_is_float_weight(DB_DTYPE_BF16) && !dtype_is_float_weight(DB_DTYPE_F64),
          "float weight dtypes");

    /* Large arrays take the OpenMP path and must agree with the scalar functions. */
    enum { N = 1 << 20 };
    float *src = g_new(float, N), *back = g_new(float, N);
    uint16_t *h = g_new(uint16_t, N);
    GRand *r = g_rand_new_with_seed(7);
    for (int i = 0; i < N; i++) src[i] = from_bits(g_rand_int(r));
    int bad = 0;
    DbDtype dts[2] = {DB_DTYPE_F16, DB_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        dtype_from_f32(h, dts[k], src, N);
        dtype_to_f32(back, h, dts[k], N);
        for (int i = 0; i < N; i++) {
            uint16_t want = k ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
            float wb = k ? bf16_to_f32(want) : f16_to_f32(want);
            if (h[i] != want || bits(back[i]) != bits(wb)) bad++;
        }
    }
    dtype_from_f32(back, DB_DTYPE_F32, src, N);
    bad += memcmp(back, src, sizeof(float) * N) != 0;
    n_cases++;
    CHECK(bad == 0, "%d bulk conversion mismatches", bad);

    /* Every 8-bit float value survives a round trip; fixed points of the formats. */
    bad = 0;
    for (int v = 0; v < 256; v++) {
        for (int k = 0; k < 2; k++) {
            DbDtype dt = k ? DB_DTYPE_F8_E4M3 : DB_DTYPE_F8_E5M2;
            unsigned char in = (unsigned char)v, out;
            float f;
            dtype_to_f32(&f, &in, dt, 1);
            dtype_from_f32(&out, dt, &f, 1);
            if (!isnan(f) && out != in) bad++;
            if (isnan(f) && !isnan((dtype_to_f32(&f, &out, dt, 1), f))) bad++;
        }
    }
    unsigned char e4[4] = {0x7e, 0x7f, 0x08, 0x01}, e5[2] = {0x7b, 0x7c};
    float f4[4], f5[2], big = 464.0f, big2 = 465.0f;
    dtype_to_f32(f4, e4, DB_DTYPE_F8_E4M3, 4);
    dtype_to_f32(f5, e5, DB_DTYPE_F8_E5M2, 2);
    unsigned char o1, o2;
    dtype_from_f32(&o1, DB_DTYPE_F8_E4M3, &big, 1);
    dtype_from_f32(&o2, DB_DTYPE_F8_E4M3, &big2, 1);
    n_cases++;
    CHECK(bad == 0 && f4[0] == 448.0f && isnan(f4[1]) && f4[2] == ldexpf(1, -6) && f4[3] == ldexpf(1, -9) &&
              f5[0] == 57344.0f && isinf(f5[1]) && o1 == 0x7e && o2 == 0x7f,
          "f8 formats (%d round-trip errors)", bad);

    float iv[5] = {2.5f, 3.5f, -2.5f, NAN, 1e30f};
    int64_t o64[5];
    int32_t o32[5];
    uint8_t o8[5];
    dtype_from_f32(o64, DB_DTYPE_I64, iv, 5);
    dtype_from_f32(o32, DB_DTYPE_I32, iv, 5);
    dtype_from_f32(o8, DB_DTYPE_U8, iv, 5);
    float back5[5];
    int64_t idv[2] = {49407, -3};
    dtype_to_f32(back5, idv, DB_DTYPE_I64, 2);
    n_cases++;
    CHECK(o64[0] == 2 && o64[1] == 4 && o64[2] == -2 && o64[3] == 0 && o64[4] > (INT64_MAX / 2) &&
              o32[4] == INT32_MAX && o8[2] == 0 && o8[4] == 255 && back5[0] == 49407.0f &&
              back5[1] == -3.0f, "integer conversions");

    char buf[64], tiny[6];
    int64_t s[4] = {320, 4, 3, 3};
    n_cases++;
    CHECK(!strcmp(tensor_shape_str(s, 4, buf, sizeof buf), "[320, 4, 3, 3]"), "shape str %s", buf);
    CHECK(!strcmp(tensor_shape_str(s, 0, buf, sizeof buf), "[]"), "shape str 0-rank");
    tensor_shape_str(s, 4, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 5, "shape str truncation: '%s'", tiny);

    unsigned char head[16] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    n_cases++;
    CHECK(safetensors_sniff(head, 10) && !safetensors_sniff(head, 8), "sniff");
    head[8] = '[';
    CHECK(!safetensors_sniff(head, 10), "sniff non-object");
    g_rand_free(r);
    g_free(src);
    g_free(back);
    g_free(h);
}

static void remove_tmpdir(void)
{
    GDir *d = g_dir_open(tmpdir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d))) {
        char *p = tpath(n);
        g_unlink(p);
        g_free(p);
    }
    if (d) g_dir_close(d);
    g_rmdir(tmpdir);
}

int main(void)
{
    GError *ge = NULL;
    tmpdir = g_dir_make_tmp("test_safetensors-XXXXXX", &ge);
    if (!tmpdir) {
        printf("FAIL: cannot make a temp folder: %s\n", ge->message);
        return 1;
    }
    test_dtype_misc();
    test_f16();
    test_bf16();
    test_bad_headers();
    test_bad_files();
    test_truncation();
    test_valid_edge_cases();
    test_many_tensors();
    test_writer_roundtrip();
    test_atomic_write();
    remove_tmpdir();
    g_free(tmpdir);
    printf("%s: %d cases, %d failures\n", n_failed ? "FAIL" : "PASS", n_cases, n_failed);
    return n_failed ? 1 : 0;
}
