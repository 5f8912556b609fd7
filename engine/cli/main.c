/* dreambooth: command-line front end of libdreambooth.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} CliCommand;

static const CliCommand commands[] = {
    {"info", cli_info, "MODEL: family, layout, dtype, parameter counts, prediction type, tokenizer"},
    {"tokenize", cli_tokenize, "MODEL PROMPT...: print 77 token ids per prompt"},
    {"forward", cli_forward, "MODEL --net NET --in IN.safetensors --out OUT.safetensors: run one network"},
    {"backward", cli_backward, "MODEL --net NET --in IN.safetensors --out OUT.safetensors: gradients of one network"},
    {"init-model", cli_init, "--arch ARCH --out PATH: write a random-weight model (tests, demos)"},
    {"generate", cli_generate, "MODEL --prompt P --out DIR|FILE.png: txt2img to PNG files"},
    {"encode-image", cli_encode_image, "MODEL IMAGE --out LATENT.safetensors [--size WxH]: VAE-encode an image"},
};

void cli_error(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    fprintf(stderr, "dreambooth: %s\n", buf);
}

int cli_parse(GOptionContext *ctx, int *argc, char ***argv)
{
    GError *gerr = NULL;
    if (!g_option_context_parse(ctx, argc, argv, &gerr)) {
        cli_error("%s (see --help)", gerr->message);
        g_error_free(gerr);
        return 0;
    }
    return 1;
}

void cli_add_model_options(GOptionContext *ctx, CliModelOptions *o)
{
    GOptionEntry entries[] = {
        {"tokenizer", 0, 0, G_OPTION_ARG_FILENAME, &o->tokenizer,
         "Tokenizer: a folder with vocab.json and merges.txt, or bpe_simple_vocab_16e6.txt.gz", "PATH"},
        {"prediction", 0, 0, G_OPTION_ARG_STRING, &o->prediction,
         "Override the prediction type: eps or v", "eps|v"},
        {"weight-cache", 0, 0, G_OPTION_ARG_STRING, &o->weight_cache,
         "fp32 copies of a half-precision UNet's weights, kept between steps: auto (as memory "
         "allows, leaving 1 GiB), none (least memory: about 3.2 GiB less for SD 1.5, slower) or all",
         "auto|none|all"},
        {"threads", 0, 0, G_OPTION_ARG_INT, &o->threads, "Threads (default: all cores)", "N"},
        G_OPTION_ENTRY_NULL};
    o->threads = CLI_THREADS_UNSET; /* so that an explicit --threads 0 is refused */
    g_option_context_add_main_entries(ctx, entries, NULL);
}

void cli_model_options_clear(CliModelOptions *o)
{
    g_clear_pointer(&o->tokenizer, g_free);
    g_clear_pointer(&o->prediction, g_free);
    g_clear_pointer(&o->weight_cache, g_free);
}

DbModel *cli_open_model(const char *path, const CliModelOptions *o)
{
    DbError err;
    db_error_clear(&err);
    if (o->threads != CLI_THREADS_UNSET && (o->threads < 1 || o->threads > 1024)) {
        cli_error("--threads: %d is out of range (1..1024; leave it out for all cores)", o->threads);
        return NULL;
    }
    if (o->threads != CLI_THREADS_UNSET && db_set_threads(o->threads, &err) != DB_OK) {
        cli_error("--threads: %s", err.msg);
        return NULL;
    }
    DbModelOptions mo = {0};
    mo.tokenizer = o->tokenizer;
    if (o->prediction) {
        if (!strcmp(o->prediction, "eps") || !strcmp(o->prediction, "epsilon"))
            mo.prediction = DB_PRED_EPS;
        else if (!strcmp(o->prediction, "v") || !strcmp(o->prediction, "v_prediction"))
            mo.prediction = DB_PRED_V;
        else {
            cli_error("--prediction: expected eps or v, got '%s'", o->prediction);
            return NULL;
        }
    }
    if (o->weight_cache && db_weight_cache_from_name(o->weight_cache, &mo.weight_cache)) {
        cli_error("--weight-cache: expected auto, none or all, got '%s'", o->weight_cache);
        return NULL;
    }
    DbModel *m = NULL;
    if (db_model_open(&m, path, &mo, &err) != DB_OK) {
        cli_error("%s", err.msg);
        return NULL;
    }
    return m;
}

int cli_check_memory(const DbMemoryEstimate *e, int force)
{
    const double gib = 1024.0 * 1024.0 * 1024.0;
    /* DREAMBOOTH_MEM_AVAILABLE (bytes) replaces MemAvailable: tests of the refusal */
    const char *fake = g_getenv("DREAMBOOTH_MEM_AVAILABLE");
    uint64_t avail = fake ? g_ascii_strtoull(fake, NULL, 10) : e->available;
    if (force || !avail || e->bytes <= avail) return 0;
    cli_error("this run needs %.2f GiB, %.2f GiB available (weights %.2f, work %.2f); use smaller "
              "sizes or counts, or --force to run anyway", e->bytes / gib, avail / gib,
              (e->weights + e->owned) / gib, (e->work + e->buffers) / gib);
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: dreambooth COMMAND [OPTIONS...]\n\nCommands:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'dreambooth COMMAND --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    /* A file-size limit must give EFBIG from write(), reported as an error, not kill us. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (commands: info, tokenize, forward, backward, init-model, generate, encode-image)", argv[1]);
    return CLI_EXIT_USAGE;
}
