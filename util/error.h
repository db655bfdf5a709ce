/* Error reporting shared by every qtune library module.
 * Library functions return 0 on success or -1 on failure and fill a struct qt_error
 * whose message names the file, node or tensor concerned. Nothing here prints or exits. */
#ifndef QT_ERROR_H
#define QT_ERROR_H

#include <stdarg.h>

#define QT_ERR_MSG 512

struct qt_error {
    char msg[QT_ERR_MSG];
};

/* Sets the message (printf-style) and returns -1 so callers can `return qt_err(e, ...)`. */
int qt_err(struct qt_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends context ("loading model.onnx: ") to an existing message; returns -1. */
int qt_err_prefix(struct qt_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
