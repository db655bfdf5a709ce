/* Op descriptions: what a backend needs to compute one op, with every attribute, opset rule,
 * broadcast geometry and constant (clip bounds, reduced axes, quantizer level grid) already
 * resolved on the host by runtime/lower.c. Plain data, free of the graph IR, shared by every
 * backend (cpu, ref, cuda). Tensors are float32, row-major (NCHW for activations). */
#ifndef QT_KERNELS_COMMON_DESC_H
#define QT_KERNELS_COMMON_DESC_H

#include <stdint.h>

#include "apot.h"

#define QT_DESC_MAX_DIMS 8

enum qt_opk {
    QT_K_NONE = 0,
    QT_K_CONV,        /* in: x, w, [b]             out: y */
    QT_K_MAXPOOL,     /* in: x                     out: y */
    QT_K_AVGPOOL,     /* in: x                     out: y */
    QT_K_GAP,         /* in: x                     out: y (global average pool) */
    QT_K_BATCHNORM,   /* in: x, scale, bias, mean, var   out: y [, mean, var (copies)] */
    QT_K_RELU,        /* in: x                     out: y */
    QT_K_CLIP,        /* in: x (bounds resolved)   out: y */
    QT_K_BINARY,      /* in: a, b                  out: y (broadcast) */
    QT_K_GEMM,        /* in: a, b, [c]             out: y */
    QT_K_MATMUL,      /* in: a, b                  out: y (broadcast batches) */
    QT_K_SOFTMAX,     /* in: x                     out: y */
    QT_K_REDUCE_MEAN, /* in: x (axes resolved)     out: y */
    QT_K_WEIGHTQUANT, /* in: w, [alpha]            out: wq */
    QT_K_ACTQUANT,    /* in: a, alpha              out: aq */
    QT_K_COPY,        /* in: x                     out: y = x (Reshape, Flatten, Squeeze, ...) */
    QT_K_BITQUANT,    /* in: p, n, s (bit planes)  out: w (kernels/common/bsq.h) */
    QT_K_TRANSPOSE,   /* in: x                     out: y (dims permuted) */
    QT_K_SIGMOID,     /* in: x                     out: y */
    QT_K_LOGSOFTMAX,  /* in: x                     out: y */
    QT_K_PAD,         /* in: x                     out: y (constant padding) */
    QT_K_COUNT
};

/* 2-D convolution / window geometry (1-D windows have h = oh = kh = 1). Pads: top, left,
 * bottom, right. */
struct qt_conv2d_desc {
    int n, c, h, w; /* input */
    int k, oh, ow;  /* output channels and spatial size */
    int kh, kw, sh, sw, dh, dw;
    int pt, pl, pb, pr;
    int group;
};

enum qt_binop { QT_BIN_ADD, QT_BIN_SUB, QT_BIN_MUL, QT_BIN_DIV };

/* y = a op b over the output's dims (shape); sa/sb are element strides of a and b over those
 * dims, 0 where an operand broadcasts. same_shape: both operands have the output's shape. */
struct qt_binary_desc {
    enum qt_binop op;
    int ndim, same_shape;
    int64_t shape[QT_DESC_MAX_DIMS], sa[QT_DESC_MAX_DIMS], sb[QT_DESC_MAX_DIMS];
    int64_t na, nb; /* elements of a and b */
};

/* Row-major Y[M,N] = alpha * op(A) op(B) + beta * C, op = transpose when ta/tb. C, when
 * present, is a [c_rows, c_cols] matrix read with strides c_rs, c_cs (0 where it broadcasts). */
struct qt_gemm_desc {
    int64_t m, n, k;
    int ta, tb, has_c;
    float alpha, beta;
    int64_t c_rs, c_cs, c_rows, c_cols;
};

/* A batch of [m,k] x [k,n] products (1-D operands promoted as numpy does); the batch dims
 * (bdims over bshape) broadcast with strides sa/sb counted in matrices. */
struct qt_matmul_desc {
    int64_t m, k, n, batches;
    int bdims;
    int64_t bshape[QT_DESC_MAX_DIMS], sa[QT_DESC_MAX_DIMS], sb[QT_DESC_MAX_DIMS];
    int64_t na, nb; /* elements of a and b */
};

