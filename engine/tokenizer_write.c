/* Hugging Face tokenizer/ files from OpenAI's bpe_simple_vocab_16e6.txt[.gz], as
 * transformers' CLIPTokenizer.save_pretrained writes them for the SD pipelines (the Python
 * reference: tests/reference/tokenizer_ref.py write_hf_tokenizer):
 *   vocab.json   {token: id} in id order: 256 byte symbols (openai/CLIP bytes_to_unicode
 *                order), the same with "</w>", one token per merge, <|startoftext|>,
 *                <|endoftext|>; json.dump(..., ensure_ascii=False) separators ", " and ": ".
 *   merges.txt   "#version: 0.2" then the 48,894 merges, one "a b" per line.
 *   tokenizer_config.json, special_tokens_map.json: fixed texts, pad token per family.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "init_model.h"

#include <gio/gio.h>
#include <glib.h>
#include <string.h>

#define BPE_MERGES (49152 - 256 - 2)
#define BPE_MAX_BYTES (64u << 20)

/* Whole file, gunzipped when it starts with the gzip magic. */
static DbStatus read_bpe(const char *path, GByteArray **out, DbError *err)
{
    GError *e = NULL;
    GFile *file = g_file_new_for_path(path);
    GFileInputStream *fin = g_file_read(file, NULL, &e);
    g_object_unref(file);
    if (!fin) {
        DbStatus st = db_fail(err, DB_ERR_IO, "%s: cannot open: %s", path, e->message);
        g_error_free(e);
        return st;
    }
    guint8 magic[2] = {0, 0};
    gsize got = 0;
    GInputStream *in = G_INPUT_STREAM(fin);
    if (g_input_stream_read_all(in, magic, 2, &got, NULL, &e) &&
        g_seekable_seek(G_SEEKABLE(fin), 0, G_SEEK_SET, NULL, &e) && got == 2 &&
        magic[0] == 0x1f && magic[1] == 0x8b) {
        GZlibDecompressor *z = g_zlib_decompressor_new(G_ZLIB_COMPRESSOR_FORMAT_GZIP);
        in = g_converter_input_stream_new(in, G_CONVERTER(z));
        g_object_unref(z);
        g_object_unref(fin);
    }
    GByteArray *buf = g_byte_array_new();
    DbStatus st = DB_OK;
    guint8 chunk[65536];
    while (!e) {
        gssize n = g_input_stream_read(in, chunk, sizeof chunk, NULL, &e);
        if (n <= 0) break;
        if (buf->len + (gsize)n > BPE_MAX_BYTES) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: larger than %u MiB, not a BPE vocabulary", path,
                         BPE_MAX_BYTES >> 20);
            break;
        }
        g_byte_array_append(buf, chunk, (guint)n);
    }
    if (e) {
        st = db_fail(err, DB_ERR_FORMAT, "%s: cannot read: %s", path, e->message);
        g_error_free(e);
    }
    g_object_unref(in);
    if (st != DB_OK) {
        g_byte_array_unref(buf);
        return st;
    }
    g_byte_array_append(buf, (const guint8 *)"", 1); /* NUL-terminate */
    *out = buf;
    return DB_OK;
}

/* openai/CLIP bytes_to_unicode: printable bytes map to themselves, the others to 256 + n, in
 * this order (which is also the vocabulary order). */
static void bytes_to_unicode(gunichar order[256])
{
    int k = 0, n = 0;
    int is_printable[256] = {0};
    for (int b = '!'; b <= '~'; b++) is_printable[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) is_printable[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) is_printable[b] = 1;
    for (int b = 0; b < 256; b++)
        if (is_printable[b]) order[k++] = (gunichar)b;
    for (int b = 0; b < 256; b++)
        if (!is_printable[b]) order[k++] = (gunichar)(256 + n++);
}

/* JSON string as json.dumps(ensure_ascii=False) writes it. */
static void json_token(GString *g, const char *s, size_t len)
{
    g_string_append_c(g, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            g_string_append_c(g, '\\');
            g_string_append_c(g, (char)c);
        } else if (c < 0x20) {
            g_string_append_printf(g, "\\u%04x", c);
        } else {
            g_string_append_c(g, (char)c);
        }
    }
    g_string_append_c(g, '"');
}

static void vocab_entry(GString *g, const char *tok, size_t len, int id)
{
    g_string_append(g, id ? ", " : "{");
    json_token(g, tok, len);
    g_string_append_printf(g, ": %d", id);
}

#define ADDED_TOKEN(indent, type, content)                                                     \
    "{\n" type indent "  \"content\": \"" content "\",\n" indent "  \"lstrip\": false,\n" indent \
    "  \"normalized\": true,\n" indent "  \"rstrip\": false,\n" indent                          \
    "  \"single_word\": false\n" indent "}"
#define TYPED "    \"__type\": \"AddedToken\",\n"

