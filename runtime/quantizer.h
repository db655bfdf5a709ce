/* From a WeightQuant/ActQuant node to the kernels' description of its level grid: the one
 * place that maps the IR's quantizer attributes onto kernels/common/apot.h. */
#ifndef QT_QUANTIZER_H
#define QT_QUANTIZER_H

#include "../graph/schema.h"
#include "../kernels/common/apot.h"

/* Parses node n's settings into a and, for the APoT and uniform schemes, builds the level grid
 * into qz (qz->n = 0 for the 8-bit max/absmax weights, which have none). Returns 0, or -1
 * with a message naming the node. */
int qt_quantizer_from_node(struct qt_quant_attrs *a, struct qt_apot_quantizer *qz,
                           const struct qt_node *n, struct qt_error *e);

/* A quantizer as inspect lists it. For a weight quantizer with a level grid, share[k] is the
 * fraction of weights on signed level k of lv (2n - 1 levels, ascending, alpha units). */
struct qt_quant_info {
    struct qt_quant_attrs a;
    int nalpha;
    float alpha0;         /* first alpha (8-bit: the scale m) */
    int nlv;              /* levels listed (0: none) */
    float lv[2 * QT_APOT_MAX_LEVELS];
    double share[2 * QT_APOT_MAX_LEVELS];
    int used;             /* distinct levels in use (weights) */
};

/* Describes quantizer node n of g from its initializers (host memory): settings, alpha and,
 * for weights, the share of weights on each level (computed with the CPU kernels, the same
 * projection training uses). Returns 0, or -1 with e set on bad attributes. */
int qt_quantizer_info(const struct qt_graph *g, const struct qt_node *n, struct qt_quant_info *qi,
                      struct qt_error *e);

#endif
