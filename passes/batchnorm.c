/* BatchNorm folding for inference: a BatchNormalization that follows a Conv (whose output
 * nothing else reads) is folded into the Conv's weight and bias:
 *   s = scale / sqrt(var + eps),  w' = w * s[k],  b' = (b - mean) * s + bias. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "passes.h"

double qt_bn_fold_channel(const struct qt_tensor *const p[4], float eps, const float *b, int64_t k,
                          float *bias_out)
{
    const float *scale = p[0]->data, *bias = p[1]->data, *mean = p[2]->data, *var = p[3]->data;
    const double s = scale[k] / sqrt((double)var[k] + eps);
    *bias_out = (float)(((b ? (double)b[k] : 0.0) - mean[k]) * s + bias[k]);
    return s;
}

int qt_pass_fold_batchnorm(struct qt_graph *g, struct qt_error *e)
{
    int folded = 0;
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *bn = &g->nodes[i];
        if (bn->dead || bn->op != QT_OP_BATCHNORM || bn->nout != 1) continue;
        int y = bn->in[0];
        int ci = g->values[y].producer;
        if (ci < 0 || (g->values[y].flags & QT_V_OUTPUT) || qt_graph_use_count(g, y) != 1) continue;
        struct qt_node *conv = &g->nodes[ci];
        if (conv->op != QT_OP_CONV || conv->nout != 1) continue;
        const struct qt_tensor *w = g->values[conv->in[1]].init;
        const struct qt_tensor *b = conv->nin > 2 && conv->in[2] >= 0 ? g->values[conv->in[2]].init : NULL;
        if (!w || w->dtype != QT_F32 || (conv->nin > 2 && conv->in[2] >= 0 && !b)) continue;
        const struct qt_tensor *p[4];
        int ok = 1;
        for (int k = 0; k < 4; k++) {
            p[k] = g->values[bn->in[1 + k]].init;
            ok &= p[k] && p[k]->dtype == QT_F32;
        }
        if (!ok) continue;
        /* Every per-channel tensor must hold one value per output channel of the Conv. */
        int64_t kout = w->shape.ndim ? w->shape.d[0] : 0;
        static const char *const what[4] = {"scale", "bias", "mean", "variance"};
        char d1[160], d2[160];
        if (kout < 1 || qt_shape_numel(&w->shape) % kout)
            return qt_err(e, "%s: weight has no output channels to fold %s into",
                          qt_node_desc(g, conv, d1, sizeof d1), qt_node_desc(g, bn, d2, sizeof d2));
        for (int k = 0; k < 4; k++)
            if (qt_shape_numel(&p[k]->shape) != kout)
                return qt_err(e, "%s: %s has %lld values for %lld channels of %s",
                              qt_node_desc(g, bn, d1, sizeof d1), what[k],
                              (long long)qt_shape_numel(&p[k]->shape), (long long)kout,
                              qt_node_desc(g, conv, d2, sizeof d2));
        if (b && qt_shape_numel(&b->shape) != kout)
            return qt_err(e, "%s: bias has %lld values for %lld output channels",
                          qt_node_desc(g, conv, d1, sizeof d1),
                          (long long)qt_shape_numel(&b->shape), (long long)kout);
        float eps = qt_node_float(bn, "epsilon", 1e-5f);
        struct qt_tensor *nw = qt_tensor_clone(w);
        struct qt_shape bs = {1, {kout}};
        struct qt_tensor *nb = qt_tensor_new(QT_F32, &bs);
        int64_t per = qt_shape_numel(&w->shape) / kout;
        for (int64_t k = 0; k < kout; k++) {
            const double s = qt_bn_fold_channel(p, eps, b ? b->data : NULL, k, (float *)nb->data + k);
            for (int64_t j = 0; j < per; j++) ((float *)nw->data)[k * per + j] = (float)(((float *)w->data)[k * per + j] * s);
        }
        char name[300];
        snprintf(name, sizeof name, "%s_folded_w", conv->name);
        int wv = qt_graph_add_value_unique(g, name, QT_F32, &nw->shape);
        snprintf(name, sizeof name, "%s_folded_b", conv->name);
        int bv = qt_graph_add_value_unique(g, name, QT_F32, &bs);
        g->values[wv].init = nw;
        g->values[bv].init = nb;
        conv = &g->nodes[ci];
        bn = &g->nodes[i];
        int in[3] = {conv->in[0], wv, bv};
        int out = bn->out[0];
        /* The Conv now writes the BatchNorm's output value. */
        struct qt_node *nc = conv;
        if (nc->nin < 3) {
            int *grown = realloc(nc->in, sizeof(int) * 3);
            if (!grown) return qt_err(e, "out of memory folding '%s'", bn->name);
            nc->in = grown;
            nc->nin = 3;
        }
        for (int k = 0; k < 3; k++) nc->in[k] = in[k];
        nc->out[0] = out;
        g->values[out].producer = ci;
        bn->dead = 1;
        folded++;
    }
    if (!folded) return 0;
    if (qt_graph_compact(g, e)) return -1;
    return qt_graph_infer_shapes(g, e);
}

