/* bench_driver: times one workload of libdreambooth in this process (model opened once).
 *
 *   bench_driver MODE [--model DIR] [--batch B] [--size H[xW]] [--reps N] [--warmup N]
 *                [--threads T] [--rank R] [--ckpt-budget MIB|none] [--dump FILE]
 *                [--weight-cache auto|none|all]
 *
 * MODE: unet (latent H x W), vae-decode (latent H x W), vae-encode (image H x W),
 * text-encoder (B x 77 ids), sgemm (H x H x H cblas_sgemm), gemm (the same product through the
 * kernels' gemm: its AVX-512 kernel where the CPU has one, else OpenBLAS), train-step (LoRA
 * step, latent H x W).
 * Inputs are filled by bench_fill() (splitmix64 of seed << 32 | index, to [-1, 1)), which
 * tests/bench/torch_side.py reproduces, so --dump (raw float32 of the last call's outputs,
 * in order) can be compared with PyTorch. Prints one JSON line on stdout: open_s (model open),
 * warmup_s, times (seconds per call), setup_cpu_s (CPU seconds, user + system, of the mode's
 * setup: model open excluded), cpu_times (CPU seconds per call), median_s, maxrss_kib
 * (getrusage: whole process peak), status ("ok", "unimplemented" or "error" with "error").
 * Exit status 0 unless an error.
 * sgemm adds blas_core (openblas_get_corename: the kernels OpenBLAS chose, or OPENBLAS_CORETYPE's);
 * gemm adds gemm_fast (1: gemm's own kernel ran, 0: it handed the product to OpenBLAS).
 * unet adds unet_cache_weights / unet_cache_bytes: the fp32 weight copies db_unet_forward made
 * under --weight-cache (DbWeightCache of the model options; default auto).
 * train-step adds ckpt_budget_mib (the activation budget of unet_train_new), steps, kept_steps
 * (blocks whose internals are kept from the forward, not recomputed), kept_acts_bytes,
 * shared_acts_bytes (the region the recomputed blocks share), wcache_weights / wcache_bytes
 * (frozen half-precision weights held as fp32 copies, from what the budget leaves after the
 * internals) and train_bytes (the whole UnetTrain allocation). --ckpt-budget: MIB, or none
 * (UNET_CKPT_NONE: keep every block, no weight copies); 0 checkpoints every block. Default:
 * the budget that keeps the process under 6 GiB
 * (unet_train_default_budget with resident = the UNet weights as stored, which the step maps
 * and reads, + 256 MiB for the rest of the process: libraries, BLAS buffers, the widened 1-D
 * weights, adapters, Adam state, inputs).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "dreambooth.h"
#include "kernels.h"
#include "optim.h"
#include "train_params.h"
#include "unet.h"

#define MAX_REPS 1000

typedef struct {
    const char *model_path, *dump;
    int batch, h, w, reps, warmup, threads, rank;
    long ckpt_mib;       /* train-step: -1 automatic, -2 none */
    char extra[512];     /* mode-specific JSON members (", \"k\": v" ...) */
    DbModel *model;
    DbModelInfo info;
    float *in[3];  /* inputs (mode-specific) */
    int32_t *ids;
    float *out[2]; /* outputs of the last call */
    size_t n_out[2];
} Bench;

