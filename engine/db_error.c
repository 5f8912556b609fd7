/* Status and one-line error messages. SPDX-License-Identifier: GPL-3.0-or-later */
#include "dreambooth.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

DbStatus db_fail(DbError *err, DbStatus st, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        err->status = st;
    }
    return st;
}

void db_error_clear(DbError *err)
{
    if (err) {
        err->status = DB_OK;
        err->msg[0] = '\0';
    }
}

const char *db_status_name(DbStatus st)
{
    switch (st) {
    case DB_OK: return "ok";
    case DB_ERR_IO: return "I/O error";
    case DB_ERR_FORMAT: return "malformed file";
    case DB_ERR_MODEL: return "unexpected model";
    case DB_ERR_ARG: return "invalid argument";
    case DB_ERR_NOMEM: return "out of memory";
    case DB_ERR_UNSUPPORTED: return "unsupported";
    case DB_ERR_CANCELLED: return "cancelled";
    }
    return "unknown";
}
