/* Image files through GEGL: gegl:load -> (crop, scale) -> R'G'B'A float, alpha over white,
 * planar [3, H, W] in [-1, 1] (StableDiffusion's VaeImageProcessor.normalize: 2 x - 1 of the
 * sRGB-encoded values). GEGL's loaders report corrupt or truncated data only by printing
 * (g_printerr "LIBPNG ERROR", g_warning), never through the graph, so both are captured while
 * a file is read and turned into the one-line error.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "image_load.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <gegl.h>
#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <tiffio.h>

/* ---- GEGL's complaints while a file is read --------------------------------------------- */

static char captured[512];

static void capture_text(const char *s)
{
    if (captured[0] || !s) return; /* the first complaint is the cause */
    g_strlcpy(captured, s, sizeof captured);
    for (char *p = captured; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    g_strchomp(captured);
}

static void capture_print(const gchar *s) { capture_text(s); }

static void capture_log(const gchar *domain, GLogLevelFlags level, const gchar *message,
                        gpointer user)
{
    (void)domain; (void)user;
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
        capture_text(message);
}

/* libpng's and libjpeg's default handlers print straight to stderr ("Premature end of JPEG
 * file" is only a warning to libjpeg, which fills the rest with grey): fd 2 points to a temp
 * file while a file is read; whatever lands there is a complaint, and the user sees one line. */
typedef struct {
    GPrintFunc printerr;
    GLogFunc log;
    int saved_fd2;
    FILE *tmp;
} Capture;

static Capture capture_begin(void)
{
    captured[0] = 0;
    Capture c = {g_set_printerr_handler(capture_print), g_log_set_default_handler(capture_log, NULL), -1, tmpfile()};
    fflush(stderr);
    if (c.tmp) {
        c.saved_fd2 = dup(2);
        if (c.saved_fd2 >= 0) dup2(fileno(c.tmp), 2);
    }
    return c;
}

/* Moves what reached fd 2 into captured[] (when nothing else was). */
static void capture_collect(Capture *c)
{
    fflush(stderr);
    if (!c->tmp || captured[0]) return;
    char buf[sizeof captured];
    rewind(c->tmp);
    size_t n = fread(buf, 1, sizeof buf - 1, c->tmp);
    buf[n] = 0;
    if (n) capture_text(buf);
}

static void capture_end(Capture c)
{
    fflush(stderr);
    if (c.saved_fd2 >= 0) {
        dup2(c.saved_fd2, 2);
        close(c.saved_fd2);
    }
    if (c.tmp) fclose(c.tmp);
    g_set_printerr_handler(c.printerr);
    g_log_set_default_handler(c.log, NULL);
}

static int fail(char *msg, size_t n, const char *path, const char *what)
{
    if (captured[0]) snprintf(msg, n, "%s: %s (%s)", path, what, captured);
    else snprintf(msg, n, "%s: %s", path, what);
    return -1;
}

/* ---- probing ------------------------------------------------------------------------------ */

static int check_file(const char *path, char *msg, size_t n)
{
    GStatBuf sb;
    if (g_stat(path, &sb) != 0) {
        snprintf(msg, n, "%s: cannot open: %s", path, g_strerror(errno));
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(msg, n, "%s: not a regular file", path);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, n, "%s: cannot open: %s", path, g_strerror(errno));
        return -1;
    }
    fclose(f);
    if (sb.st_size == 0) {
        snprintf(msg, n, "%s: empty file, not an image", path);
        return -1;
    }
    return 0;
}

/* ---- JPEG, read by libjpeg before GEGL sees it ------------------------------------------
 * GEGL 0.4's gegl:jpg-load leaves libjpeg's default error handler in place, whose error_exit
 * calls exit(1): one corrupt marker ends the whole process (silently here, as fd 2 is
 * captured; found by tests/fuzz/fuzz_image). It also feeds libjpeg 0 bytes at the end of the
 * file instead of an EOI marker. So a file that goes to jpg-load (JPEG content, or a name GLib
 * takes for image/jpeg) is first read here the same way (the header; with decode, every
 * scanline) with errors and warnings ("Premature end of JPEG file") turned into a refusal;
 * GEGL then only gets files that libjpeg reads to the last scanline without a complaint. */
typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    char text[JMSG_LENGTH_MAX];
} JpegCheck;

static void jpeg_check_error(j_common_ptr c)
{
    JpegCheck *e = (JpegCheck *)c->err;
    c->err->format_message(c, e->text);
    longjmp(e->jmp, 1);
}

static void jpeg_check_message(j_common_ptr c, int level)
{
    if (level < 0) jpeg_check_error(c); /* a warning: corrupt data */
}

