/* dreambooth generate MODEL --prompt P --out DIR|FILE.png [options]: txt2img to PNG files that
 * carry their settings in an A1111-style "parameters" text chunk.
 *
 * Seeds: image i uses seed S + i (as A1111); without --seed, S is random and printed.
 * --out DIR writes DIR/NNNNN-SEED.png (NNNNN one past the highest number already there);
 * --out FILE.png writes FILE.png, or FILE-000.png, FILE-001.png ... with --count > 1.
 * --latent-out: safetensors with "latent" F32 [count, C, h, w], the sampler's final latents
 * in the scaled space (before dividing by the VAE scaling factor), as diffusers'
 * output_type="latent". Model hash: the first 10 hex digits of the SHA-256 of the model file
 * (diffusers folder: of the UNet weights file), as A1111's current hash; Lora hashes: the
 * first 12 hex digits of the SHA-256 of each LoRA file's tensor data (after the header), as
 * A1111's "addnet" hash of safetensors LoRAs.
 * Ctrl-C cancels at the next UNet block; files are written whole (temp + rename) or not at all.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <errno.h>
#include <gegl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "png_write.h"
#include "safetensors.h"
#include "samplers.h"

#define UNSET_INT (-2147483647)

static volatile sig_atomic_t cancel_requested;

static void on_sigint(int sig)
{
    (void)sig;
    cancel_requested = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C kills */
}

static const char *const a1111_sampler_names[DB_SAMPLER_COUNT] = {
    "DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDPM",
};
_Static_assert(sizeof a1111_sampler_names / sizeof a1111_sampler_names[0] == DB_SAMPLER_COUNT,
               "one A1111 name per sampler");

typedef struct {
    char *path, *name, *hash12;
    double weight;
} CliLora;

typedef struct {
    DbModel *m;
    const char *out;
    int out_is_file, count, steps, next_number, width, height, channels, h, w;
    float *latents;        /* [count, C, h, w] for --latent-out */
    char *params_tail;     /* "Steps: ..., Size: ..." parts after Seed */
    char *params_head;     /* prompt and negative lines */
    char *params_end;      /* ", Model hash: ..." */
    uint8_t *rgb;
    /* progress */
    int show_progress, tty;
    gint64 t0;
    char last_stage[96];
} GenCli;

/* ---- small helpers ------------------------------------------------------------------------ */

/* SHA-256 (hex) of path from offset on; NULL on error. */
static char *sha256_file(const char *path, uint64_t offset)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (offset && fseeko(f, (off_t)offset, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    unsigned char *buf = g_malloc(1 << 20);
    size_t n;
    while ((n = fread(buf, 1, 1 << 20, f)) > 0) g_checksum_update(c, buf, n);
    char *hex = ferror(f) ? NULL : g_strdup(g_checksum_get_string(c));
    g_free(buf);
    g_checksum_free(c);
    fclose(f);
    return hex;
}

/* Python's repr of a float: the shortest %g that reads back, with ".0" when integral. */
static void py_float(char *buf, size_t n, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) g_strlcat(buf, ".0", n);
}

/* A1111's quote(): values holding ',', '\n' or ':' become JSON strings. */
static void append_value(GString *s, const char *v)
{
    if (!strpbrk(v, ",\n:")) {
        g_string_append(s, v);
        return;
    }
    g_string_append_c(s, '"');
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\') g_string_append_printf(s, "\\%c", *p);
        else if (*p == '\n') g_string_append(s, "\\n");
        else g_string_append_c(s, *p);
    }
    g_string_append_c(s, '"');
}

static char *stem_of(const char *path)
{
    char *base = g_path_get_basename(path);
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = 0;
    return base;
}

/* --lora FILE[:WEIGHT] */
static int parse_lora(const char *arg, CliLora *l)
{
    const char *colon = strrchr(arg, ':');
    char *end = NULL;
    l->weight = 1.0f;
    if (colon && colon[1]) {
        double w = g_ascii_strtod(colon + 1, &end);
        if (end && *end == 0) {
            if (!isfinite(w) || fabs(w) > 100.0) {
                cli_error("--lora %s: weight must be in -100..100", arg);
                return 0;
            }
            l->weight = w;
            l->path = g_strndup(arg, (gsize)(colon - arg));
        }
    }
    if (!l->path) l->path = g_strdup(arg);
    l->name = stem_of(l->path);
    return 1;
}

