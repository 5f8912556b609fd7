/* libdreambooth: DreamBooth for Stable Diffusion 1.x/2.x on the CPU.
 *
 * Public API shared by the `dreambooth` CLI and the GIMP plug-in. The library never
 * prints and never exits: every call returns a DbStatus and, on failure, fills a
 * DbError whose message is one line naming the file and the problem.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifndef DREAMBOOTH_H
#define DREAMBOOTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DB_OK = 0,
    DB_ERR_IO,          /* file missing, unreadable, unwritable, disk full */
    DB_ERR_FORMAT,      /* malformed file (safetensors, JSON, tokenizer, pickle) */
    DB_ERR_MODEL,       /* well-formed file that is not the model we expect */
    DB_ERR_ARG,         /* bad option or input from the caller */
    DB_ERR_NOMEM,       /* allocation failed or would exceed a limit */
    DB_ERR_UNSUPPORTED, /* valid but not (yet) supported */
    DB_ERR_CANCELLED    /* the progress callback asked to stop */
} DbStatus;

#define DB_ERROR_MSG_MAX 1024

typedef struct {
    DbStatus status;
    char msg[DB_ERROR_MSG_MAX];
} DbError;

/* Sets err (may be NULL) and returns st. The message is one line (newlines are replaced). */
DbStatus db_fail(DbError *err, DbStatus st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void db_error_clear(DbError *err);
const char *db_status_name(DbStatus st);

/* Long work reports progress in [0,1]; returning nonzero asks the library to stop
 * (the call then returns DB_ERR_CANCELLED). */
typedef int (*DbProgressFn)(void *user, double fraction, const char *stage);

/* Threads for OpenMP loops and OpenBLAS (n >= 1). */
DbStatus db_set_threads(int n, DbError *err);

/* ---- Models ------------------------------------------------------------------------ */

typedef enum { DB_FAMILY_SD1 = 1, DB_FAMILY_SD2 = 2 } DbFamily;
typedef enum { DB_LAYOUT_DIFFUSERS = 1, DB_LAYOUT_SINGLE_FILE = 2 } DbLayout;
typedef enum { DB_PRED_UNKNOWN = 0, DB_PRED_EPS = 1, DB_PRED_V = 2 } DbPrediction;

typedef struct DbModel DbModel;

/* fp32 copies of the UNet's half-precision (F16/BF16) matrices and conv kernels, made on the
 * first UNet call and kept with the model, so that later calls read them instead of widening
 * ~860M weights on every call (the widened values are the same either way: results are
 * bit-identical). The copies take twice the stored size (3.2 GiB for SD 1.5); the stored
 * half-precision pages they replace are released. */
typedef enum {
    DB_WEIGHT_CACHE_AUTO = 0, /* as many as fit in MemAvailable, less the call's work and 1 GiB */
    DB_WEIGHT_CACHE_NONE = 1, /* none: least memory, widen on every call */
    DB_WEIGHT_CACHE_ALL = 2   /* all of them */
} DbWeightCache;
/* "auto", "none", "all" -> *out; 0, or -1 for another name. */
int db_weight_cache_from_name(const char *name, DbWeightCache *out);

typedef struct {
    const char *tokenizer;    /* --tokenizer: folder with vocab.json+merges.txt, or a bpe .txt.gz; NULL = search */
    DbPrediction prediction;  /* override; DB_PRED_UNKNOWN = from the model */
    DbWeightCache weight_cache;
} DbModelOptions;

/* Opens a diffusers folder or a single-file checkpoint (detected by content), reads
 * configs, maps and validates every tensor (name, shape, dtype) of every network. Values
 * are not read here: a network's weights are checked for NaN/Inf on its first use. */
DbStatus db_model_open(DbModel **out, const char *path, const DbModelOptions *opts, DbError *err);
void db_model_free(DbModel *m);
/* Scans every weight for NaN/Inf now (each network is otherwise scanned on its first use, by
 * the calls below); DB_ERR_MODEL names the file, the tensor and the element. */
DbStatus db_model_check_weights(DbModel *m, DbError *err);

typedef struct {
    DbFamily family;
    DbLayout layout;
    const char *storage_dtype;     /* "F32", "F16", "BF16" or "mixed" */
    DbPrediction prediction;
    int prediction_from_user;      /* 0: from config/metadata/default */
    const char *prediction_source; /* where the prediction type came from */
    const char *tokenizer_source;  /* path, or NULL when no tokenizer was found */
    int64_t params_text_encoder, params_unet, params_vae;
    int text_hidden, text_layers, text_heads;
    int unet_in_channels, unet_cross_dim;
    int vae_latent_channels;
    float vae_scaling_factor;
} DbModelInfo;

void db_model_get_info(const DbModel *m, DbModelInfo *info);

/* ---- Text ---------------------------------------------------------------------------- */

#define DB_CONTEXT_LEN 77

/* Tokenizes one prompt into exactly 77 ids (BOS, tokens, EOS, model padding).
 * *truncated (may be NULL) receives the number of tokens dropped. */
DbStatus db_tokenize(const DbModel *m, const char *prompt, int32_t ids[DB_CONTEXT_LEN],
                     int *truncated, DbError *err);

/* CLIP text encoder: ids [B,77] -> last_hidden_state [B,77,D] (D = text hidden size). */
DbStatus db_text_encoder_forward(DbModel *m, const int32_t *ids, int batch, float *out,
                                 DbError *err);

/* ---- UNet ------------------------------------------------------------------------------ */

/* UNet2DConditionModel: sample [B, in_channels, h, w], timesteps [B], context
 * [B, seq, cross_attention_dim] -> out [B, out_channels, h, w] (out must not alias sample).
 * h and w: multiples of 2^(blocks-1) (8 for SD). progress (may be NULL) is called after each
 * block; returning nonzero stops with DB_ERR_CANCELLED. */
DbStatus db_unet_forward(DbModel *m, const float *sample, const float *timesteps,
                         const float *context, int batch, int h, int w, int seq, float *out,
                         DbProgressFn progress, void *user, DbError *err);
/* out_channels of the model's UNet (0 for NULL). */
int db_unet_out_channels(const DbModel *m);

/* ---- VAE (AutoencoderKL) ------------------------------------------------------------- */

/* Tiling of VAE calls. Tiles are tile x tile image pixels (tile/f latent cells, f the scale
 * factor), overlapping by overlap pixels, each run on its own and blended linearly over the
 * overlaps: memory is bounded by the tile size; near seams the result differs from an
 * untiled run (group norms and the mid-block attention see one tile). */
typedef struct {
    int tile;         /* tile edge in image pixels, a multiple of f; 0 = never tile (so a
                         zeroed struct means untiled); -1 = automatic: untiled unless the
                         activations exceed max_bytes, then tiles of the VAE's sample_size
                         (512 for SD) */
    int overlap;      /* pixels, a multiple of f below tile; 0 = tile / 4 */
    size_t max_bytes; /* automatic mode threshold; 0 = 2 GiB */
} DbVaeOptions;

/* Image-to-latent scale factor f = 2^(len(block_out_channels) - 1) (8 for SD). */
int db_vae_scale_factor(const DbModel *m);
/* f, image input channels, latent channels, image output channels (all 0 for NULL). */
void db_vae_dims(const DbModel *m, int *scale, int *in_channels, int *latent_channels,
                 int *out_channels);

/* Encoder + quant_conv: image [B, Cin, H, W] in [-1, 1], H and W multiples of f ->
 * mean, logvar [B, latent, H/f, W/f], unscaled (multiply latents by vae_scaling_factor),
 * logvar clamped to [-30, 20]. opts NULL = automatic tiling. progress may be NULL. */
DbStatus db_vae_encode(DbModel *m, const float *image, int batch, int height, int width,
                       float *mean, float *logvar, const DbVaeOptions *opts,
                       DbProgressFn progress, void *user, DbError *err);

/* post_quant_conv + decoder: latent [B, latent, h, w] unscaled (divide by
 * vae_scaling_factor first) -> image [B, Cout, h*f, w*f]. */
DbStatus db_vae_decode(DbModel *m, const float *latent, int batch, int height, int width,
                       float *image, const DbVaeOptions *opts, DbProgressFn progress,
                       void *user, DbError *err);

/* ---- Random-weight models (init-model) ---------------------------------------------- */

typedef struct {
    DbLayout layout;            /* 0 = DB_LAYOUT_DIFFUSERS */
    const char *dtype;          /* "f32" (NULL), "f16" or "bf16" */
    uint64_t seed;              /* weights are a function of (seed, tensor name) */
    const char *tokenizer_from; /* bpe_simple_vocab_16e6.txt[.gz] for the diffusers tokenizer/
                                   folder; NULL = look in the user data folder (dreambooth/) */
    int force;                  /* replace an existing model (a diffusers folder is replaced only
                                   when it holds model_index.json) */
} DbInitModelOptions;

typedef struct {
    int64_t params_text_encoder, params_unet, params_vae; /* canonical parameters written */
    uint64_t bytes;             /* tensor data bytes written */
    int tokenizer_written;
    char note[DB_ERROR_MSG_MAX]; /* a warning for the user ("" when none) */
} DbInitModelReport;

/* Writes a Stable Diffusion model with random weights (scaled so forward passes stay O(1)),
 * real tensor names and configs: arch "sd15", "sd21" (768, v-prediction; "sd21-v" is the
 * same), "sd21-base", "tiny-sd1", "tiny-sd2". out: a diffusers folder, or a .safetensors file
 * for DB_LAYOUT_SINGLE_FILE. Written tensor by tensor (memory stays small) and atomically.
 * report may be NULL. */
DbStatus db_init_model(const char *arch, const char *out, const DbInitModelOptions *opts,
                       DbInitModelReport *report, DbProgressFn progress, void *user,
                       DbError *err);

/* ---- LoRA ------------------------------------------------------------------------------ */

/* Merges a LoRA file into working copies of the weights it touches:
 * W' = W + weight * alpha / r * up @ down (convolutions too). Reads kohya files
 * (lora_unet_<module, dots as _>.lora_down.weight / .lora_up.weight / .alpha, lora_te_...)
 * and diffusers/PEFT files (unet.<module>.lora_A.weight / lora_B.weight, text_encoder....;
 * scale 1 unless an .alpha tensor is present). The mapped model files are never written: each
 * affected weight becomes an F32 copy owned by the model. Every key is checked before any
 * weight changes: an unknown module, a missing half or a shape mismatch fails with one line
 * naming the file and the key, leaving the model as it was. Call before generating (it drops
 * the text encoder's cached weights). Several files (or the same one twice) add up. */
DbStatus db_model_apply_lora(DbModel *m, const char *path, float weight, DbError *err);

/* ---- Generation (txt2img) -------------------------------------------------------------- */

/* Called after each image: latent [C, h, w] as the sampler left it (scaled space, before
 * dividing by vae_scaling_factor: diffusers' output_type="latent"), image [3, H, W] the VAE
 * output (about [-1, 1], not clamped). Returning an error stops db_generate with it. */
typedef DbStatus (*DbGenerateImageFn)(void *user, int index, uint64_t seed, const float *latent,
                                      const float *image, DbError *err);

typedef struct {
    const char *prompt;        /* required */
    const char *negative;      /* NULL = "" */
    const char *sampler;       /* ddim, euler, euler-a, dpm++2m, dpm++2m-karras (NULL), ddpm */
    int steps;                 /* 1..1000; 0 = 25 */
    float cfg;                 /* guidance scale in [0, 100]; <= 1: the prompt alone, one UNet
                                  batch (diffusers' guidance_scale > 1 rule), else uncond and cond
                                  in one batch-2 UNet call per step */
    float eta;                 /* DDIM only, [0, 1] */
    uint64_t seed;             /* image i: a fresh torch.Generator().manual_seed(seed + i) draws
                                  its initial latent and every ancestral noise (as A1111) */
    int width, height;         /* 0 = native (UNet sample_size x VAE factor) */
    int count;                 /* 1..1000; 0 = 1 */
    const float *noise;        /* NULL, or [count, C, h, w] initial latents (unit variance, as
                                  randn) used instead of the seeded draw */
    const DbVaeOptions *vae;   /* NULL = automatic tiling */
    DbGenerateImageFn on_image; /* may be NULL */
    void *image_user;
} DbGenerateOptions;

/* Native size, and the multiple image sizes must be (f x 2^(UNet blocks - 1): 64 for SD). */
void db_generate_sizes(const DbModel *m, int *native_width, int *native_height, int *multiple);

/* txt2img with StableDiffusionPipeline's semantics. images_out (may be NULL) receives
 * [count, 3, H, W] VAE outputs; each image also goes to o->on_image as it is done. progress
 * gets the fraction of the whole run and a stage such as "image 1/2: step 3/25"; cancelling
 * returns DB_ERR_CANCELLED. Scheduler values come from scheduler/scheduler_config.json in
 * diffusers folders, Stable Diffusion's otherwise. */
DbStatus db_generate(DbModel *m, const DbGenerateOptions *o, float *images_out,
                     DbProgressFn progress, void *user, DbError *err);

/* diffusers' postprocess + numpy_to_pil: out [H, W, 3] = round(clamp(x / 2 + 0.5, 0, 1) * 255)
 * (float32, round half to even) from image [3, H, W]. */
void db_image_to_rgb8(uint8_t *out, const float *image, int height, int width);

#ifdef __cplusplus
}
#endif
#endif
