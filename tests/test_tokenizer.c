/* CLIP tokenizer: fixed ids (from tests/reference/tokenizer_ref.py, the port of openai/CLIP
 * simple_tokenizer.py) with both loaders, padding and truncation, invalid UTF-8, and malformed
 * tokenizer files that must be refused with one-line messages naming the file.
 *
 *   test_tokenizer BPE_GZ     (OpenAI's bpe_simple_vocab_16e6.txt.gz; missing = failure)
 *
 * The Hugging Face vocab.json + merges.txt pair is written here from the .gz (a writer
 * independent of the loader), with the malformed variants, in a temporary folder.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "tokenizer.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            failures++;                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                              \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
        }                                                                                     \
    } while (0)

#define N_MERGES (49152 - 256 - 2)
#define MAX_IDS 16

typedef struct {
    const char *name;
    const char *text;
    int n;
    int32_t ids[MAX_IDS];
} Case;

/* expected ids: tokenizer_ref.py (Tokenizer.from_bpe(...).encode(text)) */
static const Case cases[] = {
    {"simple", "a photo of sks dog", 5, {320, 1125, 539, 48136, 1929}},
    {"punctuation", "Hello, World!!! (really?) -- yes...", 10,
     {3306, 267, 1002, 995, 263, 1414, 9626, 2432, 1958, 678}},
    {"digits", "1024 x 768, 3.14", 13,
     {272, 271, 273, 275, 343, 278, 277, 279, 267, 274, 269, 272, 275}},
    {"apostrophes", "it's the dog's bowl, they're here", 10,
     {585, 568, 518, 1929, 568, 3814, 267, 889, 982, 763}},
    {"accents", "caf\xc3\xa9 na\xc3\xafve", 4, {15304, 1097, 35689, 563}},
    {"accents decomposed (NFC)", "cafe\xcc\x81 nai\xcc\x88ve", 4, {15304, 1097, 35689, 563}},
    {"chinese", "\xe4\xb8\x80\xe5\x8f\xaa\xe7\x8b\x97", 7,
     {19759, 222, 34517, 103, 163, 233, 501}},
    {"cyrillic", "\xd1\x81\xd0\xbe\xd0\xb1\xd0\xb0\xd0\xba\xd0\xb0", 6,
     {23669, 20978, 109, 16912, 27152, 27080}},
    {"japanese", "\xe7\x8a\xac\xe3\x81\xa8\xe7\x8c\xab", 7,
     {163, 232, 105, 34671, 163, 234, 360}},
    {"arabic", "\xd9\x83\xd9\x84\xd8\xa8", 3, {33499, 14251, 35330}},
    {"emoji", "\xf0\x9f\x90\xb6\xf0\x9f\x8e\x89", 2, {14466, 3986}},
    {"html entities",
     "Tom &amp; Jerry &lt;3 &#39;x&#39; &quot;q&quot; &nbsp;a &#x41; &amp;amp;", 14,
     {2435, 261, 9164, 283, 274, 262, 343, 262, 257, 336, 257, 320, 320, 261}},
    {"whitespace", "  a \t photo\n\nof   sks\r\ndog  ", 5, {320, 1125, 539, 48136, 1929}},
    {"uppercase", "A PHOTO OF SKS DOG", 5, {320, 1125, 539, 48136, 1929}},
    {"empty", "", 0, {0}},
    {"special tokens", "<|startoftext|>dog<|endoftext|>", 3, {49406, 1929, 49407}},
    {"curly quotes (ftfy)", "dog\xe2\x80\x99s \xe2\x80\x9c" "best\xe2\x80\x9d", 5,
     {1929, 568, 257, 949, 257}},
};

static void check_cases(const ClipTokenizer *t, const char *loader)
{
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        DbError err;
        int32_t *ids = NULL;
        int n = -1;
        DbStatus st = clip_tokenizer_encode(t, cases[c].text, &ids, &n, &err);
        CHECK(st == DB_OK, "%s: %s: %s", loader, cases[c].name, err.msg);
        if (st != DB_OK)
            continue;
        int same = n == cases[c].n;
        for (int i = 0; same && i < n; i++)
            same = ids[i] == cases[c].ids[i];
        CHECK(same, "%s: %s: got %d ids, first %d", loader, cases[c].name, n, n ? ids[0] : -1);
        g_free(ids);
    }
}

