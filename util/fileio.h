/* File utilities shared by every module: atomic writes. */
#ifndef QT_FILEIO_H
#define QT_FILEIO_H

#include <stddef.h>

#include "error.h"

/* Writes data to path through a temporary file in the same folder ("PATH.tmp.PID"): written in
 * full, fsynced, renamed over path, and the folder fsynced. A crash, a kill or a full disk never
 * leaves a truncated file under the final name; on failure the temporary file is removed and the
 * message names path and the cause. A process killed mid-write can leave its temporary file. */
int qt_write_file_atomic(const char *path, const void *data, size_t len, struct qt_error *e);

#endif
