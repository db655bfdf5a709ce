/* The quantize pass: puts a WeightQuant node on the weight and an ActQuant node on the data
 * input of every Conv, Gemm and MatMul with a weight initializer (APOT.md sections 2-4).
 * Decides from the graph which layers are first and last, whether a layer's input can be
 * negative (signed activation quantizer) and whether a BatchNorm follows it (standardized
 * weights); applies per-layer overrides. A graph quantized before is first returned to float
 * (keeping the alphas of quantizers whose settings do not change). */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "passes.h"

/* A Conv/Gemm/MatMul whose weight is an initializer, directly or through a WeightQuant. */
int qt_layer_weight(const struct qt_graph *g, const struct qt_node *n, int through_quant)
{
    if (n->dead || (n->op != QT_OP_CONV && n->op != QT_OP_GEMM && n->op != QT_OP_MATMUL)) return -1;
    if (n->nin < 2 || n->in[1] < 0) return -1;
    int v = n->in[1];
    const struct qt_value *w = &g->values[v];
    if (through_quant && !w->init && w->producer >= 0 &&
        g->nodes[w->producer].op == QT_OP_WEIGHTQUANT)
        w = &g->values[v = g->nodes[w->producer].in[0]];
    return w->init && w->init->dtype == QT_F32 ? v : -1;
}

static int is_layer(const struct qt_graph *g, const struct qt_node *n)
{
    return qt_layer_weight(g, n, 1) >= 0;
}

/* ---- Undoing an earlier quantization ---- */

struct old_quant {
    char *layer;
    int weight; /* 1: WeightQuant, 0: ActQuant */
    struct qt_quant_attrs a;
    struct qt_tensor *alpha; /* owned copy, or NULL */
};

/* Removes every WeightQuant/ActQuant node (readers get the float tensor back) and records
 * its settings and alpha under the name of the layer that read it. */
static int strip(struct qt_graph *g, struct old_quant **olds, int *nold, struct qt_error *e)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *q = &g->nodes[i];
        if (q->dead || (q->op != QT_OP_WEIGHTQUANT && q->op != QT_OP_ACTQUANT)) continue;
        struct qt_quant_attrs a;
        if (qt_quant_attrs_get(q, &a, e)) return -1;
        int reader = qt_graph_first_consumer(g, q->out[0]);
        if (reader >= 0) {
            *olds = realloc(*olds, sizeof **olds * (*nold + 1));
            struct old_quant *o = &(*olds)[(*nold)++];
            o->layer = strdup(g->nodes[reader].name);
            o->weight = q->op == QT_OP_WEIGHTQUANT;
            o->a = a;
            o->alpha = q->nin > 1 && q->in[1] >= 0 && g->values[q->in[1]].init
                           ? qt_tensor_clone(g->values[q->in[1]].init)
                           : NULL;
            q = &g->nodes[i];
        }
        qt_graph_replace_uses(g, q->out[0], q->in[0]);
        q->dead = 1;
    }
    return qt_graph_compact(g, e);
}

static struct old_quant *find_old(struct old_quant *olds, int nold, const char *layer, int weight)
{
    for (int i = 0; i < nold; i++)
        if (olds[i].weight == weight && strcmp(olds[i].layer, layer) == 0) return &olds[i];
    return NULL;
}

/* ---- Graph facts ---- */