static int is_jpeg(const char *path, FILE *f)
{
    unsigned char head[2] = {0, 0};
    size_t got = fread(head, 1, 2, f);
    rewind(f);
    if (got == 2 && head[0] == 0xFF && head[1] == 0xD8) return 1;
    gchar *type = g_content_type_guess(path, NULL, 0, NULL);
    int jpeg = g_content_type_equals(type, "image/jpeg");
    g_free(type);
    return jpeg;
}

/* Reads f with libjpeg; 0, or -1 with msg. */
static int jpeg_read_checked(FILE *f, const char *path, int decode, char *msg, size_t n)
{
    struct jpeg_decompress_struct cinfo;
    JpegCheck err;
    memset(&err, 0, sizeof err);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_check_error;
    err.pub.emit_message = jpeg_check_message;
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        snprintf(msg, n, "%s: corrupt or truncated image (libjpeg: %s)", path, err.text);
        return -1;
    }
    jpeg_stdio_src(&cinfo, f);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 2, 0xFFFF); /* the ICC profile, as jpg-load */
    jpeg_read_header(&cinfo, TRUE);
    if (decode) {
        jpeg_start_decompress(&cinfo);
        JSAMPARRAY row = (*cinfo.mem->alloc_sarray)(
            (j_common_ptr)&cinfo, JPOOL_IMAGE, cinfo.output_width * cinfo.output_components, 1);
        while (cinfo.output_scanline < cinfo.output_height) jpeg_read_scanlines(&cinfo, row, 1);
    }
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static int jpeg_check(const char *path, int decode, char *msg, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, n, "%s: cannot open: %s", path, g_strerror(errno));
        return -1;
    }
    int rc = is_jpeg(path, f) ? jpeg_read_checked(f, path, decode, msg, n) : 0;
    fclose(f);
    return rc;
}

/* ---- TIFF, read by libtiff before GEGL sees it -------------------------------------------
 * GEGL 0.4.42's gegl:tiff-load goes on decoding a file whose directory libtiff could not read
 * and then copies past the end of its own strip buffer (an over-read found by fuzz_image). So
 * a TIFF (by its magic or GLib's content type) is first opened here with libtiff, its first
 * directory must be readable, and with decode every strip or tile of it is decoded (any
 * sample format: float TIFFs stay accepted); any libtiff error is a refusal, and GEGL only
 * gets files libtiff reads cleanly. Error handlers are process-wide in libtiff: set here, around the check only. */
static char tiff_error[256];

static void tiff_check_error(const char *module, const char *fmt, va_list ap)
{
    if (tiff_error[0]) return; /* keep the first */
    int k = snprintf(tiff_error, sizeof tiff_error, "%s: ", module ? module : "libtiff");
    if (k > 0 && (size_t)k < sizeof tiff_error)
        vsnprintf(tiff_error + k, sizeof tiff_error - (size_t)k, fmt, ap);
}

static int is_tiff(const char *path)
{
    unsigned char h[4] = {0, 0, 0, 0};
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(h, 1, 4, f) : 0;
    if (f) fclose(f);
    if (got == 4 && ((h[0] == 'I' && h[1] == 'I' && (h[2] == 42 || h[2] == 43) && h[3] == 0) ||
                     (h[0] == 'M' && h[1] == 'M' && h[2] == 0 && (h[3] == 42 || h[3] == 43))))
        return 1;
    gchar *type = g_content_type_guess(path, NULL, 0, NULL);
    int tiff = g_content_type_equals(type, "image/tiff");
    g_free(type);
    return tiff;
}

static int tiff_check(const char *path, int decode, char *msg, size_t n)
{
    if (!is_tiff(path)) return 0;
    tiff_error[0] = 0;
    TIFFErrorHandler old_err = TIFFSetErrorHandler(tiff_check_error);
    TIFFErrorHandler old_warn = TIFFSetWarningHandler(NULL);
    TIFF *t = TIFFOpen(path, "r");
    char why[64] = "";
    if (t && (TIFFNumberOfDirectories(t) == 0 || !TIFFSetDirectory(t, 0)))
        snprintf(why, sizeof why, "no readable image directory");
    if (t && !why[0] && decode && !tiff_error[0]) {
        const int tiled = TIFFIsTiled(t);
        const uint32_t pieces = tiled ? TIFFNumberOfTiles(t) : TIFFNumberOfStrips(t);
        const tmsize_t size = tiled ? TIFFTileSize(t) : TIFFStripSize(t);
        void *buf = size > 0 && size <= ((tmsize_t)1 << 28) ? g_try_malloc((gsize)size) : NULL;
        if (!buf) snprintf(why, sizeof why, "strips or tiles of an unusable size");
        for (uint32_t i = 0; buf && i < pieces && !tiff_error[0]; i++)
            if ((tiled ? TIFFReadEncodedTile(t, i, buf, size) : TIFFReadEncodedStrip(t, i, buf, size)) < 0)
                snprintf(why, sizeof why, "cannot decode %s %u", tiled ? "tile" : "strip", i);
        g_free(buf);
    }
    if (t) TIFFClose(t);
    TIFFSetErrorHandler(old_err);
    TIFFSetWarningHandler(old_warn);
    if (!t || why[0] || tiff_error[0]) {
        snprintf(msg, n, "%s: corrupt or truncated image (libtiff: %s)", path,
                 tiff_error[0] ? tiff_error : why[0] ? why : "cannot open");
        return -1;
    }
    return 0;
}

