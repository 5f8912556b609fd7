/* Fused scaled dot-product attention (flash-attention style forward).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * For each (batch b, head h) and each tile of ATT_BQ query rows, key/value tiles of ATT_BK
 * rows are visited in order with an online softmax (Milakov & Gimelshein 2018; Dao et al.,
 * FlashAttention, 2022). Per query row i the running state is
 *   m_i = max of the scaled scores seen so far,  l_i = sum_j exp(s_ij - m_i),
 *   o_i = sum_j exp(s_ij - m_i) v_j   (kept unnormalised, directly in the output row).
 * A new tile with max m' = max(m_i, max_j s_ij) rescales by alpha = exp(m_i - m'):
 *   l_i = alpha l_i + sum_j p_ij,  o_i = alpha o_i + sum_j p_ij v_j,  p_ij = exp(s_ij - m').
 * At the end out_i = o_i / l_i and lse_i = m_i + log(l_i). Only a [ATT_BQ, ATT_BK] score tile
 * and [ATT_DC]-wide chunks of q, k^T and v live on the stack (64 KiB per thread);
 * [B, H, Nq, Nk] never exists.
 *
 * Saved for backward: lse [B, H, Nq]. The backward pass (attention_backward, at the end)
 * recomputes each score tile from q, k, v, out and lse (p_ij = exp(s_ij - lse_i)); it stores
 * no probabilities.
 *
 * Parallel over (b, h, query tile) with OpenMP; no BLAS. The hot loops (plain C, plus GNU C
 * vector types in the AVX2 micro-kernels) are compiled twice, for the baseline ISA and with
 * an AVX2+FMA target attribute (and FMA contraction), chosen at run time by a CPU check.
 * Measured (2-core Zen 3, [4096, 4096] D=40, one thread): ~55 GFLOP/s per core, about half of
 * sgemm; the rest is exp, the softmax bookkeeping and the tile copies. */
#include "kernels.h"
#include "vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ATT_BQ 64 /* query rows per tile (the parallel work item) */
#define ATT_BK 64 /* keys per tile */
#define ATT_DC 64 /* head-dimension chunk of the transposed key tile */
#define ATT_MR 4  /* micro-kernel rows */
#define ATT_NR 16 /* micro-kernel columns */
_Static_assert(ATT_BQ == ATT_BK, "causal backward aligns query tiles on key tiles");

#if defined(__GNUC__)
#define ATT_INLINE static inline __attribute__((always_inline))
#else
#define ATT_INLINE static inline
#endif

/* x [i] = exp(x [i] - shift) for shift >= max x (so the argument is never positive);
 * vm_exp_nonpos (vmath.h) is the Cody & Waite reduction + Cephes polynomial, about 1 ulp. */
ATT_INLINE void att_exp_shifted(float *x, size_t n, float shift)
{
    for (size_t i = 0; i < n; i++)
        x[i] = vm_exp_nonpos(x[i] - shift);
}

/* Largest of x [n], n >= 1. Floats are mapped to unsigned keys with the same order (sign bit
 * set for non-negative values, all bits flipped for negative ones) so the loop vectorises as
 * an integer max reduction. */
ATT_INLINE float att_max(const float *x, size_t n)
{
    uint32_t best = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        uint32_t key = u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
        best = key > best ? key : best;
    }
    uint32_t u = best ^ ((best >> 31) ? 0x80000000u : 0xFFFFFFFFu);
    float m;
    memcpy(&m, &u, sizeof m);
    return m;
}

/* Sum of x [n] with 8 interleaved partial sums (a fixed order, so results do not depend on
 * the ISA). */
ATT_INLINE float att_sum(const float *x, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int t = 0; t < 8; t++)
            acc[t] += x[i + t];
    for (int t = 0; i < n; i++, t++)
        acc[t] += x[i];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* c [ATT_MR, ATT_NR] (row stride ldc) += a [ATT_MR, K] (row stride lda) @ b [K, ATT_NR]
 * (row stride ldb), and the same for 8 columns. GNU C vector types keep the 8 (or 4)
 * accumulators in registers across the K loop; GCC lowers them to whatever the target
 * (baseline SSE2 or AVX2) has. Other compilers use the plain edge kernel. */
