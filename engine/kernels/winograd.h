/* Winograd convolutions for 3x3 stride-1 layers (winograd.c), internal to the kernels.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_WINOGRAD_H
#define DB_WINOGRAD_H

#include <stddef.h>

/* A Winograd plan: output tile m x m (2 for F(2x2,3x3), 4 for F(4x4,3x3), 0 = not taken),
 * tile rows per chunk (over all images) and the parts the transformed weights are made in
 * (1: all (m+2)^2 points at once; g > 1, a divisor of m+2: (m+2)^2/g points at a time, for
 * wide layers whose whole U does not fit the scratch; 0 reads as 1). */
typedef struct {
    size_t m, rows, groups;
} WinoPlan;

/* wino_conv flags */
enum {
    /* weight is [OC', C', 3, 3] of the convolution being transposed (C' = OC, OC' = C): the
     * 3x3 taps used are W'[oc][c][kh][kw] = weight[c][oc][2-kh][2-kw] (backward data) */
    WINO_FLIP = 1,
    /* out += result (bias ignored) instead of out = result + bias */
    WINO_ACCUMULATE = 2,
};

/* The plan conv2d_forward's shape choice makes for a 3x3 stride-1 convolution of N images,
 * C -> OC channels, OH x OW outputs, with scratch_floats of scratch: F(4x4) where it pays and
 * fits (U whole, or in parts when one chunk then holds every tile), else F(2x2) likewise,
 * else m = 0 (use im2col). */
WinoPlan wino_plan(size_t N, size_t C, size_t OC, size_t OH, size_t OW, size_t scratch_floats);

/* Tile rows per chunk for tile size m (2 or 4) in scratch_floats, 0 if not even one fits:
 * scratch holds U [(m+2)^2, OC, C] (each point's [OC, C] in gemm_pa's layout, rows padded to
 * whole panels where the AVX-512 GEMM runs: gemm_pa_floats) and per tile row
 * (m+2)^2 * (C + OC) * ceil(OW/m). */
size_t wino_rows_for(size_t m, size_t N, size_t C, size_t OC, size_t OH, size_t OW,
                     size_t scratch_floats);

/* out [N, OC, OH, OW] = conv3x3(inp [N, C, H, W], weight [OC, C, 3, 3]) + bias [OC] (may be
 * NULL) with zero padding pad (top, left; 0..2) and stride 1; the bottom/right padding is
 * whatever OH, OW imply. plan from wino_plan or wino_rows_for (m 2 or 4, rows >= 1). flags:
 * WINO_FLIP, WINO_ACCUMULATE. */
void wino_conv(float *out, const float *inp, const float *weight, const float *bias,
               float *scratch, WinoPlan plan, size_t N, size_t C, size_t H, size_t W, size_t OC,
               size_t pad, size_t OH, size_t OW, int flags);

#endif
