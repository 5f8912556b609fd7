/* Memory needed by a run, estimated before it starts (reliability.md: refuse with "needs X GiB,
 * Y GiB available" instead of meeting the OOM killer halfway).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_MEMORY_ESTIMATE_H
#define DB_MEMORY_ESTIMATE_H

#include "dreambooth.h"

typedef enum {
    DB_TASK_TEXT_ENCODER = 0, /* forward --net text-encoder: batch prompts */
    DB_TASK_UNET,             /* forward --net unet: batch x latent [height/f, width/f] */
    DB_TASK_VAE_ENCODE,       /* batch images height x width */
    DB_TASK_VAE_DECODE,       /* batch latents to height x width images */
    DB_TASK_GENERATE          /* count images height x width, cfg > 1: UNet batch 2 */
} DbTask;

typedef struct {
    uint64_t bytes;           /* peak resident estimate, the total of: */
    uint64_t weights;         /* mapped weight data of the networks the task runs */
    uint64_t owned;           /* widened copies kept by the model (text encoder F16/BF16,
                                 the UNet's fp32 weight cache) */
    uint64_t work;            /* the largest network call's activations and scratch */
    uint64_t buffers;         /* inputs/outputs held by the caller */
    uint64_t available;       /* MemAvailable from /proc/meminfo (0 when unknown) */
} DbMemoryEstimate;

/* Fixed cost of the process measured on Debian 12 (libraries, OpenBLAS and OpenMP buffers,
 * GEGL): added to every estimate. */
#define DB_MEMORY_BASE_BYTES (96ull << 20)

/* Estimates the peak resident memory of task at sizes in image pixels (height, width; for
 * DB_TASK_UNET and DB_TASK_TEXT_ENCODER the latent size resp. ignored), cfg (generate only: > 1
 * doubles the UNet batch) and vae tiling opts (NULL = automatic). Returns 1 when computed
 * (est filled), 0 for sizes the networks refuse anyway (they report it themselves). */
int db_estimate_memory(const DbModel *m, DbTask task, int batch, int width, int height,
                       float cfg, const DbVaeOptions *vae, DbMemoryEstimate *est);

/* MemAvailable in bytes, 0 when /proc/meminfo cannot say. */
uint64_t db_memory_available(void);

#endif
