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

/* A scalar float constant's value, or NAN. */
static float scalar(const struct qt_graph *g, int v)
{
    const struct qt_tensor *t = f32_init(g, v);
    return t && qt_shape_numel(&t->shape) == 1 ? *(const float *)t->data : NAN;
}

static int same_floats(const struct qt_tensor *t, const float *v, int64_t n)
{
    return t && t->dtype == QT_F32 && t->shape.ndim == 1 && t->shape.d[0] == n &&
           memcmp(t->data, v, sizeof(float) * n) == 0;
}

/* Level values alpha * levels (sign -1: negated), exactly as the export wrote them. */
static int values_match(const struct qt_tensor *t, const struct qt_apot_quantizer *qz,
                        float alpha, float sign)
{
    float v[QT_APOT_MAX_LEVELS];
    for (int k = 0; k < qz->n; k++) v[k] = alpha * (sign * qz->levels[k]);
    return same_floats(t, v, qz->n);
}

/* The quantizer whose export constants these are: bucket table, thresholds (+inf padded),
 * values and (signed) negated values; -1 when none is. */
static int identify(struct qt_quant_attrs *a, const struct qt_graph *g, int is_signed, int M,
                    float alpha, int vtab, int vthr, int vvals, int vneg)
{
    const struct qt_tensor *tab = g->values[vtab].init;
    if (!tab || tab->dtype != QT_I32 || qt_shape_numel(&tab->shape) != M) return -1;
    for (int scheme = QT_QS_APOT; scheme <= QT_QS_UNIFORM; scheme++)
        for (int bits = 1; bits <= 9; bits++) {
            struct qt_apot_quantizer qz;
            int32_t t[QT_ACT_MAX_BUCKETS];
            if (qt_apot_quantizer_init(&qz, scheme == QT_QS_APOT ? QT_SCHEME_APOT : QT_SCHEME_UNIFORM,
                                       bits, is_signed) ||
                qt_act_buckets(&qz, t) != M || memcmp(t, tab->data, sizeof(int32_t) * M) != 0)
                continue;
            float thr[QT_APOT_MAX_LEVELS];
            memcpy(thr, qz.thr, sizeof(float) * (qz.n - 1));
            thr[qz.n - 1] = INFINITY;
            if (!same_floats(g->values[vthr].init, thr, qz.n)) continue;
            if (!values_match(g->values[vvals].init, &qz, alpha, 1.0f)) continue;
            if (is_signed && !values_match(g->values[vneg].init, &qz, alpha, -1.0f)) continue;
            a->scheme = scheme;
            a->bits = bits;
            a->is_signed = is_signed;
            a->standardize = 0;
            return 0;
        }
    return -1;
}

/* The live nodes reading value v, up to max (returns how many there are). */
static int readers(const struct qt_graph *g, int v, int *r, int max)
{
    int cnt = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] == v) {
                if (cnt < max) r[cnt] = i;
                cnt++;
                break;
            }
    }
    return cnt;
}

/* The one reader of v that is an `op` node among the readers of v (-1 if none or several). */
static int reader_op(const struct qt_graph *g, int v, enum qt_op op)
{
    int r[4], found = -1;
    const int cnt = readers(g, v, r, 4);
    for (int k = 0; k < cnt && k < 4; k++)
        if (g->nodes[r[k]].op == op) {
            if (found >= 0) return -1;
            found = r[k];
        }
    return found;
}

/* Tries the pattern whose bucket is Floor node fi (see lower_export.c):
 *   x = Div(a, alpha); m = x or Abs(x); b = Cast(Clip(Floor(Mul(m, M)), 0, M - 1), int32);
 *   e = Gather(table, b); i = Add(e, Cast(Greater(m, Gather(thr, e)), int32));
 *   y = Gather(values, i), or Where(Less(x, 0), Gather(negated values, i), Gather(values, i)).
 * Returns 1 when it was raised. */
