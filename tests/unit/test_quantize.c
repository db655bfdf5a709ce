/* The quantize pass (passes/quantize.c) and BatchNorm unfolding (passes/batchnorm.c):
 * quantizer counts and attributes on ResNet-20 for each first/last policy, per-layer
 * overrides and their errors, activation signedness decided from the graph, alphas kept or
 * re-initialized when a quantized graph is quantized again, unfolding a folded ResNet-20
 * without changing its function, and the executor's fast path against its plain path on
 * quantized models. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../graph/builder.h"
#include "../../graph/schema.h"
#include "../../passes/passes.h"
#include "../../runtime/backend.h"
#include "../../runtime/exec.h"
#include "harness.h"

/* Fails the running test and jumps to the function's `out:` label (which frees what the test
 * holds); needs `int bad` in scope. */
#define T_CHECK(cond)                                                                       \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            bad = qt_test_fail("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);       \
            goto out;                                                                       \
        }                                                                                   \
    } while (0)

#define T_FAIL(...)                                                                         \
    do {                                                                                    \
        bad = qt_test_fail(__VA_ARGS__);                                                    \
        goto out;                                                                           \
    } while (0)

#define T_NEAR(a, b, tol)                                                                   \
    do {                                                                                    \
        double ta_ = (a), tb_ = (b);                                                        \
        if (!(fabs(ta_ - tb_) <= (tol)))                                                    \
            T_FAIL("%s:%d: %s = %.9g, expected %.9g (tol %g)", __FILE__, __LINE__, #a, ta_, \
                   tb_, (double)(tol));                                                     \
    } while (0)

/* ---- helpers ---- */

static float urand(uint64_t *s) /* [-0.5, 0.5) */
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static int count_op(const struct qt_graph *g, enum qt_op op)
{
    int c = 0;
    for (int i = 0; i < g->nnodes; i++) c += !g->nodes[i].dead && g->nodes[i].op == op;
    return c;
}

static int find_node(const struct qt_graph *g, const char *name)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead && strcmp(g->nodes[i].name, name) == 0) return i;
    return -1;
}

static int is_layer_op(enum qt_op op)
{
    return op == QT_OP_CONV || op == QT_OP_GEMM || op == QT_OP_MATMUL;
}

/* The node of kind op that produces input k of node li, or -1. */
static int quant_on(const struct qt_graph *g, int li, int k, enum qt_op op)
{
    if (li < 0 || k >= g->nodes[li].nin || g->nodes[li].in[k] < 0) return -1;
    int p = g->values[g->nodes[li].in[k]].producer;
    return p >= 0 && g->nodes[p].op == op ? p : -1;
}

static int wq_of(const struct qt_graph *g, const char *layer)
{
    return quant_on(g, find_node(g, layer), 1, QT_OP_WEIGHTQUANT);
}

static int aq_of(const struct qt_graph *g, const char *layer)
{
    return quant_on(g, find_node(g, layer), 0, QT_OP_ACTQUANT);
}

/* The alpha initializer of quantizer node qi (NULL when it has none). */
static struct qt_tensor *alpha_of(const struct qt_graph *g, int qi)
{
    const struct qt_node *q = &g->nodes[qi];
    return q->nin > 1 && q->in[1] >= 0 ? g->values[q->in[1]].init : NULL;
}

static float alpha0(const struct qt_graph *g, int qi)
{
    const struct qt_tensor *t = alpha_of(g, qi);
    return t ? ((const float *)t->data)[0] : NAN;
}

static struct qt_quant_config default_config(void)
{
    struct qt_quant_config c;
    memset(&c, 0, sizeof c);
    c.wbits = 4;
    c.abits = 4;
    c.scheme = QT_QS_APOT;
    c.first_last = QT_FL_8BIT;
    c.int8_absmax = 1;
    c.standardize = 1;
    c.alpha_w = 3.0f;
    c.alpha_a = 8.0f;
    return c;
}

/* Random BatchNorm parameters and statistics (scale [0.5, 1.5), bias [-0.5, 0.5), mean
 * [-0.25, 0.25), variance [0.5, 1.5)), so that folding gives the Convs non-trivial biases. */
static void randomize_bn(struct qt_graph *g, uint64_t seed)
{
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_BATCHNORM) continue;
        for (int k = 1; k <= 4; k++) {
            struct qt_tensor *t = g->values[n->in[k]].init;
            float *d = t->data;
            for (int64_t j = 0; j < qt_shape_numel(&t->shape); j++) {
                float r = urand(&seed);
                d[j] = k == 1 || k == 4 ? 1.0f + r : k == 3 ? 0.5f * r : r;
            }
        }
    }
}

static struct qt_tensor *random_input(const struct qt_graph *g, int batch, uint64_t seed)
{
    struct qt_shape s = g->values[g->inputs[0]].shape;
    s.d[0] = batch;
    struct qt_tensor *t = qt_tensor_new(QT_F32, &s);
    for (int64_t i = 0; i < qt_shape_numel(&s); i++) ((float *)t->data)[i] = 4.0f * urand(&seed);
    return t;
}

/* The CPU backend, counting the inference steps of ActQuant nodes and those among them that
 * read their input in a layout of the backend's own (not plain). */
struct counting {
    struct qt_backend b; /* first member: the executor is handed &c->b */
    struct qt_backend *inner;
    int act_steps, act_in_layout;
};

static int count_infer(struct qt_backend *b, const struct qt_step *s, struct qt_error *e)
{
    struct counting *c = (struct counting *)b;
    if (s->d->kind == QT_K_ACTQUANT) {
        c->act_steps++;
        c->act_in_layout += s->in_layout[0] != 0;
    }
    return c->inner->forward_infer(c->inner, s, e);
}

/* One inference run of g on the CPU backend in the given mode; returns a copy of output 0.
 * cnt (may be NULL) receives the counts of the run. */
static struct qt_tensor *forward_counted(struct qt_graph *g, const struct qt_tensor *in,
                                         enum qt_exec_mode mode, struct counting *cnt,
                                         struct qt_error *e)
{
    struct qt_backend *inner = qt_backend_cpu_new(0);
    if (!inner) {
        qt_err(e, "cannot create the CPU backend");
        return NULL;
    }
    struct counting local;
    if (!cnt) cnt = &local;
    memset(cnt, 0, sizeof *cnt);
    cnt->b = *inner;
    cnt->inner = inner;
    if (inner->forward_infer) cnt->b.forward_infer = count_infer;
    struct qt_backend *b = &cnt->b;
    struct qt_tensor *y = NULL;
    struct qt_exec *x = qt_exec_new(g, b, e);
    if (x) {
        qt_exec_set_mode(x, mode);
        const struct qt_tensor *ins[1] = {in};
        if (qt_exec_forward(x, ins, e) == 0) {
            const struct qt_tensor *o = qt_exec_output(x, 0);
            y = qt_tensor_new(QT_F32, &o->shape);
            if (y && qt_exec_read(x, o->data, y->data, qt_shape_numel(&o->shape), e)) {
                qt_tensor_free(y);
                y = NULL;
            }
        }
        qt_exec_free(x);
    }
    inner->destroy(inner);
    return y;
}

