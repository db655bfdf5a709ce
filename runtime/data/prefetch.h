/* Batch prefetch: the next batch is assembled by a thread of its own (decoded, augmented and
 * normalized by qt_dataset_batch_augmented) while the caller computes on the last one, in
 * two buffers used in turn. */
#ifndef QT_PREFETCH_H
#define QT_PREFETCH_H

#include <stdint.h>

#include "dataset.h"

struct qt_prefetch;

/* Two buffers of max_batch samples of ds; NULL with e set on failure. */
struct qt_prefetch *qt_prefetch_new(const struct qt_dataset *ds, int max_batch,
                                    const float *mean, const float *std,
                                    enum qt_image_layout layout, struct qt_error *e);
/* Starts assembling samples idx[0..count) (count <= max_batch) with aug (may be NULL; its
 * arrays, and idx, must stay valid until the batch is waited for) into the buffer the caller
 * is not using: the one qt_prefetch_wait returned last stays untouched until the batch after
 * this one is started. Waits first for a batch still in flight. */
void qt_prefetch_start(struct qt_prefetch *p, const int *idx, int count,
                       const struct qt_augment *aug);
/* Waits for the batch started last: *x and *y point at it (count samples in the layout, and
 * their labels); *waited (may be NULL) grows by the seconds spent waiting. -1 with e naming
 * the file when the batch could not be assembled. */
int qt_prefetch_wait(struct qt_prefetch *p, float **x, int32_t **y, double *waited,
                     struct qt_error *e);
/* Stops the thread (after the batch in flight) and frees the buffers. */
void qt_prefetch_free(struct qt_prefetch *p);

#endif