/* ---- Unfolding ---- */

static int add_vec(struct qt_graph *g, const char *base, const char *suffix, const double *v,
                   int64_t n)
{
    char name[512];
    snprintf(name, sizeof name, "%s.%s", base, suffix);
    struct qt_shape s = {1, {n}};
    int id = qt_graph_add_value_unique(g, name, QT_F32, &s);
    g->values[id].init = qt_tensor_new(QT_F32, &s);
    for (int64_t k = 0; k < n; k++) ((float *)g->values[id].init->data)[k] = (float)v[k];
    return id;
}

/* The per-channel values of constant c against an input of rank r: C values along axis 1
 * (c's shape, aligned to the right against r dimensions, is 1 everywhere else), or NULL. */
static const float *channel_const(const struct qt_graph *g, int c, int r, int64_t C)
{
    const struct qt_tensor *t = c >= 0 ? g->values[c].init : NULL;
    if (!t || t->dtype != QT_F32 || t->shape.ndim > r || r < 3 || qt_shape_numel(&t->shape) != C)
        return NULL;
    for (int k = 0; k < t->shape.ndim; k++) {
        const int axis = r - t->shape.ndim + k;
        if (t->shape.d[k] != (axis == 1 ? C : 1)) return NULL;
    }
    if (t->shape.ndim < r - 1) return NULL; /* the channel axis must be in it */
    return t->data;
}

/* A Mul by a per-channel constant whose output only an Add of a per-channel constant reads
 * (a BatchNorm written as its inference arithmetic, as tf2onnx writes Keras' pre-activation
 * BatchNorms) becomes a BatchNormalization: scale s, bias b, mean 0, var 1 - eps, the same
 * function. Returns the node's index, or -1 when node i is not such a Mul. */
static int affine_to_batchnorm(struct qt_graph *g, int i, float eps)
{
    const struct qt_node *mul = &g->nodes[i];
    if (mul->dead || mul->op != QT_OP_MUL || mul->nout != 1) return -1;
    for (int k = 0; k < 2; k++) {
        const int x = mul->in[k], sv = mul->in[1 - k];
        const struct qt_value *xv = &g->values[x];
        if (xv->init || !xv->has_shape || xv->shape.ndim < 3 || xv->shape.d[1] < 1) continue;
        const int r = xv->shape.ndim;
        const int64_t C = xv->shape.d[1];
        const float *s = channel_const(g, sv, r, C);
        const int m = mul->out[0], ai = qt_graph_first_consumer(g, m);
        if (!s || ai < 0 || qt_graph_use_count(g, m) != 1 || (g->values[m].flags & QT_V_OUTPUT) ||
            g->nodes[ai].op != QT_OP_ADD || g->nodes[ai].nout != 1)
            continue;
        const struct qt_node *add = &g->nodes[ai];
        const int bv = add->in[0] == m ? add->in[1] : add->in[0];
        const float *b = channel_const(g, bv, r, C);
        if (!b) continue;
        double *sc = malloc(sizeof(double) * C), *bi = malloc(sizeof(double) * C);
        double *mean = calloc(C, sizeof(double)), *var = malloc(sizeof(double) * C);
        for (int64_t c = 0; c < C; c++) {
            sc[c] = s[c];
            bi[c] = b[c];
            var[c] = 1.0 - eps;
        }
        char base[300], name[512];
        snprintf(base, sizeof base, "%s", mul->name);
        const int in[5] = {x, add_vec(g, base, "bn_scale", sc, C), add_vec(g, base, "bn_bias", bi, C),
                           add_vec(g, base, "bn_mean", mean, C), add_vec(g, base, "bn_var", var, C)};
        free(sc);
        free(bi);
        free(mean);
        free(var);
        const int y = g->nodes[ai].out[0];
        g->nodes[i].dead = 1;
        g->nodes[ai].dead = 1;
        snprintf(name, sizeof name, "%s.bn", base);
        for (int j = 1; qt_graph_find_node(g, name) >= 0; j++)
            snprintf(name, sizeof name, "%s.bn_%d", base, j);
        const int n = qt_graph_add_node(g, QT_OP_BATCHNORM, name, in, 5, &y, 1);
        qt_node_set_float(&g->nodes[n], "epsilon", eps);
        qt_node_set_float(&g->nodes[n], "momentum", 0.9f);
        return n;
    }
    return -1;
}