#if defined(__GNUC__)
#define ATT_HAVE_VEC 1
typedef float att_v8 __attribute__((vector_size(32)));

ATT_INLINE void att_mk_full(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                            size_t ldb, size_t K)
{
    att_v8 c00, c01, c10, c11, c20, c21, c30, c31;
    memcpy(&c00, c, 32);
    memcpy(&c01, c + 8, 32);
    memcpy(&c10, c + ldc, 32);
    memcpy(&c11, c + ldc + 8, 32);
    memcpy(&c20, c + 2 * ldc, 32);
    memcpy(&c21, c + 2 * ldc + 8, 32);
    memcpy(&c30, c + 3 * ldc, 32);
    memcpy(&c31, c + 3 * ldc + 8, 32);
    for (size_t kk = 0; kk < K; kk++) {
        att_v8 b0, b1;
        memcpy(&b0, b + kk * ldb, 32);
        memcpy(&b1, b + kk * ldb + 8, 32);
        float a0 = a[kk], a1 = a[lda + kk], a2 = a[2 * lda + kk], a3 = a[3 * lda + kk];
        c00 += a0 * b0;
        c01 += a0 * b1;
        c10 += a1 * b0;
        c11 += a1 * b1;
        c20 += a2 * b0;
        c21 += a2 * b1;
        c30 += a3 * b0;
        c31 += a3 * b1;
    }
    memcpy(c, &c00, 32);
    memcpy(c + 8, &c01, 32);
    memcpy(c + ldc, &c10, 32);
    memcpy(c + ldc + 8, &c11, 32);
    memcpy(c + 2 * ldc, &c20, 32);
    memcpy(c + 2 * ldc + 8, &c21, 32);
    memcpy(c + 3 * ldc, &c30, 32);
    memcpy(c + 3 * ldc + 8, &c31, 32);
}

ATT_INLINE void att_mk_half(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                            size_t ldb, size_t K)
{
    att_v8 c0, c1, c2, c3;
    memcpy(&c0, c, 32);
    memcpy(&c1, c + ldc, 32);
    memcpy(&c2, c + 2 * ldc, 32);
    memcpy(&c3, c + 3 * ldc, 32);
    for (size_t kk = 0; kk < K; kk++) {
        att_v8 b0;
        memcpy(&b0, b + kk * ldb, 32);
        c0 += a[kk] * b0;
        c1 += a[lda + kk] * b0;
        c2 += a[2 * lda + kk] * b0;
        c3 += a[3 * lda + kk] * b0;
    }
    memcpy(c, &c0, 32);
    memcpy(c + ldc, &c1, 32);
    memcpy(c + 2 * ldc, &c2, 32);
    memcpy(c + 3 * ldc, &c3, 32);
}
#endif

/* c [mr, nr] += a [mr, K] @ b [K, nr] for an edge block, mr <= ATT_MR, nr <= ATT_NR. */
ATT_INLINE void att_mk_edge(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                            size_t ldb, size_t K, size_t mr, size_t nr)
{
    for (size_t r = 0; r < mr; r++) {
        float acc[ATT_NR];
        for (size_t x = 0; x < nr; x++)
            acc[x] = c[r * ldc + x];
        for (size_t kk = 0; kk < K; kk++) {
            float ar = a[r * lda + kk];
            const float *br = b + kk * ldb;
            for (size_t x = 0; x < nr; x++)
                acc[x] += ar * br[x];
        }
        for (size_t x = 0; x < nr; x++)
            c[r * ldc + x] = acc[x];
    }
}

/* Baseline-ISA block: c [ATT_MR, 8] += a [ATT_MR, K] @ b [K, 8] in plain C (8 SSE-width
 * accumulators; the 32-byte GNU vectors above would be emulated through memory there). */
ATT_INLINE void att_mk_plain(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                             size_t ldb, size_t K)
{
    float c0[8], c1[8], c2[8], c3[8];
    for (int x = 0; x < 8; x++) {
        c0[x] = c[x];
        c1[x] = c[ldc + x];
        c2[x] = c[2 * ldc + x];
        c3[x] = c[3 * ldc + x];
    }
    for (size_t kk = 0; kk < K; kk++) {
        const float *br = b + kk * ldb;
        float a0 = a[kk], a1 = a[lda + kk], a2 = a[2 * lda + kk], a3 = a[3 * lda + kk];
        for (int x = 0; x < 8; x++) {
            c0[x] += a0 * br[x];
            c1[x] += a1 * br[x];
            c2[x] += a2 * br[x];
            c3[x] += a3 * br[x];
        }
    }
    for (int x = 0; x < 8; x++) {
        c[x] = c0[x];
        c[ldc + x] = c1[x];
        c[2 * ldc + x] = c2[x];
        c[3 * ldc + x] = c3[x];
    }
}

