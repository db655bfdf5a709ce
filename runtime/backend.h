/* The backend interface: one struct of function pointers per device. The executor calls it
 * with graph nodes and tensors whose data live in the backend's memory. */
#ifndef QT_BACKEND_H
#define QT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../graph/graph.h"

struct qt_backend {
    const char *name;
    void *(*alloc)(struct qt_backend *b, size_t bytes);
    void (*release)(struct qt_backend *b, void *p);
    /* Copies between host memory and the backend's memory. */
    int (*upload)(struct qt_backend *b, void *dst, const void *src, size_t bytes);
    int (*download)(struct qt_backend *b, void *dst, const void *src, size_t bytes);
    /* Whether the backend computes node n (given its inputs' dtypes); ops it does not take
     * run through the host reference evaluator. */
    int (*supports)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                    const struct qt_tensor **in);
    /* Scratch floats node n needs for these input shapes. */
    int64_t (*workspace)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                         const struct qt_tensor **in, struct qt_tensor **out);
    /* Computes out[] (already allocated with inferred shapes) from in[]. */
    int (*forward)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                   const struct qt_tensor **in, struct qt_tensor **out, float *ws,
                   struct qt_error *e);
    int (*sync)(struct qt_backend *b, struct qt_error *e);
    void (*destroy)(struct qt_backend *b);
    void *impl;
};

/* The CPU backend (always available). threads <= 0 keeps OpenMP's default. */
struct qt_backend *qt_backend_cpu_new(int threads);

#endif
