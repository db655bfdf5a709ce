/* The ref backend: computes op descriptions with the plain loops of kernels/ref, the oracle for
 * every other backend. Its memory is not host-visible: pointers it hands out are masked so that
 * a host read of them faults, and the host reaches its memory only through upload and download
 * (counted). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ref/ref.h"
#include "backend.h"

/* ---- Memory ----
 * A buffer's pointer as handed out is its host address XOR REF_MASK: bits 52-62 set make it a
 * non-canonical x86-64 address (user-space addresses are below 2^47), so dereferencing it on
 * the host faults. The backend unmasks pointers before computing; NULL stays NULL. An offset
 * added to a masked pointer stays an offset into the same buffer (the mask lies above every
 * user-space address bit, so no carry reaches it). */
#define REF_MASK ((uintptr_t)0x7ff0000000000000ULL)

/* Inputs and outputs an op description may name. */
#define REF_MAX_IO 8

struct ref_state {
    int64_t downloads; /* download calls since creation or the last reset */
};

/* Whether p is a (masked) pointer into ref memory. */
static int is_ref_ptr(const void *p)
{
    return ((uintptr_t)p & REF_MASK) == REF_MASK;
}

static void *mask(void *p)
{
    return p ? (void *)((uintptr_t)p ^ REF_MASK) : NULL;
}

static void *unmask(const void *p)
{
    return p ? (void *)((uintptr_t)p ^ REF_MASK) : NULL;
}

static void *ref_alloc(struct qt_backend *b, size_t bytes)
{
    return mask(malloc(bytes ? bytes : 1));
}

static void ref_release(struct qt_backend *b, void *p)
{
    if (p && is_ref_ptr(p)) free(unmask(p));
}

/* A copy's operand: a ref pointer is unmasked, any other is host memory (so that upload and
 * download also copy within ref memory). */
static void *copy_operand(const void *p)
{
    return is_ref_ptr(p) ? unmask(p) : (void *)p;
}

/* dst must be ref memory; src is host memory or ref memory. */
static int ref_upload(struct qt_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!bytes) return 0;
    if (!dst || !src || !is_ref_ptr(dst)) return -1;
    memmove(unmask(dst), copy_operand(src), bytes);
    return 0;
}

/* src must be ref memory; dst is host memory or ref memory. */
static int ref_download(struct qt_backend *b, void *dst, const void *src, size_t bytes)
{
    ((struct ref_state *)b->impl)->downloads++;
    if (!bytes) return 0;
    if (!dst || !src || !is_ref_ptr(src)) return -1;
    memmove(copy_operand(dst), unmask(src), bytes);
    return 0;
}

/* Unmasks the n pointers of list (role: "input", "output", ...) into host[]; fails on a
 * pointer that is not ref memory (the executor handed host memory to the backend). */
static int host_list(float **host, const float *const *list, int n, const char *role,
                     const struct qt_op_desc *d, struct qt_error *e)
{
    if (n > REF_MAX_IO) return qt_err(e, "a %s op with %d %ss", qt_opk_name(d->kind), n, role);
    for (int k = 0; k < n; k++) {
        host[k] = NULL;
        if (!list || !list[k]) continue;
        if (!is_ref_ptr(list[k]))
            return qt_err(e, "%s %d of a %s op is not in the ref backend's memory", role, k,
                          qt_opk_name(d->kind));
        host[k] = unmask(list[k]);
    }
    for (int k = n; k < REF_MAX_IO; k++)
        host[k] = NULL;
    return 0;
}

/* Unmasks the op's aux buffer (may be NULL) into *host. */
static int host_aux(float **host, const float *aux, const struct qt_op_desc *d, struct qt_error *e)
{
    if (aux && !is_ref_ptr(aux))
        return qt_err(e, "the aux buffer of a %s op is not in the ref backend's memory",
                      qt_opk_name(d->kind));
    *host = unmask(aux);
    return 0;
}

