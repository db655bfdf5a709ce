/* File utilities shared by every module: atomic writes. */
#ifndef QT_FILEIO_H
#define QT_FILEIO_H

#include <stddef.h>

#include "error.h"

/* Writes data to path through a temporary file in the same folder, fsync and rename, so a
 * crash or a full disk never leaves a truncated file under the final name. */
int qt_write_file_atomic(const char *path, const void *data, size_t len, struct qt_error *e);

#endif