/* Whether value v is never negative, judged from the ops that produced it. */
static int non_negative(const struct qt_graph *g, int v, int depth)
{
    if (v < 0 || depth > 64) return 0;
    const struct qt_value *val = &g->values[v];
    if (val->init) {
        if (val->init->dtype != QT_F32) return 0;
        const float *d = val->init->data;
        for (int64_t i = 0; i < qt_shape_numel(&val->init->shape); i++)
            if (!(d[i] >= 0)) return 0;
        return 1;
    }
    if (val->producer < 0) return 0; /* a graph input: anything */
    const struct qt_node *n = &g->nodes[val->producer];
    switch (n->op) {
    case QT_OP_RELU:
    case QT_OP_ABS:
        return 1;
    case QT_OP_CLIP: {
        if (n->nin > 1 && n->in[1] >= 0) {
            const struct qt_tensor *t = g->values[n->in[1]].init;
            return t && qt_shape_numel(&t->shape) == 1 && qt_tensor_get_f(t, 0) >= 0;
        }
        const struct qt_attr *a = qt_node_attr(n, "min");
        return a && a->f >= 0;
    }
    case QT_OP_ACTQUANT: /* an earlier quantization: judge the tensor it quantizes */
    case QT_OP_MAXPOOL:
    case QT_OP_AVGPOOL:
    case QT_OP_GLOBALAVGPOOL:
    case QT_OP_FLATTEN:
    case QT_OP_RESHAPE:
    case QT_OP_SQUEEZE:
    case QT_OP_UNSQUEEZE:
    case QT_OP_IDENTITY:
    case QT_OP_DROPOUT:
        return n->out[0] == v && non_negative(g, n->in[0], depth + 1);
    case QT_OP_PAD: {
        const char *mode = qt_node_string(n, "mode", "constant");
        const struct qt_tensor *cv = n->nin > 2 && n->in[2] >= 0 ? g->values[n->in[2]].init : NULL;
        double c = cv ? qt_tensor_get_f(cv, 0) : qt_node_float(n, "value", 0.0f);
        return (strcmp(mode, "constant") != 0 || c >= 0) && non_negative(g, n->in[0], depth + 1);
    }
    case QT_OP_ADD:
    case QT_OP_MUL:
    case QT_OP_CONCAT:
        for (int k = 0; k < n->nin; k++)
            if (!non_negative(g, n->in[k], depth + 1)) return 0;
        return 1;
    default:
        return 0;
    }
}

/* Whether layer node i's only reader is a BatchNormalization (which absorbs the scale of
 * standardized weights). */
static int bn_follows(const struct qt_graph *g, const struct qt_node *n)
{
    int y = n->out[0];
    if (qt_graph_use_count(g, y) != 1 || (g->values[y].flags & QT_V_OUTPUT)) return 0;
    int r = qt_graph_first_consumer(g, y);
    return r >= 0 && g->nodes[r].op == QT_OP_BATCHNORM && g->nodes[r].in[0] == y;
}

/* first[i] / last[i] for layer nodes: no layer before its data input / after its output. */
static void first_last(const struct qt_graph *g, char *first, char *last)
{
    char *down = calloc(g->nvalues + 1, 1), *up = calloc(g->nvalues + 1, 1);
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        int any = is_layer(g, n);
        if (any) first[i] = !down[n->in[0]];
        for (int k = 0; k < n->nin; k++)
            any |= n->in[k] >= 0 && down[n->in[k]];
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0) down[n->out[k]] |= (char)any;
    }
    for (int i = g->nnodes - 1; i >= 0; i--) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        int any = 0;
        for (int k = 0; k < n->nout; k++)
            any |= n->out[k] >= 0 && up[n->out[k]];
        if (is_layer(g, n)) {
            last[i] = !any;
            if (n->in[0] >= 0) up[n->in[0]] = 1;
        }
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] >= 0) up[n->in[k]] |= (char)any;
    }
    free(down);
    free(up);
}

/* ---- Settings per layer ---- */

static void apply_spec(struct qt_quant_spec *s, const struct qt_quant_spec *o)
{
    if (o->wbits >= 0) s->wbits = o->wbits;
    if (o->abits >= 0) s->abits = o->abits;
    if (o->scheme >= 0) s->scheme = o->scheme;
}

