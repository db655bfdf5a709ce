/* Lowering of graph nodes into op descriptions (kernels/common/desc.h): attributes, opset
 * rules, broadcast geometry and constants are resolved here, on the host, once per input
 * shape; backends receive descriptions and buffers only. */
#include "lower.h"

#include <math.h>
#include <string.h>

#include "../graph/schema.h"
#include "quantizer.h"

int qt_lower_act_dims(int64_t dims[4], const struct qt_shape *s)
{
    if (s->ndim != 3 && s->ndim != 4) return 0;
    dims[0] = s->d[0];
    dims[1] = s->d[1];
    dims[2] = s->ndim == 4 ? s->d[2] : 1;
    dims[3] = s->d[s->ndim - 1];
    return 1;
}

/* 1-D and 2-D window geometry as a 2-D description. */
static int window_desc(struct qt_conv2d_desc *d, const struct qt_conv_attrs *a,
                       const struct qt_shape *x, const struct qt_shape *y, const struct qt_node *n,
                       struct qt_error *e)
{
    if (a->nsp > 2)
        return qt_err(e, "%s node '%s': %d-D windows are not supported", qt_op_name(n->op), n->name,
                      a->nsp);
    const int two = a->nsp == 2;
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

/* A constant scalar input k of node n (an initializer), or `dflt` when the input is absent;
 * returns 1 when the input exists but is only known at run time. */
static int const_scalar(float *v, const struct qt_graph *g, const struct qt_node *n, int k,
                        float dflt)
{
    *v = dflt;
    if (k >= n->nin || n->in[k] < 0) return 0;
    const struct qt_tensor *t = g->values[n->in[k]].init;
    if (!t || qt_shape_numel(&t->shape) < 1) return 1;
    *v = (float)qt_tensor_get_f(t, 0);
    return 0;
}

static int lower_binary(struct qt_binary_desc *b, enum qt_op op, const struct qt_shape *sa,
                        const struct qt_shape *sb, const struct qt_shape *so)
{
    memset(b, 0, sizeof *b);
    b->op = op == QT_OP_ADD   ? QT_BIN_ADD
            : op == QT_OP_SUB ? QT_BIN_SUB
            : op == QT_OP_MUL ? QT_BIN_MUL
                              : QT_BIN_DIV;
    b->ndim = so->ndim;
    for (int i = 0; i < so->ndim; i++)
        b->shape[i] = so->d[i];
    qt_broadcast_strides(b->sa, sa, so);
    qt_broadcast_strides(b->sb, sb, so);
    b->na = qt_shape_numel(sa);
    b->nb = qt_shape_numel(sb);
    b->same_shape = qt_shape_eq(sa, so) && qt_shape_eq(sb, so);
    return 0;
}

static void lower_matmul(struct qt_matmul_desc *mm, const struct qt_shape *a,
                         const struct qt_shape *b)
{
    struct qt_shape as = *a, bs = *b, ob;
    memset(mm, 0, sizeof *mm);
    mm->na = qt_shape_numel(a);
    mm->nb = qt_shape_numel(b);
    if (as.ndim == 1) {
        as.ndim = 2;
        as.d[1] = as.d[0];
        as.d[0] = 1;
    }
    if (bs.ndim == 1) {
        bs.ndim = 2;
        bs.d[1] = 1;
    }
    mm->m = as.d[as.ndim - 2];
    mm->k = as.d[as.ndim - 1];
    mm->n = bs.d[bs.ndim - 1];
    as.ndim -= 2;
    bs.ndim -= 2;
    qt_broadcast_shape(&ob, &as, &bs);
    mm->bdims = ob.ndim;
    for (int i = 0; i < ob.ndim; i++)
        mm->bshape[i] = ob.d[i];
    qt_broadcast_strides(mm->sa, &as, &ob);
    qt_broadcast_strides(mm->sb, &bs, &ob);
    mm->batches = qt_shape_numel(&ob);
}

/* Gemm's C operand as a [rows, cols] matrix broadcast to [M, N] by strides. */
static void lower_gemm_c(struct qt_gemm_desc *d, const struct qt_shape *c)
{
    d->c_rows = d->c_cols = 1;
    if (c && c->ndim == 2) {
        d->c_rows = c->d[0];
        d->c_cols = c->d[1];
    } else if (c && c->ndim == 1) {
        d->c_cols = c->d[0];
    }
    d->c_rs = d->c_rows == 1 ? 0 : d->c_cols;
    d->c_cs = d->c_cols == 1 ? 0 : 1;
}

static int lower_reduce(struct qt_reduce_desc *r, const struct qt_graph *g, const struct qt_node *n,
                        const struct qt_tensor *const *in, struct qt_error *e)
{
    const struct qt_shape *x = &in[0]->shape;
    int64_t axes[QT_MAX_DIMS];
    int na = qt_node_ints(n, "axes", axes, QT_MAX_DIMS);
    memset(r, 0, sizeof *r);
    r->ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++)
        r->shape[i] = x->d[i];
    if (na < 0) {
        na = 0;
        if (n->nin > 1 && n->in[1] >= 0) {
            /* Axes are int64 values: constants, or run-time values kept on the host. */
            const struct qt_tensor *t = g->values[n->in[1]].init ? g->values[n->in[1]].init : in[1];
            const int64_t cnt = qt_shape_numel(&t->shape);
            if (cnt > QT_MAX_DIMS)
                return qt_err(e, "ReduceMean node '%s': %lld axes", n->name, (long long)cnt);
            for (int64_t i = 0; i < cnt; i++)
                axes[na++] = qt_tensor_get_i(t, i);
        }
    }
    if (na == 0) {
        if (qt_node_int(n, "noop_with_empty_axes", 0)) return 0;
        for (int i = 0; i < x->ndim; i++)
            r->red[i] = 1;
        return 0;
    }
    for (int i = 0; i < na; i++) {
        const int64_t a = axes[i] < 0 ? axes[i] + x->ndim : axes[i];
        if (a < 0 || a >= x->ndim)
            return qt_err(e, "ReduceMean node '%s': axis %lld out of range for rank %d", n->name,
                          (long long)axes[i], x->ndim);
        r->red[a] = 1;
    }
    return 0;
}

