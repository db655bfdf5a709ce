/* The training loop: seeded shuffling and augmentation, forward/backward/SGD per batch,
 * evaluation and a checkpoint after every epoch, resume, interruption and NaN handling. */
#ifndef QT_TRAIN_H
#define QT_TRAIN_H

#include <signal.h>

#include "backend.h"
#include "data/dataset.h"
#include "loops.h"
#include "params.h"

/* The smallest clipping threshold training leaves a quantizer with: an SGD step that would
 * take an alpha to or below 0 (low bit widths with large alpha learning rates) sets it here. */
#define QT_ALPHA_FLOOR 1e-3f

struct qt_train_config {
    int epochs;
    int batch;
    struct qt_sgd sgd;
    struct qt_schedule sched; /* milestones, total and warm-up in steps */
    float label_smoothing;
    int crop_pad;             /* random crop with this much zero padding (0: off) */
    int no_resized_crop;      /* streamed images: the evaluation transform, not
                               * RandomResizedCrop (and no flip) */
    int flip;                 /* random horizontal flip */
    int no_prefetch;          /* assemble each batch between steps (default: the next batch
                               * is assembled by a thread of its own during a step) */
    uint64_t seed;
    const float *mean, *std;  /* normalization, one value per channel */
    int64_t train_limit;      /* use the first N training samples (0: all) */
    int64_t test_limit;       /* evaluate on the first N test samples (0: all) */
    const char *checkpoint;   /* written after every epoch and on interruption (NULL: none) */
    const char *resume;       /* checkpoint to continue from (NULL: start fresh) */
    volatile sig_atomic_t *stop; /* set asynchronously to stop after the current batch */
    /* PSGD (BSQ_PSGD.md 2; apot.h's qt_psgd_*): psgd_bits[v], per graph value (NULL: off), is
     * the bit width of the grid that parameter v's gradients are scaled towards (0: not
     * scaled); psgd_lambda their strength. The grid ranges are training state: checkpoints
     * keep them. */
    const int *psgd_bits;
    float psgd_lambda;
    /* BSQ (BSQ_PSGD.md 1.4): the regularizer's weight alpha / TP; every BitQuant layer adds
     * bit_lasso * count * N * sum_b ||plane b|| to the loss (0: off). Bit planes are clamped to
     * [0, 2] after every step either way. */
    float bit_lasso;
    /* The schedule's step at this run's first step, for runs that continue one schedule, and
     * the epoch numbers the callbacks report (epoch_offset + 1 .. epochs_total; 0: 1 .. epochs). */
    int64_t step_offset;
    int epoch_offset, epochs_total;
};

struct qt_epoch_stats {
    int epoch;          /* 1-based */
    int epochs;
    double lr;          /* at the end of the epoch */
    double train_loss, train_top1;
    struct qt_eval_result test;
    double seconds;     /* training part of the epoch */
    double data_seconds; /* of which waiting for batches (decoding, for a stream) */
    double images_per_s;
    int best;           /* the best test top-1 so far */
    const double *step_loss; /* mean loss of each step of the epoch run in this process */
    int nsteps;
};

struct qt_train_callbacks {
    void *ctx;
    /* After each batch: epoch (1-based), images done in the epoch, total, running loss. */
    void (*batch)(void *ctx, int epoch, int64_t done, int64_t total, double loss, double top1,
                  double seconds);
    /* After each epoch's evaluation; a non-zero return stops training with an error. */
    int (*epoch_end)(void *ctx, const struct qt_epoch_stats *s);
    /* After a checkpoint is loaded (may be NULL), with the epochs it completed: what was
     * recorded for later epochs is void (they run again); a non-zero return stops training. */
    int (*resumed)(void *ctx, int epochs_done);
};

struct qt_train_result {
    int epochs_done;
    int64_t steps;
    double best_top1;
    int best_epoch;
    struct qt_eval_result last;
    double seconds;
    int interrupted; /* stopped through cfg->stop; a checkpoint was written */
};

/* Trains g (parameters and BatchNorm statistics are updated in its initializers). */
int qt_train(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
             const struct qt_dataset *test, const struct qt_train_config *cfg,
             const struct qt_train_callbacks *cb, struct qt_train_result *r, struct qt_error *e);

#endif