typedef struct {
    const char *name;
    int needs_model;
    DbStatus (*setup)(Bench *b, DbError *err); /* NULL: not implemented yet */
    DbStatus (*run)(Bench *b, DbError *err);
} Mode;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t splitmix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* x[i] = 2 * (splitmix64(seed << 32 | i) >> 40) / 2^24 - 1, exactly representable. */
static void bench_fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(splitmix64((seed << 32) | (uint64_t)i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

static DbStatus alloc_f(float **p, size_t n, DbError *err)
{
    *p = malloc((n ? n : 1) * sizeof(float));
    return *p ? DB_OK : db_fail(err, DB_ERR_NOMEM, "bench: cannot allocate %zu floats", n);
}

/* ---- modes ------------------------------------------------------------------------------ */

/* unet: sample [B,Cin,h,w] (seed 1), timesteps [B] = 999 - 37 b, context [B,77,cross] (seed 2). */
static DbStatus unet_setup(Bench *b, DbError *err)
{
    size_t ns = (size_t)b->batch * (size_t)b->info.unet_in_channels * (size_t)b->h * (size_t)b->w;
    size_t nc = (size_t)b->batch * DB_CONTEXT_LEN * (size_t)b->info.unet_cross_dim;
    b->n_out[0] = (size_t)b->batch * (size_t)db_unet_out_channels(b->model) * (size_t)b->h * (size_t)b->w;
    DbStatus st = alloc_f(&b->in[0], ns, err);
    if (st == DB_OK) st = alloc_f(&b->in[1], (size_t)b->batch, err);
    if (st == DB_OK) st = alloc_f(&b->in[2], nc, err);
    if (st == DB_OK) st = alloc_f(&b->out[0], b->n_out[0], err);
    if (st != DB_OK) return st;
    bench_fill(b->in[0], ns, 1);
    for (int i = 0; i < b->batch; i++) b->in[1][i] = (float)(999 - 37 * i);
    bench_fill(b->in[2], nc, 2);
    return DB_OK;
}

static DbStatus unet_run(Bench *b, DbError *err)
{
    return db_unet_forward(b->model, b->in[0], b->in[1], b->in[2], b->batch, b->h, b->w,
                           DB_CONTEXT_LEN, b->out[0], NULL, NULL, err);
}

/* vae-decode: latent [B,z,h,w] (seed 3) -> image [B,Cout,h f,w f]; untiled. */
static DbStatus vae_decode_setup(Bench *b, DbError *err)
{
    int f, cin, z, cout;
    db_vae_dims(b->model, &f, &cin, &z, &cout);
    size_t nz = (size_t)b->batch * (size_t)z * (size_t)b->h * (size_t)b->w;
    b->n_out[0] = (size_t)b->batch * (size_t)cout * (size_t)b->h * (size_t)b->w * (size_t)f * (size_t)f;
    DbStatus st = alloc_f(&b->in[0], nz, err);
    if (st == DB_OK) st = alloc_f(&b->out[0], b->n_out[0], err);
    if (st == DB_OK) bench_fill(b->in[0], nz, 3);
    return st;
}

static DbStatus vae_decode_run(Bench *b, DbError *err)
{
    DbVaeOptions o = {0, 0, 0};
    return db_vae_decode(b->model, b->in[0], b->batch, b->h, b->w, b->out[0], &o, NULL, NULL, err);
}

/* vae-encode: image [B,Cin,H,W] (seed 4) -> mean, logvar [B,z,H/f,W/f]; untiled. */
static DbStatus vae_encode_setup(Bench *b, DbError *err)
{
    int f, cin, z, cout;
    db_vae_dims(b->model, &f, &cin, &z, &cout);
    if (f < 1 || b->h % f || b->w % f)
        return db_fail(err, DB_ERR_ARG, "vae-encode: size %dx%d is not a multiple of %d", b->h, b->w, f);
    size_t ni = (size_t)b->batch * (size_t)cin * (size_t)b->h * (size_t)b->w;
    b->n_out[0] = b->n_out[1] = (size_t)b->batch * (size_t)z * (size_t)(b->h / f) * (size_t)(b->w / f);
    DbStatus st = alloc_f(&b->in[0], ni, err);
    if (st == DB_OK) st = alloc_f(&b->out[0], b->n_out[0], err);
    if (st == DB_OK) st = alloc_f(&b->out[1], b->n_out[1], err);
    if (st == DB_OK) bench_fill(b->in[0], ni, 4);
    return st;
}

static DbStatus vae_encode_run(Bench *b, DbError *err)
{
    DbVaeOptions o = {0, 0, 0};
    return db_vae_encode(b->model, b->in[0], b->batch, b->h, b->w, b->out[0], b->out[1], &o,
                         NULL, NULL, err);
}

/* text-encoder: ids [B,77] = splitmix64(5 << 32 | i) mod 49406 -> [B,77,D]. */
static DbStatus text_setup(Bench *b, DbError *err)
{
    size_t n = (size_t)b->batch * DB_CONTEXT_LEN;
    b->n_out[0] = n * (size_t)b->info.text_hidden;
    b->ids = malloc(n * sizeof(int32_t));
    if (!b->ids) return db_fail(err, DB_ERR_NOMEM, "bench: cannot allocate ids");
    for (size_t i = 0; i < n; i++) b->ids[i] = (int32_t)(splitmix64((5ull << 32) | i) % 49406u);
    return alloc_f(&b->out[0], b->n_out[0], err);
}

static DbStatus text_run(Bench *b, DbError *err)
{
    return db_text_encoder_forward(b->model, b->ids, b->batch, b->out[0], err);
}

/* sgemm: C[n,n] = A[n,n] B[n,n] (seeds 6, 7); the timed unit is one product. */
static DbStatus sgemm_setup(Bench *b, DbError *err)
{
    size_t n = (size_t)b->h * (size_t)b->h;
    b->n_out[0] = n;
    DbStatus st = alloc_f(&b->in[0], n, err);
    if (st == DB_OK) st = alloc_f(&b->in[1], n, err);
    if (st == DB_OK) st = alloc_f(&b->out[0], n, err);
    if (st != DB_OK) return st;
    bench_fill(b->in[0], n, 6);
    bench_fill(b->in[1], n, 7);
    return DB_OK;
}

static DbStatus sgemm_run(Bench *b, DbError *err)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b->h, b->h, b->h, 1.0f, b->in[0], b->h,
                b->in[1], b->h, 0.0f, b->out[0], b->h);
    return DB_OK;
}