static int is_copy_op(enum qt_op op)
{
    return op == QT_OP_RESHAPE || op == QT_OP_FLATTEN || op == QT_OP_SQUEEZE ||
           op == QT_OP_UNSQUEEZE || op == QT_OP_IDENTITY || op == QT_OP_DROPOUT;
}

/* The quantizer's grid and alpha count; the alpha values themselves stay in backend memory
 * and are checked by the kernels. */
static int lower_quant(struct qt_quant_desc *q, const struct qt_node *n,
                       const struct qt_tensor *const *in, struct qt_error *e)
{
    struct qt_quant_attrs a;
    memset(q, 0, sizeof *q);
    if (qt_quantizer_from_node(&a, &q->qz, n, e)) return -1;
    q->weight = n->op == QT_OP_WEIGHTQUANT;
    q->standardize = a.standardize;
    q->n = qt_shape_numel(&in[0]->shape);
    if (a.scheme >= QT_QS_MAX) {
        q->int8 = a.scheme == QT_QS_ABSMAX ? 2 : 1;
        return 0;
    }
    if (n->nin < 2 || !in[1])
        return qt_err(e, "%s node '%s': the alpha input is missing", qt_op_name(n->op), n->name);
    q->nalpha = qt_shape_numel(&in[1]->shape);
    if (q->nalpha < 1 || q->n % q->nalpha || (!q->weight && q->nalpha != 1))
        return qt_err(e, "%s node '%s': %lld alphas do not divide %lld elements", qt_op_name(n->op),
                      n->name, (long long)q->nalpha, (long long)q->n);
    return 0;
}

