/* The executor's inference fast path (values kept in the backend's layouts, Add and Relu fused
 * into convolutions) against its plain path (QT_EXEC_PLAIN: every node on its own, NCHW) on the
 * CPU backend, over graphs built through the IR: residual chains, mixed readers, pools, Gemm. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../graph/builder.h"
#include "../../graph/schema.h"
#include "../../passes/passes.h"
#include "../../runtime/backend.h"
#include "../../runtime/exec.h"
#include "harness.h"

static float urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* Random initializers: weights scaled by their fan-in so activations keep their size through
 * deep graphs, vectors in [-0.5, 0.5), variances in [0.5, 1.5). */
static void randomize(struct qt_graph *g, uint64_t seed)
{
    for (int v = 0; v < g->nvalues; v++) {
        struct qt_tensor *t = g->values[v].init;
        if (!t || t->dtype != QT_F32) continue;
        int64_t n = qt_shape_numel(&t->shape);
        float scale = 1.0f, shift = 0.0f;
        if (t->shape.ndim >= 2 && t->shape.d[0] > 0)
            scale = 3.4f / sqrtf((float)(n / t->shape.d[0]));
        if (strstr(g->values[v].name, "var")) shift = 1.0f;
        for (int64_t i = 0; i < n; i++) ((float *)t->data)[i] = urand(&seed) * scale + shift;
    }
}

/* Counts what the executor asks of the CPU backend's inference path. */
struct counting {
    struct qt_backend b; /* first member: the executor is handed &c->b */
    struct qt_backend *inner;
    int steps, fused, sums, in_place, to_plain;
};

static int count_infer(struct qt_backend *b, const struct qt_step *s, struct qt_error *e)
{
    struct counting *c = (struct counting *)b;
    c->steps++;
    c->fused += s->npost > 0;
    for (int p = 0; p < s->npost; p++)
        if (s->post[p].other) {
            c->sums++;
            c->in_place += s->post[p].other == s->out[0];
        }
    return c->inner->forward_infer(c->inner, s, e);
}

static int count_to_plain(struct qt_backend *b, float *dst, const float *src,
                          const int64_t dims[4], int layout, struct qt_error *e)
{
    struct counting *c = (struct counting *)b;
    c->to_plain++;
    return c->inner->to_plain(c->inner, dst, src, dims, layout, e);
}

static void counting_init(struct counting *c, struct qt_backend *inner)
{
    memset(c, 0, sizeof *c);
    c->b = *inner;
    c->inner = inner;
    c->b.forward_infer = count_infer;
    c->b.to_plain = count_to_plain;
}

static void counting_reset(struct counting *c)
{
    c->steps = c->fused = c->sums = c->in_place = c->to_plain = 0;
}

/* Runs graph g at batch n in both modes on one executor (fast, plain, fast again) and compares
 * every output: |fast - plain| <= 1e-4 * (max |plain| + 1), the second fast run bit-exact to
 * the first. cnt counts the second fast run. */
