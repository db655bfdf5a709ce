/* The CPU backend: translates graph nodes into calls of the kernels in kernels/cpu. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "../kernels/cpu/cpu.h"
#include "../kernels/cpu/quant.h"
#include "backend.h"
#include "quantizer.h"

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
    memcpy(dst, src, bytes);
    return 0;
}

static int cpu_supports(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_tensor **in)
{
    (void)b;
    (void)g;
    switch (n->op) {
    case QT_OP_CONV: case QT_OP_BATCHNORM: case QT_OP_RELU: case QT_OP_CLIP:
    case QT_OP_MAXPOOL: case QT_OP_AVGPOOL: case QT_OP_GLOBALAVGPOOL: case QT_OP_GEMM:
    case QT_OP_MATMUL: case QT_OP_SOFTMAX: case QT_OP_REDUCEMEAN: case QT_OP_WEIGHTQUANT:
    case QT_OP_ACTQUANT:
        return 1;
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV:
        return in[0]->dtype == QT_F32;
    default:
        return 0;
    }
}

/* 1-D and 2-D window geometry as a 2-D descriptor. */
static int window_desc(struct qt_conv2d_desc *d, const struct qt_conv_attrs *a,
                       const struct qt_shape *x, const struct qt_shape *y, const struct qt_node *n,
                       struct qt_error *e)
{
    if (a->nsp > 2)
        return qt_err(e, "%s node '%s': %d-D windows are not supported on the CPU backend",
                      qt_op_name(n->op), n->name, a->nsp);
    int two = a->nsp == 2;
    memset(d, 0, sizeof *d);
    d->n = (int)x->d[0];
    d->c = (int)x->d[1];
    d->h = two ? (int)x->d[2] : 1;
    d->w = (int)x->d[two ? 3 : 2];
    d->k = (int)y->d[1];
    d->oh = two ? (int)y->d[2] : 1;
    d->ow = (int)y->d[two ? 3 : 2];
    d->kh = two ? (int)a->kernel[0] : 1;
    d->kw = (int)a->kernel[two ? 1 : 0];
    d->sh = two ? (int)a->stride[0] : 1;
    d->sw = (int)a->stride[two ? 1 : 0];
    d->dh = two ? (int)a->dilation[0] : 1;
    d->dw = (int)a->dilation[two ? 1 : 0];
    d->pt = two ? (int)a->pad_begin[0] : 0;
    d->pb = two ? (int)a->pad_end[0] : 0;
    d->pl = (int)a->pad_begin[two ? 1 : 0];
    d->pr = (int)a->pad_end[two ? 1 : 0];
    d->group = (int)a->group;
    return 0;
}

/* No kernel needs scratch from the executor (oneDNN's lives in the kernel context). */
static int64_t cpu_workspace(struct qt_backend *b, const struct qt_graph *g,
                             const struct qt_node *n, const struct qt_tensor **in,
                             struct qt_tensor **out)
{
    (void)b;
    (void)g;
    (void)n;
    (void)in;
    (void)out;
    return 0;
}

static void strides_over(int64_t *st, const struct qt_shape *s, const struct qt_shape *o)
{
    int64_t acc = 1;
    for (int i = o->ndim - 1; i >= 0; i--) {
        int k = i - (o->ndim - s->ndim);
        if (k < 0 || s->d[k] == 1) st[i] = 0;
        else {
            st[i] = acc;
            acc *= s->d[k];
        }
    }
}

/* MatMul as a batch of [m,k] x [k,n] products: 1-D operands promoted as numpy does, batch
 * dimensions broadcast; matmul_offsets gives the matrices product t reads. */
struct matmul_geom {
    int64_t m, k, n, batches;
    struct qt_shape ob;
    int64_t sa[QT_MAX_DIMS], sb[QT_MAX_DIMS];
};

static void matmul_geom(struct matmul_geom *mg, const struct qt_tensor *a, const struct qt_tensor *b)
{
    struct qt_shape as = a->shape, bs = b->shape;
    if (as.ndim == 1) {
        as.ndim = 2;
        as.d[1] = as.d[0];
        as.d[0] = 1;
    }
    if (bs.ndim == 1) {
        bs.ndim = 2;
        bs.d[1] = 1;
    }
    mg->m = as.d[as.ndim - 2];
    mg->k = as.d[as.ndim - 1];
    mg->n = bs.d[bs.ndim - 1];
    struct qt_shape ab = as, bb = bs;
    ab.ndim -= 2;
    bb.ndim -= 2;
    qt_broadcast_shape(&mg->ob, &ab, &bb);
    strides_over(mg->sa, &ab, &mg->ob);
    strides_over(mg->sb, &bb, &mg->ob);
    mg->batches = qt_shape_numel(&mg->ob);
}

