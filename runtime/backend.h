/* The backend interface: one struct of function pointers per device. Backends receive op
 * descriptions (kernels/common/desc.h, made by runtime/lower.c) and buffers in their own
 * memory; they never see the graph, and the host never reads their memory except through
 * download. */
#ifndef QT_BACKEND_H
#define QT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/common/desc.h"
#include "../util/error.h"

/* ---- Inference fast path (qt_exec_forward) ----
 * Layouts: during inference a tensor in backend memory may hold its elements in an order of
 * the backend's own, named by a layout number > 0 that only that backend interprets (0 is
 * plain row-major). A layout never changes a tensor's size in bytes. Layouts come only from
 * forward_infer; forward, forward_train and backward see plain tensors only. */

#define QT_MAX_POST 4

/* An elementwise op run inside the kernel of the op before it (its only reader). */
struct qt_post {
    const struct qt_op_desc *d;
    const float *other; /* the op's other input (binary ops), else NULL */
    int other_layout;   /* its layout: any layout of the backend */
};

/* One inference step: an op, with the ops fused after it. */
struct qt_step {
    const struct qt_op_desc *d;
    const float *const *in; /* the op's inputs (NULL where omitted) */
    const int *in_layout;   /* their layouts (non-zero only where reads_layout said so) */
    /* The outputs; with posts, out[0] receives the result of the last post and may be the
     * storage of a post's other operand (which nothing reads afterwards). */
    float *const *out;
    int *out_layout; /* set by forward_infer: the layout of each output */
    struct qt_post post[QT_MAX_POST];
    int npost;
    float *ws; /* the op's workspace (workspace()) */
};

struct qt_backend {
    const char *name;
    void *(*alloc)(struct qt_backend *b, size_t bytes);
    void (*release)(struct qt_backend *b, void *p);
    /* Copies between host memory and the backend's memory, and within backend memory. */
    int (*upload)(struct qt_backend *b, void *dst, const void *src, size_t bytes);
    int (*download)(struct qt_backend *b, void *dst, const void *src, size_t bytes);
    /* Whether the backend computes op d; the executor refuses the graph otherwise. */
    int (*supports)(struct qt_backend *b, const struct qt_op_desc *d);
    /* Scratch floats op d needs. */
    int64_t (*workspace)(struct qt_backend *b, const struct qt_op_desc *d);
    /* out[] = op(in[]); absent optional inputs and unwanted outputs are NULL. */
    int (*forward)(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                   float *const *out, float *ws, struct qt_error *e);
    /* Training. Floats op d keeps between its training forward and its backward (BatchNorm's
     * batch mean and inverse std, a weight quantizer's mean and std). */
    int64_t (*aux_floats)(struct qt_backend *b, const struct qt_op_desc *d);
    /* Forward in training mode: BatchNorm uses batch statistics and updates its running
     * statistics (inputs 3 and 4, backend buffers) in place; aux receives what backward needs. */
    int (*forward_train)(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                         float *const *out, float *aux, float *ws, struct qt_error *e);
    /* Gradients of the op's inputs from those of its outputs. din[k] is NULL where no
     * gradient is wanted; it is assigned (=) when acc[k] is 0 and accumulated (+=) when 1. */
    int (*backward)(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                    const float *const *out, const float *const *dout, float *const *din,
                    const int *acc, const float *aux, float *ws, struct qt_error *e);
    /* Loss of a classifier batch, with logits [n, k] and labels (int32) in backend memory:
     * stats (backend memory, QT_XENT_STATS doubles) receives the summed loss and the counts
     * of desc.h; dlogits (may be NULL) the gradient of scale * loss. See softmax_xent_cpu. */
    int (*xent)(struct qt_backend *b, float *dlogits, double *stats, const float *logits,
                const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale,
                struct qt_error *e);
    /* One optimizer step over every parameter p[0..np) (pointers into backend memory). */
    int (*sgd_step)(struct qt_backend *b, const struct qt_sgd_desc *d, const struct qt_sgd_param *p,
                    int np, struct qt_error *e);
    /* Calibration, on values in backend memory (the host reads back nothing but what it
     * asks for). subsample: out[0..) = x[0], x[s], x[2s], ... with s = ceil(n / m), at most
     * m values (qt_subsample_count of them). alpha_search: *alpha (backend memory) = the
     * alpha minimizing the quantization error of the n values x under qz (apot.h's
     * QT_ALPHA_* search). channel_moments: s1[c] += sum and s2[c] += sum of squares of x
     * over [n, c, hw] per channel (doubles in backend memory). range_max: *m (backend memory)
     * = max(*m, largest x, or |x| when is_signed); alpha_percentile: *alpha = the nearest-rank
     * p-th percentile of the n values x (or |x|), x used as scratch (quant_alpha_percentile_cpu
     * has both definitions). */
    int (*subsample)(struct qt_backend *b, float *out, int64_t m, const float *x, int64_t n,
                     struct qt_error *e);
    int (*alpha_search)(struct qt_backend *b, float *alpha, const float *x, int64_t n,
                        const struct qt_apot_quantizer *qz, struct qt_error *e);
    int (*channel_moments)(struct qt_backend *b, double *s1, double *s2, const float *x, int64_t n,
                           int64_t c, int64_t hw, struct qt_error *e);
    int (*range_max)(struct qt_backend *b, float *m, const float *x, int64_t n, int is_signed,
                     struct qt_error *e);
    int (*alpha_percentile)(struct qt_backend *b, float *alpha, float *x, int64_t n, double p,
                            int is_signed, struct qt_error *e);
    /* BSQ's regularizer on one layer's bit planes p, n ([N, cnt], backend memory): adds the
     * gradient of coef * sum_b sqrt(1e-8 + sum_j (p_bj^2 + n_bj^2)) to dp and dn. */
    int (*bit_lasso)(struct qt_backend *b, float *dp, float *dn, const float *p, const float *n,
                     int N, int64_t cnt, float coef, struct qt_error *e);
    /* Inference fast path: reads_layout, forward_infer and to_plain come together (all NULL:
     * qt_exec_forward runs forward on plain tensors); can_fuse may be NULL (nothing fused).
     * Whether op head's kernel can also compute post[0..npost), each the only reader of the
     * result before it (descriptions from qt_lower_static, asked with one more at a time). */
    int (*can_fuse)(struct qt_backend *b, const struct qt_op_desc *head,
                    const struct qt_op_desc *const *post, int npost);
    /* Whether forward_infer reads input k of op d (inputs in layouts layout[]) in layout[k]
     * as it is; the executor converts it to plain first otherwise. */
    int (*reads_layout)(struct qt_backend *b, const struct qt_op_desc *d, const int *layout, int k);
    /* Computes step s (an op the backend supports, with posts it accepted in can_fuse). */
    int (*forward_infer)(struct qt_backend *b, const struct qt_step *s, struct qt_error *e);
    /* dst (plain, in backend memory) = src, an activation of dims [n, c, h, w] in layout (> 0). */
    int (*to_plain)(struct qt_backend *b, float *dst, const float *src, const int64_t dims[4],
                    int layout, struct qt_error *e);
    int (*sync)(struct qt_backend *b, struct qt_error *e);
    void (*destroy)(struct qt_backend *b);
    void *impl;
};

