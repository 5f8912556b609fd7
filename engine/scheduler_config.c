/* scheduler/scheduler_config.json of a diffusers folder -> DbSchedConfig (generate.h).
 *
 * Keys read: num_train_timesteps, beta_start, beta_end, beta_schedule (linear,
 * scaled_linear), trained_betas (must be null), steps_offset, timestep_spacing (leading,
 * trailing, linspace), set_alpha_to_one, clip_sample, clip_sample_range, thresholding and
 * rescale_betas_zero_snr (must be false). A key that is absent keeps Stable Diffusion's value
 * (sched_config_sd), not the default of the scheduler class: every SD config spells them out.
 * prediction_type is not read here: the loader resolved it (with the user's override).
 * use_karras_sigmas is not read: the sampler name decides (dpm++2m-karras).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "generate.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

typedef struct {
    JsonObject *o;
    const char *path;
    DbError *err;
} SchedJs;

/* The member, or NULL when absent or JSON null. */
static JsonNode *member(const SchedJs *j, const char *key)
{
    JsonNode *n = json_object_has_member(j->o, key) ? json_object_get_member(j->o, key) : NULL;
    return n && !JSON_NODE_HOLDS_NULL(n) ? n : NULL;
}

static int is_number(JsonNode *n)
{
    if (!JSON_NODE_HOLDS_VALUE(n)) return 0;
    GType t = json_node_get_value_type(n);
    return t == G_TYPE_INT64 || t == G_TYPE_DOUBLE;
}

static DbStatus get_double(const SchedJs *j, const char *key, double lo, double hi, double *v)
{
    JsonNode *n = member(j, key);
    if (!n) return DB_OK;
    double d = is_number(n) ? json_node_get_double(n) : NAN;
    if (!(d >= lo && d <= hi))
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s must be a number in [%g, %g]", j->path, key,
                       lo, hi);
    *v = d;
    return DB_OK;
}

static DbStatus get_int(const SchedJs *j, const char *key, int lo, int hi, int *v)
{
    JsonNode *n = member(j, key);
    if (!n) return DB_OK;
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64 ||
        json_node_get_int(n) < lo || json_node_get_int(n) > hi)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s must be an integer in [%d, %d]", j->path,
                       key, lo, hi);
    *v = (int)json_node_get_int(n);
    return DB_OK;
}

static DbStatus get_bool(const SchedJs *j, const char *key, int *v)
{
    JsonNode *n = member(j, key);
    if (!n) return DB_OK;
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
        return db_fail(j->err, DB_ERR_FORMAT, "%s: %s must be true or false", j->path, key);
    *v = json_node_get_boolean(n) ? 1 : 0;
    return DB_OK;
}

/* A string member among names[] -> its index in *v (absent: unchanged). */
static DbStatus get_choice(const SchedJs *j, const char *key, const char *const *names,
                           const int *values, int n_names, int *v)
{
    JsonNode *n = member(j, key);
    if (!n) return DB_OK;
    const char *s = JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_STRING
                        ? json_node_get_string(n) : NULL;
    for (int i = 0; s && i < n_names; i++)
        if (strcmp(s, names[i]) == 0) {
            *v = values[i];
            return DB_OK;
        }
    GString *list = g_string_new(NULL);
    for (int i = 0; i < n_names; i++) g_string_append_printf(list, "%s%s", i ? ", " : "", names[i]);
    DbStatus st = db_fail(j->err, DB_ERR_UNSUPPORTED, "%s: %s \"%s\" is not supported (%s)",
                          j->path, key, s ? s : "?", list->str);
    g_string_free(list, TRUE);
    return st;
}

static DbStatus must_be_off(const SchedJs *j, const char *key)
{
    int on = 0;
    DbStatus st = get_bool(j, key, &on);
    if (st == DB_OK && on)
        st = db_fail(j->err, DB_ERR_UNSUPPORTED, "%s: %s true is not supported", j->path, key);
    return st;
}

DbStatus sched_config_load(DbSchedConfig *c, const char *path, DbPrediction pred, DbError *err)
{
    static const char *const schedules[2] = {"linear", "scaled_linear"};
    static const int schedule_values[2] = {SCHED_BETA_LINEAR, SCHED_BETA_SCALED_LINEAR};
    static const char *const spacings[3] = {"leading", "trailing", "linspace"};
    static const int spacing_values[3] = {SCHED_SPACING_LEADING, SCHED_SPACING_TRAILING,
                                          SCHED_SPACING_LINSPACE};
    sched_config_sd(c, pred);
    JsonParser *p = json_parser_new();
    GError *gerr = NULL;
    DbStatus st = DB_OK;
    if (!json_parser_load_from_file(p, path, &gerr)) {
        st = db_fail(err, gerr->domain == G_FILE_ERROR ? DB_ERR_IO : DB_ERR_FORMAT, "%s: %s",
                     path, gerr->message);
        g_error_free(gerr);
        g_object_unref(p);
        return st;
    }
    JsonNode *root = json_parser_get_root(p);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_object_unref(p);
        return db_fail(err, DB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    SchedJs j = {json_node_get_object(root), path, err};
    int schedule = c->beta_schedule, spacing = SCHED_SPACING_DEFAULT;
    if (member(&j, "trained_betas"))
        st = db_fail(err, DB_ERR_UNSUPPORTED, "%s: trained_betas are not supported", path);
    if (st == DB_OK)
        st = get_int(&j, "num_train_timesteps", 2, SCHED_MAX_TRAIN_TIMESTEPS, &c->num_train_timesteps);
    if (st == DB_OK) st = get_double(&j, "beta_start", 1e-12, 0.999, &c->beta_start);
    if (st == DB_OK) st = get_double(&j, "beta_end", 1e-12, 0.999, &c->beta_end);
    if (st == DB_OK) st = get_choice(&j, "beta_schedule", schedules, schedule_values, 2, &schedule);
    if (st == DB_OK) st = get_int(&j, "steps_offset", 0, SCHED_MAX_TRAIN_TIMESTEPS, &c->steps_offset);
    if (st == DB_OK) st = get_choice(&j, "timestep_spacing", spacings, spacing_values, 3, &spacing);
    if (st == DB_OK) st = get_bool(&j, "set_alpha_to_one", &c->set_alpha_to_one);
    if (st == DB_OK) st = get_bool(&j, "clip_sample", &c->clip_sample);
    if (st == DB_OK) st = get_double(&j, "clip_sample_range", 1e-6, 1e6, &c->clip_sample_range);
    if (st == DB_OK) st = must_be_off(&j, "thresholding");
    if (st == DB_OK) st = must_be_off(&j, "rescale_betas_zero_snr");
    c->beta_schedule = (SchedBetaSchedule)schedule;
    c->spacing = (SchedSpacing)spacing;
    g_object_unref(p);
    return st;
}
