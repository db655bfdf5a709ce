/* Reference evaluation of data-movement and small arithmetic ops on host tensors of any
 * dtype: used to fold constants and, at run time, for shape computations, copies and the ops
 * no backend computes (comparisons, Where, ReduceSum, integer arithmetic). */
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/common/desc.h"
#include "schema.h"

int qt_eval_handles(const struct qt_node *n, enum qt_dtype in0)
{
    switch (n->op) {
    case QT_OP_SHAPE: case QT_OP_GATHER: case QT_OP_UNSQUEEZE: case QT_OP_SQUEEZE:
    case QT_OP_CONCAT: case QT_OP_CONSTANT: case QT_OP_CAST: case QT_OP_RESHAPE:
    case QT_OP_FLATTEN: case QT_OP_IDENTITY: case QT_OP_DROPOUT: case QT_OP_PAD:
    case QT_OP_WHERE: case QT_OP_QUANTIZELINEAR: case QT_OP_DEQUANTIZELINEAR: case QT_OP_SLICE:
    case QT_OP_TRANSPOSE:
        return 1;
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV: case QT_OP_ABS:
    case QT_OP_NEG: case QT_OP_GREATER: case QT_OP_LESS: case QT_OP_REDUCESUM:
        return in0 == QT_I64 || in0 == QT_I32 || in0 == QT_F32;
    case QT_OP_CLIP: case QT_OP_FLOOR: case QT_OP_SIGN:
        return in0 == QT_F32;
    default:
        return 0;
    }
}

/* Moves the multi-index idx to the next element of shape s, the last dimension fastest. */
static void next_index(int64_t *idx, const struct qt_shape *s)
{
    for (int d = s->ndim - 1; d >= 0; d--) {
        if (++idx[d] < s->d[d]) return;
        idx[d] = 0;
    }
}

/* The element offset of multi-index idx for strides st (qt_broadcast_strides). */
static int64_t offset_of(const int64_t *idx, const int64_t *st, int r)
{
    int64_t o = 0;
    for (int d = 0; d < r; d++) o += idx[d] * st[d];
    return o;
}

/* Clip of a float tensor; bounds from the attributes (opset < 11) or the optional scalar
 * inputs 1 and 2 (run-time values: the executor lowers constant bounds itself). */
static int eval_clip(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o,
                     struct qt_error *e)
{
    if (in[0]->dtype != QT_F32)
        return qt_err(e, "Clip node '%s': only float tensors are evaluated here", n->name);
    float lo = qt_node_float(n, "min", -INFINITY), hi = qt_node_float(n, "max", INFINITY);
    if (n->nin > 1 && in[1] && qt_shape_numel(&in[1]->shape) > 0) lo = (float)qt_tensor_get_f(in[1], 0);
    if (n->nin > 2 && in[2] && qt_shape_numel(&in[2]->shape) > 0) hi = (float)qt_tensor_get_f(in[2], 0);
    const float *x = in[0]->data;
    float *y = o->data;
    for (int64_t i = 0; i < qt_shape_numel(&in[0]->shape); i++) {
        const float v = x[i] < lo ? lo : x[i];
        y[i] = v > hi ? hi : v; /* NaN passes through, as min(max(x, lo), hi) in ONNX */
    }
    return 0;
}

/* A value converted to an integer type: truncated toward zero, then wrapped to the type's
 * width (two's complement, as numpy's astype on x86-64); NaN gives 0 and values beyond the
 * 64-bit range saturate. C leaves out-of-range conversions undefined, so none is done. */
static uint64_t to_bits(double v)
{
    if (!(v == v)) return 0;
    if (v >= 18446744073709551616.0) return UINT64_MAX;
    if (v >= 9223372036854775808.0) return (uint64_t)v;
    if (v < -9223372036854775808.0) return (uint64_t)INT64_MIN;
    return (uint64_t)(int64_t)v;
}