/* Element offsets of the A and B matrices read by product t. */
static void matmul_offsets(const struct matmul_geom *mg, int64_t t, int64_t *oa, int64_t *ob)
{
    int64_t ia = 0, ib = 0;
    for (int d = mg->ob.ndim - 1; d >= 0; d--) {
        int64_t i = t % mg->ob.d[d];
        t /= mg->ob.d[d];
        ia += i * mg->sa[d];
        ib += i * mg->sb[d];
    }
    *oa = ia * mg->m * mg->k;
    *ob = ib * mg->k * mg->n;
}

/* Clip's bounds: attributes before opset 11, optional scalar inputs from then on. */
static void clip_bounds(const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_tensor **in, float *lo, float *hi)
{
    *lo = -INFINITY;
    *hi = INFINITY;
    if (g->opset < 11) {
        *lo = qt_node_float(n, "min", *lo);
        *hi = qt_node_float(n, "max", *hi);
    } else {
        if (n->nin > 1 && in[1]) *lo = (float)qt_tensor_get_f(in[1], 0);
        if (n->nin > 2 && in[2]) *hi = (float)qt_tensor_get_f(in[2], 0);
    }
}

static enum qt_binop binop_of(enum qt_op op)
{
    return op == QT_OP_ADD ? QT_BIN_ADD : op == QT_OP_SUB ? QT_BIN_SUB
           : op == QT_OP_MUL ? QT_BIN_MUL : QT_BIN_DIV;
}

/* Gemm's C operand as a [rows, cols] matrix broadcast to [M, N] by strides (0 where it
 * broadcasts): a scalar, a row of N, or a matrix; all zero when C is absent. */
struct gemm_c {
    int64_t rs, cs, rows, cols;
};

static struct gemm_c gemm_c_of(const struct qt_tensor *c)
{
    struct gemm_c r = {0, 0, 1, 1};
    if (c && c->shape.ndim == 2) {
        r.rows = c->shape.d[0];
        r.cols = c->shape.d[1];
    } else if (c && c->shape.ndim == 1) {
        r.cols = c->shape.d[0];
    }
    r.rs = r.rows == 1 ? 0 : r.cols;
    r.cs = r.cols == 1 ? 0 : 1;
    return r;
}

static int fwd_matmul(const struct qt_tensor *a, const struct qt_tensor *b, struct qt_tensor *y)
{
    struct matmul_geom mg;
    matmul_geom(&mg, a, b);
    for (int64_t t = 0; t < mg.batches; t++) {
        int64_t oa, ob;
        matmul_offsets(&mg, t, &oa, &ob);
        gemm_forward_cpu((float *)y->data + t * mg.m * mg.n, (const float *)a->data + oa,
                         (const float *)b->data + ob, NULL, mg.m, mg.n, mg.k, 0, 0, 1.f, 0.f, 0, 0);
    }
    return 0;
}