int qt_quant_spec_parse(struct qt_quant_override *o, const char *arg, struct qt_error *e)
{
    const char *eq = strrchr(arg, '=');
    if (!eq || eq == arg || !eq[1])
        return qt_err(e,
                      "layer override '%s' is not PATTERN=SPEC (SPEC: float, w4a4, w8, a8, "
                      "w3a3:uniform, ...)",
                      arg);
    size_t pl = (size_t)(eq - arg);
    if (pl >= sizeof o->pattern) return qt_err(e, "layer override '%s': pattern too long", arg);
    memcpy(o->pattern, arg, pl);
    o->pattern[pl] = 0;
    o->spec.wbits = o->spec.abits = o->spec.scheme = -1;
    const char *s = eq + 1;
    if (strcmp(s, "float") == 0) {
        o->spec.wbits = o->spec.abits = 0;
        return 0;
    }
    while (*s && *s != ':') {
        char kind = *s++;
        char *end;
        long b = strtol(s, &end, 10);
        if ((kind != 'w' && kind != 'a') || end == s || b < 0 || b > 8)
            return qt_err(e,
                          "layer override '%s': SPEC must be float or wN/aN (N = 0 for float, "
                          "else 1..8) with an optional :apot or :uniform",
                          arg);
        if (kind == 'w')
            o->spec.wbits = (int)b;
        else
            o->spec.abits = (int)b;
        s = end;
    }
    if (*s == ':') {
        s++;
        if (strcmp(s, "apot") == 0)
            o->spec.scheme = QT_QS_APOT;
        else if (strcmp(s, "uniform") == 0)
            o->spec.scheme = QT_QS_UNIFORM;
        else
            return qt_err(e, "layer override '%s': scheme must be apot or uniform", arg);
    }
    return 0;
}

/* ---- Insertion ---- */

static int add_alpha(struct qt_graph *g, const char *layer, const char *suffix, int64_t count,
                     const float *values)
{
    char name[512];
    snprintf(name, sizeof name, "%s.%s", layer, suffix);
    struct qt_shape s = {1, {count}};
    int v = qt_graph_add_value_unique(g, name, QT_F32, &s);
    g->values[v].init = qt_tensor_new(QT_F32, &s);
    g->values[v].has_shape = 1;
    memcpy(g->values[v].init->data, values, sizeof(float) * count);
    return v;
}

static void set_attrs(struct qt_node *q, const struct qt_quant_attrs *a, int weight)
{
    qt_node_set_string(q, "scheme", qt_quant_scheme_name(a->scheme));
    if (a->scheme >= QT_QS_MAX) return;
    qt_node_set_int(q, "bits", a->bits);
    qt_node_set_int(q, "signed", a->is_signed);
    if (weight) qt_node_set_int(q, "standardize", a->standardize);
}

/* Inserts quantizer op on input k of layer node li: out = op(in, alpha?). */
static int insert(struct qt_graph *g, int li, int k, enum qt_op op, const struct qt_quant_attrs *a,
                  const float *alpha, int64_t nalpha, const char *what)
{
    char name[512];
    const char *layer = g->nodes[li].name;
    int src = g->nodes[li].in[k];
    snprintf(name, sizeof name, "%s.%s", layer, what);
    struct qt_shape sh = g->values[src].shape;
    int out = qt_graph_add_value_unique(g, name, QT_F32, g->values[src].has_shape ? &sh : NULL);
    int in[2] = {src, -1}, nin = 1;
    if (alpha) {
        char suffix[64];
        snprintf(suffix, sizeof suffix, "alpha_%c", op == QT_OP_WEIGHTQUANT ? 'w' : 'a');
        in[1] = add_alpha(g, layer, suffix, nalpha, alpha);
        nin = 2;
    }
    int qi = qt_graph_add_node(g, op, name, in, nin, &out, 1);
    set_attrs(&g->nodes[qi], a, op == QT_OP_WEIGHTQUANT);
    g->nodes[li].in[k] = out;
    return qi;
}

/* What the pass does to one layer, decided before the graph changes (node indices move
 * afterwards). */
struct plan {
    int node;
    char *name;
    struct qt_quant_spec s;
    int int8_w;                 /* 8-bit first/last weights */
    int has_w, has_a;           /* quantizers to insert */
    struct qt_quant_attrs w, a; /* their settings */
};

static void plans_free(struct plan *pl, int np)
{
    for (int j = 0; j < np; j++)
        free(pl[j].name);
    free(pl);
}

/* Decides and checks everything on the graph as it is (earlier quantizers are seen through),
 * so that a failure leaves it unchanged: *out (malloc'd) gets *np plans; *first_last the
 * layers found first or last. */
