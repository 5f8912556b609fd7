/* Loader internals shared by model.c, model_config.c, model_params.c and keymap_ldm.c:
 * the LDM single-file <-> diffusers key map (tables in keymap_ldm.c) and config parsing.
 * Not installed; the tests include it.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_KEYMAP_H
#define DB_KEYMAP_H

#include "model.h"
#include "tokenizer.h"

/* One renaming: a name piece in the LDM file and in diffusers. A piece ending in '.' is a
 * prefix of the rest of the name; otherwise it is the whole rest. part >= 0: the diffusers
 * tensor is row block `part` of 3 of the LDM tensor (OpenCLIP attn.in_proj_weight [3C, C]:
 * rows 0..C-1 q, C..2C-1 k, 2C..3C-1 v); -1 = the whole tensor. */
typedef struct {
    const char *ldm;
    const char *diffusers;
    int part;
} KeyPair;

/* A prefix rule generated from the config's block structure; the rest of the name goes
 * through `inner` (NULL = same names on both sides). */
typedef struct {
    char ldm[96];
    char diffusers[96];
    const KeyPair *inner;
    int n_inner;
} KeyRule;

typedef struct {
    KeyRule *rules;
    int n_rules, cap;
} Keymap;

/* Text-encoder layouts found in single files. */
typedef enum {
    KEYMAP_CLIP_OPENAI = 0,     /* cond_stage_model.transformer.text_model.* (SD1) */
    KEYMAP_CLIP_OPENAI_BARE,    /* cond_stage_model.transformer.* without text_model. (old SD1) */
    KEYMAP_CLIP_OPENCLIP        /* cond_stage_model.model.* (SD2, q/k/v packed) */
} KeymapClip;

#define LDM_UNET_PREFIX "model.diffusion_model."
#define LDM_VAE_PREFIX "first_stage_model."
#define LDM_CLIP_OPENAI_PREFIX "cond_stage_model.transformer."
#define LDM_CLIP_OPENCLIP_PREFIX "cond_stage_model.model."

/* Builds the rules for one model. text_layers: layers kept (SD2: resblocks - 1). */
DbStatus keymap_ldm_build(Keymap *k, const UnetConfig *u, const VaeConfig *v, int text_layers,
                          KeymapClip clip, DbError *err);
void keymap_free(Keymap *k);
/* canonical (diffusers) name -> LDM name; *part as in KeyPair. 0 when the name is not mapped
 * (or does not fit in out). */
int keymap_to_ldm(const Keymap *k, const char *canonical, char *out, size_t outsize, int *part);
/* LDM name (+ part for packed tensors, else -1) -> canonical name; 0 when not mapped. */
int keymap_from_ldm(const Keymap *k, const char *ldm, int part, char *out, size_t outsize);

/* ---- configs (model_config.c) ---------------------------------------------------------- */

/* diffusers config.json files. Errors: "PATH: key: problem". */
DbStatus unet_config_load(UnetConfig *c, const char *path, DbError *err);
DbStatus vae_config_load(VaeConfig *c, const char *path, DbError *err);
DbStatus clip_config_load(ClipConfig *c, const char *path, DbError *err);
/* Same, from a JSON text (path only names it in messages). */
DbStatus unet_config_parse(UnetConfig *c, const char *json, const char *path, DbError *err);
DbStatus vae_config_parse(VaeConfig *c, const char *json, const char *path, DbError *err);
DbStatus clip_config_parse(ClipConfig *c, const char *json, const char *path, DbError *err);

/* Sanity limits shared by parsed and inferred configs. */
DbStatus unet_config_validate(const UnetConfig *c, const char *path, DbError *err);
DbStatus vae_config_validate(const VaeConfig *c, const char *path, DbError *err);
DbStatus clip_config_validate(const ClipConfig *c, const char *path, DbError *err);

/* scheduler_config.json prediction_type (absent: epsilon, diffusers' default). */
DbStatus scheduler_prediction_load(const char *path, DbPrediction *pred, DbError *err);
/* special_tokens_map.json / tokenizer_config.json pad_token -> id ("<|endoftext|>" 49407,
 * "!" 0); *pad_id = -1 when the file has no pad_token. */
DbStatus tokenizer_pad_load(const char *path, int *pad_id, DbError *err);
/* *.safetensors.index.json: the distinct shard file names of weight_map (NULL-terminated,
 * g_strfreev). Names with path separators are rejected. */
DbStatus shard_index_load(const char *path, char ***shards, DbError *err);

/* Single files: family, configs and text layout inferred from tensor shapes. */
DbStatus ldm_infer_configs(const SafetensorsFile *f, DbFamily *family, UnetConfig *u,
                           VaeConfig *v, ClipConfig *c, KeymapClip *clip, DbError *err);

/* Reference configs (diffusers' published SD 1.5 / SD 2.1 configs). */
void unet_config_sd1(UnetConfig *c);
void unet_config_sd2(UnetConfig *c);
void vae_config_sd(VaeConfig *c);
void clip_config_sd1(ClipConfig *c);
void clip_config_sd2(ClipConfig *c);

#endif
