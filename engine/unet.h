/* UNet2DConditionModel (diffusers, SD 1.x/2.x subset): parameters, activations, forward.
 *
 * Layout: activations NCHW [B, C, H, W] between blocks; inside a Transformer2DModel tokens
 * [B, H*W, C]. Weights: 1-D parameters (norms, biases) are widened to f32 once per state;
 * matrices and conv kernels stay in the mapped file (F32/F16/BF16) and are widened per
 * layer, on use, into ONE scratch sized to the largest of them (weights.h), unless the state
 * holds an fp32 copy of them (its weight cache, unet_state_build).
 *
 * Every block forward (unet_resnet_forward, unet_transformer_forward, ...) is callable on
 * its own with a work buffer sized by its *_work_size function, so that a backward with
 * per-block checkpointing can recompute a block and mirror it.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_UNET_H
#define DB_UNET_H

#include "model.h"
#include "train_params.h"

#include <stdint.h>

#define UNET_MAX_LAYERS 16 /* layers_per_block (config range); up blocks have one more */
/* db_unet_forward's ranges */
#define UNET_MAX_BATCH 1024
#define UNET_MAX_SIDE 4096
#define UNET_MAX_SEQ 4096

/* A linear layer or a conv: weight [OC, IC] or [OC, IC, K, K] as in the file (widened on
 * use); bias [OC] f32 (NULL: none). w == NULL: the layer is absent (identity shortcut).
 * wf, when set, replaces w: an fp32 copy of a half-precision weight made by unet_state_build
 * (the weight cache), or in a training view (unet_train_view_build) the fp32 master of a
 * trainable weight; dw, db [same shapes] its gradients (NULL: frozen); lora/dlora the adapter
 * (lora.down NULL: none). Inference leaves dw, db and lora zero. */
typedef struct {
    const DbWeight *w;
    const float *b;
    const float *wf;
    float *dw, *db;
    LoraParams lora;
    LoraGrads dlora;
} UnetLin;

/* GroupNorm / LayerNorm affine parameters gamma, beta [C] (f32); dw, db their gradients in a
 * training view (NULL: frozen). */
typedef struct {
    const float *w, *b;
    float *dw, *db;
} UnetNorm;

/* diffusers ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1). */
typedef struct {
    int cin, cout;
    UnetNorm norm1, norm2;
    UnetLin conv1, time_emb_proj, conv2, conv_shortcut; /* conv_shortcut.w NULL: cin == cout */
} UnetResnet;

/* diffusers Transformer2DModel (one BasicTransformerBlock). proj_in/proj_out: 1x1 conv
 * [C, C, 1, 1] (SD1) or Linear [C, C] (SD2): the same map on tokens. */
typedef struct {
    int c, heads;
    UnetNorm norm; /* GroupNorm, eps 1e-6 */
    UnetLin proj_in;
    UnetNorm norm1, norm2, norm3; /* LayerNorm, eps 1e-5 */
    UnetLin q1, k1, v1, o1;       /* self-attention (no q/k/v bias) */
    UnetLin q2, k2, v2, o2;       /* cross-attention to the context */
    UnetLin ff_in, ff_out;        /* GEGLU proj [8C, C], Linear [C, 4C] */
    UnetLin proj_out;
} UnetTransformer;

typedef struct {
    int has_attn, has_down;
    UnetResnet res[UNET_MAX_LAYERS];
    UnetTransformer attn[UNET_MAX_LAYERS];
    UnetLin down; /* Downsample2D conv 3x3 stride 2 pad 1 */
} UnetDownBlock;

typedef struct {
    int has_attn, has_up;
    UnetResnet res[UNET_MAX_LAYERS + 1];
    UnetTransformer attn[UNET_MAX_LAYERS + 1];
    UnetLin up; /* Upsample2D: nearest 2x, conv 3x3 pad 1 */
} UnetUpBlock;

typedef struct {
    UnetLin conv_in;
    UnetLin time_1, time_2;
    UnetDownBlock down[DB_MAX_BLOCKS];
    UnetResnet mid_res0, mid_res1;
    UnetTransformer mid_attn;
    UnetUpBlock up[DB_MAX_BLOCKS];
    UnetNorm norm_out;
    UnetLin conv_out;
} UnetParams;

/* Shared by every block call: widened-weight scratch (largest matrix/kernel), im2col
 * scratch for convs, and a block work area. */
typedef struct {
    float *wscratch;
    float *conv_scratch;
    size_t conv_scratch_n;
    float *work; /* at least unet_block_work_size() floats */
} UnetWork;

/* Sizes of one forward: batch, latent height/width (multiples of 2^(n_blocks-1)), context
 * length. */
typedef struct {
    size_t B, H, W, S;
} UnetDims;

