/* The host evaluator's elementwise, comparison, selection and sum ops (graph/eval.c) against
 * values worked out by hand: Abs and Neg at the integer types' limits, Greater and Less with
 * broadcasting and NaN, Where broadcast three ways, ReduceSum with its axes as an attribute
 * (opset < 13), an input or absent; and an activation quantizer written in standard ops (Div,
 * Abs, Greater, Cast, ReduceSum, Gather, Less, Where, Mul) run by the executor on the CPU and
 * ref backends against a plain loop. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../graph/eval.h"
#include "../../graph/schema.h"
#include "../../passes/passes.h"
#include "../../runtime/exec.h"
#include "harness.h"

static void put(struct qt_tensor *t, int64_t i, double v)
{
    switch (t->dtype) {
    case QT_F32: ((float *)t->data)[i] = (float)v; break;
    case QT_I32: ((int32_t *)t->data)[i] = (int32_t)v; break;
    case QT_I64: ((int64_t *)t->data)[i] = (int64_t)v; break;
    default: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
    }
}

/* A constant of shape d[0..ndim) holding v (NULL: zeros). */
static int add_const(struct qt_graph *g, const char *name, enum qt_dtype dt, int ndim,
                     const int64_t *d, const double *v)
{
    struct qt_shape s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    const int k = qt_graph_add_value(g, name, dt, &s);
    g->values[k].init = qt_tensor_new(dt, &s);
    for (int64_t i = 0; v && i < qt_shape_numel(&s); i++) put(g->values[k].init, i, v[i]);
    return k;
}

/* A node reading values in[0..nin) into a new value "<name>_out"; returns the node index. */
static int add_node(struct qt_graph *g, enum qt_op op, const char *name, const int *in, int nin)
{
    char oname[96];
    snprintf(oname, sizeof oname, "%s_out", name);
    int y = qt_graph_add_value(g, oname, QT_UNDEF, NULL);
    return qt_graph_add_node(g, op, name, in, nin, &y, 1);
}

/* Infers node i of g from its constant inputs and evaluates it: NULL, with e set, on error. */
static struct qt_tensor *eval_node(const struct qt_graph *g, int i, struct qt_error *e)
{
    const struct qt_node *n = &g->nodes[i];
    struct qt_shape ish[4], osh[3];
    enum qt_dtype idt[4], odt[3];
    const struct qt_tensor *in[4] = {NULL};
    memset(ish, 0, sizeof ish);
    for (int k = 0; k < n->nin && k < 4; k++) {
        idt[k] = QT_UNDEF;
        if (n->in[k] < 0) continue;
        in[k] = g->values[n->in[k]].init;
        ish[k] = in[k]->shape;
        idt[k] = in[k]->dtype;
    }
    struct qt_infer_ctx c = {g, n, ish, idt, in, osh, odt};
    if (qt_schema_infer(&c, e)) return NULL;
    struct qt_tensor *o = qt_tensor_new(odt[0], &osh[0]);
    if (qt_eval_node(n, in, &o, e)) {
        qt_tensor_free(o);
        return NULL;
    }
    return o;
}

/* Evaluates node i and compares dtype, shape and every value (NaN only where NaN is
 * expected; integers compared as integers). */
static int check_node(const struct qt_graph *g, int i, enum qt_dtype dt, int ndim,
                      const int64_t *d, const double *v)
{
    struct qt_error e;
    const char *name = g->nodes[i].name;
    struct qt_tensor *o = eval_node(g, i, &e);
    if (!o) return qt_test_fail("%s: %s", name, e.msg);
    int bad = o->dtype != dt || o->shape.ndim != ndim;
    for (int k = 0; !bad && k < ndim; k++) bad = o->shape.d[k] != d[k];
    if (bad) {
        char s[96];
        qt_test_fail("%s: %s %s, expected %s of rank %d", name, qt_dtype_name(o->dtype),
                     qt_shape_str(NULL, &o->shape, s, sizeof s), qt_dtype_name(dt), ndim);
        qt_tensor_free(o);
        return 1;
    }
    for (int64_t k = 0; !bad && k < qt_shape_numel(&o->shape); k++) {
        if (dt == QT_F32) {
            const double a = qt_tensor_get_f(o, k);
            bad = isnan(v[k]) ? !isnan(a) : !(a == v[k]);
        } else {
            bad = qt_tensor_get_i(o, k) != (int64_t)v[k];
        }
        if (bad)
            qt_test_fail("%s: element %lld is %.9g, expected %.9g", name, (long long)k,
                         qt_tensor_get_f(o, k), v[k]);
    }
    qt_tensor_free(o);
    return bad;
}

