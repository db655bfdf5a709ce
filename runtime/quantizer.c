/* Quantizer nodes to kernel quantizer descriptions (see quantizer.h). */
#include "quantizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/quant.h"
#include "../passes/passes.h"

int qt_quantizer_from_node(struct qt_quant_attrs *a, struct qt_apot_quantizer *qz,
                           const struct qt_node *n, struct qt_error *e)
{
    qz->n = 0;
    if (qt_quant_attrs_get(n, a, e)) return -1;
    if (a->scheme >= QT_QS_MAX) return 0;
    int rc = qt_apot_quantizer_init(
        qz, a->scheme == QT_QS_APOT ? QT_SCHEME_APOT : QT_SCHEME_UNIFORM, a->bits, a->is_signed);
    if (rc)
        return qt_err(e, "%s node '%s': %s", qt_op_name(n->op), n->name, qt_apot_error_string(rc));
    return 0;
}


int qt_quantizer_info(const struct qt_graph *g, const struct qt_node *n, struct qt_quant_info *qi,
                      struct qt_error *e)
{
    memset(qi, 0, sizeof *qi);
    struct qt_apot_quantizer qz;
    if (qt_quantizer_from_node(&qi->a, &qz, n, e)) return -1;
    const struct qt_tensor *al = n->nin > 1 && n->in[1] >= 0 ? g->values[n->in[1]].init : NULL;
    if (al && al->dtype == QT_F32) {
        qi->nalpha = (int)qt_shape_numel(&al->shape);
        qi->alpha0 = ((const float *)al->data)[0];
    }
    const struct qt_tensor *w = g->values[n->in[0]].init;
    if (n->op != QT_OP_WEIGHTQUANT || !w || w->dtype != QT_F32) return 0;
    int64_t cnt = qt_shape_numel(&w->shape);
    float *wq = malloc(sizeof(float) * (cnt ? cnt : 1));
    float st[2] = {0, 1};
    if (qi->a.scheme >= QT_QS_MAX) {
        quant_int8_weight_forward_cpu(wq, st, w->data, qi->a.scheme == QT_QS_ABSMAX, cnt);
        qi->alpha0 = st[0];
        /* 8-bit: count the distinct steps in use. */
        char seen[4096] = {0};
        for (int64_t i = 0; i < cnt; i++) {
            long k = st[0] ? lrintf(wq[i] / st[0] * 127.0f) : 0;
            if (k >= -2047 && k <= 2047 && !seen[k + 2047]) seen[k + 2047] = 1, qi->used++;
        }
        free(wq);
        return 0;
    }
    if (!al || cnt % qi->nalpha) {
        free(wq);
        return 0;
    }
    quant_weight_forward_cpu(wq, st, st + 1, w->data, al->data, qi->nalpha, qi->a.standardize, &qz, cnt);
    qi->nlv = qt_apot_signed_levels(qi->lv, &qz);
    int64_t per = cnt / qi->nalpha;
    for (int64_t i = 0; i < cnt; i++) {
        /* the level the kernels' projection picks for x (mu and sigma as the forward had them) */
        const float x = qt_apot_weight_x(((const float *)w->data)[i], st[0], st[1],
                                         ((const float *)al->data)[i / per]);
        const float m = fabsf(x) > 1.0f ? 1.0f : fabsf(x);
        const int k = qt_apot_nearest_index(m, qz.thr, qz.n);
        qi->share[qz.n - 1 + (x < 0 && k ? -k : k)] += 1.0 / (double)cnt;
    }
    for (int k = 0; k < qi->nlv; k++) qi->used += qi->share[k] > 0;
    free(wq);
    return 0;
}


int qt_weight_memory(const struct qt_graph *g, struct qt_weight_memory *m, struct qt_error *e)
{
    memset(m, 0, sizeof *m);
    if (!(m->layer = calloc(g->nnodes + 1, sizeof *m->layer)))
        return qt_err(e, "out of memory measuring the weight memory");
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        const int v = qt_layer_weight(g, n, 1);
        if (v < 0) continue;
        const struct qt_value *w = &g->values[v];
        const struct qt_node *q = v != n->in[1] ? &g->nodes[g->values[n->in[1]].producer] : NULL;
        struct qt_weight_layer *l = &m->layer[m->n++];
        l->node = i;
        l->count = qt_shape_numel(&w->init->shape);
        l->bits = 32;
        l->bytes = 4 * l->count;
        if (q) {
            struct qt_quant_attrs a;
            struct qt_apot_quantizer qz;
            if (qt_quantizer_from_node(&a, &qz, q, e)) {
                qt_weight_memory_free(m);
                return -1;
            }
            l->bits = a.bits;
            l->bytes = qz.n ? qt_export_code_bytes(2 * qz.n - 1, l->count, NULL) : l->count;
        }
        m->count += l->count;
        m->bit_count += l->count * l->bits;
        m->bytes += l->bytes;
        m->fp32_bytes += 4 * l->count;
    }
    return 0;
}

void qt_weight_memory_free(struct qt_weight_memory *m)
{
    free(m->layer);
    memset(m, 0, sizeof *m);
}
