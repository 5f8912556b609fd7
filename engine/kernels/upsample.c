/* UNet up-path glue: nearest 2x upsampling (diffusers Upsample2D before its conv) and the
 * channel concatenation of skip connections (UpBlock2D: torch.cat([h, skip], dim=1)).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Neither saves anything for backward: d(upsample) sums each 2x2 output block, d(concat)
 * splits the gradient by channel ranges. */
#include "kernels.h"

#include <string.h>

/* out [n, c, 2y + a, 2x + b] = inp [n, c, y, x] for a, b in {0, 1} */
void upsample_nearest2x_forward(float *out, const float *inp, size_t N, size_t C, size_t H,
                                size_t W)
{
    size_t OW = 2 * W;
#pragma omp parallel for schedule(static)
    for (size_t row = 0; row < N * C * H; row++) {
        const float *x = inp + row * W;
        float *y0 = out + 2 * row * OW; /* output rows 2y and 2y + 1 of the same plane */
        for (size_t i = 0; i < W; i++) {
            y0[2 * i] = x[i];
            y0[2 * i + 1] = x[i];
        }
        memcpy(y0 + OW, y0, OW * sizeof(float));
    }
}

/* out [n] = [a [n] (Ca*HW floats) | b [n] (Cb*HW floats)] */
void concat_channels_forward(float *out, const float *a, const float *b, size_t N, size_t Ca,
                             size_t Cb, size_t HW)
{
    size_t na = Ca * HW, nb = Cb * HW;
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        memcpy(out + n * (na + nb), a + n * na, na * sizeof(float));
        memcpy(out + n * (na + nb) + na, b + n * nb, nb * sizeof(float));
    }
}

/* Backward of upsample_nearest2x_forward: dinp [n, c, y, x] += sum of the 2x2 block
 * dout [n, c, 2y .. 2y+1, 2x .. 2x+1]. Parallel over input rows (each owns its dinp row). */
void upsample_nearest2x_backward(float *dinp, const float *dout, size_t N, size_t C, size_t H,
                                 size_t W)
{
    size_t OW = 2 * W;
#pragma omp parallel for schedule(static)
    for (size_t row = 0; row < N * C * H; row++) {
        const float *g0 = dout + 2 * row * OW, *g1 = g0 + OW;
        float *dx = dinp + row * W;
        for (size_t i = 0; i < W; i++)
            dx[i] += (g0[2 * i] + g0[2 * i + 1]) + (g1[2 * i] + g1[2 * i + 1]);
    }
}

/* Backward of concat_channels_forward: da [n] += dout [n] first Ca*HW floats, db [n] += the
 * last Cb*HW floats. da or db may be NULL (that branch gets no gradient). */
void concat_channels_backward(float *da, float *db, const float *dout, size_t N, size_t Ca,
                              size_t Cb, size_t HW)
{
    size_t na = Ca * HW, nb = Cb * HW;
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *g = dout + n * (na + nb);
        if (da)
            for (size_t i = 0; i < na; i++)
                da[n * na + i] += g[i];
        if (db)
            for (size_t i = 0; i < nb; i++)
                db[n * nb + i] += g[na + i];
    }
}
