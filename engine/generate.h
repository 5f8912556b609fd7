/* txt2img internals shared by generate.c and scheduler_config.c.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_GENERATE_H
#define DB_GENERATE_H

#include "model.h"
#include "schedule.h"

/* Fills c from a diffusers scheduler_config.json (see scheduler_config.c); pred is the
 * model's resolved prediction type. */
DbStatus sched_config_load(DbSchedConfig *c, const char *path, DbPrediction pred, DbError *err);

/* The scheduler config generation uses for m: scheduler/scheduler_config.json of a diffusers
 * folder when present, else Stable Diffusion's values; prediction from the model. */
DbStatus generate_sched_config(const DbModel *m, DbSchedConfig *c, DbError *err);

#endif
