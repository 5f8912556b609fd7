/* dreambooth encode-image MODEL IMAGE --out LATENT.safetensors [--size WxH]
 *
 * Loads an image (image_load.c: any GEGL format, alpha over white, center crop + resample),
 * runs the VAE encoder and writes mean, logvar [1, C, H/f, W/f] (unscaled, as forward
 * --net vae-encoder) and latent = mean x scaling_factor (the distribution's mode, scaled as
 * the UNet sees it: diffusers' latent_dist.mode() * vae.config.scaling_factor).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <gegl.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "image_load.h"
#include "memory_estimate.h"
#include "safetensors.h"

static int parse_size(const char *s, int *w, int *h)
{
    char tail;
    return s && sscanf(s, "%dx%d%c", w, h, &tail) == 2;
}

int cli_encode_image(int argc, char **argv)
{
    g_auto(CliModelOptions) mo = {0};
    g_autofree char *out_path = NULL;
    g_autofree char *size_s = NULL;
    gboolean with_image = FALSE, force = FALSE;
    int tile = -1;
    GOptionEntry entries[] = {
        {"out", 'o', 0, G_OPTION_ARG_FILENAME, &out_path, "Output tensors (.safetensors)", "LATENT"},
        {"size", 0, 0, G_OPTION_ARG_STRING, &size_s,
         "Target size, multiples of 8 in 8..4096 (default: the image's size rounded down to "
         "multiples of 8); the image is center-cropped to this aspect and resampled", "WxH"},
        {"with-image", 0, 0, G_OPTION_ARG_NONE, &with_image,
         "Also write the encoder input 'image' F32 [1, 3, H, W] in [-1, 1]", NULL},
        {"tile", 0, 0, G_OPTION_ARG_INT, &tile,
         "VAE tile size in image pixels (0 = untiled; default: automatic)", "N"},
        {"force", 0, 0, G_OPTION_ARG_NONE, &force, "Run even when the memory estimate exceeds what is available", NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MODEL IMAGE - encode an image into VAE latents");
    g_option_context_add_main_entries(ctx, entries, NULL);
    cli_add_model_options(ctx, &mo);
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc != 3 || !out_path) {
        cli_error("encode-image needs MODEL, IMAGE and --out LATENT.safetensors (see --help)");
        return CLI_EXIT_USAGE;
    }
    int w = 0, h = 0;
    if (size_s && (!parse_size(size_s, &w, &h) || w < 8 || h < 8 || w > 4096 || h > 4096 ||
                   w % 8 || h % 8)) {
        cli_error("--size: '%s' is out of range (WxH, multiples of 8 in 8..4096)", size_s);
        return CLI_EXIT_USAGE;
    }
    if (tile < -1) {
        cli_error("--tile: %d is out of range (-1 automatic, 0 untiled, or a multiple of 8)", tile);
        return CLI_EXIT_USAGE;
    }
    DbModel *m = cli_open_model(argv[1], &mo);
    if (!m) return CLI_EXIT_FAIL;
    gegl_init(NULL, NULL);
    char msg[DB_ERROR_MSG_MAX];
    int iw, ih;
    if (image_probe(argv[2], &iw, &ih, msg, sizeof msg) != 0) {
        cli_error("%s", msg);
        db_model_free(m);
        return CLI_EXIT_FAIL;
    }
    int f, cin, z, cout;
    db_vae_dims(m, &f, &cin, &z, &cout);
    if (!w) {
        w = iw / 8 * 8 > 4096 ? 4096 : iw / 8 * 8;
        h = ih / 8 * 8 > 4096 ? 4096 : ih / 8 * 8;
    }
    int rc = CLI_EXIT_FAIL;
    float *img = NULL, *mean = NULL, *logvar = NULL;
    SafetensorsWriter *wr = NULL;
    DbError err;
    db_error_clear(&err);
    DbMemoryEstimate est;
    if (w % f || h % f) {
        cli_error("--size: %dx%d is not a multiple of the VAE's factor %d", w, h, f);
        rc = CLI_EXIT_USAGE;
        goto done;
    }
    DbVaeOptions vo = {tile, 0, 0};
    if (db_estimate_memory(m, DB_TASK_VAE_ENCODE, 1, w, h, 0, &vo, &est) &&
        cli_check_memory(&est, force) != 0)
        goto done;
    int gw, gh;
    if (image_load_rgb(argv[2], w, h, &img, &gw, &gh, msg, sizeof msg) != 0) {
        cli_error("%s", msg);
        goto done;
    }
    size_t n = (size_t)z * (size_t)(h / f) * (size_t)(w / f);
    mean = g_new(float, n);
    logvar = g_new(float, n);
    DbStatus st = db_vae_encode(m, img, 1, h, w, mean, logvar, &vo, NULL, NULL, &err);
    wr = safetensors_writer_new();
    safetensors_writer_meta(wr, "producer", "dreambooth encode-image");
    safetensors_writer_meta(wr, "source", argv[2]);
    int64_t ls[4] = {1, z, h / f, w / f}, is[4] = {1, 3, h, w};
    if (st == DB_OK) st = safetensors_writer_add(wr, "mean", DB_DTYPE_F32, 4, ls, mean, &err);
    if (st == DB_OK) st = safetensors_writer_add(wr, "logvar", DB_DTYPE_F32, 4, ls, logvar, &err);
    if (st == DB_OK) {
        DbModelInfo info;
        db_model_get_info(m, &info);
        for (size_t i = 0; i < n; i++) mean[i] *= info.vae_scaling_factor;
        st = safetensors_writer_add(wr, "latent", DB_DTYPE_F32, 4, ls, mean, &err);
    }
    if (st == DB_OK && with_image)
        st = safetensors_writer_add(wr, "image", DB_DTYPE_F32, 4, is, img, &err);
    if (st == DB_OK) st = safetensors_writer_save(wr, out_path, &err);
    if (st != DB_OK) cli_error("%s", err.msg);
    else rc = 0;
done:
    safetensors_writer_free(wr);
    g_free(logvar);
    g_free(mean);
    g_free(img);
    db_model_free(m);
    return rc;
}
