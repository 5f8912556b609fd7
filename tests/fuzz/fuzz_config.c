/* libFuzzer target: the JSON files of a diffusers model. The first byte picks the reader; the
 * rest is the file:
 *   0 unet/config.json   1 vae/config.json   2 text_encoder/config.json
 *   3 scheduler/scheduler_config.json (prediction_type)
 *   4 tokenizer/special_tokens_map.json or tokenizer_config.json (pad_token)
 *   5 *.safetensors.index.json (shard names)
 * An accepted config must pass its validator, enumerate parameters with positive shapes whose
 * element counts fit in int64, and (UNet, VAE, text) build the LDM key map in which every
 * canonical name maps to an LDM name and back.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz_util.h"
#include "keymap.h"

#include <glib.h>

typedef struct {
    int64_t total;
    int count;
    const Keymap *km;
} Enum;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_config: invariant broken: %s\n", what);
        abort();
    }
}

static int on_param(void *user, const char *name, int ndim, const int64_t *shape)
{
    Enum *e = user;
    int64_t n = 1;
    check(name && name[0] && ndim >= 1 && ndim <= DB_MAX_DIMS, "parameter name and rank");
    for (int i = 0; i < ndim; i++) {
        check(shape[i] >= 1, "positive shape");
        check(!__builtin_mul_overflow(n, shape[i], &n), "element count overflow");
    }
    check(!__builtin_add_overflow(e->total, n, &e->total), "parameter total overflow");
    e->count++;
    if (e->km) {
        char ldm[256], back[256];
        int part = -2;
        if (keymap_to_ldm(e->km, name, ldm, sizeof ldm, &part)) {
            check(part >= -1 && part <= 2, "packed part");
            check(keymap_from_ldm(e->km, ldm, part, back, sizeof back), "LDM name maps back");
            if (strcmp(back, name) != 0) {
                fprintf(stderr, "fuzz_config: %s -> %s (part %d) -> %s\n", name, ldm, part, back);
                abort();
            }
        }
    }
    return 0;
}

static void with_keymap(const UnetConfig *u, const VaeConfig *v, const ClipConfig *c, int clip)
{
    Keymap km;
    DbError err = {0};
    DbStatus st = keymap_ldm_build(&km, u, v, c->layers, (KeymapClip)clip, &err);
    fuzz_check_error(st, err.msg);
    if (st) return;
    Enum e = {0, 0, &km};
    unet_enum_params(u, on_param, &e);
    vae_enum_params(v, on_param, &e);
    clip_enum_params(c, on_param, &e);
    keymap_free(&km);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned mode = data[0] % 6, clip = data[0] / 6 % 3;
    const char *path = fuzz_write(0, "config.json", data + 1, size - 1);
    DbError err = {0};
    DbStatus st;
    UnetConfig u;
    VaeConfig v;
    ClipConfig c;
    unet_config_sd1(&u);
    vae_config_sd(&v);
    clip_config_sd1(&c);
    if (mode == 0) {
        st = unet_config_load(&u, path, &err);
        check(st != DB_OK || unet_config_validate(&u, path, &err) == DB_OK, "unet validates");
    } else if (mode == 1) {
        st = vae_config_load(&v, path, &err);
        check(st != DB_OK || vae_config_validate(&v, path, &err) == DB_OK, "vae validates");
    } else if (mode == 2) {
        st = clip_config_load(&c, path, &err);
        check(st != DB_OK || clip_config_validate(&c, path, &err) == DB_OK, "clip validates");
    } else if (mode == 3) {
        DbPrediction pred = DB_PRED_UNKNOWN;
        st = scheduler_prediction_load(path, &pred, &err);
        check(st != DB_OK || pred == DB_PRED_EPS || pred == DB_PRED_V, "prediction");
    } else if (mode == 4) {
        int pad = -2;
        st = tokenizer_pad_load(path, &pad, &err);
        check(st != DB_OK || pad == -1 || pad == 0 || pad == CLIP_EOS, "pad id");
    } else {
        char **shards = NULL;
        st = shard_index_load(path, &shards, &err);
        check((st == DB_OK) == (shards != NULL), "status and shard list agree");
        for (int i = 0; shards && shards[i]; i++)
            check(shards[i][0] && !strchr(shards[i], '/') && g_str_has_suffix(shards[i], ".safetensors"),
                  "shard names");
        check(!shards || shards[0], "at least one shard");
        g_strfreev(shards);
    }
    fuzz_check_error(st, err.msg);
    if (st == DB_OK && mode <= 2) with_keymap(&u, &v, &c, (int)clip);
    return 0;
}
