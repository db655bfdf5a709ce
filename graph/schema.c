/* The op schema table: ONNX names, arity, attribute parsing and shape inference per op.
 * Inference handles symbolic dimensions (load time) and concrete shapes (run time) alike. */
#include "schema.h"

#include "kernels/common/apot.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#define NODE_FMT "%s node '%s'"
#define NODE_ARGS(c) qt_op_name((c)->n->op), (c)->n->name

static int64_t dim_combine(int64_t a, int64_t b)
{
    /* Result dimension of a window/arith computation that involves an unknown. */
    (void)a;
    (void)b;
    return QT_DIM_ANY;
}

static int normalize_axis(int64_t *axis, int rank)
{
    if (*axis < -rank || *axis >= rank) return -1;
    if (*axis < 0) *axis += rank;
    return 0;
}

int64_t qt_window_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe,
                      int ceil_mode)
{
    if (in < 0) return dim_combine(in, k);
    int64_t ek = (k - 1) * d + 1;
    int64_t span = in + pb + pe - ek;
    if (span < 0) return -2;
    int64_t o = ceil_mode ? (span + s - 1) / s + 1 : span / s + 1;
    /* A window that starts inside the end padding is dropped (ONNX/PyTorch convention). */
    if (ceil_mode && (o - 1) * s >= in + pb) o--;
    return o;
}

static int get_spatial_ints(const struct qt_node *n, const char *name, int64_t *out, int count,
                            int64_t dflt, struct qt_error *e)
{
    int64_t tmp[16];
    int got = qt_node_ints(n, name, tmp, 16);
    if (got < 0) {
        for (int i = 0; i < count; i++) out[i] = dflt;
        return 0;
    }
    if (got != count)
        return qt_err(e, "%s node '%s': attribute %s has %d values, expected %d", qt_op_name(n->op),
                      n->name, name, got, count);
    for (int i = 0; i < count; i++) out[i] = tmp[i];
    return 0;
}

int qt_conv_attrs_get(const struct qt_node *n, const struct qt_shape *x, const struct qt_shape *w,
                      struct qt_conv_attrs *a, struct qt_error *e, const char *what)
{
    memset(a, 0, sizeof *a);
    int nsp = x->ndim - 2;
    if (nsp < 1 || nsp > 3)
        return qt_err(e, "%s node '%s': input has rank %d, expected 3 to 5", what, n->name,
                      x->ndim);
    a->nsp = nsp;
    int64_t ks[3];
    if (w) {
        if (w->ndim != x->ndim)
            return qt_err(e, "%s node '%s': weight has rank %d but input has rank %d", what,
                          n->name, w->ndim, x->ndim);
        for (int i = 0; i < nsp; i++) ks[i] = w->d[2 + i];
        int64_t kk[3];
        int got = qt_node_ints(n, "kernel_shape", kk, 3);
        if (got == nsp)
            for (int i = 0; i < nsp; i++)
                if (kk[i] != ks[i] && ks[i] >= 0)
                    return qt_err(e, "%s node '%s': kernel_shape disagrees with the weight shape",
                                  what, n->name);
    } else {
        int got = qt_node_ints(n, "kernel_shape", ks, 3);
        if (got != nsp)
            return qt_err(e, "%s node '%s': kernel_shape must have %d values", what, n->name, nsp);
    }
    for (int i = 0; i < nsp; i++) {
        a->kernel[i] = ks[i];
        if (ks[i] <= 0) return qt_err(e, "%s node '%s': kernel size must be positive", what, n->name);
    }
    if (get_spatial_ints(n, "strides", a->stride, nsp, 1, e)) return -1;
    if (get_spatial_ints(n, "dilations", a->dilation, nsp, 1, e)) return -1;
    for (int i = 0; i < nsp; i++)
        if (a->stride[i] <= 0 || a->dilation[i] <= 0)
            return qt_err(e, "%s node '%s': strides and dilations must be positive", what,
                          n->name);
    int64_t pads[6];
    int np = qt_node_ints(n, "pads", pads, 6);
    if (np >= 0 && np != 2 * nsp)
        return qt_err(e, "%s node '%s': pads has %d values, expected %d", what, n->name, np,
                      2 * nsp);
    for (int i = 0; i < nsp; i++) {
        a->pad_begin[i] = np > 0 ? pads[i] : 0;
        a->pad_end[i] = np > 0 ? pads[i + nsp] : 0;
        if (a->pad_begin[i] < 0 || a->pad_end[i] < 0)
            return qt_err(e, "%s node '%s': negative pads are not supported", what, n->name);
    }
    const char *ap = qt_node_string(n, "auto_pad", "NOTSET");
    if (strcmp(ap, "SAME_UPPER") == 0 || strcmp(ap, "SAME_LOWER") == 0) {
        for (int i = 0; i < nsp; i++) {
            int64_t in = x->d[2 + i];
            if (in < 0) continue;
            int64_t out = (in + a->stride[i] - 1) / a->stride[i];
            int64_t ek = (a->kernel[i] - 1) * a->dilation[i] + 1;
            int64_t total = (out - 1) * a->stride[i] + ek - in;
            if (total < 0) total = 0;
            int64_t small = total / 2, big = total - small;
            a->pad_begin[i] = ap[5] == 'U' ? small : big;
            a->pad_end[i] = ap[5] == 'U' ? big : small;
        }
    } else if (strcmp(ap, "VALID") == 0) {
        for (int i = 0; i < nsp; i++) a->pad_begin[i] = a->pad_end[i] = 0;
    } else if (strcmp(ap, "NOTSET") != 0) {
        return qt_err(e, "%s node '%s': unknown auto_pad '%s'", what, n->name, ap);
    }
    a->group = qt_node_int(n, "group", 1);
    if (a->group <= 0) return qt_err(e, "%s node '%s': group must be positive", what, n->name);
    return 0;
}

int qt_pool_attrs_get(const struct qt_node *n, const struct qt_shape *x, struct qt_pool_attrs *a,
                      struct qt_error *e, const char *what)
{
    if (qt_conv_attrs_get(n, x, NULL, &a->c, e, what)) return -1;
    a->ceil_mode = (int)qt_node_int(n, "ceil_mode", 0);
    a->count_include_pad = (int)qt_node_int(n, "count_include_pad", 0);
    if (n->op == QT_OP_MAXPOOL && qt_node_int(n, "storage_order", 0) != 0)
        return qt_err(e, "%s node '%s': storage_order 1 is not supported", what, n->name);
    return 0;
}

/* ---- inference per op ---- */

