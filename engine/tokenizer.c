/* CLIP byte-level BPE tokenizer: loading (OpenAI's bpe_simple_vocab_16e6.txt[.gz], Hugging Face
 * vocab.json + merges.txt) and encoding with openai/CLIP simple_tokenizer.py semantics. Text
 * normalisation and the pre-tokenizer are in tokenizer_text.c.
 *
 * Symbols are vocabulary ids throughout: a word starts as one id per UTF-8 byte (the byte's
 * bytes_to_unicode character; the last one with "</w>"), and each merge (a, b) of rank r turns
 * the pair of ids (id(a), id(b)) into id(a b). Since every symbol string has exactly one id
 * (checked for vocab.json), this is the reference's string BPE.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "tokenizer.h"

#include <gio/gio.h>
#include <json-glib/json-glib.h>
#include <limits.h>
#include <string.h>

#define CLIP_NUM_MERGES (49152 - 256 - 2) /* simple_tokenizer.py: merges[1:49152-256-2+1] */
#define CLIP_MAX_FILE_BYTES ((gsize)64 << 20)
#define CLIP_MAX_ID (1 << 24)

struct ClipTokenizer {
    int32_t byte_id[256];     /* symbol of byte b inside a word */
    int32_t byte_end_id[256]; /* symbol of byte b + "</w>", the last of a word */
    int32_t bos, eos;         /* <|startoftext|>, <|endoftext|> */
    int32_t *pair_first;      /* [CLIP_NUM_MERGES] */
    int32_t *pair_second;     /* [CLIP_NUM_MERGES] */
    int32_t *merged;          /* [CLIP_NUM_MERGES] id of first+second */
    uint64_t *pair_keys;      /* [CLIP_NUM_MERGES] first << 32 | second */
    GHashTable *ranks;        /* &pair_keys[r] -> GINT_TO_POINTER(r + 1); a repeated pair keeps
                                 its last rank, as dict(zip(merges, range(n))) does */
};

/* bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes (in
 * ascending order) to U+0100.. ; the vocabulary lists the printable ones first. */
static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

/* order[k] = the byte whose symbol is vocabulary entry k; cp[b] = its character */
static void bytes_to_unicode(uint8_t order[256], gunichar cp[256])
{
    int k = 0, n = 0;
    for (int b = 0; b < 256; b++)
        if (byte_is_printable(b)) {
            order[k++] = (uint8_t)b;
            cp[b] = (gunichar)b;
        }
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b)) {
            order[k++] = (uint8_t)b;
            cp[b] = (gunichar)(256 + n++);
        }
}

void clip_tokenizer_free(ClipTokenizer *t)
{
    if (!t)
        return;
    if (t->ranks)
        g_hash_table_destroy(t->ranks);
    g_free(t->pair_first);
    g_free(t->pair_second);
    g_free(t->merged);
    g_free(t->pair_keys);
    g_free(t);
}

/* g_int64_hash is x ^ y for these keys: few distinct values, long chains. splitmix64's mixer. */
static guint pair_hash(gconstpointer key)
{
    uint64_t z = *(const uint64_t *)key + 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (guint)(z ^ (z >> 31));
}

/* ---- reading ------------------------------------------------------------------------------- */

static DbStatus gio_fail(DbError *err, const char *path, const char *what, GError *e)
{
    DbStatus st = DB_ERR_IO;
    if (e->domain == G_IO_ERROR &&
        (e->code == G_IO_ERROR_INVALID_DATA || e->code == G_IO_ERROR_PARTIAL_INPUT))
        st = DB_ERR_FORMAT;
    db_fail(err, st, "%s: %s: %s", path, what, e->message);
    g_error_free(e);
    return st;
}

/* Reads path (gunzipped when it starts with the gzip magic) until it holds need_lines newlines,
 * the end, or CLIP_MAX_FILE_BYTES. *out is NUL-terminated, g_free it. need_lines 0 = all. */
