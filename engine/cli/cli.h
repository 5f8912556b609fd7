/* dreambooth command-line tool: shared helpers. SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLI_H
#define DB_CLI_H

#include <glib.h>

#include "dreambooth.h"
#include "memory_estimate.h"

/* Exit codes: 0 ok, 1 failure reported on one line, 2 usage error. */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

#define CLI_THREADS_UNSET (-2147483647 - 1) /* INT_MIN: --threads not given */

/* Options every model-using command takes. */
typedef struct {
    char *tokenizer;
    char *prediction;
    char *weight_cache;
    int threads;
} CliModelOptions;

void cli_add_model_options(GOptionContext *ctx, CliModelOptions *o);
/* Frees the option strings GOption allocated: declare `g_auto(CliModelOptions) mo = {0};`. */
void cli_model_options_clear(CliModelOptions *o);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(CliModelOptions, cli_model_options_clear)
/* Applies --threads and opens the model; prints the one-line error and returns NULL on failure. */
DbModel *cli_open_model(const char *path, const CliModelOptions *o);
/* Prints "dreambooth: <msg>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parses argv with ctx; on error prints one line and returns 0. */
int cli_parse(GOptionContext *ctx, int *argc, char ***argv);

int cli_info(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_forward(int argc, char **argv);
int cli_backward(int argc, char **argv);
int cli_init(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_encode_image(int argc, char **argv);

/* 0 when the estimate fits in MemAvailable (or force); else prints "this run needs X GiB,
 * Y GiB available ..." and returns -1. */
int cli_check_memory(const DbMemoryEstimate *e, int force);

#endif
