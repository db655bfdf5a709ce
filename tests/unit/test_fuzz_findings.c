/* Inputs the fuzz targets (tests/fuzz) found to crash or leak, reduced to unit tests: each
 * must now fail with a message that names the problem. The crashing files themselves are in
 * tests/fuzz/regressions/<target>/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../graph/builder.h"
#include "../../graph/eval.h"
#include "../../graph/schema.h"
#include "../../passes/passes.h"
#include "../../runtime/checkpoint.h"
#include "../../runtime/npy.h"
#include "harness.h"

/* Two Convs that share a node name: the quantize pass finds layers again by name after the
 * graph changes, so it must refuse the graph rather than quantize the wrong node. */
QT_TEST(fuzz_quantize_duplicate_layer_names)
{
    struct qt_error e;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 1, 8, 8}};
    int x = qt_builder_input(g, "x", QT_F32, &xs);
    int a = x >= 0 ? qt_builder_conv(g, "conv", x, 4, 3, 1, 1, 0, &e) : -1;
    int b = a >= 0 ? qt_builder_conv(g, "conv", a, 4, 3, 1, 1, 0, &e) : -1;
    int f = b >= 0 ? qt_builder_flatten(g, "flat", b, &e) : -1;
    int y = f >= 0 ? qt_builder_gemm(g, "fc", f, 10, &e) : -1;
    if (y < 0 || qt_builder_output(g, y, "logits", &e)) {
        qt_graph_free(g);
        return qt_test_fail("building the graph: %s", e.msg);
    }
    int second = qt_graph_find_node(g, "conv_1");
    QT_CHECK(second >= 0);
    free(g->nodes[second].name);
    g->nodes[second].name = strdup("conv");
    struct qt_quant_config qc;
    memset(&qc, 0, sizeof qc);
    qc.wbits = qc.abits = 4;
    qc.scheme = QT_QS_APOT;
    qc.first_last = QT_FL_SAME;
    qc.alpha_w = 3.0f;
    qc.alpha_a = 8.0f;
    struct qt_quant_summary qs;
    int rc = qt_pass_quantize(g, &qc, &qs, &e);
    qt_graph_free(g);
    QT_CHECK(rc != 0);
    if (!strstr(e.msg, "share a name") || !strstr(e.msg, "'conv'"))
        return qt_test_fail("unexpected message: %s", e.msg);
    return 0;
}

static struct qt_tensor *npy_from_header(const char *shape, struct qt_error *e)
{
    char buf[512], hdr[400];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }\n",
                      shape);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (char)(hl & 0xff);
    buf[9] = (char)(hl >> 8);
    memcpy(buf + 10, hdr, (size_t)hl);
    return qt_npy_parse(buf, 10 + (size_t)hl, "x.npy", e);
}

/* .npy shapes whose element count overflows 64 bits (also when a zero dimension makes the
 * array empty), and a shape larger than the data that follows: refused before any
 * allocation of the declared size. */
QT_TEST(fuzz_npy_bad_shapes)
{
    static const char *const cases[][2] = {
        {"(2, 9223372036854775807, 3)", "too large"},
        {"(2, 9223372036854775807, 0)", "too large"},
        {"(65536, 65536)", "fewer values than its shape needs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct qt_error e;
        struct qt_tensor *t = npy_from_header(cases[i][0], &e);
        qt_tensor_free(t);
        if (t) return qt_test_fail("shape %s accepted", cases[i][0]);
        if (!strstr(e.msg, "x.npy") || !strstr(e.msg, cases[i][1]))
            return qt_test_fail("shape %s: unexpected message: %s", cases[i][0], e.msg);
    }
    struct qt_error e;
    struct qt_tensor *t = npy_from_header("(0, 3)", &e);
    QT_CHECK(t != NULL && t->shape.ndim == 2 && t->shape.d[0] == 0);
    qt_tensor_free(t);
    return 0;
}

/* A checkpoint refused for its magic, its checksum or its layout leaves nothing allocated
 * (the sanitizer build's leak check catches a leak). */
QT_TEST(fuzz_ckpt_refused_holds_nothing)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/qtune_ckpt_test_%d", (int)getpid());
    static const unsigned char bad_magic[24] = "QTCKPT00";
    FILE *f = fopen(path, "wb");
    QT_CHECK(f != NULL);
    fwrite(bad_magic, 1, sizeof bad_magic, f);
    fclose(f);
    struct qt_ckpt c;
    struct qt_error e;
    int rc = qt_ckpt_load(&c, path, &e);
    unlink(path);
    QT_CHECK(rc != 0);
    QT_CHECK(c.header == NULL && c.t == NULL && c.n == 0);
    QT_CHECK(strstr(e.msg, "not a qtune checkpoint") != NULL);
    qt_ckpt_free(&c);
    rc = qt_ckpt_load(&c, "/nonexistent/qtune.ckpt", &e);
    QT_CHECK(rc != 0 && c.header == NULL);
    return 0;
}

