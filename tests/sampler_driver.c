/* Test driver for the samplers: reads a JSON spec, runs sampler_run with a deterministic toy
 * "model" (the same formulas as tests/reference/sched_ref.py toy_model) and writes the
 * schedule, the initial noise and the final latents as JSON on stdout.
 *
 *   sampler_driver SPEC.json
 *   spec: {"sampler": "dpm++2m-karras", "steps": 10, "eta": 0.0, "prediction": "epsilon",
 *          "spacing": "leading", "karras": false, "seed": 42, "shape": [1, 4, 8, 8],
 *          "cfg": 7.5, "cancel_at": 0}
 * Exit status: 0 ok, 1 sampler error (message on stderr), 2 bad spec, 3 cancelled when
 * cancel_at > 0 asked for it (any other outcome then is 1).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "samplers.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    size_t n;          /* B*C*h*w */
    float cfg;
    float *cond, *uncond;
    int calls, cancel_at;
} Toy;

/* toy model, float32: cond = 0.95 x + 0.02 r cos(t/300), uncond = 0.93 x + 0.01 r sin(t/200),
 * r[k] = ((k mod 7) - 3) / 3; then classifier-free guidance. */
static DbStatus toy_denoise(void *user, const float *x_in, float t, float *model_out, DbError *err)
{
    Toy *toy = user;
    float ct = (float)cos((double)t / 300.0), st = (float)sin((double)t / 200.0);
    for (size_t k = 0; k < toy->n; k++) {
        float r = (float)((int)(k % 7) - 3) / 3.0f;
        toy->cond[k] = 0.95f * x_in[k] + (0.02f * r) * ct;
        toy->uncond[k] = 0.93f * x_in[k] + (0.01f * r) * st;
    }
    sampler_cfg_combine(model_out, toy->uncond, toy->cond, toy->cfg, toy->n);
    toy->calls++;
    (void)err;
    return DB_OK;
}

static int toy_progress(void *user, double fraction, const char *stage)
{
    Toy *toy = user;
    (void)fraction;
    (void)stage;
    return toy->cancel_at > 0 && toy->calls >= toy->cancel_at;
}

static void print_floats(const char *name, const float *v, size_t n, int last)
{
    printf("\"%s\": [", name);
    for (size_t i = 0; i < n; i++) printf("%s%.9g", i ? ", " : "", (double)v[i]);
    printf("]%s\n", last ? "" : ",");
}

static const char *get_str(JsonObject *o, const char *k, const char *def)
{
    return json_object_has_member(o, k) ? json_object_get_string_member(o, k) : def;
}

static double get_num(JsonObject *o, const char *k, double def)
{
    return json_object_has_member(o, k) ? json_object_get_double_member(o, k) : def;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: sampler_driver SPEC.json\n");
        return 2;
    }
    GError *gerr = NULL;
    JsonParser *parser = json_parser_new();
    if (!json_parser_load_from_file(parser, argv[1], &gerr) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        fprintf(stderr, "%s: %s\n", argv[1], gerr ? gerr->message : "not a JSON object");
        return 2;
    }
    JsonObject *o = json_node_get_object(json_parser_get_root(parser));
    int smp = sampler_from_name(get_str(o, "sampler", ""));
    JsonArray *shape = json_object_has_member(o, "shape") ? json_object_get_array_member(o, "shape") : NULL;
    if (smp < 0 || !shape || json_array_get_length(shape) != 4) {
        fprintf(stderr, "%s: bad sampler or shape\n", argv[1]);
        return 2;
    }
    size_t n = 1;
    for (guint i = 0; i < 4; i++) {
        gint64 d = json_array_get_int_element(shape, i);
        if (d < 1 || d > 4096 || n > ((size_t)1 << 30) / (size_t)d) {
            fprintf(stderr, "%s: bad shape\n", argv[1]);
            return 2;
        }
        n *= (size_t)d;
    }

    DbSchedConfig cfg;
    const char *pred = get_str(o, "prediction", "epsilon");
    sched_config_sd(&cfg, strcmp(pred, "v_prediction") == 0 ? DB_PRED_V : DB_PRED_EPS);
    const char *sp = get_str(o, "spacing", "default");
    cfg.spacing = strcmp(sp, "leading") == 0    ? SCHED_SPACING_LEADING
                  : strcmp(sp, "trailing") == 0 ? SCHED_SPACING_TRAILING
                  : strcmp(sp, "linspace") == 0 ? SCHED_SPACING_LINSPACE
                                                : SCHED_SPACING_DEFAULT;
    cfg.use_karras_sigmas = json_object_has_member(o, "karras") && json_object_get_boolean_member(o, "karras");

    SamplerOptions opt = {0};
    opt.sampler = (DbSampler)smp;
    opt.steps = (int)get_num(o, "steps", 10);
    opt.eta = (float)get_num(o, "eta", 0.0);
    Toy toy = {.n = n, .cfg = (float)get_num(o, "cfg", 7.5), .cancel_at = (int)get_num(o, "cancel_at", 0)};
    opt.progress = toy_progress;
    opt.progress_user = &toy;

    float *x = malloc(n * sizeof *x), *noise0 = malloc(n * sizeof *x);
    toy.cond = malloc(n * sizeof *x);
    toy.uncond = malloc(n * sizeof *x);
    if (!x || !noise0 || !toy.cond || !toy.uncond) return 1;
    DbRng rng = {0};
    rng_seed(&rng, (uint64_t)get_num(o, "seed", 0));
    rng_randn(&rng, x, n); /* prepare_latents: randn_tensor(shape, generator) */
    memcpy(noise0, x, n * sizeof *x);

    int karras;
    DbSchedConfig sc = cfg;
    SchedKind kind = sampler_sched_kind(opt.sampler, &karras);
    if (karras) sc.use_karras_sigmas = 1;
    DbSchedule s;
    DbError err = {0};
    if (sched_build(&s, &sc, kind, opt.steps, &err) != DB_OK) {
        fprintf(stderr, "%s\n", err.msg);
        free(x);
        free(noise0);
        free(toy.cond);
        free(toy.uncond);
        g_object_unref(parser);
        return 1;
    }
    DbStatus st = sampler_run(&opt, &cfg, &rng, x, n, toy_denoise, &toy, &err);
    int rc = 0;
    if (toy.cancel_at > 0) {
        fprintf(stderr, "%s\n", err.msg);
        rc = st == DB_ERR_CANCELLED && toy.calls == toy.cancel_at ? 3 : 1;
    } else if (st != DB_OK) {
        fprintf(stderr, "%s\n", err.msg);
        rc = 1;
    }
    if (rc == 0) {
        printf("{\n\"calls\": %d,\n\"init_noise_sigma\": %.9g,\n", toy.calls,
               (double)s.init_noise_sigma);
        print_floats("alphas_cumprod", s.alphas_cumprod, (size_t)s.n_train, 0);
        print_floats("timesteps", s.timesteps, (size_t)s.steps, 0);
        print_floats("sigmas", s.sigmas, (size_t)s.steps + 1, 0);
        print_floats("noise0", noise0, n, 0);
        print_floats("final", x, n, 1);
        printf("}\n");
    }
    sched_free(&s);
    free(x);
    free(noise0);
    free(toy.cond);
    free(toy.uncond);
    g_object_unref(parser);
    return rc;
}