/* c [M, N] += a [M, K] @ b [K, N], all with row strides, tiled into micro-kernel blocks.
 * wide (a constant after inlining): use the 32-byte vector kernels (AVX2 path). */
ATT_INLINE void att_gemm_acc(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                             size_t ldb, size_t M, size_t N, size_t K, int wide)
{
    size_t step = wide ? ATT_NR : 8;
    for (size_t j0 = 0; j0 < N; j0 += step) {
        size_t nr = N - j0 < step ? N - j0 : step;
        for (size_t i0 = 0; i0 < M; i0 += ATT_MR) {
            size_t mr = M - i0 < ATT_MR ? M - i0 : ATT_MR;
            float *cb = c + i0 * ldc + j0;
            const float *ab = a + i0 * lda;
            if (mr == ATT_MR && nr == 8 && !wide) {
                att_mk_plain(cb, ldc, ab, lda, b + j0, ldb, K);
                continue;
            }
#ifdef ATT_HAVE_VEC
            if (mr == ATT_MR && nr == ATT_NR && wide) {
                att_mk_full(cb, ldc, ab, lda, b + j0, ldb, K);
                continue;
            }
            if (mr == ATT_MR && nr == ATT_NR / 2 && wide) {
                att_mk_half(cb, ldc, ab, lda, b + j0, ldb, K);
                continue;
            }
#endif
            att_mk_edge(cb, ldc, ab, lda, b + j0, ldb, K, mr, nr);
        }
    }
}

/* One (b, h, query tile): rows q0 .. q0+bq-1 of head h.
 * qh, kh, vh, oh point at column h*D of row 0 of batch b; ld = H*D is the row stride. */
