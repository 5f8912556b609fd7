/* dreambooth backward MODEL --net NET --in IN.safetensors --out OUT.safetensors
 *                   [--params GLOB[,GLOB...]] [--lora RANK[:ALPHA[:TARGETS]]]
 *                   [--lora-init FILE] [--seed N]
 *
 * One forward and one backward of one network, for tests against autograd. IN holds the
 * forward inputs (as `forward` reads them) and grad_output (the shape of the forward output);
 * OUT holds the forward output, grad.<input> for every float input and grad.<parameter> for
 * every trainable tensor (canonical diffusers names; LoRA tensors as PEFT names them,
 * <module>.lora_A.weight / .lora_B.weight), all F32. The trainable set comes from --params
 * (globs over canonical names, train_params.h) and --lora (adapters: rank, alpha = scale *
 * rank, target set attn | transformer | conv). --lora-init loads initial adapter values
 * (otherwise down is kaiming-uniform from --seed and up is zero, so down gets no gradient).
 * One table row per network, as cli_forward.c.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_io.h"
#include "clip.h"
#include "safetensors.h"
#include "train_params.h"

typedef struct {
    TrainSpec spec;
    const char *lora_init; /* NULL: kaiming/zero init */
    int checkpointing;     /* UNet: recompute blocks in backward (--no-checkpointing: 0) */
} BackwardOptions;

/* cli_backward_unet.c */
DbStatus cli_backward_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                           const TrainSpec *spec, const char *lora_init, int checkpointing,
                           DbError *err);

typedef DbStatus (*BackwardFn)(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                               const BackwardOptions *o, DbError *err);

typedef struct {
    CliNetDoc doc; /* first: the cli_net_* helpers read the table through it */
    BackwardFn run;
} BackwardNet;

/* grad_output: F32 of exactly ndim/shape -> pointer into the mapping (copied to be aligned). */
static DbStatus read_grad_output(const SafetensorsFile *in, int ndim, const int64_t *shape,
                                 float **out, DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, "grad_output");
    char got[128], want[128];
    tensor_shape_str(shape, ndim, want, sizeof want);
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor 'grad_output' (expected F32 %s)", in->path,
                       want);
    int same = e->t.dtype == DB_DTYPE_F32 && e->t.ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = e->t.shape[i] == shape[i];
    if (!same)
        return db_fail(err, DB_ERR_ARG, "%s: 'grad_output' is %s %s, expected F32 %s", in->path,
                       dtype_name(e->t.dtype),
                       tensor_shape_str(e->t.shape, e->t.ndim, got, sizeof got), want);
    if (!(*out = g_try_new(float, e->t.nelem ? e->t.nelem : 1)))
        return db_fail(err, DB_ERR_NOMEM, "%s: cannot allocate 'grad_output'", in->path);
    memcpy(*out, e->t.data, e->t.nelem * sizeof(float));
    return DB_OK;
}

/* grad.<name> for every tensor of tp. */
static DbStatus write_param_grads(SafetensorsWriter *out, TrainParams *tp, DbError *err)
{
    DbStatus st = DB_OK;
    for (size_t i = 0; i < train_params_count_tensors(tp) && st == DB_OK; i++) {
        const TrainTensor *t = train_params_tensor(tp, i);
        char *name = g_strconcat("grad.", t->name, NULL);
        st = safetensors_writer_add(out, name, DB_DTYPE_F32, t->ndim, t->shape,
                                    train_params_grads(tp) + t->offset, err);
        g_free(name);
    }
    return st;
}

static DbStatus run_text_encoder(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                                 const BackwardOptions *o, DbError *err)
{
    const ClipConfig *c = &m->clip;
    int32_t *ids = NULL;
    int batch = 0;
    float *dout = NULL, *hidden = NULL, *acts_mem = NULL, *scratch = NULL;
    ClipState *state = NULL;
    TrainParams *tp = NULL;
    ClipTrainView view = {0};
    int have_view = 0;
    DbStatus st = clip_config_check(c, err);
    if (st == DB_OK) st = cli_read_ids(in, c->vocab_size, &ids, &batch, err);
    const size_t B = (size_t)batch, n_out = B * DB_CONTEXT_LEN * (size_t)c->hidden;
    int64_t shape[3] = {batch, DB_CONTEXT_LEN, c->hidden};
    if (st == DB_OK) st = read_grad_output(in, 3, shape, &dout, err);
    if (st == DB_OK && !(o->spec.params && o->spec.params[0]) && o->spec.lora_rank == 0)
        st = db_fail(err, DB_ERR_ARG, "text encoder: its input is token ids, so there is no "
                     "input gradient: give --params and/or --lora");
    if (st == DB_OK) st = model_check_finite(m, NET_TEXT, err);
    if (st == DB_OK) st = clip_state_build(&state, m, err);
    if (st == DB_OK) st = train_params_new(&tp, m, NET_TEXT, &o->spec, err);
    if (st == DB_OK && o->lora_init) st = train_params_load_lora(tp, o->lora_init, err);
    if (st == DB_OK)
        st = clip_train_view_build(&view, clip_state_params(state), c, tp, err);
    have_view = st == DB_OK;
    const size_t R = tp ? train_params_lora_max_rank(tp) : 0;
    size_t n_acts = 0, n_scratch = 0;
    if (st == DB_OK) st = clip_acts_size(&n_acts, c, B, 1, R, err);
    if (st == DB_OK) st = clip_backward_scratch_size(&n_scratch, c, B, R, err);
    if (st == DB_OK && (!(acts_mem = g_try_new(float, n_acts)) ||
                        !(scratch = g_try_new(float, n_scratch)) ||
                        !(hidden = g_try_new(float, n_out))))
        st = db_fail(err, DB_ERR_NOMEM, "text encoder: cannot allocate %.1f MiB for activations",
                     (double)(n_acts + n_scratch + n_out) * sizeof(float) / 1048576.0);
    if (st == DB_OK) {
        ClipActs acts;
        clip_acts_carve(&acts, acts_mem, c, B, 1, R);
        clip_forward(hidden, &acts, ids, &view.p, c);
        train_params_zero_grads(tp);
        clip_backward(&view.g, &acts, dout, ids, &view.p, scratch, c);
        st = safetensors_writer_add(out, "last_hidden_state", DB_DTYPE_F32, 3, shape, hidden, err);
    }
    if (st == DB_OK) st = write_param_grads(out, tp, err);
    if (have_view) clip_train_view_free(&view);
    train_params_free(tp);
    clip_state_free(state);
    g_free(hidden);
    g_free(scratch);
    g_free(acts_mem);
    g_free(dout);
    g_free(ids);
    return st;
}