static int compare_modes(struct qt_exec *x, struct counting *cnt, const struct qt_graph *g, int n,
                         uint64_t seed, const char *what)
{
    struct qt_shape xs = g->values[g->inputs[0]].shape;
    xs.d[0] = n;
    struct qt_tensor *in = qt_tensor_new(QT_F32, &xs);
    for (int64_t i = 0; i < qt_shape_numel(&xs); i++) ((float *)in->data)[i] = 4.0f * urand(&seed);
    const struct qt_tensor *ins[1] = {in};
    struct qt_error e;
    struct qt_tensor *fast[8] = {NULL}, *again[8] = {NULL};
    int bad = 0;
    QT_CHECK(g->noutputs <= 8);
    for (int run = 0; run < 3 && !bad; run++) {
        qt_exec_set_mode(x, run == 1 ? QT_EXEC_PLAIN : QT_EXEC_FAST);
        if (run == 2) counting_reset(cnt);
        if (qt_exec_forward(x, ins, &e)) {
            bad = qt_test_fail("%s, batch %d, %s: %s", what, n, run == 1 ? "plain" : "fast", e.msg);
            break;
        }
        for (int k = 0; k < g->noutputs && !bad; k++) {
            const struct qt_tensor *o = qt_exec_output(x, k);
            if (run == 0) fast[k] = qt_tensor_clone(o);
            if (run == 2) {
                again[k] = qt_tensor_clone(o);
                if (memcmp(fast[k]->data, o->data, o->nbytes))
                    bad = qt_test_fail("%s, batch %d: output '%s' differs between two fast runs",
                                       what, n, g->values[g->outputs[k]].name);
            }
            if (run != 1) continue;
            const float *p = o->data, *f = fast[k]->data;
            int64_t cnt = qt_shape_numel(&o->shape), worst = 0;
            double mx = 0, err = 0;
            if (!qt_shape_eq(&o->shape, &fast[k]->shape)) {
                bad = qt_test_fail("%s, batch %d: output '%s' has another shape in the fast path",
                                   what, n, g->values[g->outputs[k]].name);
                break;
            }
            for (int64_t i = 0; i < cnt; i++) mx = fmax(mx, fabs(p[i]));
            for (int64_t i = 0; i < cnt; i++) {
                const double d = fabs((double)f[i] - p[i]);
                if (!(d <= err)) {
                    err = d;
                    worst = i;
                }
            }
            if (!(err <= 1e-4 * (mx + 1.0)))
                bad = qt_test_fail("%s, batch %d: output '%s'[%lld] = %.7g fast, %.7g plain "
                                   "(max |plain| %.3g)", what, n, g->values[g->outputs[k]].name,
                                   (long long)worst, f[worst], p[worst], mx);
        }
    }
    for (int k = 0; k < 8; k++) {
        qt_tensor_free(fast[k]);
        qt_tensor_free(again[k]);
    }
    qt_tensor_free(in);
    return bad;
}

/* A 1x1 shortcut that needs the 4-D builder layers: input [N,3,10,10], then
 *   stem:   Conv 3->16, Relu                          -> r0
 *   block1: Conv, Relu, Conv, Add(., r0), Relu        -> r1
 *   GlobalAveragePool(r0) -> output "stem_pool" (r0 is read after the Add: no writing over it)
 *   block2: Conv s2, Relu, Conv -> e; Conv 1x1 s2 (r1) -> d; Add(e, d), Relu -> r2
 *   MaxPool(r2) -> output "pooled" (r2 becomes plain before its next readers)
 *   Conv(r2), Relu -> r3; Add(r3, r2) (operands in different layouts)   -> s3
 *   Conv(s3) -> q read by Relu and Add: Add(Relu(q), q) (unfused, both in q's layout) -> s4
 *   Conv 1x1 (s4), Relu -> output "side";  GlobalAveragePool, Flatten, Gemm -> "logits" */
static struct qt_graph *mixed_net(struct qt_error *e)
{
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), 3, 10, 10}};
    int x = qt_builder_input(g, "x", QT_F32, &xs);
#define L(call)                                                                                    \
    do {                                                                                           \
        if ((call) < 0) goto fail;                                                                 \
    } while (0)
    int r0, h, c, r1, sp, e2, d, r2, m, r3, s3, q, s4, side, y;
    L(r0 = qt_builder_conv(g, "stem", x, 16, 3, 1, 1, 1, e));
    L(r0 = qt_builder_relu(g, "stem_relu", r0, e));
    L(h = qt_builder_conv(g, "b1c1", r0, 16, 3, 1, 1, 1, e));
    L(h = qt_builder_relu(g, "b1r1", h, e));
    L(c = qt_builder_conv(g, "b1c2", h, 16, 3, 1, 1, 0, e));
    L(r1 = qt_builder_add(g, "b1add", c, r0, e));
    L(r1 = qt_builder_relu(g, "b1r2", r1, e));
    L(sp = qt_builder_global_avgpool(g, "stem_pool", r0, e));
    L(h = qt_builder_conv(g, "b2c1", r1, 32, 3, 2, 1, 1, e));
    L(h = qt_builder_relu(g, "b2r1", h, e));
    L(e2 = qt_builder_conv(g, "b2c2", h, 32, 3, 1, 1, 1, e));
    L(d = qt_builder_conv(g, "b2ds", r1, 32, 1, 2, 0, 1, e));
    L(r2 = qt_builder_add(g, "b2add", e2, d, e));
    L(r2 = qt_builder_relu(g, "b2r2", r2, e));
    L(m = qt_builder_maxpool(g, "pool", r2, 2, 2, 0, e));
    L(r3 = qt_builder_conv(g, "c3", r2, 32, 3, 1, 1, 1, e));
    L(r3 = qt_builder_relu(g, "r3", r3, e));
    L(s3 = qt_builder_add(g, "add3", r3, r2, e));
    L(q = qt_builder_conv(g, "c4", s3, 32, 3, 1, 1, 1, e));
    L(s4 = qt_builder_relu(g, "r4", q, e));
    L(s4 = qt_builder_add(g, "add4", s4, q, e));
    L(side = qt_builder_conv(g, "side", s4, 8, 1, 1, 0, 1, e));
    L(side = qt_builder_relu(g, "side_relu", side, e));
    L(y = qt_builder_global_avgpool(g, "gap", s4, e));
    L(y = qt_builder_flatten(g, "flatten", y, e));
    L(y = qt_builder_gemm(g, "fc", y, 10, e));
    if (qt_builder_output(g, y, "logits", e) || qt_builder_output(g, m, "pooled", e) ||
        qt_builder_output(g, side, "side", e) || qt_builder_output(g, sp, "stem_pool", e))
        goto fail;