static int plan_layers(const struct qt_graph *g, const struct qt_quant_config *c,
                       struct plan **out, int *np_out, int *first_last_count, struct qt_error *e)
{
    int nn = g->nnodes, np = 0, rc = -1;
    *out = NULL;
    *np_out = 0;
    char *first = calloc(nn + 1, 1), *last = calloc(nn + 1, 1);
    struct plan *pl = calloc(nn + 1, sizeof *pl);
    if (!first || !last || !pl) {
        qt_err(e, "quantize: out of memory");
        goto done;
    }
    first_last(g, first, last);
    for (int k = 0; k < c->noverrides; k++)
        c->overrides[k].matched = 0;
    *first_last_count = 0;
    for (int i = 0; i < nn; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (!is_layer(g, n)) continue;
        struct plan *p = &pl[np++];
        p->node = i;
        p->name = strdup(n->name);
        p->s.wbits = c->wbits;
        p->s.abits = c->abits;
        p->s.scheme = c->scheme;
        if (first[i] || last[i]) {
            if (c->first_last == QT_FL_FLOAT)
                p->s.wbits = p->s.abits = 0;
            else if (c->first_last == QT_FL_8BIT)
                p->int8_w = 1, p->s.abits = 0;
        }
        for (int k = 0; k < c->noverrides; k++)
            if (fnmatch(c->overrides[k].pattern, n->name, 0) == 0) {
                apply_spec(&p->s, &c->overrides[k].spec);
                if (c->overrides[k].spec.wbits >= 0) p->int8_w = 0;
                c->overrides[k].matched = 1;
            }
        p->has_w = p->s.wbits > 0 || p->int8_w;
        p->has_a = p->s.abits > 0;
        p->w =
            (struct qt_quant_attrs){p->s.scheme, p->s.wbits, 1, c->standardize && bn_follows(g, n)};
        if (p->int8_w)
            p->w = (struct qt_quant_attrs){c->int8_absmax ? QT_QS_ABSMAX : QT_QS_MAX, 8, 1, 0};
        p->a = (struct qt_quant_attrs){p->s.scheme, p->s.abits, !non_negative(g, n->in[0], 0), 0};
        *first_last_count += first[i] || last[i];
    }
    for (int k = 0; k < c->noverrides; k++)
        if (!c->overrides[k].matched) {
            qt_err(e, "layer override '%s=...' matches no Conv, Gemm or MatMul node",
                   c->overrides[k].pattern);
            goto done;
        }
    /* Layers are found again by name once nodes move: each layer's name must be unique. */
    for (int j = 0; j < np; j++)
        for (int i = 0; i < nn; i++)
            if (i != pl[j].node && !g->nodes[i].dead && !strcmp(g->nodes[i].name, pl[j].name)) {
                char d1[160], d2[160];
                qt_err(e, "%s and %s share a name; the quantize pass needs unique layer names",
                       qt_node_desc(g, &g->nodes[pl[j].node], d1, sizeof d1),
                       qt_node_desc(g, &g->nodes[i], d2, sizeof d2));
                goto done;
            }
    /* Check every setting before changing anything. */
    for (int j = 0; j < np; j++) {
        const struct plan *p = &pl[j];
        const char *kind = NULL;
        if (p->has_w && qt_quant_attrs_check(&p->w, QT_OP_WEIGHTQUANT, p->name, e))
            kind = "weight";
        else if (p->has_a && qt_quant_attrs_check(&p->a, QT_OP_ACTQUANT, p->name, e))
            kind = "activation";
        if (kind) {
            qt_err_prefix(e, "layer '%s', %s quantizer: ", p->name, kind);
            goto done;
        }
    }
    rc = 0;
done:
    free(first);
    free(last);
    if (rc) {
        plans_free(pl, np);
        return -1;
    }
    *out = pl;
    *np_out = np;
    return 0;
}

