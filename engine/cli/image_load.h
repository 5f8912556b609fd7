/* Image files for the VAE encoder (and the trainer): any format GEGL loads, as SD expects it.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLI_IMAGE_LOAD_H
#define DB_CLI_IMAGE_LOAD_H

#include <stddef.h>

/* Images larger than this are refused before decoding (bounded memory): 64 megapixels. */
#define IMAGE_MAX_PIXELS (64ll * 1024 * 1024)
/* Each side of a loaded image and of the target: at least 8 pixels (one latent cell). */
#define IMAGE_MIN_SIDE 8
#define IMAGE_MAX_SIDE 65535

/* Reads width x height of path from its header only (no decoding). 0, or -1 with msg. */
int image_probe(const char *path, int *width, int *height, char *msg, size_t msg_size);

/* Loads path through GEGL (gegl:load picks png/jpg/tiff/gif/webp/ppm/... loaders), converts to
 * sRGB-encoded R'G'B'A float (babl applies an embedded ICC profile; grayscale, palette, 16-bit,
 * float and CMYK sources all arrive here), composites alpha over white in that encoded space
 * (c' = a c + 1 - a, as flattening onto a white canvas in GIMP), center-crops to the aspect of
 * width:height and resamples to width x height with GEGL's linear sampler, given the scale
 * as its jacobian so that it can widen its footprint when shrinking. out [3, height, width] (g_free) holds 2 c' - 1, in [-1, 1].
 * width, height: multiples of 8 in 8..4096; 0, 0 = the image's own size rounded down to
 * multiples of 8. gegl_init must have been called. Returns 0, or -1 with a one-line message
 * naming path in msg: unreadable, corrupt or truncated files, sizes under 8 or over
 * IMAGE_MAX_PIXELS. */
int image_load_rgb(const char *path, int width, int height, float **out, int *out_width,
                   int *out_height, char *msg, size_t msg_size);

#endif