/* Next free NNNNN in dir (one past the highest "NNNNN-" prefix). */
static int next_number(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    int next = 0;
    const char *e;
    while (d && (e = g_dir_read_name(d)))
        if (strlen(e) > 6 && e[5] == '-' && g_ascii_isdigit(e[0]) && g_str_has_suffix(e, ".png")) {
            int v = atoi(e);
            if (v >= next) next = v + 1;
        }
    if (d) g_dir_close(d);
    return next;
}

/* ---- callbacks ---------------------------------------------------------------------------- */

static int on_progress(void *user, double fraction, const char *stage)
{
    GenCli *g = user;
    if (g->show_progress && fraction > 0.0) {
        double el = (double)(g_get_monotonic_time() - g->t0) / 1e6;
        double units = fraction * g->count; /* images done, fractional */
        double eta = el * (1.0 - fraction) / fraction;
        if (g->tty) {
            fprintf(stderr, "\r%s  %.2f s/step  ETA %d:%02d\033[K", stage, el / units,
                    (int)(eta / 60), (int)fmod(eta, 60.0));
        } else if (strcmp(stage, g->last_stage) != 0) {
            fprintf(stderr, "%s  elapsed %.1f s  ETA %.0f s\n", stage, el, eta);
        }
        g_strlcpy(g->last_stage, stage, sizeof g->last_stage);
    }
    return cancel_requested;
}

static void quiet_printerr(const gchar *s) { (void)s; }

static DbStatus on_image(void *user, int index, uint64_t seed, const float *latent,
                         const float *image, DbError *err)
{
    GenCli *g = user;
    size_t n = (size_t)g->channels * g->h * g->w;
    if (g->latents) memcpy(g->latents + (size_t)index * n, latent, n * sizeof(float));
    db_image_to_rgb8(g->rgb, image, g->height, g->width);
    char *path;
    if (g->out_is_file && g->count == 1) {
        path = g_strdup(g->out);
    } else if (g->out_is_file) {
        char *dot = strrchr(g->out, '.');
        path = g_strdup_printf("%.*s-%03d%s", (int)(dot - g->out), g->out, index, dot);
    } else {
        char name[64];
        snprintf(name, sizeof name, "%05d-%" PRIu64 ".png", g->next_number + index, seed);
        path = g_build_filename(g->out, name, NULL);
    }
    char *text = g_strdup_printf("%s%" PRIu64 "%s%s", g->params_head, seed, g->params_tail,
                                 g->params_end);
    char msg[1024];
    DbStatus st = DB_OK;
    /* gegl:png-save prints every failed write (EFBIG, ENOSPC) itself; msg reports it once */
    GPrintFunc old_printerr = g_set_printerr_handler(quiet_printerr);
    if (png_write_rgb8(path, g->rgb, g->width, g->height, "parameters", text, msg, sizeof msg))
        st = db_fail(err, DB_ERR_IO, "%s", msg);
    g_set_printerr_handler(old_printerr);
    if (g->show_progress && g->tty) fprintf(stderr, "\r\033[K");
    if (st == DB_OK) printf("%s seed %" PRIu64 "\n", path, seed);
    fflush(stdout);
    g_free(text);
    g_free(path);
    return st;
}

/* ---- setup ------------------------------------------------------------------------------- */

