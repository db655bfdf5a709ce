/* CPU kernels: plain float32 arrays in NCHW layout, no knowledge of the graph IR.
 * Argument order: outputs, then inputs, then sizes. Every kernel assigns (=) its outputs
 * unless its comment says it accumulates (+=). Threads come from OpenMP (and OpenBLAS and
 * oneDNN, which both use OpenMP's current maximum team size). */
#ifndef QT_KERNELS_CPU_H
#define QT_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "../common/desc.h"

/* State of the kernels that run through oneDNN (convolution): its engine and stream and a
 * scratch buffer. One per backend; not to be used by two threads at once. */
struct qt_cpu_ctx;
/* NULL on failure, with a message in err (errlen bytes; err may be NULL). */
struct qt_cpu_ctx *qt_cpu_ctx_new(char *err, size_t errlen);
void qt_cpu_ctx_free(struct qt_cpu_ctx *ctx);
/* Message of the last kernel call on ctx that returned -1. */
const char *qt_cpu_ctx_error(const struct qt_cpu_ctx *ctx);

/* Convolution and window geometry: struct qt_conv2d_desc (kernels/common/desc.h). */

/* y[n,k,oh,ow] = sum x * w (+ b[k]); w is [k, c/group, kh, kw]; b may be NULL. Computed by
 * oneDNN. Returns 0, or -1 with a message in qt_cpu_ctx_error(ctx) (for instance when oh, ow
 * do not follow from the other sizes). */
int conv2d_forward_cpu(struct qt_cpu_ctx *ctx, float *y, const float *x, const float *w,
                       const float *b, const struct qt_conv2d_desc *d);

/* ---- Inference: activation layouts and fused convolution ----
 * Orders of a 4-D float activation [n, c, h, w] (a 3-D one [n, c, w] is taken as h = 1) that
 * the inference kernels read and write: plain NCHW and the orders oneDNN's convolutions work
 * in. Every layout holds exactly n*c*h*w floats: a channel-blocked order only applies when its
 * block divides c. */
enum qt_cpu_layout {
    QT_CPU_NCHW = 0,
    QT_CPU_NHWC = 1,
    QT_CPU_NCHW8C = 2,  /* oneDNN's nChw8c: [n, c/8, h, w, 8] */
    QT_CPU_NCHW16C = 3, /* oneDNN's nChw16c: [n, c/16, h, w, 16] */
};
/* Whether `layout` can hold an activation with c channels. */
int qt_cpu_layout_fits(int layout, int64_t c);
/* y (layout `to`) = x (layout `from`), dims = {n, c, h, w}; y and x must not overlap.
 * Returns 0, or -1 with a message in qt_cpu_ctx_error(ctx). */
int qt_cpu_reorder(struct qt_cpu_ctx *ctx, float *y, int to, const float *x, int from,
                   const int64_t dims[4]);

/* Steps an inference convolution applies to its result, in this order:
 *   y = conv(x, w) + b;  y += sum (when sum is not NULL);  y = max(y, 0) (when relu). */
struct qt_conv2d_post {
    const float *sum; /* an activation shaped like y, in layout sum_layout; may be y itself */
    int sum_layout;
    int relu;
};

/* Inference convolution with fused steps (post may be NULL) on activations in any enum
 * qt_cpu_layout: x is read in x_layout, and y is written in the layout oneDNN's convolution
 * prefers, returned in *y_layout (QT_CPU_NCHW where no other layout fits; the layout of sum
 * when sum is y, unless c is 0). w is plain ([k, c/group, kh, kw]). Same sizes and errors as
 * conv2d_forward_cpu. */
int conv2d_infer_cpu(struct qt_cpu_ctx *ctx, float *y, int *y_layout, const float *x,
                     int x_layout, const float *w, const float *b,
                     const struct qt_conv2d_desc *d, const struct qt_conv2d_post *post);

/* Pools over [n*c] planes. Max pool: padding never wins. Average pool: divides by the
 * window size including padding when count_include_pad, else by the valid count. */
void maxpool2d_forward_cpu(float *y, const float *x, const struct qt_conv2d_desc *d);
void avgpool2d_forward_cpu(float *y, const float *x, const struct qt_conv2d_desc *d,
                           int count_include_pad);
