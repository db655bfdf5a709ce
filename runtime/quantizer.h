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

#endif