static DbStatus read_text(const char *path, size_t need_lines, char **out, size_t *len,
                          DbError *err)
{
    GError *e = NULL;
    GFile *file = g_file_new_for_path(path);
    GFileInputStream *fin = g_file_read(file, NULL, &e);
    g_object_unref(file);
    if (!fin)
        return gio_fail(err, path, "cannot open", e);

    guint8 magic[2] = {0, 0};
    gsize got = 0;
    GInputStream *in = G_INPUT_STREAM(fin);
    if (!g_input_stream_read_all(in, magic, 2, &got, NULL, &e) ||
        !g_seekable_seek(G_SEEKABLE(fin), 0, G_SEEK_SET, NULL, &e)) {
        g_object_unref(fin);
        return gio_fail(err, path, "cannot read", e);
    }
    if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
        GZlibDecompressor *z = g_zlib_decompressor_new(G_ZLIB_COMPRESSOR_FORMAT_GZIP);
        in = g_converter_input_stream_new(in, G_CONVERTER(z));
        g_object_unref(z);
        g_object_unref(fin);
    }

    GByteArray *buf = g_byte_array_new();
    size_t lines = 0;
    DbStatus st = DB_OK;
    guint8 chunk[65536];
    for (;;) {
        gssize n = g_input_stream_read(in, chunk, sizeof chunk, NULL, &e);
        if (n < 0) {
            st = gio_fail(err, path, got == 2 && magic[0] == 0x1f ? "bad gzip data" : "cannot read",
                          e);
            break;
        }
        if (n == 0)
            break;
        if (buf->len + (gsize)n > CLIP_MAX_FILE_BYTES) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: larger than %zu MiB, not a tokenizer file",
                         path, (size_t)(CLIP_MAX_FILE_BYTES >> 20));
            break;
        }
        for (gssize i = 0; i < n; i++)
            lines += chunk[i] == '\n';
        g_byte_array_append(buf, chunk, (guint)n);
        if (need_lines && lines >= need_lines)
            break;
    }
    g_object_unref(in);
    if (st != DB_OK) {
        g_byte_array_free(buf, TRUE);
        return st;
    }
    *len = buf->len;
    g_byte_array_append(buf, (const guint8 *)"", 1);
    *out = (char *)g_byte_array_free(buf, FALSE);
    if (memchr(*out, '\0', *len)) {
        g_free(*out);
        *out = NULL;
        return db_fail(err, DB_ERR_FORMAT, "%s: binary data (NUL byte), not a tokenizer file",
                       path);
    }
    return DB_OK;
}

/* Splits the text of merge lines (from *p, NUL-terminated) into CLIP_NUM_MERGES pairs of fields,
 * NUL-terminating them in place. first_line is the line number of *p, for messages. */
static DbStatus split_merges(char *p, int first_line, char **a, char **b, const char *path,
                             DbError *err)
{
    static const char ws[] = " \t\r\v\f";
    for (int i = 0; i < CLIP_NUM_MERGES; i++) {
        if (!*p)
            return db_fail(err, DB_ERR_FORMAT, "%s: only %d merges, expected %d", path, i,
                           CLIP_NUM_MERGES);
        char *eol = strchr(p, '\n');
        char *next = eol ? eol + 1 : p + strlen(p);
        if (eol)
            *eol = '\0';
        char *f[3] = {NULL, NULL, NULL};
        int nf = 0;
        for (char *q = p; *q && nf < 3;) {
            q += strspn(q, ws);
            if (!*q)
                break;
            f[nf++] = q;
            q += strcspn(q, ws);
            if (*q)
                *q++ = '\0';
        }
        if (nf != 2)
            return db_fail(err, DB_ERR_FORMAT, "%s: line %d: a merge is two symbols", path,
                           first_line + i + 1);
        a[i] = f[0];
        b[i] = f[1];
        p = next;
    }
    return DB_OK;
}

/* ---- building ------------------------------------------------------------------------------ */

static int32_t vocab_get(GHashTable *vocab, const char *s)
{
    gpointer v = g_hash_table_lookup(vocab, s);
    return v ? GPOINTER_TO_INT(v) - 1 : -1;
}

/* Fills byte ids, specials and the merge table from vocab (string -> id + 1); messages name
 * vocab_path or merges_path. */