ATT_INLINE void att_tile_body(float *oh, float *lseh, const float *qh, const float *kh,
                              const float *vh, size_t ld, size_t q0, size_t bq, size_t Nk, size_t D,
                              float scale, int causal, int wide)
{
    float s[ATT_BQ * ATT_BK];  /* scores, then probabilities, [bq, ATT_BK] */
    float qc[ATT_BQ * ATT_DC]; /* scale * query chunk [bq, dc], row stride ATT_DC */
    float kt[ATT_DC * ATT_BK]; /* transposed key chunk [dc, ATT_BK], zero padded */
    float vc[ATT_BK * ATT_DC]; /* value chunk [bk, dc], row stride ATT_DC */
    float m[ATT_BQ], l[ATT_BQ];

    /* The chunks are contiguous copies: rows of q, k, v are ld = H*D floats apart, a stride
     * that maps a tile's rows onto few L1 sets when H*D is a multiple of 512. */
    for (size_t i = 0; i < bq; i++) {
        memset(oh + (q0 + i) * ld, 0, D * sizeof(float));
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    size_t kend = causal ? (q0 + bq < Nk ? q0 + bq : Nk) : Nk;
    for (size_t k0 = 0; k0 < kend; k0 += ATT_BK) {
        size_t bk = kend - k0 < ATT_BK ? kend - k0 : ATT_BK;

        /* s [bq, ATT_BK] = scale * q_tile [bq, D] @ k_tile [bk, D]^T, over chunks of D. */
        memset(s, 0, sizeof s);
        for (size_t d0 = 0; d0 < D; d0 += ATT_DC) {
            size_t dc = D - d0 < ATT_DC ? D - d0 : ATT_DC;
            for (size_t i = 0; i < bq; i++)
                for (size_t dd = 0; dd < dc; dd++)
                    qc[i * ATT_DC + dd] = scale * qh[(q0 + i) * ld + d0 + dd];
            for (size_t j = 0; j < bk; j++)
                for (size_t dd = 0; dd < dc; dd++)
                    kt[dd * ATT_BK + j] = kh[(k0 + j) * ld + d0 + dd];
            for (size_t dd = 0; dd < dc; dd++)
                for (size_t j = bk; j < ATT_BK; j++)
                    kt[dd * ATT_BK + j] = 0.0f;
            att_gemm_acc(s, ATT_BK, qc, ATT_DC, kt, ATT_BK, bq, ATT_BK, dc, wide);
        }

        /* Online softmax update, row by row. */
        for (size_t i = 0; i < bq; i++) {
            float *si = s + i * ATT_BK;
            /* keys k0 .. k0+nv-1 are visible to query q0+i */
            size_t nv = bk;
            if (causal) nv = q0 + i + 1 <= k0 ? 0 : (q0 + i + 1 - k0 < bk ? q0 + i + 1 - k0 : bk);
            for (size_t j = nv; j < ATT_BK; j++)
                si[j] = 0.0f;
            if (nv == 0) continue;
            float mx = att_max(si, nv);
            float mnew = mx > m[i] ? mx : m[i];
            att_exp_shifted(si, nv, mnew);
            float sum = att_sum(si, nv);
            float alpha = m[i] == -INFINITY ? 0.0f : expf(m[i] - mnew);
            if (alpha != 1.0f) {
                float *o = oh + (q0 + i) * ld;
                for (size_t d = 0; d < D; d++)
                    o[d] *= alpha;
            }
            l[i] = l[i] * alpha + sum;
            m[i] = mnew;
        }

        /* o_tile [bq, D] += p [bq, bk] @ v_tile [bk, D], over chunks of D. */
        for (size_t d0 = 0; d0 < D; d0 += ATT_DC) {
            size_t dc = D - d0 < ATT_DC ? D - d0 : ATT_DC;
            for (size_t j = 0; j < bk; j++)
                for (size_t dd = 0; dd < dc; dd++)
                    vc[j * ATT_DC + dd] = vh[(k0 + j) * ld + d0 + dd];
            att_gemm_acc(oh + q0 * ld + d0, ld, s, ATT_BK, vc, ATT_DC, bq, dc, bk, wide);
        }
    }

    for (size_t i = 0; i < bq; i++) {
        float *o = oh + (q0 + i) * ld;
        float inv = 1.0f / l[i];
        for (size_t d = 0; d < D; d++)
            o[d] *= inv;
        if (lseh) lseh[q0 + i] = m[i] + logf(l[i]);
    }
}

typedef void (*AttTileFn)(float *, float *, const float *, const float *, const float *, size_t,
                          size_t, size_t, size_t, size_t, float, int);

static void att_tile_generic(float *oh, float *lseh, const float *qh, const float *kh,
                             const float *vh, size_t ld, size_t q0, size_t bq, size_t Nk, size_t D,
                             float scale, int causal)
{
    att_tile_body(oh, lseh, qh, kh, vh, ld, q0, bq, Nk, D, scale, causal, 0);
}

/* DB_KERNELS_NO_AVX2 builds only the baseline path (one test build does, to check it). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2)
#define ATT_HAVE_AVX2 1
/* fp-contract=fast lets a*b + c become one FMA in this clone only (the project builds in ISO C
 * mode, where GCC keeps them apart): one FP op instead of two takes the micro-kernel off the
 * dispatch limit, ~10% on [4096, 4096, D=40]. Results then differ from the baseline clone
 * in the last bits (FMA rounds once); both stay within the tests' tolerances. */
__attribute__((target("avx2,fma"), optimize("fp-contract=fast"))) static void
att_tile_avx2(float *oh, float *lseh, const float *qh, const float *kh, const float *vh, size_t ld,
              size_t q0, size_t bq, size_t Nk, size_t D, float scale, int causal)
{
    att_tile_body(oh, lseh, qh, kh, vh, ld, q0, bq, Nk, D, scale, causal, 1);
}
#endif

static AttTileFn att_pick_tile_fn(void)
{
#ifdef ATT_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return att_tile_avx2;
#endif
    return att_tile_generic;
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float scale, int causal)
{
    if (B == 0 || Nq == 0 || H == 0 || D == 0) return;
    if (Nk == 0) {
        /* softmax over no keys: define the output as zeros and lse as -inf */
        memset(out, 0, B * Nq * H * D * sizeof(float));
        if (lse)
            for (size_t i = 0; i < B * H * Nq; i++)
                lse[i] = -INFINITY;
        return;
    }
    AttTileFn tile = att_pick_tile_fn();
    size_t ld = H * D;
    size_t nqt = (Nq + ATT_BQ - 1) / ATT_BQ;
    size_t nwork = B * H * nqt;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t w = 0; w < nwork; w++) {
        size_t t = w % nqt;
        size_t h = (w / nqt) % H;
        size_t b = w / (nqt * H);
        size_t q0 = t * ATT_BQ;
        size_t bq = Nq - q0 < ATT_BQ ? Nq - q0 : ATT_BQ;
        tile(out + b * Nq * ld + h * D, lse ? lse + (b * H + h) * Nq : NULL,
             q + b * Nq * ld + h * D, k + b * Nk * ld + h * D, v + b * Nk * ld + h * D, ld, q0, bq,
             Nk, D, scale, causal);
    }
}

