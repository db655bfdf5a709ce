/* Graph builder: layer helpers that append nodes and initializers with unique names, a
 * seeded random generator for weight initialization, and the ResNets of `qtune init`. */
#include "builder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/rng.h"
#include "schema.h"

#define NAME_MAX_LEN 256

/* ---- names ---- */

static int node_name_taken(const struct qt_graph *g, const char *name)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead && strcmp(g->nodes[i].name, name) == 0) return 1;
    return 0;
}

/* Writes `base`, or `base_k` for the first k that no live node uses, into buf. */
static void unique_node_name(const struct qt_graph *g, const char *base, char *buf, size_t n)
{
    snprintf(buf, n, "%s", base);
    for (int k = 1; node_name_taken(g, buf); k++) snprintf(buf, n, "%s_%d", base, k);
}

/* ---- generic pieces ---- */

int qt_builder_input(struct qt_graph *g, const char *name, enum qt_dtype dtype,
                     const struct qt_shape *shape)
{
    int v = qt_graph_add_value_unique(g, name, dtype, shape);
    g->values[v].flags |= QT_V_INPUT;
    g->inputs = realloc(g->inputs, sizeof(int) * (g->ninputs + 1));
    if (!g->inputs) abort();
    g->inputs[g->ninputs++] = v;
    return v;
}

int qt_builder_output(struct qt_graph *g, int v, const char *name, struct qt_error *e)
{
    if (v < 0 || v >= g->nvalues || g->values[v].dead)
        return qt_err(e, "graph output: value index %d does not exist", v);
    if (name && strcmp(g->values[v].name, name) != 0) {
        if (qt_graph_find_value(g, name) >= 0)
            return qt_err(e, "graph output '%s': another value already has that name", name);
        char *s = strdup(name);
        if (!s) abort();
        free(g->values[v].name);
        g->values[v].name = s;
    }
    for (int k = 0; k < g->noutputs; k++)
        if (g->outputs[k] == v) return 0;
    g->values[v].flags |= QT_V_OUTPUT;
    g->outputs = realloc(g->outputs, sizeof(int) * (g->noutputs + 1));
    if (!g->outputs) abort();
    g->outputs[g->noutputs++] = v;
    return 0;
}

int qt_builder_initializer(struct qt_graph *g, const char *base, enum qt_dtype dtype,
                           const struct qt_shape *shape, int flags)
{
    int v = qt_graph_add_value_unique(g, base, dtype, shape);
    g->values[v].init = qt_tensor_new(dtype, shape);
    g->values[v].flags |= flags;
    return v;
}

/* A float32 initializer "<scope>.<what>" of shape [n0] or [n0, n1, ...]. */
static int param(struct qt_graph *g, const char *scope, const char *what,
                 const struct qt_shape *shape, int flags)
{
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s.%s", scope, what);
    return qt_builder_initializer(g, name, QT_F32, shape, flags);
}

static void fill(struct qt_tensor *t, float v)
{
    float *p = t->data;
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++) p[i] = v;
}

/* Checks that x is a live value with a known shape of rank `rank` (0: any rank). */
static int check_input(const struct qt_graph *g, const char *layer, int x, int rank,
                       struct qt_error *e)
{
    if (x < 0 || x >= g->nvalues || g->values[x].dead)
        return qt_err(e, "layer '%s': input value index %d does not exist", layer, x);
    const struct qt_value *v = &g->values[x];
    if (!v->has_shape)
        return qt_err(e, "layer '%s': input '%s' has no known shape", layer, v->name);
    if (rank && v->shape.ndim != rank)
        return qt_err(e, "layer '%s': input '%s' has rank %d, expected %d", layer, v->name,
                      v->shape.ndim, rank);
    return 0;
}

/* Appends a node with a fresh output value "<node name>_out"; returns the node index. */
static int add_node(struct qt_graph *g, enum qt_op op, const char *name, const int *in, int nin)
{
    char nname[NAME_MAX_LEN], vname[NAME_MAX_LEN + 8];
    unique_node_name(g, name, nname, sizeof nname);
    snprintf(vname, sizeof vname, "%s_out", nname);
    int y = qt_graph_add_value_unique(g, vname, QT_UNDEF, NULL);
    return qt_graph_add_node(g, op, nname, in, nin, &y, 1);
}

/* Infers node ni's output shape; returns its output value or -1. */
static int finish(struct qt_graph *g, int ni, struct qt_error *e)
{
    if (qt_infer_node_static(g, ni, e)) return -1;
    int y = g->nodes[ni].out[0];
    if (!g->values[y].has_shape)
        return qt_err(e, "%s node '%s': output shape could not be inferred",
                      qt_op_name(g->nodes[ni].op), g->nodes[ni].name);
    return y;
}

