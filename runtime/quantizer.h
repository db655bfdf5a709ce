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

/* The weight memory of a model: each Conv/Gemm/MatMul weight initializer at the bits of its
 * weight quantizer (32 without one), in the bytes the export (format onnx) stores it in:
 * level codes packed as qt_export_code_bytes says, 8-bit weights one byte each, float weights
 * four. Biases, BatchNorm parameters and scales are not counted. */
struct qt_weight_layer {
    int node;      /* the layer node */
    int64_t count; /* weights */
    int bits;      /* 32: float */
    int64_t bytes;
};
struct qt_weight_memory {
    struct qt_weight_layer *layer;
    int n;
    int64_t count, bit_count; /* weights; the sum of count * bits */
    int64_t bytes, fp32_bytes;
};
int qt_weight_memory(const struct qt_graph *g, struct qt_weight_memory *m, struct qt_error *e);
void qt_weight_memory_free(struct qt_weight_memory *m);

#endif