static struct qt_tensor *forward(struct qt_graph *g, const struct qt_tensor *in,
                                 enum qt_exec_mode mode, struct qt_error *e)
{
    return forward_counted(g, in, mode, NULL, e);
}

/* max |a - b| / max |b| (a and b of the same shape). */
static double rel_diff(const struct qt_tensor *a, const struct qt_tensor *b)
{
    const float *p = a->data, *q = b->data;
    double mx = 0, d = 0;
    for (int64_t i = 0; i < qt_shape_numel(&b->shape); i++) {
        mx = fmax(mx, fabs(q[i]));
        double di = fabs((double)p[i] - q[i]);
        if (!(di <= d)) d = di; /* NaN propagates */
    }
    return mx > 0 ? d / mx : d;
}

/* ---- 1. ResNet-20 in its canonical form (Conv -> BatchNorm) ---- */

#define MAX_LAYERS 64

QT_TEST(quantize_resnet20_default)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0, nl = 0;
    char *lname[MAX_LAYERS], *wname[MAX_LAYERS];
    struct qt_tensor *w0[MAX_LAYERS];
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    /* The layers and their weights before quantizing. */
    for (int i = 0; i < g->nnodes && nl < MAX_LAYERS; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (!is_layer_op(n->op)) continue;
        lname[nl] = strdup(n->name);
        wname[nl] = strdup(g->values[n->in[1]].name);
        w0[nl] = qt_tensor_clone(g->values[n->in[1]].init);
        nl++;
    }
    T_CHECK(nl == 22);
    struct qt_quant_config c = default_config();
    struct qt_quant_summary s;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize: %s", e.msg);
    T_CHECK(s.layers == 22 && s.weight == 22 && s.act == 20 && s.act_signed == 0);
    T_CHECK(s.first_last == 2 && s.kept == 0 && s.reset == 0);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 22 && count_op(g, QT_OP_ACTQUANT) == 20);
    T_CHECK(qt_graph_verify(g, &e) == 0);
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
    for (int j = 0; j < nl; j++) {
        int li = find_node(g, lname[j]);
        T_CHECK(li >= 0);
        int wq = quant_on(g, li, 1, QT_OP_WEIGHTQUANT), aq = quant_on(g, li, 0, QT_OP_ACTQUANT);
        if (wq < 0) T_FAIL("layer '%s' has no WeightQuant", lname[j]);
        /* Input 0 of the WeightQuant is the layer's original weight initializer. */
        const struct qt_node *q = &g->nodes[wq];
        const struct qt_value *wv = &g->values[q->in[0]];
        if (strcmp(wv->name, wname[j]) != 0 || !wv->init || wv->init->nbytes != w0[j]->nbytes ||
            memcmp(wv->init->data, w0[j]->data, w0[j]->nbytes) != 0)
            T_FAIL("layer '%s': WeightQuant reads '%s', not the weight '%s' as it was", lname[j],
                   wv->name, wname[j]);
        /* WeightQuant's attributes are valid for the schema. */
        struct qt_quant_attrs a;
        if (qt_quant_attrs_get(q, &a, &e)) T_FAIL("%s", e.msg);
        int fl = strcmp(lname[j], "conv1") == 0 || strcmp(lname[j], "fc") == 0;
        if (fl) {
            /* First conv and fc: 8-bit absmax weights without alpha, float inputs. */
            T_CHECK(strcmp(qt_node_string(q, "scheme", ""), "absmax") == 0);
            T_CHECK(a.scheme == QT_QS_ABSMAX && a.bits == 8 && a.standardize == 0);
            T_CHECK(!alpha_of(g, wq));
            if (aq >= 0) T_FAIL("first/last layer '%s' has an ActQuant", lname[j]);
            continue;
        }
        T_CHECK(a.scheme == QT_QS_APOT && a.bits == 4 && a.is_signed == 1);
        /* Every Conv of the canonical ResNet is followed by a BatchNorm: standardized. */
        T_CHECK(g->nodes[li].op == QT_OP_CONV);
        T_CHECK(qt_node_int(q, "standardize", -1) == 1);
        const struct qt_tensor *al = alpha_of(g, wq);
        T_CHECK(al && qt_shape_numel(&al->shape) == 1 && al->dtype == QT_F32);
        T_NEAR(alpha0(g, wq), 3.0, 0);
        if (aq < 0) T_FAIL("layer '%s' has no ActQuant", lname[j]);
        const struct qt_node *qa = &g->nodes[aq];
        T_CHECK(qt_node_int(qa, "signed", -1) == 0);
        T_CHECK(qt_node_int(qa, "bits", -1) == 4);
        T_CHECK(strcmp(qt_node_string(qa, "scheme", ""), "apot") == 0);
        T_NEAR(alpha0(g, aq), 8.0, 0);
    }
    /* Each quantizer has exactly one reader: its layer. */
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *q = &g->nodes[i];
        if (q->op != QT_OP_WEIGHTQUANT && q->op != QT_OP_ACTQUANT) continue;
        T_CHECK(qt_graph_use_count(g, q->out[0]) == 1);
        T_CHECK(is_layer_op(g->nodes[qt_graph_first_consumer(g, q->out[0])].op));
    }
out:
    for (int j = 0; j < nl; j++) {
        free(lname[j]);
        free(wname[j]);
        qt_tensor_free(w0[j]);
    }
    qt_graph_free(g);
    return bad;
}

/* int8_absmax 0: the first/last weights use scheme "max" (the reference code's range). */
QT_TEST(quantize_resnet20_int8_max)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0;
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    struct qt_quant_config c = default_config();
    c.int8_absmax = 0;
    struct qt_quant_summary s;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize: %s", e.msg);
    for (int k = 0; k < 2; k++) {
        int wq = wq_of(g, k ? "fc" : "conv1");
        T_CHECK(wq >= 0 && strcmp(qt_node_string(&g->nodes[wq], "scheme", ""), "max") == 0);
        T_CHECK(!alpha_of(g, wq));
    }
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
out:
    qt_graph_free(g);
    return bad;
}

