/* CLIP text encoder (transformers CLIPTextModel): parameters, saved activations, forward.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLIP_H
#define DB_CLIP_H

#include "model.h"
#include "train_params.h"

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

/* LoRA adapters of one layer (train_params.h; down == NULL: none on that linear). */
typedef struct {
    LoraParams q, k, v, o, fc1, fc2;
} ClipLayerLora;
#define CLIP_LORA_SLOTS 6 /* LoRA-able linears per layer, in ClipLayerLora order */

typedef struct {
    const float *token_embedding;    /* [V, D] */
    const float *position_embedding; /* [P, D] */
    ClipLayerParams *layer;          /* [layers] */
    const float *lnf_w, *lnf_b;      /* final_layer_norm [D], [D] */
    const ClipLayerLora *lora;       /* [layers], or NULL: no adapters */
} ClipParams;

/* Gradients, same layout as the parameters; NULL = frozen (its work is skipped). */
typedef struct {
    float *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} ClipLayerGrads;

typedef struct {
    LoraGrads q, k, v, o, fc1, fc2;
} ClipLayerLoraGrads;

typedef struct {
    float *token_embedding, *position_embedding; /* [V, D], [P, D] */
    ClipLayerGrads *layer;                        /* [layers] */
    float *lnf_w, *lnf_b;
    ClipLayerLoraGrads *lora;                     /* [layers], or NULL */
} ClipGrads;

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
    size_t lora_rank;           /* R: largest adapter rank the acts have room for (0: none) */
    float *lora_xa;             /* [L, 6, B*T*R] LoRA down outputs, one slot per linear in
                                   ClipLayerLora order; an adapter of rank r <= R keeps its
                                   xa [B, T, r] at the start of its slot (NULL when R is 0) */
} ClipActs;

/* Number of floats ClipActs needs (lora_rank: the largest adapter rank, 0 without LoRA);
 * DB_ERR_NOMEM on size overflow. */
DbStatus clip_acts_size(size_t *nfloats, const ClipConfig *c, size_t B, int save_all,
                        size_t lora_rank, DbError *err);
/* Carves acts out of mem [nfloats from clip_acts_size with the same arguments]. */
void clip_acts_carve(ClipActs *acts, float *mem, const ClipConfig *c, size_t B, int save_all,
                     size_t lora_rank);

/* out [B, T, D] = last_hidden_state for ids [B, T]; ids must already be in [0, vocab).
 * With p->lora, acts must have room for the largest adapter rank. */
void clip_forward(float *out, ClipActs *acts, const int32_t *ids, const ClipParams *p,
                  const ClipConfig *c);

/* Floats of backward scratch for batch B (dx, dln, datt, dq, dk, dv [B, T, D]; dact, dfc1
 * [B, T, I]; LoRA dxa [B, T, R]). */
DbStatus clip_backward_scratch_size(size_t *nfloats, const ClipConfig *c, size_t B,
                                    size_t lora_rank, DbError *err);

/* Backward of clip_forward (clip_backward.c), after a forward with save_all = 1 on the same
 * acts: accumulates (+=) into every non-NULL gradient of g (LoRA grads through g->lora, which
 * must be set when p->lora is) from dout [B, T, D] = dLoss/d last_hidden_state. ids [B, T] as
 * the forward; no input gradient (the input is token ids). Layers below the lowest one with a
 * gradient to compute are skipped. scratch [clip_backward_scratch_size floats]. */
void clip_backward(const ClipGrads *g, const ClipActs *acts, const float *dout,
                   const int32_t *ids, const ClipParams *p, float *scratch, const ClipConfig *c);

/* A trainable view of the text encoder (clip.c): p is a copy of the frozen params
 * with the selected weights pointing at tp's fp32 masters and tp's LoRA adapters attached;
 * g points into tp's gradient block (NULL slots frozen). The view borrows base and tp (both
 * must outlive it) and owns only its per-layer arrays. */
typedef struct {
    ClipParams p;
    ClipGrads g;
    ClipLayerParams *layers;
    ClipLayerLora *lora;
    ClipLayerGrads *glayers;
    ClipLayerLoraGrads *glora;
} ClipTrainView;

/* Fails (DB_ERR_MODEL) when some tensor of tp has no slot in the text encoder. */
DbStatus clip_train_view_build(ClipTrainView *v, const ClipParams *base, const ClipConfig *c,
                               TrainParams *tp, DbError *err);
void clip_train_view_free(ClipTrainView *v);

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