static int ref_supports(struct qt_backend *b, const struct qt_op_desc *d)
{
    return d->kind > QT_K_NONE && d->kind < QT_K_COUNT;
}

static int64_t ref_workspace(struct qt_backend *b, const struct qt_op_desc *d)
{
    return 0;
}

/* Forward of a quantizer (host pointers); stats receives what the backward needs (weights: mu
 * and sigma, or the 8-bit scale), or goes to scratch when NULL. */
static int fwd_quant(const struct qt_quant_desc *q, float *y, float *const *in, float *stats,
                     struct qt_error *e)
{
    float tmp[2];
    if (!stats) stats = tmp;
    if (q->int8) {
        quant_int8_weight_forward_ref(y, stats, in[0], q->int8 == 2, q->n);
        return 0;
    }
    if (qt_quant_check_alpha(q, in[1], e)) return -1;
    if (q->weight)
        quant_weight_forward_ref(y, stats, stats + 1, in[0], in[1], q->nalpha, q->standardize,
                                 &q->qz, q->n);
    else
        quant_act_forward_ref(y, in[0], in[1], &q->qz, q->n);
    return 0;
}

static int conv_failed(const struct qt_conv2d_desc *c, struct qt_error *e)
{
    return qt_err(e, "convolution with %d groups over %d input and %d output channels", c->group,
                  c->c, c->k);
}

/* forward on host pointers. */
static int forward_host(const struct qt_op_desc *d, float *const *in, float *const *out,
                        struct qt_error *e)
{
    float *y = out[0];
    const float *x = in[0];
    switch (d->kind) {
    case QT_K_CONV:
        if (conv2d_forward_ref(y, x, in[1], d->has_bias ? in[2] : NULL, &d->u.conv))
            return conv_failed(&d->u.conv, e);
        return 0;
    case QT_K_MAXPOOL:
        maxpool2d_forward_ref(y, x, &d->u.conv);
        return 0;
    case QT_K_AVGPOOL:
        avgpool2d_forward_ref(y, x, &d->u.conv, d->count_include_pad);
        return 0;
    case QT_K_GAP:
        global_avgpool_forward_ref(y, x, d->u.ax.outer, d->u.ax.mid);
        return 0;
    case QT_K_BATCHNORM: {
        const struct qt_bn_desc *bn = &d->u.bn;
        batchnorm_infer_forward_ref(y, x, in[1], in[2], in[3], in[4], bn->eps, bn->n, bn->c,
                                    bn->hw);
        /* Outputs 1 and 2 (when wanted) are copies of the running mean and variance. */
        for (int k = 1; k < d->nout && k < 3; k++)
            if (out[k]) copy_forward_ref(out[k], in[k + 2], bn->c);
        return 0;
    }
    case QT_K_RELU:
        relu_forward_ref(y, x, d->numel);
        return 0;
    case QT_K_CLIP:
        clip_forward_ref(y, x, d->u.clip[0], d->u.clip[1], d->numel);
        return 0;
    case QT_K_BINARY:
        binary_forward_ref(y, x, in[1], &d->u.bin);
        return 0;
    case QT_K_GEMM:
        gemm_forward_ref(y, x, in[1], d->u.gemm.has_c ? in[2] : NULL, &d->u.gemm);
        return 0;
    case QT_K_MATMUL:
        matmul_forward_ref(y, x, in[1], &d->u.mm);
        return 0;
    case QT_K_SOFTMAX:
        softmax_forward_ref(y, x, d->u.ax.outer, d->u.ax.mid, d->u.ax.inner);
        return 0;
    case QT_K_REDUCE_MEAN:
        reduce_mean_forward_ref(y, x, &d->u.red);
        return 0;
    case QT_K_WEIGHTQUANT:
    case QT_K_ACTQUANT:
        return fwd_quant(&d->u.q, y, in, NULL, e);
    case QT_K_COPY:
        if (y != x) copy_forward_ref(y, x, d->numel);
        return 0;
    case QT_K_TRANSPOSE:
        transpose_forward_ref(y, x, &d->u.tr);
        return 0;
    case QT_K_PAD:
        pad_forward_ref(y, x, &d->u.pad);
        return 0;
    case QT_K_SIGMOID:
        sigmoid_forward_ref(y, x, d->numel);
        return 0;
    case QT_K_LOGSOFTMAX:
        logsoftmax_forward_ref(y, x, d->u.ax.outer, d->u.ax.mid, d->u.ax.inner);
        return 0;
    case QT_K_BITQUANT:
        bitquant_forward_ref(y, x, in[1], in[2], d->u.bq.N, d->u.bq.n);
        return 0;
    default:
        return qt_err(e, "the ref backend has no %s op", qt_opk_name(d->kind));
    }
}

