/* Shared helpers of the libFuzzer targets: each process writes its inputs to files in its own
 * temporary folder (the loaders take paths), reused across runs.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#ifndef DB_FUZZ_UTIL_H
#define DB_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The folder of this process (created on first use, removed at exit). */
static char fuzz_dir[256]; /* one per target: each includes this header once */

static inline void fuzz_dir_remove(void)
{
    char cmd[300];
    if (!fuzz_dir[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir);
    if (system(cmd) != 0) fprintf(stderr, "fuzz: could not remove %s\n", fuzz_dir);
}

static inline const char *fuzz_tmpdir(void)
{
    if (!fuzz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/dbfuzz-XXXXXX", t && t[0] ? t : "/tmp");
        if (!mkdtemp(fuzz_dir)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir;
}

/* Writes data[n] to NAME in the process folder; returns the path (static buffer per slot). */
static inline const char *fuzz_write(int slot, const char *name, const uint8_t *data, size_t n)
{
    static char paths[4][512];
    snprintf(paths[slot], sizeof paths[slot], "%s/%s", fuzz_tmpdir(), name);
    FILE *fp = fopen(paths[slot], "wb");
    if (!fp || (n && fwrite(data, 1, n, fp) != n) || fclose(fp) != 0) {
        perror("fuzz: write");
        abort();
    }
    return paths[slot];
}

/* A NUL-terminated copy of data[n] (malloc'ed): libFuzzer's buffer is not terminated. */
static inline char *fuzz_strdup(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

/* Checks that an error status came with a one-line message naming something. */
static inline void fuzz_check_error(int status, const char *msg)
{
    if (status != 0 && (!msg[0] || strchr(msg, '\n'))) {
        fprintf(stderr, "fuzz: status %d with a bad message \"%s\"\n", status, msg);
        abort();
    }
}

#endif
