/* The raise pass: finds the activation quantizers that `qtune export` writes in standard
 * operators (lower_export.c) and puts an ActQuant node back in their place, so that a model
 * qtune exported runs on the quantizer kernels again (and can be fine-tuned further). The
 * pattern is accepted only when it is the exact form the export writes for one scheme, bit
 * width and signedness: its thresholds are that quantizer's thresholds and its values alpha
 * times its levels, bit for bit, and none of its intermediate tensors has another reader. The
 * ActQuant computes the same values (a zero's sign aside). Constant weight decoding needs no
 * pass: canonicalize folds it into float initializers. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../graph/schema.h"
#include "../kernels/common/apot.h"
#include "passes.h"

/* The node producing value v if it is a live `op` node whose output only `uses` nodes read. */
static int producer(const struct qt_graph *g, int v, enum qt_op op, int uses)
{
    if (v < 0 || (g->values[v].flags & QT_V_OUTPUT)) return -1;
    const int p = g->values[v].producer;
    if (p < 0 || g->nodes[p].dead || g->nodes[p].op != op) return -1;
    return qt_graph_use_count(g, v) == uses ? p : -1;
}

/* The only reader of value v if it is a live `op` node. */
static int sole_reader(const struct qt_graph *g, int v, enum qt_op op)
{
    if ((g->values[v].flags & QT_V_OUTPUT) || qt_graph_use_count(g, v) != 1) return -1;
    const int r = qt_graph_first_consumer(g, v);
    return r >= 0 && g->nodes[r].op == op ? r : -1;
}

static const struct qt_tensor *f32_init(const struct qt_graph *g, int v)
{
    const struct qt_tensor *t = v >= 0 ? g->values[v].init : NULL;
    return t && t->dtype == QT_F32 ? t : NULL;
}

/* ReduceSum over axis 0 only, keepdims 0. */
static int sums_axis0(const struct qt_graph *g, const struct qt_node *r)
{
    if (qt_node_int(r, "keepdims", 1) != 0) return 0;
    int64_t ax[2];
    int na = qt_node_ints(r, "axes", ax, 2);
    if (na < 0 && r->nin > 1 && r->in[1] >= 0) {
        const struct qt_tensor *t = g->values[r->in[1]].init;
        if (!t || (t->dtype != QT_I64 && t->dtype != QT_I32) || qt_shape_numel(&t->shape) != 1) return 0;
        ax[0] = qt_tensor_get_i(t, 0);
        na = 1;
    }
    return na == 1 && ax[0] == 0;
}

/* Level values alpha * levels (sign -1: negated), exactly as the export wrote them. */
static int values_match(const struct qt_tensor *t, const struct qt_apot_quantizer *qz,
                        float alpha, float sign)
{
    if (!t || t->shape.ndim != 1 || t->shape.d[0] != qz->n) return 0;
    const float *v = t->data;
    for (int k = 0; k < qz->n; k++)
        if (memcmp(&v[k], &(float){alpha * (sign * qz->levels[k])}, sizeof(float)) != 0) return 0;
    return 1;
}

/* The quantizer whose thresholds are thr (n - 1 values) and values vals, or -1. */
static int identify(struct qt_quant_attrs *a, struct qt_apot_quantizer *qz, const float *thr,
                    int n, int is_signed, float alpha, const struct qt_tensor *vals,
                    const struct qt_tensor *nvals)
{
    for (int scheme = QT_QS_APOT; scheme <= QT_QS_UNIFORM; scheme++)
        for (int bits = 1; bits <= 9; bits++) {
            if (qt_apot_quantizer_init(qz, scheme == QT_QS_APOT ? QT_SCHEME_APOT : QT_SCHEME_UNIFORM,
                                       bits, is_signed) || qz->n != n)
                continue;
            if (memcmp(qz->thr, thr, sizeof(float) * (n - 1)) != 0) continue;
            if (!values_match(vals, qz, alpha, 1.0f)) continue;
            if (is_signed && !values_match(nvals, qz, alpha, -1.0f)) continue;
            a->scheme = scheme;
            a->bits = bits;
            a->is_signed = is_signed;
            a->standardize = 0;
            return 0;
        }
    return -1;
}

