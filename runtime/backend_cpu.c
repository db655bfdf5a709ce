/* The CPU backend: computes op descriptions with the kernels in kernels/cpu (oneDNN
 * convolutions, OpenBLAS, OpenMP loops). Its memory is host memory. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu.h"
#include "../kernels/cpu/quant.h"
#include "backend.h"

static void *cpu_alloc(struct qt_backend *b, size_t bytes)
{
    (void)b;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    return p;
}

static void cpu_release(struct qt_backend *b, void *p)
{
    (void)b;
    free(p);
}

static int cpu_copy(struct qt_backend *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    if (bytes) memmove(dst, src, bytes);
    return 0;
}

static int cpu_supports(struct qt_backend *b, const struct qt_op_desc *d)
{
    (void)b;
    return d->kind > QT_K_NONE && d->kind < QT_K_COUNT;
}

static int64_t cpu_workspace(struct qt_backend *b, const struct qt_op_desc *d)
{
    (void)b;
    (void)d;
    return 0; /* oneDNN's scratch lives in the kernel context */
}

static void fwd_matmul(const struct qt_matmul_desc *d, float *y, const float *a, const float *b)
{
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        gemm_forward_cpu(y + t * d->m * d->n, a + oa, b + ob, NULL, d->m, d->n, d->k, 0, 0, 1.f,
                         0.f, 0, 0);
    }
}

/* Mean over the marked axes, one axis at a time (equal-sized groups: the mean of means is
 * the mean). */
static int fwd_reduce_mean(const struct qt_reduce_desc *r, float *y, const float *x,
                           struct qt_error *e)
{
    int last = -1;
    int64_t total = 1;
    for (int i = 0; i < r->ndim; i++) {
        total *= r->shape[i];
        if (r->red[i]) last = i;
    }
    if (last < 0) {
        memcpy(y, x, sizeof(float) * total);
        return 0;
    }
    int64_t cur[QT_DESC_MAX_DIMS];
    memcpy(cur, r->shape, sizeof cur);
    const float *src = x;
    float *tmp = NULL;
    for (int ax = 0; ax < r->ndim; ax++) {
        if (!r->red[ax]) continue;
        int64_t outer = 1, inner = 1;
        for (int i = 0; i < ax; i++)
            outer *= cur[i];
        for (int i = ax + 1; i < r->ndim; i++)
            inner *= cur[i];
        float *dst = ax == last ? y : malloc(sizeof(float) * (outer * inner + 1));
        if (!dst) {
            free(tmp);
            return qt_err(e, "out of memory in a mean over axis %d", ax);
        }
        reduce_mean_forward_cpu(dst, src, outer, cur[ax], inner);
        cur[ax] = 1;
        free(tmp);
        tmp = ax == last ? NULL : dst;
        src = dst;
    }
    return 0;
}

/* Forward of a quantizer; stats (2 floats: mean and std of the weights, or 1: the 8-bit
 * scale) receives what the backward needs, or scratch when NULL. */
static int fwd_quant(const struct qt_quant_desc *q, float *y, const float *const *in, float *stats,
                     struct qt_error *e)
{
    float tmp[2];
    if (!stats) stats = tmp;
    if (q->int8) {
        quant_int8_weight_forward_cpu(y, stats, in[0], q->int8 == 2, q->n);
        return 0;
    }
    if (qt_quant_check_alpha(q, in[1], e)) return -1;
    if (!q->weight)
        quant_act_forward_cpu(y, in[0], in[1], &q->qz, q->n);
    else
        quant_weight_forward_cpu(y, stats, stats + 1, in[0], in[1], q->nalpha, q->standardize,
                                 &q->qz, q->n);
    return 0;
}

