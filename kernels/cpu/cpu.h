/* CPU kernels: plain float32 arrays in NCHW layout, no knowledge of the graph IR.
 * Argument order: outputs, then inputs, then sizes. Every kernel assigns (=) its outputs
 * unless its comment says it accumulates (+=). Threads come from OpenMP (and OpenBLAS). */
#ifndef QT_KERNELS_CPU_H
#define QT_KERNELS_CPU_H

#include <stdint.h>

/* 2-D convolution / window geometry. Pads: top, left, bottom, right. */
struct qt_conv2d_desc {
    int n, c, h, w;     /* input */
    int k, oh, ow;      /* output channels and spatial size */
    int kh, kw, sh, sw, dh, dw;
    int pt, pl, pb, pr;
    int group;
};

/* Scratch space the conv kernels need, in floats (per call). */
int64_t conv2d_workspace_cpu(const struct qt_conv2d_desc *d);
/* y[n,k,oh,ow] = sum x * w (+ b[k]); w is [k, c/group, kh, kw]; b may be NULL.
 * ws: at least conv2d_workspace_cpu(d) floats. */
void conv2d_forward_cpu(float *y, const float *x, const float *w, const float *b, float *ws,
                        const struct qt_conv2d_desc *d);

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

enum qt_binop { QT_BIN_ADD, QT_BIN_SUB, QT_BIN_MUL, QT_BIN_DIV };
/* y = a op b with broadcasting: shapes padded to ndim; sa/sb are element strides of a and
 * b over the output's dimensions (0 where broadcast). */
void binary_forward_cpu(float *y, const float *a, const float *b, enum qt_binop op,
                        const int64_t *shape, const int64_t *sa, const int64_t *sb, int ndim);

/* Softmax over the middle dimension of [outer, axis, inner]. */
void softmax_forward_cpu(float *y, const float *x, int64_t outer, int64_t axis, int64_t inner);
/* Mean over the middle dimension of [outer, r, inner]. */
void reduce_mean_forward_cpu(float *y, const float *x, int64_t outer, int64_t r, int64_t inner);

/* Number of threads the CPU kernels use. */
int qt_cpu_threads(void);

#endif
