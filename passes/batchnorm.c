/* BatchNorm folding for inference: a BatchNormalization that follows a Conv (whose output
 * nothing else reads) is folded into the Conv's weight and bias:
 *   s = scale / sqrt(var + eps),  w' = w * s[k],  b' = (b - mean) * s + bias. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../graph/schema.h"
#include "passes.h"

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
        int64_t kout = w->shape.d[0];
        if (!ok || qt_shape_numel(&p[0]->shape) != kout) continue;
        const float *scale = p[0]->data, *bias = p[1]->data, *mean = p[2]->data, *var = p[3]->data;
        float eps = qt_node_float(bn, "epsilon", 1e-5f);
        struct qt_tensor *nw = qt_tensor_clone(w);
        struct qt_shape bs = {1, {kout}};
        struct qt_tensor *nb = qt_tensor_new(QT_F32, &bs);
        int64_t per = qt_shape_numel(&w->shape) / kout;
        for (int64_t k = 0; k < kout; k++) {
            double s = scale[k] / sqrt((double)var[k] + eps);
            for (int64_t j = 0; j < per; j++) ((float *)nw->data)[k * per + j] = (float)(((float *)w->data)[k * per + j] * s);
            double b0 = b ? ((const float *)b->data)[k] : 0.0;
            ((float *)nb->data)[k] = (float)((b0 - mean[k]) * s + bias[k]);
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