static int fwd_reduce_mean(const struct qt_node *n, const struct qt_tensor *x, struct qt_tensor *y,
                           const struct qt_tensor *axes_t)
{
    int r = x->shape.ndim;
    int64_t axes[QT_MAX_DIMS];
    int na = qt_node_ints(n, "axes", axes, QT_MAX_DIMS);
    if (na < 0) {
        na = 0;
        if (axes_t)
            for (int64_t i = 0; i < qt_shape_numel(&axes_t->shape); i++)
                axes[na++] = qt_tensor_get_i(axes_t, i);
    }
    char red[QT_MAX_DIMS] = {0};
    if (na == 0) {
        if (qt_node_int(n, "noop_with_empty_axes", 0)) {
            memcpy(y->data, x->data, x->nbytes);
            return 0;
        }
        for (int i = 0; i < r; i++) red[i] = 1;
    }
    for (int i = 0; i < na; i++) red[axes[i] < 0 ? axes[i] + r : axes[i]] = 1;
    /* Reduce one axis at a time (equal-sized groups: the mean of means is the mean). */
    struct qt_shape cur = x->shape;
    const float *src = x->data;
    float *tmp = NULL;
    int last = -1;
    for (int i = 0; i < r; i++) if (red[i]) last = i;
    for (int ax = 0; ax < r; ax++) {
        if (!red[ax]) continue;
        int64_t outer = 1, inner = 1;
        for (int i = 0; i < ax; i++) outer *= cur.d[i];
        for (int i = ax + 1; i < r; i++) inner *= cur.d[i];
        float *dst = ax == last ? (float *)y->data : malloc(sizeof(float) * (outer * inner + 1));
        reduce_mean_forward_cpu(dst, src, outer, cur.d[ax], inner);
        cur.d[ax] = 1;
        free(tmp);
        tmp = ax == last ? NULL : dst;
        src = dst;
    }
    if (last < 0) memcpy(y->data, x->data, x->nbytes);
    return 0;
}

/* ---- Fake-quantizers (WeightQuant, ActQuant) ---- */

struct quant_call {
    struct qt_quant_attrs a;
    struct qt_apot_quantizer qz;
    const float *alpha; /* NULL for the max / absmax 8-bit weights */
    int64_t nalpha, n;
};

/* Reads a quantizer node's settings and checks its alpha (positive and finite). */
static int quant_setup(struct quant_call *q, const struct qt_graph *g, const struct qt_node *n, const struct qt_tensor **in,
                       struct qt_error *e)
{
    if (qt_quantizer_from_node(&q->a, &q->qz, n, e)) return -1;
    q->n = qt_shape_numel(&in[0]->shape);
    q->alpha = NULL;
    q->nalpha = 0;
    if (q->a.scheme >= QT_QS_MAX) return 0;
    q->alpha = in[1]->data;
    q->nalpha = qt_shape_numel(&in[1]->shape);
    if (q->nalpha < 1 || q->n % q->nalpha)
        return qt_err(e, "%s node '%s': %lld alphas do not divide %lld elements", qt_op_name(n->op),
                      n->name, (long long)q->nalpha, (long long)q->n);
    for (int64_t k = 0; k < q->nalpha; k++)
        if (!(q->alpha[k] > 0) || !isfinite(q->alpha[k]))
            return qt_err(e, "%s node '%s': clipping threshold alpha = %g (value '%s'); it must be "
                             "positive and finite (a smaller alpha learning rate may help)",
                          qt_op_name(n->op), n->name, q->alpha[k], g->values[n->in[1]].name);
    return 0;
}

/* Forward of a quantizer; stats (2 floats: mean and std of the weights, or 1: the 8-bit
 * scale) receives what the backward needs, or scratch when NULL. */
static int fwd_quant(const struct qt_graph *g, const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *y,
                     float *stats, struct qt_error *e)
{
    struct quant_call q;
    float tmp[2];
    if (quant_setup(&q, g, n, in, e)) return -1;
    if (!stats) stats = tmp;
    if (n->op == QT_OP_ACTQUANT) {
        quant_act_forward_cpu(y->data, in[0]->data, q.alpha, &q.qz, q.n);
    } else if (q.a.scheme >= QT_QS_MAX) {
        quant_int8_weight_forward_cpu(y->data, stats, in[0]->data, q.a.scheme == QT_QS_ABSMAX, q.n);
    } else {
        quant_weight_forward_cpu(y->data, stats, stats + 1, in[0]->data, q.alpha, q.nalpha,
                                 q.a.standardize, &q.qz, q.n);
    }
    return 0;
}

static int bwd_quant(const struct qt_graph *g, const struct qt_node *n, const struct qt_tensor **in, const struct qt_tensor *dy,
                     float *dx, float *dalpha, const int *acc, const float *stats, struct qt_error *e)
{
    struct quant_call q;
    if (quant_setup(&q, g, n, in, e)) return -1;
    if (n->op == QT_OP_ACTQUANT)
        quant_act_backward_cpu(dx, dalpha, dy->data, in[0]->data, q.alpha, &q.qz, q.n, acc[0], acc[1]);
    else if (q.a.scheme >= QT_QS_MAX) {
        if (dx) quant_int8_weight_backward_cpu(dx, dy->data, q.n, acc[0]);
    } else
        quant_weight_backward_cpu(dx, dalpha, dy->data, in[0]->data, q.alpha, q.nalpha, stats,
                                  stats + 1, &q.qz, q.n, acc[0], n->nin > 1 ? acc[1] : 0);
    return 0;
}