/* --noise FILE: "noise" F32 [count, C, h, w]; fills size (when unset) from it. */
static float *read_noise(const char *path, int count, int C, int f, int *width, int *height)
{
    SafetensorsFile *sf = NULL;
    DbError err;
    db_error_clear(&err);
    if (safetensors_open(&sf, path, &err) != DB_OK) {
        cli_error("%s", err.msg);
        return NULL;
    }
    const SafetensorsEntry *e = safetensors_find(sf, "noise");
    char sh[128];
    float *out = NULL;
    if (!e || e->t.dtype != DB_DTYPE_F32 || e->t.ndim != 4 || e->t.shape[0] != count ||
        e->t.shape[1] != C || e->t.shape[2] < 1 || e->t.shape[3] < 1 ||
        e->t.shape[2] > 2048 || e->t.shape[3] > 2048) {
        cli_error("%s: expected a tensor 'noise' F32 [%d, %d, h, w] (--count %d), found %s%s", path,
                  count, C, count, e ? dtype_name(e->t.dtype) : "none",
                  e ? tensor_shape_str(e->t.shape, e->t.ndim, sh, sizeof sh) : "");
    } else if ((*width != UNSET_INT && *width != e->t.shape[3] * f) ||
               (*height != UNSET_INT && *height != e->t.shape[2] * f)) {
        cli_error("%s: noise of %" PRId64 "x%" PRId64 " latents is a %" PRId64 "x%" PRId64
                  " image, not --width %d --height %d", path, e->t.shape[3], e->t.shape[2],
                  e->t.shape[3] * f, e->t.shape[2] * f, *width, *height);
    } else {
        *width = (int)e->t.shape[3] * f;
        *height = (int)e->t.shape[2] * f;
        out = g_new(float, e->t.nelem);
        memcpy(out, e->t.data, e->t.nbytes);
    }
    safetensors_close(sf);
    return out;
}

static int write_latents(const char *path, const GenCli *g, uint64_t seed)
{
    int64_t shape[4] = {g->count, g->channels, g->h, g->w};
    DbError err;
    db_error_clear(&err);
    SafetensorsWriter *w = safetensors_writer_new();
    char s[32];
    snprintf(s, sizeof s, "%" PRIu64, seed);
    safetensors_writer_meta(w, "seed", s);
    safetensors_writer_meta(w, "space", "scaled (divide by the VAE scaling_factor to decode)");
    DbStatus st = safetensors_writer_add(w, "latent", DB_DTYPE_F32, 4, shape, g->latents, &err);
    if (st == DB_OK) st = safetensors_writer_save(w, path, &err);
    safetensors_writer_free(w);
    if (st != DB_OK) cli_error("%s", err.msg);
    return st == DB_OK;
}

/* "PROMPT\nNegative prompt: N\nSteps: ..., Seed: " + seed + ", Size: ..." + model part. */
static void build_params(GenCli *g, const char *prompt, const char *negative, int sampler,
                         int steps, double cfg, double eta, const char *model_path,
                         const char *model_hash, CliLora *loras, int n_loras)
{
    GString *s = g_string_new(prompt);
    if (negative && *negative) g_string_append_printf(s, "\nNegative prompt: %s", negative);
    char num[64];
    py_float(num, sizeof num, cfg);
    g_string_append_printf(s, "\nSteps: %d, Sampler: %s, CFG scale: %s, Seed: ", steps,
                           a1111_sampler_names[sampler], num);
    g->params_head = g_string_free(s, FALSE);
    s = g_string_new(NULL);
    g_string_append_printf(s, ", Size: %dx%d", g->width, g->height);
    if (model_hash) g_string_append_printf(s, ", Model hash: %.10s", model_hash);
    char *name = stem_of(model_path);
    g_string_append(s, ", Model: ");
    append_value(s, name);
    g_free(name);
    if (sampler == DB_SAMPLER_DDIM && eta > 0.0) {
        py_float(num, sizeof num, eta);
        g_string_append_printf(s, ", Eta: %s", num);
    }
    g->params_tail = g_string_free(s, FALSE);
    s = g_string_new(NULL);
    if (n_loras > 0) {
        GString *l = g_string_new(NULL);
        for (int i = 0; i < n_loras; i++)
            g_string_append_printf(l, "%s%s: %s", i ? ", " : "", loras[i].name, loras[i].hash12);
        g_string_append(s, ", Lora hashes: ");
        append_value(s, l->str);
        g_string_truncate(l, 0);
        for (int i = 0; i < n_loras; i++) {
            py_float(num, sizeof num, loras[i].weight);
            g_string_append_printf(l, "%s%s: %s", i ? ", " : "", loras[i].name, num);
        }
        g_string_append(s, ", Lora weights: ");
        append_value(s, l->str);
        g_string_free(l, TRUE);
    }
    g_string_append_printf(s, ", Version: gimp-dreambooth %s", "0.1.0");
    g->params_end = g_string_free(s, FALSE);
}