int qt_quant_weight_bits(const struct qt_graph *g, const struct qt_quant_config *c, int *bits,
                         struct qt_error *e)
{
    struct plan *pl;
    int np, fl;
    if (plan_layers(g, c, &pl, &np, &fl, e)) return -1;
    for (int v = 0; v < g->nvalues; v++)
        bits[v] = 0;
    for (int j = 0; j < np; j++)
        if (pl[j].has_w) bits[qt_layer_weight(g, &g->nodes[pl[j].node], 1)] = pl[j].w.bits;
    plans_free(pl, np);
    return 0;
}

int qt_pass_quantize(struct qt_graph *g, const struct qt_quant_config *c,
                     struct qt_quant_summary *sum, struct qt_error *e)
{
    struct old_quant *olds = NULL;
    int nold = 0, rc = -1, np = 0;
    memset(sum, 0, sizeof *sum);
    if (c->scheme != QT_QS_APOT && c->scheme != QT_QS_UNIFORM)
        return qt_err(e, "quantize: scheme must be apot or uniform");
    struct plan *pl = NULL;
    if (plan_layers(g, c, &pl, &np, &sum->first_last, e)) goto done;
    /* Return the graph to float, then insert. */
    if (strip(g, &olds, &nold, e)) goto done;
    for (int j = 0; j < np; j++) {
        struct plan *p = &pl[j];
        int li = p->node = qt_graph_find_node(g, p->name);
        if (li < 0) {
            qt_err(e, "quantize: layer '%s' disappeared", p->name);
            goto done;
        }
        const char *lname = p->name;
        const struct qt_quant_attrs wa = p->w, aa = p->a;
        if (p->has_w) {
            const struct qt_tensor *w = g->values[g->nodes[li].in[1]].init;
            int64_t nal = 0;
            float *al = NULL;
            if (wa.scheme <= QT_QS_UNIFORM) {
                int per_ch = c->per_channel && wa.scheme == QT_QS_UNIFORM && w->shape.ndim >= 2 &&
                             g->nodes[li].op == QT_OP_CONV;
                nal = per_ch ? w->shape.d[0] : 1;
                al = malloc(sizeof(float) * nal);
                const float *wd = w->data;
                int64_t numel = qt_shape_numel(&w->shape), per = numel / nal;
                for (int64_t ch = 0; ch < nal; ch++) {
                    float m = 0;
                    for (int64_t t = 0; t < per; t++) {
                        float a = wd[ch * per + t] < 0 ? -wd[ch * per + t] : wd[ch * per + t];
                        if (a > m) m = a;
                    }
                    /* Standardized weights: the paper's value in units of sigma; raw weights:
                     * their range. */
                    al[ch] = wa.standardize ? c->alpha_w : (m > 0 ? m : 1.0f);
                }
                const struct old_quant *o = find_old(olds, nold, lname, 1);
                if (o && o->alpha && !c->reset_alphas && o->a.scheme == wa.scheme &&
                    o->a.bits == wa.bits && !o->a.standardize == !wa.standardize &&
                    qt_shape_numel(&o->alpha->shape) == nal)
                    memcpy(al, o->alpha->data, sizeof(float) * nal), sum->kept++;
                else if (o)
                    sum->reset++;
            }
            insert(g, li, 1, QT_OP_WEIGHTQUANT, &wa, al, nal, "wq");
            free(al);
            sum->weight++;
        }
        if (p->has_a) {
            float al = c->alpha_a;
            const struct old_quant *o = find_old(olds, nold, lname, 0);
            if (o && o->alpha && !c->reset_alphas && o->a.scheme == aa.scheme &&
                o->a.bits == aa.bits && o->a.is_signed == aa.is_signed &&
                qt_shape_numel(&o->alpha->shape) == 1)
                al = ((const float *)o->alpha->data)[0], sum->kept++;
            else if (o)
                sum->reset++;
            insert(g, li, 0, QT_OP_ACTQUANT, &aa, &al, 1, "aq");
            sum->act++;
            sum->act_signed += aa.is_signed;
        }
        sum->layers++;
    }
    if (qt_graph_compact(g, e)) goto done;
    rc = 0;
done:
    plans_free(pl, np);
    for (int i = 0; i < nold; i++) {
        free(olds[i].layer);
        qt_tensor_free(olds[i].alpha);
    }
    free(olds);
    return rc;
}