/* ---- backward ----
 * Flash-attention backward (Dao et al. 2022, alg. 4, without atomics). Per query row i with
 * P_ij = exp(S_ij - lse_i), S = scale Q K^T, and Delta_i = sum_d dO_id O_id:
 *   dV += P^T dO,  dP = dO V^T,  dS_ij = P_ij (dP_ij - Delta_i),
 *   dK += scale dS^T Q,  dQ += scale dS K.
 * Each (query tile, key tile) pair recomputes S and dP from q, k, v, dout and the saved lse;
 * nothing of size [Nq, Nk] is stored. Work is split so that each gradient has one writer:
 *   whole-head mode (B*H >= 2 threads): one work item per (b, h) walks its key tiles and,
 *     inside, its query tiles, writing dK, dV of the key tile and dQ of the query tile;
 *   split mode (few heads): pass 1, one item per (b, h, key tile) writes dK, dV; pass 2, one
 *     item per (b, h, query tile) writes dQ (recomputing S and dP a second time).
 * Both visit the pairs in the same order per gradient row, so results do not depend on the
 * mode or the thread count. */

/* One (query tile q0..q0+bq-1, key tile k0..k0+bk-1) pair of one head. dkh, dvh (both or
 * neither) and dqh may be NULL to skip those products. */