static int bwd_quant(const struct qt_quant_desc *q, const float *const *in, const float *dy,
                     float *dx, float *dalpha, const int *acc, const float *stats,
                     struct qt_error *e)
{
    if (q->int8) {
        if (dx) quant_int8_weight_backward_cpu(dx, dy, q->n, acc[0]);
        return 0;
    }
    if (qt_quant_check_alpha(q, in[1], e)) return -1;
    if (!q->weight)
        quant_act_backward_cpu(dx, dalpha, dy, in[0], in[1], &q->qz, q->n, acc[0], acc[1]);
    else
        quant_weight_backward_cpu(dx, dalpha, dy, in[0], in[1], q->nalpha, q->standardize, stats, stats + 1, &q->qz,
                                  q->n, acc[0], acc[1]);
    return 0;
}

static int cpu_forward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                       float *const *out, float *ws, struct qt_error *e)
{
    (void)ws;
    struct qt_cpu_ctx *ctx = b->impl;
    float *y = out[0];
    const float *x = in[0];
    switch (d->kind) {
    case QT_K_CONV:
        if (conv2d_forward_cpu(ctx, y, x, in[1], d->has_bias ? in[2] : NULL, &d->u.conv))
            return qt_err(e, "%s", qt_cpu_ctx_error(ctx));
        return 0;
    case QT_K_MAXPOOL:
        maxpool2d_forward_cpu(y, x, &d->u.conv);
        return 0;
    case QT_K_AVGPOOL:
        avgpool2d_forward_cpu(y, x, &d->u.conv, d->count_include_pad);
        return 0;
    case QT_K_GAP:
        global_avgpool_forward_cpu(y, x, d->u.ax.outer, d->u.ax.mid);
        return 0;
    case QT_K_BATCHNORM: {
        const struct qt_bn_desc *bn = &d->u.bn;
        batchnorm_infer_forward_cpu(y, x, in[1], in[2], in[3], in[4], bn->eps, bn->n, bn->c,
                                    bn->hw);
        for (int k = 1; k < d->nout && k < 3; k++)
            if (out[k]) memcpy(out[k], in[k + 2], sizeof(float) * bn->c);
        return 0;
    }
    case QT_K_RELU:
        relu_forward_cpu(y, x, d->numel);
        return 0;
    case QT_K_CLIP:
        clip_forward_cpu(y, x, d->u.clip[0], d->u.clip[1], d->numel);
        return 0;
    case QT_K_BINARY: {
        const struct qt_binary_desc *bd = &d->u.bin;
        binary_forward_cpu(y, x, in[1], bd->op, bd->shape, bd->sa, bd->sb, bd->ndim);
        return 0;
    }
    case QT_K_GEMM: {
        const struct qt_gemm_desc *g = &d->u.gemm;
        gemm_forward_cpu(y, x, in[1], g->has_c ? in[2] : NULL, g->m, g->n, g->k, g->ta, g->tb,
                         g->alpha, g->beta, g->c_rs, g->c_cs);
        return 0;
    }
    case QT_K_MATMUL:
        fwd_matmul(&d->u.mm, y, x, in[1]);
        return 0;
    case QT_K_SOFTMAX:
        softmax_forward_cpu(y, x, d->u.ax.outer, d->u.ax.mid, d->u.ax.inner);
        return 0;
    case QT_K_REDUCE_MEAN:
        return fwd_reduce_mean(&d->u.red, y, x, e);
    case QT_K_WEIGHTQUANT:
    case QT_K_ACTQUANT:
        return fwd_quant(&d->u.q, y, in, NULL, e);
    case QT_K_COPY:
        if (y != x) memcpy(y, x, sizeof(float) * d->numel);
        return 0;
    case QT_K_BITQUANT:
        bitquant_forward_cpu(y, x, in[1], in[2], d->u.bq.N, d->u.bq.n);
        return 0;
    case QT_K_TRANSPOSE:
        transpose_forward_cpu(y, x, &d->u.tr);
        return 0;
    case QT_K_PAD:
        pad_forward_cpu(y, x, &d->u.pad);
        return 0;
    case QT_K_SIGMOID:
        sigmoid_forward_cpu(y, x, d->numel);
        return 0;
    case QT_K_LOGSOFTMAX:
        logsoftmax_forward_cpu(y, x, d->u.ax.outer, d->u.ax.mid, d->u.ax.inner);
        return 0;
    default:
        return qt_err(e, "the CPU backend has no %s op", qt_opk_name(d->kind));
    }
}