QT_TEST(quantize_resnet20_first_last_same_and_float)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0;
    struct qt_quant_summary s;
    struct qt_quant_config c = default_config();
    /* same: every layer quantized like the others; only conv1 (reading the graph input) has a
     * signed activation quantizer. */
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    c.first_last = QT_FL_SAME;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize (same): %s", e.msg);
    T_CHECK(s.weight == 22 && s.act == 22 && s.act_signed == 1 && s.first_last == 2);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 22 && count_op(g, QT_OP_ACTQUANT) == 22);
    int signed_n = 0;
    for (int i = 0; i < g->nnodes; i++)
        if (g->nodes[i].op == QT_OP_ACTQUANT) signed_n += qt_node_int(&g->nodes[i], "signed", 0) == 1;
    T_CHECK(signed_n == 1);
    int aq = aq_of(g, "conv1");
    T_CHECK(aq >= 0 && qt_node_int(&g->nodes[aq], "signed", -1) == 1);
    T_CHECK(g->nodes[aq].in[0] == g->inputs[0]);
    aq = aq_of(g, "fc");
    T_CHECK(aq >= 0 && qt_node_int(&g->nodes[aq], "signed", -1) == 0);
    /* conv1 is followed by a BatchNorm (standardized, alpha_w); fc is not (raw weights, alpha
     * = max |W|). */
    int wq = wq_of(g, "conv1");
    T_CHECK(wq >= 0 && qt_node_int(&g->nodes[wq], "standardize", -1) == 1);
    T_CHECK(strcmp(qt_node_string(&g->nodes[wq], "scheme", ""), "apot") == 0);
    T_NEAR(alpha0(g, wq), 3.0, 0);
    wq = wq_of(g, "fc");
    T_CHECK(wq >= 0 && qt_node_int(&g->nodes[wq], "standardize", -1) == 0);
    {
        const struct qt_tensor *w = g->values[g->nodes[wq].in[0]].init;
        float m = 0;
        for (int64_t i = 0; i < qt_shape_numel(&w->shape); i++)
            m = fmaxf(m, fabsf(((const float *)w->data)[i]));
        T_NEAR(alpha0(g, wq), m, 0);
    }
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
    qt_graph_free(g);
    g = NULL;

    /* float: first conv and fc keep float weights and inputs. */
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    c.first_last = QT_FL_FLOAT;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize (float): %s", e.msg);
    T_CHECK(s.weight == 20 && s.act == 20 && s.act_signed == 0 && s.layers == 22);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 20 && count_op(g, QT_OP_ACTQUANT) == 20);
    T_CHECK(wq_of(g, "conv1") < 0 && aq_of(g, "conv1") < 0);
    T_CHECK(wq_of(g, "fc") < 0 && aq_of(g, "fc") < 0);
    T_CHECK(g->nodes[find_node(g, "conv1")].in[0] == g->inputs[0]);
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
out:
    qt_graph_free(g);
    return bad;
}

/* ---- Overrides ---- */

QT_TEST(quantize_spec_parse)
{
    struct qt_quant_override o;
    struct qt_error e;
    QT_CHECK(qt_quant_spec_parse(&o, "*layer3*=float", &e) == 0);
    QT_CHECK(strcmp(o.pattern, "*layer3*") == 0 && o.spec.wbits == 0 && o.spec.abits == 0 &&
             o.spec.scheme == -1);
    QT_CHECK(qt_quant_spec_parse(&o, "*=w8a8:uniform", &e) == 0);
    QT_CHECK(strcmp(o.pattern, "*") == 0 && o.spec.wbits == 8 && o.spec.abits == 8 &&
             o.spec.scheme == QT_QS_UNIFORM);
    QT_CHECK(qt_quant_spec_parse(&o, "layer1.*=w3", &e) == 0);
    QT_CHECK(o.spec.wbits == 3 && o.spec.abits == -1 && o.spec.scheme == -1);
    QT_CHECK(qt_quant_spec_parse(&o, "fc=a5:apot", &e) == 0);
    QT_CHECK(o.spec.wbits == -1 && o.spec.abits == 5 && o.spec.scheme == QT_QS_APOT);
    QT_CHECK(qt_quant_spec_parse(&o, "x=a2w0", &e) == 0);
    QT_CHECK(o.spec.wbits == 0 && o.spec.abits == 2);
    const char *badspecs[] = {
        "conv1",          /* no '=' */
        "=w4",            /* empty pattern */
        "conv1=",         /* empty spec */
        "conv1=w9",       /* bits out of range */
        "conv1=a-1",      /* negative bits */
        "conv1=w",        /* no number */
        "conv1=x4",       /* unknown kind */
        "conv1=w4:log",   /* unknown scheme */
        "conv1=w4:",      /* empty scheme */
        "conv1=floats",   /* not "float" */
        "conv1=w4 a4",    /* stray space */
    };
    for (size_t i = 0; i < sizeof badspecs / sizeof badspecs[0]; i++) {
        e.msg[0] = 0;
        if (qt_quant_spec_parse(&o, badspecs[i], &e) != -1 || !e.msg[0])
            return qt_test_fail("'%s' accepted", badspecs[i]);
    }
    char longpat[300];
    memset(longpat, 'a', 250);
    strcpy(longpat + 250, "=w4");
    QT_CHECK(qt_quant_spec_parse(&o, longpat, &e) == -1 && strstr(e.msg, "too long"));
    return 0;
}