static int same_as_input(struct qt_infer_ctx *c, struct qt_error *e)
{
    (void)e;
    c->out[0] = c->in[0];
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int require_float(struct qt_infer_ctx *c, int k, struct qt_error *e)
{
    if (c->in_dtype[k] != QT_F32)
        return qt_err(e, NODE_FMT ": input %d has type %s; qtune computes this op in float32",
                      NODE_ARGS(c), k, qt_dtype_name(c->in_dtype[k]));
    return 0;
}

static int infer_unary_float(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (require_float(c, 0, e)) return -1;
    return same_as_input(c, e);
}

static int require_numeric(struct qt_infer_ctx *c, int k, struct qt_error *e)
{
    const enum qt_dtype t = c->in_dtype[k];
    if (t != QT_F32 && t != QT_I32 && t != QT_I64)
        return qt_err(e, NODE_FMT ": input %d has type %s; expected float32, int32 or int64",
                      NODE_ARGS(c), k, qt_dtype_name(t));
    return 0;
}

/* Abs, Neg: element by element on float32, int32 or int64. */
static int infer_unary_numeric(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (require_numeric(c, 0, e)) return -1;
    return same_as_input(c, e);
}

static int infer_clip(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (require_float(c, 0, e)) return -1;
    for (int k = 1; k < c->n->nin; k++)
        if (c->n->in[k] >= 0 && qt_shape_numel(&c->in[k]) != 1)
            return qt_err(e, NODE_FMT ": min and max must be scalars", NODE_ARGS(c));
    return same_as_input(c, e);
}

static int infer_dropout(struct qt_infer_ctx *c, struct qt_error *e)
{
    const struct qt_tensor *tm = c->n->nin > 2 && c->in_val ? c->in_val[2] : NULL;
    if ((tm && qt_tensor_get_i(tm, 0)) || qt_node_int(c->n, "is_test", 1) == 0)
        return qt_err(e, NODE_FMT ": Dropout in training mode is not supported (it is dropped "
                         "for inference)", NODE_ARGS(c));
    c->out[0] = c->in[0];
    c->out_dtype[0] = c->in_dtype[0];
    if (c->n->nout > 1) {
        c->out[1] = c->in[0];
        c->out_dtype[1] = QT_BOOL;
    }
    return 0;
}

void qt_broadcast_strides(int64_t *st, const struct qt_shape *s, const struct qt_shape *o)
{
    int64_t acc = 1;
    for (int i = o->ndim - 1; i >= 0; i--) {
        const int k = i - (o->ndim - s->ndim);
        if (k < 0 || s->d[k] == 1) {
            st[i] = 0;
        } else {
            st[i] = acc;
            acc *= s->d[k];
        }
    }
}

int qt_broadcast_shape(struct qt_shape *out, const struct qt_shape *a, const struct qt_shape *b)
{
    int r = a->ndim > b->ndim ? a->ndim : b->ndim;
    out->ndim = r;
    for (int i = 0; i < r; i++) {
        int ia = i - (r - a->ndim), ib = i - (r - b->ndim);
        int64_t da = ia >= 0 ? a->d[ia] : 1, db = ib >= 0 ? b->d[ib] : 1;
        if (da == db) out->d[i] = da;
        else if (da == 1) out->d[i] = db;
        else if (db == 1) out->d[i] = da;
        else if (da < 0 || db < 0) out->d[i] = da >= 0 ? da : db >= 0 ? db : QT_DIM_ANY;
        else return -1;
    }
    return 0;
}

static int infer_binary(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96];
    if (qt_node_attr(c->n, "broadcast") || qt_node_attr(c->n, "axis"))
        return qt_err(e, NODE_FMT ": the legacy broadcast/axis attributes (opset < 7) are not "
                         "supported", NODE_ARGS(c));
    if (c->in_dtype[0] != c->in_dtype[1])
        return qt_err(e, NODE_FMT ": inputs have different types (%s and %s)", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[0]), qt_dtype_name(c->in_dtype[1]));
    if (c->in_dtype[0] != QT_F32 && c->in_dtype[0] != QT_I64 && c->in_dtype[0] != QT_I32)
        return qt_err(e, NODE_FMT ": type %s is not supported", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[0]));
    if (qt_broadcast_shape(&c->out[0], &c->in[0], &c->in[1]))
        return qt_err(e, NODE_FMT ": shapes %s and %s do not broadcast", NODE_ARGS(c),
                      qt_shape_str(c->g, &c->in[0], b1, sizeof b1),
                      qt_shape_str(c->g, &c->in[1], b2, sizeof b2));
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* Greater, Less: two inputs of one type, broadcast as Add's, compared into bool. */
static int infer_compare(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (infer_binary(c, e)) return -1;
    c->out_dtype[0] = QT_BOOL;
    return 0;
}

/* Where(condition, X, Y): a bool condition, X and Y of one type, the three broadcast. */
static int infer_where(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96], b3[96];
    struct qt_shape t;
    if (c->in_dtype[0] != QT_BOOL)
        return qt_err(e, NODE_FMT ": the condition has type %s, expected bool", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[0]));
    if (c->in_dtype[1] != c->in_dtype[2])
        return qt_err(e, NODE_FMT ": X and Y have different types (%s and %s)", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[1]), qt_dtype_name(c->in_dtype[2]));
    if (!qt_dtype_size(c->in_dtype[1]))
        return qt_err(e, NODE_FMT ": type %s is not supported", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[1]));
    if (qt_broadcast_shape(&t, &c->in[0], &c->in[1]) ||
        qt_broadcast_shape(&c->out[0], &t, &c->in[2]))
        return qt_err(e, NODE_FMT ": shapes %s, %s and %s do not broadcast", NODE_ARGS(c),
                      qt_shape_str(c->g, &c->in[0], b1, sizeof b1),
                      qt_shape_str(c->g, &c->in[1], b2, sizeof b2),
                      qt_shape_str(c->g, &c->in[2], b3, sizeof b3));
    c->out_dtype[0] = c->in_dtype[1];
    return 0;
}

/* The output shape of a Conv or ConvInteger (c->n's kind is `what`). */
static int conv_shape(struct qt_infer_ctx *c, const char *what, struct qt_error *e)
{
    const struct qt_shape *x = &c->in[0], *w = &c->in[1];
    char b1[96], b2[96];
    struct qt_conv_attrs a;
    if (qt_conv_attrs_get(c->n, x, w, &a, e, what)) return -1;
    if (x->d[1] >= 0 && w->d[1] >= 0 && x->d[1] != w->d[1] * a.group)
        return qt_err(e, NODE_FMT ": input %s has %" PRId64 " channels but weight %s expects %" PRId64
                         " (group %" PRId64 ")",
                      NODE_ARGS(c), qt_shape_str(c->g, x, b1, sizeof b1),
                      x->d[1], qt_shape_str(c->g, w, b2, sizeof b2), w->d[1] * a.group, a.group);
    if (w->d[0] >= 0 && w->d[0] % a.group)
        return qt_err(e, NODE_FMT ": %" PRId64 " output channels do not split into %" PRId64 " groups",
                      NODE_ARGS(c), w->d[0], a.group);
    struct qt_shape *o = &c->out[0];
    o->ndim = x->ndim;
    o->d[0] = x->d[0];
    o->d[1] = w->d[0];
    for (int i = 0; i < a.nsp; i++) {
        o->d[2 + i] = qt_window_out(x->d[2 + i], a.kernel[i], a.stride[i], a.dilation[i],
                                    a.pad_begin[i], a.pad_end[i], 0);
        if (o->d[2 + i] == -2 || o->d[2 + i] == 0)
            return qt_err(e, NODE_FMT ": kernel larger than the padded input %s", NODE_ARGS(c),
                          qt_shape_str(c->g, x, b1, sizeof b1));
    }
    return 0;
}

static int infer_conv(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96];
    if (require_float(c, 0, e) || require_float(c, 1, e) || conv_shape(c, "Conv", e)) return -1;
    if (c->n->nin > 2 && c->n->in[2] >= 0) {
        const struct qt_shape *b = &c->in[2], *w = &c->in[1];
        if (b->ndim != 1 || (b->d[0] >= 0 && w->d[0] >= 0 && b->d[0] != w->d[0]))
            return qt_err(e, NODE_FMT ": bias shape %s does not match %" PRId64 " output channels",
                          NODE_ARGS(c), qt_shape_str(c->g, b, b1, sizeof b1), w->d[0]);
    }
    c->out_dtype[0] = QT_F32;
    return 0;
}

/* ConvInteger(x, w, x_zero_point?, w_zero_point?): int8/uint8 x and w, zero points of their
 * types (x's a scalar, w's a scalar or one per output channel), int32 output. */
static int infer_convinteger(struct qt_infer_ctx *c, struct qt_error *e)
{
    for (int k = 0; k < c->n->nin; k++) {
        if (c->n->in[k] < 0) continue;
        const enum qt_dtype t = c->in_dtype[k], want = k < 2 ? t : c->in_dtype[k - 2];
        if ((t != QT_U8 && t != QT_I8) || t != want)
            return qt_err(e, NODE_FMT ": input %d of type %s is not supported (int8 or uint8, "
                             "zero points of their input's type)",
                          NODE_ARGS(c), k, qt_dtype_name(t));
    }
    if (c->n->nin > 2 && c->n->in[2] >= 0 && qt_shape_numel(&c->in[2]) != 1)
        return qt_err(e, NODE_FMT ": the input's zero point must be a scalar", NODE_ARGS(c));
    if (c->n->nin > 3 && c->n->in[3] >= 0 && qt_shape_numel(&c->in[3]) != 1 &&
        !(c->in[3].ndim == 1 && c->in[3].d[0] == c->in[1].d[0]))
        return qt_err(e, NODE_FMT ": the weight's zero point must be a scalar or one per output "
                         "channel", NODE_ARGS(c));
    if (conv_shape(c, "ConvInteger", e)) return -1;
    c->out_dtype[0] = QT_I32;
    return 0;
}

