/* Graph builder and `qtune init` models: layer counts and parameter counts per architecture
 * (numbers taken from PyTorch's reference models), node order, initialization statistics,
 * seeding, unique names, and errors for bad arguments. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../graph/builder.h"
#include "../../graph/schema.h"
#include "../../onnx/onnx.h"
#include "harness.h"

static int count_op(const struct qt_graph *g, enum qt_op op)
{
    int c = 0;
    for (int i = 0; i < g->nnodes; i++) c += g->nodes[i].op == op;
    return c;
}

static int64_t count_flag(const struct qt_graph *g, int flag)
{
    int64_t c = 0;
    for (int i = 0; i < g->nvalues; i++)
        if ((g->values[i].flags & flag) && g->values[i].init)
            c += qt_shape_numel(&g->values[i].init->shape);
    return c;
}

struct arch_case {
    const char *arch;
    int c, h, w, classes;
    int convs, bns, maxpools;
    int64_t params; /* sum of PyTorch's model.parameters() for the same model */
    int64_t state;  /* BatchNorm running means and variances (PyTorch's buffers) */
};

/* Parameter counts from tests/ref/models.py (CifarResNet with the 1x1 conv + BN shortcut)
 * and torchvision.models.resnet18; the 3x3-stem ResNet-18 has 64*3*(49-9) = 7680 fewer. */
static const struct arch_case cases[] = {
    {"resnet20", 3, 32, 32, 10, 21, 21, 0, 272474, 1568},
    {"resnet32", 3, 32, 32, 10, 33, 33, 0, 466906, 2464},
    {"resnet56", 3, 32, 32, 10, 57, 57, 0, 855770, 4256},
    {"resnet20", 1, 28, 28, 10, 21, 21, 0, 272186, 1568},
    {"resnet18", 3, 64, 64, 10, 20, 20, 1, 11181642, 9600},
    {"resnet18", 3, 32, 32, 10, 20, 20, 0, 11173962, 9600},
    {"resnet18", 3, 224, 224, 1000, 20, 20, 1, 11689512, 9600},
};

QT_TEST(builder_resnet_layer_and_parameter_counts)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct arch_case *t = &cases[i];
        struct qt_graph *g = NULL;
        struct qt_error e;
        if (qt_build_resnet(&g, t->arch, t->c, t->h, t->w, t->classes, 1, &e))
            return qt_test_fail("%s %dx%dx%d: %s", t->arch, t->c, t->h, t->w, e.msg);
        int ok = count_op(g, QT_OP_CONV) == t->convs && count_op(g, QT_OP_BATCHNORM) == t->bns &&
                 count_op(g, QT_OP_GEMM) == 1 && count_op(g, QT_OP_MAXPOOL) == t->maxpools &&
                 count_op(g, QT_OP_GLOBALAVGPOOL) == 1 && count_op(g, QT_OP_FLATTEN) == 1;
        int64_t p = count_flag(g, QT_V_PARAM), s = count_flag(g, QT_V_STATE);
        if (!ok || p != t->params || s != t->state) {
            qt_test_fail("%s %dx%dx%d: %d Conv, %d BN, %d MaxPool, %lld params, %lld state; "
                         "expected %d, %d, %d, %lld, %lld", t->arch, t->c, t->h, t->w,
                         count_op(g, QT_OP_CONV), count_op(g, QT_OP_BATCHNORM),
                         count_op(g, QT_OP_MAXPOOL), (long long)p, (long long)s, t->convs,
                         t->bns, t->maxpools, (long long)t->params, (long long)t->state);
            qt_graph_free(g);
            return 1;
        }
        /* Ports: input [N,c,h,w], output "logits" [N,classes], N symbolic. */
        QT_CHECK(g->ninputs == 1 && g->noutputs == 1);
        const struct qt_value *in = &g->values[g->inputs[0]], *out = &g->values[g->outputs[0]];
        QT_CHECK(strcmp(in->name, "input") == 0 && strcmp(out->name, "logits") == 0);
        QT_CHECK(in->shape.ndim == 4 && in->shape.d[0] < 0 && in->shape.d[1] == t->c &&
                 in->shape.d[2] == t->h && in->shape.d[3] == t->w);
        QT_CHECK(out->has_shape && out->shape.ndim == 2 && out->shape.d[0] == in->shape.d[0] &&
                 out->shape.d[1] == t->classes);
        QT_CHECK(g->nsyms == 1 && strcmp(g->syms[0], "N") == 0);
        const char *arch = qt_graph_meta(g, "qtune.arch");
        QT_CHECK(arch && strcmp(arch, t->arch) == 0);
        QT_CHECK(!qt_graph_meta(g, "qtune.mean") && !qt_graph_meta(g, "qtune.std"));
        struct qt_error e2;
        QT_CHECK(qt_graph_verify(g, &e2) == 0);
        qt_graph_free(g);
    }
    return 0;
}

