/* The executor: forward and backward evaluation of a graph on a backend. The graph's float
 * initializers are copied into backend memory when the executor is made; training updates
 * them there, and qt_exec_sync_state brings them back into the graph. */
#ifndef QT_EXEC_H
#define QT_EXEC_H

#include "../graph/graph.h"
#include "backend.h"

struct qt_exec;

/* The graph must stay alive and unchanged while the executor exists. */
struct qt_exec *qt_exec_new(struct qt_graph *g, struct qt_backend *b, struct qt_error *e);
void qt_exec_free(struct qt_exec *x);
/* inputs[k] (host memory) feeds graph input k; shapes are checked against the model's.
 * Inference: BatchNorm uses running statistics; see qt_exec_set_mode. */
int qt_exec_forward(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e);
/* How qt_exec_forward runs. QT_EXEC_FAST (the default): where the backend offers it, values
 * between its kernels stay in the backend's own layouts and elementwise nodes run fused into
 * the kernel before them (Conv followed by Add and Relu on the CPU); graph outputs are plain.
 * QT_EXEC_PLAIN: every node on its own, every value plain (the reference the fast path is
 * tested against). Training runs are always plain. */
enum qt_exec_mode { QT_EXEC_FAST = 0, QT_EXEC_PLAIN = 1 };
void qt_exec_set_mode(struct qt_exec *x, enum qt_exec_mode mode);
/* Training forward: BatchNorm in batch-statistics mode (running statistics updated in backend
 * memory), every value kept for the backward pass. */
int qt_exec_forward_train(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e);
/* The logits: what a classifier's loss reads and training differentiates. Graph output 0,
 * except when a Softmax or LogSoftmax over the last axis of a [N, classes] output 0 produces
 * it (Keras models end in Softmax): then that op's input. Inference still computes the graph's outputs
 * as they are; the logits are kept (and plain) after every run like an output. */
const struct qt_tensor *qt_exec_logits(const struct qt_exec *x);
/* The gradient buffer of the logits for this step (backend memory, their size), after a
 * training forward: fill it (the loss op writes it), then call qt_exec_backward with dy
 * NULL. */
float *qt_exec_output_grad(struct qt_exec *x, struct qt_error *e);
/* Backward from dy, the gradient of the logits (host memory; NULL: the buffer of
 * qt_exec_output_grad, already filled), after a training forward. Afterwards qt_exec_grad
 * gives each parameter's gradient (QT_V_PARAM values). */
int qt_exec_backward(struct qt_exec *x, const struct qt_tensor *dy, struct qt_error *e);
/* Gradient of value v from the last backward (backend memory), or NULL when none reached it. */
const float *qt_exec_grad(const struct qt_exec *x, int v);
/* Keeps every value of the next plain (QT_EXEC_PLAIN) inference runs until the following
 * run, so that qt_exec_value can read them (calibration); 0 restores releasing. */
void qt_exec_keep_values(struct qt_exec *x, int keep);
/* The tensor of value v from the last run (backend memory), or NULL when not held: a
 * training forward holds every value, an inference run only with qt_exec_keep_values. */
const struct qt_tensor *qt_exec_value(const struct qt_exec *x, int v);
/* Graph output k of the last run (dtype and shape; float data in backend memory). */
const struct qt_tensor *qt_exec_output(const struct qt_exec *x, int k);
/* Copies n floats of backend memory at src (an output, value or gradient) to host dst. */
int qt_exec_read(const struct qt_exec *x, const float *src, float *dst, int64_t n,
                 struct qt_error *e);
/* The backend buffer of initializer v (a parameter or training state), or NULL. */
float *qt_exec_param(const struct qt_exec *x, int v);
/* Named synchronization of the state: sync_state copies every float initializer from
 * backend memory into the graph (before saving a model or a checkpoint); load_state copies
 * the graph's values into backend memory (after the graph's initializers changed). */
int qt_exec_sync_state(struct qt_exec *x, struct qt_error *e);
int qt_exec_load_state(struct qt_exec *x, struct qt_error *e);
/* Lowers every node again on the next run (after a node's attributes changed). */
void qt_exec_invalidate(struct qt_exec *x);

#endif