static int infer_pool(struct qt_infer_ctx *c, struct qt_error *e)
{
    const struct qt_shape *x = &c->in[0];
    char b1[96];
    struct qt_pool_attrs a;
    if (require_float(c, 0, e)) return -1;
    if (qt_pool_attrs_get(c->n, x, &a, e, qt_op_name(c->n->op))) return -1;
    struct qt_shape *o = &c->out[0];
    o->ndim = x->ndim;
    o->d[0] = x->d[0];
    o->d[1] = x->d[1];
    for (int i = 0; i < a.c.nsp; i++) {
        if (a.c.pad_begin[i] >= a.c.kernel[i] || a.c.pad_end[i] >= a.c.kernel[i])
            return qt_err(e, NODE_FMT ": padding must be smaller than the kernel", NODE_ARGS(c));
        o->d[2 + i] = qt_window_out(x->d[2 + i], a.c.kernel[i], a.c.stride[i], a.c.dilation[i],
                                    a.c.pad_begin[i], a.c.pad_end[i], a.ceil_mode);
        if (o->d[2 + i] == -2 || o->d[2 + i] == 0)
            return qt_err(e, NODE_FMT ": window larger than the padded input %s", NODE_ARGS(c),
                          qt_shape_str(c->g, x, b1, sizeof b1));
    }
    c->out_dtype[0] = QT_F32;
    if (c->n->nout > 1) {
        c->out[1] = *o;
        c->out_dtype[1] = QT_I64;
    }
    return 0;
}

static int infer_global_pool(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (require_float(c, 0, e)) return -1;
    if (c->in[0].ndim < 3)
        return qt_err(e, NODE_FMT ": input must have rank 3 or more", NODE_ARGS(c));
    c->out[0] = c->in[0];
    for (int i = 2; i < c->in[0].ndim; i++) c->out[0].d[i] = 1;
    c->out_dtype[0] = QT_F32;
    return 0;
}

static int infer_batchnorm(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96];
    if (require_float(c, 0, e)) return -1;
    if (c->in[0].ndim < 2) return qt_err(e, NODE_FMT ": input must have rank 2 or more", NODE_ARGS(c));
    for (int k = 1; k < 5; k++) {
        if (require_float(c, k, e)) return -1;
        if (c->in[k].ndim != 1 ||
            (c->in[k].d[0] >= 0 && c->in[0].d[1] >= 0 && c->in[k].d[0] != c->in[0].d[1]))
            return qt_err(e, NODE_FMT ": input %d has shape %s, expected [%s] channels of %s",
                          NODE_ARGS(c), k, qt_shape_str(c->g, &c->in[k], b1, sizeof b1), "C",
                          qt_shape_str(c->g, &c->in[0], b2, sizeof b2));
    }
    if (qt_node_int(c->n, "spatial", 1) != 1)
        return qt_err(e, NODE_FMT ": spatial=0 (opset < 9) is not supported", NODE_ARGS(c));
    if (qt_node_int(c->n, "training_mode", 0))
        return qt_err(e, NODE_FMT ": training_mode=1 in the file is not supported (qtune "
                         "decides the mode itself)", NODE_ARGS(c));
    c->out[0] = c->in[0];
    c->out_dtype[0] = QT_F32;
    for (int k = 1; k < c->n->nout; k++) {
        c->out[k] = c->in[3];
        c->out_dtype[k] = QT_F32;
    }
    return 0;
}

static int infer_gemm(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96];
    const struct qt_shape *a = &c->in[0], *b = &c->in[1];
    if (require_float(c, 0, e) || require_float(c, 1, e)) return -1;
    if (a->ndim != 2 || b->ndim != 2)
        return qt_err(e, NODE_FMT ": inputs must be matrices, got %s and %s", NODE_ARGS(c),
                      qt_shape_str(c->g, a, b1, sizeof b1), qt_shape_str(c->g, b, b2, sizeof b2));
    int ta = (int)qt_node_int(c->n, "transA", 0), tb = (int)qt_node_int(c->n, "transB", 0);
    int64_t m = ta ? a->d[1] : a->d[0], ka = ta ? a->d[0] : a->d[1];
    int64_t kb = tb ? b->d[1] : b->d[0], n = tb ? b->d[0] : b->d[1];
    if (ka >= 0 && kb >= 0 && ka != kb)
        return qt_err(e, NODE_FMT ": inner dimensions differ: %s x %s (transA=%d, transB=%d)",
                      NODE_ARGS(c), qt_shape_str(c->g, a, b1, sizeof b1),
                      qt_shape_str(c->g, b, b2, sizeof b2), ta, tb);
    struct qt_shape *o = &c->out[0];
    o->ndim = 2;
    o->d[0] = m;
    o->d[1] = n;
    if (c->n->nin > 2 && c->n->in[2] >= 0) {
        struct qt_shape t;
        if (require_float(c, 2, e)) return -1;
        if (c->in[2].ndim > 2 || qt_broadcast_shape(&t, o, &c->in[2]) || !qt_shape_eq(&t, o))
            return qt_err(e, NODE_FMT ": C of shape %s does not broadcast to %s", NODE_ARGS(c),
                          qt_shape_str(c->g, &c->in[2], b1, sizeof b1),
                          qt_shape_str(c->g, o, b2, sizeof b2));
    }
    c->out_dtype[0] = QT_F32;
    return 0;
}

static int infer_matmul(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96];
    struct qt_shape a = c->in[0], b = c->in[1];
    if (require_float(c, 0, e) || require_float(c, 1, e)) return -1;
    if (a.ndim < 1 || b.ndim < 1) return qt_err(e, NODE_FMT ": scalar inputs", NODE_ARGS(c));
    int a1 = a.ndim == 1, b1d = b.ndim == 1;
    if (a1) { a.ndim = 2; a.d[1] = a.d[0]; a.d[0] = 1; }
    if (b1d) { b.ndim = 2; b.d[1] = 1; }
    int64_t ka = a.d[a.ndim - 1], kb = b.d[b.ndim - 2];
    if (ka >= 0 && kb >= 0 && ka != kb)
        return qt_err(e, NODE_FMT ": inner dimensions differ: %s x %s", NODE_ARGS(c),
                      qt_shape_str(c->g, &c->in[0], b1, sizeof b1),
                      qt_shape_str(c->g, &c->in[1], b2, sizeof b2));
    struct qt_shape ba = a, bb = b, bo;
    ba.ndim -= 2;
    bb.ndim -= 2;
    if (qt_broadcast_shape(&bo, &ba, &bb))
        return qt_err(e, NODE_FMT ": batch dimensions of %s and %s do not broadcast", NODE_ARGS(c),
                      qt_shape_str(c->g, &c->in[0], b1, sizeof b1),
                      qt_shape_str(c->g, &c->in[1], b2, sizeof b2));
    struct qt_shape *o = &c->out[0];
    *o = bo;
    if (!a1) o->d[o->ndim++] = a.d[a.ndim - 2];
    if (!b1d) o->d[o->ndim++] = b.d[b.ndim - 1];
    c->out_dtype[0] = QT_F32;
    return 0;
}

