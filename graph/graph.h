/* qtune's graph IR: tensors, values, nodes, attributes and the graph that owns them.
 * The IR knows nothing of protobuf; onnx/ converts ModelProto to and from it. */
#ifndef QT_GRAPH_H
#define QT_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "../util/error.h"

/* Element types, numbered as ONNX's TensorProto.DataType. */
enum qt_dtype {
    QT_UNDEF = 0, QT_F32 = 1, QT_U8 = 2, QT_I8 = 3, QT_U16 = 4, QT_I16 = 5, QT_I32 = 6,
    QT_I64 = 7, QT_STRING = 8, QT_BOOL = 9, QT_F16 = 10, QT_F64 = 11, QT_U32 = 12, QT_U64 = 13,
};

size_t qt_dtype_size(enum qt_dtype t); /* 0 for types qtune cannot hold */
const char *qt_dtype_name(enum qt_dtype t);

#define QT_MAX_DIMS 8

/* A dimension >= 0 is known; a negative one is symbolic: -1 - k names graph symbol k, and
 * QT_DIM_ANY is a dimension nobody knows until run time. */
#define QT_DIM_ANY (-1000000)
/* In int64 shape tensors folded from symbolic shapes, symbol k is held as QT_SYM_VAL(k). */
#define QT_SYM_VAL(k) (INT64_MIN + 1 + (k))
#define QT_IS_SYM_VAL(v) ((v) < INT64_MIN + 1 + 4096)
#define QT_SYM_OF_VAL(v) ((int)((v) - (INT64_MIN + 1)))
struct qt_shape {
    int ndim;
    int64_t d[QT_MAX_DIMS];
};

int64_t qt_shape_numel(const struct qt_shape *s); /* -1 when a dimension is symbolic */
int qt_shape_eq(const struct qt_shape *a, const struct qt_shape *b);
/* Writes "[N,3,32,32]" into buf using the graph's symbol names (g may be NULL). */
struct qt_graph;
const char *qt_shape_str(const struct qt_graph *g, const struct qt_shape *s, char *buf, size_t n);

/* A dense tensor in host memory, owning its data. */
struct qt_tensor {
    enum qt_dtype dtype;
    struct qt_shape shape;
    void *data;
    size_t nbytes;
};

struct qt_tensor *qt_tensor_new(enum qt_dtype dtype, const struct qt_shape *shape); /* zeroed */
struct qt_tensor *qt_tensor_clone(const struct qt_tensor *t);
void qt_tensor_free(struct qt_tensor *t);
/* Element i as double / int64, whatever the dtype (for shape arithmetic and folding). */
double qt_tensor_get_f(const struct qt_tensor *t, int64_t i);
int64_t qt_tensor_get_i(const struct qt_tensor *t, int64_t i);

enum qt_attr_type {
    QT_ATTR_FLOAT = 1, QT_ATTR_INT = 2, QT_ATTR_STRING = 3, QT_ATTR_TENSOR = 4,
    QT_ATTR_FLOATS = 6, QT_ATTR_INTS = 7, QT_ATTR_STRINGS = 8,
};

struct qt_attr {
    char *name;
    enum qt_attr_type type;
    int64_t i;
    float f;
    char *s;
    int64_t *ints;
    float *floats;
    char **strings;
    int n; /* element count of ints, floats or strings */
    struct qt_tensor *t;
};

/* Every op qtune knows. The schema table (schema.c) maps them to names and rules. */
enum qt_op {
    QT_OP_INVALID = 0,
    QT_OP_CONV, QT_OP_BATCHNORM, QT_OP_RELU, QT_OP_CLIP, QT_OP_ADD, QT_OP_SUB, QT_OP_MUL,
    QT_OP_DIV, QT_OP_MAXPOOL, QT_OP_AVGPOOL, QT_OP_GLOBALAVGPOOL, QT_OP_PAD, QT_OP_FLATTEN,
    QT_OP_RESHAPE, QT_OP_GEMM, QT_OP_MATMUL, QT_OP_IDENTITY, QT_OP_DROPOUT, QT_OP_SHAPE,
    QT_OP_GATHER, QT_OP_UNSQUEEZE, QT_OP_SQUEEZE, QT_OP_CONCAT, QT_OP_CONSTANT, QT_OP_CAST,
    QT_OP_SOFTMAX, QT_OP_REDUCEMEAN, QT_OP_ABS, QT_OP_NEG, QT_OP_GREATER, QT_OP_LESS, QT_OP_WHERE,
    QT_OP_REDUCESUM, QT_OP_QUANTIZELINEAR, QT_OP_DEQUANTIZELINEAR, QT_OP_FLOOR, QT_OP_SLICE, QT_OP_SIGN,
    QT_OP_TRANSPOSE, QT_OP_SIGMOID, QT_OP_LOGSOFTMAX, QT_OP_CONVINTEGER,
    /* qtune's own domain (QT_DOMAIN): fake-quantizers, see schema.h */
    QT_OP_WEIGHTQUANT, QT_OP_ACTQUANT, QT_OP_BITQUANT,
    QT_OP_COUNT
};

/* qtune's ONNX domain and its opset version. */
#define QT_DOMAIN "ai.qtune"
#define QT_DOMAIN_VERSION 1

