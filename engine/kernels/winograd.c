/* Winograd convolutions F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 layers (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2015).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * With output tiles of m x m pixels and a = m + 2, each tile reads an a x a input patch d at
 * (m*ty - pad, m*tx - pad) and, for X = a*a transform points xi:
 *   U [X, OC, C] = G g G^T per (oc, c)        (weights, once per call, written straight
 *                                              into the GEMM's packed panels: gemm_pa)
 *   V [X, C, T]  = B^T d B per (c, tile)      (a chunk of T tiles: whole tile rows, over all
 *                                              images of the call)
 *   M [X, OC, T] = U [xi] @ V [xi]            (X sgemm, K = C)
 *   y [m x m]    = A^T m A + bias             (per (oc, tile), clipped at the border)
 * Multiplies per output: 9 C for im2col, 16/4 C = 4 C for F(2x2), 36/16 C = 2.25 C for F(4x4).
 *
 * The matrices (1-D correlation y_i = sum_k g_k d_{i+k}, i < m, k < 3; the 2-D transforms
 * apply them along rows and columns) come from Toom-Cook at points p_0 .. p_{a-2} and
 * infinity: A^T [i][j] = p_j^i (the infinity column is e_{m-1}); G [j] = (1, p_j, p_j^2) /
 * N_j with N_j = prod_{k != j} (p_j - p_k) (the infinity row is (0, 0, 1)); row j of B^T is
 * the coefficients (x^0 first) of prod_{k != j} (x - p_k) over the finite points, the
 * infinity row those of prod_k (x - p_k).
 *   F(2x2): points 0, 1, -1, inf:
 *     G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
 *     0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1] (the 1/N_j = -1, 1/2, -1/2 moved between G and
 *     B^T rows, which only rescales each xi's product).
 *   F(4x4): points 0, 1, -1, 2, -2, inf (N_j = 4, -6, -6, 24, 24):
 *     G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *     B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *            0 4 0 -5 0 1]   (x^4 - 5x^2 + 4, ..., x^5 - 5x^3 + 4x)
 *     A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
 * The larger F(4x4) constants cost accuracy: relative L2 error vs a double reference ~1e-6
 * for F(2x2) and a few 1e-6 for F(4x4) at SD shapes (tests/test_conv_paths.c).
 *
 * Backward data of a 3x3 stride-1 conv is the same convolution of dout with the flipped,
 * transposed weight (WINO_FLIP folds that into the weight transform) and top/left padding
 * 2 - pad, accumulated into dinp (WINO_ACCUMULATE).
 *
 * Loops: the input transform works per (channel, tile row) in segments of WINO_SEG tiles
 * (F(4x4): interior tiles read in place, the border ones from zero-padded row copies),
 * first down the columns (elementwise over the row, vectorised), then across each tile; the
 * output transform the same way backwards. Each exists as a baseline-ISA and an AVX2 clone
 * chosen at run time (DB_KERNELS_NO_AVX2 builds the baseline only). Threads: OpenMP loops
 * over (channel, tile row); sgemm runs outside parallel regions. No allocation: U, V, M live
 * in the caller's scratch. */
#include "winograd.h"

#include "kernels.h"

#include <string.h>

#define WINO_MIN_CH 64    /* narrower convs (conv_in/conv_out) stay on im2col */
/* Tiles in the call below which im2col + sgemm (images grouped into one GEMM) is as fast:
 * the transformed weights, 16 (36) floats per (oc, c), are written and streamed through
 * sgemm once per chunk, which few tiles do not amortise. Measured on Zen3 (2 cores), batch 2:
 * F(2x2) at 16x16 (128 tiles, 640 and 1280 channels) no faster than im2col, 2x at 32x32;
 * F(4x4) at 32x32 (128 tiles) 1.3x faster than F(2x2), at 16x16 (32 tiles) slower. */
#define WINO_MIN_TILES 256
#define WINO4_MIN_TILES 96
/* tiles per segment of a tile row in the transforms: long runs per transform point (each
 * segment touches (m+2)^2 streams of V or M; 128 tiles beat 32 by ~10% of a VAE 512-px conv) */
#define WINO_SEG 128