static void check_padding(const ClipTokenizer *t, const char *loader)
{
    DbError err;
    int32_t ids[DB_CONTEXT_LEN];
    int truncated = -1;
    static const int32_t photo[5] = {320, 1125, 539, 48136, 1929};

    /* SD1 pads with <|endoftext|>, SD2 with id 0 ("!") */
    for (int k = 0; k < 2; k++) {
        int32_t pad = k ? 0 : CLIP_EOS;
        DbStatus st = clip_tokenizer_encode_padded(t, "a photo of sks dog", DB_CONTEXT_LEN, pad,
                                                   ids, &truncated, &err);
        CHECK(st == DB_OK && truncated == 0, "%s: padded: %s", loader, err.msg);
        int ok = ids[0] == CLIP_BOS && ids[6] == CLIP_EOS;
        for (int i = 0; i < 5; i++)
            ok &= ids[1 + i] == photo[i];
        for (int i = 7; i < DB_CONTEXT_LEN; i++)
            ok &= ids[i] == pad;
        CHECK(ok, "%s: padded ids (pad %d)", loader, pad);
    }

    DbStatus st = clip_tokenizer_encode_padded(t, "", DB_CONTEXT_LEN, 0, ids, &truncated, &err);
    CHECK(st == DB_OK && truncated == 0 && ids[0] == CLIP_BOS && ids[1] == CLIP_EOS &&
              ids[2] == 0 && ids[76] == 0, "%s: empty prompt padded", loader);

    /* 100 tokens: BOS + 75 + EOS, 25 dropped (tokenizer_ref.py) */
    GString *longp = g_string_new(NULL);
    for (int i = 0; i < 20; i++)
        g_string_append(longp, "a photo of sks dog ");
    int32_t *all = NULL;
    int n = 0;
    st = clip_tokenizer_encode(t, longp->str, &all, &n, &err);
    CHECK(st == DB_OK && n == 100, "%s: long prompt: %d tokens", loader, n);
    g_free(all);
    st = clip_tokenizer_encode_padded(t, longp->str, DB_CONTEXT_LEN, CLIP_EOS, ids, &truncated,
                                      &err);
    int ok = st == DB_OK && truncated == 25 && ids[0] == CLIP_BOS && ids[76] == CLIP_EOS;
    for (int i = 0; ok && i < 75; i++)
        ok = ids[1 + i] == photo[i % 5];
    CHECK(ok, "%s: truncation (truncated %d)", loader, truncated);
    g_string_free(longp, TRUE);

    st = clip_tokenizer_encode_padded(t, "dog", 1, 0, ids, NULL, &err);
    CHECK(st == DB_ERR_ARG, "%s: context 1 accepted", loader);

    /* invalid UTF-8 */
    static const char *const bad[] = {"bad \xff utf8", "\xc3\x28", "cut \xe2\x82",
                                      "\xed\xa0\x80 surrogate", "overlong \xc0\xaf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        db_error_clear(&err);
        st = clip_tokenizer_encode_padded(t, bad[i], DB_CONTEXT_LEN, 0, ids, NULL, &err);
        CHECK(st == DB_ERR_ARG && strcmp(err.msg, "prompt is not valid UTF-8") == 0,
              "%s: invalid UTF-8 #%zu: status %d, \"%s\"", loader, i, st, err.msg);
    }
}

/* ---- fixtures -------------------------------------------------------------------------------- */

static char *gunzip_file(const char *path, gsize *len)
{
    GFile *f = g_file_new_for_path(path);
    GFileInputStream *fin = g_file_read(f, NULL, NULL);
    g_object_unref(f);
    if (!fin)
        return NULL;
    GZlibDecompressor *z = g_zlib_decompressor_new(G_ZLIB_COMPRESSOR_FORMAT_GZIP);
    GInputStream *in = g_converter_input_stream_new(G_INPUT_STREAM(fin), G_CONVERTER(z));
    GOutputStream *mem = g_memory_output_stream_new_resizable();
    gssize n = g_output_stream_splice(mem, in, G_OUTPUT_STREAM_SPLICE_CLOSE_TARGET, NULL, NULL);
    char *data = n < 0 ? NULL : g_memory_output_stream_steal_data(G_MEMORY_OUTPUT_STREAM(mem));
    *len = n < 0 ? 0 : (gsize)n;
    g_object_unref(mem);
    g_object_unref(in);
    g_object_unref(z);
    g_object_unref(fin);
    return data;
}