static const char tokenizer_config_fmt[] =
    "{\n  \"add_prefix_space\": false,\n"
    "  \"bos_token\": " ADDED_TOKEN("  ", TYPED, "<|startoftext|>") ",\n"
    "  \"do_lower_case\": true,\n"
    "  \"eos_token\": " ADDED_TOKEN("  ", TYPED, "<|endoftext|>") ",\n"
    "  \"errors\": \"replace\",\n  \"model_max_length\": 77,\n"
    "  \"name_or_path\": \"openai/clip-vit-large-patch14\",\n  \"pad_token\": \"%s\",\n"
    "  \"special_tokens_map_file\": \"./special_tokens_map.json\",\n"
    "  \"tokenizer_class\": \"CLIPTokenizer\",\n"
    "  \"unk_token\": " ADDED_TOKEN("  ", TYPED, "<|endoftext|>") "\n}";

static const char special_tokens_fmt[] =
    "{\n  \"bos_token\": " ADDED_TOKEN("  ", "", "<|startoftext|>") ",\n"
    "  \"eos_token\": " ADDED_TOKEN("  ", "", "<|endoftext|>") ",\n"
    "  \"pad_token\": \"%s\",\n"
    "  \"unk_token\": " ADDED_TOKEN("  ", "", "<|endoftext|>") "\n}";

static DbStatus write_file(const char *dir, const char *name, const char *data, gssize len,
                           DbError *err)
{
    char *path = g_build_filename(dir, name, NULL);
    GError *e = NULL;
    DbStatus st = DB_OK;
    if (!g_file_set_contents_full(path, data, len, G_FILE_SET_CONTENTS_CONSISTENT, 0666, &e)) {
        st = db_fail(err, DB_ERR_IO, "%s: %s", path, e->message);
        g_error_free(e);
    }
    g_free(path);
    return st;
}

DbStatus tokenizer_write_hf(const char *dir, const char *bpe_path, const char *pad_token,
                            DbError *err)
{
    if (strcmp(pad_token, "<|endoftext|>") && strcmp(pad_token, "!"))
        return db_fail(err, DB_ERR_ARG, "tokenizer: unsupported pad token '%s'", pad_token);
    GByteArray *raw = NULL;
    DbStatus st = read_bpe(bpe_path, &raw, err);
    if (st != DB_OK) return st;
    const char *text = (const char *)raw->data;
    if (!g_utf8_validate(text, (gssize)raw->len - 1, NULL)) {
        g_byte_array_unref(raw);
        return db_fail(err, DB_ERR_FORMAT, "%s: not UTF-8 text", bpe_path);
    }

    GString *vocab = g_string_sized_new(1u << 20), *merges = g_string_sized_new(1u << 19);
    gunichar order[256];
    bytes_to_unicode(order);
    int id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            char u[8 + 4];
            int n = g_unichar_to_utf8(order[b], u);
            if (pass) {
                memcpy(u + n, "</w>", 4);
                n += 4;
            }
            vocab_entry(vocab, u, (size_t)n, id++);
        }
    g_string_append(merges, "#version: 0.2\n");
    const char *line = strchr(text, '\n'); /* line 0 is a header */
    int n_merges = 0;
    while (line && n_merges < BPE_MERGES && st == DB_OK) {
        line++;
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *sp = memchr(line, ' ', len);
        if (!sp || sp == line || sp + 1 == line + len || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - line))) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: line %d: expected two symbols separated by one space",
                         bpe_path, n_merges + 2);
            break;
        }
        g_string_append_len(merges, line, (gssize)len);
        g_string_append_c(merges, '\n');
        GString *tok = g_string_new_len(line, sp - line);
        g_string_append_len(tok, sp + 1, (gssize)(len - (size_t)(sp + 1 - line)));
        vocab_entry(vocab, tok->str, tok->len, id++);
        g_string_free(tok, TRUE);
        n_merges++;
        line = end;
    }
    if (st == DB_OK && n_merges != BPE_MERGES)
        st = db_fail(err, DB_ERR_FORMAT, "%s: %d merges, expected %d", bpe_path, n_merges, BPE_MERGES);
    if (st == DB_OK) {
        vocab_entry(vocab, "<|startoftext|>", 15, id++);
        vocab_entry(vocab, "<|endoftext|>", 13, id++);
        g_string_append_c(vocab, '}');
        char *cfg = g_strdup_printf(tokenizer_config_fmt, pad_token);
        char *spec = g_strdup_printf(special_tokens_fmt, pad_token);
        if ((st = write_file(dir, "vocab.json", vocab->str, (gssize)vocab->len, err)) == DB_OK &&
            (st = write_file(dir, "merges.txt", merges->str, (gssize)merges->len, err)) == DB_OK &&
            (st = write_file(dir, "tokenizer_config.json", cfg, -1, err)) == DB_OK)
            st = write_file(dir, "special_tokens_map.json", spec, -1, err);
        g_free(cfg);
        g_free(spec);
    }
    g_string_free(vocab, TRUE);
    g_string_free(merges, TRUE);
    g_byte_array_unref(raw);
    return st;
}