/* F(4x4) input rows with fewer interior tiles are copied whole (measured at 64 wide rows:
 * splitting off the border tiles cost more than reading in place saved) */
#define WINO_INPLACE_MIN 32

#define WINO_INLINE static inline __attribute__((always_inline))
#define WINO_NOCLONE __attribute__((noinline, noclone))

/* Copy input row iys - pad of img [H, W] into dst [len] (zero outside), dst [j] = column
 * xs + j - pad. */
WINO_INLINE void wino_load_row(float *dst, const float *img, size_t H, size_t W, size_t pad,
                               size_t iys, size_t xs, size_t len)
{
    if (iys < pad || iys - pad >= H) {
        memset(dst, 0, len * sizeof(float));
        return;
    }
    size_t lo = pad > xs ? pad - xs : 0, hi = W + pad > xs ? W + pad - xs : 0;
    if (lo > len) lo = len;
    if (hi > len) hi = len;
    if (hi < lo) hi = lo;
    const float *src = img + (iys - pad) * W;
    if (len <= 8) { /* the border tiles: a few values, cheaper than three library calls */
        for (size_t j = 0; j < len; j++)
            dst[j] = j >= lo && j < hi ? src[xs + j - pad] : 0.0f;
        return;
    }
    memset(dst, 0, lo * sizeof(float));
    if (hi > lo) memcpy(dst + lo, src + xs + lo - pad, (hi - lo) * sizeof(float));
    memset(dst + hi, 0, (len - hi) * sizeof(float));
}

/* Write row buffer r [n] to o [n]: o = r + b, or o += r. */
WINO_INLINE void wino_store_row(float *o, const float *r, size_t n, float b, int acc)
{
    if (acc)
        for (size_t x = 0; x < n; x++)
            o[x] += r[x];
    else
        for (size_t x = 0; x < n; x++)
            o[x] = r[x] + b;
}

/* ---- F(2x2, 3x3) --------------------------------------------------------------------- */

/* g [9][nb] = the 3x3 taps of pairs i0 .. i0+nb-1 (i = oc*C + c), one tap per row so the
 * transforms below run elementwise over the pairs (vectorised); flipped and transposed for
 * WINO_FLIP (weight [C, OC, 3, 3] then). */
#define WINO_WB 16
WINO_INLINE void wino_gather_taps(float g[9][WINO_WB], const float *weight, size_t OC, size_t C,
                                  int flip, size_t i0, size_t nb)
{
    for (size_t q = 0; q < nb; q++) {
        size_t i = i0 + q;
        if (flip) {
            const float *s = weight + ((i % C) * OC + i / C) * 9;
            for (int k = 0; k < 9; k++)
                g[k][q] = s[8 - k];
        } else {
            for (int k = 0; k < 9; k++)
                g[k][q] = weight[i * 9 + (size_t)k];
        }
    }
}

/* Where pairs b0 .. b0+nb-1 (i = oc*C + c) of a transform point's U go in gemm_pa layout L
 * (pos [q], from the point's start); the same for every point. Runs within one row oc and
 * one K slice step by mr. */
WINO_INLINE void wino_u_offsets(size_t pos[WINO_WB], GemmPa L, size_t C, size_t b0, size_t nb)
{
    size_t oc = b0 / C, c = b0 % C;
    for (size_t q = 0; q < nb;) {
        size_t run = nb - q, left = C - c, slice = L.kc - c % L.kc;
        if (run > left) run = left;
        if (run > slice) run = slice;
        size_t at = gemm_pa_at(L, C, oc, c);
        for (size_t t = 0; t < run; t++)
            pos[q + t] = at + t * L.mr;
        q += run;
        c += run;
        if (c == C) c = 0, oc++;
    }
}

/* U point x (x-th [OC, C] matrix, S floats apart): pairs b0 .. b0+nb-1 from u [nb]; plain
 * layout (L.mr == 0): one copy, else at pos (wino_u_offsets). */
WINO_INLINE void wino_store_u(float *U, size_t S, GemmPa L, const size_t *pos, size_t x,
                              size_t b0, size_t nb, const float *u)
{
    float *dst = U + x * S;
    if (!L.mr) {
        if (nb == WINO_WB) /* constant size: inlined vector moves */
            memcpy(dst + b0, u, WINO_WB * sizeof(float));
        else
            memcpy(dst + b0, u, nb * sizeof(float));
        return;
    }
    for (size_t q = 0; q < nb; q++)
        dst[pos[q]] = u[q];
}

