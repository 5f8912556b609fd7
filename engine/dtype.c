/* safetensors dtypes: names, sizes and exact conversions to and from f32.
 * f16 is IEEE binary16 (1-5-10, bias 15); bf16 is the top half of an IEEE binary32;
 * F8_E5M2 is 1-5-2 (bias 15, with inf); F8_E4M3 is the "fn" variant 1-4-3 (bias 7, no inf,
 * S.1111.111 is NaN, max 448). All narrowing conversions round to nearest, ties to even.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [DB_DTYPE_BOOL] = {"BOOL", 1},    [DB_DTYPE_U8] = {"U8", 1},
    [DB_DTYPE_I8] = {"I8", 1},        [DB_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
    [DB_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [DB_DTYPE_I16] = {"I16", 2},
    [DB_DTYPE_U16] = {"U16", 2},      [DB_DTYPE_F16] = {"F16", 2},
    [DB_DTYPE_BF16] = {"BF16", 2},    [DB_DTYPE_I32] = {"I32", 4},
    [DB_DTYPE_U32] = {"U32", 4},      [DB_DTYPE_F32] = {"F32", 4},
    [DB_DTYPE_F64] = {"F64", 8},      [DB_DTYPE_I64] = {"I64", 8},
    [DB_DTYPE_U64] = {"U64", 8},
};
_Static_assert(sizeof dtype_table / sizeof dtype_table[0] == DB_DTYPE_COUNT,
               "one dtype_table row per DbDtype");

/* Conversions above this many elements run in an OpenMP parallel loop. */
#define DTYPE_PARALLEL_MIN 65536

const char *dtype_name(DbDtype dt)
{
    return (unsigned)dt < DB_DTYPE_COUNT ? dtype_table[dt].name : "?";
}

int dtype_from_name(const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < DB_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) return i;
    return -1;
}

size_t dtype_size(DbDtype dt)
{
    return (unsigned)dt < DB_DTYPE_COUNT ? dtype_table[dt].size : 0;
}

int dtype_is_float_weight(DbDtype dt)
{
    return dt == DB_DTYPE_F32 || dt == DB_DTYPE_F16 || dt == DB_DTYPE_BF16;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Move the 15 exponent+mantissa bits up by 13 and rebias 15 -> 127 (add 112 to the exponent).
 * inf/nan get another 112 so their exponent becomes 255. A subnormal m * 2^-24 is built as
 * (1 + m/1024) * 2^-14 minus 2^-14, both exact in f32, so the subtraction is exact. */
float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t exp = em & 0x7c00u;
    uint32_t o = (em << 13) + (112u << 23);
    float sub = bits_f32(o + (1u << 23)) - bits_f32(113u << 23);
    uint32_t is_inf = 0u - (uint32_t)(exp == 0x7c00u), is_sub = 0u - (uint32_t)(exp == 0);
    /* branch-free selects so the conversion loops vectorise */
    uint32_t mag = ((o + (is_inf & (112u << 23))) & ~is_sub) | (f32_bits(sub) & is_sub);
    return bits_f32(sign | mag);
}

/* Normal range: rebias 127 -> 15 and round the 13 dropped bits to nearest even by adding
 * 0xfff plus the lowest kept bit (a carry into the exponent is the correct rounding, up to
 * 0x7c00 = inf). Below 2^-14: adding 0.5f makes the FPU round at 2^-24 (the ulp of 0.5 in f32),
 * and the low bits of the sum are the f16 subnormal mantissa. NaN stays NaN (quiet bit set). */
uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7fffffffu;
    uint32_t normal = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    uint32_t sub = f32_bits(bits_f32(a) + 0.5f) - f32_bits(0.5f);
    uint32_t is_nan = 0u - (uint32_t)(a > 0x7f800000u);
    uint32_t big = 0x7c00u | (is_nan & (0x200u | ((a >> 13) & 0x3ffu)));
    uint32_t is_big = 0u - (uint32_t)(a >= 0x47800000u), is_sub = 0u - (uint32_t)(a < 0x38800000u);
    uint32_t h = (big & is_big) | (sub & is_sub) | (normal & ~(is_big | is_sub));
    return (uint16_t)(sign | h);
}

float bf16_to_f32(uint16_t b)
{
    return bits_f32((uint32_t)b << 16);
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x40u;
    uint32_t is_nan = 0u - (uint32_t)((x & 0x7fffffffu) > 0x7f800000u);
    return (uint16_t)((nan & is_nan) | (rounded & ~is_nan));
}

