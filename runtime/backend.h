/* The backend interface: one struct of function pointers per device. The executor calls it
 * with graph nodes and tensors whose data live in the backend's memory. */
#ifndef QT_BACKEND_H
#define QT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../graph/graph.h"

/* ---- Inference fast path (qt_exec_forward) ----
 * Layouts: during inference a tensor in backend memory may hold its elements in an order of
 * the backend's own, named by a layout number > 0 that only that backend interprets (0 is
 * plain row-major). A layout never changes a tensor's size in bytes. Layouts come only from
 * forward_infer; forward, forward_train and backward see plain tensors only. */

#define QT_MAX_POST 4

/* An elementwise node run inside the kernel of the node before it (its only reader). */
struct qt_post {
    const struct qt_node *node;
    const struct qt_tensor *other; /* the node's other input (binary ops), else NULL */
    int other_layout;              /* its layout: any layout of the backend */
};

/* One inference step: a node, with the nodes fused after it. */
struct qt_step {
    const struct qt_node *node;
    const struct qt_tensor **in; /* the node's inputs */
    const int *in_layout;        /* their layouts (non-zero only where reads_layout said so) */
    /* The node's outputs, allocated with their inferred shapes; with posts, out[0] is the
     * output of the last post node and may be the storage of a post's other operand (which
     * nothing reads afterwards). */
    struct qt_tensor **out;
    int *out_layout;             /* set by forward_infer: the layout of each output */
    struct qt_post post[QT_MAX_POST];
    int npost;
    float *ws;                   /* the node's workspace (workspace()) */
};

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
    /* Inference fast path: reads_layout, forward_infer and to_plain come together (all NULL:
     * qt_exec_forward runs forward on plain tensors); can_fuse may be NULL (nothing fused).
     * Whether node n's kernel can also compute post[0..npost), each the only reader of the
     * result before it (asked with one more node at a time). */
    int (*can_fuse)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                    const struct qt_node *const *post, int npost);
    /* Whether forward_infer reads input k of node n (inputs in[], in layouts layout[]) in
     * layout[k] as it is; the executor converts it to plain first otherwise. */
    int (*reads_layout)(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_tensor **in, const int *layout, int k);
    /* Computes step s (a node the backend supports, with posts it accepted in can_fuse). */
    int (*forward_infer)(struct qt_backend *b, const struct qt_graph *g, const struct qt_step *s,
                         struct qt_error *e);
    /* dst (plain, t->nbytes bytes in backend memory) = t, held in layout (> 0). */
    int (*to_plain)(struct qt_backend *b, void *dst, const struct qt_tensor *t, int layout,
                    struct qt_error *e);
    int (*sync)(struct qt_backend *b, struct qt_error *e);
    void (*destroy)(struct qt_backend *b);
    void *impl;
};

/* The CPU backend (always available). threads <= 0 keeps OpenMP's default. */
struct qt_backend *qt_backend_cpu_new(int threads);

#endif