/* U [4 (r1 - r0), OC, C] = rows r0 .. r1-1 of the 4x4 transforms (points 4 r0 .. 4 r1 - 1)
 * for pairs i0 .. i1-1 */
WINO_INLINE void wino2_weights_impl(float *U, const float *weight, size_t OC, size_t C, int flip,
                                    size_t i0, size_t i1, size_t r0, size_t r1, GemmPa L,
                                    size_t S)
{
    for (size_t b0 = i0; b0 < i1; b0 += WINO_WB) {
        size_t nb = i1 - b0 < WINO_WB ? i1 - b0 : WINO_WB;
        float g[9][WINO_WB], t[4][3][WINO_WB];
        wino_gather_taps(g, weight, OC, C, flip, b0, nb);
        size_t pos[WINO_WB];
        if (L.mr) wino_u_offsets(pos, L, C, b0, nb);
        for (int j = 0; j < 3; j++) /* t = G g (4x3) */
            for (size_t q = 0; q < nb; q++) {
                float g0 = g[j][q], g1 = g[3 + j][q], g2 = g[6 + j][q];
                t[0][j][q] = g0;
                t[1][j][q] = 0.5f * (g0 + g1 + g2);
                t[2][j][q] = 0.5f * (g0 - g1 + g2);
                t[3][j][q] = g2;
            }
        for (size_t r = r0; r < r1; r++) { /* u = t G^T (4x4) */
            float u[4][WINO_WB];
            for (size_t q = 0; q < nb; q++) {
                float g0 = t[r][0][q], g1 = t[r][1][q], g2 = t[r][2][q];
                u[0][q] = g0;
                u[1][q] = 0.5f * (g0 + g1 + g2);
                u[2][q] = 0.5f * (g0 - g1 + g2);
                u[3][q] = g2;
            }
            for (size_t x = 0; x < 4; x++)
                wino_store_u(U, S, L, pos, 4 * (r - r0) + x, b0, nb, u[x]);
        }
    }
}

/* V [16, C, T] entries of channel c, tile row R (R - R0 within the chunk, v = V + c*T +
 * (R - R0)*TW, st = C*T) from img [H, W] = inp [n, c] */
WINO_INLINE void wino2_input_impl(float *v, const float *img, size_t H, size_t W, size_t pad,
                                  size_t ty, size_t TW, size_t st)
{
    float d[4][2 * WINO_SEG + 2], e[4][2 * WINO_SEG + 2];
    for (size_t tx0 = 0; tx0 < TW; tx0 += WINO_SEG) {
        size_t nt = TW - tx0 < WINO_SEG ? TW - tx0 : WINO_SEG, len = 2 * nt + 2;
        for (int k = 0; k < 4; k++) /* iy = 2ty - pad + k */
            wino_load_row(d[k], img, H, W, pad, 2 * ty + (size_t)k, 2 * tx0, len);
        for (size_t j = 0; j < len; j++) { /* e = B^T d */
            e[0][j] = d[0][j] - d[2][j];
            e[1][j] = d[1][j] + d[2][j];
            e[2][j] = d[2][j] - d[1][j];
            e[3][j] = d[1][j] - d[3][j];
        }
        for (int k = 0; k < 4; k++) { /* (B^T d) B */
            const float *q = e[k];
            float *o0 = v + (size_t)(4 * k) * st + tx0, *o1 = o0 + st, *o2 = o1 + st,
                  *o3 = o2 + st;
            for (size_t t = 0; t < nt; t++) {
                o0[t] = q[2 * t] - q[2 * t + 2];
                o1[t] = q[2 * t + 1] + q[2 * t + 2];
                o2[t] = q[2 * t + 2] - q[2 * t + 1];
                o3[t] = q[2 * t + 1] - q[2 * t + 3];
            }
        }
    }
}