/* Evaluating node i must fail with a message naming it and containing `what`. */
static int check_fails(const struct qt_graph *g, int i, const char *what)
{
    struct qt_error e;
    struct qt_tensor *o = eval_node(g, i, &e);
    if (o) {
        qt_tensor_free(o);
        return qt_test_fail("%s: evaluated, expected an error about %s", g->nodes[i].name, what);
    }
    if (!strstr(e.msg, g->nodes[i].name) || !strstr(e.msg, what))
        return qt_test_fail("%s: message '%s' lacks the node's name or '%s'", g->nodes[i].name,
                            e.msg, what);
    return 0;
}

QT_TEST(eval_abs_neg)
{
    struct qt_graph *g = qt_graph_new();
    const int64_t d4[1] = {4}, d5[1] = {5};
    const int i32 = add_const(g, "i32", QT_I32, 1, d4, (double[]){INT32_MIN, -5, 0, 7});
    const int i64 =
        add_const(g, "i64", QT_I64, 1, d4, (double[]){-9223372036854775808.0, -5, 0, 7});
    const int f = add_const(g, "f", QT_F32, 1, d5, (double[]){-0.0, -1.5, 2.25, -INFINITY, NAN});
    const int u8 = add_const(g, "u8", QT_U8, 1, d4, NULL);
    int rc = 0;
    rc |= check_node(g, add_node(g, QT_OP_ABS, "abs_i32", &i32, 1), QT_I32, 1, d4,
                     (double[]){INT32_MIN, 5, 0, 7});
    rc |= check_node(g, add_node(g, QT_OP_NEG, "neg_i32", &i32, 1), QT_I32, 1, d4,
                     (double[]){INT32_MIN, 5, 0, -7});
    rc |= check_node(g, add_node(g, QT_OP_ABS, "abs_i64", &i64, 1), QT_I64, 1, d4,
                     (double[]){-9223372036854775808.0, 5, 0, 7});
    rc |= check_node(g, add_node(g, QT_OP_NEG, "neg_i64", &i64, 1), QT_I64, 1, d4,
                     (double[]){-9223372036854775808.0, 5, 0, -7});
    rc |= check_node(g, add_node(g, QT_OP_ABS, "abs_f", &f, 1), QT_F32, 1, d5,
                     (double[]){0, 1.5, 2.25, INFINITY, NAN});
    rc |= check_node(g, add_node(g, QT_OP_NEG, "neg_f", &f, 1), QT_F32, 1, d5,
                     (double[]){0, 1.5, -2.25, INFINITY, NAN});
    rc |= check_fails(g, add_node(g, QT_OP_NEG, "neg_u8", &u8, 1), "uint8");
    qt_graph_free(g);
    return rc;
}

QT_TEST(eval_greater_less_broadcast)
{
    struct qt_graph *g = qt_graph_new();
    const int64_t d23[2] = {2, 3}, d3[1] = {3}, d21[2] = {2, 1}, d13[2] = {1, 3}, d2[1] = {2};
    const int fa = add_const(g, "fa", QT_F32, 2, d23, (double[]){1, 2, NAN, -1, 0.5, 3});
    const int fb = add_const(g, "fb", QT_F32, 1, d3, (double[]){1, 1, 1});
    const int la = add_const(g, "la", QT_I64, 2, d21, (double[]){5, -3});
    const int lb = add_const(g, "lb", QT_I64, 2, d13, (double[]){-3, 5, 7});
    const int ia = add_const(g, "ia", QT_I32, 1, d2, (double[]){INT32_MAX, INT32_MIN});
    const int ib = add_const(g, "ib", QT_I32, 1, (int64_t[]){1}, (double[]){0});
    const int f4 = add_const(g, "f4", QT_F32, 1, (int64_t[]){4}, NULL);
    int rc = 0;
    rc |= check_node(g, add_node(g, QT_OP_GREATER, "gt_f", (int[]){fa, fb}, 2), QT_BOOL, 2, d23,
                     (double[]){0, 1, 0, 0, 0, 1});
    rc |= check_node(g, add_node(g, QT_OP_LESS, "lt_f", (int[]){fa, fb}, 2), QT_BOOL, 2, d23,
                     (double[]){0, 0, 0, 1, 1, 0});
    rc |= check_node(g, add_node(g, QT_OP_GREATER, "gt_i64", (int[]){la, lb}, 2), QT_BOOL, 2, d23,
                     (double[]){1, 0, 0, 0, 0, 0});
    rc |= check_node(g, add_node(g, QT_OP_LESS, "lt_i64", (int[]){la, lb}, 2), QT_BOOL, 2, d23,
                     (double[]){0, 0, 1, 0, 1, 1});
    rc |= check_node(g, add_node(g, QT_OP_GREATER, "gt_i32", (int[]){ia, ib}, 2), QT_BOOL, 1, d2,
                     (double[]){1, 0});
    rc |= check_node(g, add_node(g, QT_OP_LESS, "lt_i32", (int[]){ib, ia}, 2), QT_BOOL, 1, d2,
                     (double[]){1, 0});
    rc |= check_fails(g, add_node(g, QT_OP_LESS, "lt_mixed", (int[]){ia, la}, 2), "types");
    rc |= check_fails(g, add_node(g, QT_OP_GREATER, "gt_float_int", (int[]){fa, ia}, 2), "types");
    rc |= check_fails(g, add_node(g, QT_OP_GREATER, "gt_shapes", (int[]){fa, f4}, 2), "broadcast");
    qt_graph_free(g);
    return rc;
}