/* ---- Inference fast path: activations stay in the layouts oneDNN's convolutions choose
 * (enum qt_cpu_layout numbers are the backend's layout numbers) and a Conv computes the Add
 * (of a same-shaped tensor) and Relu ops after it as post-ops. ---- */

/* A Conv computes, in this order: an Add (first only), then Relus. */
static int cpu_can_fuse(struct qt_backend *b, const struct qt_op_desc *head,
                        const struct qt_op_desc *const *post, int npost)
{
    (void)b;
    if (head->kind != QT_K_CONV || npost > QT_MAX_POST) return 0;
    for (int i = 0; i < npost; i++) {
        const struct qt_op_desc *p = post[i];
        if (p->kind == QT_K_RELU) continue;
        if (p->kind == QT_K_BINARY && i == 0 && p->u.bin.op == QT_BIN_ADD && p->u.bin.same_shape)
            continue;
        return 0;
    }
    return 1;
}

static int cpu_reads_layout(struct qt_backend *b, const struct qt_op_desc *d, const int *layout,
                            int k)
{
    (void)b;
    switch (d->kind) {
    case QT_K_CONV:
    case QT_K_RELU:
    case QT_K_CLIP:
    case QT_K_ACTQUANT:
        return k == 0;
    case QT_K_BINARY:
        /* Elementwise over two tensors in one order: any order will do. */
        return d->u.bin.same_shape && layout[0] == layout[1];
    default:
        return 0;
    }
}

static int infer_conv(struct qt_cpu_ctx *ctx, const struct qt_step *s, struct qt_error *e)
{
    const struct qt_op_desc *d = s->d;
    struct qt_conv2d_post post = {NULL, 0, 0};
    for (int i = 0; i < s->npost; i++) {
        const struct qt_post *p = &s->post[i];
        if (p->d->kind == QT_K_RELU) {
            post.relu = 1;
        } else if (!p->d->u.bin.same_shape) {
            return qt_err(e, "the Add fused into it adds a tensor of another shape");
        } else {
            post.sum = p->other;
            post.sum_layout = p->other_layout;
        }
    }
    if (conv2d_infer_cpu(ctx, s->out[0], &s->out_layout[0], s->in[0], s->in_layout[0], s->in[1],
                         d->has_bias ? s->in[2] : NULL, &d->u.conv, &post))
        return qt_err(e, "%s%s", s->npost ? "(with fused ops) " : "", qt_cpu_ctx_error(ctx));
    return 0;
}

static int cpu_forward_infer(struct qt_backend *b, const struct qt_step *s, struct qt_error *e)
{
    const struct qt_op_desc *d = s->d;
    for (int k = 0; k < d->nout; k++)
        s->out_layout[k] = 0;
    if (d->kind == QT_K_CONV) return infer_conv(b->impl, s, e);
    if (s->npost)
        return qt_err(e, "the CPU backend fuses nothing into a %s op", qt_opk_name(d->kind));
    /* Inputs in a layout are those of elementwise ops (cpu_reads_layout), whose plain kernels
     * work in any order shared by their operands. */
    if (cpu_forward(b, d, s->in, s->out, s->ws, e)) return -1;
    if (d->kind == QT_K_RELU || d->kind == QT_K_CLIP || d->kind == QT_K_BINARY ||
        d->kind == QT_K_ACTQUANT)
        s->out_layout[0] = s->in_layout[0];
    return 0;
}

static int cpu_to_plain(struct qt_backend *b, float *dst, const float *src, const int64_t dims[4],
                        int layout, struct qt_error *e)
{
    struct qt_cpu_ctx *ctx = b->impl;
    if (qt_cpu_reorder(ctx, dst, QT_CPU_NCHW, src, layout, dims))
        return qt_err(e, "%s", qt_cpu_ctx_error(ctx));
    return 0;
}