/* out rows 2ty, 2ty+1 of plane o [OH, OW] from m = M + oc*T + (R - R0)*TW (st = OC*T) */
WINO_INLINE void wino2_output_impl(float *o, const float *m, float b, size_t OH, size_t OW,
                                   size_t ty, size_t TW, size_t st, int acc)
{
    float s[2][4][WINO_SEG], r[2][2 * WINO_SEG];
    for (size_t tx0 = 0; tx0 < TW; tx0 += WINO_SEG) {
        size_t nt = TW - tx0 < WINO_SEG ? TW - tx0 : WINO_SEG;
        for (int i = 0; i < 4; i++) { /* s = A^T m (down the columns of each tile) */
            const float *a0 = m + (size_t)i * st + tx0, *a1 = a0 + 4 * st, *a2 = a1 + 4 * st,
                        *a3 = a2 + 4 * st;
            for (size_t t = 0; t < nt; t++) {
                s[0][i][t] = a0[t] + a1[t] + a2[t];
                s[1][i][t] = a1[t] - a2[t] - a3[t];
            }
        }
        for (int j = 0; j < 2; j++) { /* (A^T m) A, interleaved into output row order */
            for (size_t t = 0; t < nt; t++) {
                r[j][2 * t] = s[j][0][t] + s[j][1][t] + s[j][2][t];
                r[j][2 * t + 1] = s[j][1][t] - s[j][2][t] - s[j][3][t];
            }
            size_t oy = 2 * ty + (size_t)j, ox = 2 * tx0;
            if (oy >= OH) break;
            size_t n = OW - ox < 2 * nt ? OW - ox : 2 * nt;
            wino_store_row(o + oy * OW + ox, r[j], n, b, acc);
        }
    }
}

/* ---- F(4x4, 3x3) --------------------------------------------------------------------- */

/* U [6 (r1 - r0), OC, C] = rows r0 .. r1-1 of the 6x6 transforms for pairs i0 .. i1-1 */
WINO_INLINE void wino4_weights_impl(float *U, const float *weight, size_t OC, size_t C, int flip,
                                    size_t i0, size_t i1, size_t r0, size_t r1, GemmPa L,
                                    size_t S)
{
    const float c4 = 0.25f, c6 = -1.0f / 6.0f, c24 = 1.0f / 24.0f, c12 = 1.0f / 12.0f,
                c6p = 1.0f / 6.0f;
    for (size_t b0 = i0; b0 < i1; b0 += WINO_WB) {
        size_t nb = i1 - b0 < WINO_WB ? i1 - b0 : WINO_WB;
        float g[9][WINO_WB], t[6][3][WINO_WB];
        wino_gather_taps(g, weight, OC, C, flip, b0, nb);
        size_t pos[WINO_WB];
        if (L.mr) wino_u_offsets(pos, L, C, b0, nb);
        for (int j = 0; j < 3; j++) /* t = G g (6x3) */
            for (size_t q = 0; q < nb; q++) {
                float g0 = g[j][q], g1 = g[3 + j][q], g2 = g[6 + j][q];
                t[0][j][q] = c4 * g0;
                t[1][j][q] = c6 * (g0 + g1 + g2);
                t[2][j][q] = c6 * (g0 - g1 + g2);
                t[3][j][q] = c24 * g0 + c12 * g1 + c6p * g2;
                t[4][j][q] = c24 * g0 - c12 * g1 + c6p * g2;
                t[5][j][q] = g2;
            }
        for (size_t r = r0; r < r1; r++) { /* u = t G^T (6x6) */
            float u[6][WINO_WB];
            for (size_t q = 0; q < nb; q++) {
                float g0 = t[r][0][q], g1 = t[r][1][q], g2 = t[r][2][q];
                u[0][q] = c4 * g0;
                u[1][q] = c6 * (g0 + g1 + g2);
                u[2][q] = c6 * (g0 - g1 + g2);
                u[3][q] = c24 * g0 + c12 * g1 + c6p * g2;
                u[4][q] = c24 * g0 - c12 * g1 + c6p * g2;
                u[5][q] = g2;
            }
            for (size_t x = 0; x < 6; x++)
                wino_store_u(U, S, L, pos, 6 * (r - r0) + x, b0, nb, u[x]);
        }
    }
}

/* V entries of channel c, tile row ty (as wino2_input_impl). Tile tx reads input columns
 * 4tx - pad .. 4tx + 5 - pad: segments of tiles whose 6 rows and columns all lie inside the
 * image are read in place, the border tiles (a segment of their own at each side, so that
 * wide rows have whole interior segments) through zero-padded row copies. */