QT_TEST(quantize_overrides)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0;
    struct qt_quant_summary s;
    struct qt_quant_override ov[3];
    struct qt_quant_config c = default_config();

    /* *layer3*=float: no quantizer on any layer3 layer (7 Convs: 3 blocks x 2 + shortcut). */
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    memset(ov, 0, sizeof ov);
    T_CHECK(qt_quant_spec_parse(&ov[0], "*layer3*=float", &e) == 0);
    c.overrides = ov;
    c.noverrides = 1;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize: %s", e.msg);
    T_CHECK(ov[0].matched == 1);
    T_CHECK(s.weight == 15 && s.act == 13);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 15 && count_op(g, QT_OP_ACTQUANT) == 13);
    int l3 = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (!is_layer_op(n->op)) continue;
        int has = quant_on(g, i, 1, QT_OP_WEIGHTQUANT) >= 0 || quant_on(g, i, 0, QT_OP_ACTQUANT) >= 0;
        if (strncmp(n->name, "layer3", 6) == 0) {
            l3++;
            if (has) T_FAIL("layer '%s' is quantized despite *layer3*=float", n->name);
        } else if (strcmp(n->name, "conv1") && strcmp(n->name, "fc") &&
                   (quant_on(g, i, 1, QT_OP_WEIGHTQUANT) < 0 || quant_on(g, i, 0, QT_OP_ACTQUANT) < 0))
            T_FAIL("layer '%s' lost its quantizers", n->name);
    }
    T_CHECK(l3 == 7);
    qt_graph_free(g);
    g = NULL;

    /* *=w8a8:uniform on every layer (first and last included: an override's wbits replaces
     * the 8-bit first/last weights, its abits the float input). */
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    memset(ov, 0, sizeof ov);
    T_CHECK(qt_quant_spec_parse(&ov[0], "*=w8a8:uniform", &e) == 0);
    /* A later override wins: layer1.0.conv1 gets 3-bit activations, keeps 8-bit weights. */
    T_CHECK(qt_quant_spec_parse(&ov[1], "layer1.0.conv1=a3", &e) == 0);
    c.noverrides = 2;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize: %s", e.msg);
    T_CHECK(ov[0].matched && ov[1].matched);
    T_CHECK(s.weight == 22 && s.act == 22 && s.act_signed == 1);
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *q = &g->nodes[i];
        if (q->op != QT_OP_WEIGHTQUANT && q->op != QT_OP_ACTQUANT) continue;
        const char *layer = g->nodes[qt_graph_first_consumer(g, q->out[0])].name;
        int want = q->op == QT_OP_ACTQUANT && strcmp(layer, "layer1.0.conv1") == 0 ? 3 : 8;
        if (strcmp(qt_node_string(q, "scheme", ""), "uniform") || qt_node_int(q, "bits", -1) != want)
            T_FAIL("%s of '%s': scheme %s, %d bits; expected uniform, %d", qt_op_name(q->op),
                   layer, qt_node_string(q, "scheme", "?"), (int)qt_node_int(q, "bits", -1), want);
    }
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
    qt_graph_free(g);
    g = NULL;

    /* A pattern matching no layer is an error naming the pattern; the graph is not changed. */
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    int nn = g->nnodes, nv = g->nvalues;
    memset(ov, 0, sizeof ov);
    T_CHECK(qt_quant_spec_parse(&ov[0], "layer1.*=w3", &e) == 0);
    T_CHECK(qt_quant_spec_parse(&ov[1], "layer9.*=w2", &e) == 0);
    c.noverrides = 2;
    e.msg[0] = 0;
    T_CHECK(qt_pass_quantize(g, &c, &s, &e) == -1);
    if (!strstr(e.msg, "layer9.*")) T_FAIL("message does not name the pattern: %s", e.msg);
    T_CHECK(ov[0].matched == 1 && ov[1].matched == 0);
    T_CHECK(g->nnodes == nn && g->nvalues == nv);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 0 && count_op(g, QT_OP_ACTQUANT) == 0);
    /* A flag left set by an earlier call does not hide the unmatched pattern. */
    ov[1].matched = 1;
    e.msg[0] = 0;
    T_CHECK(qt_pass_quantize(g, &c, &s, &e) == -1);
    if (!strstr(e.msg, "layer9.*")) T_FAIL("a stale matched flag hid the pattern: %s", e.msg);
out:
    qt_graph_free(g);
    return bad;
}

/* Settings without a level set are rejected before anything is inserted, naming the layer. */
QT_TEST(quantize_bad_bits)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0;
    struct qt_quant_summary s;
    struct qt_quant_config c = default_config();
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    int nn = g->nnodes, nv = g->nvalues;
    /* APoT weights stop at 6 bits. conv1 has 8-bit absmax weights, so the first layer with
     * APoT weights is layer1.0.conv1. */
    c.wbits = 7;
    e.msg[0] = 0;
    T_CHECK(qt_pass_quantize(g, &c, &s, &e) == -1);
    if (!strstr(e.msg, "layer1.0.conv1") || !strstr(e.msg, "uniform") || !strstr(e.msg, "weight"))
        T_FAIL("message: %s", e.msg);
    T_CHECK(g->nnodes == nn && g->nvalues == nv && count_op(g, QT_OP_WEIGHTQUANT) == 0 &&
            count_op(g, QT_OP_ACTQUANT) == 0);
    T_CHECK(qt_graph_verify(g, &e) == 0);
    /* 7-bit uniform weights are fine. */
    c.scheme = QT_QS_UNIFORM;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("uniform w7: %s", e.msg);
    T_CHECK(s.weight == 22);
    /* Unsigned APoT activations stop at 5 bits. */
    c.scheme = QT_QS_APOT;
    c.wbits = 4;
    c.abits = 6;
    e.msg[0] = 0;
    T_CHECK(qt_pass_quantize(g, &c, &s, &e) == -1);
    if (!strstr(e.msg, "layer1.0.conv1") || !strstr(e.msg, "activation"))
        T_FAIL("message: %s", e.msg);
    /* This graph was quantized (uniform w7) before the failing call: the pass checks every
     * setting before it changes anything, so the graph keeps those quantizers. */
    T_CHECK(qt_graph_verify(g, &e) == 0);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 22 && count_op(g, QT_OP_ACTQUANT) == 20);
    T_CHECK(g->nnodes == nn + 42);
    /* A scheme other than apot/uniform. */
    c.abits = 4;
    c.scheme = QT_QS_ABSMAX;
    T_CHECK(qt_pass_quantize(g, &c, &s, &e) == -1);
out:
    qt_graph_free(g);
    return bad;
}

/* ---- 2. Signedness from the graph ---- */

static int add_init(struct qt_graph *g, const char *name, int ndim, const int64_t *d,
                    uint64_t *seed, float scale)
{
    struct qt_shape s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    int v = qt_graph_add_value(g, name, QT_F32, &s);
    g->values[v].init = qt_tensor_new(QT_F32, &s);
    for (int64_t i = 0; i < qt_shape_numel(&s); i++)
        ((float *)g->values[v].init->data)[i] = scale * urand(seed);
    return v;
}

static int scalar(struct qt_graph *g, const char *name, float x)
{
    struct qt_shape s = {0, {0}};
    int v = qt_graph_add_value(g, name, QT_F32, &s);
    g->values[v].init = qt_tensor_new(QT_F32, &s);
    ((float *)g->values[v].init->data)[0] = x;
    return v;
}

/* 3x3 Conv, padding 1, C -> C channels, random weights. */
static int conv(struct qt_graph *g, const char *name, int x, int64_t c, uint64_t *seed)
{
    char wn[64];
    snprintf(wn, sizeof wn, "%s.weight", name);
    int w = add_init(g, wn, 4, (int64_t[]){c, c, 3, 3}, seed, 0.5f);
    int y = qt_graph_add_value(g, name, QT_UNDEF, NULL);
    int n = qt_graph_add_node(g, QT_OP_CONV, name, (int[]){x, w}, 2, &y, 1);
    qt_node_set_ints(&g->nodes[n], "kernel_shape", (int64_t[]){3, 3}, 2);
    qt_node_set_ints(&g->nodes[n], "pads", (int64_t[]){1, 1, 1, 1}, 4);
    return y;
}

/* Node op on inputs in[0..nin) (-1 entries are omitted optional inputs); returns its output. */
static int node(struct qt_graph *g, enum qt_op op, const char *name, const int *in, int nin)
{
    int y = qt_graph_add_value(g, name, QT_UNDEF, NULL);
    qt_graph_add_node(g, op, name, in, nin, &y, 1);
    return y;
}