/* The op sequence of a CIFAR ResNet as PyTorch exports it: per block conv1 bn1 relu conv2
 * bn2 [downsample conv, bn] add relu. */
QT_TEST(builder_resnet20_node_order_and_shortcuts)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    QT_CHECK(qt_build_resnet(&g, "resnet20", 3, 32, 32, 10, 0, &e) == 0);
    enum qt_op want[80];
    int n = 0;
    want[n++] = QT_OP_CONV, want[n++] = QT_OP_BATCHNORM, want[n++] = QT_OP_RELU;
    for (int s = 0; s < 3; s++)
        for (int b = 0; b < 3; b++) {
            want[n++] = QT_OP_CONV, want[n++] = QT_OP_BATCHNORM, want[n++] = QT_OP_RELU;
            want[n++] = QT_OP_CONV, want[n++] = QT_OP_BATCHNORM;
            if (s > 0 && b == 0) want[n++] = QT_OP_CONV, want[n++] = QT_OP_BATCHNORM;
            want[n++] = QT_OP_ADD, want[n++] = QT_OP_RELU;
        }
    want[n++] = QT_OP_GLOBALAVGPOOL, want[n++] = QT_OP_FLATTEN, want[n++] = QT_OP_GEMM;
    QT_CHECK(g->nnodes == n);
    for (int i = 0; i < n; i++)
        if (g->nodes[i].op != want[i]) {
            qt_test_fail("node %d '%s' is %s, expected %s", i, g->nodes[i].name,
                         qt_op_name(g->nodes[i].op), qt_op_name(want[i]));
            qt_graph_free(g);
            return 1;
        }
    /* Shortcuts: two 1x1 stride-2 convs without bias named like PyTorch's modules. */
    int v = qt_graph_find_value(g, "layer2.0.downsample.0.weight");
    QT_CHECK(v >= 0 && g->values[v].init && g->values[v].shape.d[0] == 32 &&
             g->values[v].shape.d[1] == 16 && g->values[v].shape.d[2] == 1);
    QT_CHECK(qt_graph_find_value(g, "layer3.0.downsample.1.running_var") >= 0);
    QT_CHECK(qt_graph_find_value(g, "layer1.0.downsample.0.weight") < 0);
    int strided = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *nd = &g->nodes[i];
        if (nd->op != QT_OP_CONV) continue;
        QT_CHECK(nd->nin == 2);
        int64_t st[2];
        QT_CHECK(qt_node_ints(nd, "strides", st, 2) == 2);
        strided += st[0] == 2;
        /* Each Conv feeds exactly one BatchNormalization. */
        int c = qt_graph_first_consumer(g, nd->out[0]);
        QT_CHECK(c >= 0 && g->nodes[c].op == QT_OP_BATCHNORM);
        QT_CHECK(qt_graph_use_count(g, nd->out[0]) == 1);
    }
    QT_CHECK(strided == 4);
    const struct qt_node *fc = &g->nodes[g->nnodes - 1];
    QT_CHECK(qt_node_int(fc, "transB", 0) == 1 && fc->nin == 3);
    /* Stage outputs: 32 -> 16 -> 8 before pooling. */
    int pooled = g->nodes[g->nnodes - 3].in[0];
    QT_CHECK(g->values[pooled].shape.d[1] == 64 && g->values[pooled].shape.d[2] == 8 &&
             g->values[pooled].shape.d[3] == 8);
    qt_graph_free(g);
    return 0;
}

static int float_eq(const struct qt_tensor *t, float v)
{
    const float *p = t->data;
    for (int64_t i = 0; i < qt_shape_numel(&t->shape); i++)
        if (p[i] != v) return 0;
    return 1;
}

/* Conv weights: mean ~ 0 and std ~ sqrt(2/fan) (fan_in for CIFAR ResNets, fan_out for
 * ResNet-18); BatchNorm at PyTorch's defaults; fc inside +-1/sqrt(fan_in) and spread out. */