static void set_window(struct qt_node *n, int k, int s, int pad)
{
    qt_node_set_ints(n, "kernel_shape", (int64_t[]){k, k}, 2);
    qt_node_set_ints(n, "strides", (int64_t[]){s, s}, 2);
    qt_node_set_ints(n, "pads", (int64_t[]){pad, pad, pad, pad}, 4);
}

/* ---- layers ---- */

int qt_builder_conv(struct qt_graph *g, const char *name, int x, int64_t cout, int k, int s,
                    int pad, int bias, struct qt_error *e)
{
    if (check_input(g, name, x, 4, e)) return -1;
    int64_t cin = g->values[x].shape.d[1];
    if (cin <= 0) return qt_err(e, "layer '%s': the input's channel count is not known", name);
    if (cout <= 0 || k <= 0 || s <= 0 || pad < 0)
        return qt_err(e, "layer '%s': bad convolution geometry (out channels %lld, kernel %d, "
                         "stride %d, padding %d)", name, (long long)cout, k, s, pad);
    struct qt_shape ws = {4, {cout, cin, k, k}}, bs = {1, {cout}};
    int in[3] = {x, param(g, name, "weight", &ws, QT_V_PARAM), -1};
    if (bias) in[2] = param(g, name, "bias", &bs, QT_V_PARAM);
    int ni = add_node(g, QT_OP_CONV, name, in, bias ? 3 : 2);
    struct qt_node *n = &g->nodes[ni];
    qt_node_set_ints(n, "dilations", (int64_t[]){1, 1}, 2);
    qt_node_set_int(n, "group", 1);
    set_window(n, k, s, pad);
    return finish(g, ni, e);
}

int qt_builder_batchnorm(struct qt_graph *g, const char *name, int x, struct qt_error *e)
{
    if (check_input(g, name, x, 0, e)) return -1;
    const struct qt_shape *xs = &g->values[x].shape;
    if (xs->ndim < 2 || xs->d[1] <= 0)
        return qt_err(e, "layer '%s': BatchNormalization needs an input with a known channel "
                         "dimension", name);
    struct qt_shape cs = {1, {xs->d[1]}};
    int in[5] = {x, param(g, name, "weight", &cs, QT_V_PARAM),
                 param(g, name, "bias", &cs, QT_V_PARAM),
                 param(g, name, "running_mean", &cs, QT_V_STATE),
                 param(g, name, "running_var", &cs, QT_V_STATE)};
    fill(g->values[in[1]].init, 1.0f);
    fill(g->values[in[4]].init, 1.0f);
    int ni = add_node(g, QT_OP_BATCHNORM, name, in, 5);
    qt_node_set_float(&g->nodes[ni], "epsilon", 1e-5f);
    qt_node_set_float(&g->nodes[ni], "momentum", 0.9f);
    return finish(g, ni, e);
}

int qt_builder_relu(struct qt_graph *g, const char *name, int x, struct qt_error *e)
{
    if (check_input(g, name, x, 0, e)) return -1;
    return finish(g, add_node(g, QT_OP_RELU, name, &x, 1), e);
}

int qt_builder_add(struct qt_graph *g, const char *name, int a, int b, struct qt_error *e)
{
    if (check_input(g, name, a, 0, e) || check_input(g, name, b, 0, e)) return -1;
    return finish(g, add_node(g, QT_OP_ADD, name, (int[]){a, b}, 2), e);
}

static int pool(struct qt_graph *g, enum qt_op op, const char *name, int x, int k, int s,
                int pad, struct qt_error *e)
{
    if (check_input(g, name, x, 4, e)) return -1;
    if (k <= 0 || s <= 0 || pad < 0 || pad >= k)
        return qt_err(e, "layer '%s': bad pooling geometry (kernel %d, stride %d, padding %d)",
                      name, k, s, pad);
    int ni = add_node(g, op, name, &x, 1);
    set_window(&g->nodes[ni], k, s, pad);
    qt_node_set_int(&g->nodes[ni], "ceil_mode", 0);
    return finish(g, ni, e);
}

int qt_builder_maxpool(struct qt_graph *g, const char *name, int x, int k, int s, int pad,
                       struct qt_error *e)
{
    return pool(g, QT_OP_MAXPOOL, name, x, k, s, pad, e);
}

