/* Fused scaled dot-product attention (flash-attention style), forward and backward.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Forward. For each (batch b, head h) and each tile of up to ATT_BQ query rows, key/value
 * tiles of ATT_BK rows are visited in order with an online softmax (Milakov & Gimelshein
 * 2018; Dao et al., FlashAttention, 2022). Per query row i the running state is
 *   m_i = max of the scaled scores seen so far,  l_i = sum_j exp(s_ij - m_i),
 *   o_i = sum_j exp(s_ij - m_i) v_j   (kept unnormalised, directly in the output row).
 * A new tile with max m' = max(m_i, max_j s_ij) rescales by alpha = exp(m_i - m'):
 *   l_i = alpha l_i + sum_j p_ij,  o_i = alpha o_i + sum_j p_ij v_j,  p_ij = exp(s_ij - m').
 * At the end out_i = o_i / l_i and lse_i = m_i + log(l_i).
 * The score tile is computed transposed, S^T [keys, queries] = K (scale Q)^T: the query tile
 * is packed transposed once (Q^T [D, 48], for all key tiles), key rows are read in place as
 * broadcasts, and the softmax runs down the columns, 8 queries per vector (no horizontal
 * reductions). O^T [D, 48] += V^T P^T reads the value rows in place as broadcasts and P^T as
 * vectors, folding the alpha rescale into the load of the accumulators; O^T is transposed
 * into the output rows once per query tile (for D > 160, O += P V accumulates in the output
 * rows instead and Q^T is packed in chunks per key tile). Nothing per key tile is copied;
 * [B, H, Nq, Nk] never exists. Where a key tile needs no causal mask and D <= 160, the S^T
 * GEMM also returns the column maxima, taken from its accumulator registers (no pass over
 * S^T for the max). exp(x) = 2^(x log2 e) through vm_exp2_nonpos (see ATT_LOG2E).
 * Stack: ~75 KiB per thread forward, ~150 KiB backward.
 * Measured (2-core Zen 3, one thread, CPU time, machine shared): forward [1, 4096, 4*40]
 * ~81 GFLOP/s, [.., 4*64] ~85 (sgemm 2048^3: ~100), backward ~84 (10 N^2 D H B FLOP); the
 * GEMM runs near the sgemm rate, the rest is mostly the exp (~15 % of the forward).
 *
 * Backward (at the end) recomputes each score tile from q, k, v, out and the saved lse
 * (p_ij = exp(s_ij - lse_i)); it stores no probabilities. Delta_i = dO_i . O_i is computed
 * once per work item (for up to ATT_DMAX query rows; beyond, once per pair), not per pair.
 *
 * All products go through one register-blocked GEMM (att_gemm): c [M, N] (+)= a [M, K] b [K, N]
 * where b and c have unit column stride (vectors of 8 columns, held in registers for a block
 * of up to 4 x 24) and a is read as scalar broadcasts with arbitrary row and column
 * strides, so transposed operands (P^T, dS^T, V^T, Q^T rows) need no copy. Parallel over
 * (b, h, query tile) with OpenMP; no BLAS. The hot code (GNU C vector types) is compiled
 * three times, for the baseline ISA, with an AVX2+FMA target attribute (and FMA contraction),
 * and with AVX-512F, whose GEMM takes 16-wide vectors in blocks of 6 x 48 (same sums in the
 * same order); chosen at run time by a CPU check (DB_KERNELS_NO_AVX512 / _AVX2 build without
 * the wider ones). AVX-512 on the 2-core Zen 5 VM: the [2, 4096, 8*40] forward in 0.12 s
 * against 0.22 s with the AVX2 clone. */
#include "kernels.h"
#include "vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ATT_BQ 48   /* query rows per tile (the forward work item) */
#define ATT_BK 64   /* keys per tile */
#define ATT_QTF 7680 /* floats of the packed Q^T chunk: [ATT_QTF / ATT_BQ = 160, ATT_BQ] */
#define ATT_DCF (ATT_QTF / ATT_BQ)
#define ATT_DCB 80  /* head-dimension chunk of the packed K^T, V^T tiles in backward */
#define ATT_DMAX 9216 /* backward keeps Delta of up to this many query rows (96 x 96 latents) */
/* exp(x) = 2^(x log2(e)) by vm_exp2_nonpos: x = s - m is exact near the maximum, so the one
 * rounding of x log2(e) stays small where the weights are large; the base-2 reduction needs
 * no Cody-Waite split (a third fewer multiply-adds than vm_exp_nonpos, same accuracy). */
#define ATT_LOG2E 1.44269504088896341f

