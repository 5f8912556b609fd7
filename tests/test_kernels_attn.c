/* attention_forward against attention_forward_ref on odd shapes, large scores, causal and
 * cross attention; prints the time of a [2, 4096, 8*40] self-attention.
 * Tolerances: out: max |fast - ref| / max |ref| <= 1e-5 per case;
 *             lse: |fast - ref| <= 1e-5 * max(1, |ref|) per element.
 * Exit status is the verdict.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "kernels.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef DB_KERNELS_NO_AVX2
static const int baseline_build = 1;
#else
static const int baseline_build = 0;
#endif

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float rand_uniform(float lo, float hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static float *rand_array(size_t n, float a)
{
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = rand_uniform(-a, a);
    return x;
}

static int check_case(const char *name, size_t B, size_t Nq, size_t Nk, size_t H, size_t D, float a,
                      float scale, int causal)
{
    size_t nq = B * Nq * H * D, nk = B * Nk * H * D, nl = B * H * Nq;
    float *q = rand_array(nq, a), *k = rand_array(nk, a), *v = rand_array(nk, 1.0f);
    float *out = rand_array(nq, 1.0f), *ref = rand_array(nq, 1.0f);
    float *lse = rand_array(nl, 1.0f), *lse_ref = rand_array(nl, 1.0f);

    attention_forward(out, lse, q, k, v, B, Nq, Nk, H, D, scale, causal);
    attention_forward_ref(ref, lse_ref, q, k, v, B, Nq, Nk, H, D, scale, causal);

    double maxref = 0.0, maxdiff = 0.0, lse_err = 0.0;
    for (size_t i = 0; i < nq; i++) {
        maxref = fmax(maxref, fabs(ref[i]));
        double d = fabs((double)out[i] - ref[i]);
        maxdiff = isnan(out[i]) ? INFINITY : fmax(maxdiff, d);
    }
    for (size_t i = 0; i < nl; i++) {
        double e = fabs((double)lse[i] - lse_ref[i]) / fmax(1.0, fabs(lse_ref[i]));
        lse_err = isnan(lse[i]) ? INFINITY : fmax(lse_err, e);
    }
    /* lse with a NULL pointer must give the same out */
    attention_forward(ref, NULL, q, k, v, B, Nq, Nk, H, D, scale, causal);
    double nulldiff = 0.0;
    for (size_t i = 0; i < nq; i++)
        nulldiff = fmax(nulldiff, fabs((double)out[i] - ref[i]));

    double rel = maxref > 0.0 ? maxdiff / maxref : maxdiff;
    int ok = rel <= 1e-5 && lse_err <= 1e-5 && nulldiff == 0.0;
    printf("%-34s B=%zu Nq=%zu Nk=%zu H=%zu D=%zu causal=%d: out rel %.2e, lse rel %.2e %s\n", name,
           B, Nq, Nk, H, D, causal, rel, lse_err, ok ? "ok" : "FAIL");
    free(q);
    free(k);
    free(v);
    free(out);
    free(ref);
    free(lse);
    free(lse_ref);
    return ok;
}

/* Largest |scale * q . k| over all pairs, to show the large-value case reaches +-80. */
static double max_abs_score(size_t Nq, size_t Nk, size_t D, float a, float scale)
{
    uint64_t saved = rng_state;
    float *q = rand_array(Nq * D, a), *k = rand_array(Nk * D, a);
    rng_state = saved;
    double mx = 0.0;
    for (size_t i = 0; i < Nq; i++)
        for (size_t j = 0; j < Nk; j++) {
            double s = 0.0;
            for (size_t d = 0; d < D; d++)
                s += (double)q[i * D + d] * k[j * D + d];
            mx = fmax(mx, fabs(s * scale));
        }
    free(q);
    free(k);
    return mx;
}

static void time_self_attention(void)
{
    size_t B = 2, N = 4096, H = 8, D = 40;
    float *q = rand_array(B * N * H * D, 1.0f), *k = rand_array(B * N * H * D, 1.0f);
    float *v = rand_array(B * N * H * D, 1.0f), *out = rand_array(B * N * H * D, 1.0f);
    float *lse = rand_array(B * H * N, 1.0f);
    float scale = 1.0f / sqrtf((float)D);
    attention_forward(out, lse, q, k, v, B, N, N, H, D, scale, 0); /* warm-up */
    double best = INFINITY;
    for (int r = 0; r < 3; r++) {
        double t0 = omp_get_wtime();
        attention_forward(out, lse, q, k, v, B, N, N, H, D, scale, 0);
        best = fmin(best, omp_get_wtime() - t0);
    }
    double flop = 4.0 * (double)B * H * N * N * D;
    printf("timing: attention [2, 4096, 8*40] self, %d threads: %.3f s (best of 3), "
           "%.1f GFLOP/s (QK^T + PV)\n",
           omp_get_max_threads(), best, flop / best * 1e-9);
    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
}

int main(void)
{
    int ok = 1;
    ok &= check_case("odd shapes, cross", 2, 7, 13, 3, 5, 1.0f, 0.4472f, 0);
    ok &= check_case("odd shapes, causal", 2, 7, 7, 3, 5, 1.0f, 0.4472f, 1);
    ok &= check_case("one query, one key", 1, 1, 1, 1, 1, 1.0f, 1.0f, 0);
    ok &= check_case("cross attention Nk=77 (text)", 2, 70, 77, 2, 40, 1.0f, 0.1581f, 0);
    ok &= check_case("cross attention Nk=77, D=64", 1, 37, 77, 5, 64, 1.0f, 0.125f, 0);
    ok &= check_case("causal text encoder shape", 1, 77, 77, 12, 64, 1.0f, 0.125f, 1);
    ok &= check_case("causal, several tiles", 1, 150, 150, 2, 40, 1.0f, 0.1581f, 1);
    ok &= check_case("self, D=80, tile edges", 1, 129, 129, 2, 80, 1.0f, 0.1118f, 0);
    ok &= check_case("self, D=160", 1, 65, 65, 1, 160, 1.0f, 0.0791f, 0);
    ok &= check_case("self, D=512 (VAE mid block)", 1, 40, 40, 1, 512, 1.0f, 0.0442f, 0);
    double smax = max_abs_score(33, 70, 16, 4.0f, 1.0f);
    printf("large-value case: max |score| = %.1f\n", smax);
    if (smax < 60.0) {
        printf("large-value case does not reach large scores: FAIL\n");
        ok = 0;
    }
    ok &= check_case("large scores", 1, 33, 70, 1, 16, 4.0f, 1.0f, 0);
    ok &= check_case("large scores, causal", 1, 70, 70, 2, 16, 4.0f, 1.0f, 1);
    ok &= check_case("large scores, negative scale", 1, 33, 70, 1, 16, 4.0f, -1.0f, 0);
    if (!baseline_build) time_self_attention(); /* the baseline-ISA build only checks correctness */
    printf("%s\n", ok ? "all attention tests passed" : "attention tests FAILED");
    return ok ? 0 : 1;
}
