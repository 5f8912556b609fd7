/* Reading network inputs from a safetensors file, shared by `forward` and `backward`.
 * Every reader returns an owned copy (g_free), so the data is aligned whatever the file's
 * offsets; messages name the file and the tensor. SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLI_IO_H
#define DB_CLI_IO_H

#include <glib.h>

#include "dreambooth.h"
#include "safetensors.h"

/* One network row of `forward` / `backward`: its --net name and what it reads and writes.
 * The commands' tables embed it as their first member; the helpers below take such a table
 * as (rows, sizeof row, count) and derive every list of names from it. */
typedef struct {
    const char *name;
    const char *inputs;
    const char *outputs;
} CliNetDoc;
#define CLI_NET_TABLE(t) (t), sizeof (t)[0], G_N_ELEMENTS(t)

/* "a, b, c": the rows' names (g_free it). */
char *cli_net_names(const void *rows, size_t stride, size_t n);
/* Adds "Networks (inputs -> outputs):" and one line per row to ctx's --help. */
void cli_net_describe(GOptionContext *ctx, const void *rows, size_t stride, size_t n);
/* The row called name, or NULL after printing "--net: unknown network ... (available: ...)". */
const void *cli_net_find(const char *name, const void *rows, size_t stride, size_t n);

/* input_ids: I64 or I32 [B, 77] with 1 <= B <= 4096, every id in [0, vocab) (vocab <= 0:
 * [0, 2^31)) -> ids [B*77]. */
DbStatus cli_read_ids(const SafetensorsFile *in, int vocab, int32_t **ids, int *batch,
                      DbError *err);
/* name: F32 with ndim dims, each in [1, 65536] -> data, its shape into shape[ndim]. */
DbStatus cli_read_f32(const SafetensorsFile *in, const char *name, int ndim, int64_t *shape,
                      float **out, DbError *err);
/* timestep: F32, F64, I64 or I32, shape [B], [1] or [] (broadcast) -> float [B], as diffusers'
 * timesteps.float(). */
DbStatus cli_read_timesteps(const SafetensorsFile *in, size_t batch, float **out, DbError *err);

#endif
