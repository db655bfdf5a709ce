/* The start of quantization-aware fine-tuning as one library function: BatchNorms put back
 * after the Convs of folded models, quantizers inserted, calibration on training batches,
 * and the test accuracy at that point (post-training quantization when the alphas come from
 * data). `qtune finetune` calls it, then trains with the recipe of `qtune train`. */
#ifndef QT_FINETUNE_H
#define QT_FINETUNE_H

#include "../passes/passes.h"
#include "backend.h"
#include "calib.h"
#include "data/dataset.h"
#include "loops.h"

struct qt_prepare_config {
    const struct qt_quant_config *quant;
    int unfold;       /* a BatchNorm after each Conv that lacks one (standardized weights) */
    int calib_alphas; /* alphas from data, else the initial values of quant */
    int resume;       /* the state comes from a checkpoint: no statistics, calibration or eval */
    struct qt_calib_config calib;
    int eval_batch;
    int64_t test_limit; /* 0: the whole test split */
};

struct qt_prepare_report {
    int unfolded; /* BatchNorms put back */
    struct qt_quant_summary quant;
    struct qt_calib_report calib;
    int evaluated; /* eval holds the accuracy after calibration */
    struct qt_eval_result eval;
};

/* Prepares g (changed in place) on backend b; progress (may be NULL) follows the evaluation.
 * Returns 0, or -1 with e naming what failed. */
int qt_finetune_prepare(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                        const struct qt_dataset *test, const struct qt_prepare_config *c,
                        qt_progress_fn progress, void *ctx, struct qt_prepare_report *r,
                        struct qt_error *e);

#endif
