/* dreambooth tokenize MODEL PROMPT... : one line of 77 ids per prompt.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <stdio.h>

#include "cli.h"

int cli_tokenize(int argc, char **argv)
{
    g_auto(CliModelOptions) mo = {0};
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MODEL PROMPT... - print 77 CLIP token ids per prompt");
    cli_add_model_options(ctx, &mo);
    if (!cli_parse(ctx, &argc, &argv)) return CLI_EXIT_USAGE;
    if (argc < 3) {
        cli_error("tokenize takes a MODEL and at least one PROMPT");
        return CLI_EXIT_USAGE;
    }
    DbModel *m = cli_open_model(argv[1], &mo);
    if (!m) return CLI_EXIT_FAIL;
    int rc = 0;
    GString *line = g_string_new(NULL);
    for (int i = 2; i < argc && rc == 0; i++) {
        int32_t ids[DB_CONTEXT_LEN];
        int truncated = 0;
        DbError err;
        db_error_clear(&err);
        if (db_tokenize(m, argv[i], ids, &truncated, &err) != DB_OK) {
            cli_error("prompt %d: %s", i - 1, err.msg);
            rc = CLI_EXIT_FAIL;
            break;
        }
        if (truncated > 0)
            fprintf(stderr, "dreambooth: warning: prompt %d is too long: %d tokens dropped\n",
                    i - 1, truncated);
        g_string_truncate(line, 0);
        for (int t = 0; t < DB_CONTEXT_LEN; t++)
            g_string_append_printf(line, t ? " %d" : "%d", ids[t]);
        puts(line->str);
    }
    g_string_free(line, TRUE);
    db_model_free(m);
    return rc;
}
