/* Model loading: layout detection, configs, one canonical (diffusers) naming, validation.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_MODEL_H
#define DB_MODEL_H

#include "dreambooth.h"
#include "safetensors.h"
#include "tensor.h"
#include "tokenizer.h"

#define DB_MAX_BLOCKS 8

typedef enum { CLIP_ACT_QUICK_GELU = 0, CLIP_ACT_GELU = 1 } ClipAct;

/* transformers CLIPTextConfig. layers = layers actually run (SD2 single files: 24 - 1). */
typedef struct {
    int vocab_size, hidden, intermediate, heads, layers, max_pos;
    float ln_eps;
    ClipAct act;
    int pad_id; /* tokenizer padding: 49407 (SD1) or 0 (SD2) */
} ClipConfig;

/* diffusers UNet2DConditionModel (SD 1.x / 2.x subset). */
typedef struct {
    int in_channels, out_channels, sample_size;
    int n_blocks;                      /* len(block_out_channels) */
    int block_out[DB_MAX_BLOCKS];
    int layers_per_block;
    int down_cross[DB_MAX_BLOCKS];     /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross[DB_MAX_BLOCKS];       /* 1: CrossAttnUpBlock2D, 0: UpBlock2D (up order) */
    int heads[DB_MAX_BLOCKS];          /* attention heads per down block (up blocks reversed) */
    int cross_dim;
    int norm_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int use_linear_projection;
    int upcast_attention;
    int time_embed_dim;                /* block_out[0] * 4 */
} UnetConfig;

/* diffusers AutoencoderKL. */
typedef struct {
    int in_channels, out_channels, latent_channels;
    int n_blocks;
    int block_out[DB_MAX_BLOCKS];
    int layers_per_block;
    int norm_groups;
    float scaling_factor;
    int sample_size;
} VaeConfig;

/* One weight, by canonical name, as found in a file. */
typedef struct {
    DbTensor t;           /* shape as the canonical (diffusers) parameter; data may be a view
                             into a packed tensor (OpenCLIP in_proj) */
    const char *file;     /* file it came from (for messages) */
    const char *src_name; /* its name in that file */
} DbWeight;

typedef enum { NET_TEXT = 0, NET_UNET = 1, NET_VAE = 2, NET_COUNT } NetKind;

struct DbModel {
    char *path;
    DbLayout layout;
    DbFamily family;
    DbPrediction prediction;
    int prediction_from_user;
    char *prediction_source;
    char *storage_dtype;
    ClipConfig clip;
    UnetConfig unet;
    VaeConfig vae;
    int64_t n_params[NET_COUNT];
    void *files;          /* GPtrArray of SafetensorsFile* (owned) */
    void *weights;        /* GHashTable canonical name -> DbWeight* (owned) */
    ClipTokenizer *tokenizer;
    char *tokenizer_source;
    void *text_state;     /* lazily built text-encoder weights/scratch (clip.c) */
    void *net_weights[NET_COUNT]; /* GPtrArray of canonical names per network, in validation
                                     order, for the NaN/Inf scan (names: a LoRA merge replaces
                                     the DbWeight) */
    unsigned finite_checked;      /* bit 1 << net: that network's weights were scanned */
    DbWeightCache weight_cache;
    void *unet_run;               /* UNet state, fp32 weight copies and activations kept between
                                     db_unet_forward calls (unet_run.c) */
    void (*free_unet_run)(DbModel *m); /* set with unet_run, called by db_model_free (the model
                                          code itself does not link the UNet) */
};

/* weights_check.c: scans net's weights for NaN/Inf once (on the first call that runs it; a
 * second call returns at once). DB_ERR_MODEL names the file, tensor and element. */
DbStatus model_check_finite(DbModel *m, NetKind net, DbError *err);

/* Canonical weight lookup; NULL when absent. Canonical names are the diffusers/transformers
 * state_dict names of each network without a network prefix ("conv_in.weight",
 * "encoder.conv_in.weight", "text_model.embeddings.token_embedding.weight"): the three
 * networks' names never collide. */
const DbWeight *model_weight(const DbModel *m, const char *name);
/* Same, printf-style name. */
const DbWeight *model_weightf(const DbModel *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Enumerates the canonical parameters (diffusers names, shapes) a config implies.
 * fn returns nonzero to stop. Used for validation, parameter counts and param layouts. */
typedef int (*ParamFn)(void *user, const char *name, int ndim, const int64_t *shape);
void clip_enum_params(const ClipConfig *c, ParamFn fn, void *user);
void unet_enum_params(const UnetConfig *c, ParamFn fn, void *user);
void vae_enum_params(const VaeConfig *c, ParamFn fn, void *user);

#endif