/* For backends whose alphas the host may read (cpu, ref): a quantizer's alphas must be
 * positive and finite; returns 0, or -1 with the message every backend gives. */
int qt_quant_check_alpha(const struct qt_quant_desc *q, const float *alpha, struct qt_error *e);

/* For every backend's sgd_step: a PSGD parameter needs values and at least one grid step
 * per side; returns 0, or -1 with the message every backend gives. */
int qt_sgd_psgd_check(const struct qt_sgd_param *p, int index, struct qt_error *e);

/* The one factory: "cpu", "ref", "cuda", or "auto" (qt_backend_auto, without its notice).
 * threads <= 0 keeps OpenMP's default. NULL with a message naming the device on failure. */
struct qt_backend *qt_backend_new(const char *device, int threads, struct qt_error *e);
/* "auto": the cuda backend when qtune was built with CUDA and a GPU is usable, else the CPU
 * backend; when a CUDA build falls back (no GPU, no driver, an unusable device), notice
 * (if not NULL) receives a one-line reason, else it is set to "". */
struct qt_backend *qt_backend_auto(int threads, char *notice, size_t cap, struct qt_error *e);
/* Devices the factory knows, for messages: "auto|cpu|ref|cuda". */
const char *qt_backend_devices(void);

/* The backends (runtime/backend_*.c), created through the factory. */
struct qt_backend *qt_backend_cpu_new(int threads);
struct qt_backend *qt_backend_ref_new(void);
/* runtime/backend_cuda.c, or runtime/backend_cuda_none.c in a build without nvcc: NULL with a
 * message when no CUDA device is usable (or CUDA was not built). */
struct qt_backend *qt_backend_cuda_new(struct qt_error *e);
/* Whether this build has the cuda backend. */
int qt_backend_cuda_built(void);
/* Download calls made on the ref backend b since its creation or the last reset (the host
 * reads of its memory); -1 when b is not a ref backend. */
int64_t qt_backend_ref_downloads(const struct qt_backend *b);
void qt_backend_ref_reset_downloads(struct qt_backend *b);

#endif
