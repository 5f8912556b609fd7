/* A random generator that reproduces PyTorch's CPU generator bit for bit:
 *   torch.randn(shape, generator=torch.Generator().manual_seed(S))   (float32)
 *   torch.rand(shape, generator=...)                                   (float32)
 * The state is explicit: the caller owns a DbRng and passes it to every draw, as diffusers
 * passes one torch.Generator through prepare_latents and every ancestral step.
 *
 * Sources (torch 1.13): ATen/core/MT19937RNGEngine.h (mt19937, seed & 0xffffffff),
 * ATen/CPUGeneratorImpl.cpp (random64 = first draw << 32 | second draw; manual_seed clears
 * the cached normals), ATen/core/TransformationHelper.h uniform_real (24 or 53 low bits
 * times 2^-24 or 2^-53), ATen/native/cpu/DistributionTemplates.h normal_kernel:
 *   numel >= 16: normal_fill: numel float uniforms, then Box-Muller in blocks of 16
 *     (u1 = 1 - data[j], u2 = data[j+8], j < 8); when numel % 16 != 0 the last 16 are
 *     redrawn and transformed again. On x86-64 torch runs normal_fill_AVX2, whose log and
 *     sincos are the Cephes polynomials of avx_mathfun.h (RNG_FILL_AVX2, the default);
 *     other CPUs use std::log/cos/sin on floats (RNG_FILL_SCALAR).
 *   numel < 16: one at::normal_distribution<double> per element: two 53-bit uniforms,
 *     r = sqrt(-2 log(1 - u2)), theta = 2 pi u1, returns r cos(theta) and caches
 *     r sin(theta) in the generator for the next draw (even across calls).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_RNG_H
#define DB_RNG_H

#include <stddef.h>
#include <stdint.h>

#define RNG_MT_N 624

typedef enum {
    RNG_FILL_AVX2 = 0, /* torch on x86-64 with AVX2 (avx_mathfun.h log/sincos) */
    RNG_FILL_SCALAR    /* torch without AVX2 (libm logf/cosf/sinf) */
} RngFill;

typedef struct {
    uint32_t state[RNG_MT_N];
    int next;                /* index of the next state word */
    int left;                /* words left before the next twist (+1, as torch) */
    uint64_t seed;
    int has_cached_normal;   /* at::normal_distribution<double>'s cached sin sample */
    double cached_normal;
    RngFill fill;
} DbRng;

/* torch.Generator().manual_seed(seed): mt19937 seeded with the low 32 bits, no cache. */
void rng_seed(DbRng *r, uint64_t seed);
/* Which torch normal_fill to reproduce (default after rng_seed: RNG_FILL_AVX2). */
void rng_set_fill(DbRng *r, RngFill fill);

uint32_t rng_u32(DbRng *r);
uint64_t rng_u64(DbRng *r);   /* hi = first 32-bit draw, lo = second */

/* torch.rand(n) float32: out [n] in [0, 1). */
void rng_uniform(DbRng *r, float *out, size_t n);

/* torch.randn(shape) float32 for a contiguous tensor of n = numel elements: out [n]. */
void rng_randn(DbRng *r, float *out, size_t n);

#endif
