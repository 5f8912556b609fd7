/* dreambooth forward MODEL --net NET --in IN.safetensors --out OUT.safetensors
 *
 * One table row per network: its inputs are read from IN by name, its outputs written to
 * OUT (F32). Later networks (unet, vae-encoder, vae-decoder) and `backward` add rows.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "safetensors.h"

typedef DbStatus (*ForwardFn)(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                              DbError *err);

typedef struct {
    const char *name;
    ForwardFn run;
    const char *inputs;  /* for --help and messages */
    const char *outputs;
} ForwardNet;

/* input_ids: I64 or I32 [B, 77] -> ids [B*77] (g_free). */
static DbStatus read_ids(const SafetensorsFile *in, const char *name, int32_t **ids, int *batch,
                         DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, name);
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor '%s' (expected I64 or I32 [B, %d])",
                       in->path, name, DB_CONTEXT_LEN);
    char sh[128];
    if (e->t.ndim != 2 || e->t.shape[1] != DB_CONTEXT_LEN || e->t.shape[0] < 1 ||
        e->t.shape[0] > 4096)
        return db_fail(err, DB_ERR_ARG, "%s: '%s' has shape %s, expected [B, %d] with 1 <= B <= 4096",
                       in->path, name, tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh),
                       DB_CONTEXT_LEN);
    if (e->t.dtype != DB_DTYPE_I64 && e->t.dtype != DB_DTYPE_I32)
        return db_fail(err, DB_ERR_ARG, "%s: '%s' has dtype %s, expected I64 or I32", in->path,
                       name, dtype_name(e->t.dtype));
    size_t n = e->t.nelem;
    int32_t *out = g_new(int32_t, n);
    for (size_t i = 0; i < n; i++) {
        int64_t v;
        if (e->t.dtype == DB_DTYPE_I64) {
            memcpy(&v, (const char *)e->t.data + 8 * i, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const char *)e->t.data + 4 * i, 4);
            v = v32;
        }
        if (v < 0 || v > INT32_MAX) {
            g_free(out);
            return db_fail(err, DB_ERR_ARG, "%s: '%s' holds id %" PRId64 " at [%zu, %zu], out of range",
                           in->path, name, v, i / DB_CONTEXT_LEN, i % DB_CONTEXT_LEN);
        }
        out[i] = (int32_t)v;
    }
    *ids = out;
    *batch = (int)e->t.shape[0];
    return DB_OK;
}

static DbStatus run_text_encoder(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                                 DbError *err)
{
    int32_t *ids = NULL;
    int batch = 0;
    DbStatus st = read_ids(in, "input_ids", &ids, &batch, err);
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

/* An F32 tensor of ndim dims -> owned copy (g_free); shape into shape[]. */
static DbStatus read_f32(const SafetensorsFile *in, const char *name, int ndim, int64_t *shape,
                         float **out, DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, name);
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor '%s' (expected F32 with %d dims)", in->path,
                       name, ndim);
    char sh[128];
    if (e->t.dtype != DB_DTYPE_F32 || e->t.ndim != ndim)
        return db_fail(err, DB_ERR_ARG, "%s: '%s' is %s %s, expected F32 with %d dims", in->path,
                       name, dtype_name(e->t.dtype),
                       tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh), ndim);
    for (int i = 0; i < ndim; i++) {
        if (e->t.shape[i] < 1 || e->t.shape[i] > 65536)
            return db_fail(err, DB_ERR_ARG, "%s: '%s' has shape %s, out of range", in->path, name,
                           tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh));
        shape[i] = e->t.shape[i];
    }
    float *buf = g_try_new(float, e->t.nelem ? e->t.nelem : 1);
    if (!buf)
        return db_fail(err, DB_ERR_NOMEM, "%s: cannot allocate '%s'", in->path, name);
    memcpy(buf, e->t.data, e->t.nelem * sizeof(float));
    *out = buf;
    return DB_OK;
}

