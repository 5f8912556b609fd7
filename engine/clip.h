/* CLIP text encoder (transformers CLIPTextModel): parameters, saved activations, forward.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLIP_H
#define DB_CLIP_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* One CLIPEncoderLayer. D = hidden, I = intermediate. */
typedef struct {
    const float *ln1_w, *ln1_b;     /* layer_norm1 [D], [D] */
    const float *q_w, *q_b;         /* self_attn.q_proj [D, D], [D] */
    const float *k_w, *k_b;         /* self_attn.k_proj [D, D], [D] */
    const float *v_w, *v_b;         /* self_attn.v_proj [D, D], [D] */
    const float *o_w, *o_b;         /* self_attn.out_proj [D, D], [D] */
    const float *ln2_w, *ln2_b;     /* layer_norm2 [D], [D] */
    const float *fc1_w, *fc1_b;     /* mlp.fc1 [I, D], [I] */
    const float *fc2_w, *fc2_b;     /* mlp.fc2 [D, I], [D] */
} ClipLayerParams;

typedef struct {
    const float *token_embedding;    /* [V, D] */
    const float *position_embedding; /* [P, D] */
    ClipLayerParams *layer;          /* [layers] */
    const float *lnf_w, *lnf_b;      /* final_layer_norm [D], [D] */
} ClipParams;

/* Saved activations, T = 77. Per-layer tensors are stacked [L, ...]; in inference (save_all
 * = 0) L is 1 and every layer reuses the same slice. res has L + 1 slices when saving
 * (res[l] is the input of layer l, res[L] the input of the final layer norm). */
typedef struct {
    size_t B;
    int save_all;
    float *res;                 /* [L+1, B, T, D] residual stream */
    float *ln1;                 /* [L, B, T, D] layer_norm1 output */
    float *ln1_mean, *ln1_rstd; /* [L, B, T] */
    float *q, *k, *v;           /* [L, B, T, D] projections (heads in column blocks) */
    float *att;                 /* [L, B, T, D] attention output, before out_proj */
    float *att_lse;             /* [L, B, H, T] softmax log-sum-exp of the scaled scores */
    float *res2;                /* [L, B, T, D] residual stream after the attention block */
    float *ln2;                 /* [L, B, T, D] layer_norm2 output */
    float *ln2_mean, *ln2_rstd; /* [L, B, T] */
    float *fc1;                 /* [L, B, T, I] fc1 output, before the activation */
    float *act;                 /* [L, B, T, I] activation output (fc2 input) */
    float *lnf_mean, *lnf_rstd; /* [B, T] final_layer_norm statistics */
} ClipActs;

/* Number of floats ClipActs needs; DB_ERR_NOMEM on size overflow. */
DbStatus clip_acts_size(size_t *nfloats, const ClipConfig *c, size_t B, int save_all,
                        DbError *err);
/* Carves acts out of mem [nfloats from clip_acts_size]. */
void clip_acts_carve(ClipActs *acts, float *mem, const ClipConfig *c, size_t B, int save_all);

/* out [B, T, D] = last_hidden_state for ids [B, T]; ids must already be in [0, vocab). */
void clip_forward(float *out, ClipActs *acts, const int32_t *ids, const ClipParams *p,
                  const ClipConfig *c);

/* Checks the config (sizes, head split, context length). */
DbStatus clip_config_check(const ClipConfig *c, DbError *err);

/* Text-encoder state kept in DbModel.text_state: f32 parameters (F32 weights aligned in the
 * mapping are used in place; F16/BF16 ones are widened once into one owned allocation). */
typedef struct ClipState ClipState;
DbStatus clip_state_build(ClipState **out, const DbModel *m, DbError *err);
const ClipParams *clip_state_params(const ClipState *s);
/* Frees a DbModel.text_state (NULL is fine). For model.c's db_model_free. */
void clip_state_free(void *state);

#endif