static struct qt_graph *small_graph(int *x)
{
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 4, 8, 8}};
    *x = qt_builder_input(g, "x", QT_F32, &xs);
    return g;
}

/* Marks y as the output, infers shapes, quantizes with first/last "same" (every conv gets an
 * ActQuant) and returns the signed attribute of the ActQuant on `layer` (-1: none, -2:
 * failure, message in e). */
static int signed_after_quantize(struct qt_graph *g, int y, const char *layer, struct qt_error *e)
{
    if (qt_builder_output(g, y, "y", e) || qt_graph_infer_shapes(g, e)) return -2;
    struct qt_quant_config c = default_config();
    c.first_last = QT_FL_SAME;
    struct qt_quant_summary s;
    if (qt_pass_quantize(g, &c, &s, e) || qt_graph_infer_shapes(g, e)) return -2;
    int aq = aq_of(g, layer);
    return aq < 0 ? -1 : (int)qt_node_int(&g->nodes[aq], "signed", -1);
}

struct sign_case {
    const char *what;
    int want; /* signed attribute of c2's ActQuant */
};

static const struct sign_case sign_cases[] = {
    {"Conv -> Conv", 1},
    {"Conv -> Relu -> MaxPool -> Conv", 0},
    {"Conv -> Relu -> Add(., Conv) -> Conv", 1},
    {"Conv -> Relu -> Add(., Relu(Conv)) -> Conv", 0},
    {"Conv -> Clip(min input 0, max 6) -> Conv", 0},
    {"Conv -> Clip(min attribute 0) -> Conv", 0},
    {"Conv -> Clip(min input -1) -> Conv", 1},
    {"Conv -> Clip(max input only) -> Conv", 1},
    {"Conv -> Relu -> Pad(constant 0) -> AveragePool -> Conv", 0},
    {"Conv -> Relu -> Pad(constant -1) -> Conv", 1},
    {"Conv -> Relu -> Mul(., negative constant) -> Conv", 1},
    {"Conv -> Relu -> Mul(., positive constant) -> Conv", 0},
    {"Conv -> Abs -> Conv", 0},
    {"Conv -> Neg -> Conv", 1},
};

static int build_sign_case(struct qt_graph *g, int x, int k, uint64_t *seed)
{
    int c1 = conv(g, "c1", x, 4, seed);
    switch (k) {
    case 0: return c1;
    case 1: {
        int r = node(g, QT_OP_RELU, "r", &c1, 1);
        int m = qt_graph_add_value(g, "pool", QT_UNDEF, NULL);
        int n = qt_graph_add_node(g, QT_OP_MAXPOOL, "pool", &r, 1, &m, 1);
        qt_node_set_ints(&g->nodes[n], "kernel_shape", (int64_t[]){2, 2}, 2);
        qt_node_set_ints(&g->nodes[n], "strides", (int64_t[]){2, 2}, 2);
        return m;
    }
    case 2: case 3: {
        int r = node(g, QT_OP_RELU, "r", &c1, 1);
        int c0 = conv(g, "c0", x, 4, seed);
        if (k == 3) c0 = node(g, QT_OP_RELU, "r0", &c0, 1);
        return node(g, QT_OP_ADD, "add", (int[]){r, c0}, 2);
    }
    case 4: return node(g, QT_OP_CLIP, "clip", (int[]){c1, scalar(g, "lo", 0), scalar(g, "hi", 6)}, 3);
    case 5: {
        int y = node(g, QT_OP_CLIP, "clip", &c1, 1);
        qt_node_set_float(&g->nodes[g->values[y].producer], "min", 0.0f);
        qt_node_set_float(&g->nodes[g->values[y].producer], "max", 6.0f);
        return y;
    }
    case 6: return node(g, QT_OP_CLIP, "clip", (int[]){c1, scalar(g, "lo", -1)}, 2);
    case 7: return node(g, QT_OP_CLIP, "clip", (int[]){c1, -1, scalar(g, "hi", 6)}, 3);
    case 8: case 9: {
        int r = node(g, QT_OP_RELU, "r", &c1, 1);
        int64_t pads[8] = {0, 0, 1, 1, 0, 0, 1, 1};
        struct qt_shape ps = {1, {8}};
        int pv = qt_graph_add_value(g, "pads", QT_I64, &ps);
        g->values[pv].init = qt_tensor_new(QT_I64, &ps);
        memcpy(g->values[pv].init->data, pads, sizeof pads);
        int p = node(g, QT_OP_PAD, "pad", (int[]){r, pv, scalar(g, "padval", k == 8 ? 0 : -1)}, 3);
        if (k == 9) return p;
        int a = qt_graph_add_value(g, "avg", QT_UNDEF, NULL);
        int n = qt_graph_add_node(g, QT_OP_AVGPOOL, "avg", &p, 1, &a, 1);
        qt_node_set_ints(&g->nodes[n], "kernel_shape", (int64_t[]){3, 3}, 2);
        return a;
    }
    case 10: case 11: {
        int r = node(g, QT_OP_RELU, "r", &c1, 1);
        return node(g, QT_OP_MUL, "mul", (int[]){r, scalar(g, "factor", k == 10 ? -0.5f : 0.5f)}, 2);
    }
    case 12: return node(g, QT_OP_ABS, "abs", &c1, 1);
    case 13: return node(g, QT_OP_NEG, "neg", &c1, 1);
    }
    return -1;
}

QT_TEST(quantize_signedness_from_graph)
{
    for (size_t k = 0; k < sizeof sign_cases / sizeof sign_cases[0]; k++) {
        uint64_t seed = 100 + k;
        int x;
        struct qt_error e;
        struct qt_graph *g = small_graph(&x);
        int h = build_sign_case(g, x, (int)k, &seed);
        int y = conv(g, "c2", h, 4, &seed);
        int sg = signed_after_quantize(g, y, "c2", &e);
        int first = sg >= 0 ? aq_of(g, "c1") : -1;
        int first_signed = first >= 0 ? (int)qt_node_int(&g->nodes[first], "signed", -1) : -1;
        qt_graph_free(g);
        if (sg == -2) return qt_test_fail("%s: %s", sign_cases[k].what, e.msg);
        if (sg != sign_cases[k].want)
            return qt_test_fail("%s: c2's ActQuant signed = %d, expected %d", sign_cases[k].what,
                                sg, sign_cases[k].want);
        /* c1 reads the graph input: anything. */
        if (first_signed != 1)
            return qt_test_fail("%s: c1's ActQuant signed = %d, expected 1", sign_cases[k].what,
                                first_signed);
    }
    return 0;
}

/* ---- 3. Quantizing a quantized graph again ---- */