static void set_f(struct qt_tensor *t, int64_t i, double v)
{
    switch (t->dtype) {
    case QT_F32: ((float *)t->data)[i] = (float)v; break;
    case QT_F64: ((double *)t->data)[i] = v; break;
    case QT_I64: ((int64_t *)t->data)[i] = (int64_t)to_bits(v); break;
    case QT_I32: ((int32_t *)t->data)[i] = (int32_t)(uint32_t)to_bits(v); break;
    case QT_U32: ((uint32_t *)t->data)[i] = (uint32_t)to_bits(v); break;
    case QT_I16: ((int16_t *)t->data)[i] = (int16_t)(uint16_t)to_bits(v); break;
    case QT_U16: ((uint16_t *)t->data)[i] = (uint16_t)to_bits(v); break;
    case QT_I8: ((int8_t *)t->data)[i] = (int8_t)(uint8_t)to_bits(v); break;
    case QT_U8: ((uint8_t *)t->data)[i] = (uint8_t)to_bits(v); break;
    case QT_BOOL: ((uint8_t *)t->data)[i] = v != 0; break;
    case QT_U64: ((uint64_t *)t->data)[i] = to_bits(v); break;
    default: break;
    }
}

static void set_i(struct qt_tensor *t, int64_t i, int64_t v)
{
    if (t->dtype == QT_I64) ((int64_t *)t->data)[i] = v;
    else set_f(t, i, (double)v);
}

static int eval_binary(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o,
                       struct qt_error *e)
{
    int64_t sa[QT_MAX_DIMS], sb[QT_MAX_DIMS], idx[QT_MAX_DIMS] = {0};
    qt_broadcast_strides(sa, &in[0]->shape, &o->shape);
    qt_broadcast_strides(sb, &in[1]->shape, &o->shape);
    int64_t total = qt_shape_numel(&o->shape);
    int r = o->shape.ndim;
    int isint = o->dtype != QT_F32 && o->dtype != QT_F64;
    for (int64_t i = 0; i < total; i++, next_index(idx, &o->shape)) {
        const int64_t ia = offset_of(idx, sa, r), ib = offset_of(idx, sb, r);
        if (isint) {
            int64_t a = qt_tensor_get_i(in[0], ia), b = qt_tensor_get_i(in[1], ib), v = 0;
            if (QT_IS_SYM_VAL(a) || QT_IS_SYM_VAL(b))
                return qt_err(e, "%s node '%s': arithmetic on a symbolic dimension", qt_op_name(n->op), n->name);
            switch (n->op) {
            case QT_OP_ADD: v = a + b; break;
            case QT_OP_SUB: v = a - b; break;
            case QT_OP_MUL: v = a * b; break;
            default:
                if (b == 0) return qt_err(e, "Div node '%s': integer division by zero", n->name);
                v = a / b;
                if ((a % b != 0) && ((a < 0) != (b < 0))) v--; /* floor, as numpy */
                break;
            }
            set_i(o, i, v);
        } else {
            double a = qt_tensor_get_f(in[0], ia), b = qt_tensor_get_f(in[1], ib), v;
            switch (n->op) {
            case QT_OP_ADD: v = (float)a + (float)b; break;
            case QT_OP_SUB: v = (float)a - (float)b; break;
            case QT_OP_MUL: v = (float)a * (float)b; break;
            default: v = (float)a / (float)b; break;
            }
            set_f(o, i, v);
        }
    }
    return 0;
}

/* Abs and Neg; integers wrap as two's complement (the most negative value stays itself). */
static int eval_unary(const struct qt_node *n, const struct qt_tensor *x, struct qt_tensor *o)
{
    const int neg = n->op == QT_OP_NEG;
    for (int64_t i = 0; i < qt_shape_numel(&x->shape); i++) {
        if (x->dtype == QT_F32) {
            const float v = ((const float *)x->data)[i];
            ((float *)o->data)[i] = n->op == QT_OP_FLOOR  ? floorf(v)
                                    : n->op == QT_OP_SIGN ? (v > 0 ? 1.0f : v < 0 ? -1.0f : v)
                                    : neg                 ? -v
                                                          : fabsf(v);
        } else {
            const int64_t v = qt_tensor_get_i(x, i), minus = (int64_t)(0 - (uint64_t)v);
            set_i(o, i, neg || v < 0 ? minus : v);
        }
    }
    return 0;
}