/* Element offsets of the A and B matrices that product t reads. */
QT_HD static inline void qt_matmul_offsets(const struct qt_matmul_desc *d, int64_t t, int64_t *oa,
                                     int64_t *ob)
{
    int64_t ia = 0, ib = 0;
    for (int i = d->bdims - 1; i >= 0; i--) {
        const int64_t j = t % d->bshape[i];
        t /= d->bshape[i];
        ia += j * d->sa[i];
        ib += j * d->sb[i];
    }
    *oa = ia * d->m * d->k;
    *ob = ib * d->k * d->n;
}

/* BatchNormalization over [n, c, hw]; momentum in PyTorch's convention (weight of the new
 * batch statistic in the running update). */
struct qt_bn_desc {
    int64_t n, c, hw;
    float eps, momentum;
    int copy_stats; /* inference: outputs 1 and 2 receive copies of the running statistics */
};

/* Softmax or a mean over the middle dimension of [outer, mid, inner]. */
struct qt_axis_desc {
    int64_t outer, mid, inner;
};

/* Mean over the axes marked in red of an ndim tensor (all zero: y = x). */
struct qt_reduce_desc {
    int ndim;
    int64_t shape[QT_DESC_MAX_DIMS];
    uint8_t red[QT_DESC_MAX_DIMS];
};

/* Fake quantizers (APOT.md sections 2-4; kernels/common/apot.h has the math).
 * int8 = 0: the APoT/uniform grid qz with nalpha learnable alphas (1, or one per output
 *           channel for weights), weights standardized per tensor when standardize;
 * int8 = 1 (max w) or 2 (max |w|): the 8-bit first/last layer weights, no alpha. */
struct qt_quant_desc {
    int weight; /* 1: WeightQuant (aux: mu, sigma or the 8-bit scale), 0: ActQuant */
    int int8, standardize;
    int64_t n, nalpha;
    struct qt_apot_quantizer qz;
};

/* y = x with its dims permuted: output dim i is input dim perm[i] (y's dims are
 * shape[perm[0]], ..., shape[perm[ndim-1]]; shape: x's dims). */
struct qt_transpose_desc {
    int ndim;
    int64_t shape[QT_DESC_MAX_DIMS];
    int perm[QT_DESC_MAX_DIMS];
};

/* Offset in x of element o of y (row-major over y's dims). */
QT_HD static inline int64_t qt_transpose_offset(const struct qt_transpose_desc *d, int64_t o)
{
    int64_t stride[QT_DESC_MAX_DIMS], s = 1, off = 0;
    for (int i = d->ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= d->shape[i];
    }
    for (int k = d->ndim - 1; k >= 0; k--) {
        const int64_t size = d->shape[d->perm[k]];
        off += (o % size) * stride[d->perm[k]];
        o /= size;
    }
    return off;
}

/* Pad with a constant: y's dims are x's (shape) plus begin[i] + end[i] (negative: cropped);
 * y holds value where no element of x lands. */
struct qt_pad_desc {
    int ndim;
    int64_t shape[QT_DESC_MAX_DIMS], begin[QT_DESC_MAX_DIMS], end[QT_DESC_MAX_DIMS];
    float value;
};

/* Offset in y of element i of x (row-major over x's dims), or -1 where it is cropped away.
 * Every element of y is either such an image or padding, so the backward gathers
 * dx[i] = dy[qt_pad_target(d, i)] with no collisions. */
QT_HD static inline int64_t qt_pad_target(const struct qt_pad_desc *d, int64_t i)
{
    int64_t off = 0, ystride = 1;
    for (int k = d->ndim - 1; k >= 0; k--) {
        const int64_t c = i % d->shape[k] + d->begin[k];
        const int64_t ydim = d->shape[k] + d->begin[k] + d->end[k];
        i /= d->shape[k];
        if (c < 0 || c >= ydim) return -1;
        off += c * ystride;
        ystride *= ydim;
    }
    return off;
}