static DbStatus build(ClipTokenizer *t, GHashTable *vocab, char **a, char **b,
                      const char *vocab_path, const char *merges_path, DbError *err)
{
    uint8_t order[256];
    gunichar cp[256];
    char sym[16];
    bytes_to_unicode(order, cp);
    for (int byte = 0; byte < 256; byte++) {
        int n = g_unichar_to_utf8(cp[byte], sym);
        sym[n] = '\0';
        t->byte_id[byte] = vocab_get(vocab, sym);
        strcpy(sym + n, "</w>");
        t->byte_end_id[byte] = vocab_get(vocab, sym);
        if (t->byte_id[byte] < 0 || t->byte_end_id[byte] < 0)
            return db_fail(err, DB_ERR_FORMAT, "%s: the vocabulary lacks the symbol of byte 0x%02x",
                           vocab_path, byte);
    }
    t->bos = vocab_get(vocab, "<|startoftext|>");
    t->eos = vocab_get(vocab, "<|endoftext|>");
    if (t->bos < 0 || t->eos < 0)
        return db_fail(err, DB_ERR_FORMAT,
                       "%s: the vocabulary lacks <|startoftext|> or <|endoftext|>", vocab_path);

    t->pair_first = g_new(int32_t, CLIP_NUM_MERGES);
    t->pair_second = g_new(int32_t, CLIP_NUM_MERGES);
    t->merged = g_new(int32_t, CLIP_NUM_MERGES);
    t->pair_keys = g_new(uint64_t, CLIP_NUM_MERGES);
    t->ranks = g_hash_table_new(pair_hash, g_int64_equal);
    GString *join = g_string_new(NULL);
    DbStatus st = DB_OK;
    for (int r = 0; r < CLIP_NUM_MERGES && st == DB_OK; r++) {
        g_string_assign(join, a[r]);
        g_string_append(join, b[r]);
        int32_t x = vocab_get(vocab, a[r]), y = vocab_get(vocab, b[r]);
        int32_t m = vocab_get(vocab, join->str);
        if (x < 0 || y < 0 || m < 0) {
            st = db_fail(err, DB_ERR_FORMAT,
                         "%s: merge %d (\"%s %s\") uses a symbol not in the vocabulary",
                         merges_path, r + 1, a[r], b[r]);
            break;
        }
        t->pair_first[r] = x;
        t->pair_second[r] = y;
        t->merged[r] = m;
        t->pair_keys[r] = (uint64_t)(uint32_t)x << 32 | (uint32_t)y;
        g_hash_table_insert(t->ranks, &t->pair_keys[r], GINT_TO_POINTER(r + 1));
    }
    g_string_free(join, TRUE);
    return st;
}

DbStatus clip_tokenizer_load_bpe(ClipTokenizer **out, const char *path, DbError *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    DbStatus st = read_text(path, CLIP_NUM_MERGES + 1, &text, &len, err);
    if (st != DB_OK)
        return st;
    char *nl = strchr(text, '\n'); /* line 0 is a header */
    /* the lines used must be UTF-8 (the reference decodes the whole file) */
    const char *end = text;
    for (int i = 0; i <= CLIP_NUM_MERGES && *end; i++) {
        const char *e = strchr(end, '\n');
        end = e ? e + 1 : end + strlen(end);
    }
    if (!g_utf8_validate(text, end - text, NULL)) {
        g_free(text);
        return db_fail(err, DB_ERR_FORMAT, "%s: not UTF-8 text", path);
    }
    if (!nl) {
        g_free(text);
        return db_fail(err, DB_ERR_FORMAT, "%s: only %d merges, expected %d", path, 0,
                       CLIP_NUM_MERGES);
    }
    char **a = g_new(char *, CLIP_NUM_MERGES), **b = g_new(char *, CLIP_NUM_MERGES);
    st = split_merges(nl + 1, 1, a, b, path, err);

    /* vocab = 256 byte symbols, the same with </w>, the merges joined, then the two specials;
     * encoder = dict(zip(vocab, range)): a repeated string keeps its last id */
    GStringChunk *strings = g_string_chunk_new(1 << 20);
    GHashTable *vocab = g_hash_table_new(g_str_hash, g_str_equal);
    if (st == DB_OK) {
        uint8_t order[256];
        gunichar cp[256];
        char sym[16];
        int id = 0;
        bytes_to_unicode(order, cp);
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < 256; k++) {
                int n = g_unichar_to_utf8(cp[order[k]], sym);
                strcpy(sym + n, pass ? "</w>" : "");
                g_hash_table_insert(vocab, g_string_chunk_insert(strings, sym),
                                    GINT_TO_POINTER(++id));
            }
        GString *join = g_string_new(NULL);
        for (int r = 0; r < CLIP_NUM_MERGES; r++) {
            g_string_assign(join, a[r]);
            g_string_append(join, b[r]);
            g_hash_table_insert(vocab, g_string_chunk_insert(strings, join->str),
                                GINT_TO_POINTER(++id));
        }
        g_string_free(join, TRUE);
        g_hash_table_insert(vocab, "<|startoftext|>", GINT_TO_POINTER(++id));
        g_hash_table_insert(vocab, "<|endoftext|>", GINT_TO_POINTER(++id));

        ClipTokenizer *t = g_new0(ClipTokenizer, 1);
        st = build(t, vocab, a, b, path, path, err);
        if (st == DB_OK)
            *out = t;
        else
            clip_tokenizer_free(t);
    }
    g_hash_table_destroy(vocab);
    g_string_chunk_free(strings);
    g_free(a);
    g_free(b);
    g_free(text);
    return st;
}