static DbStatus run_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                         const BackwardOptions *o, DbError *err)
{
    return cli_backward_unet(m, in, out, &o->spec, o->lora_init, o->checkpointing, err);
}

static const BackwardNet nets[] = {
    {{"text-encoder", "input_ids I64|I32 [B,77], grad_output F32 [B,77,D]",
      "last_hidden_state, grad.<param>"},
     run_text_encoder},
    {{"unet",
      "sample F32 [B,4,h,w], timestep [B]|[1]|[], encoder_hidden_states F32 [B,S,D], "
      "grad_output F32 [B,4,h,w]",
      "sample, grad.sample, grad.encoder_hidden_states, grad.<param>"},
     run_unet},
};

int cli_backward(int argc, char **argv)
{
    g_auto(CliModelOptions) mo = {0};
    g_autofree char *net = NULL, *in_path = NULL, *out_path = NULL, *params = NULL;
    g_autofree char *lora = NULL, *lora_init = NULL;
    gint64 seed = 0;
    gboolean no_ckpt = FALSE;
    g_autofree char *names = cli_net_names(CLI_NET_TABLE(nets));
    g_autofree char *net_help = g_strdup_printf("Network: %s", names);
    GOptionEntry entries[] = {
        {"net", 0, 0, G_OPTION_ARG_STRING, &net, net_help, "NET"},
        {"in", 0, 0, G_OPTION_ARG_FILENAME, &in_path, "Inputs and grad_output (.safetensors)", "IN"},
        {"out", 0, 0, G_OPTION_ARG_FILENAME, &out_path, "Output and gradients (.safetensors)", "OUT"},
        {"params", 0, 0, G_OPTION_ARG_STRING, &params,
         "Trainable parameters: comma-separated globs over diffusers names ('*' = all)", "GLOB"},
        {"lora", 0, 0, G_OPTION_ARG_STRING, &lora,
         "LoRA adapters: rank, alpha (default rank), targets attn|transformer|conv", "R[:A[:T]]"},
        {"lora-init", 0, 0, G_OPTION_ARG_FILENAME, &lora_init,
         "Initial LoRA values (PEFT names <module>.lora_A.weight / .lora_B.weight)", "FILE"},
        {"seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the LoRA down init (default 0)", "N"},
        {"no-checkpointing", 0, 0, G_OPTION_ARG_NONE, &no_ckpt,
         "UNet: keep every block's activations instead of recomputing them", NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MODEL - one forward and backward of one network (gradient tests)");
    g_option_context_add_main_entries(ctx, entries, NULL);
    cli_add_model_options(ctx, &mo);
    cli_net_describe(ctx, CLI_NET_TABLE(nets));
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc != 2 || !net || !in_path || !out_path) {
        cli_error("backward needs MODEL, --net NET, --in IN.safetensors and --out OUT.safetensors");
        return CLI_EXIT_USAGE;
    }
    const BackwardNet *spec = cli_net_find(net, CLI_NET_TABLE(nets));
    if (!spec) return CLI_EXIT_USAGE;
    DbError err;
    db_error_clear(&err);
    BackwardOptions o = {{params, 0, 0.0f, TRAIN_LORA_NONE, (uint64_t)seed}, lora_init, !no_ckpt};
    if (lora && train_lora_parse(&o.spec, lora, &err) != DB_OK) {
        cli_error("%s", err.msg);
        return CLI_EXIT_USAGE;
    }
    if (lora_init && !lora) {
        cli_error("--lora-init needs --lora");
        return CLI_EXIT_USAGE;
    }
    SafetensorsFile *in = NULL;
    if (safetensors_open(&in, in_path, &err) != DB_OK) {
        cli_error("%s", err.msg);
        return CLI_EXIT_FAIL;
    }
    DbModel *m = cli_open_model(argv[1], &mo);
    if (!m) {
        safetensors_close(in);
        return CLI_EXIT_FAIL;
    }
    SafetensorsWriter *w = safetensors_writer_new();
    safetensors_writer_meta(w, "producer", "dreambooth backward");
    safetensors_writer_meta(w, "net", spec->doc.name);
    DbStatus st = spec->run(m, in, w, &o, &err);
    if (st == DB_OK) st = safetensors_writer_save(w, out_path, &err);
    if (st != DB_OK) cli_error("%s", err.msg);
    safetensors_writer_free(w);
    db_model_free(m);
    safetensors_close(in);
    return st == DB_OK ? 0 : CLI_EXIT_FAIL;
}
