/* VAE public API on a tiny model written by tests/reference/test_vae.py:
 *   test_vae_api MODEL
 * progress is monotone and ends at 1; returning nonzero from it cancels (DB_ERR_CANCELLED,
 * no further calls); sizes that are not multiples of the scale factor, bad tile options and
 * NULL buffers are refused with DB_ERR_ARG; automatic tiling (opts NULL) at a small size
 * equals untiled bit for bit. Exit status 1 on any failure.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dreambooth.h"

static int failures;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            failures++;                                                                      \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                      \
            printf(__VA_ARGS__);                                                             \
            printf("\n");                                                                    \
        }                                                                                    \
    } while (0)

typedef struct {
    int calls, stop_at;
    double last;
    int monotone;
} Prog;

static int on_progress(void *user, double fraction, const char *stage)
{
    Prog *p = user;
    p->calls++;
    if (fraction < p->last || fraction > 1.0 || !stage) p->monotone = 0;
    p->last = fraction;
    return p->stop_at && p->calls >= p->stop_at;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        printf("usage: test_vae_api MODEL\n");
        return 2;
    }
    DbModel *m = NULL;
    DbError err;
    db_error_clear(&err);
    if (db_model_open(&m, argv[1], NULL, &err) != DB_OK) {
        printf("FAIL open: %s\n", err.msg);
        return 1;
    }
    int f, cin, z, cout;
    db_vae_dims(m, &f, &cin, &z, &cout);
    const int h = 6, w = 4, H = h * f, W = w * f;
    float *lat = calloc((size_t)2 * z * h * w, sizeof(float));
    float *lv = calloc((size_t)2 * z * h * w, sizeof(float));
    float *img = calloc((size_t)2 * (cin > cout ? cin : cout) * H * W, sizeof(float));
    float *img2 = calloc((size_t)2 * cout * H * W, sizeof(float));
    for (int i = 0; i < 2 * z * h * w; i++)
        lat[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;

    Prog p = {0, 0, 0.0, 1};
    DbStatus st = db_vae_decode(m, lat, 2, h, w, img, NULL, on_progress, &p, &err);
    CHECK(st == DB_OK, "decode: %s", err.msg);
    CHECK(p.monotone && p.last == 1.0 && p.calls > 2, "decode progress: %d calls, last %g",
          p.calls, p.last);
    const int steps = p.calls;

    DbVaeOptions off = {0, 0, 0};
    st = db_vae_decode(m, lat, 2, h, w, img2, &off, NULL, NULL, &err);
    CHECK(st == DB_OK && !memcmp(img, img2, sizeof(float) * 2 * cout * H * W),
          "automatic and untiled decode differ (%s)", err.msg);

    Prog c = {0, 3, 0.0, 1};
    st = db_vae_decode(m, lat, 2, h, w, img, NULL, on_progress, &c, &err);
    CHECK(st == DB_ERR_CANCELLED && c.calls == 3, "cancel decode: %s after %d calls",
          db_status_name(st), c.calls);
    Prog c2 = {0, steps, 0.0, 1}; /* cancel at the very last step still reports cancelled */
    st = db_vae_decode(m, lat, 2, h, w, img, NULL, on_progress, &c2, &err);
    CHECK(st == DB_ERR_CANCELLED, "cancel at the last step: %s", db_status_name(st));

    Prog e = {0, 0, 0.0, 1};
    st = db_vae_encode(m, img, 1, H, W, lat, lv, NULL, on_progress, &e, &err);
    CHECK(st == DB_OK && e.monotone && e.last == 1.0, "encode: %s", err.msg);
    Prog ce = {0, 2, 0.0, 1};
    st = db_vae_encode(m, img, 1, H, W, lat, lv, NULL, on_progress, &ce, &err);
    CHECK(st == DB_ERR_CANCELLED && ce.calls == 2, "cancel encode: %s", db_status_name(st));

    if (f > 1) {
        st = db_vae_encode(m, img, 1, H + 1, W, lat, lv, NULL, NULL, NULL, &err);
        CHECK(st == DB_ERR_ARG, "encode of %d x %d: %s", H + 1, W, db_status_name(st));
        DbVaeOptions odd = {f + 1, 0, 0};
        st = db_vae_decode(m, lat, 1, h, w, img, &odd, NULL, NULL, &err);
        CHECK(st == DB_ERR_ARG, "tile %d: %s", f + 1, db_status_name(st));
    }
    DbVaeOptions big_ov = {2 * f, 2 * f, 0};
    st = db_vae_decode(m, lat, 1, h, w, img, &big_ov, NULL, NULL, &err);
    CHECK(st == DB_ERR_ARG, "overlap = tile: %s", db_status_name(st));
    st = db_vae_decode(m, lat, 0, h, w, img, NULL, NULL, NULL, &err);
    CHECK(st == DB_ERR_ARG, "batch 0: %s", db_status_name(st));
    st = db_vae_decode(m, NULL, 1, h, w, img, NULL, NULL, NULL, &err);
    CHECK(st == DB_ERR_ARG, "NULL latent: %s", db_status_name(st));

    free(lat);
    free(lv);
    free(img);
    free(img2);
    db_model_free(m);
    printf("test_vae_api: %s (%d failure(s), %d progress steps per decode)\n",
           failures ? "FAIL" : "PASS", failures, steps);
    return failures ? 1 : 0;
}