/* ---- Training ---- */

static int64_t cpu_aux_floats(struct qt_backend *b, const struct qt_op_desc *d)
{
    (void)b;
    /* BatchNorm keeps its batch mean and inverse standard deviation; a weight quantizer the
     * mean and standard deviation of the weights (or the 8-bit scale). */
    if (d->kind == QT_K_WEIGHTQUANT) return 2;
    return d->kind == QT_K_BATCHNORM ? 2 * d->u.bn.c : 0;
}

static int cpu_forward_train(struct qt_backend *b, const struct qt_op_desc *d,
                             const float *const *in, float *const *out, float *aux, float *ws,
                             struct qt_error *e)
{
    if (d->kind == QT_K_WEIGHTQUANT) return fwd_quant(&d->u.q, out[0], in, aux, e);
    if (d->kind != QT_K_BATCHNORM) return cpu_forward(b, d, in, out, ws, e);
    const struct qt_bn_desc *bn = &d->u.bn;
    if (d->nout > 1) return qt_err(e, "training with several BatchNorm outputs is not supported");
    /* The running statistics are training state, updated in place (backend buffers). */
    batchnorm_train_forward_cpu(out[0], aux, aux + bn->c, (float *)in[3], (float *)in[4], in[0],
                                in[1], in[2], bn->eps, bn->momentum, bn->n, bn->c, bn->hw);
    return 0;
}

/* MatMul backward over the broadcast batch: each batch's product contributes to the slices
 * of A and B it read, so the gradients are cleared (unless accumulating) and then summed. */
static void bwd_matmul(const struct qt_matmul_desc *d, const float *a, const float *b,
                       const float *dy, float *da, float *db, int acc_a, int acc_b)
{
    if (da && !acc_a) memset(da, 0, sizeof(float) * d->na);
    if (db && !acc_b) memset(db, 0, sizeof(float) * d->nb);
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        gemm_backward_cpu(da ? da + oa : NULL, db ? db + ob : NULL, NULL, dy + t * d->m * d->n,
                          a + oa, b + ob, d->m, d->n, d->k, 0, 0, 1.f, 0.f, 0, 0, 0, 0, 1, 1, 0);
    }
}