/* 8-bit floats: sign, ebits exponent (bias), mbits mantissa. */
static float f8_to_f32(uint8_t v, int ebits, int mbits, int bias, int has_inf)
{
    int sign = v >> 7;
    int e = (v >> mbits) & ((1 << ebits) - 1);
    int m = v & ((1 << mbits) - 1);
    int emax = (1 << ebits) - 1;
    float r;
    if (has_inf && e == emax)
        r = m ? NAN : INFINITY;
    else if (!has_inf && e == emax && m == (1 << mbits) - 1)
        r = NAN;
    else if (e == 0)
        r = ldexpf((float)m, 1 - bias - mbits);
    else
        r = ldexpf((float)(m | (1 << mbits)), e - bias - mbits);
    return sign ? -r : r;
}

/* Round-to-nearest-even into an 8-bit float; out of range gives inf (E5M2) or NaN (E4M3fn),
 * as torch does. Every step is exact in double, nearbyint rounds ties to even. */
static uint8_t f32_to_f8(float f, int ebits, int mbits, int bias, int has_inf)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    int emax = (1 << ebits) - 1;
    uint8_t nan = (uint8_t)(sign | (emax << mbits) | ((1 << mbits) - 1));
    if (isnan(f)) return nan;
    double a = fabs((double)f);
    int top = has_inf ? emax - 1 : emax; /* largest finite exponent field */
    int topm = has_inf ? (1 << mbits) - 1 : (1 << mbits) - 2;
    double maxv = ldexp((double)((1 << mbits) | topm), top - bias - mbits);
    double halfulp = ldexp(0.5, top - bias - mbits);
    /* A tie at the top goes to the even neighbour: inf for E5M2 (max 57344 has an odd mantissa),
     * 448 for E4M3fn (its odd neighbour 480 would be the NaN pattern). */
    if (has_inf ? a >= maxv + halfulp : a > maxv + halfulp)
        return has_inf ? (uint8_t)(sign | (emax << mbits)) : nan;
    int e2;
    frexp(a, &e2); /* a = frac * 2^e2, frac in [0.5,1) */
    int e = e2 - 1 + bias;        /* biased exponent of a when normal */
    if (e < 1) e = 1;             /* subnormal: fixed scale 2^(1-bias-mbits) */
    double q = nearbyint(ldexp(a, -(e - bias - mbits)));
    /* q in [0, 2^(mbits+1)]; a carry to 2^(mbits+1) moves to the next exponent */
    uint32_t qi = (uint32_t)q;
    uint32_t enc;
    if (qi >= (2u << mbits)) enc = (uint32_t)(e + 1) << mbits;
    else if (qi >= (1u << mbits)) enc = ((uint32_t)e << mbits) | (qi & ((1u << mbits) - 1));
    else enc = qi; /* subnormal (or zero), e was forced to 1 */
    return (uint8_t)(sign | enc);
}

static double round_sat(float v, double lo, double hi)
{
    if (isnan(v)) return 0.0;
    double r = nearbyint((double)v);
    return r < lo ? lo : r > hi ? hi : r;
}

