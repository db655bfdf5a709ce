/* The executor's backward pass on small graphs against finite differences of its own
 * forward pass: MatMul with a broadcast batch, Add with a broadcast bias, Flatten and
 * Reshape passing gradients through, a value read by two nodes (accumulation). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../graph/schema.h"
#include "../../runtime/exec.h"
#include "../../runtime/params.h"
#include "harness.h"

static int add_init(struct qt_graph *g, const char *name, int ndim, const int64_t *d, unsigned *seed)
{
    struct qt_shape s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    int v = qt_graph_add_value(g, name, QT_F32, &s);
    g->values[v].init = qt_tensor_new(QT_F32, &s);
    for (int64_t i = 0; i < qt_shape_numel(&s); i++)
        ((float *)g->values[v].init->data)[i] = (float)rand_r(seed) / RAND_MAX - 0.5f;
    return v;
}

/* x [2,3,4] -> MatMul W [4,5] -> Add b [5] -> t; y = Flatten(t * t2) where t2 = MatMul(t, V[5,5])
 * reads t again; output [2,15]. */
static struct qt_graph *graph(void)
{
    unsigned seed = 3;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {3, {2, 3, 4}};
    int x = qt_graph_add_value(g, "x", QT_F32, &xs);
    g->values[x].flags |= QT_V_INPUT;
    g->inputs = malloc(sizeof(int));
    g->inputs[g->ninputs++] = x;
    int w = add_init(g, "w", 2, (int64_t[]){4, 5}, &seed);
    int b = add_init(g, "b", 1, (int64_t[]){5}, &seed);
    int v = add_init(g, "v", 2, (int64_t[]){5, 5}, &seed);
    int m = qt_graph_add_value(g, "m", QT_UNDEF, NULL), t = qt_graph_add_value(g, "t", QT_UNDEF, NULL);
    int t2 = qt_graph_add_value(g, "t2", QT_UNDEF, NULL), p = qt_graph_add_value(g, "p", QT_UNDEF, NULL);
    int y = qt_graph_add_value(g, "y", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_MATMUL, "mm", (int[]){x, w}, 2, &m, 1);
    qt_graph_add_node(g, QT_OP_ADD, "bias", (int[]){m, b}, 2, &t, 1);
    qt_graph_add_node(g, QT_OP_MATMUL, "mm2", (int[]){t, v}, 2, &t2, 1);
    qt_graph_add_node(g, QT_OP_MUL, "mul", (int[]){t, t2}, 2, &p, 1);
    int n = qt_graph_add_node(g, QT_OP_FLATTEN, "flat", &p, 1, &y, 1);
    qt_node_set_int(&g->nodes[n], "axis", 1);
    g->values[y].flags |= QT_V_OUTPUT;
    g->outputs = malloc(sizeof(int));
    g->outputs[g->noutputs++] = y;
    return g;
}

/* sum r * y for the graph's current initializers (copied to the backend first). */
static double loss(struct qt_exec *x, const struct qt_tensor *in, const float *r, struct qt_error *e)
{
    const struct qt_tensor *ins[1] = {in};
    float y[64];
    if (qt_exec_load_state(x, e) || qt_exec_forward(x, ins, e)) return NAN;
    const struct qt_tensor *yt = qt_exec_output(x, 0);
    const int64_t n = qt_shape_numel(&yt->shape);
    if (n > 64 || qt_exec_read(x, yt->data, y, n, e)) return NAN;
    double l = 0;
    for (int64_t i = 0; i < n; i++) l += (double)r[i] * y[i];
    return l;
}

static int check_device(const char *device)
{
    struct qt_error e;
    struct qt_graph *g = graph();
    struct qt_params ps;
    if (qt_graph_compact(g, &e) || qt_graph_infer_shapes(g, &e) || qt_params_find(g, &ps, &e)) {
        qt_graph_free(g);
        return qt_test_fail("%s", e.msg);
    }
    struct qt_backend *b = qt_backend_new(device, 0, &e);
    if (!b) {
        qt_params_free(&ps);
        qt_graph_free(g);
        return qt_test_fail("%s", e.msg);
    }
    struct qt_exec *x = qt_exec_new(g, b, &e);
    struct qt_shape xs = {3, {2, 3, 4}}, ys = {2, {2, 15}};
    struct qt_tensor *in = qt_tensor_new(QT_F32, &xs), *dy = qt_tensor_new(QT_F32, &ys);
    unsigned seed = 8;
    for (int i = 0; i < 24; i++) ((float *)in->data)[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    float *r = dy->data;
    for (int i = 0; i < 30; i++) r[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    const struct qt_tensor *ins[1] = {in};
    int rc = 0;
    if (!x || qt_exec_forward_train(x, ins, &e) || qt_exec_backward(x, dy, &e)) {
        rc = qt_test_fail("%s", e.msg);
        goto out;
    }
    QT_CHECK(ps.n == 3);
    for (int k = 0; k < ps.n && !rc; k++) {
        int v = ps.p[k].value;
        float *p = g->values[v].init->data;
        int64_t n = ps.p[k].numel;
        float *grad = malloc(sizeof(float) * n);
        if (!grad || qt_exec_read(x, qt_exec_grad(x, v), grad, n, &e)) {
            free(grad);
            rc = qt_test_fail("%s: cannot read the gradient of '%s'", device, g->values[v].name);
            break;
        }
        for (int64_t i = 0; i < n && !rc; i++) {
            const float keep = p[i], h = 1e-2f;
            p[i] = keep + h;
            double lp = loss(x, in, r, &e);
            p[i] = keep - h;
            double lm = loss(x, in, r, &e);
            p[i] = keep;
            double num = (lp - lm) / (2.0 * h);
            if (!(fabs(num - grad[i]) <= 2e-3 * (1 + fabs(num))))
                rc = qt_test_fail("%s: '%s' element %lld: backward %.6g, finite differences %.6g",
                                  device, g->values[v].name, (long long)i, grad[i], num);
        }
        free(grad);
    }
out:
    qt_tensor_free(in);
    qt_tensor_free(dy);
    qt_exec_free(x);
    b->destroy(b);
    qt_params_free(&ps);
    qt_graph_free(g);
    return rc;
}

QT_TEST(exec_backward_matches_finite_differences)
{
    return check_device("cpu");
}

QT_TEST(exec_backward_matches_finite_differences_ref)
{
    return check_device("ref");
}