static int cpu_backward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                        const float *const *out, const float *const *dout, float *const *din,
                        const int *acc, const float *aux, float *ws, struct qt_error *e)
{
    (void)ws;
    struct qt_cpu_ctx *ctx = b->impl;
    const float *x = in[0], *dy = dout[0];
    float *dx = din[0];
    if (!dy) return 0;
    switch (d->kind) {
    case QT_K_CONV:
        if (conv2d_backward_cpu(ctx, dx, din[1], d->has_bias ? din[2] : NULL, dy, x, in[1],
                                &d->u.conv, acc[0], acc[1], d->has_bias ? acc[2] : 0))
            return qt_err(e, "%s", qt_cpu_ctx_error(ctx));
        return 0;
    case QT_K_BATCHNORM: {
        const struct qt_bn_desc *bn = &d->u.bn;
        batchnorm_backward_cpu(dx, din[1], din[2], dy, x, in[1], aux, aux + bn->c, bn->n, bn->c,
                               bn->hw, acc[0], acc[1], acc[2]);
        return 0;
    }
    case QT_K_RELU:
        if (dx) relu_backward_cpu(dx, dy, out[0], d->numel, acc[0]);
        return 0;
    case QT_K_CLIP:
        if (d->nin > 1 && (din[1] || (d->nin > 2 && din[2])))
            return qt_err(e, "gradients of Clip's min and max are not supported");
        if (dx) clip_backward_cpu(dx, dy, x, d->u.clip[0], d->u.clip[1], d->numel, acc[0]);
        return 0;
    case QT_K_BINARY: {
        const struct qt_binary_desc *bd = &d->u.bin;
        binary_backward_cpu(dx, din[1], dy, x, in[1], bd->op, bd->shape, bd->sa, bd->sb, bd->ndim,
                            acc[0], acc[1]);
        return 0;
    }
    case QT_K_MAXPOOL:
        if (dx) maxpool2d_backward_cpu(dx, dy, x, &d->u.conv, acc[0]);
        return 0;
    case QT_K_AVGPOOL:
        if (dx) avgpool2d_backward_cpu(dx, dy, &d->u.conv, d->count_include_pad, acc[0]);
        return 0;
    case QT_K_GAP:
        if (dx) global_avgpool_backward_cpu(dx, dy, d->u.ax.outer, d->u.ax.mid, acc[0]);
        return 0;
    case QT_K_GEMM: {
        const struct qt_gemm_desc *g = &d->u.gemm;
        gemm_backward_cpu(dx, din[1], g->has_c ? din[2] : NULL, dy, x, in[1], g->m, g->n, g->k,
                          g->ta, g->tb, g->alpha, g->beta, g->c_rs, g->c_cs, g->c_rows, g->c_cols,
                          acc[0], acc[1], g->has_c ? acc[2] : 0);
        return 0;
    }
    case QT_K_MATMUL:
        bwd_matmul(&d->u.mm, x, in[1], dy, dx, din[1], acc[0], acc[1]);
        return 0;
    case QT_K_WEIGHTQUANT:
    case QT_K_ACTQUANT:
        return bwd_quant(&d->u.q, in, dy, dx, d->nin > 1 ? din[1] : NULL, acc, aux, e);
    case QT_K_BITQUANT:
        bitquant_backward_cpu(dx, din[1], din[2], dy, x, in[1], in[2], d->u.bq.N, d->u.bq.n,
                              acc[0], acc[1], acc[2]);
        return 0;
    case QT_K_TRANSPOSE:
        if (dx) transpose_backward_cpu(dx, dy, &d->u.tr, acc[0]);
        return 0;
    case QT_K_PAD:
        if (dx) pad_backward_cpu(dx, dy, &d->u.pad, acc[0]);
        return 0;
    case QT_K_SOFTMAX:
        if (dx)
            softmax_backward_cpu(dx, dy, out[0], d->u.ax.outer, d->u.ax.mid, d->u.ax.inner, acc[0]);
        return 0;
    case QT_K_REDUCE_MEAN:
        if (dx) reduce_mean_backward_cpu(dx, dy, &d->u.red, acc[0]);
        return 0;
    case QT_K_SIGMOID:
        if (dx) sigmoid_backward_cpu(dx, dy, out[0], d->numel, acc[0]);
        return 0;
    case QT_K_LOGSOFTMAX:
        if (dx)
            logsoftmax_backward_cpu(dx, dy, out[0], d->u.ax.outer, d->u.ax.mid, d->u.ax.inner,
                                    acc[0]);
        return 0;
    case QT_K_COPY:
        if (!dx) return 0;
        if (acc[0])
            for (int64_t i = 0; i < d->numel; i++)
                dx[i] += dy[i];
        else
            memcpy(dx, dy, sizeof(float) * d->numel);
        return 0;
    default:
        return qt_err(e, "training through a %s op is not supported on the CPU backend",
                      qt_opk_name(d->kind));
    }
}

static int cpu_xent(struct qt_backend *b, float *dlogits, double *stats, const float *logits,
                    const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale,
                    struct qt_error *e)
{
    (void)b;
    (void)e;
    softmax_xent_cpu(dlogits, stats, logits, labels, n, k, smoothing, scale);
    return 0;
}

