/* The error status of every library function (util/error.h). */
#include "error.h"

#include <stdio.h>
#include <string.h>

int qt_err(struct qt_error *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int qt_err_prefix(struct qt_error *e, const char *fmt, ...)
{
    if (e) {
        char pre[QT_ERR_MSG], old[QT_ERR_MSG];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        memcpy(old, e->msg, sizeof old);
        size_t np = strlen(pre);
        if (np >= sizeof e->msg) np = sizeof e->msg - 1;
        memcpy(e->msg, pre, np);
        size_t no = strnlen(old, sizeof old - 1);
        if (no > sizeof e->msg - 1 - np) no = sizeof e->msg - 1 - np;
        memcpy(e->msg + np, old, no);
        e->msg[np + no] = 0;
    }
    return -1;
}
