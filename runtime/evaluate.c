/* The evaluation loop: normalized batches through the executor, top-1/top-5 and loss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec.h"
#include "loops.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum qt_image_layout qt_image_layout(const struct qt_graph *g)
{
    if (g->ninputs != 1) return QT_IMAGE_NCHW;
    const int v = g->inputs[0];
    if (g->values[v].shape.ndim != 4) return QT_IMAGE_NCHW;
    int readers = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        int reads = 0;
        for (int k = 0; k < n->nin; k++) reads |= n->in[k] == v;
        if (!reads) continue;
        int64_t p[4];
        if (n->op != QT_OP_TRANSPOSE || n->nin != 1 || qt_node_ints(n, "perm", p, 4) != 4 ||
            p[0] != 0 || p[1] != 3 || p[2] != 1 || p[3] != 2)
            return QT_IMAGE_NCHW;
        readers++;
    }
    return readers ? QT_IMAGE_NHWC : QT_IMAGE_NCHW;
}

struct qt_shape qt_image_batch_shape(const struct qt_dataset *ds, int64_t n, enum qt_image_layout l)
{
    if (l == QT_IMAGE_NHWC) return (struct qt_shape){4, {n, ds->h, ds->w, ds->c}};
    return (struct qt_shape){4, {n, ds->c, ds->h, ds->w}};
}

int qt_check_image_model(const struct qt_graph *g, const struct qt_dataset *ds, struct qt_error *e)
{
    char s1[128];
    if (g->ninputs != 1 || g->noutputs < 1)
        return qt_err(e, "the model has %d inputs and %d outputs; a classifier needs one image input "
                         "and a logits output", g->ninputs, g->noutputs);
    const struct qt_value *in = &g->values[g->inputs[0]];
    if (in->dtype != QT_F32 || in->shape.ndim != 4)
        return qt_err(e, "the model's input '%s' is %s %s; it needs a float NCHW (or NHWC "
                         "followed by a Transpose to NCHW) image input",
                      in->name, qt_dtype_name(in->dtype), qt_shape_str(g, &in->shape, s1, sizeof s1));
    const enum qt_image_layout l = qt_image_layout(g);
    const struct qt_shape want = qt_image_batch_shape(ds, 1, l);
    for (int i = 1; i < 4; i++)
        if (in->shape.d[i] >= 0 && in->shape.d[i] != want.d[i])
            return qt_err(e, "the model expects images of %s (%s) but the dataset has %dx%dx%d "
                             "(CxHxW)",
                          qt_shape_str(g, &in->shape, s1, sizeof s1),
                          l == QT_IMAGE_NHWC ? "NHWC" : "NCHW", ds->c, ds->h, ds->w);
    return 0;
}

int qt_check_normalization(const float *mean, const float *std, int channels, struct qt_error *e)
{
    for (int c = 0; c < channels; c++) {
        if (mean && !isfinite(mean[c]))
            return qt_err(e, "normalization mean of channel %d is %g; it must be a finite number",
                          c, mean[c]);
        if (std && !(isfinite(std[c]) && std[c] > 0))
            return qt_err(e,
                          "normalization std of channel %d is %g; it must be a positive finite "
                          "number",
                          c, std[c]);
    }
    return 0;
}

int qt_evaluate(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                const float *mean, const float *std, int batch, int64_t limit,
                qt_progress_fn progress, void *ctx, struct qt_eval_result *r, struct qt_error *e)
{
    char s1[128];
    memset(r, 0, sizeof *r);
    if (qt_check_image_model(g, ds, e) || qt_check_normalization(mean, std, ds->c, e)) return -1;
    const struct qt_value *in = &g->values[g->inputs[0]];
    if (in->shape.d[0] >= 0 && in->shape.d[0] != batch) {
        batch = (int)in->shape.d[0]; /* static batch in the file */
    }
    if (batch <= 0) return qt_err(e, "batch size must be positive");
    int64_t total = limit > 0 && limit < ds->n ? limit : ds->n;
    struct qt_exec *x = qt_exec_new(g, b, e);
    if (!x) return -1;
    const enum qt_image_layout layout = qt_image_layout(g);
    struct qt_shape xs = qt_image_batch_shape(ds, batch, layout);
    struct qt_tensor *xt = qt_tensor_new(QT_F32, &xs);
    int32_t *labels = malloc(sizeof(int32_t) * batch);
    int *idx = malloc(sizeof(int) * batch);
    int32_t *labels_dev = b->alloc(b, sizeof(int32_t) * batch);
    double *stats_dev = b->alloc(b, sizeof(double) * QT_XENT_STATS);
    int64_t top1 = 0, top5 = 0, done = 0;
    double loss = 0, t0 = now();
    int rc = 0;
    if (!xt || !labels || !idx || !labels_dev || !stats_dev)
        rc = qt_err(e, "out of memory for a batch of %d", batch);
    while (!rc && done < total) {
        int n = (int)(total - done < batch ? total - done : batch);
        int static_batch = in->shape.d[0] >= 0;
        for (int i = 0; i < n; i++) idx[i] = (int)(done + i);
        qt_dataset_batch(ds, idx, n, mean, std, layout, xt->data, labels);
        if (static_batch && n < batch) /* pad the last batch; extra rows are ignored */
            memset((float *)xt->data + (int64_t)n * ds->c * ds->h * ds->w, 0,
                   sizeof(float) * (int64_t)(batch - n) * ds->c * ds->h * ds->w);
        xt->shape.d[0] = static_batch ? batch : n;
        xt->nbytes = sizeof(float) * qt_shape_numel(&xt->shape);
        const struct qt_tensor *ins[1] = {xt};
        if (qt_exec_forward(x, ins, e)) {
            rc = -1;
            break;
        }
        const struct qt_tensor *out = qt_exec_logits(x); /* before a final Softmax */
        if (out->dtype != QT_F32 || out->shape.ndim != 2 || out->shape.d[0] != xt->shape.d[0]) {
            rc = qt_err(e, "the model's output is %s; eval needs [N, classes] logits",
                        qt_shape_str(g, &out->shape, s1, sizeof s1));
            break;
        }
        int classes = (int)out->shape.d[1];
        if (classes < ds->nclasses) {
            rc = qt_err(e, "the model predicts %d classes but the dataset has %d", classes, ds->nclasses);
            break;
        }
        /* Loss and counts on the backend: the host reads back four numbers per batch. */
        double st[QT_XENT_STATS];
        if (b->upload(b, labels_dev, labels, sizeof(int32_t) * n) ||
            b->xent(b, NULL, stats_dev, out->data, labels_dev, n, classes, 0.0f, 1.0f, e) ||
            b->sync(b, e) || b->download(b, st, stats_dev, sizeof st)) {
            rc = qt_err_prefix(e, "loss of the batch at sample %lld: ", (long long)done);
            break;
        }
        if (st[QT_XENT_NONFINITE] > 0) {
            rc = qt_err(e, "the model produced non-finite logits on %.0f of the %d samples from "
                           "sample %lld", st[QT_XENT_NONFINITE], n, (long long)done);
            break;
        }
        top1 += (int64_t)st[QT_XENT_TOP1];
        top5 += (int64_t)st[QT_XENT_TOP5];
        loss += st[QT_XENT_LOSS];
        done += n;
        if (progress) progress(ctx, done, total, now() - t0);
    }
    r->seconds = now() - t0;
    r->images = done;
    if (done) {
        r->top1 = 100.0 * top1 / done;
        r->top5 = 100.0 * top5 / done;
        r->loss = loss / done;
        r->images_per_s = done / (r->seconds > 0 ? r->seconds : 1e-9);
    }
    if (labels_dev) b->release(b, labels_dev);
    if (stats_dev) b->release(b, stats_dev);
    free(idx);
    free(labels);
    qt_tensor_free(xt);
    qt_exec_free(x);
    return rc;
}
