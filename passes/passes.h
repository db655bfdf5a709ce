/* Graph passes; each rewrites the IR in place and reports failures by node name. */
#ifndef QT_PASSES_H
#define QT_PASSES_H

#include "../graph/graph.h"

/* Constant nodes to initializers, Identity/Dropout removed, constant and shape subgraphs
 * folded, zero Pad merged into Conv/pools; ends with verification and shape inference. */
int qt_pass_canonicalize(struct qt_graph *g, struct qt_error *e);

/* Folds each inference BatchNormalization that follows a Conv into the Conv's weight and
 * bias (for evaluation and inference runs; training keeps BatchNorm). */
int qt_pass_fold_batchnorm(struct qt_graph *g, struct qt_error *e);

#endif
