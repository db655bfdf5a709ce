/* Graph passes; each rewrites the IR in place and reports failures by node name. */
#ifndef QT_PASSES_H
#define QT_PASSES_H

#include "../graph/graph.h"

/* Constant nodes to initializers, Identity/Dropout removed, constant and shape subgraphs
 * folded, zero Pad merged into Conv/pools, exported activation quantizers raised back to
 * ActQuant; ends with verification and shape inference. */
int qt_pass_canonicalize(struct qt_graph *g, struct qt_error *e);

/* Folds each inference BatchNormalization that follows a Conv into the Conv's weight and
 * bias (for evaluation and inference runs; training keeps BatchNorm). */
int qt_pass_fold_batchnorm(struct qt_graph *g, struct qt_error *e);
/* Channel k of that folding, for a BatchNorm with parameters p (scale, bias, mean, variance,
 * float32) and epsilon eps after a layer with bias b (NULL: none): returns the factor
 * s = scale / sqrt(var + eps) for the weights and writes the folded bias (b - mean) * s + bias
 * to *bias_out. The export pass folds BatchNorm with it too. */
double qt_bn_fold_channel(const struct qt_tensor *const p[4], float eps, const float *b, int64_t k,
                          float *bias_out);

/* Inserts a BatchNormalization after every Conv whose output no BatchNormalization reads
 * (models exported with BatchNorm folded), so that weight standardization has a BatchNorm to
 * absorb its scale: per output channel c, s_c = std(W_c) / sqrt(2 / fan_in) (1 if W_c is
 * constant), W_c /= s_c (every channel gets He initialization's std), the Conv's bias
 * moves into the BatchNorm: scale s_c, bias b_c, mean 0, var 1 - eps. The function is
 * unchanged in inference mode; the runtime then sets the statistics from data
 * (qt_calib_bn_from_data). A Mul by a per-channel constant followed by an Add of one (a
 * BatchNorm written as its arithmetic, as tf2onnx writes Keras' pre-activation BatchNorms)
 * becomes a BatchNormalization the same way: scale and bias those constants, mean 0, var
 * 1 - eps. Writes the inserted nodes' count to *count and, when bn is not
 * NULL, their indices to *bn (malloc'd, NULL when none; the caller frees it). */
int qt_pass_unfold_batchnorm(struct qt_graph *g, int **bn, int *count, struct qt_error *e);

/* ---- The quantize pass (quantize.c) ---- */

/* Per-layer settings: bits 0 = float; -1 = unchanged (in overrides). */
struct qt_quant_spec {
    int wbits, abits;
    int scheme; /* QT_QS_APOT or QT_QS_UNIFORM (schema.h) */
};

struct qt_quant_override {
    char pattern[200]; /* fnmatch pattern on the layer node's name */
    struct qt_quant_spec spec;
    int matched;       /* set by the pass */
};

/* Parses "PATTERN=SPEC", SPEC = float | [wN][aN][:apot|:uniform]. */
int qt_quant_spec_parse(struct qt_quant_override *o, const char *arg, struct qt_error *e);

enum qt_first_last { QT_FL_8BIT, QT_FL_SAME, QT_FL_FLOAT };

struct qt_quant_config {
    int wbits, abits, scheme;
    enum qt_first_last first_last; /* first conv / last layer: 8-bit weights, float inputs */
    int int8_absmax;    /* 8-bit weights scaled by max |W| (1) or by max W (0, reference code) */
    int per_channel;    /* uniform weights: one alpha per output channel */
    int standardize;    /* standardize weights of layers followed by BatchNorm (APOT.md 2) */
    float alpha_w;      /* initial alpha of standardized weights (APOT.md: 3.0) */
    float alpha_a;      /* initial alpha of activations (APOT.md: 8.0) */
    int reset_alphas;   /* re-quantizing: never keep earlier alphas */
    struct qt_quant_override *overrides;
    int noverrides;
};

struct qt_quant_summary {
    int layers;       /* layers visited */
    int weight, act;  /* quantizers inserted */
    int act_signed;   /* of which signed activation quantizers */
    int first_last;   /* layers found first or last */
    int kept, reset;  /* quantizers of an earlier pass whose alpha was kept / re-initialized */
};

/* Quantizes every Conv/Gemm/MatMul with a weight initializer (see quantize.c). A quantizer
 * whose settings equal those of the quantizer it replaces keeps that alpha. */
int qt_pass_quantize(struct qt_graph *g, const struct qt_quant_config *c,
                     struct qt_quant_summary *sum, struct qt_error *e);

/* The layer weight of node n: for a Conv, Gemm or MatMul whose weight input is a float32
 * initializer (or, with through_quant, the output of a WeightQuant over one), that
 * initializer's value index; -1 for every other node. */
int qt_layer_weight(const struct qt_graph *g, const struct qt_node *n, int through_quant);

/* The weight bits the quantize pass would give under c, per graph value: bits[v] (room for
 * g->nvalues) is the bit width of the layer whose weight initializer is v (8 for the 8-bit
 * first/last weights), 0 for every other value. Fails as the pass would (overrides that
 * match nothing, settings out of range). */
int qt_quant_weight_bits(const struct qt_graph *g, const struct qt_quant_config *c, int *bits,
                         struct qt_error *e);

