/* `dreambooth backward --net unet`: one training forward and backward of the UNet (the table
 * row of cli_backward.c calls cli_backward_unet).
 *   IN:  sample F32 [B, Cin, h, w], timestep F32|F64|I64|I32 [B]|[1]|[],
 *        encoder_hidden_states F32 [B, S, X], grad_output F32 [B, Cout, h, w]
 *   OUT: sample (the forward output), grad.sample, grad.encoder_hidden_states, and
 *        grad.<param> for every trainable tensor (diffusers names; LoRA as PEFT names them).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <string.h>

#include "cli.h"
#include "cli_io.h"
#include "safetensors.h"
#include "train_params.h"
#include "unet.h"

DbStatus cli_backward_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                           const TrainSpec *spec, const char *lora_init, int checkpointing,
                           DbError *err);

DbStatus cli_backward_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                           const TrainSpec *spec, const char *lora_init, int checkpointing,
                           DbError *err)
{
    const UnetConfig *c = &m->unet;
    int64_t ss[4] = {0}, cs[3] = {0}, gs[4] = {0};
    float *sample = NULL, *ctx = NULL, *t = NULL, *dout = NULL, *res = NULL, *dsample = NULL;
    float *dctx = NULL;
    UnetState *state = NULL;
    TrainParams *tp = NULL;
    UnetParams *view = NULL;
    UnetTrain *tr = NULL;
    const int64_t mult = (int64_t)1 << (c->n_blocks - 1);
    DbStatus st = cli_read_f32(in, "sample", 4, ss, &sample, err);
    if (st == DB_OK) st = cli_read_f32(in, "encoder_hidden_states", 3, cs, &ctx, err);
    if (st == DB_OK) st = cli_read_f32(in, "grad_output", 4, gs, &dout, err);
    if (st == DB_OK && (ss[1] != c->in_channels || ss[2] % mult || ss[3] % mult || ss[0] > 1024 ||
                        ss[2] > 4096 || ss[3] > 4096))
        st = db_fail(err, DB_ERR_ARG, "%s: 'sample' must be [B <= 1024, %d, h, w] with h, w "
                     "multiples of %d up to 4096", in->path, c->in_channels, (int)mult);
    if (st == DB_OK && (cs[0] != ss[0] || cs[2] != c->cross_dim || cs[1] > 4096))
        st = db_fail(err, DB_ERR_ARG, "%s: 'encoder_hidden_states' must be [%d, S <= 4096, %d]",
                     in->path, (int)ss[0], c->cross_dim);
    if (st == DB_OK && (gs[0] != ss[0] || gs[1] != c->out_channels || gs[2] != ss[2] ||
                        gs[3] != ss[3]))
        st = db_fail(err, DB_ERR_ARG, "%s: 'grad_output' must be [%d, %d, %d, %d]", in->path,
                     (int)ss[0], c->out_channels, (int)ss[2], (int)ss[3]);
    const UnetDims d = {(size_t)ss[0], (size_t)ss[2], (size_t)ss[3], (size_t)cs[1]};
    if (st == DB_OK) st = cli_read_timesteps(in, d.B, &t, err);
    if (st == DB_OK) st = model_check_finite(m, NET_UNET, err);
    if (st == DB_OK) st = unet_state_build(&state, m, 0, err);
    if (st == DB_OK) st = train_params_new(&tp, m, NET_UNET, spec, err);
    if (st == DB_OK && lora_init) st = train_params_load_lora(tp, lora_init, err);
    if (st == DB_OK && !(view = g_try_new0(UnetParams, 1)))
        st = db_fail(err, DB_ERR_NOMEM, "UNet: out of memory");
    if (st == DB_OK) st = unet_train_view_build(view, state, m, tp, err);
    if (st == DB_OK)
        st = unet_train_new(&tr, view, c, &d, train_params_lora_max_rank(tp),
                            unet_state_wscratch_size(state),
                            checkpointing ? UNET_CKPT_ALL : UNET_CKPT_NONE, err);
    const size_t n_out = d.B * (size_t)c->out_channels * d.H * d.W;
    if (st == DB_OK && (!(res = g_try_new(float, n_out)) ||
                        !(dsample = g_try_new0(float, d.B * (size_t)c->in_channels * d.H * d.W)) ||
                        !(dctx = g_try_new0(float, d.B * d.S * (size_t)c->cross_dim))))
        st = db_fail(err, DB_ERR_NOMEM, "UNet: cannot allocate the outputs");
    if (st == DB_OK) st = unet_train_forward(tr, res, sample, t, ctx, err);
    if (st == DB_OK) {
        train_params_zero_grads(tp);
        st = unet_train_backward(tr, dsample, dctx, dout, err);
    }
    if (st == DB_OK) st = safetensors_writer_add(out, "sample", DB_DTYPE_F32, 4, gs, res, err);
    if (st == DB_OK) st = safetensors_writer_add(out, "grad.sample", DB_DTYPE_F32, 4, ss, dsample, err);
    if (st == DB_OK)
        st = safetensors_writer_add(out, "grad.encoder_hidden_states", DB_DTYPE_F32, 3, cs, dctx,
                                    err);
    for (size_t i = 0; st == DB_OK && tp && i < train_params_count_tensors(tp); i++) {
        const TrainTensor *tt = train_params_tensor(tp, i);
        char *name = g_strconcat("grad.", tt->name, NULL);
        st = safetensors_writer_add(out, name, DB_DTYPE_F32, tt->ndim, tt->shape,
                                    train_params_grads(tp) + tt->offset, err);
        g_free(name);
    }
    unet_train_free(tr);
    train_params_free(tp);
    g_free(res), g_free(dsample), g_free(dctx);
    g_free(view);
    unet_state_free(state);
    g_free(sample), g_free(ctx), g_free(t), g_free(dout);
    return st;
}