QT_TEST(quantize_requantize_alphas)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0;
    struct qt_quant_summary s;
    struct qt_quant_config c = default_config();
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize: %s", e.msg);
    const int nn = g->nnodes, nv = g->nvalues;
    const char *L = "layer2.0.conv1";
    int wq = wq_of(g, L), aq = aq_of(g, L);
    T_CHECK(wq >= 0 && aq >= 0);
    ((float *)alpha_of(g, wq)->data)[0] = 2.5f;
    ((float *)alpha_of(g, aq)->data)[0] = 5.0f;

    /* Same settings: every alpha kept (20 weight + 20 activation quantizers have alphas;
     * the 8-bit first/last weights have none), nothing duplicated. */
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize again: %s", e.msg);
    if (s.kept != 40 || s.reset != 0) T_FAIL("kept %d, reset %d; expected 40, 0", s.kept, s.reset);
    T_CHECK(s.weight == 22 && s.act == 20);
    T_CHECK(g->nnodes == nn && g->nvalues == nv);
    T_CHECK(count_op(g, QT_OP_WEIGHTQUANT) == 22 && count_op(g, QT_OP_ACTQUANT) == 20);
    wq = wq_of(g, L), aq = aq_of(g, L);
    T_CHECK(wq >= 0 && aq >= 0);
    T_NEAR(alpha0(g, wq), 2.5, 0);
    T_NEAR(alpha0(g, aq), 5.0, 0);
    /* Quantizers read float tensors, never another quantizer. */
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *q = &g->nodes[i];
        if (q->op != QT_OP_WEIGHTQUANT && q->op != QT_OP_ACTQUANT) continue;
        int p = g->values[q->in[0]].producer;
        T_CHECK(p < 0 || (g->nodes[p].op != QT_OP_WEIGHTQUANT && g->nodes[p].op != QT_OP_ACTQUANT));
    }
    T_CHECK(qt_graph_verify(g, &e) == 0 && qt_graph_infer_shapes(g, &e) == 0);

    /* 3-bit weights: weight alphas re-initialized, activation alphas kept. */
    c.wbits = 3;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize w3: %s", e.msg);
    if (s.kept != 20 || s.reset != 20) T_FAIL("kept %d, reset %d; expected 20, 20", s.kept, s.reset);
    T_CHECK(g->nnodes == nn && g->nvalues == nv);
    wq = wq_of(g, L), aq = aq_of(g, L);
    T_CHECK(wq >= 0 && aq >= 0 && qt_node_int(&g->nodes[wq], "bits", -1) == 3);
    T_NEAR(alpha0(g, wq), 3.0, 0);
    T_NEAR(alpha0(g, aq), 5.0, 0);

    /* 3-bit activations too: those alphas are re-initialized, the (3-bit) weights' kept. */
    ((float *)alpha_of(g, wq)->data)[0] = 2.0f;
    c.abits = 3;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize w3a3: %s", e.msg);
    if (s.kept != 20 || s.reset != 20) T_FAIL("kept %d, reset %d; expected 20, 20", s.kept, s.reset);
    wq = wq_of(g, L), aq = aq_of(g, L);
    T_CHECK(wq >= 0 && aq >= 0);
    T_NEAR(alpha0(g, wq), 2.0, 0);
    T_NEAR(alpha0(g, aq), 8.0, 0);

    /* reset_alphas: every alpha back to its initial value. */
    ((float *)alpha_of(g, aq)->data)[0] = 6.0f;
    c.reset_alphas = 1;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize reset: %s", e.msg);
    if (s.kept != 0 || s.reset != 40) T_FAIL("kept %d, reset %d; expected 0, 40", s.kept, s.reset);
    T_CHECK(g->nnodes == nn && g->nvalues == nv);
    wq = wq_of(g, L), aq = aq_of(g, L);
    T_CHECK(wq >= 0 && aq >= 0);
    T_NEAR(alpha0(g, wq), 3.0, 0);
    T_NEAR(alpha0(g, aq), 8.0, 0);

    /* A layer overridden to float loses its quantizers; quantizing without the override
     * gives them back with initial alphas (nothing to keep). */
    c.reset_alphas = 0;
    struct qt_quant_override ov;
    memset(&ov, 0, sizeof ov);
    T_CHECK(qt_quant_spec_parse(&ov, "layer2.0.conv1=float", &e) == 0);
    c.overrides = &ov;
    c.noverrides = 1;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize with override: %s", e.msg);
    T_CHECK(wq_of(g, L) < 0 && aq_of(g, L) < 0 && s.kept == 38 && s.reset == 0);
    T_CHECK(g->nnodes == nn - 2);
    c.noverrides = 0;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("quantize without override: %s", e.msg);
    T_CHECK(s.kept == 38 && s.reset == 0 && g->nnodes == nn && g->nvalues == nv);
    T_CHECK(qt_graph_verify(g, &e) == 0 && qt_graph_infer_shapes(g, &e) == 0);
out:
    qt_graph_free(g);
    return bad;
}

/* ---- 4. Unfolding BatchNorm ---- */

/* Checks that every Conv is read by exactly one BatchNormalization. */
static int every_conv_has_bn(const struct qt_graph *g)
{
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_CONV) continue;
        int r = qt_graph_first_consumer(g, n->out[0]);
        if (qt_graph_use_count(g, n->out[0]) != 1 || r < 0 || g->nodes[r].op != QT_OP_BATCHNORM ||
            g->nodes[r].in[0] != n->out[0])
            return qt_test_fail("Conv '%s' is not followed by a BatchNormalization", n->name);
    }
    return 0;
}