#undef L
    if (qt_graph_verify(g, e)) goto fail;
    return g;
fail:
    qt_graph_free(g);
    return NULL;
}

QT_TEST(exec_layout_mixed_graph)
{
    struct qt_error e;
    struct qt_graph *g = mixed_net(&e);
    if (!g) return qt_test_fail("building the graph: %s", e.msg);
    randomize(g, 11);
    struct qt_backend *b = qt_backend_cpu_new(0);
    QT_CHECK(b && b->forward_infer);
    struct counting cnt;
    counting_init(&cnt, b);
    struct qt_exec *x = qt_exec_new(g, &cnt.b, &e);
    int bad = !x ? qt_test_fail("%s", e.msg) : 0;
    /* Batch sizes change between runs of one executor. */
    const int batches[] = {2, 5, 1, 2};
    for (int i = 0; i < 4 && !bad; i++)
        bad = compare_modes(x, &cnt, g, batches[i], 100 + i, "mixed graph");
    /* Fused steps per fast run: stem, b1c1, b1c2 (+Add), b2c1, b2ds (+Add, over b2c2's
     * output), c3, side; b2c2, c4 and the other nodes run on their own. */
    if (!bad && (cnt.fused != 7 || cnt.sums != 2 || cnt.in_place != 1))
        bad = qt_test_fail("fused steps %d, with Add %d, in place %d; expected 7, 2, 1",
                           cnt.fused, cnt.sums, cnt.in_place);
    /* Conversions: r0 before its pool, r2 before MaxPool, r3 for the Add with plain r2, s4
     * before the pool, and the output "side". */
    if (!bad && cnt.to_plain != 5)
        bad = qt_test_fail("%d conversions to plain order per run, expected 5", cnt.to_plain);
    qt_exec_free(x);
    b->destroy(b);
    qt_graph_free(g);
    return bad;
}

static int add_init(struct qt_graph *g, const char *name, int ndim, const int64_t *d)
{
    struct qt_shape s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    int v = qt_graph_add_value(g, name, QT_F32, &s);
    g->values[v].init = qt_tensor_new(QT_F32, &s);
    return v;
}

static int conv1d(struct qt_graph *g, const char *name, int x, int cin, int cout)
{
    char wn[64], yn[64];
    snprintf(wn, sizeof wn, "%s_w", name);
    snprintf(yn, sizeof yn, "%s_y", name);
    int w = add_init(g, wn, 3, (int64_t[]){cout, cin, 3});
    int y = qt_graph_add_value(g, yn, QT_UNDEF, NULL);
    int n = qt_graph_add_node(g, QT_OP_CONV, name, (int[]){x, w}, 2, &y, 1);
    qt_node_set_ints(&g->nodes[n], "kernel_shape", (int64_t[]){3}, 1);
    qt_node_set_ints(&g->nodes[n], "pads", (int64_t[]){1, 1}, 2);
    return y;
}

