/* Test driver: tokenizes prompts read one per line from stdin and prints 77 ids per line (or
 * "ERROR" when the tokenizer refuses the prompt), for tests/reference/tokenizer_ref.py --check.
 *
 *   tokenize_dump (--bpe FILE | --hf VOCAB_JSON MERGES_TXT) [--pad ID] [--escaped] [--truncated]
 *                 [--time]
 *
 * --escaped: lines carry \\ and \xHH escapes (so prompts may hold newlines and any byte);
 * --truncated: append " t=N", the number of tokens dropped; --time: load and encode times on
 * stderr.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "tokenizer.h"

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void unescape_line(GString *s)
{
    size_t j = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->str[i] == '\\' && i + 1 < s->len && s->str[i + 1] == '\\') {
            s->str[j++] = '\\';
            i++;
        } else if (s->str[i] == '\\' && i + 3 < s->len && s->str[i + 1] == 'x' &&
                   g_ascii_isxdigit(s->str[i + 2]) && g_ascii_isxdigit(s->str[i + 3])) {
            s->str[j++] = (char)(g_ascii_xdigit_value(s->str[i + 2]) * 16 +
                                 g_ascii_xdigit_value(s->str[i + 3]));
            i += 3;
        } else {
            s->str[j++] = s->str[i];
        }
    }
    g_string_truncate(s, j);
}

int main(int argc, char **argv)
{
    const char *bpe = NULL, *vocab = NULL, *merges = NULL;
    int32_t pad = CLIP_EOS;
    int escaped = 0, show_truncated = 0, show_time = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bpe") && i + 1 < argc) {
            bpe = argv[++i];
        } else if (!strcmp(argv[i], "--hf") && i + 2 < argc) {
            vocab = argv[++i];
            merges = argv[++i];
        } else if (!strcmp(argv[i], "--pad") && i + 1 < argc) {
            pad = (int32_t)strtol(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--escaped")) {
            escaped = 1;
        } else if (!strcmp(argv[i], "--truncated")) {
            show_truncated = 1;
        } else if (!strcmp(argv[i], "--time")) {
            show_time = 1;
        } else {
            fprintf(stderr, "usage: %s (--bpe FILE | --hf VOCAB_JSON MERGES_TXT) [--pad ID] "
                            "[--escaped] [--truncated] [--time]\n", argv[0]);
            return 2;
        }
    }
    if (!bpe && !vocab) {
        fprintf(stderr, "%s: give --bpe or --hf\n", argv[0]);
        return 2;
    }

    DbError err;
    db_error_clear(&err);
    ClipTokenizer *tok = NULL;
    gint64 t0 = g_get_monotonic_time();
    DbStatus st = bpe ? clip_tokenizer_load_bpe(&tok, bpe, &err)
                      : clip_tokenizer_load_hf(&tok, vocab, merges, &err);
    gint64 t1 = g_get_monotonic_time();
    if (st != DB_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    GString *line = g_string_new(NULL);
    GString *out = g_string_new(NULL);
    int c, prompts = 0;
    gint64 encode_us = 0;
    for (;;) {
        g_string_truncate(line, 0);
        while ((c = getchar()) != EOF && c != '\n')
            g_string_append_c(line, (char)c);
        if (c == EOF && line->len == 0)
            break;
        if (escaped)
            unescape_line(line);
        int32_t ids[DB_CONTEXT_LEN];
        int truncated = 0;
        gint64 e0 = g_get_monotonic_time();
        st = clip_tokenizer_encode_padded(tok, line->str, DB_CONTEXT_LEN, pad, ids, &truncated,
                                          &err);
        encode_us += g_get_monotonic_time() - e0;
        prompts++;
        g_string_truncate(out, 0);
        if (st != DB_OK) {
            g_string_append(out, "ERROR");
        } else {
            for (int i = 0; i < DB_CONTEXT_LEN; i++)
                g_string_append_printf(out, i ? " %d" : "%d", ids[i]);
            if (show_truncated)
                g_string_append_printf(out, " t=%d", truncated);
        }
        puts(out->str);
        if (c == EOF)
            break;
    }
    if (show_time)
        fprintf(stderr, "load %.1f ms, %d prompts encoded in %.1f ms\n", (t1 - t0) / 1e3,
                prompts, encode_us / 1e3);
    g_string_free(line, TRUE);
    g_string_free(out, TRUE);
    clip_tokenizer_free(tok);
    return 0;
}
