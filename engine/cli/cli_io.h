/* Reading network inputs from a safetensors file, shared by `forward` and `backward`.
 * Every reader returns an owned copy (g_free), so the data is aligned whatever the file's
 * offsets; messages name the file and the tensor. SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLI_IO_H
#define DB_CLI_IO_H

#include "dreambooth.h"
#include "safetensors.h"

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