int qt_builder_avgpool(struct qt_graph *g, const char *name, int x, int k, int s, int pad,
                       struct qt_error *e)
{
    return pool(g, QT_OP_AVGPOOL, name, x, k, s, pad, e);
}

int qt_builder_global_avgpool(struct qt_graph *g, const char *name, int x, struct qt_error *e)
{
    if (check_input(g, name, x, 0, e)) return -1;
    return finish(g, add_node(g, QT_OP_GLOBALAVGPOOL, name, &x, 1), e);
}

int qt_builder_flatten(struct qt_graph *g, const char *name, int x, struct qt_error *e)
{
    if (check_input(g, name, x, 0, e)) return -1;
    int ni = add_node(g, QT_OP_FLATTEN, name, &x, 1);
    qt_node_set_int(&g->nodes[ni], "axis", 1);
    return finish(g, ni, e);
}

int qt_builder_gemm(struct qt_graph *g, const char *name, int x, int64_t nout,
                    struct qt_error *e)
{
    if (check_input(g, name, x, 2, e)) return -1;
    int64_t nin = g->values[x].shape.d[1];
    if (nin <= 0) return qt_err(e, "layer '%s': the input's feature count is not known", name);
    if (nout <= 0) return qt_err(e, "layer '%s': output size %lld must be positive", name,
                                 (long long)nout);
    struct qt_shape ws = {2, {nout, nin}}, bs = {1, {nout}};
    int in[3] = {x, param(g, name, "weight", &ws, QT_V_PARAM),
                 param(g, name, "bias", &bs, QT_V_PARAM)};
    int ni = add_node(g, QT_OP_GEMM, name, in, 3);
    qt_node_set_float(&g->nodes[ni], "alpha", 1.0f);
    qt_node_set_float(&g->nodes[ni], "beta", 1.0f);
    qt_node_set_int(&g->nodes[ni], "transB", 1);
    return finish(g, ni, e);
}

static void fill_normal(struct qt_tensor *t, double std, struct qt_normal *r)
{
    float *p = t->data;
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(std * qt_normal_next(r));
}

static void fill_uniform(struct qt_tensor *t, double bound, struct qt_normal *r)
{
    float *p = t->data;
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(bound * (2.0 * qt_rng_uniform(&r->r) - 1.0));
}

/* ---- ResNets ---- */

/* BasicBlock: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input or a 1x1 conv + BN
 * projection of it, then ReLU. Node order follows PyTorch's export. */
static int basic_block(struct qt_graph *g, const char *scope, int x, int64_t cout, int stride,
                       struct qt_error *e)
{
    char nm[NAME_MAX_LEN];
    int64_t cin = g->values[x].shape.d[1];
#define SCOPED(suffix) (snprintf(nm, sizeof nm, "%s.%s", scope, suffix), nm)
    int y = qt_builder_conv(g, SCOPED("conv1"), x, cout, 3, stride, 1, 0, e);
    if (y < 0 || (y = qt_builder_batchnorm(g, SCOPED("bn1"), y, e)) < 0) return -1;
    if ((y = qt_builder_relu(g, SCOPED("relu1"), y, e)) < 0) return -1;
    if ((y = qt_builder_conv(g, SCOPED("conv2"), y, cout, 3, 1, 1, 0, e)) < 0) return -1;
    if ((y = qt_builder_batchnorm(g, SCOPED("bn2"), y, e)) < 0) return -1;
    int sc = x;
    if (stride != 1 || cin != cout) {
        if ((sc = qt_builder_conv(g, SCOPED("downsample.0"), x, cout, 1, stride, 0, 0, e)) < 0)
            return -1;
        if ((sc = qt_builder_batchnorm(g, SCOPED("downsample.1"), sc, e)) < 0) return -1;
    }
    if ((y = qt_builder_add(g, SCOPED("add"), y, sc, e)) < 0) return -1;
    y = qt_builder_relu(g, SCOPED("relu2"), y, e);
#undef SCOPED
    return y;
}

/* Stage `layer<idx>` of nblocks BasicBlocks; the first one has the given stride. */
static int stage(struct qt_graph *g, int idx, int x, int nblocks, int64_t cout, int stride,
                 struct qt_error *e)
{
    char scope[64];
    for (int b = 0; b < nblocks && x >= 0; b++) {
        snprintf(scope, sizeof scope, "layer%d.%d", idx, b);
        x = basic_block(g, scope, x, cout, b == 0 ? stride : 1, e);
    }
    return x;
}