static int check_init(const char *arch, int c, int h, int w, int fan_out)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    if (qt_build_resnet(&g, arch, c, h, w, 10, 7, &e)) return qt_test_fail("%s", e.msg);
    int rc = 0;
    for (int i = 0; i < g->nnodes && !rc; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op == QT_OP_CONV) {
            const struct qt_tensor *t = g->values[n->in[1]].init;
            int64_t cnt = qt_shape_numel(&t->shape), k = t->shape.d[2] * t->shape.d[3];
            double fan = (double)(fan_out ? t->shape.d[0] : t->shape.d[1]) * (double)k;
            double want = sqrt(2.0 / fan), s1 = 0, s2 = 0;
            for (int64_t j = 0; j < cnt; j++) {
                double x = ((const float *)t->data)[j];
                s1 += x;
                s2 += x * x;
            }
            double mean = s1 / cnt, sd = sqrt(s2 / cnt - mean * mean);
            /* Sampling error of the std is about want/sqrt(2*cnt); allow 5 of those + 2%. */
            double tol = want * (0.02 + 5.0 / sqrt(2.0 * cnt));
            if (!(fabs(sd - want) <= tol) || !(fabs(mean) <= 5.0 * want / sqrt((double)cnt)))
                rc = qt_test_fail("%s %s: mean %g std %g, expected std %g", arch, n->name, mean,
                                  sd, want);
        } else if (n->op == QT_OP_BATCHNORM) {
            const struct qt_value *v = g->values;
            if (!float_eq(v[n->in[1]].init, 1.0f) || !float_eq(v[n->in[2]].init, 0.0f) ||
                !float_eq(v[n->in[3]].init, 0.0f) || !float_eq(v[n->in[4]].init, 1.0f))
                rc = qt_test_fail("%s %s: BatchNorm not at scale 1, bias 0, mean 0, var 1", arch,
                                  n->name);
        } else if (n->op == QT_OP_GEMM) {
            for (int k = 1; k <= 2 && !rc; k++) {
                const struct qt_tensor *t = g->values[n->in[k]].init;
                int64_t cnt = qt_shape_numel(&t->shape);
                double bound = 1.0 / sqrt((double)g->values[n->in[1]].shape.d[1]), mx = 0;
                for (int64_t j = 0; j < cnt; j++) {
                    double x = fabs(((const float *)t->data)[j]);
                    if (!(x <= bound))
                        rc = qt_test_fail("%s fc input %d: |%g| > %g", arch, k, x, bound);
                    if (x > mx) mx = x;
                }
                /* The largest of cnt uniform draws lies above bound * 0.5 unless cnt is tiny. */
                if (!rc && !(mx > 0.5 * bound))
                    rc = qt_test_fail("%s fc input %d: max |w| %g, bound %g", arch, k, mx, bound);
            }
        }
    }
    qt_graph_free(g);
    return rc;
}

QT_TEST(builder_init_statistics)
{
    if (check_init("resnet20", 3, 32, 32, 0)) return 1;
    if (check_init("resnet56", 1, 28, 28, 0)) return 1;
    if (check_init("resnet18", 3, 32, 32, 1)) return 1;
    if (check_init("resnet18", 3, 64, 64, 1)) return 1;
    return 0;
}

/* Concatenated initializer bytes must match for equal seeds and differ for other seeds. */
static int same_weights(const struct qt_graph *a, const struct qt_graph *b)
{
    if (a->nvalues != b->nvalues) return 0;
    for (int i = 0; i < a->nvalues; i++) {
        const struct qt_tensor *x = a->values[i].init, *y = b->values[i].init;
        if (!x != !y) return 0;
        if (strcmp(a->values[i].name, b->values[i].name) != 0) return 0;
        if (x && (x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0)) return 0;
    }
    return 1;
}

QT_TEST(builder_seed_determinism)
{
    struct qt_graph *a = NULL, *b = NULL, *c = NULL;
    struct qt_error e;
    QT_CHECK(qt_build_resnet(&a, "resnet20", 3, 32, 32, 10, 42, &e) == 0);
    QT_CHECK(qt_build_resnet(&b, "resnet20", 3, 32, 32, 10, 42, &e) == 0);
    QT_CHECK(qt_build_resnet(&c, "resnet20", 3, 32, 32, 10, 43, &e) == 0);
    int same = same_weights(a, b), differ = !same_weights(a, c);
    /* Every conv weight changes with the seed, not only some. */
    int all_conv_differ = 1;
    for (int i = 0; i < a->nnodes; i++)
        if (a->nodes[i].op == QT_OP_CONV) {
            const struct qt_tensor *x = a->values[a->nodes[i].in[1]].init;
            const struct qt_tensor *y = c->values[c->nodes[i].in[1]].init;
            if (memcmp(x->data, y->data, x->nbytes) == 0) all_conv_differ = 0;
        }
    qt_graph_free(a);
    qt_graph_free(b);
    qt_graph_free(c);
    QT_CHECK(same);
    QT_CHECK(differ);
    QT_CHECK(all_conv_differ);
    return 0;
}