QT_TEST(unfold_batchnorm_resnet20)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    struct qt_tensor *in = NULL, *y0 = NULL, *y1 = NULL, *yc = NULL;
    int bad = 0, count = -1;
    if (qt_build_resnet(&g, "resnet20", 3, 16, 16, 10, 5, &e)) return qt_test_fail("%s", e.msg);
    randomize_bn(g, 17);
    in = random_input(g, 2, 99);
    /* The canonical model, for reference. */
    if (!(yc = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward (canonical): %s", e.msg);
    if (qt_pass_fold_batchnorm(g, &e)) T_FAIL("fold: %s", e.msg);
    T_CHECK(count_op(g, QT_OP_BATCHNORM) == 0 && count_op(g, QT_OP_CONV) == 21);
    if (!(y0 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward (folded): %s", e.msg);
    T_CHECK(rel_diff(y0, yc) <= 1e-5);

    int nn = g->nnodes;
    if (qt_pass_unfold_batchnorm(g, NULL, &count, &e)) T_FAIL("unfold: %s", e.msg);
    T_CHECK(count == 21);
    T_CHECK(g->nnodes == nn + 21 && count_op(g, QT_OP_BATCHNORM) == 21);
    if (every_conv_has_bn(g)) T_FAIL("after unfolding");
    T_CHECK(qt_graph_verify(g, &e) == 0 && qt_graph_infer_shapes(g, &e) == 0);
    /* The Convs lost their biases; per output channel the weights have He initialization's
     * std sqrt(2 / fan_in) (passes.h), unless the channel was constant; the BatchNorms hold
     * mean 0 and var + eps = 1. */
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_CONV) continue;
        T_CHECK(n->nin == 2 || n->in[2] < 0);
        const struct qt_tensor *w = g->values[n->in[1]].init;
        T_CHECK(w && w->dtype == QT_F32);
        int64_t kout = w->shape.d[0], per = qt_shape_numel(&w->shape) / kout;
        const double target = sqrt(2.0 / (double)per);
        const struct qt_node *bn = &g->nodes[qt_graph_first_consumer(g, n->out[0])];
        const float *scale = g->values[bn->in[1]].init->data;
        const float *mean = g->values[bn->in[3]].init->data, *var = g->values[bn->in[4]].init->data;
        for (int64_t k = 0; k < kout; k++) {
            const float *wk = (const float *)w->data + k * per;
            double m = 0, s2 = 0;
            for (int64_t j = 0; j < per; j++) m += wk[j];
            m /= (double)per;
            for (int64_t j = 0; j < per; j++) s2 += (wk[j] - m) * (wk[j] - m);
            double sd = sqrt(s2 / (double)(per - 1));
            if (sd == 0) continue; /* constant channel */
            if (!(fabs(sd / target - 1) <= 1e-4))
                T_FAIL("Conv '%s' channel %lld: weight std %.7g, expected %.7g", n->name,
                       (long long)k, sd, target);
            T_CHECK(scale[k] > 0 && mean[k] == 0);
            T_NEAR(var[k] + qt_node_float(bn, "epsilon", -1), 1.0, 1e-6);
        }
    }
    if (!(y1 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward (unfolded): %s", e.msg);
    T_CHECK(qt_shape_eq(&y0->shape, &y1->shape));
    double d = rel_diff(y1, y0);
    if (!(d <= 1e-5)) T_FAIL("unfolded output differs from the folded one: %g relative", d);

    /* Unfolding again inserts nothing. */
    nn = g->nnodes;
    if (qt_pass_unfold_batchnorm(g, NULL, &count, &e)) T_FAIL("unfold again: %s", e.msg);
    T_CHECK(count == 0 && g->nnodes == nn);
out:
    qt_tensor_free(in);
    qt_tensor_free(y0);
    qt_tensor_free(y1);
    qt_tensor_free(yc);
    qt_graph_free(g);
    return bad;
}

QT_TEST(unfold_batchnorm_canonical_inserts_nothing)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    int bad = 0, count = -1;
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 5, &e)) return qt_test_fail("%s", e.msg);
    int nn = g->nnodes, nv = g->nvalues;
    if (qt_pass_unfold_batchnorm(g, NULL, &count, &e)) T_FAIL("unfold: %s", e.msg);
    T_CHECK(count == 0 && g->nnodes == nn && g->nvalues == nv);
    T_CHECK(count_op(g, QT_OP_BATCHNORM) == 21);
out:
    qt_graph_free(g);
    return bad;
}

/* One Conv with bias; output channel 0 constant (kept as it is, BatchNorm scale 1), channel
 * 1 random: scale = std / sqrt(2 / fan_in); the bias moves into the BatchNorm's bias. */