ATT_INLINE void att_bwd_pair(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
                             const float *kh, const float *vh, const float *oh, const float *doh,
                             size_t ld, size_t q0, size_t bq, size_t k0, size_t bk, size_t D,
                             float scale, int causal, int wide)
{
    float s[ATT_BQ * ATT_BK];   /* scores, then P [bq, ATT_BK] */
    float ds[ATT_BQ * ATT_BK];  /* dP, then dS [bq, ATT_BK] */
    float pt[ATT_BK * ATT_BQ];  /* P^T [bk, bq], row stride ATT_BQ */
    float dst[ATT_BK * ATT_BQ]; /* dS^T [bk, bq] */
    float qc[ATT_BQ * ATT_DC];  /* scale * q chunk [bq, dc] */
    float dc_[ATT_BQ * ATT_DC]; /* dout chunk [bq, dc] */
    float bt[ATT_DC * ATT_BK];  /* k^T or v^T chunk [dc, ATT_BK] zero padded; k chunk [bk, dc] */
    float delta[ATT_BQ];
    int kv = dkh != NULL;

    for (size_t i = 0; i < bq; i++) {
        const float *o = oh + (q0 + i) * ld, *g = doh + (q0 + i) * ld;
        float acc = 0.0f;
        for (size_t d = 0; d < D; d++)
            acc += g[d] * o[d];
        delta[i] = acc;
    }

    /* S = (scale q) k^T and dP = dout v^T, over chunks of D */
    memset(s, 0, sizeof s);
    memset(ds, 0, sizeof ds);
    for (size_t d0 = 0; d0 < D; d0 += ATT_DC) {
        size_t dc = D - d0 < ATT_DC ? D - d0 : ATT_DC;
        for (size_t i = 0; i < bq; i++)
            for (size_t dd = 0; dd < dc; dd++) {
                qc[i * ATT_DC + dd] = scale * qh[(q0 + i) * ld + d0 + dd];
                dc_[i * ATT_DC + dd] = doh[(q0 + i) * ld + d0 + dd];
            }
        for (size_t dd = 0; dd < dc; dd++)
            for (size_t j = bk; j < ATT_BK; j++)
                bt[dd * ATT_BK + j] = 0.0f;
        for (size_t j = 0; j < bk; j++)
            for (size_t dd = 0; dd < dc; dd++)
                bt[dd * ATT_BK + j] = kh[(k0 + j) * ld + d0 + dd];
        att_gemm_acc(s, ATT_BK, qc, ATT_DC, bt, ATT_BK, bq, ATT_BK, dc, wide);
        for (size_t j = 0; j < bk; j++)
            for (size_t dd = 0; dd < dc; dd++)
                bt[dd * ATT_BK + j] = vh[(k0 + j) * ld + d0 + dd];
        att_gemm_acc(ds, ATT_BK, dc_, ATT_DC, bt, ATT_BK, bq, ATT_BK, dc, wide);
    }

    /* P = exp(S - lse) on the visible keys, 0 elsewhere; dS = P (dP - Delta) */
    for (size_t i = 0; i < bq; i++) {
        float *si = s + i * ATT_BK, *di = ds + i * ATT_BK;
        size_t nv = bk;
        if (causal) nv = q0 + i + 1 <= k0 ? 0 : (q0 + i + 1 - k0 < bk ? q0 + i + 1 - k0 : bk);
        float l = lseh[q0 + i], dl = delta[i];
        for (size_t j = 0; j < nv; j++) {
            float p = vm_exp_nonpos(si[j] - l);
            si[j] = p;
            di[j] = p * (di[j] - dl);
        }
        for (size_t j = nv; j < ATT_BK; j++) {
            si[j] = 0.0f;
            di[j] = 0.0f;
        }
    }
    if (kv)
        for (size_t j = 0; j < bk; j++)
            for (size_t i = 0; i < bq; i++) {
                pt[j * ATT_BQ + i] = s[i * ATT_BK + j];
                dst[j * ATT_BQ + i] = ds[i * ATT_BK + j];
            }

    /* dV += P^T dout, dK += dS^T (scale q), dQ += dS (scale k), over chunks of D; with one
     * chunk, qc and dc_ still hold it */
    for (size_t d0 = 0; d0 < D; d0 += ATT_DC) {
        size_t dc = D - d0 < ATT_DC ? D - d0 : ATT_DC;
        if (kv) {
            if (D > ATT_DC)
                for (size_t i = 0; i < bq; i++)
                    for (size_t dd = 0; dd < dc; dd++) {
                        qc[i * ATT_DC + dd] = scale * qh[(q0 + i) * ld + d0 + dd];
                        dc_[i * ATT_DC + dd] = doh[(q0 + i) * ld + d0 + dd];
                    }
            att_gemm_acc(dvh + k0 * ld + d0, ld, pt, ATT_BQ, dc_, ATT_DC, bk, dc, bq, wide);
            att_gemm_acc(dkh + k0 * ld + d0, ld, dst, ATT_BQ, qc, ATT_DC, bk, dc, bq, wide);
        }
        if (dqh) {
            for (size_t j = 0; j < bk; j++)
                for (size_t dd = 0; dd < dc; dd++)
                    bt[j * ATT_DC + dd] = scale * kh[(k0 + j) * ld + d0 + dd];
            att_gemm_acc(dqh + q0 * ld + d0, ld, ds, ATT_BK, bt, ATT_DC, bq, dc, bk, wide);
        }
    }
}

/* mode 0: whole head (all key tiles, each with all its query tiles; dq, dk, dv);
 * mode 1: key tile `tile` (dk, dv); mode 2: query tile `tile` (dq). Pointers at column h*D
 * of row 0 of batch b, row stride ld. */