/* Inference activations, one allocation. Skip connections in named arrays:
 *   skip_in = conv_in output; down_res[b][j] = output of down block b, layer j (after its
 *   attention); down_ds[b] = its downsampler output. Up block u, resnet j takes
 *   down_res[n-1-u][L-1-j] (j < L) or down_ds[n-2-u] (j == L; skip_in when u == n-1). */
typedef struct {
    float *temb;      /* [B, T] SiLU(time embedding): the only form the resnets use */
    float *t_sin;     /* [B, C0] sinusoidal embedding */
    float *t_hidden;  /* [B, T] */
    float *skip_in;
    float *down_res[DB_MAX_BLOCKS][UNET_MAX_LAYERS];
    float *down_ds[DB_MAX_BLOCKS];
    float *x, *y; /* ping-pong [B, Cmax(level), H, W] */
    float *cat;   /* [B, Cx + Cskip, H, W] input of an up-block resnet */
} UnetActs;

/* Called after each block with the fraction done; nonzero stops the forward. */
typedef struct {
    DbProgressFn fn;
    void *user;
    int done, total;
} UnetProgress;

/* ---- state (unet.c) ---- */
typedef struct UnetState UnetState;
/* The UNet's parameters as a UnetParams over m's weights. cache_bytes: room for fp32 copies of
 * half-precision matrices and kernels (weight_needs_scratch), made here in walk order while
 * they fit, in one allocation; each copied weight's mapped pages are released
 * (weight_release_pages). 0: none. */
DbStatus unet_state_build(UnetState **out, const DbModel *m, size_t cache_bytes, DbError *err);
const UnetParams *unet_state_params(const UnetState *s);
size_t unet_state_wscratch_size(const UnetState *s); /* floats */
/* Weights copied and the bytes their copies take. */
void unet_state_cache_info(const UnetState *s, int *n_cached, size_t *bytes);
void unet_state_free(UnetState *s);

/* ---- the model's runtime (unet_run.c) ----
 * db_unet_forward keeps a UnetState (with its weight cache) and the last call's activation
 * allocation in m->unet_run, so that sampling steps neither rebuild nor re-fault them. */
/* Bytes of fp32 copies of all of m's half-precision UNet matrices and kernels. */
uint64_t unet_weight_cache_full(const DbModel *m);
/* Bytes the weight cache gets under m->weight_cache for a call whose work (activations and
 * scratch) takes work_bytes, with available bytes of free memory (AUTO: available - work -
 * 1 GiB, at most the full cache; 0 when available is 0 = unknown). */
uint64_t unet_weight_cache_bytes(const DbModel *m, uint64_t work_bytes, uint64_t available);
/* Frees the kept activations (before a VAE call: the estimate counts one network's work at a
 * time); the state and its weight cache stay. */
void unet_run_release(DbModel *m);
/* Frees all of it (model free, LoRA merge: the cached copies would be stale). */
void unet_run_free(DbModel *m);
/* The kept weight cache (0, 0 before the first UNet call). */
void unet_run_cache_info(const DbModel *m, int *n_cached, size_t *bytes);
/* Training view: *view = the state's parameters with every slot bound to tp
 * (train_params.h): selected weights point to their fp32 masters and get gradient pointers,
 * adapted layers get their LoRA; fails unless every tensor of tp reached a slot. */
DbStatus unet_train_view_build(UnetParams *view, const UnetState *s, const DbModel *m,
                               TrainParams *tp, DbError *err);

/* ---- blocks (unet_blocks.c) ----
 * Functions with an int result return conv2d_forward's: 0, or -1 when the conv scratch is
 * too small (unet_conv_scratch_size rules that out). */

/* out [B, Cout, H, W] = ResnetBlock2D(inp [B, Cin, H, W], temb_act [B, T] = SiLU(temb)). */
size_t unet_resnet_work_size(size_t cin, size_t cout, size_t B, size_t HW, size_t groups);
int unet_resnet_forward(float *out, const UnetWork *wk, const float *inp, const float *temb_act,
                        const UnetResnet *p, size_t B, size_t H, size_t W, size_t T,
                        size_t groups, float eps);

/* out [B, C, H, W] = Transformer2DModel(inp [B, C, H, W], ctx [B, S, X]). */
size_t unet_transformer_work_size(size_t C, size_t B, size_t HW, size_t S, size_t groups);
void unet_transformer_forward(float *out, const UnetWork *wk, const float *inp, const float *ctx,
                              const UnetTransformer *p, size_t B, size_t H, size_t W, size_t S,
                              size_t X, size_t groups);

/* Downsample2D: out [B, C, H/2, W/2] = conv3x3 stride 2 pad 1 (inp [B, C, H, W]). */
int unet_downsample_forward(float *out, const UnetWork *wk, const float *inp, const UnetLin *p,
                            size_t B, size_t C, size_t H, size_t W);