QT_TEST(unfold_batchnorm_constant_channel_and_bias)
{
    uint64_t seed = 3;
    int x, bad = 0, count = -1;
    struct qt_error e;
    struct qt_graph *g = small_graph(&x);
    struct qt_tensor *in = NULL, *y0 = NULL, *y1 = NULL, *w0 = NULL;
    int w = add_init(g, "c.weight", 4, (int64_t[]){2, 4, 3, 3}, &seed, 1.0f);
    int b = add_init(g, "c.bias", 1, (int64_t[]){2}, &seed, 1.0f);
    float *wd = g->values[w].init->data;
    for (int j = 0; j < 36; j++) wd[j] = 0.25f;
    int y = qt_graph_add_value(g, "c", QT_UNDEF, NULL);
    int n = qt_graph_add_node(g, QT_OP_CONV, "c", (int[]){x, w, b}, 3, &y, 1);
    qt_node_set_ints(&g->nodes[n], "kernel_shape", (int64_t[]){3, 3}, 2);
    if (qt_builder_output(g, y, "y", &e) || qt_graph_infer_shapes(g, &e)) T_FAIL("%s", e.msg);
    w0 = qt_tensor_clone(g->values[w].init);
    float b0[2] = {((float *)g->values[b].init->data)[0], ((float *)g->values[b].init->data)[1]};
    in = random_input(g, 2, 4);
    if (!(y0 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward: %s", e.msg);
    if (qt_pass_unfold_batchnorm(g, NULL, &count, &e)) T_FAIL("unfold: %s", e.msg);
    T_CHECK(count == 1);
    if (every_conv_has_bn(g)) T_FAIL("after unfolding");
    int ci = find_node(g, "c");
    T_CHECK(ci >= 0);
    const struct qt_node *c = &g->nodes[ci];
    const struct qt_node *bn = &g->nodes[qt_graph_first_consumer(g, c->out[0])];
    const float *nw = g->values[c->in[1]].init->data;
    const float *scale = g->values[bn->in[1]].init->data, *bias = g->values[bn->in[2]].init->data;
    T_CHECK(memcmp(nw, w0->data, 36 * sizeof(float)) == 0);
    T_NEAR(scale[0], 1.0, 0);
    const float *ow = (const float *)w0->data + 36;
    double m = 0, s2 = 0;
    for (int j = 0; j < 36; j++) m += ow[j];
    m /= 36;
    for (int j = 0; j < 36; j++) s2 += (ow[j] - m) * (ow[j] - m);
    T_NEAR(scale[1], sqrt(s2 / 35) / sqrt(2.0 / 36), 1e-5);
    for (int j = 0; j < 36; j++) T_NEAR(nw[36 + j] * scale[1], ow[j], 1e-6);
    T_NEAR(bias[0], b0[0], 0);
    T_NEAR(bias[1], b0[1], 0);
    T_CHECK(qt_graph_infer_shapes(g, &e) == 0);
    if (!(y1 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward: %s", e.msg);
    T_CHECK(rel_diff(y1, y0) <= 1e-5);
out:
    qt_tensor_free(in);
    qt_tensor_free(y0);
    qt_tensor_free(y1);
    qt_tensor_free(w0);
    qt_graph_free(g);
    return bad;
}

/* A Mul by a per-channel constant ([4,1,1]) followed by an Add of one ([1,4,1,1]): a
 * BatchNorm written as its arithmetic becomes a BatchNormalization (scale and bias those
 * constants, mean 0, var 1 - eps) computing the same values; a Mul by a constant that
 * broadcasts along the width ([8]) and an Add whose other input is computed stay as they are. */
QT_TEST(unfold_batchnorm_channel_affine)
{
    uint64_t seed = 5;
    int x, bad = 0, count = -1;
    struct qt_error e;
    struct qt_graph *g = small_graph(&x);
    struct qt_tensor *in = NULL, *y0 = NULL, *y1 = NULL;
    const int s = add_init(g, "bn.s", 3, (int64_t[]){4, 1, 1}, &seed, 2.0f);
    const int b = add_init(g, "bn.b", 4, (int64_t[]){1, 4, 1, 1}, &seed, 1.0f);
    (void)x;
    const int sw = add_init(g, "w.s", 1, (int64_t[]){8}, &seed, 2.0f);
    const int bw = add_init(g, "w.b", 3, (int64_t[]){4, 1, 1}, &seed, 1.0f);
    int m = qt_graph_add_value(g, "m", QT_UNDEF, NULL), a = qt_graph_add_value(g, "a", QT_UNDEF, NULL);
    int r = qt_graph_add_value(g, "r", QT_UNDEF, NULL), m2 = qt_graph_add_value(g, "m2", QT_UNDEF, NULL);
    int a2 = qt_graph_add_value(g, "a2", QT_UNDEF, NULL), y = qt_graph_add_value(g, "y0", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_MUL, "mul", (int[]){x, s}, 2, &m, 1);
    qt_graph_add_node(g, QT_OP_ADD, "add", (int[]){b, m}, 2, &a, 1);
    qt_graph_add_node(g, QT_OP_RELU, "relu", &a, 1, &r, 1);
    qt_graph_add_node(g, QT_OP_MUL, "mul_w", (int[]){r, sw}, 2, &m2, 1);
    qt_graph_add_node(g, QT_OP_ADD, "add_w", (int[]){m2, bw}, 2, &a2, 1);
    qt_graph_add_node(g, QT_OP_ADD, "add_x", (int[]){a2, x}, 2, &y, 1);
    if (qt_builder_output(g, y, "y", &e) || qt_graph_infer_shapes(g, &e)) T_FAIL("%s", e.msg);
    in = random_input(g, 2, 9);
    float s0[4], b0[4];
    memcpy(s0, g->values[s].init->data, sizeof s0);
    memcpy(b0, g->values[b].init->data, sizeof b0);
    if (!(y0 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward: %s", e.msg);
    if (qt_pass_unfold_batchnorm(g, NULL, &count, &e)) T_FAIL("unfold: %s", e.msg);
    T_CHECK(count == 1);
    T_CHECK(count_op(g, QT_OP_BATCHNORM) == 1 && count_op(g, QT_OP_MUL) == 1 &&
            count_op(g, QT_OP_ADD) == 2);
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_BATCHNORM) continue;
        /* compaction renumbered the values (and dropped the constants): names and copies */
        T_CHECK(strcmp(g->values[n->in[0]].name, "x") == 0);
        const float *sc = g->values[n->in[1]].init->data, *bi = g->values[n->in[2]].init->data;
        const float *mean = g->values[n->in[3]].init->data, *var = g->values[n->in[4]].init->data;
        for (int c = 0; c < 4; c++) {
            T_CHECK(sc[c] == s0[c]);
            T_CHECK(bi[c] == b0[c]);
            T_CHECK(mean[c] == 0);
            T_NEAR(var[c] + qt_node_float(n, "epsilon", -1), 1.0, 1e-6);
        }
    }
    if (qt_graph_infer_shapes(g, &e)) T_FAIL("%s", e.msg);
    if (!(y1 = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("forward (unfolded): %s", e.msg);
    T_CHECK(qt_shape_eq(&y0->shape, &y1->shape));
    const double d = rel_diff(y1, y0);
    if (!(d <= 1e-6)) T_FAIL("the BatchNorm differs from the Mul/Add: %g relative", d);
out:
    qt_tensor_free(in);
    qt_tensor_free(y0);
    qt_tensor_free(y1);
    qt_graph_free(g);
    return bad;
}

/* ---- 5. The executor's fast path with quantizers ---- */

/* Quantized ResNet-20 (canonical: Conv -> BatchNorm; or folded first, where Conv + Relu
 * fuse and the ActQuant after them reads the backend's layout): fast against plain. */
static int fast_vs_plain(int fold, enum qt_first_last fl)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    struct qt_tensor *in = NULL, *yf = NULL, *yp = NULL;
    int bad = 0;
    const char *what = fold ? "folded" : "canonical";
    if (qt_build_resnet(&g, "resnet20", 3, 8, 8, 10, 11, &e)) return qt_test_fail("%s", e.msg);
    randomize_bn(g, 23);
    if (fold && qt_pass_fold_batchnorm(g, &e)) T_FAIL("%s: fold: %s", what, e.msg);
    struct qt_quant_config c = default_config();
    c.first_last = fl;
    struct qt_quant_summary s;
    if (qt_pass_quantize(g, &c, &s, &e)) T_FAIL("%s: quantize: %s", what, e.msg);
    T_CHECK(s.weight == 22);
    if (qt_graph_infer_shapes(g, &e)) T_FAIL("%s: %s", what, e.msg);
    in = random_input(g, 3, 5);
    if (!(yp = forward(g, in, QT_EXEC_PLAIN, &e))) T_FAIL("%s: plain: %s", what, e.msg);
    struct counting cnt;
    if (!(yf = forward_counted(g, in, QT_EXEC_FAST, &cnt, &e))) T_FAIL("%s: fast: %s", what, e.msg);
    /* Folded, every Conv + Relu runs fused and its output stays in oneDNN's layout: the
     * ActQuant after it reads that layout (its inputs are plain in the canonical model,
     * where a BatchNorm follows each Conv). */
    if (fold && (cnt.act_steps != s.act || cnt.act_in_layout < 20))
        T_FAIL("%s: %d ActQuant steps in the fast path, %d reading a layout; expected %d, >= 20",
               what, cnt.act_steps, cnt.act_in_layout, s.act);
    T_CHECK(qt_shape_eq(&yf->shape, &yp->shape));
    double d = rel_diff(yf, yp);
    if (!(d <= 1e-5)) T_FAIL("%s, first/last %d: fast and plain differ by %g relative", what, fl, d);
out:
    qt_tensor_free(in);
    qt_tensor_free(yf);
    qt_tensor_free(yp);
    qt_graph_free(g);
    return bad;
}

QT_TEST(quantize_exec_fast_matches_plain)
{
    return fast_vs_plain(0, QT_FL_8BIT) || fast_vs_plain(1, QT_FL_8BIT) ||
           fast_vs_plain(0, QT_FL_SAME) || fast_vs_plain(1, QT_FL_SAME);
}