void dtype_to_f32(float *dst, const void *src, DbDtype dt, size_t n)
{
    /* dst [n], src [n] of dtype dt */
    long long nn = (long long)n;
    switch (dt) {
    case DB_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return;
    case DB_DTYPE_F16: {
        const unsigned char *s = src; /* may be unaligned inside a mapping */
#pragma omp parallel for schedule(static) if (n > DTYPE_PARALLEL_MIN)
        for (long long i = 0; i < nn; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        return;
    }
    case DB_DTYPE_BF16: {
        const unsigned char *s = src;
#pragma omp parallel for schedule(static) if (n > DTYPE_PARALLEL_MIN)
        for (long long i = 0; i < nn; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
        return;
    }
    default:
        break;
    }
    /* Rare dtypes (ids, masks, f8, f64): plain serial loops. */
    const unsigned char *b = src;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = b + i * dtype_size(dt);
        float v = 0.0f;
        switch (dt) {
        case DB_DTYPE_BOOL: v = p[0] ? 1.0f : 0.0f; break;
        case DB_DTYPE_U8: v = p[0]; break;
        case DB_DTYPE_I8: v = (int8_t)p[0]; break;
        case DB_DTYPE_F8_E5M2: v = f8_to_f32(p[0], 5, 2, 15, 1); break;
        case DB_DTYPE_F8_E4M3: v = f8_to_f32(p[0], 4, 3, 7, 0); break;
        case DB_DTYPE_I16: { int16_t t; memcpy(&t, p, 2); v = t; break; }
        case DB_DTYPE_U16: { uint16_t t; memcpy(&t, p, 2); v = t; break; }
        case DB_DTYPE_I32: { int32_t t; memcpy(&t, p, 4); v = (float)t; break; }
        case DB_DTYPE_U32: { uint32_t t; memcpy(&t, p, 4); v = (float)t; break; }
        case DB_DTYPE_F64: { double t; memcpy(&t, p, 8); v = (float)t; break; }
        case DB_DTYPE_I64: { int64_t t; memcpy(&t, p, 8); v = (float)t; break; }
        case DB_DTYPE_U64: { uint64_t t; memcpy(&t, p, 8); v = (float)t; break; }
        default: break;
        }
        dst[i] = v;
    }
}

void dtype_from_f32(void *dst, DbDtype dt, const float *src, size_t n)
{
    /* dst [n] of dtype dt, src [n] */
    long long nn = (long long)n;
    switch (dt) {
    case DB_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return;
    case DB_DTYPE_F16: {
        unsigned char *d = dst;
#pragma omp parallel for schedule(static) if (n > DTYPE_PARALLEL_MIN)
        for (long long i = 0; i < nn; i++) {
            uint16_t h = f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    }
    case DB_DTYPE_BF16: {
        unsigned char *d = dst;
#pragma omp parallel for schedule(static) if (n > DTYPE_PARALLEL_MIN)
        for (long long i = 0; i < nn; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    }
    default:
        break;
    }
    /* Integers: round to nearest even, saturate, NaN -> 0. BOOL: nonzero -> 1. */
    unsigned char *b = dst;
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = b + i * dtype_size(dt);
        float v = src[i];
        switch (dt) {
        case DB_DTYPE_BOOL: p[0] = v != 0.0f; break;
        case DB_DTYPE_U8: p[0] = (uint8_t)round_sat(v, 0, 255); break;
        case DB_DTYPE_I8: { int8_t t = (int8_t)round_sat(v, -128, 127); memcpy(p, &t, 1); break; }
        case DB_DTYPE_F8_E5M2: p[0] = f32_to_f8(v, 5, 2, 15, 1); break;
        case DB_DTYPE_F8_E4M3: p[0] = f32_to_f8(v, 4, 3, 7, 0); break;
        case DB_DTYPE_I16: { int16_t t = (int16_t)round_sat(v, -32768, 32767); memcpy(p, &t, 2); break; }
        case DB_DTYPE_U16: { uint16_t t = (uint16_t)round_sat(v, 0, 65535); memcpy(p, &t, 2); break; }
        case DB_DTYPE_I32: {
            int32_t t = (int32_t)round_sat(v, -2147483648.0, 2147483647.0);
            memcpy(p, &t, 4);
            break;
        }
        case DB_DTYPE_U32: { uint32_t t = (uint32_t)round_sat(v, 0, 4294967295.0); memcpy(p, &t, 4); break; }
        case DB_DTYPE_F64: { double t = v; memcpy(p, &t, 8); break; }
        case DB_DTYPE_I64: {
            /* 2^63 is not an int64: the largest float below it is 2^63 - 2^39 */
            double r = round_sat(v, -9223372036854775808.0, 9223371487098961920.0);
            int64_t t = (int64_t)r;
            memcpy(p, &t, 8);
            break;
        }
        case DB_DTYPE_U64: {
            double r = round_sat(v, 0, 18446742974197923840.0);
            uint64_t t = (uint64_t)r;
            memcpy(p, &t, 8);
            break;
        }
        default: break;
        }
    }
}

const char *tensor_shape_str(const int64_t *shape, int ndim, char *buf, size_t bufsize)
{
    if (!buf || bufsize == 0) return buf;
    size_t len = 0;
    buf[0] = '\0';
    int w = snprintf(buf, bufsize, "[");
    len = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < ndim && len < bufsize; i++) {
        w = snprintf(buf + len, bufsize - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (w < 0) break;
        len += (size_t)w;
    }
    if (len < bufsize) snprintf(buf + len, bufsize - len, "]");
    return buf;
}