QT_TEST(eval_where_broadcast)
{
    struct qt_graph *g = qt_graph_new();
    const int cond = add_const(g, "cond", QT_BOOL, 3, (int64_t[]){2, 1, 1}, (double[]){1, 0});
    const int x = add_const(g, "x", QT_I64, 3, (int64_t[]){1, 3, 1}, (double[]){10, 20, 30});
    const int y = add_const(g, "y", QT_I64, 1, (int64_t[]){2}, (double[]){-1, -2});
    const int c3 = add_const(g, "c3", QT_BOOL, 1, (int64_t[]){3}, (double[]){1, 0, 1});
    const int fs = add_const(g, "fs", QT_F32, 0, NULL, (double[]){1.5});
    const int fy = add_const(g, "fy", QT_F32, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
    int rc = 0;
    rc |= check_node(g, add_node(g, QT_OP_WHERE, "where_i64", (int[]){cond, x, y}, 3), QT_I64, 3,
                     (int64_t[]){2, 3, 2},
                     (double[]){10, 10, 20, 20, 30, 30, -1, -2, -1, -2, -1, -2});
    rc |= check_node(g, add_node(g, QT_OP_WHERE, "where_f", (int[]){c3, fs, fy}, 3), QT_F32, 2,
                     (int64_t[]){2, 3}, (double[]){1.5, 2, 1.5, 1.5, 5, 1.5});
    rc |= check_fails(g, add_node(g, QT_OP_WHERE, "where_fcond", (int[]){fy, fs, fy}, 3), "bool");
    rc |= check_fails(g, add_node(g, QT_OP_WHERE, "where_types", (int[]){c3, x, fy}, 3), "types");
    rc |= check_fails(g, add_node(g, QT_OP_WHERE, "where_shapes", (int[]){c3, x, y}, 3),
                      "broadcast");
    qt_graph_free(g);
    return rc;
}

QT_TEST(eval_reducesum_axes)
{
    struct qt_graph *g = qt_graph_new();
    double v[12];
    for (int i = 0; i < 12; i++) v[i] = i + 1;
    const int x = add_const(g, "x", QT_F32, 3, (int64_t[]){2, 3, 2}, v);
    const int last = add_const(g, "last", QT_I64, 1, (int64_t[]){1}, (double[]){-1});
    const int none = add_const(g, "none", QT_I64, 1, (int64_t[]){0}, NULL);
    const int two = add_const(g, "two", QT_I64, 1, (int64_t[]){2}, (double[]){0, 2});
    const int big = add_const(g, "big", QT_I64, 1, (int64_t[]){1}, (double[]){3});
    const int i32 = add_const(g, "i32", QT_I32, 1, (int64_t[]){2}, (double[]){INT32_MAX, 1});
    const int i64 = add_const(g, "i64", QT_I64, 1, (int64_t[]){3}, (double[]){1, 2, -3e12});
    const int b = add_const(g, "b", QT_BOOL, 1, (int64_t[]){3}, NULL);
    int rc = 0, n;
    /* opset < 13: axes as an attribute */
    n = add_node(g, QT_OP_REDUCESUM, "attr_axis1", &x, 1);
    qt_node_set_ints(&g->nodes[n], "axes", (int64_t[]){1}, 1);
    qt_node_set_int(&g->nodes[n], "keepdims", 0);
    rc |= check_node(g, n, QT_F32, 2, (int64_t[]){2, 2}, (double[]){9, 12, 27, 30});
    n = add_node(g, QT_OP_REDUCESUM, "input_last", (int[]){x, last}, 2);
    rc |= check_node(g, n, QT_F32, 3, (int64_t[]){2, 3, 1}, (double[]){3, 7, 11, 15, 19, 23});
    n = add_node(g, QT_OP_REDUCESUM, "input_two", (int[]){x, two}, 2);
    rc |= check_node(g, n, QT_F32, 3, (int64_t[]){1, 3, 1}, (double[]){18, 26, 34});
    n = add_node(g, QT_OP_REDUCESUM, "no_axes", &x, 1);
    qt_node_set_int(&g->nodes[n], "keepdims", 0);
    rc |= check_node(g, n, QT_F32, 0, NULL, (double[]){78});
    n = add_node(g, QT_OP_REDUCESUM, "empty_axes", (int[]){x, none}, 2);
    rc |= check_node(g, n, QT_F32, 3, (int64_t[]){1, 1, 1}, (double[]){78});
    n = add_node(g, QT_OP_REDUCESUM, "empty_noop", (int[]){x, none}, 2);
    qt_node_set_int(&g->nodes[n], "noop_with_empty_axes", 1);
    rc |= check_node(g, n, QT_F32, 3, (int64_t[]){2, 3, 2}, v);
    n = add_node(g, QT_OP_REDUCESUM, "int32_wraps", &i32, 1);
    rc |= check_node(g, n, QT_I32, 1, (int64_t[]){1}, (double[]){INT32_MIN});
    n = add_node(g, QT_OP_REDUCESUM, "int64", (int[]){i64, last}, 2);
    qt_node_set_int(&g->nodes[n], "keepdims", 0);
    rc |= check_node(g, n, QT_I64, 0, NULL, (double[]){-3e12 + 3});
    rc |= check_fails(g, add_node(g, QT_OP_REDUCESUM, "axis_3", (int[]){x, big}, 2), "range");
    rc |= check_fails(g, add_node(g, QT_OP_REDUCESUM, "bools", &b, 1), "bool");
    qt_graph_free(g);
    return rc;
}

/* y = alpha * sign(x/alpha) * levels[#{k : |x/alpha| > thr[k]}], written with the standard ops
 * of an exported activation quantizer: thr [3,1,1] against x [N,5] gives a bool [3,N,5] that
 * is summed over axis 0; the negative levels come from a Neg of the level table (folded to a
 * constant by canonicalize). */
static const float thr[3] = {0.5f, 1.5f, 2.5f}, levels[4] = {0, 1, 2, 4}, alpha = 0.5f;

static struct qt_graph *quantizer_graph(void)
{
    struct qt_graph *g = qt_graph_new();
    g->opset = 13;
    struct qt_shape xs = {2, {qt_graph_sym(g, "N"), 5}};
    const int x = qt_graph_add_value(g, "x", QT_F32, &xs);
    g->values[x].flags |= QT_V_INPUT;
    g->inputs = malloc(sizeof(int));
    g->inputs[g->ninputs++] = x;
    const int al = add_const(g, "alpha", QT_F32, 0, NULL, (double[]){alpha});
    const int th = add_const(g, "thr", QT_F32, 3, (int64_t[]){3, 1, 1},
                             (double[]){thr[0], thr[1], thr[2]});
    const int ax = add_const(g, "axes", QT_I64, 1, (int64_t[]){1}, (double[]){0});
    const int lv = add_const(g, "levels", QT_F32, 1, (int64_t[]){4},
                             (double[]){levels[0], levels[1], levels[2], levels[3]});
    const int zero = add_const(g, "zero", QT_F32, 0, NULL, (double[]){0});
#define OUT(i) (g->nodes[i].out[0])
    const int a = add_node(g, QT_OP_DIV, "div", (int[]){x, al}, 2);
    const int ab = add_node(g, QT_OP_ABS, "abs", (int[]){OUT(a)}, 1);
    const int gt = add_node(g, QT_OP_GREATER, "greater", (int[]){OUT(ab), th}, 2);
    const int c = add_node(g, QT_OP_CAST, "to_float", (int[]){OUT(gt)}, 1);
    qt_node_set_int(&g->nodes[c], "to", QT_F32);
    const int s = add_node(g, QT_OP_REDUCESUM, "count", (int[]){OUT(c), ax}, 2);
    qt_node_set_int(&g->nodes[s], "keepdims", 0);
    const int ix = add_node(g, QT_OP_CAST, "to_int", (int[]){OUT(s)}, 1);
    qt_node_set_int(&g->nodes[ix], "to", QT_I32);
    const int nl = add_node(g, QT_OP_NEG, "neg_levels", &lv, 1);
    const int pos = add_node(g, QT_OP_GATHER, "pos", (int[]){lv, OUT(ix)}, 2);
    const int neg = add_node(g, QT_OP_GATHER, "neg", (int[]){OUT(nl), OUT(ix)}, 2);
    const int lt = add_node(g, QT_OP_LESS, "less", (int[]){OUT(a), zero}, 2);
    const int w = add_node(g, QT_OP_WHERE, "where", (int[]){OUT(lt), OUT(neg), OUT(pos)}, 3);
    const int y = add_node(g, QT_OP_MUL, "scale", (int[]){OUT(w), al}, 2);
    g->values[OUT(y)].flags |= QT_V_OUTPUT;
    g->outputs = malloc(sizeof(int));
    g->outputs[g->noutputs++] = OUT(y);
#undef OUT
    return g;
}

static int run_quantizer(const char *device, enum qt_exec_mode mode)
{
    static const float xv[10] = {-2.0f, -1.25f, -0.75f, -0.25f, 0.0f,
                                 0.25f, 0.5f,   0.75f,  1.25f,  3.0f};
    struct qt_error e;
    struct qt_graph *g = quantizer_graph();
    struct qt_backend *b = NULL;
    struct qt_exec *x = NULL;
    struct qt_tensor *in = NULL;
    int rc = 0;
    if (qt_graph_compact(g, &e) || qt_pass_canonicalize(g, &e)) {
        rc = qt_test_fail("%s: %s", device, e.msg);
        goto out;
    }
    for (int i = 0; i < g->nnodes; i++)
        if (g->nodes[i].op == QT_OP_NEG) rc = qt_test_fail("the Neg of a constant was not folded");
    if (!(b = qt_backend_new(device, 0, &e)) || !(x = qt_exec_new(g, b, &e))) {
        rc = qt_test_fail("%s: %s", device, e.msg);
        goto out;
    }
    qt_exec_set_mode(x, mode);
    for (int batch = 2; batch >= 1 && !rc; batch--) {
        struct qt_shape xs = {2, {batch, 5}};
        qt_tensor_free(in);
        in = qt_tensor_new(QT_F32, &xs);
        memcpy(in->data, xv, sizeof(float) * 5 * batch);
        const struct qt_tensor *ins[1] = {in};
        float y[10];
        const struct qt_tensor *o = NULL;
        if (qt_exec_forward(x, ins, &e) || (o = qt_exec_output(x, 0))->shape.ndim != 2 ||
            o->shape.d[0] != batch || o->shape.d[1] != 5 ||
            qt_exec_read(x, o->data, y, 5 * batch, &e)) {
            rc = qt_test_fail("%s, batch %d: %s", device, batch, e.msg);
            break;
        }
        for (int i = 0; i < 5 * batch && !rc; i++) {
            const float a = xv[i] / alpha;
            int k = 0;
            for (int j = 0; j < 3; j++) k += fabsf(a) > thr[j];
            const float want = (a < 0 ? -levels[k] : levels[k]) * alpha;
            if (!(y[i] == want))
                rc = qt_test_fail("%s, batch %d: x = %g gives %g, expected %g", device, batch,
                                  xv[i], y[i], want);
        }
    }
out:
    qt_tensor_free(in);
    qt_exec_free(x);
    if (b) b->destroy(b);
    qt_graph_free(g);
    return rc;
}

QT_TEST(exec_quantizer_pattern_cpu)
{
    return run_quantizer("cpu", QT_EXEC_FAST) || run_quantizer("cpu", QT_EXEC_PLAIN);
}

QT_TEST(exec_quantizer_pattern_ref)
{
    return run_quantizer("ref", QT_EXEC_FAST);
}