/* Greater and Less into bool, broadcast; a comparison with NaN is false. */
static int eval_compare(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o)
{
    int64_t sa[QT_MAX_DIMS], sb[QT_MAX_DIMS], idx[QT_MAX_DIMS] = {0};
    const int r = o->shape.ndim, gt = n->op == QT_OP_GREATER, isf = in[0]->dtype == QT_F32;
    qt_broadcast_strides(sa, &in[0]->shape, &o->shape);
    qt_broadcast_strides(sb, &in[1]->shape, &o->shape);
    uint8_t *y = o->data;
    for (int64_t i = 0; i < qt_shape_numel(&o->shape); i++, next_index(idx, &o->shape)) {
        const int64_t ia = offset_of(idx, sa, r), ib = offset_of(idx, sb, r);
        if (isf) {
            const double a = qt_tensor_get_f(in[0], ia), b = qt_tensor_get_f(in[1], ib);
            y[i] = gt ? a > b : a < b;
        } else {
            const int64_t a = qt_tensor_get_i(in[0], ia), b = qt_tensor_get_i(in[1], ib);
            y[i] = gt ? a > b : a < b;
        }
    }
    return 0;
}

/* Where(condition, X, Y): X's element where the condition holds, else Y's; all broadcast. */
static int eval_where(const struct qt_tensor **in, struct qt_tensor *o)
{
    int64_t st[3][QT_MAX_DIMS], idx[QT_MAX_DIMS] = {0};
    const int r = o->shape.ndim;
    const size_t es = qt_dtype_size(o->dtype);
    for (int k = 0; k < 3; k++) qt_broadcast_strides(st[k], &in[k]->shape, &o->shape);
    const uint8_t *cond = in[0]->data;
    for (int64_t i = 0; i < qt_shape_numel(&o->shape); i++, next_index(idx, &o->shape)) {
        const int k = cond[offset_of(idx, st[0], r)] ? 1 : 2;
        memcpy((char *)o->data + i * es, (const char *)in[k]->data + offset_of(idx, st[k], r) * es,
               es);
    }
    return 0;
}

/* ReduceSum: axes from the attribute (opset < 13) or input 1; without axes it sums everything,
 * or copies with noop_with_empty_axes. Floats accumulate in double, integers wrap. */
static int eval_reducesum(const struct qt_node *n, const struct qt_tensor **in,
                          struct qt_tensor *o, struct qt_error *e)
{
    const struct qt_tensor *x = in[0];
    const int r = x->shape.ndim;
    int64_t axes[QT_MAX_DIMS], st[QT_MAX_DIMS], idx[QT_MAX_DIMS] = {0};
    int na = qt_node_ints(n, "axes", axes, QT_MAX_DIMS);
    if (na < 0) {
        na = 0;
        const int64_t cnt = n->nin > 1 && in[1] ? qt_shape_numel(&in[1]->shape) : 0;
        if (cnt > QT_MAX_DIMS)
            return qt_err(e, "ReduceSum node '%s': %lld axes", n->name, (long long)cnt);
        for (int64_t i = 0; i < cnt; i++) axes[na++] = qt_tensor_get_i(in[1], i);
    }
    struct qt_shape kept = x->shape; /* the output's shape with keepdims=1 */
    if (na == 0 && !qt_node_int(n, "noop_with_empty_axes", 0))
        for (int i = 0; i < r; i++) kept.d[i] = 1;
    for (int i = 0; i < na; i++) {
        const int64_t a = axes[i] < 0 ? axes[i] + r : axes[i];
        if (a < 0 || a >= r)
            return qt_err(e, "ReduceSum node '%s': axis %lld out of range for rank %d", n->name,
                          (long long)axes[i], r);
        kept.d[a] = 1;
    }
    qt_broadcast_strides(st, &kept, &x->shape);
    const int64_t no = qt_shape_numel(&o->shape);
    void *acc = calloc(no > 0 ? (size_t)no : 1, 8);
    if (!acc) return qt_err(e, "ReduceSum node '%s': out of memory", n->name);
    double *fsum = acc;
    uint64_t *isum = acc;
    const int isf = x->dtype == QT_F32;
    for (int64_t i = 0; i < qt_shape_numel(&x->shape); i++, next_index(idx, &x->shape)) {
        const int64_t j = offset_of(idx, st, r);
        if (isf) fsum[j] += ((const float *)x->data)[i];
        else isum[j] += (uint64_t)qt_tensor_get_i(x, i);
    }
    for (int64_t j = 0; j < no; j++) {
        if (isf) set_f(o, j, fsum[j]);
        else set_i(o, j, (int64_t)isum[j]);
    }
    free(acc);
    return 0;
}

