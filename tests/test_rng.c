/* DbRng against PyTorch 1.13 (Debian, x86-64 AVX2 build): every expected value below was
 * printed by torch.randn / torch.rand with torch.Generator().manual_seed(S) (float.hex()),
 * and the 64-bit FNV-1a hashes cover every byte of whole tensors. Tolerance: bit for bit
 * (0 ulp) for every value. Exit status 1 on any mismatch.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fails;

static void expect_f32(const char *what, size_t i, float got, float want)
{
    if (memcmp(&got, &want, sizeof got) != 0) {
        printf("FAIL %s [%zu]: got %a, torch %a\n", what, i, (double)got, (double)want);
        fails++;
    }
}

static uint64_t fnv1a(const float *x, size_t n)
{
    const unsigned char *p = (const unsigned char *)x;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n * sizeof *x; i++) h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    return h;
}

static float *randn(uint64_t seed, size_t n)
{
    DbRng r = {0};
    rng_seed(&r, seed);
    float *x = malloc(n * sizeof *x);
    if (!x) exit(1);
    rng_randn(&r, x, n);
    return x;
}

/* torch.randn([n], generator=manual_seed(1234)) for n < 16 (scalar Box-Muller in double;
 * every n is a prefix of the 15) and n >= 16 (normal_fill; 17 and 33 redraw the last 16). */
static const float randn_1234_15[15] = {
    0x1.79e698p-5f, 0x1.9c0f7cp-2f, -0x1.02f392p+0f, 0x1.bbe142p-3f, -0x1.397bdcp-1f,
    0x1.01d944p-1f, 0x1.d90520p-3f, 0x1.62db08p-1f, -0x1.1143e6p-2f, 0x1.16d7f8p+1f,
    0x1.a25ab8p-4f, -0x1.0939d6p-2f, -0x1.3d3c6cp-3f, -0x1.5edeeap+0f, -0x1.0e2c4cp-3f,
};
static const float randn_1234_17[17] = {
    -0x1.c99968p-4f, -0x1.7a027ep-4f, -0x1.68eb3cp-1f, -0x1.9a3468p+0f, 0x1.280918p-2f,
    0x1.f5a0b4p-2f, -0x1.8a856ep-2f, -0x1.6c8fccp-1f, 0x1.46196ap-1f, -0x1.759dc6p+0f,
    0x1.c3e8e8p-3f, 0x1.f85302p-3f, -0x1.5326e0p+0f, 0x1.64daa2p-1f, -0x1.537bccp-1f,
    0x1.373bd8p+0f, -0x1.437fb8p+1f,
};
static const float randn_1234_33[33] = { /* the first 16 are also randn([16]) */
    -0x1.c99968p-4f, -0x1.fc821ep-2f, 0x1.4df996p-3f, -0x1.c36c94p-1f, 0x1.b98ce6p-5f,
    0x1.563514p-1f, -0x1.e8b712p-5f, -0x1.deb7c8p-2f, -0x1.b8d688p-3f, 0x1.c4969ep-1f,
    -0x1.844f38p-1f, -0x1.79b882p-2f, -0x1.5e9c6ep-2f, -0x1.66e7a0p+0f, 0x1.4857f2p-2f,
    -0x1.059874p+0f, 0x1.990096p-1f, 0x1.c30d56p-1f, -0x1.2dbbd8p+0f, -0x1.de3498p-1f,
    -0x1.229552p-1f, -0x1.1be192p-2f, -0x1.177994p+1f, 0x1.77a154p-2f, 0x1.888cdep-1f,
    0x1.00216ep-7f, -0x1.4164a4p-2f, -0x1.281dc6p+0f, 0x1.d74272p+0f, -0x1.047670p+0f,
    0x1.382026p+0f, 0x1.47f08ap-3f, -0x1.5f1462p-1f,
};

static void check_small_sizes(void)
{
    static const size_t sizes[] = {1, 7, 15, 16, 17, 33};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *x = randn(1234, n);
        const float *want = n < 16 ? randn_1234_15 : n == 17 ? randn_1234_17 : randn_1234_33;
        char what[64];
        snprintf(what, sizeof what, "randn([%zu]) seed 1234", n);
        for (size_t i = 0; i < n; i++) expect_f32(what, i, x[i], want[i]);
        free(x);
    }
}