static int cpu_forward(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                       const struct qt_tensor **in, struct qt_tensor **out, float *ws,
                       struct qt_error *e)
{
    (void)ws;
    struct qt_cpu_ctx *ctx = b->impl;
    struct qt_tensor *y = out[0];
    const struct qt_tensor *x = in[0];
    int64_t numel = qt_shape_numel(&y->shape);
    switch (n->op) {
    case QT_OP_CONV: {
        struct qt_conv_attrs a;
        struct qt_conv2d_desc d;
        if (qt_conv_attrs_get(n, &x->shape, &in[1]->shape, &a, e, "Conv")) return -1;
        if (window_desc(&d, &a, &x->shape, &y->shape, n, e)) return -1;
        const float *bias = n->nin > 2 && in[2] ? in[2]->data : NULL;
        if (conv2d_forward_cpu(ctx, y->data, x->data, in[1]->data, bias, &d))
            return qt_err(e, "Conv node '%s': %s", n->name, qt_cpu_ctx_error(ctx));
        return 0;
    }
    case QT_OP_MAXPOOL: case QT_OP_AVGPOOL: {
        struct qt_pool_attrs a;
        struct qt_conv2d_desc d;
        if (qt_pool_attrs_get(n, &x->shape, &a, e, qt_op_name(n->op))) return -1;
        if (n->nout > 1 && out[1])
            return qt_err(e, "MaxPool node '%s': the Indices output is not supported", n->name);
        if (window_desc(&d, &a.c, &x->shape, &y->shape, n, e)) return -1;
        if (n->op == QT_OP_MAXPOOL) maxpool2d_forward_cpu(y->data, x->data, &d);
        else avgpool2d_forward_cpu(y->data, x->data, &d, a.count_include_pad);
        return 0;
    }
    case QT_OP_GLOBALAVGPOOL: {
        int64_t nc = x->shape.d[0] * x->shape.d[1];
        global_avgpool_forward_cpu(y->data, x->data, nc, nc ? qt_shape_numel(&x->shape) / nc : 0);
        return 0;
    }
    case QT_OP_BATCHNORM: {
        int64_t nb = x->shape.d[0], c = x->shape.d[1];
        int64_t hw = (nb * c) != 0 ? qt_shape_numel(&x->shape) / (nb * c) : 0;
        float eps = qt_node_float(n, "epsilon", 1e-5f);
        batchnorm_infer_forward_cpu(y->data, x->data, in[1]->data, in[2]->data, in[3]->data,
                                    in[4]->data, eps, nb, c, hw);
        for (int k = 1; k < n->nout; k++)
            if (out[k]) memcpy(out[k]->data, in[k + 2]->data, out[k]->nbytes);
        return 0;
    }
    case QT_OP_RELU:
        relu_forward_cpu(y->data, x->data, numel);
        return 0;
    case QT_OP_CLIP: {
        float lo, hi;
        clip_bounds(g, n, in, &lo, &hi);
        clip_forward_cpu(y->data, x->data, lo, hi, numel);
        return 0;
    }
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV: {
        int64_t sa[QT_MAX_DIMS], sb[QT_MAX_DIMS];
        strides_over(sa, &in[0]->shape, &y->shape);
        strides_over(sb, &in[1]->shape, &y->shape);
        enum qt_binop op = binop_of(n->op);
        binary_forward_cpu(y->data, in[0]->data, in[1]->data, op, y->shape.d, sa, sb, y->shape.ndim);
        return 0;
    }
    case QT_OP_GEMM: {
        int ta = (int)qt_node_int(n, "transA", 0), tb = (int)qt_node_int(n, "transB", 0);
        int64_t m = y->shape.d[0], nn = y->shape.d[1];
        int64_t k = ta ? x->shape.d[0] : x->shape.d[1];
        const struct qt_tensor *c = n->nin > 2 ? in[2] : NULL;
        const struct gemm_c cl = gemm_c_of(c);
        gemm_forward_cpu(y->data, x->data, in[1]->data, c ? c->data : NULL, m, nn, k, ta, tb,
                         qt_node_float(n, "alpha", 1.f), qt_node_float(n, "beta", 1.f), cl.rs, cl.cs);
        return 0;
    }
    case QT_OP_MATMUL:
        return fwd_matmul(in[0], in[1], y);
    case QT_OP_SOFTMAX: {
        int r = x->shape.ndim;
        int64_t axis = qt_node_int(n, "axis", g->opset < 13 ? 1 : -1);
        if (axis < 0) axis += r;
        int64_t outer = 1, mid = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= x->shape.d[i];
        if (g->opset < 13) {
            for (int i = (int)axis; i < r; i++) mid *= x->shape.d[i];
        } else {
            mid = x->shape.d[axis];
            for (int i = (int)axis + 1; i < r; i++) inner *= x->shape.d[i];
        }
        softmax_forward_cpu(y->data, x->data, outer, mid, inner);
        return 0;
    }
    case QT_OP_REDUCEMEAN:
        return fwd_reduce_mean(n, x, y, n->nin > 1 ? in[1] : NULL);
    case QT_OP_WEIGHTQUANT: case QT_OP_ACTQUANT:
        return fwd_quant(g, n, in, y, NULL, e);
    default:
        return qt_err(e, "%s node '%s': not computed by the CPU backend", qt_op_name(n->op), n->name);
    }
}