static DbStatus gemm_run(Bench *b, DbError *err)
{
    gemm(0, 0, (size_t)b->h, (size_t)b->h, (size_t)b->h, 1.0f, b->in[0], (size_t)b->h, b->in[1],
         (size_t)b->h, 0.0f, b->out[0], (size_t)b->h);
    return DB_OK;
}

/* train-step: one LoRA step (rank --rank on attention q/k/v/out, alpha = rank, batch B,
 * latent h x w, MSE on the eps prediction, AdamW lr 1e-4, weight decay 1e-2): setup builds the
 * trainer state and the fixed batch (latents seed 1, noise seed 8, context seed 2, timesteps
 * 999 - 37 b, noisy = sqrt(acp) latents + sqrt(1 - acp) noise, as torch_side.py); run does one
 * step (out[0]: the loss; tests/bench/run does not compare training outputs, the adapters'
 * random init differs between the sides). Blocks kept or recomputed under --ckpt-budget. */
static struct {
    UnetState *state;
    TrainParams *tp;
    UnetParams *view;
    UnetTrain *tr;
    float *noisy, *noise, *ctx, *t, *pred, *dpred, *m, *v;
    long step;
} ts;

static DbStatus train_setup(Bench *b, DbError *err)
{
    const DbModel *m = b->model;
    const size_t B = (size_t)b->batch, cin = (size_t)m->unet.in_channels;
    const size_t ns = B * cin * (size_t)b->h * (size_t)b->w;
    const size_t no = B * (size_t)m->unet.out_channels * (size_t)b->h * (size_t)b->w;
    const size_t nc = B * DB_CONTEXT_LEN * (size_t)m->unet.cross_dim;
    const TrainSpec spec = {NULL, b->rank, (float)b->rank, TRAIN_LORA_ATTN, 0};
    const UnetDims d = {B, (size_t)b->h, (size_t)b->w, DB_CONTEXT_LEN};
    DbStatus st = unet_state_build(&ts.state, m, 0, err);
    if (st == DB_OK) st = train_params_new(&ts.tp, m, NET_UNET, &spec, err);
    if (st == DB_OK && !(ts.view = calloc(1, sizeof *ts.view)))
        st = db_fail(err, DB_ERR_NOMEM, "bench: out of memory");
    if (st == DB_OK) st = unet_train_view_build(ts.view, ts.state, m, ts.tp, err);
    const size_t R = ts.tp ? train_params_lora_max_rank(ts.tp) : 0;
    const size_t wsf = ts.state ? unet_state_wscratch_size(ts.state) : 0;
    size_t budget = b->ckpt_mib == -2 ? UNET_CKPT_NONE : (size_t)b->ckpt_mib << 20, fixed = 0;
    if (st == DB_OK && b->ckpt_mib == -1)
        st = unet_train_size(&fixed, ts.view, &m->unet, &d, R, wsf, UNET_CKPT_ALL, err);
    if (st == DB_OK && b->ckpt_mib == -1) {
        const char *dt = b->info.storage_dtype;
        const size_t wbytes = (size_t)b->info.params_unet *
                              (!strcmp(dt, "F16") || !strcmp(dt, "BF16") ? 2 : 4);
        budget = unet_train_default_budget((size_t)6 << 30, wbytes + ((size_t)256 << 20), fixed);
    }
    if (st == DB_OK) st = unet_train_new(&ts.tr, ts.view, &m->unet, &d, R, wsf, budget, err);
    if (st == DB_OK) {
        UnetTrainInfo ti = {0};
        unet_train_info(ts.tr, &ti);
        snprintf(b->extra, sizeof b->extra, ", \"ckpt_budget_mib\": %.1f, \"steps\": %d, "
                 "\"kept_steps\": %d, \"kept_acts_bytes\": %zu, \"shared_acts_bytes\": %zu, "
                 "\"wcache_weights\": %d, \"wcache_bytes\": %zu, \"train_bytes\": %zu",
                 budget == UNET_CKPT_NONE ? -1.0 : budget / 1048576.0, ti.n_steps, ti.n_kept,
                 ti.kept_bytes, ti.shared_bytes, ti.n_wcached, ti.wcache_bytes,
                 unet_train_floats(ts.tr) * sizeof(float));
    }
    const size_t np = ts.tp ? train_params_count(ts.tp) : 0;
    if (st == DB_OK) st = alloc_f(&ts.noisy, ns, err);
    if (st == DB_OK) st = alloc_f(&ts.noise, ns, err);
    if (st == DB_OK) st = alloc_f(&ts.ctx, nc, err);
    if (st == DB_OK) st = alloc_f(&ts.t, B, err);
    if (st == DB_OK) st = alloc_f(&ts.pred, no, err);
    if (st == DB_OK) st = alloc_f(&ts.dpred, no, err);
    if (st == DB_OK) st = alloc_f(&ts.m, np, err);
    if (st == DB_OK) st = alloc_f(&ts.v, np, err);
    if (st == DB_OK) st = alloc_f(&b->out[0], 1, err);
    if (st != DB_OK) return st;
    if (no != ns) return db_fail(err, DB_ERR_UNSUPPORTED, "bench: train-step needs in = out channels");
    b->n_out[0] = 1;
    memset(ts.m, 0, np * sizeof(float));
    memset(ts.v, 0, np * sizeof(float));
    bench_fill(ts.noisy, ns, 1);
    bench_fill(ts.noise, ns, 8);
    bench_fill(ts.ctx, nc, 2);
    /* scaled_linear betas, alphas_cumprod in double (torch_side.alphas_cumprod) */
    for (size_t i = 0; i < B; i++) {
        const int ti = 999 - 37 * (int)i;
        double acp = 1.0;
        for (int k = 0; k <= ti; k++) {
            const double sb = sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * k / 999.0;
            acp *= 1.0 - sb * sb;
        }
        ts.t[i] = (float)ti;
        const float a = (float)sqrt((double)(float)acp), s1 = (float)sqrt(1.0 - (double)(float)acp);
        const size_t per = ns / B;
        for (size_t j = 0; j < per; j++)
            ts.noisy[i * per + j] = a * ts.noisy[i * per + j] + s1 * ts.noise[i * per + j];
    }
    return DB_OK;
}

