/* Trainable parameters of one network: full fine-tuning of selected weights and LoRA adapters,
 * shared by every network (text encoder, UNet).
 *
 * Ownership and layout
 *   A TrainParams owns two float blocks of the same layout, values (the fp32 master copies)
 *   and grads: tensor i occupies [offset, offset + nelem) of both. Tensors are the selected
 *   network parameters first (canonical diffusers names, enumeration order of
 *   clip_enum_params / unet_enum_params), then per LoRA adapter its down (lora_A) and up
 *   (lora_B) matrices. An optimizer sees one flat vector of train_params_count() floats.
 *   Nothing here points into the network's own weights: the model (mmap'd, possibly F16)
 *   stays read-only and may be freed only after the TrainParams.
 *
 * How a network consumes it ("param view")
 *   A network keeps its weights as named const float * slots (ClipParams, UnetParams) and its
 *   gradients as float * slots of the same layout (ClipGrads, ...), NULL = frozen. To train, the
 *   network builds a view: a copy of its frozen XxxParams in which, for every slot,
 *     train_params_bind(tp, name, &slot, &grad_slot)
 *   redirects a selected weight to its fp32 master and sets its gradient pointer (NULL when
 *   the weight is frozen), and for every adaptable layer (linear or conv)
 *     train_params_bind_lora(tp, module, &lora_params, &lora_grads)
 *   fills the adapter (down/up/scale/rank; down == NULL: no adapter). The view builder then
 *   checks train_params_bound(tp) == train_params_count_tensors(tp) (every selected tensor
 *   reached a slot). Forward adds lora_linear_forward / lora_conv2d_forward after the base
 *   layer; backward calls the matching *_backward with the LoRA grads (kernels.h).
 *   Activations: an adapted linear saves xa = inp @ down^T [N, R] for backward (ClipActs
 *   lora_xa: one [B*T*R] slot per adaptable linear per layer, R = train_params_lora_max_rank).
 *   See clip_train_view_build (clip.h, clip.c) for the text encoder.
 *
 * LoRA conventions (PEFT LoraLayer, kohya-ss networks/lora.py LoRAModule)
 *   down (PEFT lora_A) [R, IC] or [R, C, KH, KW], up (lora_B) [OC, R] or [OC, R, 1, 1],
 *   scale = alpha / R; init: down ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in),
 *   1/sqrt(fan_in)) with fan_in = IC*KH*KW, drawn as u * 2 bound - bound from rng_uniform
 *   (torch.rand's generator, rng.h) seeded with TrainSpec.seed, adapters in enumeration
 *   order (not PEFT's module order: values differ from PEFT's, the distribution is the same);
 *   up = 0. Names: "<module>.lora_A.weight",
 *   "<module>.lora_B.weight" with <module> the canonical module path (PEFT's names without the
 *   "text_encoder." / "unet." prefix).
 *   Target sets (cumulative, TRAIN_LORA_ATTN < TRAIN_LORA_TRANSFORMER < TRAIN_LORA_CONV):
 *     attn         diffusers' default: attention q/k/v/out (CLIP q_proj, k_proj, v_proj,
 *                  out_proj; UNet to_q, to_k, to_v, to_out.0)
 *     transformer  kohya's default: every Linear and 1x1 Conv2d inside CLIPAttention/CLIPMLP
 *                  (+ mlp.fc1, mlp.fc2) and inside Transformer2DModel (+ proj_in, proj_out,
 *                  ff.net.0.proj, ff.net.2)
 *     conv         kohya's conv_dim variant, UNet only: plus every Linear/Conv2d inside
 *                  ResnetBlock2D, Downsample2D and Upsample2D (conv1, conv2, time_emb_proj,
 *                  conv_shortcut, downsamplers.0.conv, upsamplers.0.conv).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_TRAIN_PARAMS_H
#define DB_TRAIN_PARAMS_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TRAIN_LORA_NONE = 0,
    TRAIN_LORA_ATTN = 1,
    TRAIN_LORA_TRANSFORMER = 2,
    TRAIN_LORA_CONV = 3
} TrainLoraTargets;

/* What to train. params: comma-separated globs (GPatternSpec: '*' and '?' match any
 * character, dots included) over canonical parameter names, NULL or "" = none. lora_rank 0 =
 * no LoRA; lora_alpha <= 0 means alpha = rank. */
typedef struct {
    const char *params;
    int lora_rank;
    float lora_alpha;
    TrainLoraTargets lora_targets;
    uint64_t seed; /* LoRA down init */
} TrainSpec;

typedef enum { TRAIN_FULL = 0, TRAIN_LORA_DOWN, TRAIN_LORA_UP } TrainTensorKind;

typedef struct {
    char *name;       /* canonical parameter name, or "<module>.lora_A.weight" / ".lora_B.weight" */
    TrainTensorKind kind;
    int ndim;
    int64_t shape[4];
    size_t nelem;
    size_t offset;    /* floats into values / grads */
} TrainTensor;

/* One adapter as a layer sees it. down == NULL: the layer has no adapter. */
typedef struct {
    const float *down; /* [R, IC] or [R, C, KH, KW] */
    const float *up;   /* [OC, R] */
    float scale;       /* alpha / R */
    size_t rank;
} LoraParams;

typedef struct {
    float *ddown, *dup; /* same shapes as down, up; NULL when the layer has no adapter */
} LoraGrads;

typedef struct TrainParams TrainParams;

/* Parses "RANK[:ALPHA[:TARGETS]]" (TARGETS attn|transformer|conv; defaults alpha = rank,
 * attn) into spec's lora fields. */
DbStatus train_lora_parse(TrainSpec *spec, const char *text, DbError *err);

/* Selects the trainable set of network net of m, copies the selected weights to fp32 and
 * initialises the adapters. Fails when a glob matches nothing, when LoRA targets no layer, or
 * (conv) on the text encoder. */
DbStatus train_params_new(TrainParams **out, const DbModel *m, NetKind net,
                          const TrainSpec *spec, DbError *err);
void train_params_free(TrainParams *tp);

size_t train_params_count(const TrainParams *tp);         /* floats in values and in grads */
size_t train_params_count_tensors(const TrainParams *tp);
const TrainTensor *train_params_tensor(const TrainParams *tp, size_t i);
float *train_params_values(TrainParams *tp);               /* [count] */
float *train_params_grads(TrainParams *tp);                /* [count] */
void train_params_zero_grads(TrainParams *tp);
size_t train_params_lora_max_rank(const TrainParams *tp);  /* 0 without LoRA */
size_t train_params_n_lora(const TrainParams *tp);         /* adapters */

/* Loads initial adapter values from a safetensors file of LoRA tensors (names as above, with
 * or without the "text_encoder." / "unet." prefix; F32, F16 or BF16; shapes must match).
 * Every tensor in the file must name an adapter of tp; adapters absent from the file keep
 * their initial values. */
DbStatus train_params_load_lora(TrainParams *tp, const char *path, DbError *err);

/* View binding (see the top of this file). train_params_bind: when name is trainable, *slot =
 * its fp32 master and *grad = its gradient; otherwise *slot is left alone and *grad = NULL.
 * train_params_bind_lora: fills lp/lg for module (all NULL / 0 without an adapter). Both
 * count the tensors they hand out (train_params_bound); train_params_bind_reset zeroes the
 * count. */
void train_params_bind(TrainParams *tp, const char *name, const float **slot, float **grad);
void train_params_bind_lora(TrainParams *tp, const char *module, LoraParams *lp, LoraGrads *lg);
size_t train_params_bound(const TrainParams *tp);
void train_params_bind_reset(TrainParams *tp);

#endif