/* The file A1111 would hash: the single file, or the diffusers UNet weights file. */
static char *model_hash(DbModel *m, const char *path)
{
    const char *file = path;
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
        static const char *const names[2] = {"diffusion_pytorch_model.safetensors",
                                             "diffusion_pytorch_model.fp16.safetensors"};
        for (int i = 0; i < 2; i++) {
            char *p = g_build_filename(path, "unet", names[i], NULL);
            if (g_file_test(p, G_FILE_TEST_IS_REGULAR)) {
                char *h = sha256_file(p, 0);
                g_free(p);
                return h;
            }
            g_free(p);
        }
        return NULL; /* sharded: no single file to name */
    }
    (void)m;
    return sha256_file(file, 0);
}

static char *lora_hash12(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char b[8];
    uint64_t n = 0;
    if (f && fread(b, 1, 8, f) == 8)
        for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
    if (f) fclose(f);
    char *h = n ? sha256_file(path, 8 + n) : NULL;
    if (h) h[12] = 0;
    return h ? h : g_strdup("unknown");
}

int cli_generate(int argc, char **argv)
{
    char *prompt = NULL, *negative = NULL, *sampler_s = NULL, *seed_s = NULL, *out = NULL;
    char *noise_path = NULL, *latent_out = NULL, **lora_args = NULL;
    int steps = UNSET_INT, width = UNSET_INT, height = UNSET_INT, count = UNSET_INT;
    double cfg = 7.5, eta = 0.0;
    gboolean progress = FALSE, force = FALSE;
    CliModelOptions mo = {0};
    GOptionEntry entries[] = {
        /* FILENAME: the bytes as given (STRING would convert from the locale and refuse UTF-8
         * under LC_ALL=C); checked as UTF-8 below */
        {"prompt", 'p', 0, G_OPTION_ARG_FILENAME, &prompt, "The prompt (UTF-8)", "TEXT"},
        {"negative", 'n', 0, G_OPTION_ARG_FILENAME, &negative, "Negative prompt (default empty)", "TEXT"},
        {"lora", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &lora_args,
         "Apply a LoRA (kohya or PEFT .safetensors), weight default 1; repeatable", "FILE[:WEIGHT]"},
        {"steps", 0, 0, G_OPTION_ARG_INT, &steps, "Sampling steps, 1..1000 (default 25)", "N"},
        {"sampler", 0, 0, G_OPTION_ARG_STRING, &sampler_s,
         "ddim, euler, euler-a, dpm++2m, dpm++2m-karras (default), ddpm", "NAME"},
        {"cfg", 0, 0, G_OPTION_ARG_DOUBLE, &cfg, "Guidance scale, 0..100 (default 7.5; <= 1: no negative pass)", "S"},
        {"eta", 0, 0, G_OPTION_ARG_DOUBLE, &eta, "DDIM eta, 0..1 (default 0)", "E"},
        {"seed", 0, 0, G_OPTION_ARG_STRING, &seed_s, "Seed of image 1; image i uses seed + i - 1 (default random)", "S"},
        {"width", 'W', 0, G_OPTION_ARG_INT, &width, "Image width (default the model's native size)", "W"},
        {"height", 'H', 0, G_OPTION_ARG_INT, &height, "Image height (default the model's native size)", "H"},
        {"count", 0, 0, G_OPTION_ARG_INT, &count, "Number of images, 1..1000 (default 1)", "N"},
        {"out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Output folder, or FILE.png", "DIR|FILE.png"},
        {"noise", 0, 0, G_OPTION_ARG_FILENAME, &noise_path,
         "Initial latents: safetensors with 'noise' F32 [count, C, h, w] instead of the seeded draw", "FILE"},
        {"latent-out", 0, 0, G_OPTION_ARG_FILENAME, &latent_out,
         "Also write the final latents ('latent' F32 [count, C, h, w], before VAE scaling)", "FILE"},
        {"progress", 0, 0, G_OPTION_ARG_NONE, &progress, "Progress on stderr even when it is not a terminal", NULL},
        {"force", 0, 0, G_OPTION_ARG_NONE, &force, "Run even when the memory estimate exceeds what is available", NULL},
        G_OPTION_ENTRY_NULL};
    GOptionContext *ctx = g_option_context_new("MODEL - generate images from a prompt");
    g_option_context_add_main_entries(ctx, entries, NULL);
    cli_add_model_options(ctx, &mo);
    int rc = CLI_EXIT_USAGE, n_loras = 0;
    DbModel *m = NULL;
    CliLora *loras = NULL;
    float *noise = NULL;
    char *mhash = NULL;
    GenCli g = {0};
    DbError err;
    db_error_clear(&err);
    uint64_t seed = 0;
    if (!cli_parse(ctx, &argc, &argv)) goto done;
    if (argc != 2) {
        cli_error(argc < 2 ? "generate: MODEL is required (see --help)"
                           : "generate: unexpected argument '%s' (see --help)", argv[argc < 2 ? 0 : 2]);
        goto done;
    }
    if (!prompt || !out) {
        cli_error("generate: --prompt and --out are required (see --help)");
        goto done;
    }
    if (!g_utf8_validate(prompt, -1, NULL) || (negative && !g_utf8_validate(negative, -1, NULL))) {
        cli_error("--%s: not valid UTF-8", g_utf8_validate(prompt, -1, NULL) ? "negative" : "prompt");
        goto done;
    }
    int sampler = sampler_from_name(sampler_s ? sampler_s : "dpm++2m-karras");
    if (sampler < 0) {
        cli_error("--sampler: '%s' is unknown (valid: ddim, euler, euler-a, dpm++2m, "
                  "dpm++2m-karras, ddpm)", sampler_s);
        goto done;
    }
    if (steps == UNSET_INT) steps = 25;
    if (count == UNSET_INT) count = 1;
    if (steps < 1 || steps > 1000) {
        cli_error("--steps: %d is out of range (1..1000)", steps);
        goto done;
    }
    if (!(cfg >= 0.0 && cfg <= 100.0)) {
        cli_error("--cfg: %g is out of range (0..100)", cfg);
        goto done;
    }
    if (!(eta >= 0.0 && eta <= 1.0)) {
        cli_error("--eta: %g is out of range (0..1)", eta);
        goto done;
    }
    if (count < 1 || count > 1000) {
        cli_error("--count: %d is out of range (1..1000)", count);
        goto done;
    }
    if ((width != UNSET_INT && (width < 1 || width > 2048)) ||
        (height != UNSET_INT && (height < 1 || height > 2048))) {
        cli_error("--width/--height: %d is out of range (64..2048, a multiple of 64 for SD)",
                  width != UNSET_INT && (width < 1 || width > 2048) ? width : height);
        goto done;
    }
    if (seed_s) {
        GError *ge = NULL;
        guint64 v;
        if (!g_ascii_string_to_unsigned(seed_s, 10, 0, G_MAXUINT64, &v, &ge)) {
            cli_error("--seed: '%s' is not a number in 0..%" PRIu64, seed_s, (uint64_t)G_MAXUINT64);
            g_error_free(ge);
            goto done;
        }
        seed = v;
    } else {
        seed = g_random_int(); /* 32 bits, as A1111's random seeds */
    }
    for (char **l = lora_args; l && *l; l++) n_loras++;
    loras = g_new0(CliLora, n_loras + 1);
    for (int i = 0; i < n_loras; i++)
        if (!parse_lora(lora_args[i], &loras[i])) goto done;
    g.out_is_file = g_str_has_suffix(out, ".png") || g_str_has_suffix(out, ".PNG");

    rc = CLI_EXIT_FAIL;
    if (!(m = cli_open_model(argv[1], &mo))) goto done;
    int f, C;
    int Cin, Cout;
    db_vae_dims(m, &f, &Cin, &C, &Cout);
    if (noise_path && !(noise = read_noise(noise_path, count, C, f, &width, &height))) goto done;
    int nw, nh, q;
    db_generate_sizes(m, &nw, &nh, &q);
    g.width = width == UNSET_INT ? nw : width;
    g.height = height == UNSET_INT ? nh : height;
    if (g.width % q || g.height % q || g.width < q || g.height < q) {
        cli_error("--width/--height: %dx%d is not supported by this model: multiples of %d in "
                  "%d..2048", g.width, g.height, q, q);
        rc = CLI_EXIT_USAGE;
        goto done;
    }
    DbMemoryEstimate est; /* memory_estimate.h: refuse before the OOM killer does */
    if (db_estimate_memory(m, DB_TASK_GENERATE, 1, g.width, g.height, (float)cfg, NULL, &est) &&
        cli_check_memory(&est, force) != 0)
        goto done;
    if (g_getenv("DREAMBOOTH_PRINT_ESTIMATE"))
        fprintf(stderr, "dreambooth: estimate %.3f GiB\n", est.bytes / 1073741824.0);
    for (int i = 0; i < n_loras; i++) {
        if (db_model_apply_lora(m, loras[i].path, (float)loras[i].weight, &err) != DB_OK) {
            cli_error("%s", err.msg);
            goto done;
        }
        loras[i].hash12 = lora_hash12(loras[i].path);
    }
    if (!g.out_is_file && g_mkdir_with_parents(out, 0777) != 0) {
        cli_error("%s: cannot create the folder: %s", out, g_strerror(errno));
        goto done;
    }
    g.next_number = g.out_is_file ? 0 : next_number(out);
    mhash = model_hash(m, argv[1]);
    g.m = m;
    g.out = out;
    g.count = count;
    g.steps = steps;
    g.channels = C;
    g.h = g.height / f;
    g.w = g.width / f;
    g.rgb = g_new(uint8_t, (size_t)3 * g.width * g.height);
    if (latent_out) g.latents = g_new(float, (size_t)count * C * g.h * g.w);
    g.tty = isatty(STDERR_FILENO);
    g.show_progress = g.tty || progress;
    g.t0 = g_get_monotonic_time();
    build_params(&g, prompt, negative, sampler, steps, cfg, eta, argv[1], mhash, loras, n_loras);

    DbGenerateOptions o = {0};
    o.prompt = prompt;
    o.negative = negative;
    o.sampler = db_sampler_names[sampler];
    o.steps = steps;
    o.cfg = (float)cfg;
    o.eta = (float)eta;
    o.seed = seed;
    o.width = g.width;
    o.height = g.height;
    o.count = count;
    o.noise = noise;
    o.on_image = on_image;
    o.image_user = &g;
    const char *texts[2] = {prompt, negative};
    for (int i = 0; i < 2; i++) {
        int32_t ids[DB_CONTEXT_LEN];
        int dropped = 0;
        if (texts[i] && db_tokenize(m, texts[i], ids, &dropped, &err) != DB_OK) {
            cli_error("%s", err.msg);
            goto done;
        }
        if (dropped > 0)
            cli_error("warning: the %s is %d tokens over CLIP's 75 and was cut", i ? "negative prompt" : "prompt", dropped);
    }
    if (!seed_s) fprintf(stderr, "dreambooth: random seed %" PRIu64 "\n", seed);
    gegl_init(NULL, NULL);
    signal(SIGINT, on_sigint);
    DbStatus st = db_generate(m, &o, NULL, on_progress, &g, &err);
    signal(SIGINT, SIG_DFL);
    if (g.show_progress && g.tty) fprintf(stderr, "\r\033[K");
    if (st == DB_ERR_CANCELLED) {
        cli_error("cancelled (%s)", err.msg);
        rc = 130;
    } else if (st != DB_OK) {
        cli_error("%s", err.msg);
        rc = st == DB_ERR_ARG ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    } else if (!latent_out || write_latents(latent_out, &g, seed)) {
        rc = 0;
    }
    gegl_exit();
done:
    g_option_context_free(ctx);
    for (int i = 0; loras && i < n_loras; i++) {
        g_free(loras[i].path);
        g_free(loras[i].name);
        g_free(loras[i].hash12);
    }
    g_free(loras);
    g_strfreev(lora_args);
    db_model_free(m);
    g_free(noise);
    g_free(mhash);
    g_free(g.rgb);
    g_free(g.latents);
    g_free(g.params_head);
    g_free(g.params_tail);
    g_free(g.params_end);
    g_free(prompt);
    g_free(negative);
    g_free(sampler_s);
    g_free(seed_s);
    g_free(out);
    g_free(noise_path);
    g_free(latent_out);
    g_free(mo.tokenizer);
    g_free(mo.prediction);
    return rc;
}