#if defined(__GNUC__)
#define ATT_INLINE static inline __attribute__((always_inline))
#define ATT_UNROLL _Pragma("GCC unroll 8")
#if defined(__clang__) /* no noclone (only the fuzz build uses clang) */
#define ATT_NOCLONE __attribute__((noinline))
#else
#define ATT_NOCLONE __attribute__((noinline, noclone))
#endif
#else
#define ATT_NOCLONE
#define ATT_INLINE static inline
#define ATT_UNROLL
#endif

/* ---- the GEMM ----
 * c [M, N] (row stride ldc) = or += a [M, K] @ b [K, N] (row stride ldb), a (i, kk) at
 * a [i * ars + kk * aks]. mode 0: c = a b; 1: c += a b; 2: c = rs [i] * c + a b (rows
 * rescaled); 3: c = rs [j] * c + a b (columns rescaled); 4: c = a b and rs [j] = max(rs [j],
 * max_i c [i, j]) (the column maxima, taken from the registers). */
#if defined(__GNUC__)
#define ATT_HAVE_VEC 1
typedef float att_v8 __attribute__((vector_size(32)));

typedef int32_t att_i8 __attribute__((vector_size(32)));
/* used only inside the AVX-512 clones (att_gemm_impl's w16 is a constant 0 elsewhere) */
typedef float att_v16 __attribute__((vector_size(64)));
typedef int32_t att_i16 __attribute__((vector_size(64)));

/* Block of MR rows x NV vectors of W columns, MR and NV constants after inlining: the
 * MR * NV accumulators, NV b vectors and one broadcast stay in registers (<= 16 for the 8-wide
 * AVX2 version, MR <= 4; <= 32 for the 16-wide AVX-512 one, MR <= 6). Each c element sums its
 * products in the same order (one multiply-add per kk) whatever the width. */
