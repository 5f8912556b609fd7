/* Thread control: OpenMP loops and OpenBLAS (OpenMP build) share one thread count.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "dreambooth.h"

#include <cblas.h>
#include <omp.h>

DbStatus db_set_threads(int n, DbError *err)
{
    if (n < 1 || n > 1024)
        return db_fail(err, DB_ERR_ARG, "threads must be between 1 and 1024, got %d", n);
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return DB_OK;
}