WINO_INLINE void wino4_input_impl(float *v, const float *img, size_t H, size_t W, size_t pad,
                                  size_t ty, size_t TW, size_t st)
{
    float d[6][4 * WINO_SEG + 2], e[6][4 * WINO_SEG + 2], z[6][WINO_SEG];
    /* interior tiles ta .. tb-1 (none when a row is outside) */
    size_t ta = (pad + 3) / 4, tb = 0;
    if (4 * ty >= pad && 4 * ty + 6 <= H + pad && W + pad >= 6) tb = (W + pad - 6) / 4 + 1;
    if (tb > TW) tb = TW;
    if (tb < ta + WINO_INPLACE_MIN) ta = tb = 0; /* narrow rows: one copied segment is faster */
    for (size_t tx0 = 0, nt; tx0 < TW; tx0 += nt) {
        size_t end = tx0 < ta ? ta : tx0 < tb ? tb : TW;
        nt = end - tx0 < WINO_SEG ? end - tx0 : WINO_SEG;
        /* the segment reads len = 4 nt + 2 columns from xs - pad */
        size_t len = 4 * nt + 2, xs = 4 * tx0;
        const float *r[6];
        if (tx0 >= ta && tx0 < tb) {
            for (int k = 0; k < 6; k++) /* iy = 4ty - pad + k, ix = xs - pad + j */
                r[k] = img + (4 * ty + (size_t)k - pad) * W + (xs - pad);
        } else {
            for (int k = 0; k < 6; k++) {
                wino_load_row(d[k], img, H, W, pad, 4 * ty + (size_t)k, xs, len);
                r[k] = d[k];
            }
        }
        for (size_t j = 0; j < len; j++) { /* e = B^T d */
            float d0 = r[0][j], d1 = r[1][j], d2 = r[2][j], d3 = r[3][j], d4 = r[4][j],
                  d5 = r[5][j];
            e[0][j] = 4.0f * d0 - 5.0f * d2 + d4;
            e[1][j] = (d3 + d4) - 4.0f * (d1 + d2);
            e[2][j] = (d4 - d3) + 4.0f * (d1 - d2);
            e[3][j] = (d4 - d2) + 2.0f * (d3 - d1);
            e[4][j] = (d4 - d2) - 2.0f * (d3 - d1);
            e[5][j] = 4.0f * d1 - 5.0f * d3 + d5;
        }
        for (int k = 0; k < 6; k++) { /* (B^T d) B, across each tile */
            const float *q = e[k];
            for (size_t t = 0; t < nt; t++) { /* z [i][t] = q [4t + i], i < 6 (apart, so
                                                 * that the loads below are aligned with
                                                 * these stores and forward from them) */
                z[0][t] = q[4 * t];
                z[1][t] = q[4 * t + 1];
                z[2][t] = q[4 * t + 2];
                z[3][t] = q[4 * t + 3];
                z[4][t] = q[4 * t + 4];
                z[5][t] = q[4 * t + 5];
            }
            float o[6][WINO_SEG];
            for (size_t t = 0; t < nt; t++) {
                float z0 = z[0][t], z1 = z[1][t], z2 = z[2][t], z3 = z[3][t], z4 = z[4][t],
                      z5 = z[5][t];
                o[0][t] = 4.0f * z0 - 5.0f * z2 + z4;
                o[1][t] = (z3 + z4) - 4.0f * (z1 + z2);
                o[2][t] = (z4 - z3) + 4.0f * (z1 - z2);
                o[3][t] = (z4 - z2) + 2.0f * (z3 - z1);
                o[4][t] = (z4 - z2) - 2.0f * (z3 - z1);
                o[5][t] = 4.0f * z1 - 5.0f * z3 + z5;
            }
            /* copies of 8 floats at a time (inlined vector moves; a variable-size memcpy
             * per transform row, ~128 bytes, cost more than the arithmetic) */
            float *dst = v + (size_t)(6 * k) * st + tx0;
            for (int x = 0; x < 6; x++) {
                float *dx = dst + (size_t)x * st;
                size_t t = 0;
                for (; t + 8 <= nt; t += 8)
                    memcpy(dx + t, o[x] + t, 8 * sizeof(float));
                if (t + 4 <= nt) {
                    memcpy(dx + t, o[x] + t, 4 * sizeof(float));
                    t += 4;
                }
                /* the last 0 .. 3 written out: a loop here became a memcpy call */
                if (t < nt) dx[t] = o[x][t];
                if (t + 1 < nt) dx[t + 1] = o[x][t + 1];
                if (t + 2 < nt) dx[t + 2] = o[x][t + 2];
            }
        }
    }
}