/* Offset in x of element o of y, or -1 where y holds the padding value. */
QT_HD static inline int64_t qt_pad_source(const struct qt_pad_desc *d, int64_t o)
{
    int64_t off = 0, xstride = 1;
    for (int k = d->ndim - 1; k >= 0; k--) {
        const int64_t ydim = d->shape[k] + d->begin[k] + d->end[k];
        const int64_t c = o % ydim - d->begin[k];
        o /= ydim;
        if (c < 0 || c >= d->shape[k]) return -1;
        off += c * xstride;
        xstride *= d->shape[k];
    }
    return off;
}

/* BSQ's bit planes [N, n] and scale to n weights. */
struct qt_bitq_desc {
    int N;
    int64_t n;
};

struct qt_op_desc {
    enum qt_opk kind;
    int nin, nout; /* inputs and outputs the executor passes (absent optional ones NULL) */
    int64_t numel; /* elements of output 0 (of input 0 for the elementwise view) */
    union {
        struct qt_conv2d_desc conv; /* CONV, MAXPOOL, AVGPOOL */
        struct qt_binary_desc bin;
        struct qt_gemm_desc gemm;
        struct qt_matmul_desc mm;
        struct qt_bn_desc bn;
        struct qt_axis_desc ax; /* SOFTMAX, LOGSOFTMAX, GAP (outer = n*c, mid = hw, inner = 1) */
        struct qt_reduce_desc red;
        struct qt_quant_desc q;
        struct qt_bitq_desc bq;
        struct qt_transpose_desc tr;
        struct qt_pad_desc pad;
        float clip[2]; /* lo, hi */
    } u;
    int has_bias;          /* CONV */
    int count_include_pad; /* AVGPOOL */
};

/* The loss op's result (backend memory, doubles): summed loss, top-1 rows, top-5 rows, rows
 * with a non-finite logit. */
enum { QT_XENT_LOSS, QT_XENT_TOP1, QT_XENT_TOP5, QT_XENT_NONFINITE, QT_XENT_STATS };

/* One SGD step over several parameters (PyTorch's rule, dampening 0):
 *   g = grad (* the PSGD factor) + wd * p;  buf = first ? g : momentum * buf + g;  p -= lr * (nesterov ? g +
 *   momentum * buf : buf); with momentum 0, buf is unused (may be NULL). Parameters whose
 *   grad is NULL are left alone. */
struct qt_sgd_param {
    float *p, *buf;
    const float *grad;
    int64_t n;
    float lr, wd;
    int first; /* buf is uninitialized: this step starts it */
    /* PSGD (apot.h's qt_psgd_*): with psgd_range (backend memory, 2 floats: the range state)
     * non-NULL, the range first follows p (qt_psgd_range_step; psgd_first: the first step),
     * then every gradient element is multiplied by qt_psgd_factor(p, delta, psgd_levels,
     * psgd_lambda) before weight decay and momentum are applied. */
    float *psgd_range;
    int psgd_first, psgd_levels;
    float psgd_lambda;
    /* After the update, p is clamped to [clamp_lo, clamp_hi] when clamp is set (BSQ's bit
     * planes stay in [0, 2]). */
    int clamp;
    float clamp_lo, clamp_hi;
};
struct qt_sgd_desc {
    float momentum;
    int nesterov;
};

/* How many values subsample takes from n with at most m: every ceil(n / m)-th from 0. */
static inline int64_t qt_subsample_count(int64_t m, int64_t n)
{
    if (m <= 0 || n <= 0) return 0;
    const int64_t s = n / m + (n % m != 0);
    return (n + s - 1) / s < m ? (n + s - 1) / s : m;
}

/* Name of an op kind, for messages. */
static inline const char *qt_opk_name(enum qt_opk k)
{
    static const char *const names[QT_K_COUNT] = {
        "none",        "conv",         "maxpool",   "avgpool", "global-avgpool", "batchnorm",
        "relu",        "clip",         "binary",    "gemm",    "matmul",         "softmax",
        "reduce-mean", "weight-quant", "act-quant", "copy",           "bit-quant",
        "transpose",   "sigmoid",      "log-softmax"};
    return (unsigned)k < QT_K_COUNT ? names[k] : "?";
}

#endif