int qt_pass_unfold_batchnorm(struct qt_graph *g, int **bn, int *count, struct qt_error *e)
{
    *count = 0;
    if (bn) *bn = NULL;
    char **added = NULL; /* names of the inserted nodes */
    const float eps = 1e-5f;
    int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        struct qt_node *conv = &g->nodes[i];
        if (conv->dead || conv->op != QT_OP_CONV || conv->nout != 1) continue;
        const struct qt_tensor *w = g->values[conv->in[1]].init;
        if (!w || w->dtype != QT_F32 || w->shape.ndim < 3) continue;
        int y = conv->out[0];
        int r = qt_graph_first_consumer(g, y);
        if (r >= 0 && g->nodes[r].op == QT_OP_BATCHNORM && qt_graph_use_count(g, y) == 1) continue;
        const struct qt_tensor *b =
            conv->nin > 2 && conv->in[2] >= 0 ? g->values[conv->in[2]].init : NULL;
        if (conv->nin > 2 && conv->in[2] >= 0 && !b) continue; /* computed bias: leave alone */
        int64_t kout = w->shape.d[0], per = qt_shape_numel(&w->shape) / kout;
        /* The std of He initialization: the scale SGD's learning rate is tuned for (with
         * standardized weights the gradient scales with 1 / std, so weights of std 1 would
         * barely move). */
        const double target = sqrt(2.0 / (double)per);
        struct qt_tensor *nw = qt_tensor_clone(w);
        double *scale = malloc(sizeof(double) * kout), *bias = malloc(sizeof(double) * kout);
        double *mean = calloc(kout, sizeof(double)), *var = malloc(sizeof(double) * kout);
        for (int64_t k = 0; k < kout; k++) {
            const float *wk = (const float *)w->data + k * per;
            double m = 0, s2 = 0;
            for (int64_t j = 0; j < per; j++) m += wk[j];
            m /= (double)per;
            for (int64_t j = 0; j < per; j++) s2 += (wk[j] - m) * (wk[j] - m);
            double sd = per > 1 ? sqrt(s2 / (double)(per - 1)) : 0.0;
            if (!(sd > 0) || !isfinite(sd)) sd = target;
            sd /= target;
            for (int64_t j = 0; j < per; j++) ((float *)nw->data)[k * per + j] = (float)(wk[j] / sd);
            scale[k] = sd;
            bias[k] = b ? ((const float *)b->data)[k] : 0.0;
            var[k] = 1.0 - eps;
        }
        char base[300];
        snprintf(base, sizeof base, "%s", conv->name);
        char name[512];
        snprintf(name, sizeof name, "%s.unfolded_w", base);
        int wv = qt_graph_add_value_unique(g, name, QT_F32, &nw->shape);
        g->values[wv].init = nw;
        int in[5] = {-1, add_vec(g, base, "bn_scale", scale, kout),
                     add_vec(g, base, "bn_bias", bias, kout), add_vec(g, base, "bn_mean", mean, kout),
                     add_vec(g, base, "bn_var", var, kout)};
        free(scale);
        free(bias);
        free(mean);
        free(var);
        snprintf(name, sizeof name, "%s.pre_bn", base);
        struct qt_shape ys = g->values[y].shape;
        int nyv = qt_graph_add_value_unique(g, name, QT_F32, g->values[y].has_shape ? &ys : NULL);
        conv = &g->nodes[i];
        conv->in[1] = wv;
        if (conv->nin > 2) conv->in[2] = -1;
        conv->nin = 2;
        conv->out[0] = nyv;
        g->values[nyv].producer = i;
        in[0] = nyv;
        snprintf(name, sizeof name, "%s.bn", base);
        for (int k = 1; qt_graph_find_node(g, name) >= 0; k++)
            snprintf(name, sizeof name, "%s.bn_%d", base, k);
        int bi = qt_graph_add_node(g, QT_OP_BATCHNORM, name, in, 5, &y, 1);
        qt_node_set_float(&g->nodes[bi], "epsilon", eps);
        qt_node_set_float(&g->nodes[bi], "momentum", 0.9f);
        added = realloc(added, sizeof *added * (*count + 1));
        added[(*count)++] = strdup(name);
    }
    for (int i = 0; i < nn; i++) {
        const int n = affine_to_batchnorm(g, i, eps);
        if (n < 0) continue;
        added = realloc(added, sizeof *added * (*count + 1));
        added[(*count)++] = strdup(g->nodes[n].name);
    }
    int rc = qt_graph_compact(g, e);
    /* Compaction reorders nodes: the inserted ones are found again by their (unique) names. */
    if (!rc && bn && *count) {
        *bn = malloc(sizeof(int) * *count);
        for (int j = 0; j < *count; j++) (*bn)[j] = qt_graph_find_node(g, added[j]);
    }
    for (int j = 0; j < *count; j++) free(added[j]);
    free(added);
    return rc;
}