static int eval_gather(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o,
                       struct qt_error *e)
{
    const struct qt_tensor *d = in[0], *ix = in[1];
    int64_t axis = qt_node_int(n, "axis", 0);
    if (axis < 0) axis += d->shape.ndim;
    int64_t outer = 1, inner = 1, dim = d->shape.d[axis];
    for (int i = 0; i < axis; i++) outer *= d->shape.d[i];
    for (int i = (int)axis + 1; i < d->shape.ndim; i++) inner *= d->shape.d[i];
    int64_t ni = qt_shape_numel(&ix->shape);
    size_t es = qt_dtype_size(d->dtype);
    for (int64_t o_ = 0; o_ < outer; o_++)
        for (int64_t j = 0; j < ni; j++) {
            int64_t k = qt_tensor_get_i(ix, j);
            if (k < 0) k += dim;
            if (k < 0 || k >= dim)
                return qt_err(e, "Gather node '%s': index %lld out of range for a dimension of %lld",
                              n->name, (long long)qt_tensor_get_i(ix, j), (long long)dim);
            memcpy((char *)o->data + ((o_ * ni + j) * inner) * es,
                   (const char *)d->data + ((o_ * dim + k) * inner) * es, inner * es);
        }
    return 0;
}

/* Any dtype: output element o is the input element at qt_transpose_offset. */
static int eval_transpose(const struct qt_node *n, const struct qt_tensor *x, struct qt_tensor *o,
                          struct qt_error *e)
{
    struct qt_transpose_desc d = {.ndim = x->shape.ndim};
    if (qt_transpose_perm(n, d.ndim, d.perm, e)) return -1;
    for (int i = 0; i < d.ndim; i++) d.shape[i] = x->shape.d[i];
    const size_t es = qt_dtype_size(x->dtype);
    const int64_t total = qt_shape_numel(&x->shape);
    for (int64_t i = 0; i < total; i++)
        memcpy((char *)o->data + i * es, (const char *)x->data + qt_transpose_offset(&d, i) * es,
               es);
    return 0;
}

static int eval_concat(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o)
{
    int64_t axis = qt_node_int(n, "axis", 0);
    if (axis < 0) axis += o->shape.ndim;
    int64_t outer = 1;
    for (int i = 0; i < axis; i++) outer *= o->shape.d[i];
    size_t es = qt_dtype_size(o->dtype);
    size_t orow = (size_t)(qt_shape_numel(&o->shape) / (outer ? outer : 1)) * es;
    size_t off = 0;
    for (int k = 0; k < n->nin; k++) {
        size_t row = (size_t)(qt_shape_numel(&in[k]->shape) / (outer ? outer : 1)) * es;
        for (int64_t i = 0; i < outer; i++)
            memcpy((char *)o->data + i * orow + off, (const char *)in[k]->data + i * row, row);
        off += row;
    }
    return 0;
}

static int eval_cast(const struct qt_tensor *x, struct qt_tensor *o)
{
    int64_t total = qt_shape_numel(&x->shape);
    int from_float = x->dtype == QT_F32 || x->dtype == QT_F64;
    for (int64_t i = 0; i < total; i++) {
        if (from_float) {
            double v = qt_tensor_get_f(x, i);
            if (o->dtype == QT_BOOL) set_f(o, i, v != 0);
            else if (o->dtype != QT_F32 && o->dtype != QT_F64) set_f(o, i, trunc(v));
            else set_f(o, i, v);
        } else {
            set_i(o, i, qt_tensor_get_i(x, i));
        }
    }
    return 0;
}

