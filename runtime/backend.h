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
    /* Training. Floats node n keeps between its training forward and its backward
     * (BatchNorm's batch mean and inverse std, for instance). */
    int64_t (*aux_floats)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                          const struct qt_tensor **in);
    /* Forward in training mode: BatchNorm uses batch statistics and updates its running
     * statistics (the node's inputs 3 and 4) in place; aux receives what backward needs. */
    int (*forward_train)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                         const struct qt_tensor **in, struct qt_tensor **out, float *aux,
                         float *ws, struct qt_error *e);
    /* Gradients of the node's inputs from those of its outputs. din[k] is NULL where no
     * gradient is wanted; it is assigned (=) when acc[k] is 0 and accumulated (+=) when 1. */
    int (*backward)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                    const struct qt_tensor **in, const struct qt_tensor **out,
                    const struct qt_tensor **dout, struct qt_tensor **din, const int *acc,
                    const float *aux, float *ws, struct qt_error *e);
    /* One SGD step on n parameters in backend memory (PyTorch's rule; see sgd_update_cpu). */
    void (*sgd_update)(struct qt_backend *b, float *p, float *buf, const float *grad, int64_t n,
                       float lr, float momentum, float wd, int nesterov, int first);
    int (*sync)(struct qt_backend *b, struct qt_error *e);
    void (*destroy)(struct qt_backend *b);
    void *impl;
};

/* The CPU backend (always available). threads <= 0 keeps OpenMP's default. */
struct qt_backend *qt_backend_cpu_new(int threads);

#endif
