/* libFuzzer target: image files through the CLI's GEGL loader (engine/cli/image_load.c, used
 * by encode-image): image_probe, then image_load_rgb. The first byte picks how; the rest is
 * the file:
 *   bits 0-2  the file's extension, which is what gegl:load picks its loader by:
 *             png jpg tif gif ppm pgm webp pnm
 *   bits 3-4  the target size: the image's own (rounded down to multiples of 8), 64x64,
 *             16x40 (center crop + resampling), 8x8
 * A probed image over 512x512 is not decoded (the size limits have their own test in
 * tests/test_images.py; decoding megapixels here would only slow the fuzzer down). Checked:
 * every refusal is one line naming the file; an accepted image has the size asked for and
 * every value in [-1, 1].
 * GEGL runs single-threaded with its tile swap in RAM, initialised once per process. The
 * image decoders themselves (libpng, libjpeg, libtiff, libwebp, GEGL's gif and ppm loaders) are
 * not instrumented: they are fuzzed for crashes, exits, leaks and bad output only, without
 * coverage feedback.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "fuzz_util.h"
#include "image_load.h"

#include <gegl.h>
#include <glib.h>

#define DECODE_MAX_PIXELS (512 * 512)

/* GEGL loads every plug-in at gegl_init and unloads it again (GTypeModule) until one of its
 * operations is used; the libraries a plug-in pulled in (libavcodec, libjxl, libraw, ...) go
 * with it, leaving what their constructors allocated unreachable, which LeakSanitizer would
 * report as a leak with frames it cannot name. Keeping every module mapped (this dlclose
 * takes precedence over libc's: -Wl,--export-dynamic-symbol=dlclose) leaves that state
 * reachable (tests/sanitize preloads the same dlclose into the CLI). */
int dlclose(void *handle);
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_setenv("GEGL_SWAP", "RAM", TRUE);
    g_setenv("GEGL_THREADS", "1", TRUE);
    g_setenv("GEGL_USE_OPENCL", "no", TRUE);
    gegl_init(NULL, NULL);
    return 0;
}

static void check(int ok, const char *what, const char *msg)
{
    if (!ok) {
        fprintf(stderr, "fuzz_image: invariant broken: %s (\"%s\")\n", what, msg);
        abort();
    }
}

/* A refusal: a one-line message that starts with the path. */
static void check_refusal(const char *path, const char *msg)
{
    check(strncmp(msg, path, strlen(path)) == 0, "message names the file", msg);
    check(!strchr(msg, '\n'), "one-line message", msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const ext[8] = {"png", "jpg", "tif", "gif", "ppm", "pgm", "webp", "pnm"};
    static const int target[4][2] = {{0, 0}, {64, 64}, {16, 40}, {8, 8}};
    if (size < 1) return 0;
    char name[32];
    snprintf(name, sizeof name, "image.%s", ext[data[0] & 7]);
    const char *path = fuzz_write(0, name, data + 1, size - 1);
    const int *wh = target[(data[0] >> 3) & 3];

    char msg[1024] = "";
    int w = -1, h = -1;
    if (image_probe(path, &w, &h, msg, sizeof msg) != 0) {
        check_refusal(path, msg);
        return 0;
    }
    check(w >= IMAGE_MIN_SIDE && h >= IMAGE_MIN_SIDE && (long long)w * h <= IMAGE_MAX_PIXELS,
          "probed size within the limits", "");
    if ((long long)w * h > DECODE_MAX_PIXELS) return 0;

    float *img = NULL;
    int ow = -1, oh = -1;
    msg[0] = 0;
    if (image_load_rgb(path, wh[0], wh[1], &img, &ow, &oh, msg, sizeof msg) != 0) {
        check(img == NULL, "no image on failure", msg);
        check_refusal(path, msg);
        return 0;
    }
    int ew = wh[0] ? wh[0] : w / 8 * 8, eh = wh[1] ? wh[1] : h / 8 * 8;
    check(img && ow == ew && oh == eh, "output size", "");
    for (size_t i = 0; i < (size_t)3 * ow * oh; i++)
        check(img[i] >= -1.0f && img[i] <= 1.0f, "pixel values in [-1, 1] (and not NaN)", "");
    g_free(img);
    return 0;
}