/* A model without nodes (its output is its input): compaction sorts an empty node list. */
QT_TEST(fuzz_graph_without_nodes)
{
    struct qt_error e;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {2, {qt_graph_sym(g, "N"), 3}};
    int x = qt_builder_input(g, "x", QT_F32, &xs);
    int rc = x >= 0 ? qt_builder_output(g, x, NULL, &e) : -1;
    if (rc == 0) rc = qt_graph_compact(g, &e);
    int nodes = g->nnodes;
    qt_graph_free(g);
    if (rc) return qt_test_fail("compacting a graph without nodes: %s", e.msg);
    QT_CHECK(nodes == 0);
    return 0;
}

/* Cast of floats outside the target type's range (C leaves such conversions undefined):
 * truncated, then wrapped to the type's width; NaN gives 0. */
QT_TEST(fuzz_cast_out_of_range)
{
    struct qt_shape s = {1, {5}};
    struct qt_tensor *x = qt_tensor_new(QT_F32, &s);
    struct qt_tensor *y = qt_tensor_new(QT_U8, &s);
    struct qt_tensor *z = qt_tensor_new(QT_I8, &s);
    const float v[5] = {-3.0f, 300.5f, NAN, 1e30f, -1e30f};
    memcpy(x->data, v, sizeof v);
    struct qt_node n;
    memset(&n, 0, sizeof n);
    n.op = QT_OP_CAST;
    n.name = "cast";
    n.nin = n.nout = 1;
    const struct qt_tensor *in[1] = {x};
    struct qt_tensor *out[1] = {y};
    struct qt_error e;
    int rc = qt_eval_node(&n, in, out, &e);
    out[0] = z;
    if (rc == 0) rc = qt_eval_node(&n, in, out, &e);
    const uint8_t *u = y->data;
    const int8_t *i8 = z->data;
    int ok = rc == 0 && u[0] == 253 && u[1] == 44 && u[2] == 0 && u[3] == 255 && u[4] == 0 &&
             i8[0] == -3 && i8[1] == 44 && i8[2] == 0;
    qt_tensor_free(x);
    qt_tensor_free(y);
    qt_tensor_free(z);
    if (rc) return qt_test_fail("cast: %s", e.msg);
    QT_CHECK(ok);
    return 0;
}

/* BatchNorm folding with per-channel tensors shorter than the Conv's output channels: an
 * error naming the tensor, not a read past their end. */
QT_TEST(fuzz_fold_batchnorm_short_tensors)
{
    static const char *const which[2] = {"running_mean", "bias"};
    for (int k = 0; k < 2; k++) {
        struct qt_error e;
        struct qt_graph *g = qt_graph_new();
        struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 1, 8, 8}};
        int x = qt_builder_input(g, "x", QT_F32, &xs);
        int c = x >= 0 ? qt_builder_conv(g, "conv", x, 4, 3, 1, 1, 1, &e) : -1;
        int b = c >= 0 ? qt_builder_batchnorm(g, "bn", c, &e) : -1;
        if (b < 0 || qt_builder_output(g, b, "y", &e)) {
            qt_graph_free(g);
            return qt_test_fail("building the graph: %s", e.msg);
        }
        char name[64];
        snprintf(name, sizeof name, "%s.%s", k == 0 ? "bn" : "conv", which[k]);
        int v = qt_graph_find_value(g, name);
        if (v < 0) {
            qt_graph_free(g);
            return qt_test_fail("no value '%s'", name);
        }
        struct qt_shape two = {1, {2}};
        qt_tensor_free(g->values[v].init);
        g->values[v].init = qt_tensor_new(QT_F32, &two);
        g->values[v].shape = two;
        int rc = qt_pass_fold_batchnorm(g, &e);
        qt_graph_free(g);
        if (rc == 0) return qt_test_fail("folding accepted a %s of 2 values", name);
        if (!strstr(e.msg, "has 2 values for 4"))
            return qt_test_fail("unexpected message: %s", e.msg);
    }
    return 0;
}