static DbStatus train_run(Bench *b, DbError *err)
{
    const size_t n = (size_t)b->batch * (size_t)b->model->unet.out_channels * (size_t)b->h *
                     (size_t)b->w;
    const AdamWConfig oc = {1e-4f, 0.9f, 0.999f, 1e-8f, 1e-2f};
    train_params_zero_grads(ts.tp);
    DbStatus st = unet_train_forward(ts.tr, ts.pred, ts.noisy, ts.t, ts.ctx, err);
    if (st != DB_OK) return st;
    double loss = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)ts.pred[i] - ts.noise[i];
        loss += e * e;
        ts.dpred[i] = (float)(2.0 * e / (double)n); /* d mean((pred - noise)^2) */
    }
    b->out[0][0] = (float)(loss / (double)n);
    st = unet_train_backward(ts.tr, NULL, NULL, ts.dpred, err);
    if (st != DB_OK) return st;
    adamw_update(train_params_values(ts.tp), ts.m, ts.v, train_params_grads(ts.tp),
                 train_params_count(ts.tp), ++ts.step, &oc);
    return DB_OK;
}

static const Mode modes[] = {
    {"unet", 1, unet_setup, unet_run},
    {"vae-decode", 1, vae_decode_setup, vae_decode_run},
    {"vae-encode", 1, vae_encode_setup, vae_encode_run},
    {"text-encoder", 1, text_setup, text_run},
    {"sgemm", 0, sgemm_setup, sgemm_run},
    {"gemm", 0, sgemm_setup, gemm_run},
    {"train-step", 1, train_setup, train_run},
};

