/* dreambooth forward MODEL --net NET --in IN.safetensors --out OUT.safetensors
 *
 * One table row per network: its inputs are read from IN by name, its outputs written to
 * OUT (F32). Later networks (unet, vae-encoder, vae-decoder) and `backward` add rows.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_io.h"
#include "safetensors.h"

typedef DbStatus (*ForwardFn)(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                              DbError *err);

typedef struct {
    CliNetDoc doc; /* first: the cli_net_* helpers read the table through it */
    ForwardFn run;
} ForwardNet;

static DbStatus run_text_encoder(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                                 DbError *err)
{
    int32_t *ids = NULL;
    int batch = 0;
    DbStatus st = cli_read_ids(in, 0, &ids, &batch, err);
    if (st != DB_OK) return st;
    DbModelInfo info;
    db_model_get_info(m, &info);
    size_t n = (size_t)batch * DB_CONTEXT_LEN * (size_t)info.text_hidden;
    float *hidden = g_try_new(float, n);
    if (!hidden) {
        g_free(ids);
        return db_fail(err, DB_ERR_NOMEM, "text encoder: cannot allocate %zu floats", n);
    }
    st = db_text_encoder_forward(m, ids, batch, hidden, err);
    if (st == DB_OK) {
        int64_t shape[3] = {batch, DB_CONTEXT_LEN, info.text_hidden};
        st = safetensors_writer_add(out, "last_hidden_state", DB_DTYPE_F32, 3, shape, hidden, err);
    }
    g_free(hidden);
    g_free(ids);
    return st;
}

static int progress_quiet(void *user, double fraction, const char *stage) { return 0; }

static DbStatus run_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                         DbError *err)
{
    DbModelInfo info;
    db_model_get_info(m, &info);
    int64_t ss[4], cs[3];
    float *sample = NULL, *ctx = NULL, *t = NULL, *res = NULL;
    DbStatus st = cli_read_f32(in, "sample", 4, ss, &sample, err);
    if (st == DB_OK) st = cli_read_f32(in, "encoder_hidden_states", 3, cs, &ctx, err);
    if (st == DB_OK && ss[1] != info.unet_in_channels)
        st = db_fail(err, DB_ERR_ARG, "%s: 'sample' has %d channels, the UNet takes %d", in->path,
                     (int)ss[1], info.unet_in_channels);
    if (st == DB_OK && (cs[0] != ss[0] || cs[2] != info.unet_cross_dim))
        st = db_fail(err, DB_ERR_ARG,
                     "%s: 'encoder_hidden_states' must be [%d, S, %d], got [%d, %d, %d]",
                     in->path, (int)ss[0], info.unet_cross_dim, (int)cs[0], (int)cs[1], (int)cs[2]);
    if (st == DB_OK) st = cli_read_timesteps(in, (size_t)ss[0], &t, err);
    const int oc = db_unet_out_channels(m);
    const size_t n = (size_t)ss[0] * (size_t)oc * (size_t)ss[2] * (size_t)ss[3];
    if (st == DB_OK && !(res = g_try_new(float, n)))
        st = db_fail(err, DB_ERR_NOMEM, "UNet: cannot allocate %zu floats", n);
    if (st == DB_OK)
        st = db_unet_forward(m, sample, t, ctx, (int)ss[0], (int)ss[2], (int)ss[3], (int)cs[1],
                             res, progress_quiet, NULL, err);
    if (st == DB_OK) {
        int64_t shape[4] = {ss[0], oc, ss[2], ss[3]};
        st = safetensors_writer_add(out, "sample", DB_DTYPE_F32, 4, shape, res, err);
    }
    g_free(res);
    g_free(t);
    g_free(ctx);
    g_free(sample);
    return st;
}

/* VAE tiling from --tile / --tile-overlap (image pixels; -1 = automatic, 0 = off). */
static int vae_tile = -1, vae_overlap = 0;