/* y[n,c] = mean over hw of x[n,c,:] */
void global_avgpool_forward_cpu(float *y, const float *x, int64_t nc, int64_t hw);

/* Inference BatchNorm: y = (x - mean) / sqrt(var + eps) * scale + bias, per channel. */
void batchnorm_infer_forward_cpu(float *y, const float *x, const float *scale, const float *bias,
                                 const float *mean, const float *var, float eps, int64_t n,
                                 int64_t c, int64_t hw);

/* Row-major Y[M,N] = alpha * op(A) op(B) + beta * C, op = transpose when ta/tb.
 * C (may be NULL) is broadcast to [M,N] by its strides (c_rs, c_cs may be 0). */
void gemm_forward_cpu(float *y, const float *a, const float *b, const float *c, int64_t m,
                      int64_t n, int64_t k, int ta, int tb, float alpha, float beta,
                      int64_t c_rs, int64_t c_cs);

/* Elementwise. */
void relu_forward_cpu(float *y, const float *x, int64_t n);
void clip_forward_cpu(float *y, const float *x, float lo, float hi, int64_t n);

/* y = a op b with broadcasting: shapes padded to ndim; sa/sb are element strides of a and
 * b over the output's dimensions (0 where broadcast). */
void binary_forward_cpu(float *y, const float *a, const float *b, enum qt_binop op,
                        const int64_t *shape, const int64_t *sa, const int64_t *sb, int ndim);

/* Softmax over the middle dimension of [outer, axis, inner]. */
void softmax_forward_cpu(float *y, const float *x, int64_t outer, int64_t axis, int64_t inner);
/* Mean over the middle dimension of [outer, r, inner]. */
void reduce_mean_forward_cpu(float *y, const float *x, int64_t outer, int64_t r, int64_t inner);
/* Backward of Softmax (dx = y (dy - sum dy y) along the axis) and of a mean over the axes
 * r->red marks (dx = dy / elements averaged); assign or, with acc, add. */
void softmax_backward_cpu(float *dx, const float *dy, const float *y, int64_t outer, int64_t axis,
                          int64_t inner, int acc);
void reduce_mean_backward_cpu(float *dx, const float *dy, const struct qt_reduce_desc *r, int acc);
/* Log-softmax over the same rows: y = x - log sum exp(x); backward dx = dy - exp(y) sum dy. */
void logsoftmax_forward_cpu(float *y, const float *x, int64_t outer, int64_t axis, int64_t inner);
void logsoftmax_backward_cpu(float *dx, const float *dy, const float *y, int64_t outer,
                             int64_t axis, int64_t inner, int acc);
/* Sigmoid y = 1 / (1 + exp(-x)); backward dx = dy y (1 - y) from the output. */
void sigmoid_forward_cpu(float *y, const float *x, int64_t n);
void sigmoid_backward_cpu(float *dx, const float *dy, const float *y, int64_t n, int acc);

/* Transpose (transpose.c): output dim k is input dim d->perm[k]. The backward permutes dy
 * back (assigns or, with acc, adds). */
void transpose_forward_cpu(float *y, const float *x, const struct qt_transpose_desc *d);
void transpose_backward_cpu(float *dx, const float *dy, const struct qt_transpose_desc *d, int acc);

/* Constant Pad (pad.c): y is x placed at offsets begin in a tensor of d->value; the backward
 * takes dy's elements over x's place (assigns or, with acc, adds). */
void pad_forward_cpu(float *y, const float *x, const struct qt_pad_desc *d);
void pad_backward_cpu(float *dx, const float *dy, const struct qt_pad_desc *d, int acc);

/* Number of threads the CPU kernels use. */
int qt_cpu_threads(void);

/* ---- Training: backward kernels, loss and optimizer. Each backward assigns (=) an output
 * when its acc flag is 0 and accumulates (+=) when 1; NULL outputs are skipped. ---- */
int conv2d_backward_cpu(struct qt_cpu_ctx *ctx, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, const struct qt_conv2d_desc *d, int acc_x,
                        int acc_w, int acc_b);