static int eval_pad(const struct qt_node *n, const struct qt_tensor **in, int nin,
                    struct qt_tensor *o)
{
    const struct qt_tensor *x = in[0];
    int r = x->shape.ndim;
    int64_t pads[2 * QT_MAX_DIMS];
    qt_pad_amounts(n, nin > 1 ? in[1] : NULL, pads); /* 2 r of them: shape inference checked */
    const double cval = qt_pad_value(n, nin > 2 ? in[2] : NULL);
    const char *mode = qt_node_string(n, "mode", "constant");
    int64_t total = qt_shape_numel(&o->shape), idx[QT_MAX_DIMS] = {0};
    size_t es = qt_dtype_size(x->dtype);
    int64_t xst[QT_MAX_DIMS], acc = 1;
    for (int i = r - 1; i >= 0; i--) {
        xst[i] = acc;
        acc *= x->shape.d[i];
    }
    for (int64_t i = 0; i < total; i++) {
        int64_t src = 0;
        int outside = 0;
        for (int d = 0; d < r; d++) {
            int64_t s = idx[d] - pads[d], len = x->shape.d[d];
            if (s < 0 || s >= len) {
                if (mode[0] == 'c' || len == 0) outside = 1;
                else if (mode[0] == 'e') s = s < 0 ? 0 : len - 1;
                else {
                    while (s < 0 || s >= len) s = s < 0 ? -s : 2 * (len - 1) - s;
                }
            }
            src += s * xst[d];
        }
        if (outside) set_f(o, i, cval);
        else memcpy((char *)o->data + i * es, (const char *)x->data + src * es, es);
        next_index(idx, &o->shape);
    }
    return 0;
}

/* QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) (a true division, as
 * ONNX specifies); DequantizeLinear: (x - zero_point) * scale. Per-axis scales apply along
 * `axis` (default 1). */
static int eval_qdq(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o)
{
    const struct qt_tensor *x = in[0], *sc = in[1];
    const struct qt_tensor *zp = n->nin > 2 && n->in[2] >= 0 ? in[2] : NULL;
    const int64_t total = qt_shape_numel(&x->shape), ns = qt_shape_numel(&sc->shape);
    int64_t axis = qt_node_int(n, "axis", 1), inner = 1;
    if (axis < 0) axis += x->shape.ndim;
    if (ns > 1)
        for (int d = (int)axis + 1; d < x->shape.ndim; d++) inner *= x->shape.d[d];
    const float *s = sc->data;
    for (int64_t i = 0; i < total; i++) {
        const int64_t c = ns > 1 ? (i / inner) % ns : 0;
        const int64_t z = zp ? qt_tensor_get_i(zp, c) : 0;
        if (n->op == QT_OP_DEQUANTIZELINEAR) {
            ((float *)o->data)[i] = (float)(qt_tensor_get_i(x, i) - z) * s[c];
            continue;
        }
        const float v = rintf(((const float *)x->data)[i] / s[c]);
        const double lo = o->dtype == QT_I8 ? -128 : 0, hi = o->dtype == QT_I8 ? 127 : 255;
        double q = (v != v ? 0.0 : (double)v) + (double)z;
        q = q < lo ? lo : q > hi ? hi : q;
        set_f(o, i, q);
    }
    return 0;
}

