/* Reference evaluation of data-movement and small arithmetic ops on host tensors
 * (any dtype): constant folding, run-time shape computations and the executor's host-routed
 * nodes use it. */
#ifndef QT_EVAL_H
#define QT_EVAL_H

#include "graph.h"

/* Whether qt_eval_node computes this op for a first input of type in0. */
int qt_eval_handles(const struct qt_node *n, enum qt_dtype in0);
/* Computes the node's outputs into out[] (allocated by the caller with inferred shapes;
 * out[k] may be NULL for an unused optional output). in[k] is NULL for omitted inputs. */
int qt_eval_node(const struct qt_node *n, const struct qt_tensor **in, struct qt_tensor **out,
                 struct qt_error *e);

#endif
