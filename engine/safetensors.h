/* safetensors: strict mmap reader and atomic writer (rules in shared/docs/reliability.md).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_SAFETENSORS_H
#define DB_SAFETENSORS_H

#include "dreambooth.h"
#include "tensor.h"

#define SAFETENSORS_MAX_HEADER 100000000ull

typedef struct {
    char *name;
    DbTensor t; /* t.data points into the mapping */
} SafetensorsEntry;

typedef struct {
    char *path;
    void *map;            /* whole file, read-only, MAP_PRIVATE */
    size_t map_size;
    size_t data_start;    /* 8 + header length */
    int n_tensors;
    SafetensorsEntry *tensors; /* in file order of their offsets */
    int n_meta;
    char **meta_keys, **meta_values;
    void *index;          /* GHashTable name -> entry, private */
} SafetensorsFile;

/* Opens and validates path. On failure *out is NULL and err says "PATH: problem". */
DbStatus safetensors_open(SafetensorsFile **out, const char *path, DbError *err);
void safetensors_close(SafetensorsFile *f);
const SafetensorsEntry *safetensors_find(const SafetensorsFile *f, const char *name);
const char *safetensors_meta(const SafetensorsFile *f, const char *key); /* NULL when absent */

/* 1 when the first bytes look like a safetensors header (8-byte length + '{'). */
int safetensors_sniff(const unsigned char *head, size_t n);

/* Writer: collects tensors (data is copied) and metadata, then writes atomically
 * (temp file in the same folder, fsync, rename, fsync the folder). */
typedef struct SafetensorsWriter SafetensorsWriter;
SafetensorsWriter *safetensors_writer_new(void);
void safetensors_writer_free(SafetensorsWriter *w);
DbStatus safetensors_writer_add(SafetensorsWriter *w, const char *name, DbDtype dtype, int ndim,
                                const int64_t *shape, const void *data, DbError *err);
void safetensors_writer_meta(SafetensorsWriter *w, const char *key, const char *value);
DbStatus safetensors_writer_save(SafetensorsWriter *w, const char *path, DbError *err);

/* Streaming writer (safetensors_stream.c), for files larger than memory: every tensor is
 * declared first (the header is written from the declarations, in declaration order), then the
 * data of all tensors is appended in that order, in pieces of any size; finish checks the
 * byte count, fsyncs and renames the temp file over path (atomic like the writer). Freeing an
 * unfinished stream removes its temp file. */
typedef struct SafetensorsStream SafetensorsStream;
SafetensorsStream *safetensors_stream_new(void);
void safetensors_stream_free(SafetensorsStream *s);
DbStatus safetensors_stream_declare(SafetensorsStream *s, const char *name, DbDtype dtype,
                                    int ndim, const int64_t *shape, DbError *err);
void safetensors_stream_meta(SafetensorsStream *s, const char *key, const char *value);
/* Data bytes declared so far. */
uint64_t safetensors_stream_data_size(const SafetensorsStream *s);
DbStatus safetensors_stream_begin(SafetensorsStream *s, const char *path, DbError *err);
DbStatus safetensors_stream_write(SafetensorsStream *s, const void *data, size_t nbytes,
                                  DbError *err);
DbStatus safetensors_stream_finish(SafetensorsStream *s, DbError *err);

#endif
