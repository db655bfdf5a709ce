/* The evaluation loop: normalized batches through the executor, top-1/top-5 and loss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec.h"
#include "loops.h"
#include "../util/clock.h"

/* Whether node n turns the NHWC value v into NCHW: a Transpose with perm (0, 3, 1, 2), or,
 * for one channel (where both layouts have the same memory; tf2onnx writes it so), a Reshape
 * from [N, H, W, 1] to [N, 1, H, W]. */
static int nhwc_to_nchw(const struct qt_graph *g, const struct qt_node *n, int v)
{
    int64_t p[4];
    if (n->op == QT_OP_TRANSPOSE)
        return n->nin == 1 && qt_node_ints(n, "perm", p, 4) == 4 && p[0] == 0 && p[1] == 3 &&
               p[2] == 1 && p[3] == 2;
    if (n->op != QT_OP_RESHAPE || n->in[0] != v || n->nout < 1) return 0;
    const struct qt_shape *in = &g->values[v].shape, *out = &g->values[n->out[0]].shape;
    return in->d[3] == 1 && out->ndim == 4 && out->d[1] == 1 && in->d[1] > 0 && in->d[2] > 0 &&
           out->d[2] == in->d[1] && out->d[3] == in->d[2];
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
        if (!nhwc_to_nchw(g, n, v)) return QT_IMAGE_NCHW;
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

/* One batch after its forward pass: n samples from sample `done`, their labels. */
typedef int (*batch_fn)(void *ctx, struct qt_exec *x, const int32_t *labels, int n, int64_t done,
                        struct qt_error *e);

/* Runs the first `limit` samples of ds (all when 0) in order through g in batches of `batch`
 * (a static batch in the file wins; the last batch is then padded with zero images whose
 * outputs are ignored), calling fn after each forward pass. *images gets the samples run. */
static int for_each_batch(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                          const float *mean, const float *std, int batch, int64_t limit,
                          qt_progress_fn progress, void *pctx, batch_fn fn, void *ctx,
                          int64_t *images, double *seconds, struct qt_error *e)
{
    *images = 0;
    *seconds = 0;
    if (qt_check_image_model(g, ds, e) || qt_check_normalization(mean, std, ds->c, e)) return -1;
    const struct qt_value *in = &g->values[g->inputs[0]];
    const int static_batch = in->shape.d[0] >= 0;
    if (static_batch) batch = (int)in->shape.d[0];
    if (batch <= 0) return qt_err(e, "batch size must be positive");
    const int64_t total = limit > 0 && limit < ds->n ? limit : ds->n;
    struct qt_exec *x = qt_exec_new(g, b, e);
    if (!x) return -1;
    const enum qt_image_layout layout = qt_image_layout(g);
    struct qt_shape xs = qt_image_batch_shape(ds, batch, layout);
    struct qt_tensor *xt = qt_tensor_new(QT_F32, &xs);
    int32_t *labels = malloc(sizeof(int32_t) * batch);
    int *idx = malloc(sizeof(int) * batch);
    int64_t done = 0;
    const int64_t per = (int64_t)ds->c * ds->h * ds->w;
    const double t0 = qt_now();
    int rc = 0;
    if (!xt || !labels || !idx) rc = qt_err(e, "out of memory for a batch of %d", batch);
    while (!rc && done < total) {
        const int n = (int)(total - done < batch ? total - done : batch);
        for (int i = 0; i < n; i++) idx[i] = (int)(done + i);
        if (qt_dataset_batch(ds, idx, n, mean, std, layout, xt->data, labels, e)) {
            rc = -1;
            break;
        }
        if (static_batch && n < batch) /* pad the last batch; extra rows are ignored */
            memset((float *)xt->data + n * per, 0, sizeof(float) * (batch - n) * per);
        xt->shape.d[0] = static_batch ? batch : n;
        xt->nbytes = sizeof(float) * qt_shape_numel(&xt->shape);
        const struct qt_tensor *ins[1] = {xt};
        if (qt_exec_forward(x, ins, e) || fn(ctx, x, labels, n, done, e)) {
            rc = -1;
            break;
        }
        done += n;
        if (progress) progress(pctx, done, total, qt_now() - t0);
    }
    *seconds = qt_now() - t0;
    *images = done;
    free(idx);
    free(labels);
    qt_tensor_free(xt);
    qt_exec_free(x);
    return rc;
}

/* ---- evaluation: loss and counts on the backend, four numbers read back per batch ---- */

struct eval_ctx {
    const struct qt_graph *g;
    const struct qt_dataset *ds;
    struct qt_backend *b;
    int32_t *labels_dev;
    double *stats_dev;
    int64_t top1, top5;
    double loss;
};

static int eval_batch(void *vctx, struct qt_exec *x, const int32_t *labels, int n, int64_t done,
                      struct qt_error *e)
{
    struct eval_ctx *c = vctx;
    struct qt_backend *b = c->b;
    char s1[128];
    const struct qt_tensor *out = qt_exec_logits(x); /* before a final Softmax */
    if (out->dtype != QT_F32 || out->shape.ndim != 2 || out->shape.d[0] < n)
        return qt_err(e, "the model's output is %s; eval needs [N, classes] logits",
                      qt_shape_str(c->g, &out->shape, s1, sizeof s1));
    const int classes = (int)out->shape.d[1];
    if (classes < c->ds->nclasses)
        return qt_err(e, "the model predicts %d classes but the dataset has %d", classes,
                      c->ds->nclasses);
    double st[QT_XENT_STATS];
    if (b->upload(b, c->labels_dev, labels, sizeof(int32_t) * n) ||
        b->xent(b, NULL, c->stats_dev, out->data, c->labels_dev, n, classes, 0.0f, 1.0f, e) ||
        b->sync(b, e) || b->download(b, st, c->stats_dev, sizeof st))
        return qt_err_prefix(e, "loss of the batch at sample %lld: ", (long long)done);
    if (st[QT_XENT_NONFINITE] > 0)
        return qt_err(e, "the model produced non-finite logits on %.0f of the %d samples from "
                         "sample %lld", st[QT_XENT_NONFINITE], n, (long long)done);
    c->top1 += (int64_t)st[QT_XENT_TOP1];
    c->top5 += (int64_t)st[QT_XENT_TOP5];
    c->loss += st[QT_XENT_LOSS];
    return 0;
}

int qt_evaluate(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                const float *mean, const float *std, int batch, int64_t limit,
                qt_progress_fn progress, void *ctx, struct qt_eval_result *r, struct qt_error *e)
{
    memset(r, 0, sizeof *r);
    const int bmax = g->ninputs == 1 && g->values[g->inputs[0]].shape.ndim > 0 &&
                             g->values[g->inputs[0]].shape.d[0] >= 0
                         ? (int)g->values[g->inputs[0]].shape.d[0]
                         : batch;
    struct eval_ctx c = {.g = g, .ds = ds, .b = b};
    int rc = 0;
    if (bmax > 0) {
        c.labels_dev = b->alloc(b, sizeof(int32_t) * bmax);
        c.stats_dev = b->alloc(b, sizeof(double) * QT_XENT_STATS);
        if (!c.labels_dev || !c.stats_dev) rc = qt_err(e, "out of memory for a batch of %d", bmax);
    }
    if (!rc)
        rc = for_each_batch(g, b, ds, mean, std, batch, limit, progress, ctx, eval_batch, &c,
                            &r->images, &r->seconds, e);
    if (r->images) {
        r->top1 = 100.0 * c.top1 / r->images;
        r->top5 = 100.0 * c.top5 / r->images;
        r->loss = c.loss / r->images;
        r->images_per_s = r->images / (r->seconds > 0 ? r->seconds : 1e-9);
    }
    if (c.labels_dev) b->release(b, c.labels_dev);
    if (c.stats_dev) b->release(b, c.stats_dev);
    return rc;
}

/* ---- predictions: graph output 0 of every sample, read back per batch ---- */

struct predict_ctx {
    const struct qt_graph *g;
    int64_t total;
    struct qt_tensor *y;
};

static int predict_batch(void *vctx, struct qt_exec *x, const int32_t *labels, int n,
                         int64_t done, struct qt_error *e)
{
    (void)labels;
    struct predict_ctx *c = vctx;
    char s1[128];
    const struct qt_tensor *o = qt_exec_output(x, 0);
    if (o->dtype != QT_F32 || o->shape.ndim < 1 || o->shape.d[0] < n)
        return qt_err(e, "the model's output is %s %s; run writes float32 outputs with one row "
                         "per sample",
                      qt_dtype_name(o->dtype), qt_shape_str(c->g, &o->shape, s1, sizeof s1));
    const int64_t row = o->shape.d[0] ? qt_shape_numel(&o->shape) / o->shape.d[0] : 0;
    if (!c->y) {
        struct qt_shape ys = o->shape;
        ys.d[0] = c->total;
        if (!(c->y = qt_tensor_new(QT_F32, &ys)))
            return qt_err(e, "out of memory for %lld outputs", (long long)c->total);
    } else if (row * c->total != qt_shape_numel(&c->y->shape)) {
        return qt_err(e, "the model's output changed shape to %s at sample %lld",
                      qt_shape_str(c->g, &o->shape, s1, sizeof s1), (long long)done);
    }
    return qt_exec_read(x, o->data, (float *)c->y->data + done * row, n * row, e);
}

int qt_predict(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
               const float *mean, const float *std, int batch, int64_t limit,
               qt_progress_fn progress, void *ctx, struct qt_tensor **y, double *seconds,
               struct qt_error *e)
{
    struct predict_ctx c = {.g = g, .total = limit > 0 && limit < ds->n ? limit : ds->n};
    int64_t images;
    *y = NULL;
    if (for_each_batch(g, b, ds, mean, std, batch, limit, progress, ctx, predict_batch, &c,
                       &images, seconds, e)) {
        qt_tensor_free(c.y);
        return -1;
    }
    *y = c.y;
    return 0;
}