/* ---- main ------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long maxrss_kib(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* CPU seconds (user + system) this process has used. */
static double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1.0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

static int parse_size(const char *s, int *h, int *w)
{
    char buf[64];
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    char *x = strchr(buf, 'x');
    if (x) *x = '\0';
    return parse_int(buf, 1, 65536, h) && parse_int(x ? x + 1 : buf, 1, 65536, w);
}

static DbStatus dump_outputs(const Bench *b, DbError *err)
{
    FILE *f = fopen(b->dump, "wb");
    if (!f) return db_fail(err, DB_ERR_IO, "%s: cannot open for writing", b->dump);
    int ok = 1;
    for (int i = 0; i < 2; i++)
        if (b->out[i] && fwrite(b->out[i], sizeof(float), b->n_out[i], f) != b->n_out[i]) ok = 0;
    if (fclose(f) != 0) ok = 0;
    return ok ? DB_OK : db_fail(err, DB_ERR_IO, "%s: write failed", b->dump);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_driver unet|vae-decode|vae-encode|text-encoder|sgemm|gemm|train-step "
                    "[--model DIR] [--batch B] [--size H[xW]] [--reps N] [--warmup N] "
                    "[--threads T] [--rank R] [--ckpt-budget MIB|none] [--dump FILE] "
                    "[--weight-cache auto|none|all]\n");
    return 2;
}