ATT_INLINE void att_bwd_body(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
                             const float *kh, const float *vh, const float *oh, const float *doh,
                             size_t ld, size_t Nq, size_t Nk, size_t D, float scale, int causal,
                             int mode, size_t tile, int wide)
{
    if (mode == 2) {
        size_t q0 = tile * ATT_BQ, bq = Nq - q0 < ATT_BQ ? Nq - q0 : ATT_BQ;
        size_t kend = causal ? (q0 + bq < Nk ? q0 + bq : Nk) : Nk;
        for (size_t k0 = 0; k0 < kend; k0 += ATT_BK)
            att_bwd_pair(dqh, NULL, NULL, lseh, qh, kh, vh, oh, doh, ld, q0, bq, k0,
                         kend - k0 < ATT_BK ? kend - k0 : ATT_BK, D, scale, causal, wide);
        return;
    }
    size_t kt0 = mode == 1 ? tile : 0, kt1 = mode == 1 ? tile + 1 : (Nk + ATT_BK - 1) / ATT_BK;
    for (size_t kt = kt0; kt < kt1; kt++) {
        size_t k0 = kt * ATT_BK, bk = Nk - k0 < ATT_BK ? Nk - k0 : ATT_BK;
        /* causal (Nq == Nk, ATT_BQ == ATT_BK): queries before k0 see none of these keys */
        size_t qstart = causal ? k0 : 0;
        for (size_t q0 = qstart; q0 < Nq; q0 += ATT_BQ)
            att_bwd_pair(mode == 0 ? dqh : NULL, dkh, dvh, lseh, qh, kh, vh, oh, doh, ld, q0,
                         Nq - q0 < ATT_BQ ? Nq - q0 : ATT_BQ, k0, bk, D, scale, causal, wide);
    }
}

typedef void (*AttBwdFn)(float *, float *, float *, const float *, const float *, const float *,
                         const float *, const float *, const float *, size_t, size_t, size_t,
                         size_t, float, int, int, size_t);

static void att_bwd_generic(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
                            const float *kh, const float *vh, const float *oh, const float *doh,
                            size_t ld, size_t Nq, size_t Nk, size_t D, float scale, int causal,
                            int mode, size_t tile)
{
    att_bwd_body(dqh, dkh, dvh, lseh, qh, kh, vh, oh, doh, ld, Nq, Nk, D, scale, causal, mode, tile,
                 0);
}

#ifdef ATT_HAVE_AVX2
__attribute__((target("avx2,fma"), optimize("fp-contract=fast"))) static void
att_bwd_avx2(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
             const float *kh, const float *vh, const float *oh, const float *doh, size_t ld,
             size_t Nq, size_t Nk, size_t D, float scale, int causal, int mode, size_t tile)
{
    att_bwd_body(dqh, dkh, dvh, lseh, qh, kh, vh, oh, doh, ld, Nq, Nk, D, scale, causal, mode, tile,
                 1);
}
#endif

void attention_backward(float *dq, float *dk, float *dv, const float *out, const float *lse,
                        const float *dout, const float *q, const float *k, const float *v, size_t B,
                        size_t Nq, size_t Nk, size_t H, size_t D, float scale, int causal)
{
    if (B == 0 || Nq == 0 || Nk == 0 || H == 0 || D == 0) return;
    AttBwdFn fn = att_bwd_generic;
#ifdef ATT_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fn = att_bwd_avx2;
#endif
    size_t ld = H * D, BH = B * H;
    size_t nqt = (Nq + ATT_BQ - 1) / ATT_BQ, nkt = (Nk + ATT_BK - 1) / ATT_BK;
    size_t threads = 1;
#ifdef _OPENMP
    threads = (size_t)omp_get_max_threads();
#endif
#define ATT_BWD_ARGS(b, h)                                                                         \
    dq + (b)*Nq *ld + (h)*D, dk + (b)*Nk *ld + (h)*D, dv + (b)*Nk *ld + (h)*D,                     \
        lse + ((b)*H + (h)) * Nq, q + (b)*Nq *ld + (h)*D, k + (b)*Nk *ld + (h)*D,                  \
        v + (b)*Nk *ld + (h)*D, out + (b)*Nq *ld + (h)*D, dout + (b)*Nq *ld + (h)*D, ld, Nq, Nk,   \
        D, scale, causal
    if (BH >= 2 * threads) {
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t w = 0; w < BH; w++)
            fn(ATT_BWD_ARGS(w / H, w % H), 0, 0);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t w = 0; w < BH * nkt; w++)
        fn(ATT_BWD_ARGS(w / nkt / H, (w / nkt) % H), 1, w % nkt);
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t w = 0; w < BH * nqt; w++)
        fn(ATT_BWD_ARGS(w / nqt / H, (w / nqt) % H), 2, w % nqt);
#undef ATT_BWD_ARGS
}
