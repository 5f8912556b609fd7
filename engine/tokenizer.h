/* CLIP byte-level BPE tokenizer (openai/CLIP simple_tokenizer semantics).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_TOKENIZER_H
#define DB_TOKENIZER_H

#include "dreambooth.h"

#define CLIP_BOS 49406
#define CLIP_EOS 49407

typedef struct ClipTokenizer ClipTokenizer;

/* OpenAI's bpe_simple_vocab_16e6.txt.gz (or the same file uncompressed). */
DbStatus clip_tokenizer_load_bpe(ClipTokenizer **out, const char *path, DbError *err);
/* Hugging Face tokenizer/ files: vocab.json + merges.txt. */
DbStatus clip_tokenizer_load_hf(ClipTokenizer **out, const char *vocab_json,
                                const char *merges_txt, DbError *err);
void clip_tokenizer_free(ClipTokenizer *t);

/* Text -> BPE ids without BOS/EOS. *ids is g_malloc'ed (g_free it), *n its length.
 * Invalid UTF-8 is an error. */
DbStatus clip_tokenizer_encode(const ClipTokenizer *t, const char *text, int32_t **ids, int *n,
                               DbError *err);

/* Text -> exactly ctx ids: BOS, up to ctx-2 tokens, EOS, then pad_id.
 * *truncated (may be NULL) = number of tokens dropped. */
DbStatus clip_tokenizer_encode_padded(const ClipTokenizer *t, const char *text, int ctx,
                                      int32_t pad_id, int32_t *ids, int *truncated,
                                      DbError *err);

/* Text stages shared by tokenizer.c and tokenizer_text.c (also used by tests).
 * openai/CLIP basic_clean + whitespace_clean + lower(): an ftfy subset, NFC, html.unescape
 * twice, whitespace collapsed and stripped, Python str.lower(). Returns g_malloc'ed UTF-8, or
 * NULL with err set (DB_ERR_ARG for invalid UTF-8 or an over-long prompt). */
char *clip_text_clean(const char *text, DbError *err);
/* The pre-tokenizer regex of simple_tokenizer.py on clean text s[0..len): finds the next piece at
 * or after *pos, sets [*start, *end) and *pos = *end. Returns 0 when there is none. */
int clip_text_next_piece(const char *s, size_t len, size_t *pos, size_t *start, size_t *end);

#endif