int main(int argc, char **argv)
{
    Bench b = {.batch = 1, .h = 64, .w = 64, .reps = 3, .warmup = 1, .threads = 2, .rank = 4,
               .ckpt_mib = -1};
    DbModelOptions mopts = {NULL, DB_PRED_UNKNOWN, DB_WEIGHT_CACHE_AUTO};
    const Mode *mode = NULL;
    if (argc < 2) return usage();
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(argv[1], modes[i].name)) mode = &modes[i];
    if (!mode) return usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (ok && !strcmp(a, "--model")) b.model_path = v;
        else if (ok && !strcmp(a, "--dump")) b.dump = v;
        else if (ok && !strcmp(a, "--batch")) ok = parse_int(v, 1, 4096, &b.batch);
        else if (ok && !strcmp(a, "--size")) ok = parse_size(v, &b.h, &b.w);
        else if (ok && !strcmp(a, "--reps")) ok = parse_int(v, 1, MAX_REPS, &b.reps);
        else if (ok && !strcmp(a, "--warmup")) ok = parse_int(v, 0, MAX_REPS, &b.warmup);
        else if (ok && !strcmp(a, "--threads")) ok = parse_int(v, 1, 1024, &b.threads);
        else if (ok && !strcmp(a, "--rank")) ok = parse_int(v, 1, 1024, &b.rank);
        else if (ok && !strcmp(a, "--weight-cache"))
            ok = db_weight_cache_from_name(v, &mopts.weight_cache) == 0;
        else if (ok && !strcmp(a, "--ckpt-budget")) {
            int mib;
            ok = !strcmp(v, "none") || parse_int(v, 0, 1 << 24, &mib);
            b.ckpt_mib = !strcmp(v, "none") ? -2 : ok ? mib : -1;
        }
        else ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_driver: bad option %s %s\n", a, v ? v : "");
            return usage();
        }
        i++;
    }
    if (mode->needs_model && !b.model_path) {
        fprintf(stderr, "bench_driver: %s needs --model\n", mode->name);
        return 2;
    }

    DbError err = {0};
    DbStatus st = db_set_threads(b.threads, &err);
    double open_s = 0, warm_s = 0, times[MAX_REPS], cpu[MAX_REPS], setup_cpu = cpu_s();
    const char *status = "ok";
    if (st == DB_OK && mode->needs_model) {
        double t0 = now_s();
        st = db_model_open(&b.model, b.model_path, &mopts, &err);
        open_s = now_s() - t0;
        if (st == DB_OK) db_model_get_info(b.model, &b.info);
    }
    if (st == DB_OK && !mode->setup) status = "unimplemented";
    else if (st == DB_OK) st = mode->setup(&b, &err);
    setup_cpu = cpu_s() - setup_cpu;
    int done = 0;
    if (st == DB_OK && mode->setup) {
        double t0 = now_s();
        for (int i = 0; st == DB_OK && i < b.warmup; i++) st = mode->run(&b, &err);
        warm_s = now_s() - t0;
        for (; st == DB_OK && done < b.reps; done++) {
            t0 = now_s();
            const double c0 = cpu_s();
            st = mode->run(&b, &err);
            times[done] = now_s() - t0;
            cpu[done] = cpu_s() - c0;
        }
        if (st == DB_OK && b.dump) st = dump_outputs(&b, &err);
    }
    if (st != DB_OK) status = "error";
    if (st == DB_OK && !strcmp(mode->name, "sgemm"))
        snprintf(b.extra, sizeof b.extra, ", \"blas_core\": \"%s\"", openblas_get_corename());
    if (st == DB_OK && !strcmp(mode->name, "gemm"))
        snprintf(b.extra, sizeof b.extra, ", \"gemm_fast\": %d", gemm_fast_available());
    if (st == DB_OK && !strcmp(mode->name, "unet")) {
        int n_cached;
        size_t bytes;
        unet_run_cache_info(b.model, &n_cached, &bytes);
        snprintf(b.extra, sizeof b.extra, ", \"unet_cache_weights\": %d, \"unet_cache_bytes\": %zu",
                 n_cached, bytes);
    }

    printf("{\"mode\": \"%s\", \"status\": \"%s\", \"batch\": %d, \"h\": %d, \"w\": %d, "
           "\"threads\": %d, \"open_s\": %.6f, \"warmup_s\": %.6f, \"times\": [",
           mode->name, status, b.batch, b.h, b.w, b.threads, open_s, warm_s);
    for (int i = 0; i < done; i++) printf("%s%.6f", i ? ", " : "", times[i]);
    printf("], \"setup_cpu_s\": %.3f, \"cpu_times\": [", setup_cpu);
    for (int i = 0; i < done; i++) printf("%s%.3f", i ? ", " : "", cpu[i]);
    printf("]");
    if (done > 0 && st == DB_OK) {
        qsort(times, (size_t)done, sizeof times[0], cmp_double);
        double med = done % 2 ? times[done / 2] : 0.5 * (times[done / 2 - 1] + times[done / 2]);
        printf(", \"median_s\": %.6f", med);
    }
    printf(", \"maxrss_kib\": %ld%s", maxrss_kib(), b.extra);
    if (st != DB_OK) {
        printf(", \"error\": ");
        json_str(err.msg);
    }
    printf("}\n");

    for (int i = 0; i < 3; i++) free(b.in[i]);
    for (int i = 0; i < 2; i++) free(b.out[i]);
    free(b.ids);
    db_model_free(b.model);
    return st == DB_OK ? 0 : 1;
}