static int raise_one(struct qt_graph *g, int fi)
{
    const int mul = producer(g, g->nodes[fi].in[0], QT_OP_MUL, 1);
    if (mul < 0) return 0;
    const int m = g->nodes[mul].in[0];
    const float Mf = scalar(g, g->nodes[mul].in[1]);
    const int M = Mf >= 2 && Mf <= QT_ACT_MAX_BUCKETS ? (int)Mf : 0;
    if (!M || (float)M != Mf || (M & (M - 1))) return 0;
    const int abs_i = producer(g, m, QT_OP_ABS, 2);
    const int is_signed = abs_i >= 0;
    const int x = is_signed ? g->nodes[abs_i].in[0] : m;
    const int div_i = producer(g, x, QT_OP_DIV, 2);
    if (div_i < 0) return 0;
    const float alpha = scalar(g, g->nodes[div_i].in[1]);
    if (!(alpha > 0) || !isfinite(alpha)) return 0;
    const int clip = sole_reader(g, g->nodes[fi].out[0], QT_OP_CLIP);
    if (clip < 0) return 0;
    const struct qt_node *cl = &g->nodes[clip];
    const float lo = cl->nin > 1 ? scalar(g, cl->in[1]) : qt_node_float(cl, "min", NAN);
    const float hi = cl->nin > 2 ? scalar(g, cl->in[2]) : qt_node_float(cl, "max", NAN);
    if (lo != 0.0f || hi != (float)(M - 1)) return 0;
    const int cb = sole_reader(g, cl->out[0], QT_OP_CAST);
    if (cb < 0 || qt_node_int(&g->nodes[cb], "to", 0) != QT_I32) return 0;
    const int ge = sole_reader(g, g->nodes[cb].out[0], QT_OP_GATHER);
    if (ge < 0 || g->nodes[ge].in[1] != g->nodes[cb].out[0] || qt_node_int(&g->nodes[ge], "axis", 0))
        return 0;
    const int vtab = g->nodes[ge].in[0];
    const int e = g->nodes[ge].out[0];
    if ((g->values[e].flags & QT_V_OUTPUT) || qt_graph_use_count(g, e) != 2) return 0;
    const int gt_thr = reader_op(g, e, QT_OP_GATHER), add = reader_op(g, e, QT_OP_ADD);
    if (gt_thr < 0 || add < 0 || g->nodes[gt_thr].in[1] != e || qt_node_int(&g->nodes[gt_thr], "axis", 0))
        return 0;
    const int vthr = g->nodes[gt_thr].in[0];
    const int cmp = sole_reader(g, g->nodes[gt_thr].out[0], QT_OP_GREATER);
    if (cmp < 0 || g->nodes[cmp].in[0] != m || g->nodes[cmp].in[1] != g->nodes[gt_thr].out[0])
        return 0;
    const int cs = sole_reader(g, g->nodes[cmp].out[0], QT_OP_CAST);
    if (cs < 0 || qt_node_int(&g->nodes[cs], "to", 0) != QT_I32 ||
        sole_reader(g, g->nodes[cs].out[0], QT_OP_ADD) != add)
        return 0;
    const int idx = g->nodes[add].out[0];
    if (g->values[idx].flags & QT_V_OUTPUT) return 0;
    int rd[3];
    if (readers(g, idx, rd, 3) != (is_signed ? 2 : 1)) return 0;
    int gv = -1, gn = -1, lt = -1, wh = -1;
    for (int k = 0; k < (is_signed ? 2 : 1); k++) {
        const struct qt_node *r = &g->nodes[rd[k]];
        if (r->op != QT_OP_GATHER || r->in[1] != idx || qt_node_int(r, "axis", 0)) return 0;
    }
    gv = rd[0];
    int out = g->nodes[gv].out[0];
    if (is_signed) {
        gn = rd[1];
        lt = reader_op(g, x, QT_OP_LESS);
        if (lt < 0 || g->nodes[lt].in[0] != x || scalar(g, g->nodes[lt].in[1]) != 0.0f) return 0;
        wh = sole_reader(g, g->nodes[lt].out[0], QT_OP_WHERE);
        if (wh < 0) return 0;
        const struct qt_node *w = &g->nodes[wh];
        if (w->in[1] == g->nodes[gv].out[0]) {
            const int t = gv;
            gv = gn;
            gn = t;
        }
        if (w->in[1] != g->nodes[gn].out[0] || w->in[2] != g->nodes[gv].out[0] ||
            sole_reader(g, g->nodes[gv].out[0], QT_OP_WHERE) != wh ||
            sole_reader(g, g->nodes[gn].out[0], QT_OP_WHERE) != wh)
            return 0;
        out = w->out[0];
    }
    struct qt_quant_attrs a;
    if (identify(&a, g, is_signed, M, alpha, vtab, vthr, g->nodes[gv].in[0],
                 is_signed ? g->nodes[gn].in[0] : -1))
        return 0;
    /* replace: ActQuant(a, alpha) -> out */
    char name[512], an[560];
    const char *dn = g->nodes[div_i].name;
    const size_t dl = strlen(dn);
    snprintf(name, sizeof name, "%.*s", (int)(dl > 2 && strcmp(dn + dl - 2, "/d") == 0 ? dl - 2 : dl), dn);
    snprintf(an, sizeof an, "%s.alpha", name);
    struct qt_shape s1 = {1, {1}};
    const int va = qt_graph_add_value_unique(g, an, QT_F32, &s1);
    g->values[va].init = qt_tensor_new(QT_F32, &s1);
    g->values[va].has_shape = 1;
    *(float *)g->values[va].init->data = alpha;
    const int in[2] = {g->nodes[div_i].in[0], va};
    const int dead[] = {div_i, abs_i, mul, fi, clip, cb, ge, gt_thr, cmp, cs, add, gv, gn, lt, wh};
    for (size_t k = 0; k < sizeof dead / sizeof dead[0]; k++)
        if (dead[k] >= 0) g->nodes[dead[k]].dead = 1;
    const int qi = qt_graph_add_node(g, QT_OP_ACTQUANT, name, in, 2, &out, 1);
    struct qt_node *q = &g->nodes[qi];
    qt_node_set_string(q, "scheme", qt_quant_scheme_name(a.scheme));
    qt_node_set_int(q, "bits", a.bits);
    qt_node_set_int(q, "signed", a.is_signed);
    return 1;
}

int qt_pass_raise_quant(struct qt_graph *g, int *count, struct qt_error *e)
{
    int raised = 0;
    const int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        if (g->nodes[i].dead || g->nodes[i].op != QT_OP_FLOOR) continue;
        raised += raise_one(g, i);
    }
    if (count) *count = raised;
    return raised ? qt_graph_compact(g, e) : 0;
}