static DbStatus run_vae_encoder(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                                DbError *err)
{
    int f, cin, z, cout;
    db_vae_dims(m, &f, &cin, &z, &cout);
    int64_t s[4];
    float *img = NULL, *mean = NULL, *logvar = NULL;
    DbStatus st = cli_read_f32(in, "sample", 4, s, &img, err);
    if (st == DB_OK && (s[1] != cin || s[2] % f || s[3] % f))
        st = db_fail(err, DB_ERR_ARG, "%s: 'sample' must be [B, %d, H, W] with H, W multiples "
                     "of %d, got [%d, %d, %d, %d]", in->path, cin, f, (int)s[0], (int)s[1],
                     (int)s[2], (int)s[3]);
    const size_t n = st == DB_OK ? (size_t)s[0] * (size_t)z * (size_t)(s[2] / f) * (size_t)(s[3] / f) : 0;
    if (st == DB_OK && (!(mean = g_try_new(float, n)) || !(logvar = g_try_new(float, n))))
        st = db_fail(err, DB_ERR_NOMEM, "vae encoder: cannot allocate 2 x %zu floats", n);
    DbVaeOptions o = {vae_tile, vae_overlap, 0};
    if (st == DB_OK)
        st = db_vae_encode(m, img, (int)s[0], (int)s[2], (int)s[3], mean, logvar, &o,
                           progress_quiet, NULL, err);
    int64_t shape[4] = {s[0], z, s[2] / f, s[3] / f};
    if (st == DB_OK) st = safetensors_writer_add(out, "mean", DB_DTYPE_F32, 4, shape, mean, err);
    if (st == DB_OK)
        st = safetensors_writer_add(out, "logvar", DB_DTYPE_F32, 4, shape, logvar, err);
    g_free(logvar);
    g_free(mean);
    g_free(img);
    return st;
}

static DbStatus run_vae_decoder(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                                DbError *err)
{
    int f, cin, z, cout;
    db_vae_dims(m, &f, &cin, &z, &cout);
    int64_t s[4];
    float *lat = NULL, *img = NULL;
    DbStatus st = cli_read_f32(in, "latent", 4, s, &lat, err);
    if (st == DB_OK && s[1] != z)
        st = db_fail(err, DB_ERR_ARG, "%s: 'latent' has %d channels, the VAE takes %d", in->path,
                     (int)s[1], z);
    const size_t n = st == DB_OK ? (size_t)s[0] * (size_t)cout * (size_t)(s[2] * f) * (size_t)(s[3] * f) : 0;
    if (st == DB_OK && !(img = g_try_new(float, n)))
        st = db_fail(err, DB_ERR_NOMEM, "vae decoder: cannot allocate %zu floats", n);
    DbVaeOptions o = {vae_tile, vae_overlap, 0};
    if (st == DB_OK)
        st = db_vae_decode(m, lat, (int)s[0], (int)s[2], (int)s[3], img, &o, progress_quiet,
                           NULL, err);
    int64_t shape[4] = {s[0], cout, s[2] * f, s[3] * f};
    if (st == DB_OK) st = safetensors_writer_add(out, "sample", DB_DTYPE_F32, 4, shape, img, err);
    g_free(img);
    g_free(lat);
    return st;
}

static const ForwardNet nets[] = {
    {{"text-encoder", "input_ids I64|I32 [B,77]", "last_hidden_state F32 [B,77,D]"},
     run_text_encoder},
    {{"unet",
      "sample F32 [B,4,h,w], timestep F32|F64|I64|I32 [B]|[1]|[], encoder_hidden_states F32 [B,S,D]",
      "sample F32 [B,4,h,w]"},
     run_unet},
    {{"vae-encoder", "sample F32 [B,3,H,W] in [-1,1]", "mean, logvar F32 [B,4,H/f,W/f] (unscaled)"},
     run_vae_encoder},
    {{"vae-decoder", "latent F32 [B,4,h,w] (unscaled)", "sample F32 [B,3,h*f,w*f]"},
     run_vae_decoder},
};

static gboolean force_memory = FALSE;