static int eval_slice(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor *o,
                      struct qt_error *e)
{
    const struct qt_tensor *x = in[0];
    int64_t start[QT_MAX_DIMS], step[QT_MAX_DIMS], xst[QT_MAX_DIMS], idx[QT_MAX_DIMS] = {0};
    struct qt_shape os;
    if (qt_slice_plan(n, &x->shape, in, start, step, &os, e)) return -1;
    const int r = x->shape.ndim;
    int64_t acc = 1;
    for (int d = r - 1; d >= 0; d--) {
        xst[d] = acc;
        acc *= x->shape.d[d];
    }
    const size_t es = qt_dtype_size(x->dtype);
    for (int64_t i = 0; i < qt_shape_numel(&o->shape); i++, next_index(idx, &o->shape)) {
        int64_t src = 0;
        for (int d = 0; d < r; d++) src += (start[d] + idx[d] * step[d]) * xst[d];
        memcpy((char *)o->data + i * es, (const char *)x->data + src * es, es);
    }
    return 0;
}

static void constant_value(const struct qt_node *n, struct qt_tensor *o)
{
    const struct qt_attr *a = qt_node_attr(n, "value");
    if (a && a->t) {
        memcpy(o->data, a->t->data, o->nbytes);
        return;
    }
    if ((a = qt_node_attr(n, "value_float"))) ((float *)o->data)[0] = a->f;
    else if ((a = qt_node_attr(n, "value_int"))) ((int64_t *)o->data)[0] = a->i;
    else if ((a = qt_node_attr(n, "value_floats"))) memcpy(o->data, a->floats, sizeof(float) * a->n);
    else if ((a = qt_node_attr(n, "value_ints"))) memcpy(o->data, a->ints, sizeof(int64_t) * a->n);
}

int qt_eval_node(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor **out,
                 struct qt_error *e)
{
    switch (n->op) {
    case QT_OP_SHAPE: {
        int r = in[0]->shape.ndim;
        int64_t start = qt_node_int(n, "start", 0);
        if (start < 0) start += r;
        if (start < 0) start = 0;
        for (int64_t i = 0; i < out[0]->shape.d[0]; i++) {
            int64_t d = in[0]->shape.d[start + i];
            ((int64_t *)out[0]->data)[i] = d >= 0 ? d : QT_SYM_VAL(-d - 1);
        }
        return 0;
    }
    case QT_OP_GATHER: return eval_gather(n, in, out[0], e);
    case QT_OP_TRANSPOSE: return eval_transpose(n, in[0], out[0], e);
    case QT_OP_CONCAT: return eval_concat(n, in, out[0]);
    case QT_OP_CONSTANT: constant_value(n, out[0]); return 0;
    case QT_OP_CAST: return eval_cast(in[0], out[0]);
    case QT_OP_PAD: return eval_pad(n, in, n->nin, out[0]);
    case QT_OP_UNSQUEEZE: case QT_OP_SQUEEZE: case QT_OP_RESHAPE: case QT_OP_FLATTEN:
    case QT_OP_IDENTITY:
        if (out[0]->data != in[0]->data) memcpy(out[0]->data, in[0]->data, out[0]->nbytes);
        return 0;
    case QT_OP_DROPOUT:
        if (out[0]->data != in[0]->data) memcpy(out[0]->data, in[0]->data, out[0]->nbytes);
        if (n->nout > 1 && out[1]) memset(out[1]->data, 1, out[1]->nbytes);
        return 0;
    case QT_OP_ADD: case QT_OP_SUB: case QT_OP_MUL: case QT_OP_DIV:
        return eval_binary(n, in, out[0], e);
    case QT_OP_CLIP:
        return eval_clip(n, in, out[0], e);
    case QT_OP_ABS: case QT_OP_NEG: case QT_OP_FLOOR: case QT_OP_SIGN:
        return eval_unary(n, in[0], out[0]);
    case QT_OP_GREATER: case QT_OP_LESS:
        return eval_compare(n, in, out[0]);
    case QT_OP_WHERE:
        return eval_where(in, out[0]);
    case QT_OP_REDUCESUM:
        return eval_reducesum(n, in, out[0], e);
    case QT_OP_QUANTIZELINEAR: case QT_OP_DEQUANTIZELINEAR:
        return eval_qdq(n, in, out[0]);
    case QT_OP_SLICE:
        return eval_slice(n, in, out[0], e);
    default:
        return qt_err(e, "%s node '%s': no reference evaluation for this op", qt_op_name(n->op), n->name);
    }
}