/* Upsample2D: out [B, C, 2H, 2W] = conv3x3(nearest2x(inp [B, C, H, W])); work holds the
 * upsampled input. */
size_t unet_upsample_work_size(size_t C, size_t B, size_t HW);
int unet_upsample_forward(float *out, const UnetWork *wk, const float *inp, const UnetLin *p,
                          size_t B, size_t C, size_t H, size_t W);

/* ---- training blocks (unet_blocks_backward.c) ----
 * *_train_forward: the block's forward with the view's fp32 masters and LoRA adapters,
 * saving what its backward needs into acts [*_acts_size floats]. *_backward: the same block
 * read bottom-up; accumulates (+=) dinp (may be NULL), dtemb [B, T] (resnets, may be NULL),
 * dctx [B, S, X] (transformers, may be NULL) and the view's parameter gradients; scratch
 * [*_bwd_size floats] is overwritten. Train forwards also overwrite wk->work with what their
 * backward does not read: [B, Cout, HW] (a resnet's shortcut output), [B*H*W, 4C] (a
 * transformer's GroupNorm, GEGLU and proj_out outputs; the backward recomputes the GEGLU
 * output into its scratch when ff_out trains). A resnet's backward skips
 * conv1's input gradient and GroupNorm1's backward when dinp is NULL and norm1 is frozen.
 * R: the view's largest LoRA rank (0 without LoRA). Int results as conv2d_forward's. Both
 * may be called again for the same block (checkpointing recomputes). */
size_t unet_resnet_acts_size(size_t cin, size_t cout, size_t B, size_t HW, size_t G, size_t R);
size_t unet_resnet_bwd_size(size_t cin, size_t cout, size_t B, size_t HW, size_t R);
int unet_resnet_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                              const float *temb_act, const UnetResnet *p, size_t B, size_t H,
                              size_t W, size_t T, size_t G, float eps, size_t R);
int unet_resnet_backward(float *dinp, float *dtemb, const float *acts, const float *dout,
                         const float *inp, const float *temb_act, const UnetResnet *p,
                         const UnetWork *wk, float *scratch, size_t B, size_t H, size_t W,
                         size_t T, size_t G, size_t R);
size_t unet_transformer_acts_size(size_t C, size_t heads, size_t B, size_t HW, size_t S, size_t G,
                                  size_t R);
size_t unet_transformer_bwd_size(size_t C, size_t B, size_t HW, size_t S, size_t R);
void unet_transformer_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                    const float *ctx, const UnetTransformer *p, size_t B, size_t H,
                                    size_t W, size_t S, size_t X, size_t G, size_t R);
void unet_transformer_backward(float *dinp, float *dctx, const float *acts, const float *dout,
                               const float *inp, const float *ctx, const UnetTransformer *p,
                               const UnetWork *wk, float *scratch, size_t B, size_t H, size_t W,
                               size_t S, size_t X, size_t G, size_t R);
/* Down/Upsample2D (up: 1 / 0); HW = H*W of the block input. */
size_t unet_sample_acts_size(int up, size_t C, size_t B, size_t HW, size_t R);
size_t unet_sample_bwd_size(int up, size_t C, size_t B, size_t HW, size_t R);
int unet_downsample_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                  const UnetLin *p, size_t B, size_t C, size_t H, size_t W);
int unet_downsample_backward(float *dinp, const float *acts, const float *dout, const float *inp,
                             const UnetLin *p, const UnetWork *wk, float *scratch, size_t B,
                             size_t C, size_t H, size_t W);
int unet_upsample_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                const UnetLin *p, size_t B, size_t C, size_t H, size_t W);
int unet_upsample_backward(float *dinp, const float *acts, const float *dout, const UnetLin *p,
                           const UnetWork *wk, float *scratch, size_t B, size_t C, size_t H,
                           size_t W);

/* Widens l's weight into wk->wscratch (or points into the mapped file); l->wf when set. */
const float *unet_weight(const UnetLin *l, const UnetWork *wk);

/* ---- whole network (unet.c) ----
 * One forward allocates unet_acts_size + the largest block work + unet_conv_scratch_size +
 * unet_state_wscratch_size floats, once (db_unet_forward). */
DbStatus unet_acts_size(size_t *nfloats, const UnetConfig *c, const UnetDims *d, DbError *err);
/* Floats of that one allocation, with a widened-weight scratch of wscratch_floats, and its
 * carving into activations and work (the scratch last). */
DbStatus unet_forward_size(size_t *floats, const UnetConfig *c, const UnetDims *d,
                           size_t wscratch_floats, DbError *err);