QT_TEST(builder_non_square_and_small_inputs)
{
    struct qt_graph *g = NULL;
    struct qt_error e;
    /* ResNet-20 on 3x40x24: 40x24 -> 20x12 -> 10x6 before pooling. */
    QT_CHECK(qt_build_resnet(&g, "resnet20", 3, 40, 24, 7, 0, &e) == 0);
    int pooled = g->nodes[g->nnodes - 3].in[0];
    QT_CHECK(g->values[pooled].shape.d[2] == 10 && g->values[pooled].shape.d[3] == 6);
    QT_CHECK(g->values[g->outputs[0]].shape.d[1] == 7);
    qt_graph_free(g);
    /* The smallest accepted size, odd sizes included. */
    QT_CHECK(qt_build_resnet(&g, "resnet56", 2, 8, 9, 3, 0, &e) == 0);
    qt_graph_free(g);
    /* ResNet-18 with W < 64 uses the 3x3 stride-1 stem and no max pooling. */
    QT_CHECK(qt_build_resnet(&g, "resnet18", 3, 96, 48, 5, 0, &e) == 0);
    QT_CHECK(count_op(g, QT_OP_MAXPOOL) == 0);
    int w1 = qt_graph_find_value(g, "conv1.weight");
    QT_CHECK(w1 >= 0 && g->values[w1].shape.d[2] == 3);
    qt_graph_free(g);
    QT_CHECK(qt_build_resnet(&g, "resnet18", 1, 64, 64, 5, 0, &e) == 0);
    w1 = qt_graph_find_value(g, "conv1.weight");
    QT_CHECK(w1 >= 0 && g->values[w1].shape.d[1] == 1 && g->values[w1].shape.d[2] == 7);
    int64_t st[2];
    QT_CHECK(qt_node_ints(&g->nodes[0], "strides", st, 2) == 2 && st[0] == 2);
    QT_CHECK(count_op(g, QT_OP_MAXPOOL) == 1);
    qt_graph_free(g);
    return 0;
}

