/* The executor: forward evaluation of a graph on a backend. */
#ifndef QT_EXEC_H
#define QT_EXEC_H

#include "../graph/graph.h"
#include "backend.h"

struct qt_exec;

/* The graph must stay alive and unchanged while the executor exists. */
struct qt_exec *qt_exec_new(struct qt_graph *g, struct qt_backend *b, struct qt_error *e);
void qt_exec_free(struct qt_exec *x);
/* inputs[k] (host memory) feeds graph input k; shapes are checked against the model's. */
int qt_exec_forward(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e);
/* Graph output k of the last run (backend memory; host memory on the CPU backend). */
const struct qt_tensor *qt_exec_output(const struct qt_exec *x, int k);

#endif