static int infer_flatten(struct qt_infer_ctx *c, struct qt_error *e)
{
    int64_t axis = qt_node_int(c->n, "axis", 1);
    int r = c->in[0].ndim;
    if (axis < -r || axis > r) return qt_err(e, NODE_FMT ": axis %" PRId64 " out of range", NODE_ARGS(c), axis);
    if (axis < 0) axis += r;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < r; i++) {
        int64_t d = c->in[0].d[i];
        int64_t *acc = i < axis ? &outer : &inner;
        if (d < 0 || *acc < 0) *acc = (d < 0 && *acc == 1 && r > 0) ? d : QT_DIM_ANY;
        else *acc *= d;
    }
    c->out[0].ndim = 2;
    c->out[0].d[0] = outer;
    c->out[0].d[1] = inner;
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int infer_reshape(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96];
    if (c->n->nin < 2)
        return qt_err(e, NODE_FMT ": the shape attribute (opset < 5) is not supported", NODE_ARGS(c));
    const struct qt_tensor *s = c->in_val ? c->in_val[1] : NULL;
    if (c->in[1].ndim != 1) return qt_err(e, NODE_FMT ": shape input must be 1-D", NODE_ARGS(c));
    if (c->in_dtype[1] != QT_I64) return qt_err(e, NODE_FMT ": shape input must be int64", NODE_ARGS(c));
    int r = (int)c->in[1].d[0];
    c->out_dtype[0] = c->in_dtype[0];
    struct qt_shape *o = &c->out[0];
    if (r < 0 || r > QT_MAX_DIMS) return qt_err(e, NODE_FMT ": unsupported output rank", NODE_ARGS(c));
    o->ndim = r;
    if (!s) {
        for (int i = 0; i < r; i++) o->d[i] = QT_DIM_ANY;
        return 0;
    }
    int allowzero = (int)qt_node_int(c->n, "allowzero", 0);
    int neg = -1;
    int64_t known = 1;
    int sym = 0;
    for (int i = 0; i < r; i++) {
        int64_t v = qt_tensor_get_i(s, i);
        if (QT_IS_SYM_VAL(v)) {
            o->d[i] = -1 - QT_SYM_OF_VAL(v);
            sym = 1;
        } else if (v == 0 && !allowzero) {
            if (i >= c->in[0].ndim)
                return qt_err(e, NODE_FMT ": shape copies dimension %d the input lacks", NODE_ARGS(c), i);
            o->d[i] = c->in[0].d[i];
            if (o->d[i] < 0) sym = 1;
            else if (__builtin_mul_overflow(known, o->d[i], &known))
                return qt_err(e, NODE_FMT ": the shape's element count overflows", NODE_ARGS(c));
        } else if (v == -1) {
            if (neg >= 0) return qt_err(e, NODE_FMT ": more than one -1 in the shape", NODE_ARGS(c));
            neg = i;
        } else if (v < 0) {
            return qt_err(e, NODE_FMT ": invalid dimension %" PRId64 " in the shape", NODE_ARGS(c), v);
        } else {
            o->d[i] = v;
            if (__builtin_mul_overflow(known, v, &known))
                return qt_err(e, NODE_FMT ": the shape's element count overflows", NODE_ARGS(c));
        }
    }
    int64_t total = qt_shape_numel(&c->in[0]);
    if (neg >= 0) {
        if (total < 0 || sym) {
            /* Symbolic input: the -1 takes whatever the known dims leave. */
            int64_t rest = 1;
            int unknown = 0;
            for (int i = 0; i < c->in[0].ndim; i++) {
                int64_t d = c->in[0].d[i];
                if (d >= 0) rest *= d;
                else unknown++;
            }
            int osym = 0;
            for (int i = 0; i < r; i++) osym += i != neg && o->d[i] < 0;
            o->d[neg] = (unknown == osym && known && rest % known == 0) ? rest / known : QT_DIM_ANY;
        } else {
            if (known == 0 || total % known)
                return qt_err(e, NODE_FMT ": cannot reshape %s to the requested shape", NODE_ARGS(c),
                              qt_shape_str(c->g, &c->in[0], b1, sizeof b1));
            o->d[neg] = total / known;
        }
    } else if (total >= 0 && !sym && total != known) {
        return qt_err(e, NODE_FMT ": cannot reshape %s (%" PRId64 " elements) to %" PRId64 " elements",
                      NODE_ARGS(c), qt_shape_str(c->g, &c->in[0], b1, sizeof b1), total, known);
    }
    return 0;
}