static int ref_forward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                       float *const *out, float *ws, struct qt_error *e)
{
    float *hin[REF_MAX_IO], *hout[REF_MAX_IO];
    if (host_list(hin, in, d->nin, "input", d, e) ||
        host_list(hout, (const float *const *)out, d->nout, "output", d, e))
        return -1;
    return forward_host(d, hin, hout, e);
}

/* ---- Training ---- */

/* The CPU backend's: BatchNorm keeps its batch mean and inverse std (c floats each), a weight
 * quantizer the mean and std of the weights (or the 8-bit scale in the first float). */
static int64_t ref_aux_floats(struct qt_backend *b, const struct qt_op_desc *d)
{
    if (d->kind == QT_K_WEIGHTQUANT) return 2;
    return d->kind == QT_K_BATCHNORM ? 2 * d->u.bn.c : 0;
}

static int ref_forward_train(struct qt_backend *b, const struct qt_op_desc *d,
                             const float *const *in, float *const *out, float *aux, float *ws,
                             struct qt_error *e)
{
    float *hin[REF_MAX_IO], *hout[REF_MAX_IO], *haux = NULL;
    if (host_list(hin, in, d->nin, "input", d, e) ||
        host_list(hout, (const float *const *)out, d->nout, "output", d, e) ||
        host_aux(&haux, aux, d, e))
        return -1;
    if (d->kind == QT_K_WEIGHTQUANT) return fwd_quant(&d->u.q, hout[0], hin, haux, e);
    if (d->kind != QT_K_BATCHNORM) return forward_host(d, hin, hout, e);
    const struct qt_bn_desc *bn = &d->u.bn;
    if (d->nout > 1) return qt_err(e, "training with several BatchNorm outputs is not supported");
    /* Batch statistics; the running statistics (inputs 3 and 4) are updated in place. */
    batchnorm_train_forward_ref(hout[0], haux, haux + bn->c, hin[3], hin[4], hin[0], hin[1], hin[2],
                                bn->eps, bn->momentum, bn->n, bn->c, bn->hw);
    return 0;
}