/* vocab.json and merges.txt as transformers' CLIPTokenizer files hold them */
static int write_hf(const char *dir, char **lines, const char *vocab_path, const char *merges_path)
{
    int printable[256], order[256], k = 0, extra = 0;
    gunichar cp[256];
    for (int b = 0; b < 256; b++) {
        printable[b] = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        if (printable[b]) {
            order[k++] = b;
            cp[b] = (gunichar)b;
        }
    }
    for (int b = 0; b < 256; b++)
        if (!printable[b]) {
            order[k++] = b;
            cp[b] = (gunichar)(256 + extra++);
        }
    JsonBuilder *jb = json_builder_new();
    json_builder_begin_object(jb);
    int id = 0;
    char sym[16];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            int n = g_unichar_to_utf8(cp[order[i]], sym);
            strcpy(sym + n, pass ? "</w>" : "");
            json_builder_set_member_name(jb, sym);
            json_builder_add_int_value(jb, id++);
        }
    GString *merges = g_string_new("#version: 0.2\n");
    for (int r = 1; r <= N_MERGES; r++) {
        char **f = g_strsplit(lines[r], " ", 3);
        char *joined = g_strconcat(f[0], f[1], NULL);
        json_builder_set_member_name(jb, joined);
        json_builder_add_int_value(jb, id++);
        g_string_append_printf(merges, "%s\n", lines[r]);
        g_free(joined);
        g_strfreev(f);
    }
    json_builder_set_member_name(jb, "<|startoftext|>");
    json_builder_add_int_value(jb, id++);
    json_builder_set_member_name(jb, "<|endoftext|>");
    json_builder_add_int_value(jb, id++);
    json_builder_end_object(jb);
    JsonGenerator *gen = json_generator_new();
    JsonNode *root = json_builder_get_root(jb);
    json_generator_set_root(gen, root);
    int ok = json_generator_to_file(gen, vocab_path, NULL) &&
             g_file_set_contents(merges_path, merges->str, (gssize)merges->len, NULL);
    json_node_unref(root);
    g_object_unref(gen);
    g_object_unref(jb);
    g_string_free(merges, TRUE);
    (void)dir;
    return ok;
}

static char *fixture(const char *dir, const char *name, const char *data, gssize len)
{
    char *path = g_build_filename(dir, name, NULL);
    if (data && !g_file_set_contents(path, data, len, NULL))
        fprintf(stderr, "cannot write %s\n", path);
    return path;
}

/* A loader must refuse: status st, one line that names the file. */
static void expect_bpe_fail(const char *path, DbStatus st, const char *what)
{
    ClipTokenizer *t = NULL;
    DbError err;
    db_error_clear(&err);
    DbStatus got = clip_tokenizer_load_bpe(&t, path, &err);
    CHECK(got == st && !t && strstr(err.msg, path) && !strchr(err.msg, '\n'),
          "bpe %s: status %d (want %d), \"%s\"", what, got, st, err.msg);
    clip_tokenizer_free(t);
}

static void expect_hf_fail(const char *vocab, const char *merges, const char *named, DbStatus st,
                           const char *what)
{
    ClipTokenizer *t = NULL;
    DbError err;
    db_error_clear(&err);
    DbStatus got = clip_tokenizer_load_hf(&t, vocab, merges, &err);
    CHECK(got == st && !t && strstr(err.msg, named) && !strchr(err.msg, '\n'),
          "hf %s: status %d (want %d), \"%s\"", what, got, st, err.msg);
    clip_tokenizer_free(t);
}