#define ATT_MK_DEFINE(name, VT, IT, W)                                                         \
    ATT_INLINE void name(int MR, int NV, float *c, size_t ldc, const float *a, size_t ars,     \
                         size_t aks, const float *b, size_t ldb, size_t K, int mode, float *rs) \
    {                                                                                          \
        VT acc[6][3];                                                                          \
        ATT_UNROLL for (int r = 0; r < MR; r++) {                                              \
            float sc = mode == 2 ? rs[r] : 1.0f;                                               \
            ATT_UNROLL for (int x = 0; x < NV; x++) {                                          \
                if (mode == 0 || mode == 4) {                                                  \
                    acc[r][x] = (VT){0};                                                       \
                } else {                                                                       \
                    memcpy(&acc[r][x], c + r * ldc + W * x, sizeof(VT));                       \
                    if (mode == 2) acc[r][x] *= sc;                                            \
                    if (mode == 3) {                                                           \
                        VT cs;                                                                 \
                        memcpy(&cs, rs + W * x, sizeof(VT));                                   \
                        acc[r][x] *= cs;                                                       \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        for (size_t kk = 0; kk < K; kk++) {                                                    \
            VT bv[3];                                                                          \
            ATT_UNROLL for (int x = 0; x < NV; x++)                                            \
                memcpy(&bv[x], b + kk * ldb + W * x, sizeof(VT));                              \
            ATT_UNROLL for (int r = 0; r < MR; r++) {                                          \
                float ar = a[r * ars + kk * aks];                                              \
                ATT_UNROLL for (int x = 0; x < NV; x++)                                        \
                    acc[r][x] += ar * bv[x];                                                   \
            }                                                                                  \
        }                                                                                      \
        ATT_UNROLL for (int r = 0; r < MR; r++)                                                \
            ATT_UNROLL for (int x = 0; x < NV; x++)                                            \
                memcpy(c + r * ldc + W * x, &acc[r][x], sizeof(VT));                           \
        if (mode == 4)                                                                         \
            ATT_UNROLL for (int x = 0; x < NV; x++) {                                          \
                VT mx;                                                                         \
                memcpy(&mx, rs + W * x, sizeof(VT));                                           \
                ATT_UNROLL for (int r = 0; r < MR; r++) {                                      \
                    /* mx = acc > mx ? acc : mx, lane by lane (a compare and a blend) */       \
                    IT gt = acc[r][x] > mx;                                                    \
                    mx = (VT)(((IT)acc[r][x] & gt) | ((IT)mx & ~gt));                          \
                }                                                                              \
                memcpy(rs + W * x, &mx, sizeof(VT));                                           \
            }                                                                                  \
    }
ATT_MK_DEFINE(att_mk, att_v8, att_i8, 8)
ATT_MK_DEFINE(att_mk16, att_v16, att_i16, 16)

/* Columns j0 .. j0 + W NV - 1 of all M rows, MR rows at a time, the rest one by one (rs
 * already offset to the first column in mode 3). */
#define ATT_COLS_DEFINE(name, mk)                                                              \
    ATT_INLINE void name(int MR, int NV, float *c, size_t ldc, const float *a, size_t ars,     \
                         size_t aks, const float *b, size_t ldb, size_t M, size_t K, int mode,  \
                         float *rs)                                                            \
    {                                                                                          \
        size_t i = 0;                                                                          \
        for (; i + (size_t)MR <= M; i += (size_t)MR)                                           \
            mk(MR, NV, c + i * ldc, ldc, a + i * ars, ars, aks, b, ldb, K, mode,               \
               mode == 2 ? rs + i : rs);                                                       \
        for (; i < M; i++)                                                                     \
            mk(1, NV, c + i * ldc, ldc, a + i * ars, ars, aks, b, ldb, K, mode,                \
               mode == 2 ? rs + i : rs);                                                       \
    }
ATT_COLS_DEFINE(att_gemm_cols, att_mk)
ATT_COLS_DEFINE(att_gemm_cols16, att_mk16)
#endif

/* Vectors in the next column block when nv remain: 3, but 2 + 2 rather than 3 + 1. */
ATT_INLINE size_t att_block_vectors(size_t nv)
{
    return nv >= 3 && nv != 4 ? 3 : nv >= 2 ? 2 : 1;
}

ATT_INLINE void att_gemm_impl(float *c, size_t ldc, const float *a, size_t ars, size_t aks,
                              const float *b, size_t ldb, size_t M, size_t N, size_t K, int mode,
                              float *rs, int w16)
{
    size_t j = 0;
#ifdef ATT_HAVE_VEC
#define ATT_RS(j) (mode >= 3 ? rs + (j) : rs)
    /* blocks of 3 vectors, ending in 2 + 2 rather than 3 + 1: AVX-512 first, 6 rows x 3
     * vectors of 16 (18 accumulators), then (and without AVX-512) 4 rows x 3 vectors of 8 */
    for (size_t nv = w16 ? N / 16 : 0, take; nv > 0; j += 16 * take, nv -= take) {
        take = att_block_vectors(nv);
        if (take == 3)
            att_gemm_cols16(6, 3, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
        else if (take == 2)
            att_gemm_cols16(6, 2, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
        else
            att_gemm_cols16(6, 1, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
    }
    for (size_t nv = (N - j) / 8, take; nv > 0; j += 8 * take, nv -= take) {
        take = att_block_vectors(nv);
        if (take == 3)
            att_gemm_cols(4, 3, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
        else if (take == 2)
            att_gemm_cols(4, 2, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
        else
            att_gemm_cols(4, 1, c + j, ldc, a, ars, aks, b + j, ldb, M, K, mode, ATT_RS(j));
    }
#undef ATT_RS
#endif
    /* remaining columns (N % 8, or all without vector types), one at a time */
    for (; j < N; j++)
        for (size_t i = 0; i < M; i++) {
            float sc = mode == 2 ? rs[i] : (mode == 3 ? rs[j] : 1.0f);
            float acc = mode == 0 || mode == 4 ? 0.0f : sc * c[i * ldc + j];
            for (size_t kk = 0; kk < K; kk++)
                acc += a[i * ars + kk * aks] * b[kk * ldb + j];
            c[i * ldc + j] = acc;
            if (mode == 4 && acc > rs[j]) rs[j] = acc;
        }
}

ATT_NOCLONE static void att_gemm_generic(float *c, size_t ldc, const float *a, size_t ars, size_t aks,
                             const float *b, size_t ldb, size_t M, size_t N, size_t K, int mode,
                             float *rs)
{
    att_gemm_impl(c, ldc, a, ars, aks, b, ldb, M, N, K, mode, rs, 0);
}

/* DB_KERNELS_NO_AVX2 builds only the baseline path (one test build does, to check it). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DB_KERNELS_NO_AVX2)
#define ATT_HAVE_AVX2 1
/* fp-contract=fast lets a*b + c become one FMA in the AVX2 clones only (the project builds
 * in ISO C mode, where GCC keeps them apart). Results then differ from the baseline clone in
 * the last bits (FMA rounds once); both stay within the tests' tolerances. */
#if defined(__clang__) /* clang contracts a*b + c by default and has no optimize attribute */
#define ATT_AVX2 __attribute__((target("avx2,fma")))
#else
#define ATT_AVX2 __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#endif
ATT_AVX2 ATT_NOCLONE static void att_gemm_avx2(float *c, size_t ldc, const float *a, size_t ars, size_t aks,
                                   const float *b, size_t ldb, size_t M, size_t N, size_t K,
                                   int mode, float *rs)
{
    att_gemm_impl(c, ldc, a, ars, aks, b, ldb, M, N, K, mode, rs, 0);
}
#ifndef DB_KERNELS_NO_AVX512
#define ATT_HAVE_AVX512 1
/* The AVX-512 clones (wide = 2): 16-wide blocks in the GEMM; the rest as in the AVX2 ones. */
#if defined(__clang__)
#define ATT_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define ATT_AVX512 __attribute__((target("avx512f,avx2,fma"), optimize("fp-contract=fast")))
#endif
ATT_AVX512 ATT_NOCLONE static void att_gemm_avx512(float *c, size_t ldc, const float *a,
                                                   size_t ars, size_t aks, const float *b,
                                                   size_t ldb, size_t M, size_t N, size_t K,
                                                   int mode, float *rs)
{
    att_gemm_impl(c, ldc, a, ars, aks, b, ldb, M, N, K, mode, rs, 1);
}
#define ATT_GEMM(wide, ...)                                                                    \
    ((wide) == 2 ? att_gemm_avx512(__VA_ARGS__)                                                \
                 : (wide) ? att_gemm_avx2(__VA_ARGS__) : att_gemm_generic(__VA_ARGS__))
#else
#define ATT_GEMM(wide, ...) ((wide) ? att_gemm_avx2(__VA_ARGS__) : att_gemm_generic(__VA_ARGS__))
#endif
#else
#define ATT_GEMM(wide, ...) ((void)(wide), att_gemm_generic(__VA_ARGS__))
#endif

/* Largest key of x [n] in the order-preserving unsigned mapping of floats (sign bit set for
 * non-negative values, all bits flipped for negative ones), so max loops vectorise as integer
 * max reductions (a float compare-and-select is not if-converted under -ftrapping-math). */
ATT_INLINE uint32_t att_key(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}

ATT_INLINE float att_unkey(uint32_t key)
{
    uint32_t u = key ^ ((key >> 31) ? 0x80000000u : 0xFFFFFFFFu);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- forward ---- */

/* One (b, h, query tile): rows q0 .. q0+bq-1 of head h. qh, kh, vh, oh point at column h*D of
 * row 0 of batch b; ld = H*D is the row stride. */
ATT_INLINE void att_fwd_body(float *oh, float *lseh, const float *qh, const float *kh,
                             const float *vh, size_t ld, size_t q0, size_t bq, size_t Nk, size_t D,
                             float scale, int causal, int wide)
{
    float qt[ATT_QTF];          /* scale * Q^T chunk [dc, ATT_BQ], zero beyond bq */
    float st[ATT_BK * ATT_BQ];  /* S^T, then P^T [bk, ATT_BQ] */
    float ot[ATT_QTF];          /* D <= ATT_DCF: O^T [D, ATT_BQ] (unnormalised) */
    float m[ATT_BQ], l[ATT_BQ], alpha[ATT_BQ], mx[ATT_BQ], sum[ATT_BQ];
    uint32_t mk[ATT_BQ];
    size_t nc = (bq + 7) / 8 * 8; /* columns computed (queries, padded to whole vectors) */
    int onechunk = D <= ATT_DCF;

    for (size_t c = 0; c < ATT_BQ; c++) {
        m[c] = -INFINITY;
        l[c] = 0.0f;
    }
    size_t kend = causal ? (q0 + bq < Nk ? q0 + bq : Nk) : Nk;
    for (size_t k0 = 0; k0 < kend; k0 += ATT_BK) {
        size_t bk = kend - k0 < ATT_BK ? kend - k0 : ATT_BK;
        /* causal: key k0+j is visible to query q0+c iff k0+j <= q0+c */
        int diag = causal && k0 + bk - 1 > q0;
        /* one chunk, nothing masked: the GEMM also takes mx = max(m, column maxima of S^T) */
        int fused = onechunk && !diag;
        for (size_t c = 0; c < nc; c++)
            mx[c] = m[c];

        /* st [bk, nc] = k_tile [bk, D] @ (scale q_tile)^T [D, nc], over chunks of D */
        for (size_t d0 = 0; d0 < D; d0 += ATT_DCF) {
            size_t dc = D - d0 < ATT_DCF ? D - d0 : ATT_DCF;
            if (!onechunk || k0 == 0)
                for (size_t dd = 0; dd < dc; dd++) {
                    for (size_t c = 0; c < bq; c++)
                        qt[dd * ATT_BQ + c] = scale * qh[(q0 + c) * ld + d0 + dd];
                    for (size_t c = bq; c < nc; c++)
                        qt[dd * ATT_BQ + c] = 0.0f;
                }
            ATT_GEMM(wide, st, ATT_BQ, kh + k0 * ld + d0, ld, 1, qt, ATT_BQ, bk, nc, dc,
                     fused ? 4 : (d0 == 0 ? 0 : 1), mx);
        }

        if (diag)
            for (size_t j = 0; j < bk; j++)
                for (size_t c = 0; c < nc; c++)
                    if (k0 + j > q0 + c) st[j * ATT_BQ + c] = -INFINITY;

        /* online softmax down the columns */
        if (!fused) {
            for (size_t c = 0; c < nc; c++)
                mk[c] = att_key(m[c]);
            for (size_t j = 0; j < bk; j++)
                for (size_t c = 0; c < nc; c++) {
                    uint32_t key = att_key(st[j * ATT_BQ + c]);
                    mk[c] = key > mk[c] ? key : mk[c];
                }
            for (size_t c = 0; c < nc; c++)
                mx[c] = att_unkey(mk[c]);
        }
        for (size_t c = 0; c < nc; c++) {
            float mnew = mx[c]; /* finite: key 0 is in the first tile */
            /* m = -inf (first tile): clamped to 2^-126, times l = 0 and never read in O^T */
            alpha[c] = vm_exp2_nonpos(ATT_LOG2E * (m[c] - mnew));
            m[c] = mnew;
            sum[c] = 0.0f;
        }
        if (!diag) {
            for (size_t j = 0; j < bk; j++)
                for (size_t c = 0; c < nc; c++) {
                    float p = vm_exp2_nonpos(ATT_LOG2E * (st[j * ATT_BQ + c] - m[c]));
                    st[j * ATT_BQ + c] = p;
                    sum[c] += p;
                }
        } else {
            /* 2^(-inf - m) is clamped to 2^-126, not 0: zero the hidden keys */
            for (size_t j = 0; j < bk; j++)
                for (size_t c = 0; c < nc; c++)
                    st[j * ATT_BQ + c] = vm_exp2_nonpos(ATT_LOG2E * (st[j * ATT_BQ + c] - m[c]));
            for (size_t j = 0; j < bk; j++)
                for (size_t c = 0; c < nc; c++) {
                    if (k0 + j > q0 + c) st[j * ATT_BQ + c] = 0.0f;
                    sum[c] += st[j * ATT_BQ + c];
                }
        }
        for (size_t c = 0; c < nc; c++)
            l[c] = l[c] * alpha[c] + sum[c];

        if (onechunk)
            /* O^T [D, nc] = O^T alpha + v_tile^T [D, bk] @ P^T [bk, nc]: the value rows are
             * read as broadcasts, P^T as vectors, both in place */
            ATT_GEMM(wide, ot, ATT_BQ, vh + k0 * ld, 1, ld, st, ATT_BQ, D, nc, bk,
                     k0 == 0 ? 0 : 3, alpha);
        else
            /* o_tile [bq, D] = alpha o_tile + P [bq, bk] @ v_tile [bk, D]; P (c, j) = st [j, c] */
            ATT_GEMM(wide, oh + q0 * ld, ld, st, 1, ATT_BQ, vh + k0 * ld, ld, bq, D, bk,
                     k0 == 0 ? 0 : 2, alpha);
    }

    for (size_t i = 0; i < bq; i++) {
        float *o = oh + (q0 + i) * ld;
        float inv = 1.0f / l[i];
        if (onechunk)
            for (size_t d = 0; d < D; d++)
                o[d] = ot[d * ATT_BQ + i] * inv;
        else
            for (size_t d = 0; d < D; d++)
                o[d] *= inv;
        if (lseh) lseh[q0 + i] = m[i] + logf(l[i]);
    }
}

typedef void (*AttFwdFn)(float *, float *, const float *, const float *, const float *, size_t,
                         size_t, size_t, size_t, size_t, float, int);

/* One clone of the forward per ISA: att_fwd_body with the GEMM of that ISA (wide). */
#define ATT_FWD_CLONE(sfx, attr, wide)                                                         \
    attr static void att_fwd_##sfx(float *oh, float *lseh, const float *qh, const float *kh,    \
                                   const float *vh, size_t ld, size_t q0, size_t bq, size_t Nk, \
                                   size_t D, float scale, int causal)                          \
    {                                                                                          \
        att_fwd_body(oh, lseh, qh, kh, vh, ld, q0, bq, Nk, D, scale, causal, wide);            \
    }
ATT_FWD_CLONE(generic, , 0)
#ifdef ATT_HAVE_AVX2
ATT_FWD_CLONE(avx2, ATT_AVX2, 1)
#endif
#ifdef ATT_HAVE_AVX512
ATT_FWD_CLONE(avx512, ATT_AVX512, 2)
#endif

#ifdef ATT_HAVE_AVX2
static int att_have_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif
#ifdef ATT_HAVE_AVX512
static int att_have_avx512(void) { return att_have_avx2() && __builtin_cpu_supports("avx512f"); }
#endif

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
    AttFwdFn fn = att_fwd_generic;
#ifdef ATT_HAVE_AVX2
    if (att_have_avx2()) fn = att_fwd_avx2;
#endif
#ifdef ATT_HAVE_AVX512
    if (att_have_avx512()) fn = att_fwd_avx512;
#endif
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
        fn(out + b * Nq * ld + h * D, lse ? lse + (b * H + h) * Nq : NULL, q + b * Nq * ld + h * D,
           k + b * Nk * ld + h * D, v + b * Nk * ld + h * D, ld, q0, bq, Nk, D, scale, causal);
    }
}

/* ---- backward ----
 * Flash-attention backward (Dao et al. 2022, alg. 4, without atomics). Per query row i with
 * P_ij = exp(S_ij - lse_i), S = scale Q K^T, and Delta_i = sum_d dO_id O_id:
 *   dV += P^T dO,  dP = dO V^T,  dS_ij = P_ij (dP_ij - Delta_i),
 *   dK += scale dS^T Q,  dQ += scale dS K.
 * Each (query tile, key tile) pair recomputes S and dP [bq, ATT_BK] from the query and dout
 * rows (broadcasts) and the packed K^T, V^T tiles (packed once per key tile when D <= ATT_DCB);
 * the three gradient products read P, dS (or their transposes, by strides) and the q, dout, k
 * rows in place and accumulate straight into the gradient rows. Nothing of size [Nq, Nk] is
 * stored. Work is split so that each gradient has one writer:
 *   whole-head mode (B*H >= 2 threads): one work item per (b, h) walks its key tiles and,
 *     inside, its query tiles, writing dK, dV of the key tile and dQ of the query tile;
 *   split mode (few heads): pass 1, one item per (b, h, key tile) writes dK, dV; pass 2, one
 *     item per (b, h, query tile) writes dQ (recomputing S and dP a second time).
 * Both visit the pairs in the same order per gradient row with the same arithmetic, so
 * results do not depend on the mode or the thread count. */

/* Transposed chunk of a key tile: t [dd, j] = x [(k0 + j) * ld + d0 + dd], zero for j >= bk. */
ATT_INLINE void att_pack_t(float *t, const float *x, size_t ld, size_t k0, size_t bk, size_t d0,
                           size_t dc)
{
    for (size_t j = 0; j < bk; j++)
        for (size_t dd = 0; dd < dc; dd++)
            t[dd * ATT_BK + j] = x[(k0 + j) * ld + d0 + dd];
    for (size_t dd = 0; dd < dc; dd++)
        for (size_t j = bk; j < ATT_BK; j++)
            t[dd * ATT_BK + j] = 0.0f;
}

/* delta [i] = Delta_(r0 + i) = dout_(r0+i) . out_(r0+i) for n rows, with 8 interleaved
 * partial sums (vectorises; one function, so every mode gets the same bits). */
ATT_INLINE void att_bwd_delta(float *delta, const float *oh, const float *doh, size_t ld,
                              size_t r0, size_t n, size_t D)
{
    for (size_t i = 0; i < n; i++) {
        const float *o = oh + (r0 + i) * ld, *g = doh + (r0 + i) * ld;
        float acc[8] = {0};
        size_t d = 0;
        for (; d + 8 <= D; d += 8)
            for (int t = 0; t < 8; t++)
                acc[t] += g[d + t] * o[d + t];
        for (int t = 0; d < D; d++, t++)
            acc[t] += g[d] * o[d];
        delta[i] =
            ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
}

/* One (query tile q0..q0+bq-1, key tile k0..k0+bk-1) pair of one head; delta [bq] holds
 * Delta of its rows. kt, vt hold the transposed key and value tile when D <= ATT_DCB
 * (packed by the caller), else scratch.
 * dkh, dvh (both or neither) and dqh may be NULL to skip those products. When D <= ATT_DCB,
 * dK and dV go to the tile accumulators dkt, dvt [D, ATT_BK] (transposed; first: set rather
 * than add) that the caller adds into dk, dv; otherwise straight into the rows of dk, dv. */
ATT_INLINE void att_bwd_pair(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
                             const float *kh, const float *vh, const float *doh,
                             size_t ld, size_t q0, size_t bq, size_t k0, size_t bk, size_t D,
                             float scale, int causal, const float *delta, float *kt, float *vt,
                             float *dkt, float *dvt, int first, int wide)
{
    float s[ATT_BQ * ATT_BK];  /* scores, then P [bq, ATT_BK] */
    float ds[ATT_BQ * ATT_BK]; /* dP, then scale * dS [bq, ATT_BK] */

    /* S = q k^T and dP = dout v^T, over chunks of D */
    for (size_t d0 = 0; d0 < D; d0 += ATT_DCB) {
        size_t dc = D - d0 < ATT_DCB ? D - d0 : ATT_DCB;
        if (D > ATT_DCB) {
            att_pack_t(kt, kh, ld, k0, bk, d0, dc);
            att_pack_t(vt, vh, ld, k0, bk, d0, dc);
        }
        int mode = d0 == 0 ? 0 : 1;
        ATT_GEMM(wide, s, ATT_BK, qh + q0 * ld + d0, ld, 1, kt, ATT_BK, bq, ATT_BK, dc, mode, NULL);
        ATT_GEMM(wide, ds, ATT_BK, doh + q0 * ld + d0, ld, 1, vt, ATT_BK, bq, ATT_BK, dc, mode,
                 NULL);
    }

    /* P = exp(scale S - lse) on the visible keys, 0 elsewhere; scale dS = scale P (dP - Delta) */
    for (size_t i = 0; i < bq; i++) {
        float *si = s + i * ATT_BK, *di = ds + i * ATT_BK;
        size_t nv = bk;
        if (causal) nv = q0 + i + 1 <= k0 ? 0 : (q0 + i + 1 - k0 < bk ? q0 + i + 1 - k0 : bk);
        float lv = lseh[q0 + i], dl = delta[i];
        for (size_t j = 0; j < nv; j++) {
            float p = vm_exp2_nonpos(ATT_LOG2E * (scale * si[j] - lv));
            si[j] = p;
            di[j] = scale * (p * (di[j] - dl));
        }
        for (size_t j = nv; j < bk; j++) {
            si[j] = 0.0f;
            di[j] = 0.0f;
        }
    }

    if (dkh && D <= ATT_DCB) {
        /* dV^T [D, ATT_BK] += dout^T [D, bq] P [bq, ATT_BK], dK^T += q^T (scale dS): the
         * dout and q rows are read as broadcasts, P and dS as vectors (the columns past bk
         * hold finite values and are never copied out) */
        ATT_GEMM(wide, dvt, ATT_BK, doh + q0 * ld, 1, ld, s, ATT_BK, D, ATT_BK, bq, !first, NULL);
        ATT_GEMM(wide, dkt, ATT_BK, qh + q0 * ld, 1, ld, ds, ATT_BK, D, ATT_BK, bq, !first, NULL);
    } else if (dkh) {
        /* dV [bk, D] += P^T dout, dK [bk, D] += (scale dS)^T q; P^T (j, i) = s [i, j] */
        ATT_GEMM(wide, dvh + k0 * ld, ld, s, 1, ATT_BK, doh + q0 * ld, ld, bk, D, bq, 1, NULL);
        ATT_GEMM(wide, dkh + k0 * ld, ld, ds, 1, ATT_BK, qh + q0 * ld, ld, bk, D, bq, 1, NULL);
    }
    /* dQ [bq, D] += (scale dS) k */
    if (dqh)
        ATT_GEMM(wide, dqh + q0 * ld, ld, ds, ATT_BK, 1, kh + k0 * ld, ld, bq, D, bk, 1, NULL);
}

/* mode 0: whole head (all key tiles, each with all its query tiles; dq, dk, dv);
 * mode 1: key tile `tile` (dk, dv); mode 2: query tile `tile` (dq). Pointers at column h*D
 * of row 0 of batch b, row stride ld. */
ATT_INLINE void att_bwd_body(float *dqh, float *dkh, float *dvh, const float *lseh, const float *qh,
                             const float *kh, const float *vh, const float *oh, const float *doh,
                             size_t ld, size_t Nq, size_t Nk, size_t D, float scale, int causal,
                             int mode, size_t tile, int wide)
{
    float kt[ATT_DCB * ATT_BK], vt[ATT_DCB * ATT_BK]; /* K^T, V^T [dc, ATT_BK] */
    float dkt[ATT_DCB * ATT_BK], dvt[ATT_DCB * ATT_BK]; /* dK^T, dV^T of a key tile */
    float dtile[ATT_BQ]; /* Delta of one query tile */
    float dall[ATT_DMAX]; /* Delta of all Nq rows, when Nq <= ATT_DMAX */
    int packed = D <= ATT_DCB;
    if (mode == 2) {
        size_t q0 = tile * ATT_BQ, bq = Nq - q0 < ATT_BQ ? Nq - q0 : ATT_BQ;
        size_t kend = causal ? (q0 + bq < Nk ? q0 + bq : Nk) : Nk;
        att_bwd_delta(dtile, oh, doh, ld, q0, bq, D);
        for (size_t k0 = 0; k0 < kend; k0 += ATT_BK) {
            /* the pair sees keys k0 .. k0+bk-1 of the whole tile, as in the other modes */
            size_t bk = Nk - k0 < ATT_BK ? Nk - k0 : ATT_BK;
            if (packed) {
                att_pack_t(kt, kh, ld, k0, bk, 0, D);
                att_pack_t(vt, vh, ld, k0, bk, 0, D);
            }
            att_bwd_pair(dqh, NULL, NULL, lseh, qh, kh, vh, doh, ld, q0, bq, k0, bk, D, scale,
                         causal, dtile, kt, vt, NULL, NULL, 0, wide);
        }
        return;
    }
    size_t kt0 = mode == 1 ? tile : 0, kt1 = mode == 1 ? tile + 1 : (Nk + ATT_BK - 1) / ATT_BK;
    /* Delta once per call rather than once per pair (out is read nowhere else) */
    int keep = Nq <= ATT_DMAX;
    if (keep) att_bwd_delta(dall, oh, doh, ld, 0, Nq, D);
    for (size_t t = kt0; t < kt1; t++) {
        size_t k0 = t * ATT_BK, bk = Nk - k0 < ATT_BK ? Nk - k0 : ATT_BK;
        if (packed) {
            att_pack_t(kt, kh, ld, k0, bk, 0, D);
            att_pack_t(vt, vh, ld, k0, bk, 0, D);
        }
        /* causal (Nq == Nk): query tiles ending at or before k0 see none of these keys */
        size_t qstart = causal ? k0 / ATT_BQ * ATT_BQ : 0;
        for (size_t q0 = qstart; q0 < Nq; q0 += ATT_BQ) {
            size_t bq = Nq - q0 < ATT_BQ ? Nq - q0 : ATT_BQ;
            if (!keep) att_bwd_delta(dtile, oh, doh, ld, q0, bq, D);
            att_bwd_pair(mode == 0 ? dqh : NULL, dkh, dvh, lseh, qh, kh, vh, doh, ld, q0, bq,
                         k0, bk, D, scale, causal, keep ? dall + q0 : dtile, kt, vt, dkt, dvt,
                         q0 == qstart, wide);
        }
        if (packed)
            for (size_t j = 0; j < bk; j++) {
                float *gk = dkh + (k0 + j) * ld, *gv = dvh + (k0 + j) * ld;
                for (size_t d = 0; d < D; d++) {
                    gk[d] += dkt[d * ATT_BK + j];
                    gv[d] += dvt[d * ATT_BK + j];
                }
            }
    }
}

typedef void (*AttBwdFn)(float *, float *, float *, const float *, const float *, const float *,
                         const float *, const float *, const float *, size_t, size_t, size_t,
                         size_t, float, int, int, size_t);

/* One clone of the backward per ISA, as ATT_FWD_CLONE. */
#define ATT_BWD_CLONE(sfx, attr, wide)                                                         \
    attr static void att_bwd_##sfx(float *dqh, float *dkh, float *dvh, const float *lseh,      \
                                   const float *qh, const float *kh, const float *vh,          \
                                   const float *oh, const float *doh, size_t ld, size_t Nq,    \
                                   size_t Nk, size_t D, float scale, int causal, int mode,     \
                                   size_t tile)                                                \
    {                                                                                          \
        att_bwd_body(dqh, dkh, dvh, lseh, qh, kh, vh, oh, doh, ld, Nq, Nk, D, scale, causal,   \
                     mode, tile, wide);                                                        \
    }
ATT_BWD_CLONE(generic, , 0)
#ifdef ATT_HAVE_AVX2
ATT_BWD_CLONE(avx2, ATT_AVX2, 1)
#endif
#ifdef ATT_HAVE_AVX512
ATT_BWD_CLONE(avx512, ATT_AVX512, 2)
#endif

void attention_backward(float *dq, float *dk, float *dv, const float *out, const float *lse,
                        const float *dout, const float *q, const float *k, const float *v, size_t B,
                        size_t Nq, size_t Nk, size_t H, size_t D, float scale, int causal)
{
    if (B == 0 || Nq == 0 || Nk == 0 || H == 0 || D == 0) return;
    AttBwdFn fn = att_bwd_generic;
#ifdef ATT_HAVE_AVX2
    if (att_have_avx2()) fn = att_bwd_avx2;
#endif
#ifdef ATT_HAVE_AVX512
    if (att_have_avx512()) fn = att_bwd_avx512;
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
