/* Evaluation (and, later, training) loops over a dataset: batching, forward passes and
 * metrics. Progress goes to a caller-supplied callback; nothing here prints. */
#ifndef QT_LOOPS_H
#define QT_LOOPS_H

#include "../graph/graph.h"
#include "backend.h"
#include "data/dataset.h"

struct qt_eval_result {
    int64_t images;
    double top1, top5; /* percent */
    double loss;       /* mean cross-entropy */
    double seconds;    /* wall time of batching + forward passes */
    double images_per_s;
};

/* Called after each batch with images done so far and the total. */
typedef void (*qt_progress_fn)(void *ctx, int64_t done, int64_t total, double seconds);

/* The layout of g's image input: NHWC when the input has rank 4 and every node reading it is
 * a Transpose with perm [0, 3, 1, 2] (how tf2onnx writes Keras models, which take NHWC
 * images), else NCHW. Batches are assembled in that layout. */
enum qt_image_layout qt_image_layout(const struct qt_graph *g);

/* The shape of a batch of n of the dataset's images in layout l. */
struct qt_shape qt_image_batch_shape(const struct qt_dataset *ds, int64_t n, enum qt_image_layout l);

/* Checks that g is a classifier of the dataset's images: one float rank-4 input (in
 * qt_image_layout's layout) whose known dimensions match the samples, and an output. */
int qt_check_image_model(const struct qt_graph *g, const struct qt_dataset *ds, struct qt_error *e);

/* Checks per-channel normalization (NULL means none): every mean finite, every std finite and
 * positive, so that no NaN or Inf can reach the model from the data. */
int qt_check_normalization(const float *mean, const float *std, int channels, struct qt_error *e);

/* Evaluates a classifier (first graph input NCHW float, first output [N, classes] logits)
 * on the first `limit` samples (all when limit <= 0). */
int qt_evaluate(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                const float *mean, const float *std, int batch, int64_t limit,
                qt_progress_fn progress, void *ctx, struct qt_eval_result *r, struct qt_error *e);

/* Graph output 0 (as the model computes it: after a final Softmax, say) of the first `limit`
 * samples of ds (all when 0), in the dataset's order, batched and normalized as qt_evaluate
 * does: *y (host memory, the caller frees it) has one row per sample. *seconds gets the wall
 * time. */
int qt_predict(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
               const float *mean, const float *std, int batch, int64_t limit,
               qt_progress_fn progress, void *ctx, struct qt_tensor **y, double *seconds,
               struct qt_error *e);


#endif