static void check_malformed(const char *dir, const char *gz, const char *vocab, const char *merges,
                            char **lines)
{
    char *missing = fixture(dir, "missing.txt.gz", NULL, 0);
    expect_bpe_fail(missing, DB_ERR_IO, "missing file");
    expect_bpe_fail(dir, DB_ERR_IO, "a folder");
    expect_hf_fail(missing, merges, missing, DB_ERR_IO, "missing vocab.json");
    expect_hf_fail(vocab, missing, missing, DB_ERR_IO, "missing merges.txt");

    char *empty = fixture(dir, "empty.txt", "", 0);
    expect_bpe_fail(empty, DB_ERR_FORMAT, "empty file");
    expect_hf_fail(empty, merges, empty, DB_ERR_FORMAT, "empty vocab.json");
    expect_hf_fail(vocab, empty, empty, DB_ERR_FORMAT, "empty merges.txt");

    char garbage[4096];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (char)((i * 2654435761u) >> 13);
    char *junk = fixture(dir, "junk.bin", garbage, sizeof garbage);
    expect_bpe_fail(junk, DB_ERR_FORMAT, "garbage");
    expect_hf_fail(junk, merges, junk, DB_ERR_FORMAT, "garbage vocab.json");
    expect_hf_fail(vocab, junk, junk, DB_ERR_FORMAT, "garbage merges.txt");

    gchar *gzdata = NULL;
    gsize gzlen = 0;
    if (g_file_get_contents(gz, &gzdata, &gzlen, NULL) && gzlen > 200000) {
        char *cut = fixture(dir, "cut.txt.gz", gzdata, 100000);
        expect_bpe_fail(cut, DB_ERR_FORMAT, "truncated gzip");
        for (gsize i = 20000; i < 40000; i++)
            gzdata[i] = (char)(gzdata[i] ^ 0x5a);
        char *corrupt = fixture(dir, "corrupt.txt.gz", gzdata, (gssize)gzlen);
        expect_bpe_fail(corrupt, DB_ERR_FORMAT, "corrupt gzip");
        char *gzhead = fixture(dir, "gzhead.txt.gz", gzdata, 2);
        expect_bpe_fail(gzhead, DB_ERR_FORMAT, "gzip magic only");
        g_free(cut);
        g_free(corrupt);
        g_free(gzhead);
    } else {
        CHECK(0, "cannot read %s", gz);
    }
    g_free(gzdata);

    /* short merges, a bad merge line, a merge of unknown symbols */
    GString *s = g_string_new(NULL);
    for (int i = 0; i <= 100; i++)
        g_string_append_printf(s, "%s\n", lines[i]);
    char *shortf = fixture(dir, "short.txt", s->str, (gssize)s->len);
    expect_bpe_fail(shortf, DB_ERR_FORMAT, "100 merges");
    g_string_truncate(s, 0);
    for (int i = 0; i <= N_MERGES; i++)
        g_string_append_printf(s, "%s%s\n", lines[i], i == 500 ? " x" : "");
    char *three = fixture(dir, "three.txt", s->str, (gssize)s->len);
    expect_bpe_fail(three, DB_ERR_FORMAT, "three fields");
    g_string_truncate(s, 0);
    g_string_append(s, "#version: 0.2\n");
    for (int i = 1; i <= N_MERGES; i++)
        g_string_append_printf(s, "%s\n", i == 700 ? "qq\xc3\xa9zz\xc3\xa9 x" : lines[i]);
    char *unknown = fixture(dir, "unknown_merges.txt", s->str, (gssize)s->len);
    expect_bpe_fail(unknown, DB_ERR_FORMAT, "unknown symbol");
    expect_hf_fail(vocab, unknown, unknown, DB_ERR_FORMAT, "unknown symbol");
    g_string_truncate(s, 0);
    for (int i = 1; i <= N_MERGES; i++)
        g_string_append_printf(s, "%s\n", lines[i]);
    char *noheader = fixture(dir, "noheader.txt", s->str, (gssize)s->len);
    expect_hf_fail(vocab, noheader, noheader, DB_ERR_FORMAT, "no #version header");
    expect_hf_fail(vocab, vocab, vocab, DB_ERR_FORMAT, "vocab.json as merges.txt");
    expect_hf_fail(merges, merges, merges, DB_ERR_FORMAT, "merges.txt as vocab.json");

    /* vocab.json variants */
    static const char *const bad_json[] = {
        "[1, 2, 3]", "{\"a\": \"1\"}", "{\"a\": 1.5}", "{\"a\": -1}", "{\"a\": 99999999999}",
        "{\"a\": 1, \"b\": 1}", "{\"a\": 1", "{\"a\": 1}", "\"just a string\"", "null"};
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        char *v = fixture(dir, "bad_vocab.json", bad_json[i], -1);
        expect_hf_fail(v, merges, v, DB_ERR_FORMAT, bad_json[i]);
        g_free(v);
    }
    g_string_free(s, TRUE);
    g_free(missing);
    g_free(empty);
    g_free(junk);
    g_free(shortf);
    g_free(three);
    g_free(unknown);
    g_free(noheader);
}