static int ref_backward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                        const float *const *out, const float *const *dout, float *const *din,
                        const int *acc, const float *aux, float *ws, struct qt_error *e)
{
    float *hin[REF_MAX_IO], *hout[REF_MAX_IO], *hdout[REF_MAX_IO], *hdin[REF_MAX_IO], *haux = NULL;
    if (host_list(hin, in, d->nin, "input", d, e) ||
        host_list(hout, out, d->nout, "output", d, e) ||
        host_list(hdout, dout, d->nout, "output gradient", d, e) ||
        host_list(hdin, (const float *const *)din, d->nin, "input gradient", d, e) ||
        host_aux(&haux, aux, d, e))
        return -1;
    const float *x = hin[0], *dy = hdout[0];
    float *dx = hdin[0];
    if (!dy) return 0;
    switch (d->kind) {
    case QT_K_CONV:
        if (conv2d_backward_ref(dx, hdin[1], d->has_bias ? hdin[2] : NULL, dy, x, hin[1],
                                &d->u.conv, acc[0], d->nin > 1 ? acc[1] : 0,
                                d->has_bias ? acc[2] : 0))
            return conv_failed(&d->u.conv, e);
        return 0;
    case QT_K_MAXPOOL:
        if (dx) maxpool2d_backward_ref(dx, dy, x, &d->u.conv, acc[0]);
        return 0;
    case QT_K_AVGPOOL:
        if (dx) avgpool2d_backward_ref(dx, dy, &d->u.conv, d->count_include_pad, acc[0]);
        return 0;
    case QT_K_GAP:
        if (dx) global_avgpool_backward_ref(dx, dy, d->u.ax.outer, d->u.ax.mid, acc[0]);
        return 0;
    case QT_K_BATCHNORM: {
        /* Gradients of x, scale and bias; the statistics inputs get none. */
        const struct qt_bn_desc *bn = &d->u.bn;
        batchnorm_backward_ref(dx, hdin[1], hdin[2], dy, x, hin[1], haux, haux + bn->c, bn->n,
                               bn->c, bn->hw, acc[0], acc[1], acc[2]);
        return 0;
    }
    case QT_K_RELU:
        if (dx) relu_backward_ref(dx, dy, hout[0], d->numel, acc[0]);
        return 0;
    case QT_K_CLIP:
        if (d->nin > 1 && (hdin[1] || (d->nin > 2 && hdin[2])))
            return qt_err(e, "gradients of Clip's min and max are not supported");
        if (dx) clip_backward_ref(dx, dy, x, d->u.clip[0], d->u.clip[1], d->numel, acc[0]);
        return 0;
    case QT_K_BINARY:
        if (binary_backward_ref(dx, hdin[1], dy, x, hin[1], &d->u.bin, acc[0], acc[1]))
            return qt_err(e, "out of memory in the backward of a broadcast %s op",
                          qt_opk_name(d->kind));
        return 0;
    case QT_K_GEMM:
        gemm_backward_ref(dx, hdin[1], d->u.gemm.has_c ? hdin[2] : NULL, dy, x, hin[1], &d->u.gemm,
                          acc[0], acc[1], d->u.gemm.has_c ? acc[2] : 0);
        return 0;
    case QT_K_MATMUL:
        matmul_backward_ref(dx, hdin[1], dy, x, hin[1], &d->u.mm, acc[0], acc[1]);
        return 0;
    case QT_K_SOFTMAX:
        if (dx)
            softmax_backward_ref(dx, dy, hout[0], d->u.ax.outer, d->u.ax.mid, d->u.ax.inner,
                                 acc[0]);
        return 0;
    case QT_K_REDUCE_MEAN:
        if (dx) reduce_mean_backward_ref(dx, dy, &d->u.red, acc[0]);
        return 0;
    case QT_K_WEIGHTQUANT:
    case QT_K_ACTQUANT: {
        const struct qt_quant_desc *q = &d->u.q;
        float *dalpha = d->nin > 1 ? hdin[1] : NULL;
        if (q->int8) {
            if (dx) quant_int8_weight_backward_ref(dx, dy, q->n, acc[0]);
            return 0;
        }
        if (qt_quant_check_alpha(q, hin[1], e)) return -1;
        if (q->weight)
            quant_weight_backward_ref(dx, dalpha, dy, x, hin[1], q->nalpha, q->standardize, haux, haux + 1, &q->qz,
                                      q->n, acc[0], acc[1]);
        else
            quant_act_backward_ref(dx, dalpha, dy, x, hin[1], &q->qz, q->n, acc[0], acc[1]);
        return 0;
    }
    case QT_K_COPY:
        if (dx) copy_backward_ref(dx, dy, d->numel, acc[0]);
        return 0;
    case QT_K_TRANSPOSE:
        if (dx) transpose_backward_ref(dx, dy, &d->u.tr, acc[0]);
        return 0;
    case QT_K_PAD:
        if (dx) pad_backward_ref(dx, dy, &d->u.pad, acc[0]);
        return 0;
    case QT_K_SIGMOID:
        if (dx) sigmoid_backward_ref(dx, dy, hout[0], d->numel, acc[0]);
        return 0;
    case QT_K_LOGSOFTMAX:
        if (dx)
            logsoftmax_backward_ref(dx, dy, hout[0], d->u.ax.outer, d->u.ax.mid, d->u.ax.inner,
                                    acc[0]);
        return 0;
    case QT_K_BITQUANT:
        bitquant_backward_ref(dx, hdin[1], hdin[2], dy, x, hin[1], hin[2], d->u.bq.N, d->u.bq.n,
                              acc[0], acc[1], acc[2]);
        return 0;
    default:
        return qt_err(e, "training through a %s op is not supported on the ref backend",
                      qt_opk_name(d->kind));
    }
}