/* Draws every Conv and Gemm weight (and Gemm bias) in node order. */
static void init_weights(struct qt_graph *g, int conv_fan_out, uint64_t seed)
{
    struct qt_normal r;
    qt_normal_seed(&r, seed);
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op == QT_OP_CONV) {
            struct qt_tensor *w = g->values[n->in[1]].init;
            int64_t k = w->shape.d[2] * w->shape.d[3];
            double fan = (double)(conv_fan_out ? w->shape.d[0] : w->shape.d[1]) * (double)k;
            fill_normal(w, sqrt(2.0 / fan), &r);
        } else if (n->op == QT_OP_GEMM) {
            struct qt_tensor *w = g->values[n->in[1]].init;
            double bound = 1.0 / sqrt((double)w->shape.d[1]);
            fill_uniform(w, bound, &r);
            if (n->nin > 2 && n->in[2] >= 0) fill_uniform(g->values[n->in[2]].init, bound, &r);
        }
    }
}

int qt_build_resnet(struct qt_graph **out, const char *arch, int c, int h, int w, int classes,
                    uint64_t seed, struct qt_error *e)
{
    *out = NULL;
    int depth = 0;
    if (!arch) arch = "";
    if (strcmp(arch, "resnet20") == 0) depth = 20;
    else if (strcmp(arch, "resnet32") == 0) depth = 32;
    else if (strcmp(arch, "resnet56") == 0) depth = 56;
    else if (strcmp(arch, "resnet18") == 0) depth = 18;
    else return qt_err(e, "unknown architecture '%s' (available: %s)", arch, QT_BUILD_RESNET_ARCHS);
    if (c < 1 || c > 4096)
        return qt_err(e, "%s: input channels %d out of range (1 to 4096)", arch, c);
    if (h < 8 || w < 8 || h > 16384 || w > 16384)
        return qt_err(e, "%s: input size %dx%d out of range (height and width 8 to 16384)", arch,
                      h, w);
    if (classes < 2 || classes > 1000000)
        return qt_err(e, "%s: %d classes out of range (2 to 1000000)", arch, classes);

    struct qt_graph *g = qt_graph_new();
    free(g->name);
    g->name = strdup(arch);
    if (!g->name) abort();
    struct qt_shape xs = {4, {qt_graph_sym(g, "N"), c, h, w}};
    int x = qt_builder_input(g, "input", QT_F32, &xs);

    if (depth != 18) {
        int n = (depth - 2) / 6;
        x = qt_builder_conv(g, "conv1", x, 16, 3, 1, 1, 0, e);
        if (x >= 0) x = qt_builder_batchnorm(g, "bn1", x, e);
        if (x >= 0) x = qt_builder_relu(g, "relu", x, e);
        if (x >= 0) x = stage(g, 1, x, n, 16, 1, e);
        if (x >= 0) x = stage(g, 2, x, n, 32, 2, e);
        if (x >= 0) x = stage(g, 3, x, n, 64, 2, e);
    } else {
        int small = h < 64 || w < 64;
        x = small ? qt_builder_conv(g, "conv1", x, 64, 3, 1, 1, 0, e)
                  : qt_builder_conv(g, "conv1", x, 64, 7, 2, 3, 0, e);
        if (x >= 0) x = qt_builder_batchnorm(g, "bn1", x, e);
        if (x >= 0) x = qt_builder_relu(g, "relu", x, e);
        if (x >= 0 && !small) x = qt_builder_maxpool(g, "maxpool", x, 3, 2, 1, e);
        if (x >= 0) x = stage(g, 1, x, 2, 64, 1, e);
        if (x >= 0) x = stage(g, 2, x, 2, 128, 2, e);
        if (x >= 0) x = stage(g, 3, x, 2, 256, 2, e);
        if (x >= 0) x = stage(g, 4, x, 2, 512, 2, e);
    }
    if (x >= 0) x = qt_builder_global_avgpool(g, "avgpool", x, e);
    if (x >= 0) x = qt_builder_flatten(g, "flatten", x, e);
    if (x >= 0) x = qt_builder_gemm(g, "fc", x, classes, e);
    if (x < 0 || qt_builder_output(g, x, "logits", e)) goto fail;
    qt_graph_set_meta(g, "qtune.arch", arch);
    if (qt_graph_compact(g, e) || qt_graph_verify(g, e) || qt_graph_infer_shapes(g, e))
        goto fail;
    init_weights(g, depth == 18, seed);
    *out = g;
    return 0;
fail:
    qt_err_prefix(e, "building %s: ", arch);
    qt_graph_free(g);
    return -1;
}
