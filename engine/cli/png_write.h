/* 8-bit sRGB PNG output through GEGL (gegl:png-save) with one text chunk added.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_CLI_PNG_WRITE_H
#define DB_CLI_PNG_WRITE_H

#include <stddef.h>
#include <stdint.h>

/* Writes rgb [H, W, 3] (8-bit sRGB) to path atomically (temp file in the same folder, fsync,
 * rename, fsync the folder) with a text chunk key=text inserted before the first IDAT: tEXt
 * when text is Latin-1 representable, else iTXt (UTF-8), as PIL's PngInfo.add_text does.
 * gegl_init must have been called. Returns 0, or -1 with a one-line message in msg. */
int png_write_rgb8(const char *path, const uint8_t *rgb, int width, int height, const char *key,
                   const char *text, char *msg, size_t msg_size);

#endif