/* The loss: logits and labels are read in ref memory, the statistics written there. */
static int ref_xent(struct qt_backend *b, float *dlogits, double *stats, const float *logits,
                    const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale,
                    struct qt_error *e)
{
    if (!is_ref_ptr(stats) || !is_ref_ptr(logits) || !is_ref_ptr(labels) ||
        (dlogits && !is_ref_ptr(dlogits)))
        return qt_err(e, "the loss got a buffer outside the ref backend's memory");
    const int32_t *lab = unmask(labels);
    for (int64_t i = 0; i < n; i++)
        if (lab[i] < 0 || lab[i] >= k)
            return qt_err(e, "label %d of row %lld is outside the %lld classes", (int)lab[i],
                          (long long)i, (long long)k);
    softmax_xent_ref(unmask(dlogits), unmask(stats), unmask(logits), lab, n, k, smoothing, scale);
    return 0;
}

/* One SGD step per parameter with a gradient (the descriptors are host memory, the buffers
 * they point to ref memory). */
static int ref_sgd_step(struct qt_backend *b, const struct qt_sgd_desc *d,
                        const struct qt_sgd_param *p, int np, struct qt_error *e)
{
    for (int i = 0; i < np; i++) {
        if (!p[i].grad) continue;
        if (!is_ref_ptr(p[i].p) || !is_ref_ptr(p[i].grad) ||
            (d->momentum != 0.0f && !is_ref_ptr(p[i].buf)))
            return qt_err(e, "parameter %d of the SGD step is outside the ref backend's memory", i);
        struct qt_psgd_grid grid;
        if (p[i].psgd_range) {
            if (!is_ref_ptr(p[i].psgd_range))
                return qt_err(e, "the PSGD range of parameter %d is outside the ref backend's memory", i);
            if (qt_sgd_psgd_check(&p[i], i, e)) return -1;
            grid.delta = psgd_range_ref(unmask(p[i].psgd_range), unmask(p[i].p), p[i].n,
                                        p[i].psgd_first, p[i].psgd_levels);
            grid.L = (float)p[i].psgd_levels;
            grid.lambda = p[i].psgd_lambda;
        }
        sgd_update_ref(unmask(p[i].p), unmask(p[i].buf), unmask(p[i].grad), p[i].n, p[i].lr,
                       d->momentum, p[i].wd, d->nesterov, p[i].first,
                       p[i].psgd_range ? &grid : NULL,
                       p[i].clamp ? (const float[2]){p[i].clamp_lo, p[i].clamp_hi} : NULL);
    }
    return 0;
}

static int ref_bit_lasso(struct qt_backend *b, float *dp, float *dn, const float *p,
                         const float *n, int N, int64_t cnt, float coef, struct qt_error *e)
{
    if (!is_ref_ptr(dp) || !is_ref_ptr(dn) || !is_ref_ptr(p) || !is_ref_ptr(n))
        return qt_err(e, "bit_lasso: a buffer is outside the ref backend's memory");
    bitquant_lasso_ref(unmask(dp), unmask(dn), unmask(p), unmask(n), N, cnt, coef);
    return 0;
}

