/* dreambooth init-model --arch ARCH --out PATH [--dtype f32|f16|bf16]
 *   [--layout diffusers|single-file] [--seed N] [--tokenizer-from GZ] [--force] [--quiet]
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static int show_progress(void *user, double fraction, const char *stage)
{
    int *last = user;
    int pct = (int)(fraction * 100.0);
    if (pct != *last) {
        *last = pct;
        fprintf(stderr, "\r%s: %3d%%", stage, pct);
        if (pct >= 100) fputc('\n', stderr);
        fflush(stderr);
    }
    return 0;
}

int cli_init(int argc, char **argv)
{
    char *arch = NULL, *out = NULL, *dtype = NULL, *layout = NULL, *tok = NULL;
    gint64 seed = 0;
    gboolean force = FALSE, quiet = FALSE;
    GOptionEntry entries[] = {
        {"arch", 0, 0, G_OPTION_ARG_STRING, &arch,
         "Architecture: sd15, sd21 (768, v-prediction; sd21-v is the same), sd21-base, tiny-sd1, tiny-sd2", "ARCH"},
        {"out", 0, 0, G_OPTION_ARG_FILENAME, &out,
         "Output: a folder (diffusers) or a .safetensors file (single-file)", "PATH"},
        {"dtype", 0, 0, G_OPTION_ARG_STRING, &dtype, "Storage dtype (default f32)", "f32|f16|bf16"},
        {"layout", 0, 0, G_OPTION_ARG_STRING, &layout, "Layout (default diffusers)", "diffusers|single-file"},
        {"seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Random seed, 0 or more (default 0)", "N"},
        {"tokenizer-from", 0, 0, G_OPTION_ARG_FILENAME, &tok,
         "OpenAI's bpe_simple_vocab_16e6.txt.gz for the tokenizer/ folder (default: the user data folder's dreambooth/)", "GZ"},
        {"force", 0, 0, G_OPTION_ARG_NONE, &force, "Replace an existing model", NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &quiet, "No progress output (shown only on a terminal anyway)", NULL},
        G_OPTION_ENTRY_NULL};
    GOptionContext *ctx = g_option_context_new("- write a random-weight Stable Diffusion model");
    g_option_context_add_main_entries(ctx, entries, NULL);
    int rc = CLI_EXIT_USAGE;
    DbInitModelOptions o = {0};
    if (!cli_parse(ctx, &argc, &argv)) goto out;
    if (argc > 1) {
        cli_error("init-model: unexpected argument '%s' (see --help)", argv[1]);
        goto out;
    }
    if (!arch || !out) {
        cli_error("init-model: --arch and --out are required (see --help)");
        goto out;
    }
    if (seed < 0) {
        cli_error("--seed: %" G_GINT64_FORMAT " is negative (0 to %" G_GINT64_FORMAT ")", seed, G_MAXINT64);
        goto out;
    }
    if (!layout || !strcmp(layout, "diffusers")) o.layout = DB_LAYOUT_DIFFUSERS;
    else if (!strcmp(layout, "single-file")) o.layout = DB_LAYOUT_SINGLE_FILE;
    else {
        cli_error("--layout: '%s' is not one of diffusers, single-file", layout);
        goto out;
    }
    o.dtype = dtype;
    o.seed = (uint64_t)seed;
    o.tokenizer_from = tok;
    o.force = force;
    DbInitModelReport rep;
    DbError err;
    db_error_clear(&err);
    int last = -1;
    int progress = !quiet && isatty(STDERR_FILENO);
    if (db_init_model(arch, out, &o, &rep, progress ? show_progress : NULL, &last, &err) != DB_OK) {
        if (progress && last >= 0) fputc('\n', stderr);
        cli_error("%s", err.msg);
        rc = err.status == DB_ERR_ARG ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
        goto out;
    }
    if (rep.note[0]) cli_error("warning: %s", rep.note);
    printf("%s: %s %s, %s, seed %" G_GINT64_FORMAT ": text encoder %" PRId64 ", unet %" PRId64
           ", vae %" PRId64 " parameters, %.1f MiB%s\n",
           out, arch, o.layout == DB_LAYOUT_SINGLE_FILE ? "single-file" : "diffusers",
           dtype ? dtype : "f32", seed, rep.params_text_encoder, rep.params_unet, rep.params_vae,
           (double)rep.bytes / (1024.0 * 1024.0), rep.tokenizer_written ? ", tokenizer" : "");
    rc = 0;
out:
    g_option_context_free(ctx);
    g_free(arch);
    g_free(out);
    g_free(dtype);
    g_free(layout);
    g_free(tok);
    return rc;
}