/* memory_estimate.h from the input's batch and size; 0 = fits (or --force, or unknown). */
static int check_forward_memory(const DbModel *m, const ForwardNet *spec, const SafetensorsFile *in)
{
    static const struct { const char *net, *tensor; DbTask task; } t[] = {
        {"text-encoder", "input_ids", DB_TASK_TEXT_ENCODER}, {"unet", "sample", DB_TASK_UNET},
        {"vae-encoder", "sample", DB_TASK_VAE_ENCODE}, {"vae-decoder", "latent", DB_TASK_VAE_DECODE}};
    for (size_t i = 0; i < G_N_ELEMENTS(t); i++) {
        const SafetensorsEntry *e = safetensors_find(in, t[i].tensor);
        if (strcmp(spec->doc.name, t[i].net) || !e || e->t.ndim < 2) continue;
        int f = db_vae_scale_factor(m), nd = e->t.ndim;
        int64_t b = e->t.shape[0], h = nd == 4 ? e->t.shape[2] : 0, w = nd == 4 ? e->t.shape[3] : 0;
        if (b > 4096 || h > 65536 || w > 65536) return 0; /* read_* refuses these itself */
        if (t[i].task == DB_TASK_VAE_DECODE) { h *= f; w *= f; }
        DbVaeOptions vo = {vae_tile, vae_overlap, 0};
        DbMemoryEstimate est;
        if (db_estimate_memory(m, t[i].task, (int)b, (int)w, (int)h, 0.0f, &vo, &est)) {
            if (g_getenv("DREAMBOOTH_PRINT_ESTIMATE"))
                fprintf(stderr, "dreambooth: estimate %.3f GiB\n", est.bytes / 1073741824.0);
            return cli_check_memory(&est, force_memory);
        }
    }
    return 0;
}

int cli_forward(int argc, char **argv)
{
    g_auto(CliModelOptions) mo = {0};
    g_autofree char *net = NULL;
    g_autofree char *in_path = NULL;
    g_autofree char *out_path = NULL;
    g_autofree char *names = cli_net_names(CLI_NET_TABLE(nets));
    g_autofree char *net_help = g_strdup_printf("Network: %s", names);
    GOptionEntry entries[] = {
        {"net", 0, 0, G_OPTION_ARG_STRING, &net, net_help, "NET"},
        {"in", 0, 0, G_OPTION_ARG_FILENAME, &in_path, "Input tensors (.safetensors)", "IN"},
        {"out", 0, 0, G_OPTION_ARG_FILENAME, &out_path, "Output tensors (.safetensors)", "OUT"},
        {"tile", 0, 0, G_OPTION_ARG_INT, &vae_tile,
         "VAE tile size in image pixels (0 = untiled; default: automatic)", "N"},
        {"tile-overlap", 0, 0, G_OPTION_ARG_INT, &vae_overlap,
         "VAE tile overlap in image pixels (default: tile/4)", "N"},
        {"force", 0, 0, G_OPTION_ARG_NONE, &force_memory, "Run even when the memory estimate exceeds what is available", NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MODEL - run one network on inputs from a safetensors file");
    g_option_context_add_main_entries(ctx, entries, NULL);
    cli_add_model_options(ctx, &mo);
    cli_net_describe(ctx, CLI_NET_TABLE(nets));
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc != 2 || !net || !in_path || !out_path) {
        cli_error("forward needs MODEL, --net NET, --in IN.safetensors and --out OUT.safetensors");
        return CLI_EXIT_USAGE;
    }
    const ForwardNet *spec = cli_net_find(net, CLI_NET_TABLE(nets));
    if (!spec) return CLI_EXIT_USAGE;
    DbError err;
    db_error_clear(&err);
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
    if (check_forward_memory(m, spec, in) != 0) {
        db_model_free(m);
        safetensors_close(in);
        return CLI_EXIT_FAIL;
    }
    SafetensorsWriter *w = safetensors_writer_new();
    safetensors_writer_meta(w, "producer", "dreambooth forward");
    safetensors_writer_meta(w, "net", spec->doc.name);
    DbStatus st = spec->run(m, in, w, &err);
    if (st == DB_OK) st = safetensors_writer_save(w, out_path, &err);
    if (st != DB_OK) cli_error("%s", err.msg);
    safetensors_writer_free(w);
    db_model_free(m);
    safetensors_close(in);
    return st == DB_OK ? 0 : CLI_EXIT_FAIL;
}