/* How the export (format onnx) stores the level codes of a weight tensor: in groups of `group`
 * codes written as one base-L number (L = the number of levels, code 0 the most negative
 * level) in `group_bytes` bytes (at most QT_CODE_GROUP_BYTES, so that a group's number fits
 * int32). Per byte: five ternary codes (3^5 = 243), two 3- or 4-bit codes; in two bytes three
 * 5-bit codes (31^3 < 2^16); in three bytes eight 3-bit codes (7^8 < 2^24, 3 bits a code)
 * and four 6-bit codes (63^4 < 2^24). `padded`: the count is not a multiple of `group`; the
 * last group is padded and the padding sliced off after decoding. */
#define QT_CODE_GROUP_BYTES 3
struct qt_code_layout {
    int group, group_bytes;
    int padded;
};

/* Bytes in which the export stores the level codes of cnt weights on a grid of nlv signed
 * levels (2^b - 1 for b bits, at most 256): the layout of the fewest bytes, counting about
 * 100 bytes for the nodes that padding or a group of several bytes adds (the fewer bytes a
 * group on a tie), written to *lay (may be NULL). */
int64_t qt_export_code_bytes(int nlv, int64_t cnt, struct qt_code_layout *lay);

/* Restores an ActQuant node wherever the graph holds an activation quantizer in the standard
 * operators `qtune export` writes (raise_quant.c); *count (may be NULL) gets how many. The
 * canonicalize pass runs it. */
int qt_pass_raise_quant(struct qt_graph *g, int *count, struct qt_error *e);

/* ---- The export pass (lower_export.c) ---- */

/* Formats of `qtune export`:
 *   onnx     standard operators only: weights as packed level codes decoded by Cast/Gather/
 *            Reshape/Mul, activation quantizers as Div/Greater/ReduceSum/Gather/Mul
 *   qdq      QuantizeLinear/DequantizeLinear pairs on an 8-bit integer grid: the values
 *            qtune computes, in the explicit-quantization layout of TensorRT's INT8
 *            convolutions
 *   float    weights as float values on the grid, activation quantizers as in onnx
 *   qlinear  qdq with BatchNorm folded and every Conv between quantized input and weights
 *            given an int32 bias and an 8-bit output (QuantizeLinear/DequantizeLinear on a
 *            range measured on data): the node groups onnxruntime runs as QLinearConv. Not
 *            exact: the outputs are rounded to 256 levels, which training does not model.
 *   integer  qdq with BatchNorm folded and every Conv between quantized input and weights
 *            written as ConvInteger on the codes (exact int32 sums), then Cast, one Mul by
 *            the product of the scales and the bias: integer kernels in onnxruntime that
 *            compute what qtune computes. */
enum qt_export_format {
    QT_EXPORT_ONNX = 0,
    QT_EXPORT_QDQ = 1,
    QT_EXPORT_FLOAT = 2,
    QT_EXPORT_QLINEAR = 3,
    QT_EXPORT_INTEGER = 4
};
const char *qt_export_format_name(enum qt_export_format f);
/* 0, or -1 for a name that is not a format. */
int qt_export_format_parse(const char *s, enum qt_export_format *f);

/* The bucket tables of an activation quantizer's export form (lower_export.c): returns the
 * smallest power of two M <= QT_ACT_MAX_BUCKETS such that no interval [b/M, (b+1)/M) holds
 * two of qz's thresholds, with table[b] = the number of thresholds below b/M and thr_m[b] the
 * threshold that may lie in bucket b, times M (+inf where none does); -1 if no M fits. */
#define QT_ACT_MAX_BUCKETS 4096
struct qt_apot_quantizer;
int qt_act_buckets(const struct qt_apot_quantizer *qz, int32_t *table, float *thr_m);

struct qt_export_report {
    int weights, acts;    /* quantizers lowered */
    int64_t weight_bytes; /* bytes of the quantized weights as stored */
    int integer_convs;    /* formats qlinear and integer: convolutions on integer codes */
};

/* Format qlinear: the range of the values a convolution's 8-bit output must hold (measured on
 * data), by the Conv node's name. */
struct qt_export_range {
    const char *conv;
    float lo, hi;
    int relu; /* the range is that of the Relu alone reading the output (lo 0) */
};

/* Format qlinear: the value of g (before lowering) whose range Conv node ci's 8-bit output
 * must hold: ci's output, or that of the BatchNormalization folded into it; -1 when ci is not
 * requantized (not a Conv reading an ActQuant input and WeightQuant weights that the format
 * turns into int8 DequantizeLinear outputs), -2 when it would be but for its weights being
 * mapped back to their mean (standardize 2: w = sigma * alpha * q + mu, which QLinearConv,
 * with weight zero points 0, cannot hold). *cap is the largest value that matters after
 * it: when a Relu alone reads the value and only ActQuant nodes read the Relu, their largest
 * alpha (the 8-bit output then holds [0, min(measured max, cap)] after the Relu), else +inf. */
int qt_export_requant_value(const struct qt_graph *g, int ci, float *cap);

/* Replaces every WeightQuant/ActQuant node of g by standard operators computing the same
 * values (lower_export.c explains the forms), records every quantizer's settings in the
 * metadata (qtune.quant.<layer>.weight|input) and the format (qtune.export.format). Fails,
 * naming the layer, on a malformed quantizer or one the format cannot express; g is then
 * partly rewritten and must be discarded. Format qlinear requantizes the outputs of the
 * convolutions named in ranges[0..nranges) (qt_export_requant_value says which qualify);
 * other formats take no ranges. */
int qt_pass_lower_export(struct qt_graph *g, enum qt_export_format fmt,
                         const struct qt_export_range *ranges, int nranges,
                         struct qt_export_report *rep, struct qt_error *e);

#endif