WINO_INLINE void wino4_output_impl(float *o, const float *m, float b, size_t OH, size_t OW,
                                   size_t ty, size_t TW, size_t st, int acc)
{
    float s[4][6][WINO_SEG], r[4 * WINO_SEG];
    for (size_t tx0 = 0; tx0 < TW; tx0 += WINO_SEG) {
        size_t nt = TW - tx0 < WINO_SEG ? TW - tx0 : WINO_SEG;
        for (int i = 0; i < 6; i++) { /* s = A^T m (down the columns of each tile) */
            const float *a0 = m + (size_t)i * st + tx0, *a1 = a0 + 6 * st, *a2 = a1 + 6 * st,
                        *a3 = a2 + 6 * st, *a4 = a3 + 6 * st, *a5 = a4 + 6 * st;
            for (size_t t = 0; t < nt; t++) {
                float p12 = a1[t] + a2[t], m12 = a1[t] - a2[t];
                float p34 = a3[t] + a4[t], m34 = a3[t] - a4[t];
                s[0][i][t] = a0[t] + p12 + p34;
                s[1][i][t] = m12 + 2.0f * m34;
                s[2][i][t] = p12 + 4.0f * p34;
                s[3][i][t] = m12 + 8.0f * m34 + a5[t];
            }
        }
        for (int j = 0; j < 4; j++) { /* (A^T m) A, interleaved into output row order */
            size_t oy = 4 * ty + (size_t)j, ox = 4 * tx0;
            if (oy >= OH) break;
            const float *s0 = s[j][0], *s1 = s[j][1], *s2 = s[j][2], *s3 = s[j][3],
                        *s4 = s[j][4], *s5 = s[j][5];
            for (size_t t = 0; t < nt; t++) {
                float p12 = s1[t] + s2[t], m12 = s1[t] - s2[t];
                float p34 = s3[t] + s4[t], m34 = s3[t] - s4[t];
                r[4 * t] = s0[t] + p12 + p34;
                r[4 * t + 1] = m12 + 2.0f * m34;
                r[4 * t + 2] = p12 + 4.0f * p34;
                r[4 * t + 3] = m12 + 8.0f * m34 + s5[t];
            }
            size_t n = OW - ox < 4 * nt ? OW - ox : 4 * nt;
            wino_store_row(o + oy * OW + ox, r, n, b, acc);
        }
    }
}

/* ---- Baseline and AVX2 clones, run-time choice ---------------------------------------- */

#define WINO_CLONES(sfx, attr)                                                                \
    attr WINO_NOCLONE static void wino_weights_##sfx(size_t m, float *U, const float *weight, \
                                                     size_t OC, size_t C, int flip, size_t i0, \
                                                     size_t i1, size_t r0, size_t r1,          \
                                                     GemmPa L, size_t S)                       \
    {                                                                                          \
        if (m == 4)                                                                            \
            wino4_weights_impl(U, weight, OC, C, flip, i0, i1, r0, r1, L, S);                  \
        else                                                                                   \
            wino2_weights_impl(U, weight, OC, C, flip, i0, i1, r0, r1, L, S);                  \
    }                                                                                          \
    attr WINO_NOCLONE static void wino_input_##sfx(size_t m, float *v, const float *img,      \
                                                   size_t H, size_t W, size_t pad, size_t ty,  \
                                                   size_t TW, size_t st)                       \
    {                                                                                          \
        if (m == 4)                                                                            \
            wino4_input_impl(v, img, H, W, pad, ty, TW, st);                                   \
        else                                                                                   \
            wino2_input_impl(v, img, H, W, pad, ty, TW, st);                                   \
    }                                                                                          \
    attr WINO_NOCLONE static void wino_output_##sfx(size_t m, float *o, const float *mm,      \
                                                    float b, size_t OH, size_t OW, size_t ty,  \
                                                    size_t TW, size_t st, int acc)             \
    {                                                                                          \
        if (m == 4)                                                                            \
            wino4_output_impl(o, mm, b, OH, OW, ty, TW, st, acc);                              \
        else                                                                                   \
            wino2_output_impl(o, mm, b, OH, OW, ty, TW, st, acc);                              \
    }