/* ---- Inference fast path: activations stay in the layouts oneDNN's convolutions choose
 * (enum qt_cpu_layout numbers are the backend's layout numbers) and a Conv computes the Add
 * (of a same-shaped tensor) and Relu nodes after it as post-ops. ---- */

/* The 4-D view [n, c, h, w] of a 3-D ([n, c, w], h = 1) or 4-D activation; 0 for other ranks. */
static int act_dims(int64_t dims[4], const struct qt_shape *s)
{
    if (s->ndim != 3 && s->ndim != 4) return 0;
    dims[0] = s->d[0];
    dims[1] = s->d[1];
    dims[2] = s->ndim == 4 ? s->d[2] : 1;
    dims[3] = s->d[s->ndim - 1];
    return 1;
}

/* Whether values a and b are float tensors of one known shape (symbols included). */
static int same_f32_shape(const struct qt_graph *g, int a, int b)
{
    const struct qt_value *va = &g->values[a], *vb = &g->values[b];
    if (va->dtype != QT_F32 || vb->dtype != QT_F32 || !va->has_shape || !vb->has_shape) return 0;
    for (int i = 0; i < va->shape.ndim; i++)
        if (va->shape.d[i] == QT_DIM_ANY) return 0;
    return qt_shape_eq(&va->shape, &vb->shape);
}

/* A Conv computes, in this order: an Add (first only), then Relus. */
static int cpu_can_fuse(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_node *const *post, int npost)
{
    (void)b;
    if (n->op != QT_OP_CONV || n->nin < 2 || n->in[1] < 0 || npost > QT_MAX_POST) return 0;
    const struct qt_value *w = &g->values[n->in[1]];
    if (!w->has_shape || (w->shape.ndim != 3 && w->shape.ndim != 4)) return 0;
    for (int i = 0; i < npost; i++) {
        const struct qt_node *p = post[i];
        if (p->op == QT_OP_RELU && p->nin == 1) continue;
        if (p->op == QT_OP_ADD && i == 0 && p->nin == 2 && p->in[0] >= 0 && p->in[1] >= 0 &&
            same_f32_shape(g, p->in[0], p->in[1]))
            continue;
        return 0;
    }
    return 1;
}

static int cpu_reads_layout(struct qt_backend *b, const struct qt_graph *g,
                            const struct qt_node *n, const struct qt_tensor **in, const int *layout,
                            int k)
{
    (void)b;
    (void)g;
    switch (n->op) {
    case QT_OP_CONV: case QT_OP_RELU: case QT_OP_CLIP: case QT_OP_ACTQUANT:
        return k == 0;
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV:
        /* Elementwise over two tensors in one order: any order will do. */
        return n->nin == 2 && in[0] && in[1] && in[0]->dtype == QT_F32 &&
               qt_shape_eq(&in[0]->shape, &in[1]->shape) && layout[0] == layout[1];
    default:
        return 0;
    }
}