static void check_latents(void)
{
    /* torch.randn([1,4,64,64], generator=manual_seed(42)): first 4, [12345], last 2, hash */
    float *x = randn(42, 16384);
    static const float first[4] = {0x1.ed4a52p+0f, 0x1.7cbea6p+0f, 0x1.cd2acep-1f, -0x1.0d81b6p+1f};
    for (size_t i = 0; i < 4; i++) expect_f32("randn([1,4,64,64]) seed 42", i, x[i], first[i]);
    expect_f32("randn([1,4,64,64]) seed 42", 12345, x[12345], -0x1.4790ecp-2f);
    expect_f32("randn([1,4,64,64]) seed 42", 16382, x[16382], 0x1.f2141ep-1f);
    expect_f32("randn([1,4,64,64]) seed 42", 16383, x[16383], -0x1.2c72a6p-2f);
    if (fnv1a(x, 16384) != UINT64_C(0xa6f589a085841b88)) {
        printf("FAIL randn([1,4,64,64]) seed 42: FNV-1a %016llx, torch a6f589a085841b88\n",
               (unsigned long long)fnv1a(x, 16384));
        fails++;
    }
    free(x);
    x = randn(0, 16384);
    expect_f32("randn([1,4,64,64]) seed 0", 0, x[0], -0x1.20370ap+0f);
    expect_f32("randn([1,4,64,64]) seed 0", 1, x[1], -0x1.270114p+0f);
    expect_f32("randn([1,4,64,64]) seed 0", 16383, x[16383], -0x1.140570p+0f);
    free(x);
    /* seeds above 2^32 keep the low 32 bits for mt19937 (and 768 x 48 latents) */
    x = randn((UINT64_C(1) << 32) + 7, 36864);
    expect_f32("randn([1,4,96,96]) seed 2^32+7", 0, x[0], -0x1.a3e8acp-1f);
    expect_f32("randn([1,4,96,96]) seed 2^32+7", 36863, x[36863], -0x1.3a2890p-1f);
    free(x);
    static const struct { uint64_t seed; size_t n; uint64_t hash; } hashes[] = {
        {1234, 2 * 4 * 96 * 64, UINT64_C(0x0854d855c5062bb0)},
        {7, 4 * 9 * 7, UINT64_C(0xea02734452765833)}, /* 252: not a multiple of 16 */
    };
    for (size_t k = 0; k < sizeof hashes / sizeof hashes[0]; k++) {
        x = randn(hashes[k].seed, hashes[k].n);
        if (fnv1a(x, hashes[k].n) != hashes[k].hash) {
            printf("FAIL randn(%zu) seed %llu: FNV-1a %016llx, torch %016llx\n", hashes[k].n,
                   (unsigned long long)hashes[k].seed, (unsigned long long)fnv1a(x, hashes[k].n),
                   (unsigned long long)hashes[k].hash);
            fails++;
        }
        free(x);
    }
}

static void check_state_across_calls(void)
{
    /* g = manual_seed(5); randn([1]) x 3: the second call returns the cached sin sample */
    static const float want[3] = {-0x1.f276a8p-2f, -0x1.35281ap-1f, -0x1.1dbecap-1f};
    DbRng r = {0};
    rng_seed(&r, 5);
    for (size_t i = 0; i < 3; i++) {
        float v;
        rng_randn(&r, &v, 1);
        expect_f32("randn([1]) x3 seed 5", i, v, want[i]);
    }
    /* manual_seed clears the cache: the first draw again */
    rng_seed(&r, 5);
    float v;
    rng_randn(&r, &v, 1);
    expect_f32("reseeded randn([1]) seed 5", 0, v, want[0]);
    /* torch.rand([5]) seed 9 */
    static const float u[5] = {0x1.4fc2fcp-1f, 0x1.354570p-2f, 0x1.eb69f8p-2f, 0x1.8e03eap-1f,
                               0x1.d5ff6cp-1f};
    float got[5];
    rng_seed(&r, 9);
    rng_uniform(&r, got, 5);
    for (size_t i = 0; i < 5; i++) expect_f32("rand([5]) seed 9", i, got[i], u[i]);
}

/* rng_seed must not depend on what the state held before (a stack variable's garbage once
 * switched the fill mode at random: ASLR made generate non-deterministic). */
static void check_seed_ignores_garbage(void)
{
    static DbRng a, b;
    static float x[64], y[64];
    memset(&a, 0x00, sizeof a);
    memset(&b, 0xff, sizeof b);
    b.fill = RNG_FILL_SCALAR; /* the garbage that used to select the other fill */
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    rng_randn(&a, x, 64);
    rng_randn(&b, y, 64);
    for (size_t i = 0; i < 64; i++) expect_f32("seed over garbage", i, y[i], x[i]);
}

int main(void)
{
    check_seed_ignores_garbage();
    check_small_sizes();
    check_latents();
    check_state_across_calls();
    if (fails) {
        printf("test_rng: %d mismatches\n", fails);
        return 1;
    }
    printf("test_rng: all values bit-identical to torch 1.13\n");
    return 0;
}