static int ref_subsample(struct qt_backend *b, float *out, int64_t m, const float *x, int64_t n,
                         struct qt_error *e)
{
    if (!is_ref_ptr(out) || !is_ref_ptr(x))
        return qt_err(e, "subsample: a buffer is outside the ref backend's memory");
    quant_subsample_ref(unmask(out), m, unmask(x), n);
    return 0;
}

static int ref_alpha_search(struct qt_backend *b, float *alpha, const float *x, int64_t n,
                            const struct qt_apot_quantizer *qz, struct qt_error *e)
{
    if (!is_ref_ptr(alpha) || !is_ref_ptr(x))
        return qt_err(e, "alpha search: a buffer is outside the ref backend's memory");
    *(float *)unmask(alpha) = quant_alpha_search_ref(unmask(x), n, qz);
    return 0;
}

static int ref_channel_moments(struct qt_backend *b, double *s1, double *s2, const float *x,
                               int64_t n, int64_t c, int64_t hw, struct qt_error *e)
{
    if (!is_ref_ptr(s1) || !is_ref_ptr(s2) || !is_ref_ptr(x))
        return qt_err(e, "channel moments: a buffer is outside the ref backend's memory");
    channel_moments_ref(unmask(s1), unmask(s2), unmask(x), n, c, hw);
    return 0;
}

static int ref_range_max(struct qt_backend *b, float *m, const float *x, int64_t n, int is_signed,
                         struct qt_error *e)
{
    (void)b;
    if (!is_ref_ptr(m) || !is_ref_ptr(x))
        return qt_err(e, "range max: a buffer is outside the ref backend's memory");
    quant_range_max_ref(unmask(m), unmask(x), n, is_signed);
    return 0;
}

static int ref_alpha_percentile(struct qt_backend *b, float *alpha, float *x, int64_t n, double p,
                                int is_signed, struct qt_error *e)
{
    (void)b;
    if (!is_ref_ptr(alpha) || !is_ref_ptr(x))
        return qt_err(e, "alpha percentile: a buffer is outside the ref backend's memory");
    const float a = quant_alpha_percentile_ref(unmask(x), n, p, is_signed);
    if (a != a) return qt_err(e, "alpha percentile: out of memory for %lld values", (long long)n);
    *(float *)unmask(alpha) = a;
    return 0;
}

static int ref_sync(struct qt_backend *b, struct qt_error *e)
{
    return 0;
}

static void ref_destroy(struct qt_backend *b)
{
    if (!b) return;
    free(b->impl);
    free(b);
}

struct qt_backend *qt_backend_ref_new(void)
{
    struct qt_backend *b = calloc(1, sizeof *b);
    struct ref_state *s = calloc(1, sizeof *s);
    if (!b || !s) {
        free(b);
        free(s);
        return NULL;
    }
    b->impl = s;
    b->name = "ref";
    b->alloc = ref_alloc;
    b->release = ref_release;
    b->upload = ref_upload;
    b->download = ref_download;
    b->supports = ref_supports;
    b->workspace = ref_workspace;
    b->forward = ref_forward;
    b->aux_floats = ref_aux_floats;
    b->forward_train = ref_forward_train;
    b->backward = ref_backward;
    b->xent = ref_xent;
    b->sgd_step = ref_sgd_step;
    b->bit_lasso = ref_bit_lasso;
    b->subsample = ref_subsample;
    b->alpha_search = ref_alpha_search;
    b->channel_moments = ref_channel_moments;
    b->range_max = ref_range_max;
    b->alpha_percentile = ref_alpha_percentile;
    /* No inference fast path: can_fuse, reads_layout, forward_infer and to_plain stay NULL. */
    b->sync = ref_sync;
    b->destroy = ref_destroy;
    return b;
}

int64_t qt_backend_ref_downloads(const struct qt_backend *b)
{
    return b && b->destroy == ref_destroy ? ((const struct ref_state *)b->impl)->downloads : -1;
}

void qt_backend_ref_reset_downloads(struct qt_backend *b)
{
    if (b && b->destroy == ref_destroy) ((struct ref_state *)b->impl)->downloads = 0;
}