/* Value flags. */
enum {
    QT_V_INPUT = 1,   /* graph input fed at run time */
    QT_V_OUTPUT = 2,  /* graph output */
    QT_V_PARAM = 4,   /* trainable parameter */
    QT_V_STATE = 8,   /* training state (BatchNorm running statistics) */
};

struct qt_value {
    char *name;
    enum qt_dtype dtype; /* QT_UNDEF until known */
    int has_shape;
    struct qt_shape shape;
    struct qt_tensor *init; /* constant data (initializer), or NULL */
    int flags;
    int producer; /* node index, or -1 */
    int dead;     /* removed; compacted away by qt_graph_compact */
};

struct qt_node {
    enum qt_op op;
    char *name;
    char *domain; /* "" for the default ONNX domain */
    int nin, nout;
    int *in;  /* value indices; -1 marks an omitted optional input */
    int *out; /* value indices */
    int nattrs;
    struct qt_attr *attrs;
    int dead;
};

struct qt_meta {
    char *key, *value;
};

struct qt_graph {
    char *name;
    struct qt_value *values;
    int nvalues, cap_values;
    struct qt_node *nodes;
    int nnodes, cap_nodes;
    int *inputs, ninputs;   /* values fed at run time, in order */
    int *outputs, noutputs; /* graph outputs, in order */
    char **syms;            /* names of symbolic dimensions */
    int nsyms;
    struct qt_meta *meta;
    int nmeta;
    int64_t opset;          /* default-domain opset the model was written for */
    int64_t ir_version;
    char *producer;
};

struct qt_graph *qt_graph_new(void);
void qt_graph_free(struct qt_graph *g);

/* Values: find by name (-1 when absent), add (name copied; must be unique). */
int qt_graph_find_value(const struct qt_graph *g, const char *name);
int qt_graph_add_value(struct qt_graph *g, const char *name, enum qt_dtype dtype,
                       const struct qt_shape *shape);
/* Adds a value whose name starts with `base` and does not clash with any other. */
int qt_graph_add_value_unique(struct qt_graph *g, const char *base, enum qt_dtype dtype,
                              const struct qt_shape *shape);
/* Index of a symbolic dimension name, created if new; returns the encoded dimension. */
int64_t qt_graph_sym(struct qt_graph *g, const char *name);

/* Index of the live node named `name` (the first, should several share it), or -1. */
int qt_graph_find_node(const struct qt_graph *g, const char *name);
/* Nodes: the op's inputs/outputs are copied; returns the node index. */
int qt_graph_add_node(struct qt_graph *g, enum qt_op op, const char *name, const int *in,
                      int nin, const int *out, int nout);
/* A node of one output reading in[0..nin) into `out`, or into a new value named after the node
 * when out < 0 (its dtype and shape left to shape inference); returns the output value. */
int qt_graph_add_op(struct qt_graph *g, enum qt_op op, const char *name, const int *in, int nin,
                    int out);
/* A Cast of x to dtype `to`, written as qt_graph_add_op writes; returns the output value. */
int qt_graph_add_cast(struct qt_graph *g, const char *name, int x, enum qt_dtype to, int out);
struct qt_attr *qt_node_add_attr(struct qt_node *n, const char *name, enum qt_attr_type type);
/* Copies every attribute of src into dst (replacing those of the same name). */
void qt_node_copy_attrs(struct qt_node *dst, const struct qt_node *src);
void qt_node_set_int(struct qt_node *n, const char *name, int64_t v);
void qt_node_set_float(struct qt_node *n, const char *name, float v);
void qt_node_set_ints(struct qt_node *n, const char *name, const int64_t *v, int count);
void qt_node_set_string(struct qt_node *n, const char *name, const char *v);

const struct qt_attr *qt_node_attr(const struct qt_node *n, const char *name);
int64_t qt_node_int(const struct qt_node *n, const char *name, int64_t dflt);
float qt_node_float(const struct qt_node *n, const char *name, float dflt);
const char *qt_node_string(const struct qt_node *n, const char *name, const char *dflt);
/* Copies up to max ints into out; returns the count, or -1 when absent. */
int qt_node_ints(const struct qt_node *n, const char *name, int64_t *out, int max);

/* Metadata */
const char *qt_graph_meta(const struct qt_graph *g, const char *key);
void qt_graph_set_meta(struct qt_graph *g, const char *key, const char *value);

/* Recomputes producers, drops dead nodes and values no live node or graph port uses,
 * and sorts nodes topologically. Fails on a cycle or a value produced twice. */
int qt_graph_compact(struct qt_graph *g, struct qt_error *e);
/* Replaces every use of value `from` (node inputs and graph outputs) by `to`. */
void qt_graph_replace_uses(struct qt_graph *g, int from, int to);
/* Number of live nodes reading value v. */
int qt_graph_use_count(const struct qt_graph *g, int v);
/* First live node reading value v (or -1). */
int qt_graph_first_consumer(const struct qt_graph *g, int v);

/* Node description for messages: "Conv node 'conv1'". Uses a static-free caller buffer. */
const char *qt_node_desc(const struct qt_graph *g, const struct qt_node *n, char *buf, size_t len);

#endif