int qt_lower_node(struct qt_op_desc *d, const struct qt_graph *g, const struct qt_node *n,
                  const struct qt_tensor *const *in, const struct qt_tensor *const *out,
                  struct qt_error *e)
{
    memset(d, 0, sizeof *d);
    d->nin = n->nin;
    d->nout = n->nout;
    /* Backends compute float tensors; everything else runs on the host. */
    for (int k = 0; k < n->nin; k++) {
        if (!in[k]) continue;
        const int aux_int = (n->op == QT_OP_RESHAPE || n->op == QT_OP_SQUEEZE ||
                             n->op == QT_OP_UNSQUEEZE || n->op == QT_OP_REDUCEMEAN ||
                             n->op == QT_OP_PAD) &&
                            k == 1;
        if (in[k]->dtype != QT_F32 && !aux_int) return QT_LOWER_HOST;
    }
    for (int k = 0; k < n->nout; k++)
        if (out[k] && out[k]->dtype != QT_F32) return QT_LOWER_HOST;
    if (n->nin < 1 || !in[0] || n->nout < 1 || !out[0]) return QT_LOWER_HOST; /* Constant, ... */
    const struct qt_shape *xs = &in[0]->shape, *ys = &out[0]->shape;
    d->numel = qt_shape_numel(ys);
    switch (n->op) {
    case QT_OP_CONV: {
        struct qt_conv_attrs a;
        if (qt_conv_attrs_get(n, xs, &in[1]->shape, &a, e, "Conv") ||
            window_desc(&d->u.conv, &a, xs, ys, n, e))
            return -1;
        d->kind = QT_K_CONV;
        d->has_bias = n->nin > 2 && in[2] != NULL;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_MAXPOOL:
    case QT_OP_AVGPOOL: {
        struct qt_pool_attrs a;
        if (qt_pool_attrs_get(n, xs, &a, e, qt_op_name(n->op))) return -1;
        if (n->nout > 1 && out[1])
            return qt_err(e, "MaxPool node '%s': the Indices output is not supported", n->name);
        if (window_desc(&d->u.conv, &a.c, xs, ys, n, e)) return -1;
        d->kind = n->op == QT_OP_MAXPOOL ? QT_K_MAXPOOL : QT_K_AVGPOOL;
        d->count_include_pad = a.count_include_pad;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_GLOBALAVGPOOL: {
        const int64_t nc = xs->d[0] * xs->d[1];
        d->kind = QT_K_GAP;
        d->u.ax.outer = nc;
        d->u.ax.mid = nc ? qt_shape_numel(xs) / nc : 0;
        d->u.ax.inner = 1;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_BATCHNORM: {
        const int64_t nb = xs->d[0], c = xs->d[1];
        d->kind = QT_K_BATCHNORM;
        d->u.bn.n = nb;
        d->u.bn.c = c;
        d->u.bn.hw = (nb * c) != 0 ? qt_shape_numel(xs) / (nb * c) : 0;
        d->u.bn.eps = qt_node_float(n, "epsilon", 1e-5f);
        /* ONNX's momentum weighs the old running value; PyTorch's (the kernels') the new. */
        d->u.bn.momentum = 1.0f - qt_node_float(n, "momentum", 0.9f);
        d->u.bn.copy_stats = n->nout > 1;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_RELU:
        d->kind = QT_K_RELU;
        return QT_LOWER_BACKEND;
    case QT_OP_SIGMOID:
        d->kind = QT_K_SIGMOID;
        return QT_LOWER_BACKEND;
    case QT_OP_CLIP:
        d->kind = QT_K_CLIP;
        if (g->opset < 11) {
            d->u.clip[0] = qt_node_float(n, "min", -INFINITY);
            d->u.clip[1] = qt_node_float(n, "max", INFINITY);
        } else if (const_scalar(&d->u.clip[0], g, n, 1, -INFINITY) ||
                   const_scalar(&d->u.clip[1], g, n, 2, INFINITY)) {
            return QT_LOWER_HOST; /* bounds computed at run time */
        }
        return QT_LOWER_BACKEND;
    case QT_OP_ADD:
    case QT_OP_SUB:
    case QT_OP_MUL:
    case QT_OP_DIV:
        d->kind = QT_K_BINARY;
        lower_binary(&d->u.bin, n->op, xs, &in[1]->shape, ys);
        return QT_LOWER_BACKEND;
    case QT_OP_GEMM: {
        struct qt_gemm_desc *gd = &d->u.gemm;
        d->kind = QT_K_GEMM;
        gd->ta = (int)qt_node_int(n, "transA", 0);
        gd->tb = (int)qt_node_int(n, "transB", 0);
        gd->m = ys->d[0];
        gd->n = ys->d[1];
        gd->k = gd->ta ? xs->d[0] : xs->d[1];
        gd->alpha = qt_node_float(n, "alpha", 1.f);
        gd->beta = qt_node_float(n, "beta", 1.f);
        gd->has_c = n->nin > 2 && in[2] != NULL;
        lower_gemm_c(gd, gd->has_c ? &in[2]->shape : NULL);
        return QT_LOWER_BACKEND;
    }
    case QT_OP_MATMUL:
        d->kind = QT_K_MATMUL;
        lower_matmul(&d->u.mm, xs, &in[1]->shape);
        return QT_LOWER_BACKEND;
    case QT_OP_SOFTMAX:
    case QT_OP_LOGSOFTMAX: {
        const int r = xs->ndim;
        int64_t axis = qt_node_int(n, "axis", g->opset < 13 ? 1 : -1);
        if (axis < 0) axis += r;
        if (axis < 0 || axis >= r)
            return qt_err(e, "%s node '%s': axis out of range for rank %d", qt_op_name(n->op),
                          n->name, r);
        struct qt_axis_desc *a = &d->u.ax;
        a->outer = a->mid = a->inner = 1;
        for (int i = 0; i < axis; i++)
            a->outer *= xs->d[i];
        if (g->opset < 13) { /* the input is coerced to 2-D at axis */
            for (int i = (int)axis; i < r; i++)
                a->mid *= xs->d[i];
        } else {
            a->mid = xs->d[axis];
            for (int i = (int)axis + 1; i < r; i++)
                a->inner *= xs->d[i];
        }
        d->kind = n->op == QT_OP_SOFTMAX ? QT_K_SOFTMAX : QT_K_LOGSOFTMAX;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_REDUCEMEAN:
        d->kind = QT_K_REDUCE_MEAN;
        return lower_reduce(&d->u.red, g, n, in, e) ? -1 : QT_LOWER_BACKEND;
    case QT_OP_WEIGHTQUANT:
    case QT_OP_ACTQUANT:
        d->kind = n->op == QT_OP_WEIGHTQUANT ? QT_K_WEIGHTQUANT : QT_K_ACTQUANT;
        return lower_quant(&d->u.q, n, in, e) ? -1 : QT_LOWER_BACKEND;
    case QT_OP_TRANSPOSE: {
        struct qt_transpose_desc *t = &d->u.tr;
        if (xs->ndim > QT_DESC_MAX_DIMS)
            return qt_err(e, "Transpose node '%s': rank %d is above %d", n->name, xs->ndim,
                          QT_DESC_MAX_DIMS);
        if (qt_transpose_perm(n, xs->ndim, t->perm, e)) return -1;
        t->ndim = xs->ndim;
        for (int i = 0; i < xs->ndim; i++) t->shape[i] = xs->d[i];
        d->kind = QT_K_TRANSPOSE;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_PAD: {
        /* constant mode with constant pads on the backend (trainable); reflect and edge,
         * and pads computed at run time, on the host */
        struct qt_pad_desc *p = &d->u.pad;
        int64_t pads[2 * QT_MAX_DIMS];
        const int r = xs->ndim;
        if (strcmp(qt_node_string(n, "mode", "constant"), "constant") || r < 1 ||
            r > QT_DESC_MAX_DIMS || (n->nin > 3 && in[3]))
            return QT_LOWER_HOST;
        if (qt_pad_amounts(n, n->nin > 1 ? in[1] : NULL, pads) != 2 * r) return QT_LOWER_HOST;
        p->ndim = r;
        p->value = (float)qt_pad_value(n, n->nin > 2 ? in[2] : NULL);
        for (int i = 0; i < r; i++) {
            p->shape[i] = xs->d[i];
            p->begin[i] = pads[i];
            p->end[i] = pads[i + r];
            if (xs->d[i] + pads[i] + pads[i + r] != ys->d[i])
                return qt_err(e, "Pad node '%s': pads do not give the output's shape", n->name);
        }
        d->kind = QT_K_PAD;
        d->numel = qt_shape_numel(ys);
        return QT_LOWER_BACKEND;
    }
    case QT_OP_BITQUANT:
        d->kind = QT_K_BITQUANT;
        d->u.bq.N = (int)in[0]->shape.d[0];
        d->u.bq.n = qt_shape_numel(&out[0]->shape);
        d->numel = d->u.bq.n;
        return QT_LOWER_BACKEND;
    case QT_OP_ABS:
    case QT_OP_NEG:
    case QT_OP_GREATER:
    case QT_OP_LESS:
    case QT_OP_WHERE:
    case QT_OP_REDUCESUM:
    case QT_OP_QUANTIZELINEAR:
    case QT_OP_DEQUANTIZELINEAR:
    case QT_OP_FLOOR:
    case QT_OP_SIGN:
        return QT_LOWER_HOST; /* computed by graph/eval.c, float data included */
    default:
        if (is_copy_op(n->op) && n->nout == 1) {
            d->kind = QT_K_COPY;
            d->numel = qt_shape_numel(xs);
            return QT_LOWER_BACKEND;
        }
        return QT_LOWER_HOST;
    }
}

/* Whether value v has one fully known float shape. */
static int known_f32(const struct qt_graph *g, int v)
{
    if (v < 0) return 0;
    const struct qt_value *x = &g->values[v];
    if (x->dtype != QT_F32 || !x->has_shape) return 0;
    for (int i = 0; i < x->shape.ndim; i++)
        if (x->shape.d[i] == QT_DIM_ANY) return 0;
    return 1;
}

int qt_lower_static(struct qt_op_desc *d, const struct qt_graph *g, const struct qt_node *n)
{
    memset(d, 0, sizeof *d);
    d->nin = n->nin;
    d->nout = n->nout;
    switch (n->op) {
    case QT_OP_CONV: {
        const struct qt_value *w = n->nin > 1 && n->in[1] >= 0 ? &g->values[n->in[1]] : NULL;
        if (!w || !w->has_shape || (w->shape.ndim != 3 && w->shape.ndim != 4)) break;
        d->kind = QT_K_CONV;
        d->has_bias = n->nin > 2 && n->in[2] >= 0;
        return QT_LOWER_BACKEND;
    }
    case QT_OP_RELU:
        if (n->nin != 1) break;
        d->kind = QT_K_RELU;
        return QT_LOWER_BACKEND;
    case QT_OP_ADD:
    case QT_OP_SUB:
    case QT_OP_MUL:
    case QT_OP_DIV: {
        if (n->nin != 2 || !known_f32(g, n->in[0]) || !known_f32(g, n->in[1])) break;
        const struct qt_shape *a = &g->values[n->in[0]].shape, *b = &g->values[n->in[1]].shape;
        struct qt_shape o;
        if (qt_broadcast_shape(&o, a, b)) break;
        d->kind = QT_K_BINARY;
        lower_binary(&d->u.bin, n->op, a, b, &o);
        return QT_LOWER_BACKEND;
    }
    default:
        break;
    }
    d->kind = QT_K_NONE;
    return QT_LOWER_HOST;
}