WINO_CLONES(generic, )

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2)
WINO_CLONES(avx2, __attribute__((target("avx2,fma"))))
static int wino_use_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#define WINO_CALL(wide, fn, ...) ((wide) ? fn##_avx2(__VA_ARGS__) : fn##_generic(__VA_ARGS__))
#else
static int wino_use_avx2(void) { return 0; }
#define WINO_CALL(wide, fn, ...) ((void)(wide), fn##_generic(__VA_ARGS__))
#endif

/* ---- Planning and the driver ---------------------------------------------------------- */

/* Tile rows per chunk for tile m with U held in `groups` parts (groups divides m + 2), 0 if
 * not even one fits: scratch holds U [(m+2)^2 / groups, OC, C] and per tile row
 * (m+2)^2 * (C + OC) * ceil(OW/m) floats of V and M. */
static size_t wino_rows_groups(size_t m, size_t groups, size_t N, size_t C, size_t OC, size_t OH,
                               size_t OW, size_t scratch_floats)
{
    size_t X = (m + 2) * (m + 2), TH = (OH + m - 1) / m, TW = (OW + m - 1) / m, u, per, rows;
    GemmPa L = gemm_pa_layout(OC, C); /* one point's U as gemm_pa takes it: S floats */
    size_t S;
    if (__builtin_mul_overflow(L.mr ? L.mpad : OC, C, &S)) return 0;
    if (__builtin_mul_overflow(X / groups, S, &u) || u >= scratch_floats ||
        __builtin_mul_overflow(X * (C + OC), TW, &per) || per == 0 ||
        __builtin_mul_overflow(N, TH, &rows))
        return 0;
    size_t tr = (scratch_floats - u) / per;
    return tr < rows ? tr : rows;
}

size_t wino_rows_for(size_t m, size_t N, size_t C, size_t OC, size_t OH, size_t OW,
                     size_t scratch_floats)
{
    return wino_rows_groups(m, 1, N, C, OC, OH, OW, scratch_floats);
}

/* Plan for tile m: U whole (groups 1) with chunks of at least min_tiles tiles (or all), else
 * U in the fewest parts that let one chunk hold every tile (the weight transform then runs
 * once per part, as often as with U whole). */
static WinoPlan wino_plan_m(size_t m, size_t min_tiles, size_t N, size_t C, size_t OC,
                            size_t OH, size_t OW, size_t scratch_floats)
{
    static const size_t parts[2][4] = {{1, 2, 4, 0}, {1, 2, 3, 6}};
    WinoPlan p = {0, 0, 0};
    size_t TW = (OW + m - 1) / m, all = N * ((OH + m - 1) / m);
    for (int k = 0; k < 4 && parts[m == 4][k]; k++) {
        size_t g = parts[m == 4][k], r = wino_rows_groups(m, g, N, C, OC, OH, OW, scratch_floats);
        if (r == all || (g == 1 && r && r * TW >= min_tiles)) {
            p.m = m, p.rows = r, p.groups = g;
            return p;
        }
    }
    return p;
}

WinoPlan wino_plan(size_t N, size_t C, size_t OC, size_t OH, size_t OW, size_t scratch_floats)
{
    WinoPlan p = {0, 0, 0};
    if (C < WINO_MIN_CH || OC < WINO_MIN_CH) return p;
    size_t t4 = ((OH + 3) / 4) * ((OW + 3) / 4), t2 = ((OH + 1) / 2) * ((OW + 1) / 2);
    if (__builtin_mul_overflow(t4, N, &t4) || __builtin_mul_overflow(t2, N, &t2)) return p;
    /* F(4x4) when a chunk holds enough tiles to amortise streaming its larger U */
    if (t4 >= WINO4_MIN_TILES) p = wino_plan_m(4, WINO4_MIN_TILES, N, C, OC, OH, OW, scratch_floats);
    if (!p.m && t2 >= WINO_MIN_TILES)
        p = wino_plan_m(2, 1, N, C, OC, OH, OW, scratch_floats);
    return p;
}

