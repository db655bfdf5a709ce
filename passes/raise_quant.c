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

/* The values alpha * level, exactly as the export wrote them. */
static int values_match(const struct qt_tensor *t, const struct qt_apot_quantizer *qz, float alpha)
{
    float v[QT_APOT_MAX_LEVELS];
    for (int k = 0; k < qz->n; k++) v[k] = alpha * qz->levels[k];
    return same_floats(t, v, qz->n);
}

/* The quantizer whose export constants these are: bucket table, per-bucket thresholds (times
 * M, +inf where none) and values; -1 when none is. */
static int identify(struct qt_quant_attrs *a, const struct qt_graph *g, int is_signed, int M,
                    float alpha, int vtab, int vthr, int vvals)
{
    const struct qt_tensor *tab = g->values[vtab].init;
    if (!tab || tab->dtype != QT_I32 || qt_shape_numel(&tab->shape) != M) return -1;
    for (int scheme = QT_QS_APOT; scheme <= QT_QS_UNIFORM; scheme++)
        for (int bits = 1; bits <= 9; bits++) {
            struct qt_apot_quantizer qz;
            int32_t t[QT_ACT_MAX_BUCKETS];
            float thr[QT_ACT_MAX_BUCKETS];
            if (qt_apot_quantizer_init(&qz, scheme == QT_QS_APOT ? QT_SCHEME_APOT : QT_SCHEME_UNIFORM,
                                       bits, is_signed) ||
                qt_act_buckets(&qz, t, thr) != M || memcmp(t, tab->data, sizeof(int32_t) * M) != 0)
                continue;
            if (!same_floats(g->values[vthr].init, thr, M)) continue;
            if (!values_match(g->values[vvals].init, &qz, alpha)) continue;
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

/* Tries the pattern whose bucket is Clip node ci (see lower_export.c):
 *   u = Div(a, alpha / M); m = u or Abs(u); b = Cast(Clip(m, 0, M - 1), int32);
 *   i = Add(Gather(T, b), Cast(Greater(m, Gather(thr, b)), int32)); v = Gather(values, i);
 *   y = v, or Mul(v, Sign(u)) for signed quantizers.
 * Returns 1 when it was raised. */
static int raise_one(struct qt_graph *g, int ci)
{
    const struct qt_node *cl = &g->nodes[ci];
    const int m = cl->in[0];
    const float lo = cl->nin > 1 ? scalar(g, cl->in[1]) : qt_node_float(cl, "min", NAN);
    const float hi = cl->nin > 2 ? scalar(g, cl->in[2]) : qt_node_float(cl, "max", NAN);
    const int M = hi >= 1 && hi < QT_ACT_MAX_BUCKETS ? (int)hi + 1 : 0;
    if (lo != 0.0f || !M || (float)(M - 1) != hi || (M & (M - 1))) return 0;
    const int abs_i = producer(g, m, QT_OP_ABS, 2);
    const int is_signed = abs_i >= 0;
    const int u = is_signed ? g->nodes[abs_i].in[0] : m;
    const int div_i = producer(g, u, QT_OP_DIV, 2);
    if (div_i < 0) return 0;
    const float alpha_m = scalar(g, g->nodes[div_i].in[1]);
    const float alpha = alpha_m * (float)M;
    if (!(alpha > 0) || !isfinite(alpha) || alpha / (float)M != alpha_m) return 0;
    const int cb = sole_reader(g, cl->out[0], QT_OP_CAST);
    if (cb < 0 || qt_node_int(&g->nodes[cb], "to", 0) != QT_I32) return 0;
    const int b = g->nodes[cb].out[0];
    int rd[3];
    if ((g->values[b].flags & QT_V_OUTPUT) || readers(g, b, rd, 3) != 2) return 0;
    for (int k = 0; k < 2; k++)
        if (g->nodes[rd[k]].op != QT_OP_GATHER || g->nodes[rd[k]].in[1] != b ||
            qt_node_int(&g->nodes[rd[k]], "axis", 0))
            return 0;
    /* which Gather gives the index (int32 table) and which the threshold */
    const struct qt_tensor *t0 = g->values[g->nodes[rd[0]].in[0]].init;
    const int ge = t0 && t0->dtype == QT_I32 ? rd[0] : rd[1], gt = ge == rd[0] ? rd[1] : rd[0];
    const int cmp = sole_reader(g, g->nodes[gt].out[0], QT_OP_GREATER);
    if (cmp < 0 || g->nodes[cmp].in[0] != m || g->nodes[cmp].in[1] != g->nodes[gt].out[0]) return 0;
    const int cs = sole_reader(g, g->nodes[cmp].out[0], QT_OP_CAST);
    if (cs < 0 || qt_node_int(&g->nodes[cs], "to", 0) != QT_I32) return 0;
    const int add = sole_reader(g, g->nodes[cs].out[0], QT_OP_ADD);
    if (add < 0 || sole_reader(g, g->nodes[ge].out[0], QT_OP_ADD) != add) return 0;
    const int gv = sole_reader(g, g->nodes[add].out[0], QT_OP_GATHER);
    if (gv < 0 || g->nodes[gv].in[1] != g->nodes[add].out[0] || qt_node_int(&g->nodes[gv], "axis", 0))
        return 0;
    int out = g->nodes[gv].out[0], sign = -1, mul = -1;
    if (is_signed) {
        sign = reader_op(g, u, QT_OP_SIGN);
        mul = sole_reader(g, g->nodes[gv].out[0], QT_OP_MUL);
        if (sign < 0 || mul < 0 || sole_reader(g, g->nodes[sign].out[0], QT_OP_MUL) != mul)
            return 0;
        out = g->nodes[mul].out[0];
    }
    struct qt_quant_attrs a;
    if (identify(&a, g, is_signed, M, alpha, g->nodes[ge].in[0], g->nodes[gt].in[0],
                 g->nodes[gv].in[0]))
        return 0;
    /* replace: ActQuant(a, alpha) -> out */
    char name[512], an[560];
    const char *dn = g->nodes[div_i].name;
    const size_t dl = strlen(dn);
    snprintf(name, sizeof name, "%.*s", (int)(dl > 2 && strcmp(dn + dl - 2, "/u") == 0 ? dl - 2 : dl), dn);
    snprintf(an, sizeof an, "%s.alpha", name);
    struct qt_shape s1 = {1, {1}};
    const int va = qt_graph_add_value_unique(g, an, QT_F32, &s1);
    g->values[va].init = qt_tensor_new(QT_F32, &s1);
    g->values[va].has_shape = 1;
    *(float *)g->values[va].init->data = alpha;
    const int in[2] = {g->nodes[div_i].in[0], va};
    const int dead[] = {div_i, abs_i, ci, cb, ge, gt, cmp, cs, add, gv, sign, mul};
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
        if (g->nodes[i].dead || g->nodes[i].op != QT_OP_CLIP) continue;
        raised += raise_one(g, i);
    }
    if (count) *count = raised;
    return raised ? qt_graph_compact(g, e) : 0;
}