/* vocab.json: {"symbol": id, ...} into vocab (keys copied into strings). */
static DbStatus parse_vocab_json(const char *path, GHashTable *vocab, GStringChunk *strings,
                                 DbError *err)
{
    char *text = NULL;
    size_t len = 0;
    DbStatus st = read_text(path, 0, &text, &len, err);
    if (st != DB_OK)
        return st;
    /* json-glib recurses per nesting level: deep nesting would overflow the stack (found by
     * tests/fuzz); vocab.json is one flat object */
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len && st == DB_OK; i++) {
        char c = text[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if ((c == '[' || c == '{') && ++depth > 64) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: not JSON: nested deeper than 64 levels", path);
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    if (st != DB_OK) {
        g_free(text);
        return st;
    }
    GError *e = NULL;
    JsonParser *parser = json_parser_new_immutable();
    if (!json_parser_load_from_data(parser, text, (gssize)len, &e)) {
        st = db_fail(err, DB_ERR_FORMAT, "%s: not JSON: %s", path, e->message);
        g_error_free(e);
        g_object_unref(parser);
        g_free(text);
        return st;
    }
    g_free(text);
    JsonNode *root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_object_unref(parser);
        return db_fail(err, DB_ERR_FORMAT, "%s: not a JSON object of symbol ids", path);
    }
    JsonObjectIter it;
    const char *key;
    JsonNode *node;
    guint8 *seen = g_malloc0(CLIP_MAX_ID);
    json_object_iter_init(&it, json_node_get_object(root));
    while (json_object_iter_next(&it, &key, &node)) {
        if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_INT64) {
            st = db_fail(err, DB_ERR_FORMAT, "%s: the id of \"%s\" is not an integer", path, key);
            break;
        }
        gint64 id = json_node_get_int(node);
        if (id < 0 || id >= CLIP_MAX_ID) {
            st = db_fail(err, DB_ERR_FORMAT,
                         "%s: id %" G_GINT64_FORMAT " of \"%s\" is out of range", path, id, key);
            break;
        }
        if (seen[id]) { /* two symbols with one id would make the id-level BPE ambiguous */
            st = db_fail(err, DB_ERR_FORMAT, "%s: id %" G_GINT64_FORMAT " is used twice", path, id);
            break;
        }
        seen[id] = 1;
        g_hash_table_insert(vocab, g_string_chunk_insert(strings, key),
                            GINT_TO_POINTER((int)id + 1));
    }
    g_free(seen);
    g_object_unref(parser);
    return st;
}

DbStatus clip_tokenizer_load_hf(ClipTokenizer **out, const char *vocab_json,
                                const char *merges_txt, DbError *err)
{
    *out = NULL;
    GStringChunk *strings = g_string_chunk_new(1 << 20);
    GHashTable *vocab = g_hash_table_new(g_str_hash, g_str_equal);
    char *text = NULL;
    size_t len = 0;
    char **a = NULL, **b = NULL;
    DbStatus st = parse_vocab_json(vocab_json, vocab, strings, err);
    if (st == DB_OK)
        st = read_text(merges_txt, 0, &text, &len, err);
    if (st == DB_OK) {
        /* transformers: read().strip().split("\n")[1:49152-256-2+1]; line 0 is "#version: 0.2" */
        char *p = text + strspn(text, " \t\r\n\v\f");
        char *nl = strchr(p, '\n');
        if (!g_utf8_validate(text, (gssize)len, NULL))
            st = db_fail(err, DB_ERR_FORMAT, "%s: not UTF-8 text", merges_txt);
        else if (strncmp(p, "#version", 8) != 0 || !nl)
            st = db_fail(err, DB_ERR_FORMAT, "%s: no \"#version\" header line, not a merges.txt",
                         merges_txt);
        else {
            a = g_new(char *, CLIP_NUM_MERGES);
            b = g_new(char *, CLIP_NUM_MERGES);
            st = split_merges(nl + 1, 1, a, b, merges_txt, err);
        }
    }
    if (st == DB_OK) {
        ClipTokenizer *t = g_new0(ClipTokenizer, 1);
        st = build(t, vocab, a, b, vocab_json, merges_txt, err);
        if (st == DB_OK)
            *out = t;
        else
            clip_tokenizer_free(t);
    }
    g_free(a);
    g_free(b);
    g_free(text);
    g_hash_table_destroy(vocab);
    g_string_chunk_free(strings);
    return st;
}