/* timestep: F32, F64, I64 or I32, shape [B], [1] or [] (broadcast to B) -> float [B]. */
static DbStatus read_timesteps(const SafetensorsFile *in, int batch, float **out, DbError *err)
{
    const SafetensorsEntry *e = safetensors_find(in, "timestep");
    if (!e)
        return db_fail(err, DB_ERR_ARG, "%s: no tensor 'timestep' (expected [B], [1] or [])",
                       in->path);
    char sh[128];
    if (!(e->t.ndim == 0 || (e->t.ndim == 1 && (e->t.shape[0] == batch || e->t.shape[0] == 1))))
        return db_fail(err, DB_ERR_ARG, "%s: 'timestep' has shape %s, expected [%d], [1] or []",
                       in->path, tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh), batch);
    DbDtype dt = e->t.dtype;
    if (dt != DB_DTYPE_F32 && dt != DB_DTYPE_F64 && dt != DB_DTYPE_I64 && dt != DB_DTYPE_I32)
        return db_fail(err, DB_ERR_ARG, "%s: 'timestep' has dtype %s, expected F32, F64, I64 or I32",
                       in->path, dtype_name(dt));
    float *t = g_new(float, batch);
    for (int b = 0; b < batch; b++) {
        size_t i = e->t.nelem == 1 ? 0 : (size_t)b;
        const char *src = (const char *)e->t.data + i * dtype_size(dt);
        if (dt == DB_DTYPE_F32) {
            memcpy(&t[b], src, 4);
        } else if (dt == DB_DTYPE_F64) {
            double v;
            memcpy(&v, src, 8);
            t[b] = (float)v; /* diffusers: timesteps.float() */
        } else if (dt == DB_DTYPE_I64) {
            int64_t v;
            memcpy(&v, src, 8);
            t[b] = (float)v;
        } else {
            int32_t v;
            memcpy(&v, src, 4);
            t[b] = (float)v;
        }
    }
    *out = t;
    return DB_OK;
}

static int progress_quiet(void *user, double fraction, const char *stage) { return 0; }

static DbStatus run_unet(DbModel *m, const SafetensorsFile *in, SafetensorsWriter *out,
                         DbError *err)
{
    DbModelInfo info;
    db_model_get_info(m, &info);
    int64_t ss[4], cs[3];
    float *sample = NULL, *ctx = NULL, *t = NULL, *res = NULL;
    DbStatus st = read_f32(in, "sample", 4, ss, &sample, err);
    if (st == DB_OK) st = read_f32(in, "encoder_hidden_states", 3, cs, &ctx, err);
    if (st == DB_OK && ss[1] != info.unet_in_channels)
        st = db_fail(err, DB_ERR_ARG, "%s: 'sample' has %d channels, the UNet takes %d", in->path,
                     (int)ss[1], info.unet_in_channels);
    if (st == DB_OK && (cs[0] != ss[0] || cs[2] != info.unet_cross_dim))
        st = db_fail(err, DB_ERR_ARG,
                     "%s: 'encoder_hidden_states' must be [%d, S, %d], got [%d, %d, %d]",
                     in->path, (int)ss[0], info.unet_cross_dim, (int)cs[0], (int)cs[1], (int)cs[2]);
    if (st == DB_OK) st = read_timesteps(in, (int)ss[0], &t, err);
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
    DbStatus st = read_f32(in, "sample", 4, s, &img, err);
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
    DbStatus st = read_f32(in, "latent", 4, s, &lat, err);
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
    {"text-encoder", run_text_encoder, "input_ids I64|I32 [B,77]", "last_hidden_state F32 [B,77,D]"},
    {"unet", run_unet,
     "sample F32 [B,4,h,w], timestep F32|F64|I64|I32 [B]|[1]|[], encoder_hidden_states F32 [B,S,D]",
     "sample F32 [B,4,h,w]"},
    {"vae-encoder", run_vae_encoder, "sample F32 [B,3,H,W] in [-1,1]",
     "mean, logvar F32 [B,4,H/f,W/f] (unscaled)"},
    {"vae-decoder", run_vae_decoder, "latent F32 [B,4,h,w] (unscaled)", "sample F32 [B,3,h*f,w*f]"},
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
        if (strcmp(spec->name, t[i].net) || !e || e->t.ndim < 2) continue;
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
    GOptionEntry entries[] = {
        {"net", 0, 0, G_OPTION_ARG_STRING, &net, "Network: text-encoder, unet, vae-encoder, vae-decoder", "NET"},
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
    GString *desc = g_string_new("Networks (inputs -> outputs):\n");
    for (size_t i = 0; i < G_N_ELEMENTS(nets); i++)
        g_string_append_printf(desc, "  %-14s %s -> %s\n", nets[i].name, nets[i].inputs,
                               nets[i].outputs);
    g_option_context_set_description(ctx, desc->str);
    g_string_free(desc, TRUE);
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc != 2 || !net || !in_path || !out_path) {
        cli_error("forward needs MODEL, --net NET, --in IN.safetensors and --out OUT.safetensors");
        return CLI_EXIT_USAGE;
    }
    const ForwardNet *spec = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(nets); i++)
        if (!strcmp(net, nets[i].name)) spec = &nets[i];
    if (!spec) {
        cli_error("--net: unknown network '%s' (available: text-encoder, unet, vae-encoder, vae-decoder)", net);
        return CLI_EXIT_USAGE;
    }
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
    safetensors_writer_meta(w, "net", spec->name);
    DbStatus st = spec->run(m, in, w, &err);
    if (st == DB_OK) st = safetensors_writer_save(w, out_path, &err);
    if (st != DB_OK) cli_error("%s", err.msg);
    safetensors_writer_free(w);
    db_model_free(m);
    safetensors_close(in);
    return st == DB_OK ? 0 : CLI_EXIT_FAIL;
}