static int unary(struct qt_graph *g, enum qt_op op, const char *name, int a, int b)
{
    int y = qt_graph_add_value(g, name, QT_UNDEF, NULL);
    qt_graph_add_node(g, op, name, (int[]){a, b}, b >= 0 ? 2 : 1, &y, 1);
    return y;
}

/* 1-D convolutions ([N, C, W] tensors) with a residual Add whose other operand is the graph
 * input itself (plain): x -> Conv, Relu, Conv, Add(., x), Relu -> y. */
QT_TEST(exec_layout_conv1d_residual)
{
    struct qt_error e;
    struct qt_graph *g = qt_graph_new();
    struct qt_shape xs = {3, {qt_graph_sym(g, "N"), 16, 20}};
    int x = qt_builder_input(g, "x", QT_F32, &xs);
    int h = unary(g, QT_OP_RELU, "r1", conv1d(g, "c1", x, 16, 16), -1);
    int y = unary(g, QT_OP_ADD, "add", conv1d(g, "c2", h, 16, 16), x);
    y = unary(g, QT_OP_RELU, "r2", y, -1);
    int bad = qt_builder_output(g, y, "y", &e) || qt_graph_infer_shapes(g, &e);
    if (bad) {
        qt_graph_free(g);
        return qt_test_fail("%s", e.msg);
    }
    randomize(g, 5);
    struct qt_backend *b = qt_backend_cpu_new(0);
    struct counting cnt;
    counting_init(&cnt, b);
    struct qt_exec *x_ = qt_exec_new(g, &cnt.b, &e);
    bad = !x_ ? qt_test_fail("%s", e.msg) : compare_modes(x_, &cnt, g, 3, 9, "1-D residual");
    if (!bad && (cnt.fused != 2 || cnt.sums != 1 || cnt.in_place != 1))
        bad = qt_test_fail("fused steps %d, with Add %d, in place %d; expected 2, 1, 1",
                           cnt.fused, cnt.sums, cnt.in_place);
    qt_exec_free(x_);
    b->destroy(b);
    qt_graph_free(g);
    return bad;
}

/* qtune's ResNets as `qtune init` builds them, with random weights and BatchNorm statistics:
 * BatchNorm kept (Conv -> BatchNorm: nothing fuses, BatchNorm reads plain) and folded (as
 * `qtune eval` runs them). */
static int check_resnet(const char *arch, int hw, int fold, int want_fused, int want_sums)
{
    struct qt_error e;
    struct qt_graph *g = NULL;
    char what[96];
    snprintf(what, sizeof what, "%s %dx%d%s", arch, hw, hw, fold ? " folded" : "");
    if (qt_build_resnet(&g, arch, 3, hw, hw, 10, 3, &e)) return qt_test_fail("%s: %s", what, e.msg);
    randomize(g, 21);
    if (fold && qt_pass_fold_batchnorm(g, &e)) {
        qt_graph_free(g);
        return qt_test_fail("%s: %s", what, e.msg);
    }
    struct qt_backend *b = qt_backend_cpu_new(0);
    struct counting cnt;
    counting_init(&cnt, b);
    struct qt_exec *x = qt_exec_new(g, &cnt.b, &e);
    int bad = !x ? qt_test_fail("%s: %s", what, e.msg) : compare_modes(x, &cnt, g, 3, 77, what);
    if (!bad && (cnt.fused != want_fused || cnt.sums != want_sums || cnt.in_place != want_sums))
        bad = qt_test_fail("%s: fused steps %d, with Add %d, in place %d; expected %d, %d, %d",
                           what, cnt.fused, cnt.sums, cnt.in_place, want_fused, want_sums,
                           want_sums);
    qt_exec_free(x);
    b->destroy(b);
    qt_graph_free(g);
    return bad;
}

QT_TEST(exec_layout_resnets)
{
    /* ResNet-20 folded: the stem and each block's first conv with Relu (10), each block's
     * second conv or 1x1 shortcut with Add and Relu (9), the Add over its other operand.
     * Unfolded nothing fuses (every Conv feeds a BatchNorm). ResNet-18 at 64x64: a MaxPool
     * after the stem, 8 blocks. */
    return check_resnet("resnet20", 16, 1, 19, 9) || check_resnet("resnet20", 16, 0, 0, 0) ||
           check_resnet("resnet18", 64, 1, 17, 8);
}