QT_TEST(builder_bad_arguments_fail_with_message)
{
    struct {
        const char *arch;
        int c, h, w, k;
        const char *needle;
    } bad[] = {
        {"resnet19", 3, 32, 32, 10, "resnet19"},
        {"", 3, 32, 32, 10, "unknown architecture"},
        {NULL, 3, 32, 32, 10, "unknown architecture"},
        {"resnet20", 0, 32, 32, 10, "channels"},
        {"resnet20", 3, 7, 32, 10, "7x32"},
        {"resnet18", 3, 32, 4, 10, "32x4"},
        {"resnet56", 3, 32, 32, 1, "classes"},
        {"resnet32", 3, 32, 32, -5, "classes"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct qt_graph dummy, *g = &dummy; /* must be reset to NULL */
        struct qt_error e = {{0}};
        int rc = qt_build_resnet(&g, bad[i].arch, bad[i].c, bad[i].h, bad[i].w, bad[i].k, 0, &e);
        if (rc != -1 || g != NULL || !strstr(e.msg, bad[i].needle))
            return qt_test_fail("case %zu: rc %d, message '%s', expected one mentioning '%s'", i,
                                rc, e.msg, bad[i].needle);
    }
    return 0;
}

QT_TEST(builder_layer_helpers_unique_names_and_errors)
{
    struct qt_graph *g = qt_graph_new();
    struct qt_error e;
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 4, 10, 10}};
    int x = qt_builder_input(g, "x", QT_F32, &xs);
    int a = qt_builder_conv(g, "c", x, 8, 3, 2, 1, 1, &e);
    QT_CHECK(a >= 0);
    QT_CHECK(g->values[a].shape.d[1] == 8 && g->values[a].shape.d[2] == 5);
    int b = qt_builder_conv(g, "c", x, 8, 3, 2, 1, 0, &e);
    QT_CHECK(b >= 0);
    /* The second layer "c" gets its own node and parameter names. */
    QT_CHECK(strcmp(g->nodes[0].name, "c") == 0 && strcmp(g->nodes[1].name, "c_1") == 0);
    QT_CHECK(qt_graph_find_value(g, "c.weight") >= 0 && qt_graph_find_value(g, "c.bias") >= 0);
    QT_CHECK(qt_graph_find_value(g, "c.weight_1") >= 0);
    QT_CHECK(strcmp(g->values[a].name, g->values[b].name) != 0);
    int s = qt_builder_add(g, "sum", a, b, &e);
    QT_CHECK(s >= 0);
    int p = qt_builder_avgpool(g, "pool", s, 2, 2, 0, &e);
    QT_CHECK(p >= 0 && g->values[p].shape.d[2] == 2);
    int m = qt_builder_maxpool(g, "mp", s, 3, 2, 1, &e);
    QT_CHECK(m >= 0 && g->values[m].shape.d[2] == 3);

    /* Mismatched Add: [N,8,5,5] + [N,8,2,2]; the message names the layer. */
    QT_CHECK(qt_builder_add(g, "bad_sum", s, p, &e) == -1);
    QT_CHECK(strstr(e.msg, "bad_sum") != NULL);
    /* Gemm needs a matrix. */
    QT_CHECK(qt_builder_gemm(g, "fc", s, 3, &e) == -1);
    QT_CHECK(strstr(e.msg, "fc") && strstr(e.msg, "rank"));
    /* A kernel larger than the padded input. */
    QT_CHECK(qt_builder_conv(g, "huge", p, 4, 7, 1, 0, 0, &e) == -1);
    QT_CHECK(strstr(e.msg, "huge") != NULL);
    QT_CHECK(qt_builder_relu(g, "r", 12345, &e) == -1 && strstr(e.msg, "r'"));
    QT_CHECK(qt_builder_maxpool(g, "mp2", s, 2, 2, 2, &e) == -1 && strstr(e.msg, "mp2"));

    int f = qt_builder_flatten(g, "flat", qt_builder_global_avgpool(g, "gap", s, &e), &e);
    QT_CHECK(f >= 0 && g->values[f].shape.ndim == 2 && g->values[f].shape.d[1] == 8);
    int y = qt_builder_gemm(g, "fc", f, 3, &e);
    QT_CHECK(y >= 0 && g->values[y].shape.d[1] == 3);
    /* The output name "x" is taken by the input. */
    QT_CHECK(qt_builder_output(g, y, "x", &e) == -1 && strstr(e.msg, "'x'"));
    QT_CHECK(qt_builder_output(g, y, "y", &e) == 0);
    QT_CHECK(g->noutputs == 1 && strcmp(g->values[g->outputs[0]].name, "y") == 0);
    /* Failed layers left nodes behind; compaction drops everything not leading to "y". */
    QT_CHECK(qt_graph_compact(g, &e) == 0);
    QT_CHECK(qt_graph_verify(g, &e) == 0);
    QT_CHECK(qt_graph_infer_shapes(g, &e) == 0);
    QT_CHECK(count_op(g, QT_OP_MAXPOOL) == 0 && count_op(g, QT_OP_CONV) == 2);
    qt_graph_free(g);
    return 0;
}

/* Save and reload: the ONNX file keeps names, shapes, attributes, data and metadata. */
QT_TEST(builder_resnet_save_load_roundtrip)
{
    struct qt_graph *g = NULL, *h = NULL;
    struct qt_error e;
    QT_CHECK(qt_build_resnet(&g, "resnet32", 3, 32, 32, 100, 5, &e) == 0);
    char path[] = "/tmp/qt_builder_XXXXXX";
    int fd = mkstemp(path);
    QT_CHECK(fd >= 0);
    close(fd);
    int rc = qt_onnx_save(g, path, &e);
    if (!rc) h = qt_onnx_load(path, &e);
    unlink(path);
    if (rc || !h) {
        qt_graph_free(g);
        return qt_test_fail("round trip: %s", e.msg);
    }
    const char *arch = qt_graph_meta(h, "qtune.arch");
    int ok = h->nnodes == g->nnodes && h->ninputs == 1 && h->noutputs == 1 && arch &&
             strcmp(arch, "resnet32") == 0 && strcmp(h->values[h->outputs[0]].name, "logits") == 0;
    for (int i = 0; ok && i < g->nvalues; i++) {
        if (!g->values[i].init) continue;
        int v = qt_graph_find_value(h, g->values[i].name);
        const struct qt_tensor *a = g->values[i].init, *b = v >= 0 ? h->values[v].init : NULL;
        ok = b && b->nbytes == a->nbytes && memcmp(b->data, a->data, a->nbytes) == 0;
    }
    if (ok) ok = qt_graph_infer_shapes(h, &e) == 0;
    if (ok) {
        const struct qt_shape *s = &h->values[h->outputs[0]].shape;
        ok = s->ndim == 2 && s->d[0] < 0 && s->d[1] == 100;
    }
    qt_graph_free(g);
    qt_graph_free(h);
    QT_CHECK(ok);
    return 0;
}