static int infer_conv(struct qt_cpu_ctx *ctx, const struct qt_step *s, struct qt_error *e)
{
    const struct qt_node *n = s->node;
    const struct qt_tensor *x = s->in[0], *w = s->in[1];
    struct qt_tensor *y = s->out[0];
    struct qt_conv_attrs a;
    struct qt_conv2d_desc d;
    struct qt_conv2d_post post = {NULL, 0, 0};
    if (qt_conv_attrs_get(n, &x->shape, &w->shape, &a, e, "Conv")) return -1;
    if (window_desc(&d, &a, &x->shape, &y->shape, n, e)) return -1;
    for (int i = 0; i < s->npost; i++) {
        const struct qt_post *p = &s->post[i];
        if (p->node->op == QT_OP_RELU) {
            post.relu = 1;
        } else if (!qt_shape_eq(&p->other->shape, &y->shape)) {
            return qt_err(e, "Conv node '%s': the Add node '%s' fused into it adds a tensor of "
                          "another shape", n->name, p->node->name);
        } else {
            post.sum = p->other->data;
            post.sum_layout = p->other_layout;
        }
    }
    const float *bias = n->nin > 2 && s->in[2] ? s->in[2]->data : NULL;
    if (conv2d_infer_cpu(ctx, y->data, &s->out_layout[0], x->data, s->in_layout[0], w->data, bias,
                         &d, &post)) {
        if (!s->npost) return qt_err(e, "Conv node '%s': %s", n->name, qt_cpu_ctx_error(ctx));
        return qt_err(e, "Conv node '%s' (with %s node '%s'%s fused): %s", n->name,
                      qt_op_name(s->post[0].node->op), s->post[0].node->name,
                      s->npost > 1 ? " and more" : "", qt_cpu_ctx_error(ctx));
    }
    return 0;
}

static int cpu_forward_infer(struct qt_backend *b, const struct qt_graph *g,
                             const struct qt_step *s, struct qt_error *e)
{
    const struct qt_node *n = s->node;
    for (int k = 0; k < n->nout; k++) s->out_layout[k] = 0;
    if (n->op == QT_OP_CONV) return infer_conv(b->impl, s, e);
    if (s->npost)
        return qt_err(e, "%s node '%s': the CPU backend fuses nothing into this op",
                      qt_op_name(n->op), n->name);
    /* Inputs in a layout are those of elementwise ops (cpu_reads_layout), whose plain kernels
     * work in any order shared by their operands. */
    if (cpu_forward(b, g, n, s->in, s->out, s->ws, e)) return -1;
    if (n->op == QT_OP_RELU || n->op == QT_OP_CLIP || n->op == QT_OP_ADD || n->op == QT_OP_SUB ||
        n->op == QT_OP_MUL || n->op == QT_OP_DIV || n->op == QT_OP_ACTQUANT)
        s->out_layout[0] = s->in_layout[0];
    return 0;
}

static int cpu_to_plain(struct qt_backend *b, void *dst, const struct qt_tensor *t, int layout,
                        struct qt_error *e)
{
    struct qt_cpu_ctx *ctx = b->impl;
    int64_t dims[4];
    if (t->dtype != QT_F32 || !act_dims(dims, &t->shape))
        return qt_err(e, "layout %d does not apply to a %s tensor of rank %d", layout,
                      qt_dtype_name(t->dtype), t->shape.ndim);
    if (qt_cpu_reorder(ctx, dst, QT_CPU_NCHW, t->data, layout, dims))
        return qt_err(e, "%s", qt_cpu_ctx_error(ctx));
    return 0;
}

/* ---- Training ---- */

static int64_t cpu_aux_floats(struct qt_backend *b, const struct qt_graph *g,
                              const struct qt_node *n, const struct qt_tensor **in)
{
    (void)b;
    (void)g;
    /* BatchNorm keeps its batch mean and inverse standard deviation; a weight quantizer the
     * mean and standard deviation of the weights (or the 8-bit scale). */
    if (n->op == QT_OP_WEIGHTQUANT) return 2;
    return n->op == QT_OP_BATCHNORM ? 2 * in[0]->shape.d[1] : 0;
}