static int infer_shape(struct qt_infer_ctx *c, struct qt_error *e)
{
    int r = c->in[0].ndim;
    int64_t start = qt_node_int(c->n, "start", 0), end = qt_node_int(c->n, "end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    if (start < 0) start = 0;
    if (end > r) end = r;
    c->out[0].ndim = 1;
    c->out[0].d[0] = end > start ? end - start : 0;
    c->out_dtype[0] = QT_I64;
    (void)e;
    return 0;
}

static int infer_gather(struct qt_infer_ctx *c, struct qt_error *e)
{
    const struct qt_shape *d = &c->in[0], *ix = &c->in[1];
    int64_t axis = qt_node_int(c->n, "axis", 0);
    if (normalize_axis(&axis, d->ndim)) return qt_err(e, NODE_FMT ": axis out of range", NODE_ARGS(c));
    if (c->in_dtype[1] != QT_I64 && c->in_dtype[1] != QT_I32)
        return qt_err(e, NODE_FMT ": indices must be int32 or int64", NODE_ARGS(c));
    if (d->ndim - 1 + ix->ndim > QT_MAX_DIMS) return qt_err(e, NODE_FMT ": rank too large", NODE_ARGS(c));
    struct qt_shape *o = &c->out[0];
    o->ndim = 0;
    for (int i = 0; i < axis; i++) o->d[o->ndim++] = d->d[i];
    for (int i = 0; i < ix->ndim; i++) o->d[o->ndim++] = ix->d[i];
    for (int i = (int)axis + 1; i < d->ndim; i++) o->d[o->ndim++] = d->d[i];
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* Axes from the attribute (older opsets) or the second input (newer ones). Returns count,
 * 0 when none are given, -1 on error, -2 when the axes input is not known yet. */
static int get_axes(struct qt_infer_ctx *c, int64_t *axes, struct qt_error *e)
{
    int na = qt_node_ints(c->n, "axes", axes, QT_MAX_DIMS);
    if (na > QT_MAX_DIMS) return qt_err(e, NODE_FMT ": too many axes", NODE_ARGS(c));
    if (na >= 0) return na;
    if (c->n->nin > 1 && c->n->in[1] >= 0) {
        const struct qt_tensor *t = c->in_val ? c->in_val[1] : NULL;
        if (!t) return -2;
        int64_t cnt = qt_shape_numel(&t->shape);
        if (cnt > QT_MAX_DIMS) return qt_err(e, NODE_FMT ": too many axes", NODE_ARGS(c));
        for (int i = 0; i < cnt; i++) axes[i] = qt_tensor_get_i(t, i);
        return (int)cnt;
    }
    return 0;
}

static int infer_unsqueeze(struct qt_infer_ctx *c, struct qt_error *e)
{
    int64_t axes[QT_MAX_DIMS];
    int na = get_axes(c, axes, e);
    if (na == -1) return -1;
    if (na == -2) return qt_err(e, NODE_FMT ": axes must be a constant", NODE_ARGS(c));
    int r = c->in[0].ndim + na;
    if (r > QT_MAX_DIMS) return qt_err(e, NODE_FMT ": rank too large", NODE_ARGS(c));
    char ins[QT_MAX_DIMS] = {0};
    for (int i = 0; i < na; i++) {
        if (normalize_axis(&axes[i], r) || ins[axes[i]])
            return qt_err(e, NODE_FMT ": invalid or repeated axis", NODE_ARGS(c));
        ins[axes[i]] = 1;
    }
    struct qt_shape *o = &c->out[0];
    o->ndim = r;
    for (int i = 0, k = 0; i < r; i++) o->d[i] = ins[i] ? 1 : c->in[0].d[k++];
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int infer_squeeze(struct qt_infer_ctx *c, struct qt_error *e)
{
    int64_t axes[QT_MAX_DIMS];
    int na = get_axes(c, axes, e);
    if (na == -1) return -1;
    if (na == -2) return qt_err(e, NODE_FMT ": axes must be a constant", NODE_ARGS(c));
    int r = c->in[0].ndim;
    char rm[QT_MAX_DIMS] = {0};
    if (na == 0) {
        for (int i = 0; i < r; i++) rm[i] = c->in[0].d[i] == 1;
    }
    for (int i = 0; i < na; i++) {
        if (normalize_axis(&axes[i], r))
            return qt_err(e, NODE_FMT ": axis out of range", NODE_ARGS(c));
        if (c->in[0].d[axes[i]] != 1 && c->in[0].d[axes[i]] >= 0)
            return qt_err(e, NODE_FMT ": cannot squeeze axis %" PRId64 " of size %" PRId64, NODE_ARGS(c),
                          axes[i], c->in[0].d[axes[i]]);
        rm[axes[i]] = 1;
    }
    struct qt_shape *o = &c->out[0];
    o->ndim = 0;
    for (int i = 0; i < r; i++)
        if (!rm[i]) o->d[o->ndim++] = c->in[0].d[i];
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int infer_concat(struct qt_infer_ctx *c, struct qt_error *e)
{
    char b1[96], b2[96];
    int64_t axis = qt_node_int(c->n, "axis", 0);
    int r = c->in[0].ndim;
    if (normalize_axis(&axis, r)) return qt_err(e, NODE_FMT ": axis out of range", NODE_ARGS(c));
    struct qt_shape *o = &c->out[0];
    *o = c->in[0];
    for (int k = 1; k < c->n->nin; k++) {
        const struct qt_shape *s = &c->in[k];
        if (c->in_dtype[k] != c->in_dtype[0])
            return qt_err(e, NODE_FMT ": inputs have different types", NODE_ARGS(c));
        if (s->ndim != r) return qt_err(e, NODE_FMT ": inputs have different ranks", NODE_ARGS(c));
        for (int i = 0; i < r; i++) {
            if (i == axis) {
                o->d[i] = (o->d[i] >= 0 && s->d[i] >= 0) ? o->d[i] + s->d[i] : QT_DIM_ANY;
            } else if (s->d[i] != o->d[i] && s->d[i] >= 0 && o->d[i] >= 0) {
                return qt_err(e, NODE_FMT ": shapes %s and %s differ outside axis %" PRId64,
                              NODE_ARGS(c), qt_shape_str(c->g, &c->in[0], b1, sizeof b1),
                              qt_shape_str(c->g, s, b2, sizeof b2), axis);
            }
        }
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int infer_constant(struct qt_infer_ctx *c, struct qt_error *e)
{
    const struct qt_attr *a = qt_node_attr(c->n, "value");
    struct qt_shape *o = &c->out[0];
    if (a && a->type == QT_ATTR_TENSOR && a->t) {
        *o = a->t->shape;
        c->out_dtype[0] = a->t->dtype;
        return 0;
    }
    if ((a = qt_node_attr(c->n, "value_float"))) { o->ndim = 0; c->out_dtype[0] = QT_F32; return 0; }
    if ((a = qt_node_attr(c->n, "value_int"))) { o->ndim = 0; c->out_dtype[0] = QT_I64; return 0; }
    if ((a = qt_node_attr(c->n, "value_floats"))) {
        o->ndim = 1; o->d[0] = a->n; c->out_dtype[0] = QT_F32; return 0;
    }
    if ((a = qt_node_attr(c->n, "value_ints"))) {
        o->ndim = 1; o->d[0] = a->n; c->out_dtype[0] = QT_I64; return 0;
    }
    return qt_err(e, NODE_FMT ": only value, value_float(s) and value_int(s) are supported", NODE_ARGS(c));
}

static int infer_cast(struct qt_infer_ctx *c, struct qt_error *e)
{
    int64_t to = qt_node_int(c->n, "to", 0);
    if (!qt_dtype_size((enum qt_dtype)to) || to == QT_F16)
        return qt_err(e, NODE_FMT ": cast to %s is not supported", NODE_ARGS(c),
                      qt_dtype_name((enum qt_dtype)to));
    if (!qt_dtype_size(c->in_dtype[0]) || c->in_dtype[0] == QT_F16)
        return qt_err(e, NODE_FMT ": cast from %s is not supported", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[0]));
    c->out[0] = c->in[0];
    c->out_dtype[0] = (enum qt_dtype)to;
    return 0;
}

static int infer_softmax(struct qt_infer_ctx *c, struct qt_error *e)
{
    if (require_float(c, 0, e)) return -1;
    int64_t axis = qt_node_int(c->n, "axis", c->g && c->g->opset < 13 ? 1 : -1);
    if (normalize_axis(&axis, c->in[0].ndim)) return qt_err(e, NODE_FMT ": axis out of range", NODE_ARGS(c));
    return same_as_input(c, e);
}

int qt_transpose_perm(const struct qt_node *n, int r, int *perm, struct qt_error *e)
{
    int64_t p[QT_MAX_DIMS];
    const int np = qt_node_ints(n, "perm", p, QT_MAX_DIMS);
    if (np < 0)
        for (int i = 0; i < r; i++) perm[i] = r - 1 - i;
    else if (np != r)
        return qt_err(e, "Transpose node '%s': perm has %d entries for an input of rank %d",
                      n->name, np, r);
    int seen[QT_MAX_DIMS] = {0};
    for (int i = 0; i < r; i++) {
        if (np >= 0) {
            if (p[i] < 0 || p[i] >= r)
                return qt_err(e, "Transpose node '%s': perm entry %lld out of range for rank %d",
                              n->name, (long long)p[i], r);
            perm[i] = (int)p[i];
        }
        if (seen[perm[i]]++)
            return qt_err(e, "Transpose node '%s': perm names dimension %d twice", n->name,
                          perm[i]);
    }
    return 0;
}

static int infer_transpose(struct qt_infer_ctx *c, struct qt_error *e)
{
    int perm[QT_MAX_DIMS];
    const int r = c->in[0].ndim;
    if (qt_transpose_perm(c->n, r, perm, e)) return -1;
    c->out[0].ndim = r;
    for (int i = 0; i < r; i++) c->out[0].d[i] = c->in[0].d[perm[i]];
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* ReduceMean (float32) and ReduceSum (float32, int32, int64). */
static int infer_reduce(struct qt_infer_ctx *c, struct qt_error *e)
{
    const int sum = c->n->op == QT_OP_REDUCESUM;
    if (sum ? require_numeric(c, 0, e) : require_float(c, 0, e)) return -1;
    int64_t axes[QT_MAX_DIMS];
    int na = get_axes(c, axes, e);
    if (na == -1) return -1;
    if (na == -2) return qt_err(e, NODE_FMT ": axes must be a constant", NODE_ARGS(c));
    int r = c->in[0].ndim, keep = (int)qt_node_int(c->n, "keepdims", 1);
    char red[QT_MAX_DIMS] = {0};
    if (na == 0) {
        if (qt_node_int(c->n, "noop_with_empty_axes", 0)) return same_as_input(c, e);
        for (int i = 0; i < r; i++) red[i] = 1;
    }
    for (int i = 0; i < na; i++) {
        if (normalize_axis(&axes[i], r)) return qt_err(e, NODE_FMT ": axis out of range", NODE_ARGS(c));
        red[axes[i]] = 1;
    }
    struct qt_shape *o = &c->out[0];
    o->ndim = 0;
    for (int i = 0; i < r; i++) {
        if (!red[i]) o->d[o->ndim++] = c->in[0].d[i];
        else if (keep) o->d[o->ndim++] = 1;
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

int qt_pad_amounts(const struct qt_node *n, const struct qt_tensor *t, int64_t *pads)
{
    const int np = qt_node_ints(n, "pads", pads, 2 * QT_MAX_DIMS);
    if (np >= 0) return np;
    if (!t) return -1;
    const int64_t m = qt_shape_numel(&t->shape);
    if (m > 2 * QT_MAX_DIMS) return -2;
    for (int64_t i = 0; i < m; i++) pads[i] = qt_tensor_get_i(t, i);
    return (int)m;
}

double qt_pad_value(const struct qt_node *n, const struct qt_tensor *t)
{
    return t ? qt_tensor_get_f(t, 0) : qt_node_float(n, "value", 0.f);
}

static int infer_pad(struct qt_infer_ctx *c, struct qt_error *e)
{
    int r = c->in[0].ndim;
    int64_t pads[2 * QT_MAX_DIMS];
    const int np = qt_pad_amounts(c->n, c->in_val && c->n->nin > 1 ? c->in_val[1] : NULL, pads);
    if (np == -1) return qt_err(e, NODE_FMT ": pads must be a constant", NODE_ARGS(c));
    if (np == -2) return qt_err(e, NODE_FMT ": too many pads", NODE_ARGS(c));
    if (c->n->nin > 3 && c->n->in[3] >= 0)
        return qt_err(e, NODE_FMT ": the axes input is not supported", NODE_ARGS(c));
    if (np != 2 * r)
        return qt_err(e, NODE_FMT ": %d pads for an input of rank %d", NODE_ARGS(c), np, r);
    const char *mode = qt_node_string(c->n, "mode", "constant");
    if (strcmp(mode, "constant") && strcmp(mode, "reflect") && strcmp(mode, "edge"))
        return qt_err(e, NODE_FMT ": pad mode '%s' is not supported", NODE_ARGS(c), mode);
    c->out[0] = c->in[0];
    for (int i = 0; i < r; i++) {
        int64_t d = c->in[0].d[i];
        if (d < 0) {
            if (pads[i] || pads[i + r]) c->out[0].d[i] = QT_DIM_ANY;
            continue;
        }
        int64_t od;
        if (__builtin_add_overflow(d, pads[i], &od) || __builtin_add_overflow(od, pads[i + r], &od))
            return qt_err(e, NODE_FMT ": pads %lld and %lld are out of range", NODE_ARGS(c),
                          (long long)pads[i], (long long)pads[i + r]);
        c->out[0].d[i] = od;
        if (c->out[0].d[i] < 0) return qt_err(e, NODE_FMT ": pads remove more than the input", NODE_ARGS(c));
        if (strcmp(mode, "reflect") == 0 && (pads[i] >= d || pads[i + r] >= d))
            return qt_err(e, NODE_FMT ": reflect pads must be smaller than the dimension", NODE_ARGS(c));
    }
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

static int infer_identity(struct qt_infer_ctx *c, struct qt_error *e)
{
    return same_as_input(c, e);
}

const char *qt_quant_scheme_name(int scheme)
{
    static const char *names[] = {"apot", "uniform", "max", "absmax"};
    return scheme >= 0 && scheme < 4 ? names[scheme] : "?";
}

int qt_quant_attrs_check(const struct qt_quant_attrs *a, enum qt_op op, const char *name,
                         struct qt_error *e)
{
    const char *what = qt_op_name(op), *s = qt_quant_scheme_name(a->scheme);
    int weight = op == QT_OP_WEIGHTQUANT;
    if (a->scheme < 0 || a->scheme > QT_QS_ABSMAX || (!weight && a->scheme > QT_QS_UNIFORM))
        return qt_err(e, "%s node '%s': unknown scheme '%s' (expected apot or uniform%s)", what,
                      name, s, weight ? ", or max/absmax for 8-bit weights" : "");
    if (weight && !a->is_signed)
        return qt_err(e, "%s node '%s': weights are quantized signed", what, name);
    if (a->scheme >= QT_QS_MAX) {
        if (a->bits != 8 && a->bits != -1)
            return qt_err(e, "%s node '%s': scheme %s quantizes to 8 bits, not %d", what, name, s,
                          a->bits);
        if (a->standardize)
            return qt_err(e, "%s node '%s': scheme %s does not standardize", what, name, s);
        return 0;
    }
    if (a->bits < 1 || a->bits > 9) {
        if (a->bits == -1) return qt_err(e, "%s node '%s': attribute bits is missing", what, name);
        return qt_err(e, "%s node '%s': %d bits is out of range", what, name, a->bits);
    }
    int msb = a->is_signed ? a->bits - 1 : a->bits, maxb = a->scheme == QT_QS_APOT ? 5 : 8;
    if (msb < 1)
        return qt_err(e, "%s node '%s': %d bits leave no magnitude bit for a signed tensor", what,
                      name, a->bits);
    if (msb > maxb)
        return qt_err(e, "%s node '%s': %s has level sets up to %d bits for %s tensors, not %d%s",
                      what, name, s, a->is_signed ? maxb + 1 : maxb,
                      a->is_signed ? "signed" : "unsigned", a->bits,
                      a->scheme == QT_QS_APOT ? " (use scheme uniform beyond)" : "");
    return 0;
}

int qt_quant_attrs_get(const struct qt_node *n, struct qt_quant_attrs *a, struct qt_error *e)
{
    const char *what = qt_op_name(n->op);
    const char *s = qt_node_string(n, "scheme", "apot");
    int weight = n->op == QT_OP_WEIGHTQUANT;
    a->scheme = -1;
    for (int k = 0; k < 4; k++)
        if (strcmp(s, qt_quant_scheme_name(k)) == 0) a->scheme = k;
    if (a->scheme < 0)
        return qt_err(e, "%s node '%s': unknown scheme '%s' (expected apot or uniform%s)", what,
                      n->name, s, weight ? ", or max/absmax for 8-bit weights" : "");
    int64_t bits = qt_node_int(n, "bits", -1), sg = qt_node_int(n, "signed", weight ? 1 : 0);
    int64_t st = qt_node_int(n, "standardize", weight && a->scheme <= QT_QS_UNIFORM ? 1 : 0);
    if (sg != 0 && sg != 1) return qt_err(e, "%s node '%s': signed must be 0 or 1", what, n->name);
    if (st < QT_STD_NONE || st > QT_STD_RESTORE)
        return qt_err(e, "%s node '%s': standardize must be 0, 1 or 2", what, n->name);
    a->is_signed = (int)sg;
    a->standardize = (int)st;
    /* -1 stays "missing"; values beyond int's range are out of range either way */
    a->bits = bits > INT_MAX ? INT_MAX : bits < INT_MIN ? INT_MIN : (int)bits;
    if (qt_quant_attrs_check(a, n->op, n->name, e)) return -1;
    if (a->scheme >= QT_QS_MAX) a->bits = 8;
    return 0;
}

/* WeightQuant / ActQuant: output like the tensor; alpha is a float vector of 1 value (or, for
 * uniform weights, one per output channel). */
static int infer_quant(struct qt_infer_ctx *c, struct qt_error *e)
{
    struct qt_quant_attrs a;
    if (qt_quant_attrs_get(c->n, &a, e)) return -1;
    if (require_float(c, 0, e)) return -1;
    int has_alpha = c->n->nin > 1 && c->n->in[1] >= 0;
    if (a.scheme >= QT_QS_MAX) {
        if (has_alpha)
            return qt_err(e, NODE_FMT ": scheme %s takes no alpha input", NODE_ARGS(c),
                          qt_quant_scheme_name(a.scheme));
    } else {
        if (!has_alpha) return qt_err(e, NODE_FMT ": the alpha input is missing", NODE_ARGS(c));
        if (require_float(c, 1, e)) return -1;
        int64_t na = qt_shape_numel(&c->in[1]);
        int per_ch = c->n->op == QT_OP_WEIGHTQUANT && a.scheme == QT_QS_UNIFORM &&
                     c->in[0].ndim >= 1 && na == c->in[0].d[0] && na > 1;
        if (na != 1 && !per_ch)
            return qt_err(e, NODE_FMT ": alpha has %" PRId64 " values; expected 1%s", NODE_ARGS(c),
                          na, c->n->op == QT_OP_WEIGHTQUANT && a.scheme == QT_QS_UNIFORM
                                  ? " or one per output channel" : "");
    }
    return same_as_input(c, e);
}

/* BitQuant: bit planes p, n of shape [N, weight dims...] (1 <= N <= 8) and a scale s (one
 * value) give the weight of the weight dims (kernels/common/bsq.h). */
static int infer_bitquant(struct qt_infer_ctx *c, struct qt_error *e)
{
    for (int k = 0; k < 3; k++)
        if (require_float(c, k, e)) return -1;
    const struct qt_shape *p = &c->in[0], *n = &c->in[1];
    if (p->ndim < 2 || p->d[0] < 1 || p->d[0] > 8)
        return qt_err(e, NODE_FMT ": bit planes need a shape [N, ...] with 1 <= N <= 8",
                      NODE_ARGS(c));
    if (n->ndim != p->ndim)
        return qt_err(e, NODE_FMT ": the two bit-plane inputs differ in shape", NODE_ARGS(c));
    for (int i = 0; i < p->ndim; i++)
        if (n->d[i] != p->d[i])
            return qt_err(e, NODE_FMT ": the two bit-plane inputs differ in shape", NODE_ARGS(c));
    if (qt_shape_numel(&c->in[2]) != 1)
        return qt_err(e, NODE_FMT ": the scale must be one value", NODE_ARGS(c));
    c->out[0].ndim = p->ndim - 1;
    for (int i = 1; i < p->ndim; i++)
        c->out[0].d[i - 1] = p->d[i];
    c->out_dtype[0] = QT_F32;
    return 0;
}

int qt_slice_plan(const struct qt_node *n, const struct qt_shape *x, const struct qt_tensor **vals,
                  int64_t *start, int64_t *step, struct qt_shape *out, struct qt_error *e)
{
    const int r = x->ndim;
    int64_t st[QT_MAX_DIMS], en[QT_MAX_DIMS], ax[QT_MAX_DIMS], sp[QT_MAX_DIMS];
    int cnt = qt_node_ints(n, "starts", st, QT_MAX_DIMS), na;
    if (cnt >= 0) { /* opset 1: attributes, steps of 1 */
        if (qt_node_ints(n, "ends", en, QT_MAX_DIMS) != cnt)
            return qt_err(e, "Slice node '%s': starts and ends differ in length", n->name);
        na = qt_node_ints(n, "axes", ax, QT_MAX_DIMS);
        for (int i = 0; i < cnt; i++) sp[i] = 1;
    } else {
        for (int k = 1; k < 3; k++)
            if (!vals || !vals[k])
                return qt_err(e, "Slice node '%s': starts and ends must be constants", n->name);
        cnt = (int)qt_shape_numel(&vals[1]->shape);
        if (cnt > QT_MAX_DIMS || qt_shape_numel(&vals[2]->shape) != cnt)
            return qt_err(e, "Slice node '%s': starts and ends differ in length", n->name);
        na = -1;
        if (n->nin > 3 && n->in[3] >= 0) {
            if (!vals[3] || qt_shape_numel(&vals[3]->shape) != cnt)
                return qt_err(e, "Slice node '%s': axes must be a constant as long as starts",
                              n->name);
            na = cnt;
        }
        if (n->nin > 4 && n->in[4] >= 0 && (!vals[4] || qt_shape_numel(&vals[4]->shape) != cnt))
            return qt_err(e, "Slice node '%s': steps must be a constant as long as starts", n->name);
        for (int i = 0; i < cnt; i++) {
            st[i] = qt_tensor_get_i(vals[1], i);
            en[i] = qt_tensor_get_i(vals[2], i);
            if (na >= 0) ax[i] = qt_tensor_get_i(vals[3], i);
            sp[i] = n->nin > 4 && n->in[4] >= 0 ? qt_tensor_get_i(vals[4], i) : 1;
        }
    }
    if (na >= 0 && na != cnt)
        return qt_err(e, "Slice node '%s': axes and starts differ in length", n->name);
    *out = *x;
    char seen[QT_MAX_DIMS] = {0};
    for (int d = 0; d < r; d++) start[d] = 0, step[d] = 1;
    for (int i = 0; i < cnt; i++) {
        int64_t a = na >= 0 ? ax[i] : i;
        if (normalize_axis(&a, r) || seen[a])
            return qt_err(e, "Slice node '%s': axis %lld out of range or repeated", n->name,
                          (long long)(na >= 0 ? ax[i] : i));
        seen[a] = 1;
        const int64_t dim = x->d[a];
        if (dim < 0) return qt_err(e, "Slice node '%s': slicing a symbolic dimension", n->name);
        if (sp[i] == 0) return qt_err(e, "Slice node '%s': a step of 0", n->name);
        int64_t s0 = st[i] < 0 ? st[i] + dim : st[i], e0 = en[i] < 0 ? en[i] + dim : en[i];
        /* INT64_MAX / INT64_MIN ends mean "to the end": keep the sums in range */
        if (st[i] < -dim) s0 = -1;
        if (en[i] < -dim) e0 = -1;
        int64_t len;
        if (sp[i] > 0) {
            s0 = s0 < 0 ? 0 : s0 > dim ? dim : s0;
            e0 = e0 < 0 ? 0 : e0 > dim ? dim : e0;
            len = e0 > s0 ? (e0 - s0 + sp[i] - 1) / sp[i] : 0;
        } else {
            s0 = s0 < 0 ? 0 : s0 > dim - 1 ? dim - 1 : s0;
            e0 = e0 < -1 ? -1 : e0 > dim - 1 ? dim - 1 : e0;
            len = s0 > e0 ? (s0 - e0 - sp[i] - 1) / -sp[i] : 0;
        }
        start[a] = s0;
        step[a] = sp[i];
        out->d[a] = len;
    }
    return 0;
}

/* Slice: output shape from constant starts, ends, axes and steps. */
static int infer_slice(struct qt_infer_ctx *c, struct qt_error *e)
{
    int64_t start[QT_MAX_DIMS], step[QT_MAX_DIMS];
    if (qt_slice_plan(c->n, &c->in[0], c->in_val, start, step, &c->out[0], e)) return -1;
    c->out_dtype[0] = c->in_dtype[0];
    return 0;
}

/* QuantizeLinear(x float, scale, zero_point?) -> int8/uint8 (the zero point's type, uint8
 * without one); DequantizeLinear(x int8/uint8/int32, scale, zero_point?) -> float. The scale
 * is a scalar, or with `axis` one value per slice along that axis; the zero point has the
 * scale's shape. */
static int infer_qdq(struct qt_infer_ctx *c, struct qt_error *e)
{
    const int q = c->n->op == QT_OP_QUANTIZELINEAR;
    const int has_zp = c->n->nin > 2 && c->n->in[2] >= 0;
    const enum qt_dtype zt = has_zp ? c->in_dtype[2] : QT_U8;
    if (q ? c->in_dtype[0] != QT_F32
          : (c->in_dtype[0] != QT_I8 && c->in_dtype[0] != QT_U8 && c->in_dtype[0] != QT_I32))
        return qt_err(e, NODE_FMT ": input of type %s is not supported", NODE_ARGS(c),
                      qt_dtype_name(c->in_dtype[0]));
    if (c->in_dtype[1] != QT_F32)
        return qt_err(e, NODE_FMT ": the scale must be float32", NODE_ARGS(c));
    if (zt != QT_I8 && zt != QT_U8 && !(zt == QT_I32 && !q))
        return qt_err(e, NODE_FMT ": zero point of type %s is not supported", NODE_ARGS(c),
                      qt_dtype_name(zt));
    if (!q && has_zp && zt != c->in_dtype[0])
        return qt_err(e, NODE_FMT ": the zero point's type differs from the input's", NODE_ARGS(c));
    const int64_t ns = qt_shape_numel(&c->in[1]);
    if (has_zp && !qt_shape_eq(&c->in[1], &c->in[2]))
        return qt_err(e, NODE_FMT ": scale and zero point differ in shape", NODE_ARGS(c));
    if (ns != 1) {
        int64_t axis = qt_node_int(c->n, "axis", 1);
        if (c->in[1].ndim != 1 || normalize_axis(&axis, c->in[0].ndim) ||
            (c->in[0].d[axis] >= 0 && c->in[0].d[axis] != ns))
            return qt_err(e, NODE_FMT ": %lld scales do not match the input along axis %lld",
                          NODE_ARGS(c), (long long)ns, (long long)qt_node_int(c->n, "axis", 1));
    }
    c->out[0] = c->in[0];
    c->out_dtype[0] = q ? zt : QT_F32;
    return 0;
}

static const struct qt_op_schema schemas[] = {
    {QT_OP_CONV, "Conv", 2, 3, 1, 1, 0, infer_conv, NULL},
    {QT_OP_CONVINTEGER, "ConvInteger", 2, 4, 1, 1, 0, infer_convinteger, NULL},
    {QT_OP_BATCHNORM, "BatchNormalization", 5, 5, 1, 3, 0, infer_batchnorm, NULL},
    {QT_OP_RELU, "Relu", 1, 1, 1, 1, 0, infer_unary_float, NULL},
    {QT_OP_CLIP, "Clip", 1, 3, 1, 1, 0, infer_clip, NULL},
    {QT_OP_ADD, "Add", 2, 2, 1, 1, 0, infer_binary, NULL},
    {QT_OP_SUB, "Sub", 2, 2, 1, 1, 0, infer_binary, NULL},
    {QT_OP_MUL, "Mul", 2, 2, 1, 1, 0, infer_binary, NULL},
    {QT_OP_DIV, "Div", 2, 2, 1, 1, 0, infer_binary, NULL},
    {QT_OP_MAXPOOL, "MaxPool", 1, 1, 1, 2, 0, infer_pool, NULL},
    {QT_OP_AVGPOOL, "AveragePool", 1, 1, 1, 1, 0, infer_pool, NULL},
    {QT_OP_GLOBALAVGPOOL, "GlobalAveragePool", 1, 1, 1, 1, 0, infer_global_pool, NULL},
    {QT_OP_PAD, "Pad", 1, 4, 1, 1, 2u | 4u, infer_pad, NULL},
    {QT_OP_FLATTEN, "Flatten", 1, 1, 1, 1, 0, infer_flatten, NULL},
    {QT_OP_RESHAPE, "Reshape", 1, 2, 1, 1, 2u, infer_reshape, NULL},
    {QT_OP_GEMM, "Gemm", 2, 3, 1, 1, 0, infer_gemm, NULL},
    {QT_OP_MATMUL, "MatMul", 2, 2, 1, 1, 0, infer_matmul, NULL},
    {QT_OP_IDENTITY, "Identity", 1, 1, 1, 1, 0, infer_identity, NULL},
    {QT_OP_DROPOUT, "Dropout", 1, 3, 1, 2, 4u, infer_dropout, NULL},
    {QT_OP_SHAPE, "Shape", 1, 1, 1, 1, 0, infer_shape, NULL},
    {QT_OP_GATHER, "Gather", 2, 2, 1, 1, 0, infer_gather, NULL},
    {QT_OP_UNSQUEEZE, "Unsqueeze", 1, 2, 1, 1, 2u, infer_unsqueeze, NULL},
    {QT_OP_SQUEEZE, "Squeeze", 1, 2, 1, 1, 2u, infer_squeeze, NULL},
    {QT_OP_CONCAT, "Concat", 1, 64, 1, 1, 0, infer_concat, NULL},
    {QT_OP_CONSTANT, "Constant", 0, 0, 1, 1, 0, infer_constant, NULL},
    {QT_OP_CAST, "Cast", 1, 1, 1, 1, 0, infer_cast, NULL},
    {QT_OP_SOFTMAX, "Softmax", 1, 1, 1, 1, 0, infer_softmax, NULL},
    {QT_OP_REDUCEMEAN, "ReduceMean", 1, 2, 1, 1, 2u, infer_reduce, NULL},
    {QT_OP_ABS, "Abs", 1, 1, 1, 1, 0, infer_unary_numeric, NULL},
    {QT_OP_NEG, "Neg", 1, 1, 1, 1, 0, infer_unary_numeric, NULL},
    {QT_OP_GREATER, "Greater", 2, 2, 1, 1, 0, infer_compare, NULL},
    {QT_OP_LESS, "Less", 2, 2, 1, 1, 0, infer_compare, NULL},
    {QT_OP_WHERE, "Where", 3, 3, 1, 1, 0, infer_where, NULL},
    {QT_OP_REDUCESUM, "ReduceSum", 1, 2, 1, 1, 2u, infer_reduce, NULL},
    {QT_OP_FLOOR, "Floor", 1, 1, 1, 1, 0, infer_unary_float, NULL},
    {QT_OP_SIGN, "Sign", 1, 1, 1, 1, 0, infer_unary_float, NULL},
    {QT_OP_SLICE, "Slice", 1, 5, 1, 1, 2u | 4u | 8u | 16u, infer_slice, NULL},
    {QT_OP_TRANSPOSE, "Transpose", 1, 1, 1, 1, 0, infer_transpose, NULL},
    {QT_OP_SIGMOID, "Sigmoid", 1, 1, 1, 1, 0, infer_unary_float, NULL},
    {QT_OP_LOGSOFTMAX, "LogSoftmax", 1, 1, 1, 1, 0, infer_softmax, NULL},
    {QT_OP_QUANTIZELINEAR, "QuantizeLinear", 2, 3, 1, 1, 0, infer_qdq, NULL},
    {QT_OP_DEQUANTIZELINEAR, "DequantizeLinear", 2, 3, 1, 1, 0, infer_qdq, NULL},
    {QT_OP_WEIGHTQUANT, "WeightQuant", 1, 2, 1, 1, 0, infer_quant, QT_DOMAIN},
    {QT_OP_ACTQUANT, "ActQuant", 1, 2, 1, 1, 0, infer_quant, QT_DOMAIN},
    {QT_OP_BITQUANT, "BitQuant", 3, 3, 1, 1, 0, infer_bitquant, QT_DOMAIN},
};

const struct qt_op_schema *qt_schema_get(enum qt_op op)
{
    for (size_t i = 0; i < sizeof schemas / sizeof schemas[0]; i++)
        if (schemas[i].op == op) return &schemas[i];
    return NULL;
}

enum qt_op qt_schema_lookup(const char *domain, const char *name)
{
    int dflt = !domain || !*domain || strcmp(domain, "ai.onnx") == 0;
    for (size_t i = 0; i < sizeof schemas / sizeof schemas[0]; i++) {
        const struct qt_op_schema *s = &schemas[i];
        if (strcmp(s->name, name) != 0) continue;
        if (s->domain ? (!dflt && strcmp(domain, s->domain) == 0) : dflt) return s->op;
    }
    return QT_OP_INVALID;
}

const char *qt_op_name(enum qt_op op)
{
    const struct qt_op_schema *s = qt_schema_get(op);
    return s ? s->name : "?";
}

int qt_schema_infer(struct qt_infer_ctx *c, struct qt_error *e)
{
    const struct qt_op_schema *s = qt_schema_get(c->n->op);
    if (!s) return qt_err(e, "node '%s': unknown op", c->n->name);
    for (int k = 0; k < c->n->nin; k++) {
        if (c->n->in[k] < 0) continue;
        if (c->in[k].ndim < 0 || c->in[k].ndim > QT_MAX_DIMS)
            return qt_err(e, NODE_FMT ": input %d has an unsupported rank", NODE_ARGS(c), k);
    }
    for (int k = 0; k < s->min_in && k < c->n->nin; k++)
        if (c->n->in[k] < 0)
            return qt_err(e, NODE_FMT ": required input %d is missing", NODE_ARGS(c), k);
    return s->infer(c, e);
}

int qt_graph_verify(const struct qt_graph *g, struct qt_error *e)
{
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        const struct qt_op_schema *s = qt_schema_get(n->op);
        if (!s) return qt_err(e, "node '%s': unknown op", n->name);
        if (n->nin < s->min_in || n->nin > s->max_in)
            return qt_err(e, "%s node '%s' has %d inputs, expected %d to %d", s->name, n->name,
                          n->nin, s->min_in, s->max_in);
        if (n->nout < s->min_out || n->nout > s->max_out)
            return qt_err(e, "%s node '%s' has %d outputs, expected %d to %d", s->name, n->name,
                          n->nout, s->min_out, s->max_out);
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            if (v < 0) continue;
            if (v >= g->nvalues) return qt_err(e, "%s node '%s': bad input index", s->name, n->name);
            const struct qt_value *val = &g->values[v];
            int p = val->producer;
            if (p < 0 && !val->init && !(val->flags & QT_V_INPUT))
                return qt_err(e, "%s node '%s': input '%s' is neither produced, an initializer nor a "
                                 "graph input", s->name, n->name, val->name);
            if (p >= i) return qt_err(e, "%s node '%s': input '%s' is produced later (not sorted)",
                                      s->name, n->name, val->name);
        }
    }
    for (int k = 0; k < g->noutputs; k++) {
        const struct qt_value *v = &g->values[g->outputs[k]];
        if (v->producer < 0 && !v->init && !(v->flags & QT_V_INPUT))
            return qt_err(e, "graph output '%s' is never produced", v->name);
    }
    return 0;
}

int qt_infer_node_static(struct qt_graph *g, int i, struct qt_error *e)
{
    struct qt_node *n = &g->nodes[i];
    const struct qt_op_schema *s = qt_schema_get(n->op);
    struct qt_shape in[64], out[3];
    enum qt_dtype idt[64], odt[3];
    const struct qt_tensor *vals[64];
    if (!s) return qt_err(e, "node '%s': unknown op", n->name);
    if (n->nin > 64 || n->nout > 3) return qt_err(e, "node '%s': too many inputs or outputs", n->name);
    int known = 1;
    for (int k = 0; k < n->nin; k++) {
        vals[k] = NULL;
        memset(&in[k], 0, sizeof in[k]);
        idt[k] = QT_UNDEF;
        if (n->in[k] < 0) continue;
        const struct qt_value *v = &g->values[n->in[k]];
        in[k] = v->shape;
        idt[k] = v->dtype;
        vals[k] = v->init;
        /* An unknown input shape, or a value only known at run time that the shape
         * depends on, leaves the outputs to run-time inference. */
        if (!v->has_shape || v->dtype == QT_UNDEF) known = 0;
        if (k < 32 && (s->value_inputs & (1u << k)) && !v->init && n->op != QT_OP_DROPOUT) known = 0;
    }
    for (int k = 0; k < n->nout; k++)
        if (n->out[k] >= 0) g->values[n->out[k]].has_shape = 0;
    if (!known) return 0;
    memset(out, 0, sizeof out);
    struct qt_infer_ctx c = {g, n, in, idt, vals, out, odt};
    if (qt_schema_infer(&c, e)) return -1;
    for (int k = 0; k < n->nout; k++) {
        if (n->out[k] < 0) continue;
        struct qt_value *v = &g->values[n->out[k]];
        v->has_shape = 1;
        v->shape = out[k];
        v->dtype = odt[k];
    }
    return 0;
}

int qt_graph_infer_shapes(struct qt_graph *g, struct qt_error *e)
{
    for (int i = 0; i < g->nnodes; i++)
        if (qt_infer_node_static(g, i, e)) return -1;
    return 0;
}
