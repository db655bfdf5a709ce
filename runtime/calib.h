/* Calibration from a few batches of training data: BatchNorm statistics of unfolded models,
 * data-driven clipping thresholds (alphas) of the quantizers, and BatchNorm re-estimation
 * with the quantizers in place (post-training quantization). */
#ifndef QT_CALIB_H
#define QT_CALIB_H

#include <stdint.h>

#include "../graph/graph.h"
#include "backend.h"
#include "data/dataset.h"

struct qt_calib_config {
    int batches;   /* calibration batches (default 8) */
    int batch;     /* images per batch */
    uint64_t seed; /* which training images (a seeded permutation) */
    const float *mean, *std;
    int64_t samples; /* values kept per activation quantizer and round (default 65536) */
    int rounds;      /* rounds of activation alpha estimation (default 2) */
    int method;        /* activation alphas: enum qt_calib_method (0: the MSE search) */
    double percentile; /* QT_CALIB_PERCENTILE: which one (default 99.99) */
    int weight_method; /* weight alphas: QT_CALIB_MSE (0) or QT_CALIB_MINMAX (largest |w|) */
};

/* How activation alphas come from the values that reach the quantizer: the alpha minimizing
 * the quantization error (apot.h's search, on a subsample), the largest value (every value of
 * every calibration batch), or a percentile of the subsample. */
enum qt_calib_method { QT_CALIB_MSE = 0, QT_CALIB_MINMAX = 1, QT_CALIB_PERCENTILE = 2 };
const char *qt_calib_method_name(int method);

/* BatchNormalization nodes named in bn (count n, node indices) compute
 * scale * (x - mean) / sqrt(var + eps) + bias; this replaces mean and var by the per-channel
 * statistics of x over the calibration batches (inference mode, the rest of the graph as it
 * is) and adjusts scale and bias so that the function stays the same:
 *   scale' = scale * sqrt(var' + eps) / sqrt(var + eps),  bias' = bias + scale * (mean' - mean) /
 * sqrt(var + eps). Afterwards training mode (batch statistics) starts close to the inference
 * function. */
int qt_calib_bn_from_data(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                          const struct qt_calib_config *c, const int *bn, int n,
                          struct qt_error *e);

struct qt_calib_report {
    int weight_alphas, act_alphas; /* alphas set from data */
    int bn;                        /* BatchNorm nodes whose statistics were re-estimated */
    double seconds;
};

/* With the quantizers in place: sets every weight quantizer's alpha(s) to minimize the
 * quantization error of its (standardized) weights when set_alphas, then runs c->rounds
 * rounds over the calibration batches in evaluation mode (BatchNorm with its running
 * statistics, no augmentation; training mode when a WeightQuant standardizes without mapping
 * back, as its BatchNorm's statistics then belong to other units), each setting the
 * activation alphas from the values that
 * reached them by c->method (when set_alphas), and a last round in training mode that
 * re-estimates every BatchNorm's running statistics as the average over the batches. */
int qt_calib_quantizers(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                        const struct qt_calib_config *c, int set_alphas, struct qt_calib_report *r,
                        struct qt_error *e);

/* Bias correction (empirical, per layer): for each Conv and Gemm of g whose weight goes
 * through a WeightQuant and that fp (the float model before quantization) also has, by node
 * name, in graph order: the per-channel mean of its output (of the BatchNormalization's when
 * one alone reads it) over the calibration batches in evaluation mode is made equal to fp's by
 * subtracting the difference from that BatchNorm's bias, or the layer's own bias (layers
 * with neither are left alone). Each layer is measured with the earlier ones already corrected. *corrected counts
 * the layers changed. */
int qt_calib_bias_correct(struct qt_graph *g, struct qt_graph *fp, struct qt_backend *b,
                          const struct qt_dataset *ds, const struct qt_calib_config *c,
                          int *corrected, struct qt_error *e);

/* AdaRound (learned rounding, layer by layer): for each Conv and Gemm with an APoT or uniform
 * WeightQuant of mapped-back standardized weights (or none), in graph order, the choice
 * between the two levels around each weight is learned on the calibration batches: inputs
 * from g as quantized so far (evaluation mode), targets the layer's outputs in fp (the float
 * model), loss the mean squared output difference plus lambda * sum(1 - |2h - 1|^beta) over
 * the soft choices h (rectified sigmoid; beta from 20 to 2 after 20% of the steps), Adam on
 * random batches of `batch` cached images for `iters` steps (the cache of a layer's inputs and
 * targets holds at most 512 MiB: fewer calibration batches where a layer's activations are
 * large). The weights are then moved just
 * past the rounding threshold where the choice is not the nearest level (alphas rescaled by
 * the change of the weights' standard deviation), so that the quantizer itself gives it. */
struct qt_adaround_config {
    int iters, batch;
    double lr, lambda;
};
struct qt_adaround_report {
    int layers;
    int64_t weights, flipped; /* weights rounded away from their nearest level */
    double seconds;
};
int qt_calib_adaround(struct qt_graph *g, struct qt_graph *fp, struct qt_backend *b,
                      const struct qt_dataset *ds, const struct qt_calib_config *c,
                      const struct qt_adaround_config *ac, struct qt_adaround_report *r,
                      struct qt_error *e);

/* The smallest and largest value of each v[j] (j < n) of g over the calibration batches in
 * evaluation mode, into lo[j] and hi[j]. Fails on a value that is not finite. */
int qt_calib_value_ranges(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                          const struct qt_calib_config *c, const int *v, int n, float *lo,
                          float *hi, struct qt_error *e);

/* A dataset of `n` training images that calibration does not use: the last n of the seeded
 * permutation whose first batches it takes (pixels copied; free with qt_dataset_free). Fails
 * when the split is too small to hold both. */
int qt_calib_holdout(struct qt_dataset *out, const struct qt_dataset *ds,
                     const struct qt_calib_config *c, int n, struct qt_error *e);

#endif