static int cpu_forward_train(struct qt_backend *b, const struct qt_graph *g,
                             const struct qt_node *n, const struct qt_tensor **in,
                             struct qt_tensor **out, float *aux, float *ws, struct qt_error *e)
{
    if (n->op == QT_OP_WEIGHTQUANT) return fwd_quant(g, n, in, out[0], aux, e);
    if (n->op != QT_OP_BATCHNORM) return cpu_forward(b, g, n, in, out, ws, e);
    const struct qt_tensor *x = in[0];
    int64_t nb = x->shape.d[0], c = x->shape.d[1];
    int64_t hw = (nb * c) != 0 ? qt_shape_numel(&x->shape) / (nb * c) : 0;
    if (n->nout > 1) return qt_err(e, "BatchNormalization node '%s': training with several outputs is not supported", n->name);
    /* ONNX's momentum weighs the old running value; PyTorch's (used by the kernel) the new. */
    float momentum = 1.0f - qt_node_float(n, "momentum", 0.9f);
    /* The running statistics are training state: updated in place in the graph. */
    batchnorm_train_forward_cpu(out[0]->data, aux, aux + c, (float *)in[3]->data,
                                (float *)in[4]->data, x->data, in[1]->data, in[2]->data,
                                qt_node_float(n, "epsilon", 1e-5f), momentum, nb, c, hw);
    return 0;
}

/* MatMul backward over the broadcast batch: each batch's product contributes to the slices
 * of A and B it read, so the gradients are cleared (unless accumulating) and then summed. */
static int bwd_matmul(const struct qt_tensor *a, const struct qt_tensor *b, const struct qt_tensor *dy,
                      float *da, float *db, int acc_a, int acc_b)
{
    struct matmul_geom mg;
    matmul_geom(&mg, a, b);
    if (da && !acc_a) memset(da, 0, a->nbytes);
    if (db && !acc_b) memset(db, 0, b->nbytes);
    for (int64_t t = 0; t < mg.batches; t++) {
        int64_t oa, ob;
        matmul_offsets(&mg, t, &oa, &ob);
        gemm_backward_cpu(da ? da + oa : NULL, db ? db + ob : NULL, NULL,
                          (const float *)dy->data + t * mg.m * mg.n, (const float *)a->data + oa,
                          (const float *)b->data + ob, mg.m, mg.n, mg.k, 0, 0, 1.f, 0.f, 0, 0, 0,
                          0, 1, 1, 0);
    }
    return 0;
}

static float *grad_ptr(struct qt_tensor **din, int k, int nin)
{
    return k < nin && din[k] ? din[k]->data : NULL;
}