static void rm_tree(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        char *p = g_build_filename(dir, name, NULL);
        g_remove(p);
        g_free(p);
    }
    if (d)
        g_dir_close(d);
    g_rmdir(dir);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s bpe_simple_vocab_16e6.txt.gz\n", argv[0]);
        return 2;
    }
    const char *gz = argv[1];
    gsize len = 0;
    char *text = gunzip_file(gz, &len);
    if (!text) {
        fprintf(stderr, "FAIL: cannot read the fixture %s\n", gz);
        return 1;
    }
    char **lines = g_strsplit(text, "\n", N_MERGES + 2);
    g_free(text);
    if (g_strv_length(lines) < N_MERGES + 1) {
        fprintf(stderr, "FAIL: %s is not the CLIP merges file\n", gz);
        return 1;
    }
    char *dir = g_dir_make_tmp("test_tokenizer_XXXXXX", NULL);
    char *vocab = g_build_filename(dir, "vocab.json", NULL);
    char *merges = g_build_filename(dir, "merges.txt", NULL);
    char *plain = g_build_filename(dir, "bpe_simple_vocab_16e6.txt", NULL);
    GString *plain_text = g_string_new(NULL);
    for (int i = 0; i <= N_MERGES; i++)
        g_string_append_printf(plain_text, "%s\n", lines[i]);
    if (!write_hf(dir, lines, vocab, merges) ||
        !g_file_set_contents(plain, plain_text->str, (gssize)plain_text->len, NULL)) {
        fprintf(stderr, "FAIL: cannot write fixtures in %s\n", dir);
        return 1;
    }
    g_string_free(plain_text, TRUE);

    DbError err;
    ClipTokenizer *t_gz = NULL, *t_plain = NULL, *t_hf = NULL;
    gint64 t0 = g_get_monotonic_time();
    DbStatus st = clip_tokenizer_load_bpe(&t_gz, gz, &err);
    gint64 t1 = g_get_monotonic_time();
    CHECK(st == DB_OK, "load %s: %s", gz, err.msg);
    st = clip_tokenizer_load_bpe(&t_plain, plain, &err);
    CHECK(st == DB_OK, "load uncompressed: %s", err.msg);
    gint64 t2 = g_get_monotonic_time();
    st = clip_tokenizer_load_hf(&t_hf, vocab, merges, &err);
    gint64 t3 = g_get_monotonic_time();
    CHECK(st == DB_OK, "load hf: %s", err.msg);
    printf("load: bpe .gz %.1f ms, vocab.json + merges.txt %.1f ms\n", (t1 - t0) / 1e3,
           (t3 - t2) / 1e3);

    const ClipTokenizer *all[3] = {t_gz, t_plain, t_hf};
    const char *names[3] = {"bpe .gz", "bpe .txt", "hf"};
    for (int i = 0; i < 3; i++)
        if (all[i]) {
            check_cases(all[i], names[i]);
            check_padding(all[i], names[i]);
        }

    if (t_gz) { /* speed: 1000 prompts after load */
        int32_t ids[DB_CONTEXT_LEN];
        gint64 e0 = g_get_monotonic_time();
        for (int i = 0; i < 1000; i++) {
            char prompt[128];
            snprintf(prompt, sizeof prompt, "a photo of sks dog number %d on a %s beach", i,
                     i % 2 ? "sunny" : "snowy");
            clip_tokenizer_encode_padded(t_gz, prompt, DB_CONTEXT_LEN, CLIP_EOS, ids, NULL, &err);
        }
        double ms = (g_get_monotonic_time() - e0) / 1e3;
        printf("encode: 1000 prompts in %.1f ms\n", ms);
        CHECK(ms < 1000.0, "1000 prompts took %.1f ms", ms);
    }

    check_malformed(dir, gz, vocab, merges, lines);

    clip_tokenizer_free(t_gz);
    clip_tokenizer_free(t_plain);
    clip_tokenizer_free(t_hf);
    rm_tree(dir);
    g_free(vocab);
    g_free(merges);
    g_free(plain);
    g_free(dir);
    g_strfreev(lines);
    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    else
        printf("all tokenizer checks passed\n");
    return failures ? 1 : 0;
}
