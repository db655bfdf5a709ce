/* Graph IR and shape inference: window arithmetic against PyTorch's documented formula,
 * broadcasting, symbolic batch propagation, and errors that name the offending node. */
#include <stdlib.h>
#include <string.h>

#include "../../graph/schema.h"
#include "harness.h"

QT_TEST(graph_window_out_matches_formula)
{
    /* floor((in + pb + pe - d*(k-1) - 1) / s) + 1, and the ceil variant that drops a window
     * starting in the end padding. */
    for (int in = 1; in < 20; in++)
        for (int k = 1; k <= 4; k++)
            for (int s = 1; s <= 3; s++)
                for (int d = 1; d <= 2; d++)
                    for (int p = 0; p < k; p++) {
                        int span = in + 2 * p - d * (k - 1) - 1;
                        int64_t got = qt_window_out(in, k, s, d, p, p, 0);
                        if (span < 0) {
                            QT_CHECK(got == -2);
                            continue;
                        }
                        QT_CHECK(got == span / s + 1);
                        int64_t c = qt_window_out(in, k, s, d, p, p, 1);
                        int64_t want = (span + s - 1) / s + 1;
                        if ((want - 1) * s >= in + p) want--;
                        QT_CHECK(c == want);
                    }
    return 0;
}

QT_TEST(graph_broadcast_shapes)
{
    struct qt_shape a = {3, {4, 1, 5}}, b = {2, {3, 1}}, o;
    QT_CHECK(qt_broadcast_shape(&o, &a, &b) == 0);
    QT_CHECK(o.ndim == 3 && o.d[0] == 4 && o.d[1] == 3 && o.d[2] == 5);
    struct qt_shape c = {1, {4}};
    QT_CHECK(qt_broadcast_shape(&o, &a, &c) == -1);
    struct qt_shape s = {2, {-1, 1}}, t = {1, {7}};
    QT_CHECK(qt_broadcast_shape(&o, &s, &t) == 0 && o.d[0] == -1 && o.d[1] == 7);
    return 0;
}

/* x [N,3,8,8] -> Conv(w) ; returns inference status and message. */
static int conv_graph(const int64_t *wshape, int64_t group, struct qt_error *e, struct qt_shape *out)
{
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 3, 8, 8}}, ws = {4, {0}};
    for (int i = 0; i < 4; i++) ws.d[i] = wshape[i];
    int x = qt_graph_add_value(g, "x", QT_F32, &xs);
    int w = qt_graph_add_value(g, "w", QT_F32, &ws);
    g->values[w].init = qt_tensor_new(QT_F32, &ws);
    g->values[x].flags |= QT_V_INPUT;
    int y = qt_graph_add_value(g, "y", QT_UNDEF, NULL);
    int n = qt_graph_add_node(g, QT_OP_CONV, "conv_a", (int[]){x, w}, 2, &y, 1);
    qt_node_set_int(&g->nodes[n], "group", group);
    qt_node_set_ints(&g->nodes[n], "strides", (int64_t[]){2, 2}, 2);
    int rc = qt_graph_infer_shapes(g, e);
    if (!rc) *out = g->values[y].shape;
    qt_graph_free(g);
    return rc;
}

QT_TEST(graph_conv_shape_inference)
{
    struct qt_error e;
    struct qt_shape o;
    QT_CHECK(conv_graph((int64_t[]){6, 3, 3, 3}, 1, &e, &o) == 0);
    QT_CHECK(o.ndim == 4 && o.d[0] == -1 && o.d[1] == 6 && o.d[2] == 3 && o.d[3] == 3);
    QT_CHECK(conv_graph((int64_t[]){6, 1, 3, 3}, 3, &e, &o) == 0);
    QT_CHECK(conv_graph((int64_t[]){6, 2, 3, 3}, 1, &e, &o) == -1);
    QT_CHECK(strstr(e.msg, "conv_a") && strstr(e.msg, "channels"));
    QT_CHECK(conv_graph((int64_t[]){6, 3, 9, 9}, 1, &e, &o) == -1);
    QT_CHECK(strstr(e.msg, "conv_a") && strstr(e.msg, "kernel"));
    QT_CHECK(conv_graph((int64_t[]){5, 1, 3, 3}, 3, &e, &o) == -1);
    return 0;
}

QT_TEST(graph_compact_detects_cycles)
{
    struct qt_error e;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape s = {1, {4}};
    int x = qt_graph_add_value(g, "x", QT_F32, &s);
    g->values[x].flags |= QT_V_INPUT;
    g->inputs = malloc(sizeof(int));
    g->inputs[g->ninputs++] = x;
    int a = qt_graph_add_value(g, "a", QT_F32, &s), b = qt_graph_add_value(g, "b", QT_F32, &s);
    qt_graph_add_node(g, QT_OP_ADD, "n1", (int[]){x, b}, 2, &a, 1);
    qt_graph_add_node(g, QT_OP_RELU, "n2", &a, 1, &b, 1);
    g->values[b].flags |= QT_V_OUTPUT;
    g->outputs = malloc(sizeof(int));
    g->outputs[g->noutputs++] = b;
    int rc = qt_graph_compact(g, &e);
    qt_graph_free(g);
    QT_CHECK(rc == -1 && strstr(e.msg, "cycle"));
    return 0;
}