static int cpu_backward(struct qt_backend *b, const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_tensor **in, const struct qt_tensor **out,
                        const struct qt_tensor **dout, struct qt_tensor **din, const int *acc,
                        const float *aux, float *ws, struct qt_error *e)
{
    (void)ws;
    struct qt_cpu_ctx *ctx = b->impl;
    const struct qt_tensor *x = in[0], *dy = dout[0];
    float *dx = grad_ptr(din, 0, n->nin);
    if (!dy) return 0;
    int64_t numel = qt_shape_numel(&x->shape);
    switch (n->op) {
    case QT_OP_CONV: {
        struct qt_conv_attrs a;
        struct qt_conv2d_desc d;
        if (qt_conv_attrs_get(n, &x->shape, &in[1]->shape, &a, e, "Conv")) return -1;
        if (window_desc(&d, &a, &x->shape, &out[0]->shape, n, e)) return -1;
        if (conv2d_backward_cpu(ctx, dx, grad_ptr(din, 1, n->nin), grad_ptr(din, 2, n->nin), dy->data,
                                x->data, in[1]->data, &d, acc[0], n->nin > 1 ? acc[1] : 0,
                                n->nin > 2 ? acc[2] : 0))
            return qt_err(e, "Conv node '%s': %s", n->name, qt_cpu_ctx_error(ctx));
        return 0;
    }
    case QT_OP_BATCHNORM: {
        int64_t nb = x->shape.d[0], c = x->shape.d[1];
        int64_t hw = (nb * c) != 0 ? numel / (nb * c) : 0;
        batchnorm_backward_cpu(dx, grad_ptr(din, 1, n->nin), grad_ptr(din, 2, n->nin), dy->data,
                               x->data, in[1]->data, aux, aux + c, nb, c, hw, acc[0], acc[1], acc[2]);
        return 0;
    }
    case QT_OP_RELU:
        if (dx) relu_backward_cpu(dx, dy->data, out[0]->data, numel, acc[0]);
        return 0;
    case QT_OP_CLIP: {
        float lo, hi;
        clip_bounds(g, n, in, &lo, &hi);
        if (grad_ptr(din, 1, n->nin) || grad_ptr(din, 2, n->nin))
            return qt_err(e, "Clip node '%s': gradients of min and max are not supported", n->name);
        if (dx) clip_backward_cpu(dx, dy->data, x->data, lo, hi, numel, acc[0]);
        return 0;
    }
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV: {
        const struct qt_shape *ys = &out[0]->shape;
        int64_t sa[QT_MAX_DIMS], sb[QT_MAX_DIMS];
        strides_over(sa, &in[0]->shape, ys);
        strides_over(sb, &in[1]->shape, ys);
        enum qt_binop op = binop_of(n->op);
        binary_backward_cpu(dx, grad_ptr(din, 1, n->nin), dy->data, in[0]->data, in[1]->data, op,
                            ys->d, sa, sb, ys->ndim, acc[0], acc[1]);
        return 0;
    }
    case QT_OP_MAXPOOL: case QT_OP_AVGPOOL: {
        struct qt_pool_attrs a;
        struct qt_conv2d_desc d;
        if (qt_pool_attrs_get(n, &x->shape, &a, e, qt_op_name(n->op))) return -1;
        if (window_desc(&d, &a.c, &x->shape, &out[0]->shape, n, e)) return -1;
        if (!dx) return 0;
        if (n->op == QT_OP_MAXPOOL) maxpool2d_backward_cpu(dx, dy->data, x->data, &d, acc[0]);
        else avgpool2d_backward_cpu(dx, dy->data, &d, a.count_include_pad, acc[0]);
        return 0;
    }
    case QT_OP_GLOBALAVGPOOL: {
        int64_t nc = x->shape.d[0] * x->shape.d[1];
        if (dx) global_avgpool_backward_cpu(dx, dy->data, nc, nc ? numel / nc : 0, acc[0]);
        return 0;
    }
    case QT_OP_GEMM: {
        int ta = (int)qt_node_int(n, "transA", 0), tb = (int)qt_node_int(n, "transB", 0);
        int64_t m = out[0]->shape.d[0], nn = out[0]->shape.d[1];
        int64_t k = ta ? x->shape.d[0] : x->shape.d[1];
        const struct gemm_c cl = gemm_c_of(n->nin > 2 ? in[2] : NULL);
        gemm_backward_cpu(dx, grad_ptr(din, 1, n->nin), grad_ptr(din, 2, n->nin), dy->data, x->data,
                          in[1]->data, m, nn, k, ta, tb, qt_node_float(n, "alpha", 1.f),
                          qt_node_float(n, "beta", 1.f), cl.rs, cl.cs, cl.rows, cl.cols, acc[0],
                          n->nin > 1 ? acc[1] : 0, n->nin > 2 ? acc[2] : 0);
        return 0;
    }
    case QT_OP_MATMUL:
        return bwd_matmul(in[0], in[1], dy, dx, grad_ptr(din, 1, n->nin), acc[0], acc[1]);
    case QT_OP_WEIGHTQUANT: case QT_OP_ACTQUANT:
        return bwd_quant(g, n, in, dy, dx, grad_ptr(din, 1, n->nin), acc, aux, e);
    default:
        return qt_err(e, "%s node '%s': training through this op is not supported on the CPU "
                         "backend", qt_op_name(n->op), n->name);
    }
}

static void cpu_sgd_update(struct qt_backend *b, float *p, float *buf, const float *grad, int64_t n,
                           float lr, float momentum, float wd, int nesterov, int first)
{
    (void)b;
    sgd_update_cpu(p, buf, grad, n, lr, momentum, wd, nesterov, first);
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
    b->sgd_update = cpu_sgd_update;
    b->can_fuse = cpu_can_fuse;
    b->reads_layout = cpu_reads_layout;
    b->forward_infer = cpu_forward_infer;
    b->to_plain = cpu_to_plain;
    b->sync = cpu_sync;
    b->destroy = cpu_destroy;
    return b;
}
