/* The op schema table: each op's ONNX name, arity, attribute parsing and shape inference.
 * Shape inference works on symbolic shapes (load time) and concrete ones (run time). */
#ifndef QT_SCHEMA_H
#define QT_SCHEMA_H

#include "graph.h"

struct qt_infer_ctx {
    const struct qt_graph *g;
    const struct qt_node *n;
    const struct qt_shape *in;       /* shapes of the inputs (nin entries) */
    const enum qt_dtype *in_dtype;   /* dtypes of the inputs */
    const struct qt_tensor **in_val; /* constant or run-time values of small int inputs, or NULL */
    struct qt_shape *out;            /* filled: shapes of the outputs */
    enum qt_dtype *out_dtype;        /* filled: dtypes of the outputs */
};

struct qt_op_schema {
    enum qt_op op;
    const char *name;
    int min_in, max_in, min_out, max_out;
    /* Bit k set: input k's values (not only its shape) are needed to infer shapes. */
    unsigned value_inputs;
    int (*infer)(struct qt_infer_ctx *c, struct qt_error *e);
    const char *domain; /* NULL: the default ONNX domain; else QT_DOMAIN */
};

const struct qt_op_schema *qt_schema_get(enum qt_op op);
/* The op for an ONNX (domain, name) pair, or QT_OP_INVALID. */
enum qt_op qt_schema_lookup(const char *domain, const char *name);
const char *qt_op_name(enum qt_op op);

/* Infers one node's output shapes and dtypes. */
int qt_schema_infer(struct qt_infer_ctx *c, struct qt_error *e);

/* Infers node i's outputs from its inputs' stored shapes and constant values. Outputs stay
 * without a shape when an input's shape or a shape-determining value is only known at run
 * time (the executor infers those per run). */
int qt_infer_node_static(struct qt_graph *g, int i, struct qt_error *e);
/* Runs inference over the whole graph (symbolic batch kept), storing shapes in values;
 * checks arity, dtypes and shape consistency. Messages name the node. */
int qt_graph_infer_shapes(struct qt_graph *g, struct qt_error *e);
/* Structural checks: each value produced once, inputs defined, topological order, arity. */
int qt_graph_verify(const struct qt_graph *g, struct qt_error *e);

/* Slice's per-dimension start and step over input shape x (ONNX Slice, opset 1 attributes or
 * opset 10+ inputs in vals[1..4], which must be known): out receives the output shape.
 * Returns 0, or -1 with a message naming the node. */
int qt_slice_plan(const struct qt_node *n, const struct qt_shape *x, const struct qt_tensor **vals,
                  int64_t *start, int64_t *step, struct qt_shape *out, struct qt_error *e);

/* Transpose's permutation for an input of rank r: the perm attribute (default: the dims
 * reversed), checked to hold each of 0..r-1 once. Returns 0, or -1 with a message naming the
 * node. */
int qt_transpose_perm(const struct qt_node *n, int r, int *perm, struct qt_error *e);

/* Numpy-style broadcast of two shapes; -1 when they do not broadcast. */
int qt_broadcast_shape(struct qt_shape *out, const struct qt_shape *a, const struct qt_shape *b);
/* Element strides of a tensor of shape s read over the broadcast shape o (0 where s
 * broadcasts): st has o->ndim entries. */
void qt_broadcast_strides(int64_t *st, const struct qt_shape *s, const struct qt_shape *o);

/* Parsed attributes shared by shape inference and the kernels' dispatch. */
struct qt_conv_attrs {
    int nsp;                  /* spatial dims: 1..3 */
    int64_t kernel[3], stride[3], dilation[3], pad_begin[3], pad_end[3];
    int64_t group;
};
/* x: input shape, w: weight shape (may be NULL for pools, which pass kernel_shape). */
int qt_conv_attrs_get(const struct qt_node *n, const struct qt_shape *x, const struct qt_shape *w,
                      struct qt_conv_attrs *a, struct qt_error *e, const char *what);

/* Pad's amounts (the begin of every axis, then the ends): the pads attribute (opsets below
 * 11) or the values of input 1 (t; NULL when they are not known). Returns their count, -1
 * when there are none, -2 when there are more than 2 * QT_MAX_DIMS. */
int qt_pad_amounts(const struct qt_node *n, const struct qt_tensor *t, int64_t *pads);
/* Pad's constant: input 2's first value (t, may be NULL), else the value attribute (0). */
double qt_pad_value(const struct qt_node *n, const struct qt_tensor *t);

struct qt_pool_attrs {
    struct qt_conv_attrs c;
    int ceil_mode;
    int count_include_pad;
};
int qt_pool_attrs_get(const struct qt_node *n, const struct qt_shape *x, struct qt_pool_attrs *a,
                      struct qt_error *e, const char *what);
/* Output spatial size of a window op. */
int64_t qt_window_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe,
                      int ceil_mode);

/* ---- qtune's fake-quantizer ops (domain ai.qtune) ----
 * WeightQuant(W, alpha) -> Wq and ActQuant(A, alpha) -> Aq, attributes:
 *   scheme  "apot" | "uniform"
 *   bits    total bits (2..8 signed, 1..8 unsigned; apot signed up to 6, unsigned up to 5)
 *   signed  1 for weights; activations: 0 after a ReLU, 1 where the producer can be negative
 *   standardize (WeightQuant) 1: weights standardized per tensor before quantizing (default);
 *               2: standardized, quantized, then mapped back: Wq = sigma * alpha * q + mu
 *               (post-training quantization); 0: not standardized
 * alpha holds one value, or (uniform WeightQuant only) one per output channel.
 * WeightQuant with scheme "max" or "absmax" is the 8-bit first/last layer quantizer:
 *   no alpha input; Wq = round(W / m * 127) / 127 * m with m = max(W) or max |W|. */
enum qt_quant_scheme_attr { QT_QS_APOT = 0, QT_QS_UNIFORM = 1, QT_QS_MAX = 2, QT_QS_ABSMAX = 3 };
struct qt_quant_attrs {
    int scheme;      /* enum qt_quant_scheme_attr */
    int bits;
    int is_signed;
    int standardize; /* WeightQuant only */
};
/* Parses and checks a WeightQuant/ActQuant node's attributes (message names the node). */
int qt_quant_attrs_get(const struct qt_node *n, struct qt_quant_attrs *a, struct qt_error *e);
/* Checks settings for a quantizer node of op `op` named `name` (bits -1: not set, allowed for
 * the 8-bit schemes only); qt_quant_attrs_get ends with it, the quantize pass calls it before
 * inserting anything. */
int qt_quant_attrs_check(const struct qt_quant_attrs *a, enum qt_op op, const char *name,
                         struct qt_error *e);
const char *qt_quant_scheme_name(int scheme);

#endif