void unet_forward_carve(UnetActs *a, UnetWork *wk, float *mem, const UnetConfig *c,
                        const UnetDims *d);
size_t unet_conv_scratch_size(const UnetConfig *c, const UnetDims *d);
/* Blocks run by unet_forward (for progress fractions). */
int unet_block_count(const UnetConfig *c);
/* out [B, Cout, H, W]; sample [B, Cin, H, W]; timesteps [B]; ctx [B, S, cross_dim].
 * Returns DB_ERR_CANCELLED when the progress callback asks to stop. */
DbStatus unet_forward(float *out, UnetActs *a, const UnetWork *wk, const float *sample,
                      const float *timesteps, const float *ctx, const UnetParams *p,
                      const UnetConfig *c, const UnetDims *d, UnetProgress *pr, DbError *err);

/* ---- training: forward that keeps block inputs, backward (unet_backward.c) ----
 * One UnetTrain holds the plan (the forward's list of blocks) and one allocation for a
 * batch shape: every block's output (= the next block's input; skips included), their
 * gradients, and the block internals. act_budget (bytes) bounds the internals kept from the
 * forward: the blocks that save the most recompute FLOPs per byte are kept (own regions), the
 * others share one region sized to the largest of them and are recomputed right before their
 * backward (checkpointing). UNET_CKPT_ALL (0): every block recomputed (smallest memory; a
 * block without internals, e.g. a downsampler without LoRA, is always kept);
 * UNET_CKPT_NONE (SIZE_MAX): every block kept. What a finite budget leaves after the internals
 * goes to fp32 copies of frozen half-precision weights, widened once in unet_train_new (else
 * widened on every use, forward and backward): the copies save the most widenings per byte
 * come first; UNET_CKPT_NONE and UNET_CKPT_ALL make none. All budgets give identical
 * gradients. The view is copied (it may be freed after unet_train_new; the tensors it points
 * to may not). */
#define UNET_CKPT_ALL ((size_t)0)
#define UNET_CKPT_NONE SIZE_MAX
typedef struct UnetTrain UnetTrain;
DbStatus unet_train_new(UnetTrain **out, const UnetParams *view, const UnetConfig *c,
                        const UnetDims *d, size_t lora_rank, size_t wscratch_floats,
                        size_t act_budget, DbError *err);
/* *bytes = the allocation unet_train_new would make with these arguments (nothing allocated
 * but the plan). */
DbStatus unet_train_size(size_t *bytes, const UnetParams *view, const UnetConfig *c,
                         const UnetDims *d, size_t lora_rank, size_t wscratch_floats,
                         size_t act_budget, DbError *err);
/* An act_budget for a process that must stay under limit_bytes: limit_bytes - resident_bytes
 * - fixed_bytes - limit_bytes / 16 (headroom: malloc, thread stacks, BLAS buffers), 0 when
 * that is negative. resident_bytes: what the process holds besides the UnetTrain (the mapped
 * UNet weights it reads, the widened 1-D weights, trainable parameters, gradients and optimizer
 * state, inputs); fixed_bytes: unet_train_size with UNET_CKPT_ALL. The kept internals then
 * come on top of the all-checkpointed allocation (whose shared region can only shrink). */
size_t unet_train_default_budget(size_t limit_bytes, size_t resident_bytes, size_t fixed_bytes);
/* The plan's numbers: steps, kept steps, their bytes, the shared region's bytes, the
 * earliest step holding a trainable tensor (n_steps: none), and the frozen weights held as
 * fp32 copies for the run and their bytes. */
typedef struct {
    int n_steps, n_kept, first_train;
    size_t kept_bytes, shared_bytes;
    int n_wcached;
    size_t wcache_bytes;
} UnetTrainInfo;
void unet_train_info(const UnetTrain *t, UnetTrainInfo *info);
size_t unet_train_floats(const UnetTrain *t); /* floats of its allocation */
/* out [B, Cout, H, W] of sample [B, Cin, H, W], timesteps [B], ctx [B, S, X]; the three inputs
 * must stay alive and unchanged until unet_train_backward. */
DbStatus unet_train_forward(UnetTrain *t, float *out, const float *sample, const float *timesteps,
                            const float *ctx, DbError *err);
/* With dout [B, Cout, H, W] = d loss / d out: accumulates the view's parameter gradients and
 * dsample [B, Cin, H, W], dctx [B, S, X] (either may be NULL). With both NULL and neither the
 * time-embedding MLP nor conv_in trainable, the blocks below the earliest trainable one are
 * neither recomputed nor run backward (with dctx: below the earliest transformer too). */
DbStatus unet_train_backward(UnetTrain *t, float *dsample, float *dctx, const float *dout,
                             DbError *err);
void unet_train_free(UnetTrain *t);

#endif