/* Tries the pattern whose comparison is Greater node gi; returns 1 when it was raised. */
static int raise_one(struct qt_graph *g, int gi, struct qt_error *e)
{
    const struct qt_node *gt = &g->nodes[gi];
    const struct qt_tensor *thr = f32_init(g, gt->in[1]);
    if (!thr || thr->shape.ndim < 1) return 0;
    const int n = (int)thr->shape.d[0] + 1;
    if (n < 2 || n > QT_APOT_MAX_LEVELS || qt_shape_numel(&thr->shape) != n - 1) return 0;
    /* signed: Greater(Abs(x)); x = Div(a, alpha) is read by Abs and Less */
    int abs_i = producer(g, gt->in[0], QT_OP_ABS, 1);
    const int is_signed = abs_i >= 0;
    const int x = is_signed ? g->nodes[abs_i].in[0] : gt->in[0];
    const int div_i = producer(g, x, QT_OP_DIV, is_signed ? 2 : 1);
    if (div_i < 0) return 0;
    const struct qt_tensor *al = f32_init(g, g->nodes[div_i].in[1]);
    if (!al || qt_shape_numel(&al->shape) != 1) return 0;
    const float alpha = *(const float *)al->data;
    if (!(alpha > 0) || !isfinite(alpha)) return 0;
    const int c1 = sole_reader(g, gt->out[0], QT_OP_CAST);
    if (c1 < 0 || qt_node_int(&g->nodes[c1], "to", 0) != QT_F32) return 0;
    const int rs = sole_reader(g, g->nodes[c1].out[0], QT_OP_REDUCESUM);
    if (rs < 0 || !sums_axis0(g, &g->nodes[rs])) return 0;
    const int c2 = sole_reader(g, g->nodes[rs].out[0], QT_OP_CAST);
    if (c2 < 0) return 0;
    const int64_t to = qt_node_int(&g->nodes[c2], "to", 0);
    if (to != QT_I32 && to != QT_I64) return 0;
    const int idx = g->nodes[c2].out[0];
    if ((g->values[idx].flags & QT_V_OUTPUT) || qt_graph_use_count(g, idx) != (is_signed ? 2 : 1))
        return 0;
    /* the Gathers reading the index: values, and (signed) negated values */
    int gv = -1, gn = -1, lt = -1, wh = -1;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *r = &g->nodes[i];
        if (r->dead || r->op != QT_OP_GATHER || r->nin != 2 || r->in[1] != idx) continue;
        if (qt_node_int(r, "axis", 0) != 0 || !f32_init(g, r->in[0])) return 0;
        if (gv < 0) gv = i;
        else gn = i;
    }
    if (gv < 0 || (is_signed && gn < 0)) return 0;
    int out = g->nodes[gv].out[0];
    if (is_signed) {
        /* Where(Less(x, 0), negated values, values) */
        for (int i = 0; i < g->nnodes; i++) {
            const struct qt_node *r = &g->nodes[i];
            if (!r->dead && r->op == QT_OP_LESS && r->in[0] == x) lt = i;
        }
        if (lt < 0) return 0;
        const struct qt_tensor *z = g->values[g->nodes[lt].in[1]].init;
        if (!z || z->dtype != QT_F32 || qt_shape_numel(&z->shape) != 1 ||
            *(const float *)z->data != 0.0f)
            return 0;
        wh = sole_reader(g, g->nodes[lt].out[0], QT_OP_WHERE);
        if (wh < 0) return 0;
        const struct qt_node *w = &g->nodes[wh];
        /* which Gather holds the negated values: the one Where takes where x < 0 */
        if (w->in[1] == g->nodes[gv].out[0]) {
            int t = gv;
            gv = gn;
            gn = t;
        }
        if (w->in[1] != g->nodes[gn].out[0] || w->in[2] != g->nodes[gv].out[0] ||
            qt_graph_use_count(g, g->nodes[gv].out[0]) != 1 ||
            qt_graph_use_count(g, g->nodes[gn].out[0]) != 1 ||
            (g->values[g->nodes[gv].out[0]].flags & QT_V_OUTPUT) ||
            (g->values[g->nodes[gn].out[0]].flags & QT_V_OUTPUT))
            return 0;
        out = w->out[0];
    }
    struct qt_quant_attrs a;
    struct qt_apot_quantizer qz;
    if (identify(&a, &qz, thr->data, n, is_signed, alpha, g->values[g->nodes[gv].in[0]].init,
                 is_signed ? g->values[g->nodes[gn].in[0]].init : NULL))
        return 0;
    /* replace: ActQuant(a, alpha) -> out */
    char name[512];
    const char *dn = g->nodes[div_i].name;
    const size_t dl = strlen(dn);
    snprintf(name, sizeof name, "%.*s", (int)(dl > 4 && strcmp(dn + dl - 4, "/div") == 0 ? dl - 4 : dl), dn);
    char an[560];
    snprintf(an, sizeof an, "%s.alpha", name);
    struct qt_shape s1 = {1, {1}};
    const int va = qt_graph_add_value_unique(g, an, QT_F32, &s1);
    g->values[va].init = qt_tensor_new(QT_F32, &s1);
    g->values[va].has_shape = 1;
    *(float *)g->values[va].init->data = alpha;
    const int in[2] = {g->nodes[div_i].in[0], va};
    const int dead[] = {div_i, abs_i, gi, c1, rs, c2, gv, gn, lt, wh};
    for (size_t k = 0; k < sizeof dead / sizeof dead[0]; k++)
        if (dead[k] >= 0) g->nodes[dead[k]].dead = 1;
    const int qi = qt_graph_add_node(g, QT_OP_ACTQUANT, name, in, 2, &out, 1);
    struct qt_node *q = &g->nodes[qi];
    qt_node_set_string(q, "scheme", qt_quant_scheme_name(a.scheme));
    qt_node_set_int(q, "bits", a.bits);
    qt_node_set_int(q, "signed", a.is_signed);
    (void)e;
    return 1;
}

int qt_pass_raise_quant(struct qt_graph *g, int *count, struct qt_error *e)
{
    int raised = 0;
    const int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        if (g->nodes[i].dead || g->nodes[i].op != QT_OP_GREATER) continue;
        const int r = raise_one(g, i, e);
        if (r < 0) return -1;
        raised += r;
    }
    if (count) *count = raised;
    return raised ? qt_graph_compact(g, e) : 0;
}
