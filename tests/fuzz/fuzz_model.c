/* libFuzzer target: a whole single-file model through db_model_open (content detection,
 * safetensors reading, config inference from shapes, LDM key mapping, validation of every
 * tensor). Two input forms:
 *   - starting with '{': a safetensors JSON header alone. The harness sets every tensor's
 *     data_offsets from its shape and dtype (in member order) and writes the header followed by
 *     a sparse, zero-filled data section (at most 8 GiB: SD 1.5 and 2.1 fit), so that mutations of names, shapes
 *     and dtypes reach the loader instead of failing the offset checks;
 *   - anything else: the file bytes as they are.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz_util.h"
#include "dreambooth.h"
#include "tensor.h"

#include <fcntl.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#define SPARSE_MAX ((uint64_t)8 << 30)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* no tokenizer from the user's data folder: each run sees only its input */
    char *d = g_build_filename(fuzz_tmpdir(), "xdg", NULL);
    g_setenv("XDG_DATA_HOME", d, TRUE);
    g_free(d);
    return 0;
}

static int dtype_bytes(const char *name)
{
    int dt = name ? dtype_from_name(name) : -1;
    return dt < 0 ? 0 : (int)dtype_size((DbDtype)dt);
}

/* Sets data_offsets in member order; returns the data size, or UINT64_MAX when some entry
 * cannot be sized (then its offsets stay as they were). */
static uint64_t set_offsets(JsonObject *root)
{
    uint64_t at = 0;
    GList *members = json_object_get_members(root);
    for (GList *l = members; l; l = l->next) {
        JsonNode *n = json_object_get_member(root, l->data);
        if (strcmp(l->data, "__metadata__") == 0 || !JSON_NODE_HOLDS_OBJECT(n)) continue;
        JsonObject *o = json_node_get_object(n);
        JsonNode *shape = json_object_get_member(o, "shape"), *dt = json_object_get_member(o, "dtype");
        uint64_t bytes = dt && JSON_NODE_HOLDS_VALUE(dt) &&
                                 json_node_get_value_type(dt) == G_TYPE_STRING
                             ? (uint64_t)dtype_bytes(json_node_get_string(dt)) : 0;
        int ok = bytes && shape && JSON_NODE_HOLDS_ARRAY(shape);
        JsonArray *a = ok ? json_node_get_array(shape) : NULL;
        for (guint i = 0; ok && i < json_array_get_length(a); i++) {
            JsonNode *e = json_array_get_element(a, i);
            gint64 v = JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_INT64
                           ? json_node_get_int(e) : -1;
            ok = v >= 0 && !__builtin_mul_overflow(bytes, (uint64_t)v, &bytes);
        }
        if (!ok || bytes > SPARSE_MAX || at + bytes > SPARSE_MAX) {
            at = UINT64_MAX;
            break;
        }
        JsonArray *off = json_array_new();
        json_array_add_int_element(off, (gint64)at);
        json_array_add_int_element(off, (gint64)(at + bytes));
        json_object_set_array_member(o, "data_offsets", off);
        at += bytes;
    }
    g_list_free(members);
    return at;
}

/* Writes header + sparse data; returns 0 when the header is not a JSON object. */
static int write_structured(const char *path, const uint8_t *data, size_t size)
{
    JsonParser *p = json_parser_new();
    int ok = json_parser_load_from_data(p, (const char *)data, (gssize)size, NULL);
    JsonNode *root = ok ? json_parser_get_root(p) : NULL;
    ok = root && JSON_NODE_HOLDS_OBJECT(root);
    if (ok) {
        uint64_t dsize = set_offsets(json_node_get_object(root));
        JsonGenerator *g = json_generator_new();
        json_generator_set_root(g, root);
        gsize hlen = 0;
        gchar *h = json_generator_to_data(g, &hlen);
        g_object_unref(g);
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(len8, 1, 8, fp) != 8 || fwrite(h, 1, hlen, fp) != hlen || fclose(fp)) abort();
        g_free(h);
        if (dsize != UINT64_MAX && truncate(path, (off_t)(8 + hlen + dsize)) != 0) abort();
    }
    g_object_unref(p);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write(0, "model.safetensors", data, size);
    if (size && data[0] == '{' && !write_structured(path, data, size)) return 0;
    DbModel *m = NULL;
    DbError err = {0};
    DbStatus st = db_model_open(&m, path, NULL, &err);
    fuzz_check_error(st, err.msg);
    if ((st == DB_OK) != (m != NULL)) abort();
    if (m) {
        DbModelInfo info;
        db_model_get_info(m, &info);
        if (info.params_unet <= 0 || info.params_vae <= 0 || info.params_text_encoder <= 0) abort();
        int32_t ids[DB_CONTEXT_LEN];
        (void)db_tokenize(m, "a photo", ids, NULL, &err);
        db_model_free(m);
    }
    return 0;
}
