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
    int holdout;        /* training images held out to decide on BatchNorm re-estimation */
    /* Standardized weights mapped back to their own scale and offset (sigma * alpha * q + mu)
     * for calibration and the evaluation, so that the model's BatchNorm statistics still fit;
     * with train set they return to APoT's standardized form for fine-tuning afterwards. */
    int restore, train;
    /* Bias correction as a third candidate beside the own and the re-estimated BatchNorm
     * statistics (needs c->holdout): with the own statistics, each quantized layer's mean
     * output per channel (calibration batches, evaluation mode, earlier layers already
     * corrected) moved back to the float model's through the BatchNorm after it, or its bias. */
    int bias_correct;
    /* BatchNorm statistics after calibration: chosen on the held-out images (QT_BN_AUTO),
     * or the candidates restricted to the own statistics (with bias correction when asked
     * for) or to the re-estimated ones. */
    enum { QT_BN_AUTO, QT_BN_OWN, QT_BN_DATA } bn;
    int adaround; /* AdaRound of the weights after calibration (ar: its settings) */
    struct qt_adaround_config ar;
};

struct qt_prepare_report {
    int unfolded; /* BatchNorms put back */
    struct qt_quant_summary quant;
    struct qt_calib_report calib;
    /* BatchNorm running statistics after calibration: 1 re-estimated with the quantizers in
     * place (held-out top-1 bn_top1[1] against bn_top1[0] with the model's own and
     * bn_top1[2] with the own and bias correction, -1 when not tried), 0 kept (no better on
     * the held-out images, or no quantizer at all), -1 re-estimated without a check (the
     * training split cannot spare c->holdout images, or --holdout 0). bn_choice: 0 own
     * statistics, 1 re-estimated, 2 own statistics and bias correction. With c->bn not
     * QT_BN_AUTO the held-out check runs only between own and bias-corrected statistics. */
    int bn_reestimated, bn_choice;
    double bn_top1[3];
    int restored;  /* weight quantizers whose standardized weights were mapped back */
    int bias_corrected; /* layers whose mean output shift was corrected */
    struct qt_adaround_report ar;
    int evaluated; /* eval holds the accuracy after calibration */
    struct qt_eval_result eval;
};

/* Prepares g (changed in place) on backend b. A model without quantizers leaves unchanged
 * (bit for bit). BatchNorm re-estimation is kept only when it raises the top-1 on c->holdout
 * training images that calibration does not use; progress (may be NULL) follows the evaluation.
 * Returns 0, or -1 with e naming what failed. */
int qt_finetune_prepare(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                        const struct qt_dataset *test, const struct qt_prepare_config *c,
                        qt_progress_fn progress, void *ctx, struct qt_prepare_report *r,
                        struct qt_error *e);

#endif
