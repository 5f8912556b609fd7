/* PNG files: GEGL encodes (gegl:png-save, R'G'B' u8, sRGB chunks, no timestamp, so equal
 * pixels give equal bytes); gegl:png-save writes text only for its fixed keys (Title,
 * Comment, ...) and as iTXt, while A1111-style readers look for a "parameters" tEXt chunk, so
 * the chunk is inserted into GEGL's bytes here (length, type, data, CRC-32 of type + data:
 * PNG spec 5.3), before the first IDAT as PIL places text chunks.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "png_write.h"

#include <errno.h>
#include <fcntl.h>
#include <gegl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(GByteArray *a, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    g_byte_array_append(a, b, 4);
}

/* A complete chunk: length, type, data, crc. */
static void put_chunk(GByteArray *a, const char *type, const unsigned char *data, size_t n)
{
    put_be32(a, (uint32_t)n);
    size_t start = a->len;
    g_byte_array_append(a, (const guint8 *)type, 4);
    if (n) g_byte_array_append(a, data, (guint)n);
    uLong crc = crc32(0L, a->data + start, (uInt)(n + 4));
    put_be32(a, (uint32_t)crc);
}

/* The text chunk (tEXt Latin-1, else iTXt UTF-8 uncompressed, no language). */
static void text_chunk(GByteArray *a, const char *key, const char *text)
{
    GByteArray *d = g_byte_array_new();
    gsize n = 0;
    char *latin1 = g_convert(text, -1, "ISO-8859-1", "UTF-8", NULL, &n, NULL);
    g_byte_array_append(d, (const guint8 *)key, (guint)strlen(key) + 1);
    if (latin1) {
        g_byte_array_append(d, (const guint8 *)latin1, (guint)n);
        put_chunk(a, "tEXt", d->data, d->len);
    } else {
        static const unsigned char flags[4] = {0, 0, 0, 0}; /* no compression, "" lang, "" key */
        g_byte_array_append(d, flags, 4);
        g_byte_array_append(d, (const guint8 *)text, (guint)strlen(text));
        put_chunk(a, "iTXt", d->data, d->len);
    }
    g_free(latin1);
    g_byte_array_free(d, TRUE);
}

/* png [n] from GEGL -> out with the text chunk before the first IDAT; checks the chunk
 * structure (signature, lengths within the file, IHDR first, IEND last). */
static int insert_text(GByteArray *out, const unsigned char *png, size_t n, const char *key,
                       const char *text)
{
    if (n < 8 + 12 || memcmp(png, png_sig, 8) != 0) return -1;
    size_t pos = 8, idat = 0;
    int iend = 0;
    while (pos + 12 <= n && !iend) {
        uint32_t len = be32(png + pos);
        if (len > n - pos - 12) return -1;
        if (pos == 8 && memcmp(png + pos + 4, "IHDR", 4) != 0) return -1;
        if (!idat && memcmp(png + pos + 4, "IDAT", 4) == 0) idat = pos;
        iend = memcmp(png + pos + 4, "IEND", 4) == 0;
        pos += 12 + (size_t)len;
    }
    if (!iend || pos != n || !idat) return -1;
    g_byte_array_append(out, png, (guint)idat);
    text_chunk(out, key, text);
    g_byte_array_append(out, png + idat, (guint)(n - idat));
    return 0;
}

static int gegl_save_png(const char *path, const uint8_t *rgb, int width, int height)
{
    const Babl *fmt = babl_format("R'G'B' u8");
    GeglRectangle rect = {0, 0, width, height};
    GeglBuffer *buf = gegl_buffer_new(&rect, fmt);
    gegl_buffer_set(buf, &rect, 0, fmt, rgb, GEGL_AUTO_ROWSTRIDE);
    GeglNode *graph = gegl_node_new();
    GeglNode *src = gegl_node_new_child(graph, "operation", "gegl:buffer-source", "buffer", buf,
                                        NULL);
    GeglNode *sink = gegl_node_new_child(graph, "operation", "gegl:png-save", "path", path,
                                         "bitdepth", 8, "compression", 6, NULL);
    gegl_node_link(src, sink);
    gegl_node_process(sink);
    g_object_unref(graph);
    g_object_unref(buf);
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int png_write_rgb8(const char *path, const uint8_t *rgb, int width, int height, const char *key,
                   const char *text, char *msg, size_t msg_size)
{
    char *dir = g_path_get_dirname(path), *base = g_path_get_basename(path);
    char *tmp = g_strdup_printf("%s%s.%s.XXXXXX", dir, G_DIR_SEPARATOR_S, base);
    int fd = g_mkstemp(tmp), rc = -1;
    const char *stage = "cannot create a temporary file";
    gchar *png = NULL;
    gsize png_n = 0;
    GByteArray *out = g_byte_array_new();
    if (fd < 0) goto done;
    mode_t mask = umask(0); /* mkstemp makes 0600: give the file the usual 0666 & ~umask */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0) goto done;
    close(fd);
    fd = -1;
    gegl_save_png(tmp, rgb, width, height);
    stage = "GEGL wrote no valid PNG";
    if (!g_file_get_contents(tmp, &png, &png_n, NULL) ||
        insert_text(out, (const unsigned char *)png, png_n, key, text) != 0)
        goto done;
    stage = "cannot write";
    fd = open(tmp, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0 || write_all(fd, out->data, out->len) != 0) goto done;
    stage = "fsync failed";
    if (fsync(fd) != 0) goto done;
    stage = "close failed";
    int c = close(fd);
    fd = -1;
    if (c != 0) goto done;
    stage = "cannot rename the temporary file";
    if (rename(tmp, path) != 0) goto done;
    rc = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0) {
            rc = -1;
            stage = "fsync of the folder failed";
        }
        close(dfd);
    }
done:
    if (rc != 0) snprintf(msg, msg_size, "%s: %s: %s", path, stage, g_strerror(errno));
    if (fd >= 0) close(fd);
    if (rc != 0 || access(tmp, F_OK) == 0) g_unlink(tmp);
    g_byte_array_free(out, TRUE);
    g_free(png);
    g_free(tmp);
    g_free(dir);
    g_free(base);
    return rc;
}