/* ---- encoding ------------------------------------------------------------------------------ */

static int pair_rank(const ClipTokenizer *t, int32_t x, int32_t y)
{
    uint64_t key = (uint64_t)(uint32_t)x << 32 | (uint32_t)y;
    gpointer v = g_hash_table_lookup(t->ranks, &key);
    return v ? GPOINTER_TO_INT(v) - 1 : INT_MAX;
}

/* simple_tokenizer.bpe on sym[0..n): repeatedly take the adjacent pair of lowest rank and merge
 * all its occurrences left to right. Returns the new length. */
static size_t bpe_word(const ClipTokenizer *t, int32_t *sym, size_t n)
{
    while (n > 1) {
        int best = INT_MAX;
        for (size_t i = 0; i + 1 < n; i++) {
            int r = pair_rank(t, sym[i], sym[i + 1]);
            if (r < best)
                best = r;
        }
        if (best == INT_MAX)
            break;
        int32_t x = t->pair_first[best], y = t->pair_second[best], m = t->merged[best];
        size_t j = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == x && sym[i + 1] == y) {
                sym[j++] = m;
                i += 2;
            } else {
                sym[j++] = sym[i++];
            }
        }
        n = j;
    }
    return n;
}

DbStatus clip_tokenizer_encode(const ClipTokenizer *t, const char *text, int32_t **ids, int *n,
                               DbError *err)
{
    *ids = NULL;
    *n = 0;
    if (!t || !text)
        return db_fail(err, DB_ERR_ARG, "tokenizer: no tokenizer or no text");
    char *clean = clip_text_clean(text, err);
    if (!clean)
        return err ? err->status : DB_ERR_ARG;
    size_t len = strlen(clean);
    /* every piece yields at most one token per byte: len bounds the output and one word */
    int32_t *out = g_new(int32_t, len + 1);
    size_t count = 0, pos = 0, start, end;
    while (clip_text_next_piece(clean, len, &pos, &start, &end)) {
        const char *piece = clean + start;
        size_t plen = end - start;
        if (plen == 15 && memcmp(piece, "<|startoftext|>", 15) == 0) {
            out[count++] = t->bos;
        } else if (plen == 13 && memcmp(piece, "<|endoftext|>", 13) == 0) {
            out[count++] = t->eos;
        } else {
            int32_t *sym = out + count;
            for (size_t i = 0; i < plen; i++) {
                guint8 byte = (guint8)piece[i];
                sym[i] = i + 1 < plen ? t->byte_id[byte] : t->byte_end_id[byte];
            }
            count += bpe_word(t, sym, plen);
        }
    }
    g_free(clean);
    *ids = out;
    *n = (int)count; /* count <= len: a few MiB at most (the prompt is capped at 1 MiB) */
    return DB_OK;
}

DbStatus clip_tokenizer_encode_padded(const ClipTokenizer *t, const char *text, int ctx,
                                      int32_t pad_id, int32_t *ids, int *truncated,
                                      DbError *err)
{
    if (truncated)
        *truncated = 0;
    if (ctx < 2)
        return db_fail(err, DB_ERR_ARG, "tokenizer: context length %d is below 2", ctx);
    int32_t *tok = NULL;
    int n = 0;
    DbStatus st = clip_tokenizer_encode(t, text, &tok, &n, err);
    if (st != DB_OK)
        return st;
    int keep = n < ctx - 2 ? n : ctx - 2;
    ids[0] = t->bos;
    memcpy(ids + 1, tok, (size_t)keep * sizeof *ids);
    ids[keep + 1] = t->eos;
    for (int i = keep + 2; i < ctx; i++)
        ids[i] = pad_id;
    if (truncated)
        *truncated = n - keep;
    g_free(tok);
    return DB_OK;
}
