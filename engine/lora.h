/* LoRA files (kohya, diffusers/PEFT) merged into working copies of a model's weights.
 * The public entry is db_model_apply_lora (dreambooth.h).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_LORA_H
#define DB_LORA_H

#include "model.h"

/* 1 when w is a working copy made by db_model_apply_lora (F32, owned by the model). */
int lora_weight_is_merged(const DbWeight *w);

/* Modules a LoRA file holds, counted per network (for messages and `info`-style reports);
 * n_unet/n_text may be NULL. Validates like db_model_apply_lora without changing m. */
DbStatus lora_check(const DbModel *m, const char *path, int *n_unet, int *n_text, DbError *err);

#endif
