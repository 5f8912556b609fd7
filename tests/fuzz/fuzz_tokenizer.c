/* libFuzzer target: the CLIP tokenizer. The first byte picks what the rest is:
 *   0-159  a prompt, encoded with the real vocabulary (loaded once) into 77 ids; the ids must
 *          be BOS, the unpadded encoding cut to 75, EOS, padding, all in the vocabulary;
 *   160-191 a prompt and a context length (next byte), padding 0;
 *   192-215 vocab.json + merges.txt (2-byte little-endian length of vocab.json, then both);
 *   216-239 an OpenAI bpe file (plain or gzip);
 *   240-255 a patch of the real vocab.json or merges.txt (written once from the real
 *          vocabulary): 1 byte file choice, 4 bytes offset, 2 bytes bytes removed, then the
 *          bytes inserted: loading must reject it or give a working tokenizer.
 * The vocabulary: $DB_FUZZ_BPE, else the build's ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz_util.h"
#include "init_model.h"
#include "tokenizer.h"

#include <glib.h>
#include <glib/gstdio.h>

#ifndef FUZZ_BPE
#define FUZZ_BPE "../shared/data/clip/bpe_simple_vocab_16e6.txt.gz"
#endif
#define CTX 77
#define VOCAB_SIZE 49408

static ClipTokenizer *real;
static char *real_files[2]; /* vocab.json, merges.txt texts */
static size_t real_len[2];

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_tokenizer: invariant broken: %s\n", what);
        abort();
    }
}

static void die(const char *what, const DbError *err)
{
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, err->msg);
    exit(2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *bpe = getenv("DB_FUZZ_BPE");
    DbError err = {0};
    if (!bpe || !bpe[0]) bpe = FUZZ_BPE;
    if (clip_tokenizer_load_bpe(&real, bpe, &err)) die("loading the vocabulary", &err);
    char *dir = g_build_filename(fuzz_tmpdir(), "hf", NULL);
    g_mkdir(dir, 0700);
    if (tokenizer_write_hf(dir, bpe, "<|endoftext|>", &err)) die("writing vocab.json", &err);
    static const char *const names[2] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        char *p = g_build_filename(dir, names[i], NULL);
        gsize n = 0;
        if (!g_file_get_contents(p, &real_files[i], &n, NULL)) {
            fprintf(stderr, "fuzz_tokenizer: cannot read %s\n", p);
            exit(2);
        }
        real_len[i] = n;
        g_free(p);
    }
    g_free(dir);
    return 0;
}

static void encode_prompt(const char *text, int ctx, int32_t pad)
{
    int32_t ids[256];
    int truncated = -1, n = 0;
    int32_t *tok = NULL;
    DbError err = {0};
    DbStatus st = clip_tokenizer_encode_padded(real, text, ctx, pad, ids, &truncated, &err);
    fuzz_check_error(st, err.msg);
    DbStatus st2 = clip_tokenizer_encode(real, text, &tok, &n, &err);
    check((st == DB_OK) == (st2 == DB_OK) || ctx < 2, "padded and unpadded agree on errors");
    if (st == DB_OK) {
        int keep = n < ctx - 2 ? n : ctx - 2;
        check(truncated == n - keep, "truncated count");
        check(ids[0] == CLIP_BOS && ids[keep + 1] == CLIP_EOS, "BOS/EOS");
        for (int i = 0; i < keep; i++) check(ids[i + 1] == tok[i], "ids match the unpadded encoding");
        for (int i = keep + 2; i < ctx; i++) check(ids[i] == pad, "padding");
    }
    for (int i = 0; st2 == DB_OK && i < n; i++) check(tok[i] >= 0 && tok[i] < VOCAB_SIZE, "id range");
    g_free(tok);
}

/* A loaded tokenizer must encode a few prompts without trouble. */
static void use(ClipTokenizer *t)
{
    static const char *const prompts[] = {"a photo of sks dog", "", "<|endoftext|> x y\xc3\xa9 123",
                                          "!!!  ...  aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof prompts / sizeof *prompts; i++) {
        int32_t ids[CTX];
        DbError err = {0};
        DbStatus st = clip_tokenizer_encode_padded(t, prompts[i], CTX, 0, ids, NULL, &err);
        fuzz_check_error(st, err.msg);
    }
}

static void load_hf(const uint8_t *vocab, size_t nv, const uint8_t *merges, size_t nm)
{
    const char *v = fuzz_write(0, "vocab.json", vocab, nv);
    const char *m = fuzz_write(1, "merges.txt", merges, nm);
    ClipTokenizer *t = NULL;
    DbError err = {0};
    DbStatus st = clip_tokenizer_load_hf(&t, v, m, &err);
    fuzz_check_error(st, err.msg);
    check((st == DB_OK) == (t != NULL), "status and tokenizer agree");
    if (t) use(t);
    clip_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned mode = data[0];
    data++;
    size--;
    if (mode < 160 || (mode < 192 && size < 1)) {
        char *s = fuzz_strdup(data, size);
        encode_prompt(s, CTX, CLIP_EOS);
        free(s);
    } else if (mode < 192) {
        char *s = fuzz_strdup(data + 1, size - 1);
        encode_prompt(s, data[0] % 80, 0);
        free(s);
    } else if (mode < 216) {
        size_t nv = size >= 2 ? (size_t)(data[0] | data[1] << 8) : 0;
        size_t off = size >= 2 ? 2 : size;
        if (nv > size - off) nv = size - off;
        load_hf(data + off, nv, data + off + nv, size - off - nv);
    } else if (mode < 240) {
        const char *p = fuzz_write(0, "bpe.txt", data, size);
        ClipTokenizer *t = NULL;
        DbError err = {0};
        DbStatus st = clip_tokenizer_load_bpe(&t, p, &err);
        fuzz_check_error(st, err.msg);
        if (t) use(t);
        clip_tokenizer_free(t);
    } else if (size >= 7) {
        int which = data[0] & 1;
        size_t off = (size_t)(data[1] | data[2] << 8 | data[3] << 16 | (uint32_t)data[4] << 24) %
                     (real_len[which] + 1);
        size_t del = (size_t)(data[5] | data[6] << 8);
        if (del > real_len[which] - off) del = real_len[which] - off;
        size_t ins = size - 7, n = real_len[which] - del + ins;
        uint8_t *buf = malloc(n + 1);
        if (!buf) abort();
        memcpy(buf, real_files[which], off);
        memcpy(buf + off, data + 7, ins);
        memcpy(buf + off + ins, real_files[which] + off + del, real_len[which] - off - del);
        if (which == 0) load_hf(buf, n, (const uint8_t *)real_files[1], real_len[1]);
        else load_hf((const uint8_t *)real_files[0], real_len[0], buf, n);
        free(buf);
    }
    return 0;
}