void relu_backward_cpu(float *dx, const float *dy, const float *y, int64_t n, int acc);
void clip_backward_cpu(float *dx, const float *dy, const float *x, float lo, float hi, int64_t n,
                       int acc);
void binary_backward_cpu(float *da, float *db, const float *dy, const float *a, const float *b,
                         enum qt_binop op, const int64_t *shape, const int64_t *sa,
                         const int64_t *sb, int ndim, int acc_a, int acc_b);
void batchnorm_train_forward_cpu(float *y, float *save_mean, float *save_invstd, float *run_mean,
                                 float *run_var, const float *x, const float *scale,
                                 const float *bias, float eps, float momentum, int64_t n,
                                 int64_t c, int64_t hw);
/* Per-channel sums of x [n, c, hw]: s1[c] += sum, s2[c] += sum of squares (in double). */
void channel_moments_cpu(double *s1, double *s2, const float *x, int64_t n, int64_t c,
                         int64_t hw);
void batchnorm_backward_cpu(float *dx, float *dscale, float *dbias, const float *dy,
                            const float *x, const float *scale, const float *save_mean,
                            const float *save_invstd, int64_t n, int64_t c, int64_t hw,
                            int acc_x, int acc_scale, int acc_bias);
void maxpool2d_backward_cpu(float *dx, const float *dy, const float *x,
                            const struct qt_conv2d_desc *d, int acc);
void avgpool2d_backward_cpu(float *dx, const float *dy, const struct qt_conv2d_desc *d,
                            int count_include_pad, int acc);
void global_avgpool_backward_cpu(float *dx, const float *dy, int64_t nc, int64_t hw, int acc);
void gemm_backward_cpu(float *da, float *db, float *dc, const float *dy, const float *a,
                       const float *b, int64_t m, int64_t n, int64_t k, int ta, int tb,
                       float alpha, float beta, int64_t c_rs, int64_t c_cs, int64_t c_rows,
                       int64_t c_cols, int acc_a, int acc_b, int acc_c);
/* Softmax cross-entropy of logits [n, k] against labels with the target (1 - smoothing) *
 * onehot + smoothing / k (PyTorch's label_smoothing). stats[QT_XENT_STATS] receives the loss
 * summed over the rows with finite logits, the rows whose label ranks first and those where
 * it ranks in the top 5 (ties go to the lower class index), and the rows holding a
 * non-finite logit (counted in nothing else). dlogits (may be NULL) = (softmax - target) *
 * scale (NaN on rows with a non-finite logit). */
void softmax_xent_cpu(float *dlogits, double *stats, const float *logits, const int32_t *labels,
                      int64_t n, int64_t k, float smoothing, float scale);
/* One SGD step (desc.h's rule); with ps non-NULL each gradient element is first multiplied by
 * qt_psgd_factor(p, ps); with clamp non-NULL p ends clamped to [clamp[0], clamp[1]]. psgd_range_cpu: PSGD's range step over p[0..n) (qt_psgd_range_step
 * with the tensor's min and max), returns the grid step. */
void sgd_update_cpu(float *p, float *buf, const float *grad, int64_t n, float lr, float momentum,
                    float wd, int nesterov, int first, const struct qt_psgd_grid *ps,
                    const float *clamp);
float psgd_range_cpu(float *range, const float *p, int64_t n, int first, int L);

/* BSQ bit planes (bsq.c): w = s * unit(sum of planes) and its straight-through gradients;
 * p, n are [N, cnt], s one float; dp, dn, ds (may be NULL) assigned or accumulated (acc_*). */
void bitquant_forward_cpu(float *w, const float *p, const float *n, const float *s, int N,
                          int64_t cnt);
void bitquant_backward_cpu(float *dp, float *dn, float *ds, const float *dw, const float *p,
                           const float *n, const float *s, int N, int64_t cnt, int acc_p,
                           int acc_n, int acc_s);
/* Adds the gradient of coef * sum_b sqrt(1e-8 + sum_j (p_bj^2 + n_bj^2)) to dp and dn. */
void bitquant_lasso_cpu(float *dp, float *dn, const float *p, const float *n, int N, int64_t cnt,
                        float coef);

#endif
