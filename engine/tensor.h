/* Tensor views for loading and bookkeeping only; kernels take raw float pointers.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_TENSOR_H
#define DB_TENSOR_H

#include <stddef.h>
#include <stdint.h>

/* The safetensors dtypes. Weights must be F32, F16 or BF16; ids I64 or I32. */
typedef enum {
    DB_DTYPE_BOOL, DB_DTYPE_U8, DB_DTYPE_I8, DB_DTYPE_F8_E5M2, DB_DTYPE_F8_E4M3,
    DB_DTYPE_I16, DB_DTYPE_U16, DB_DTYPE_F16, DB_DTYPE_BF16, DB_DTYPE_I32,
    DB_DTYPE_U32, DB_DTYPE_F32, DB_DTYPE_F64, DB_DTYPE_I64, DB_DTYPE_U64,
    DB_DTYPE_COUNT
} DbDtype;

#define DB_MAX_DIMS 8

typedef struct {
    DbDtype dtype;
    int ndim;
    int64_t shape[DB_MAX_DIMS];
    size_t nelem;
    size_t nbytes;
    const void *data; /* into an mmap or an owned buffer; never freed through the view */
} DbTensor;

const char *dtype_name(DbDtype dt);           /* "F32" ... */
int dtype_from_name(const char *name);        /* -1 when unknown */
size_t dtype_size(DbDtype dt);                /* bytes per element */
int dtype_is_float_weight(DbDtype dt);        /* F32, F16 or BF16 */

/* Widening conversions (exact). dst [n] */
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_f16(float f);                 /* round to nearest even */
uint16_t f32_to_bf16(float f);                /* round to nearest even */
/* dst [n] = src [n] widened to f32; src must be F32/F16/BF16. */
void dtype_to_f32(float *dst, const void *src, DbDtype dt, size_t n);
/* dst [n] (of dtype dt) = src [n] narrowed from f32. */
void dtype_from_f32(void *dst, DbDtype dt, const float *src, size_t n);

/* "[320, 4, 3, 3]" into buf. */
const char *tensor_shape_str(const int64_t *shape, int ndim, char *buf, size_t bufsize);

#endif
