/* dreambooth info MODEL [--json]. SPDX-License-Identifier: GPL-3.0-or-later */
#include <inttypes.h>
#include <stdio.h>

#include "cli.h"

static const char *family_name(DbFamily f) { return f == DB_FAMILY_SD2 ? "sd2" : "sd1"; }
static const char *layout_name(DbLayout l)
{
    return l == DB_LAYOUT_SINGLE_FILE ? "single-file" : "diffusers";
}
static const char *prediction_name(DbPrediction p)
{
    return p == DB_PRED_V ? "v_prediction" : p == DB_PRED_EPS ? "epsilon" : "unknown";
}

/* 859520964 -> "859,520,964" */
static const char *grouped(int64_t v, char *buf, size_t n)
{
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%" PRId64, v);
    size_t o = 0;
    for (int i = 0; i < len && o + 2 < n; i++) {
        buf[o++] = digits[i];
        int left = len - 1 - i;
        if (left > 0 && left % 3 == 0 && digits[i] != '-') buf[o++] = ',';
    }
    buf[o] = '\0';
    return buf;
}

static void print_json(const char *path, const DbModelInfo *in)
{
    g_autofree char *p = g_strescape(path, NULL);
    g_autofree char *tok = in->tokenizer_source ? g_strescape(in->tokenizer_source, NULL) : NULL;
    g_autofree char *src = in->prediction_source ? g_strescape(in->prediction_source, NULL) : NULL;
    printf("{\"model\": \"%s\", \"family\": \"%s\", \"layout\": \"%s\", \"storage_dtype\": \"%s\", "
           "\"prediction\": \"%s\", \"prediction_source\": \"%s\", ",
           p, family_name(in->family), layout_name(in->layout), in->storage_dtype,
           prediction_name(in->prediction), src ? src : "");
    if (tok)
        printf("\"tokenizer\": \"%s\", ", tok);
    else
        printf("\"tokenizer\": null, ");
    printf("\"params\": {\"text_encoder\": %" PRId64 ", \"unet\": %" PRId64 ", \"vae\": %" PRId64
           "}, \"text_encoder\": {\"hidden\": %d, \"layers\": %d, \"heads\": %d}, "
           "\"unet\": {\"in_channels\": %d, \"cross_attention_dim\": %d}, "
           "\"vae\": {\"latent_channels\": %d, \"scaling_factor\": %g}}\n",
           in->params_text_encoder, in->params_unet, in->params_vae, in->text_hidden,
           in->text_layers, in->text_heads, in->unet_in_channels, in->unet_cross_dim,
           in->vae_latent_channels, (double)in->vae_scaling_factor);
}

int cli_info(int argc, char **argv)
{
    g_auto(CliModelOptions) mo = {0};
    gboolean json = FALSE, check = FALSE;
    GOptionEntry entries[] = {
        {"json", 0, 0, G_OPTION_ARG_NONE, &json, "Print one JSON object", NULL},
        {"check", 0, 0, G_OPTION_ARG_NONE, &check,
         "Also read every weight and refuse NaN/Inf (other commands check each network on first use)",
         NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) ctx = g_option_context_new("MODEL - describe a Stable Diffusion model");
    g_option_context_add_main_entries(ctx, entries, NULL);
    cli_add_model_options(ctx, &mo);
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc != 2) {
        cli_error("info takes one MODEL (a diffusers folder or a .safetensors file)");
        return CLI_EXIT_USAGE;
    }
    DbModel *m = cli_open_model(argv[1], &mo);
    if (!m) return CLI_EXIT_FAIL;
    DbError err = {0};
    if (check && db_model_check_weights(m, &err) != DB_OK) {
        cli_error("%s", err.msg);
        db_model_free(m);
        return CLI_EXIT_FAIL;
    }
    DbModelInfo in;
    db_model_get_info(m, &in);
    if (json) {
        print_json(argv[1], &in);
    } else {
        char a[40], b[40], c[40];
        printf("model:          %s\n", argv[1]);
        printf("family:         %s\n", family_name(in.family));
        printf("layout:         %s\n", layout_name(in.layout));
        printf("storage dtype:  %s\n", in.storage_dtype);
        printf("prediction:     %s (%s)\n", prediction_name(in.prediction),
               in.prediction_source ? in.prediction_source : "");
        printf("tokenizer:      %s\n",
               in.tokenizer_source ? in.tokenizer_source
                                   : "none found (pass --tokenizer PATH to tokenize prompts)");
        printf("text encoder:   %s parameters (hidden %d, %d layers, %d heads)\n",
               grouped(in.params_text_encoder, a, sizeof a), in.text_hidden, in.text_layers,
               in.text_heads);
        printf("unet:           %s parameters (in channels %d, cross-attention dim %d)\n",
               grouped(in.params_unet, b, sizeof b), in.unet_in_channels, in.unet_cross_dim);
        printf("vae:            %s parameters (latent channels %d, scaling factor %g)\n",
               grouped(in.params_vae, c, sizeof c), in.vae_latent_channels,
               (double)in.vae_scaling_factor);
    }
    db_model_free(m);
    return 0;
}
