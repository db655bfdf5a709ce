/* NumPy .npy files <-> tensors: the reader behind `qtune run --input` (float32 or float64,
 * little-endian, C order; read as float32) and the writer of its output. */
#ifndef QT_NPY_H
#define QT_NPY_H

#include <stddef.h>

#include "../graph/graph.h"

/* Parses a whole .npy file held in memory; `what` names it in messages. Returns a float32
 * tensor, or NULL with e filled. */
struct qt_tensor *qt_npy_parse(const void *buf, size_t len, const char *what, struct qt_error *e);
/* Reads and parses the .npy file at path. */
struct qt_tensor *qt_npy_read(const char *path, struct qt_error *e);
/* Refuses a float32 tensor holding NaN or Inf, naming `what` and the first such element (an
 * input of a model must be numbers). */
int qt_npy_check_finite(const struct qt_tensor *t, const char *what, struct qt_error *e);
/* Writes t (any dtype, converted to float32) as a .npy file. */
int qt_npy_write(const char *path, const struct qt_tensor *t, struct qt_error *e);

#endif
