/* Training checkpoints: the training counters and RNG state as key=value lines, and named
 * float32 tensors (parameters, BatchNorm statistics, optimizer buffers), with a CRC so a
 * damaged file is refused. The graph itself comes from the model the run started from. */
#ifndef QT_CHECKPOINT_H
#define QT_CHECKPOINT_H

#include <stdint.h>

#include "../util/error.h"

struct qt_ckpt_tensor {
    char *name;
    int64_t numel;
    float *data;
};

struct qt_ckpt {
    char *header; /* "key=value\n" lines */
    struct qt_ckpt_tensor *t;
    int n;
};

void qt_ckpt_init(struct qt_ckpt *c);
void qt_ckpt_free(struct qt_ckpt *c);
/* Appends "key=value\n" to the header. */
void qt_ckpt_set(struct qt_ckpt *c, const char *key, const char *value);
/* The value of key, copied into out; -1 when absent. */
int qt_ckpt_get(const struct qt_ckpt *c, const char *key, char *out, int outlen);
/* Adds a tensor (data copied). */
void qt_ckpt_add(struct qt_ckpt *c, const char *name, const float *data, int64_t numel);
const struct qt_ckpt_tensor *qt_ckpt_find(const struct qt_ckpt *c, const char *name);

int qt_ckpt_save(const struct qt_ckpt *c, const char *path, struct qt_error *e);
/* On failure c holds nothing (qt_ckpt_free on it is harmless). */
int qt_ckpt_load(struct qt_ckpt *c, const char *path, struct qt_error *e);

#endif
