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
};

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
 * rounds over the calibration batches in training mode, each setting the activation alphas
 * to minimize the error on the values that reached them (when set_alphas), and a last round
 * that re-estimates every BatchNorm's running statistics as the average over the batches. */
int qt_calib_quantizers(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                        const struct qt_calib_config *c, int set_alphas, struct qt_calib_report *r,
                        struct qt_error *e);

/* A dataset of `n` training images that calibration does not use: the last n of the seeded
 * permutation whose first batches it takes (pixels copied; free with qt_dataset_free). Fails
 * when the split is too small to hold both. */
int qt_calib_holdout(struct qt_dataset *out, const struct qt_dataset *ds,
                     const struct qt_calib_config *c, int n, struct qt_error *e);

#endif
