/* init-model internals shared by init_model.c, init_configs.c and tokenizer_write.c.
 * Not installed.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_INIT_MODEL_H
#define DB_INIT_MODEL_H

#include "dreambooth.h"
#include "model.h"

/* One architecture init-model can write; `kind` names the configs as the Python reference
 * (tests/reference/sd_configs.py) does. */
typedef struct {
    const char *arch;            /* --arch value */
    const char *kind;            /* sd_configs kind */
    DbFamily family;
    DbPrediction prediction;
    const char *modelspec_arch;  /* modelspec.architecture of single files */
} InitArch;

/* NULL when arch is not one of init_arch_list(). */
const InitArch *init_arch_find(const char *arch);
/* "sd15|sd21|..." for messages (static string). */
const char *init_arch_list(void);

typedef enum {
    INIT_CFG_MODEL_INDEX = 0, /* model_index.json */
    INIT_CFG_UNET,            /* unet/config.json */
    INIT_CFG_VAE,             /* vae/config.json */
    INIT_CFG_TEXT,            /* text_encoder/config.json */
    INIT_CFG_SCHEDULER,       /* scheduler/scheduler_config.json */
    INIT_CFG_COUNT
} InitConfigFile;

/* Relative path of a config file inside a diffusers folder ("unet/config.json"). */
const char *init_config_path(InitConfigFile which);
/* The config file text as diffusers/transformers save_pretrained writes it (keys sorted,
 * indent 2, trailing newline). g_free it. */
char *init_config_json(const InitArch *a, InitConfigFile which);

/* Configs of an architecture as the loader parses them from init_config_json's texts. */
DbStatus init_arch_configs(const InitArch *a, UnetConfig *u, VaeConfig *v, ClipConfig *c,
                           DbError *err);
/* Adjusts configs so that a single file (which carries none) determines them under the rules
 * the loader infers with (ldm_infer_configs; Python: make_model.inferable_configs): CLIP head
 * dim 64 with >= 2 heads, UNet cross width = text width, GroupNorm 32 groups, SD1 UNet 8 heads,
 * SD2 UNet channels multiples of 64 with head dim 64, VAE channels multiples of 32.
 * The real architectures are unchanged. */
void init_configs_inferable(DbFamily family, UnetConfig *u, VaeConfig *v, ClipConfig *c);

/* Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into dir
 * (which must exist) from OpenAI's bpe_simple_vocab_16e6.txt[.gz], as transformers'
 * CLIPTokenizer.save_pretrained does for the SD pipelines (tests/reference/tokenizer_ref.py).
 * pad_token: "<|endoftext|>" (SD1) or "!" (SD2). */
DbStatus tokenizer_write_hf(const char *dir, const char *bpe_path, const char *pad_token,
                            DbError *err);

#endif