/* ---- PNG, its chunk layout walked before GEGL sees it ------------------------------------
 * GEGL 0.4's gegl:png-load reads through a GInputStream whose short reads at the end of the
 * file are not errors to libpng, which then skips an unknown chunk whose length field says
 * 1.7 GB one kilobyte at a time: seconds of empty reads for a 52-byte file (a timeout found
 * by fuzz_image). So a file with the PNG signature has its chunks walked here (lengths only,
 * no decoding): every chunk, up to IEND, must lie inside the file, and IEND must come. */
static int png_check(const char *path, char *msg, size_t n)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, n, "%s: cannot open: %s", path, g_strerror(errno));
        return -1;
    }
    unsigned char head[8];
    int rc = 0;
    if (fread(head, 1, 8, f) == 8 && memcmp(head, sig, 8) == 0) {
        fseeko(f, 0, SEEK_END);
        const long long size = (long long)ftello(f);
        long long pos = 8;
        char why[96] = "no IEND chunk: the file is truncated";
        while (pos + 12 <= size) {
            unsigned char c[8];
            if (fseeko(f, (off_t)pos, SEEK_SET) != 0 || fread(c, 1, 8, f) != 8) break;
            const long long len = (long long)c[0] << 24 | c[1] << 16 | c[2] << 8 | c[3];
            char type[5];
            for (int i = 0; i < 4; i++) type[i] = g_ascii_isalpha(c[4 + i]) ? (char)c[4 + i] : '?';
            type[4] = 0;
            if (len > 0x7FFFFFFFLL || pos + 12 + len > size) {
                snprintf(why, sizeof why, "chunk '%s' of %lld bytes runs past the end of the file",
                         type, len);
                break;
            }
            if (memcmp(c + 4, "IEND", 4) == 0) {
                why[0] = 0;
                break;
            }
            pos += 12 + len;
        }
        if (why[0]) {
            snprintf(msg, n, "%s: corrupt or truncated image (PNG: %s)", path, why);
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}

/* libjpeg's and libtiff's own reading, and the PNG chunk walk, before GEGL's loaders (see
 * above). */
static int format_check(const char *path, int decode, char *msg, size_t n)
{
    if (!decode && png_check(path, msg, n)) return -1;
    return jpeg_check(path, decode, msg, n) || tiff_check(path, decode, msg, n) ? -1 : 0;
}

/* The loader node's extent: the loaders read it from the header without decoding. */
static int probe_node(GeglNode *load, const char *path, int *w, int *h, char *msg, size_t n)
{
    GeglRectangle r = gegl_node_get_bounding_box(load);
    *w = r.width;
    *h = r.height;
    if (r.width <= 0 || r.height <= 0)
        return fail(msg, n, path, "cannot read the image (unknown format, corrupt, truncated or 0x0)");
    if (r.width < IMAGE_MIN_SIDE || r.height < IMAGE_MIN_SIDE) {
        snprintf(msg, n, "%s: %dx%d pixels is too small (at least %dx%d)", path, r.width,
                 r.height, IMAGE_MIN_SIDE, IMAGE_MIN_SIDE);
        return -1;
    }
    if (r.width > IMAGE_MAX_SIDE || r.height > IMAGE_MAX_SIDE ||
        (long long)r.width * r.height > IMAGE_MAX_PIXELS) {
        snprintf(msg, n, "%s: %dx%d pixels is over the limit of %lld megapixels (e.g. 8192x8192); "
                 "downscale it first", path, r.width, r.height, IMAGE_MAX_PIXELS >> 20);
        return -1;
    }
    return 0;
}

int image_probe(const char *path, int *width, int *height, char *msg, size_t msg_size)
{
    if (check_file(path, msg, msg_size) || format_check(path, 0, msg, msg_size)) return -1;
    Capture c = capture_begin();
    GeglNode *graph = gegl_node_new();
    GeglNode *load = gegl_node_new_child(graph, "operation", "gegl:load", "path", path, NULL);
    int rc = probe_node(load, path, width, height, msg, msg_size);
    g_object_unref(graph);
    capture_collect(&c);
    capture_end(c);
    return rc;
}

/* ---- loading ------------------------------------------------------------------------------ */

/* The whole file decoded into a tiled GeglBuffer in its own pixel format (at most
 * IMAGE_MAX_PIXELS x 8 bytes: RGBA u16); NULL with captured[] set on errors. */
static GeglBuffer *decode(GeglNode *graph, GeglNode *load)
{
    GeglBuffer *buf = NULL;
    GeglNode *sink = gegl_node_new_child(graph, "operation", "gegl:buffer-sink", "buffer", &buf, NULL);
    gegl_node_link(load, sink);
    gegl_node_process(sink);
    return buf;
}

int image_load_rgb(const char *path, int width, int height, float **out, int *out_width,
                   int *out_height, char *msg, size_t msg_size)
{
    *out = NULL;
    if ((width || height) && (width < 8 || height < 8 || width > 4096 || height > 4096 ||
                              width % 8 || height % 8)) {
        snprintf(msg, msg_size, "%s: target size %dx%d: expected multiples of 8 in 8..4096", path,
                 width, height);
        return -1;
    }
    if (check_file(path, msg, msg_size) || format_check(path, 0, msg, msg_size)) return -1;
    Capture c = capture_begin();
    GeglNode *graph = gegl_node_new();
    GeglNode *load = gegl_node_new_child(graph, "operation", "gegl:load", "path", path, NULL);
    int iw = 0, ih = 0, rc = probe_node(load, path, &iw, &ih, msg, msg_size);
    if (rc == 0) rc = format_check(path, 1, msg, msg_size);
    GeglBuffer *buf = rc ? NULL : decode(graph, load);
    capture_collect(&c);
    if (rc == 0 && (!buf || captured[0])) rc = fail(msg, msg_size, path, "corrupt or truncated image");
    float *px = NULL;
    if (rc == 0) {
        if (!width) {
            width = iw / 8 * 8 > 4096 ? 4096 : iw / 8 * 8;
            height = ih / 8 * 8 > 4096 ? 4096 : ih / 8 * 8;
        }
        px = g_try_new(float, (size_t)width * height * 4);
        if (!px) {
            snprintf(msg, msg_size, "%s: out of memory for %dx%d pixels", path, width, height);
            rc = -1;
        }
    }
    /* premultiplied sRGB-encoded floats: c_a = a c, so over white is c_a + 1 - a, and the
     * resampling does not bleed the colour of transparent pixels */
    const Babl *fmt = babl_format("R'aG'aB'aA float");
    if (rc == 0 && width == iw && height == ih) {
        GeglRectangle all = {0, 0, iw, ih};
        gegl_buffer_get(buf, &all, 1.0, fmt, px, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
    } else if (rc == 0) {
        /* center crop to width:height, then one resampling: output pixel centre (x + 0.5)
         * maps to cx + (x + 0.5) cw / width; the jacobian tells the sampler its
         * footprint when shrinking; edges clamp (no transparent border) */
        double cw = iw, ch = ih;
        if ((long long)iw * height > (long long)ih * width) cw = (double)ih * width / height;
        else ch = (double)iw * height / width;
        double cx = (iw - cw) / 2, cy = (ih - ch) / 2, sx = cw / width, sy = ch / height;
        GeglSampler *smp = gegl_buffer_sampler_new_at_level(buf, fmt, GEGL_SAMPLER_LINEAR, 0);
        GeglBufferMatrix2 jac = {{{sx, 0.0}, {0.0, sy}}};
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                gegl_sampler_get(smp, cx + (x + 0.5) * sx, cy + (y + 0.5) * sy, &jac,
                                 px + 4 * ((size_t)y * width + x), GEGL_ABYSS_CLAMP);
        g_object_unref(smp);
    }
    capture_collect(&c);
    if (rc == 0 && captured[0]) rc = fail(msg, msg_size, path, "corrupt or truncated image");
    if (buf) g_object_unref(buf);
    g_object_unref(graph);
    capture_end(c);
    size_t plane = (size_t)width * height;
    /* a float TIFF can hold NaN and infinities: the clamps below would pass NaN on */
    for (size_t i = 0; rc == 0 && i < 4 * plane; i++)
        if (!isfinite(px[i])) {
            snprintf(msg, msg_size, "%s: the image has NaN or infinite pixel values", path);
            rc = -1;
        }
    if (rc) {
        g_free(px);
        return -1;
    }
    float *img = g_new(float, 3 * plane);
    for (size_t i = 0; i < plane; i++) {
        float a = px[4 * i + 3];
        a = a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a;
        for (int k = 0; k < 3; k++) {
            float v = 2.0f * (px[4 * i + k] + 1.0f - a) - 1.0f; /* over white */
            img[k * plane + i] = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; /* cubic overshoot */
        }
    }
    g_free(px);
    *out = img;
    *out_width = width;
    *out_height = height;
    return 0;
}
