/* Lowering: from graph nodes (attributes, opset rules, constants) to the op descriptions of
 * kernels/common/desc.h that backends compute. The only place where a node's attributes are
 * read for execution; backends never see the graph. */
#ifndef QT_LOWER_H
#define QT_LOWER_H

#include "../graph/graph.h"
#include "../kernels/common/desc.h"

enum { QT_LOWER_BACKEND = 0, QT_LOWER_HOST = 1 };

/* Describes node n of g for its run-time inputs in[] (dtype and concrete shape; the data of
 * non-float values, which live on the host, may be read) and outputs out[] (shapes inferred).
 * Returns QT_LOWER_BACKEND with d filled; QT_LOWER_HOST when the node computes on the host
 * (non-float data, an op that only the host evaluator graph/eval.c computes, such as Abs,
 * Where or ReduceSum, or a setting that is only known from run-time float data, such as Clip
 * bounds that are not constants); or -1 with a message naming the node. */
int qt_lower_node(struct qt_op_desc *d, const struct qt_graph *g, const struct qt_node *n,
                  const struct qt_tensor *const *in, const struct qt_tensor *const *out,
                  struct qt_error *e);

/* What can be told before any run from the graph alone, for planning fusion: the kind, and
 * for Add/Sub/Mul/Div the op and whether both operands have one fully known shape. Returns
 * QT_LOWER_BACKEND or QT_LOWER_HOST (d->kind QT_K_NONE). */
int qt_lower_static(struct qt_op_desc *d, const struct qt_graph *g, const struct qt_node *n);

/* The activation view [n, c, h, w] of a 3-D ([n, c, w], h = 1) or 4-D shape for layout
 * conversions; returns 0 for other ranks. */
int qt_lower_act_dims(int64_t dims[4], const struct qt_shape *s);

#endif
