/* ONNX import robustness and round trip: a small model built through the IR is saved,
 * reloaded identically, and thousands of truncated and corrupted copies must load or fail
 * cleanly (run under AddressSanitizer in CI). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../graph/schema.h"
#include "../../onnx/onnx.h"
#include "../../passes/passes.h"
#include "harness.h"

static int add_init(struct qt_graph *g, const char *name, int ndim, const int64_t *d, unsigned *seed)
{
    struct qt_shape s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    int v = qt_graph_add_value(g, name, QT_F32, &s);
    struct qt_tensor *t = qt_tensor_new(QT_F32, &s);
    for (int64_t i = 0; i < qt_shape_numel(&s); i++)
        ((float *)t->data)[i] = (float)rand_r(seed) / RAND_MAX - 0.5f + (strstr(name, "var") ? 1.f : 0.f);
    g->values[v].init = t;
    return v;
}

/* input [N,3,8,8] -> Conv 3x3 -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm */
static struct qt_graph *small_net(void)
{
    unsigned seed = 7;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 3, 8, 8}};
    int x = qt_graph_add_value(g, "x", QT_F32, &xs);
    g->values[x].flags |= QT_V_INPUT;
    g->inputs = malloc(sizeof(int));
    g->inputs[g->ninputs++] = x;
    int w = add_init(g, "w", 4, (int64_t[]){4, 3, 3, 3}, &seed);
    int b = add_init(g, "b", 1, (int64_t[]){4}, &seed);
    int sc = add_init(g, "scale", 1, (int64_t[]){4}, &seed);
    int bi = add_init(g, "bias", 1, (int64_t[]){4}, &seed);
    int mu = add_init(g, "mean", 1, (int64_t[]){4}, &seed);
    int var = add_init(g, "var", 1, (int64_t[]){4}, &seed);
    int fw = add_init(g, "fc_w", 2, (int64_t[]){5, 4}, &seed);
    int fb = add_init(g, "fc_b", 1, (int64_t[]){5}, &seed);
    int c = qt_graph_add_value(g, "c", QT_UNDEF, NULL);
    int n = qt_graph_add_node(g, QT_OP_CONV, "conv", (int[]){x, w, b}, 3, &c, 1);
    qt_node_set_ints(&g->nodes[n], "pads", (int64_t[]){1, 1, 1, 1}, 4);
    int bn = qt_graph_add_value(g, "bn", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_BATCHNORM, "bn", (int[]){c, sc, bi, mu, var}, 5, &bn, 1);
    int r = qt_graph_add_value(g, "r", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_RELU, "relu", &bn, 1, &r, 1);
    int p = qt_graph_add_value(g, "p", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_GLOBALAVGPOOL, "pool", &r, 1, &p, 1);
    int f = qt_graph_add_value(g, "f", QT_UNDEF, NULL);
    qt_graph_add_node(g, QT_OP_FLATTEN, "flatten", &p, 1, &f, 1);
    int y = qt_graph_add_value(g, "y", QT_UNDEF, NULL);
    n = qt_graph_add_node(g, QT_OP_GEMM, "fc", (int[]){f, fw, fb}, 3, &y, 1);
    qt_node_set_int(&g->nodes[n], "transB", 1);
    g->values[y].flags |= QT_V_OUTPUT;
    g->outputs = malloc(sizeof(int));
    g->outputs[g->noutputs++] = y;
    return g;
}

static uint8_t *saved_model(size_t *len)
{
    struct qt_error e;
    struct qt_graph *g = small_net();
    char path[64];
    snprintf(path, sizeof path, "/tmp/qtune_robust_%d.onnx", (int)getpid());
    int rc = qt_pass_canonicalize(g, &e) || qt_onnx_save(g, path, &e);
    qt_graph_free(g);
    if (rc) {
        fprintf(stdout, "    %s\n", e.msg);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len);
    if (fread(buf, 1, *len, f) != *len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    unlink(path);
    return buf;
}

QT_TEST(onnx_roundtrip_small_net)
{
    size_t len;
    uint8_t *buf = saved_model(&len);
    QT_CHECK(buf);
    struct qt_error e;
    struct qt_graph *g = qt_onnx_load_buffer(buf, len, NULL, "buffer", &e);
    free(buf);
    if (!g) return qt_test_fail("%s", e.msg);
    int ok = g->nnodes == 6 && g->ninputs == 1 && g->noutputs == 1 &&
             g->values[g->inputs[0]].shape.d[0] < 0 && strcmp(g->syms[0], "N") == 0;
    ok = ok && !qt_pass_canonicalize(g, &e);
    char b[64];
    ok = ok && strcmp(qt_shape_str(g, &g->values[g->outputs[0]].shape, b, sizeof b), "[N,5]") == 0;
    qt_graph_free(g);
    QT_CHECK(ok);
    return 0;
}

static int try_load(const uint8_t *buf, size_t len)
{
    struct qt_error e;
    e.msg[0] = 0;
    struct qt_graph *g = qt_onnx_load_buffer(buf, len, NULL, "mutated", &e);
    if (!g) return e.msg[0] ? 0 : qt_test_fail("load failed without a message");
    if (qt_pass_canonicalize(g, &e) && !e.msg[0]) {
        qt_graph_free(g);
        return qt_test_fail("canonicalize failed without a message");
    }
    qt_graph_free(g);
    return 0;
}

QT_TEST(onnx_truncated_models_fail_cleanly)
{
    size_t len;
    uint8_t *buf = saved_model(&len);
    QT_CHECK(buf);
    int rc = 0, failures = 0;
    for (size_t cut = 0; cut < len && !rc; cut += 1 + cut / 64) {
        struct qt_error e;
        struct qt_graph *g = qt_onnx_load_buffer(buf, cut, NULL, "truncated", &e);
        if (g) qt_graph_free(g);
        else failures++;
        rc = try_load(buf, cut);
    }
    free(buf);
    QT_CHECK(rc == 0);
    QT_CHECK(failures > 0);
    return 0;
}

QT_TEST(onnx_corrupted_models_fail_cleanly)
{
    size_t len;
    uint8_t *buf = saved_model(&len);
    QT_CHECK(buf);
    uint8_t *m = malloc(len);
    unsigned seed = 12345;
    int rc = 0;
    for (int trial = 0; trial < 3000 && !rc; trial++) {
        memcpy(m, buf, len);
        int flips = 1 + rand_r(&seed) % 4;
        for (int k = 0; k < flips; k++) m[rand_r(&seed) % len] = (uint8_t)rand_r(&seed);
        rc = try_load(m, len);
    }
    for (int trial = 0; trial < 200 && !rc; trial++) {
        for (size_t i = 0; i < len; i++) m[i] = (uint8_t)rand_r(&seed);
        rc = try_load(m, len);
    }
    free(m);
    free(buf);
    QT_CHECK(rc == 0);
    return 0;
}