void wino_conv(float *out, const float *inp, const float *weight, const float *bias,
               float *scratch, WinoPlan plan, size_t N, size_t C, size_t H, size_t W, size_t OC,
               size_t pad, size_t OH, size_t OW, int flags)
{
    static int wide = -1;
    if (wide < 0) wide = wino_use_avx2(); /* same value from any racing thread */
    const size_t m = plan.m, a = m + 2, X = a * a, TH = (OH + m - 1) / m, TW = (OW + m - 1) / m;
    const int flip = (flags & WINO_FLIP) != 0, acc = (flags & WINO_ACCUMULATE) != 0;
    const size_t P = OC * C, NB = 256; /* weight pairs (oc, c); pairs per OpenMP work item */
    const size_t G = plan.groups ? plan.groups : 1, ra = a / G; /* transform rows per part */
    const GemmPa L = gemm_pa_layout(OC, C); /* U [x] packed once for all chunks' GEMMs */
    const size_t S = gemm_pa_floats(L, OC, C);
    float *U = scratch, *V = U + ra * a * S;

    for (size_t R0 = 0; R0 < N * TH; R0 += plan.rows) {
        size_t R1 = N * TH - R0 < plan.rows ? N * TH : R0 + plan.rows, nr = R1 - R0;
        size_t T = nr * TW;
        float *M = V + X * C * T;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < C * nr; i++) {
            size_t c = i / nr, R = R0 + i % nr, n = R / TH, ty = R % TH;
            WINO_CALL(wide, wino_input, m, V + c * T + (R - R0) * TW, inp + (n * C + c) * H * W, H,
                      W, pad, ty, TW, C * T);
        }
        for (size_t r0 = 0; r0 < a; r0 += ra) {
            if (G > 1 || R0 == 0) { /* U = transform rows r0 .. r0+ra-1 (points a r0 ..) */
                if (!L.mr) {
#pragma omp parallel for schedule(static)
                    for (size_t i0 = 0; i0 < P; i0 += NB)
                        WINO_CALL(wide, wino_weights, m, U, weight, OC, C, flip, i0,
                                  P - i0 < NB ? P : i0 + NB, r0, r0 + ra, L, S);
                } else { /* panel order: the mr rows of a block of WINO_WB channels in turn,
                          * so each point's [WINO_WB][mr] piece of U fills while in cache */
                    size_t ncb = (C + WINO_WB - 1) / WINO_WB, np = (OC + L.mr - 1) / L.mr;
#pragma omp parallel for schedule(static)
                    for (size_t w = 0; w < np * ncb; w++) {
                        size_t p = w / ncb, c0 = w % ncb * WINO_WB;
                        size_t nc = C - c0 < WINO_WB ? C - c0 : WINO_WB;
                        size_t oc1 = (p + 1) * L.mr < OC ? (p + 1) * L.mr : OC;
                        for (size_t oc = p * L.mr; oc < oc1; oc++)
                            WINO_CALL(wide, wino_weights, m, U, weight, OC, C, flip, oc * C + c0,
                                      oc * C + c0 + nc, r0, r0 + ra, L, S);
                    }
                }
                for (size_t x = 0; x < ra * a; x++)
                    gemm_pa_clear_pad(U + x * S, L, OC, C);
            }
            for (size_t x = a * r0; x < a * (r0 + ra); x++)
                gemm_pa(U + (x - a * r0) * S, L, OC, T, C, 1.0f, V + x * C * T, T, 0.0f,
                        M + x * OC * T, T);
        }
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < OC * nr; i++) {
            size_t oc = i / nr, R = R0 + i % nr, n = R / TH, ty = R % TH;
            float b = bias && !acc ? bias[oc] : 0.0f;
            WINO_CALL(wide, wino_output, m, out + (n * OC + oc) * OH * OW,
                      M + oc * T + (R - R0) * TW, b, OH, OW, ty, TW, OC * T, acc);
        }
    }
}