static int cpu_sgd_step(struct qt_backend *b, const struct qt_sgd_desc *d,
                        const struct qt_sgd_param *p, int np, struct qt_error *e)
{
    (void)b;
    for (int i = 0; i < np; i++) {
        if (!p[i].grad) continue;
        struct qt_psgd_grid grid;
        if (p[i].psgd_range) {
            if (qt_sgd_psgd_check(&p[i], i, e)) return -1;
            grid.delta = psgd_range_cpu(p[i].psgd_range, p[i].p, p[i].n, p[i].psgd_first,
                                        p[i].psgd_levels);
            grid.L = (float)p[i].psgd_levels;
            grid.lambda = p[i].psgd_lambda;
        }
        sgd_update_cpu(p[i].p, p[i].buf, p[i].grad, p[i].n, p[i].lr, d->momentum, p[i].wd,
                       d->nesterov, p[i].first, p[i].psgd_range ? &grid : NULL,
                       p[i].clamp ? (const float[2]){p[i].clamp_lo, p[i].clamp_hi} : NULL);
    }
    return 0;
}

static int cpu_bit_lasso(struct qt_backend *b, float *dp, float *dn, const float *p,
                         const float *n, int N, int64_t cnt, float coef, struct qt_error *e)
{
    (void)b;
    (void)e;
    bitquant_lasso_cpu(dp, dn, p, n, N, cnt, coef);
    return 0;
}

static int cpu_subsample(struct qt_backend *b, float *out, int64_t m, const float *x, int64_t n,
                         struct qt_error *e)
{
    quant_subsample_cpu(out, m, x, n);
    return 0;
}

static int cpu_alpha_search(struct qt_backend *b, float *alpha, const float *x, int64_t n,
                            const struct qt_apot_quantizer *qz, struct qt_error *e)
{
    *alpha = quant_alpha_mse_cpu(x, n, qz);
    return 0;
}

static int cpu_channel_moments(struct qt_backend *b, double *s1, double *s2, const float *x,
                               int64_t n, int64_t c, int64_t hw, struct qt_error *e)
{
    channel_moments_cpu(s1, s2, x, n, c, hw);
    return 0;
}

static int cpu_range_max(struct qt_backend *b, float *m, const float *x, int64_t n, int is_signed,
                         struct qt_error *e)
{
    (void)b;
    (void)e;
    quant_range_max_cpu(m, x, n, is_signed);
    return 0;
}

static int cpu_alpha_percentile(struct qt_backend *b, float *alpha, float *x, int64_t n, double p,
                                int is_signed, struct qt_error *e)
{
    (void)b;
    (void)e;
    *alpha = quant_alpha_percentile_cpu(x, n, p, is_signed);
    return 0;
}

static int cpu_sync(struct qt_backend *b, struct qt_error *e)
{
    (void)b;
    (void)e;
    return 0;
}

static void cpu_destroy(struct qt_backend *b)
{
    if (!b) return;
    qt_cpu_ctx_free(b->impl);
    free(b);
}

/* NULL when the kernel context (oneDNN's engine and stream) cannot be created. */
struct qt_backend *qt_backend_cpu_new(int threads)
{
    struct qt_backend *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->impl = qt_cpu_ctx_new(NULL, 0);
    if (!b->impl) {
        free(b);
        return NULL;
    }
    if (threads > 0) omp_set_num_threads(threads);
    b->name = "cpu";
    b->alloc = cpu_alloc;
    b->release = cpu_release;
    b->upload = cpu_copy;
    b->download = cpu_copy;
    b->supports = cpu_supports;
    b->workspace = cpu_workspace;
    b->forward = cpu_forward;
    b->aux_floats = cpu_aux_floats;
    b->forward_train = cpu_forward_train;
    b->backward = cpu_backward;
    b->xent = cpu_xent;
    b->sgd_step = cpu_sgd_step;
    b->bit_lasso = cpu_bit_lasso;
    b->subsample = cpu_subsample;
    b->alpha_search = cpu_alpha_search;
    b->channel_moments = cpu_channel_moments;
    b->range_max = cpu_range_max;
    b->alpha_percentile = cpu_alpha_percentile;
    b->can_fuse = cpu_can_fuse;
    b->reads_layout = cpu_reads_layout;
    b->forward_infer = cpu_forward_infer;
    b->to_plain = cpu_to_plain;
    b->sync = cpu_sync;
    b->destroy = cpu_destroy;
    return b;
}
