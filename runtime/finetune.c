/* Preparation of quantization-aware fine-tuning (finetune.h). */
#include "finetune.h"

#include <stdlib.h>
#include <string.h>

/* The BatchNorms' running statistics (inputs 3 and 4), copied; indexed by value. */
static struct qt_tensor **save_state(const struct qt_graph *g)
{
    struct qt_tensor **t = calloc(g->nvalues + 1, sizeof *t);
    for (int i = 0; t && i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead || n->op != QT_OP_BATCHNORM || n->nin < 5) continue;
        for (int k = 3; k < 5; k++) {
            const int v = n->in[k];
            if (v >= 0 && g->values[v].init && !t[v]) t[v] = qt_tensor_clone(g->values[v].init);
        }
    }
    return t;
}

/* Swaps the saved statistics with the graph's. */
static void swap_state(struct qt_graph *g, struct qt_tensor **t)
{
    for (int i = 0; i < g->nvalues; i++)
        if (t[i]) {
            struct qt_tensor *x = g->values[i].init;
            g->values[i].init = t[i];
            t[i] = x;
        }
}

static void free_state(const struct qt_graph *g, struct qt_tensor **t)
{
    for (int i = 0; t && i < g->nvalues; i++)
        qt_tensor_free(t[i]);
    free(t);
}

/* Calibration, then the BatchNorm decision on held-out training images. */
static int calibrate(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                     const struct qt_prepare_config *c, struct qt_prepare_report *r,
                     struct qt_error *e)
{
    struct qt_dataset hold;
    struct qt_error he;
    const int checked = c->holdout > 0 && qt_calib_holdout(&hold, train, &c->calib, c->holdout, &he) == 0;
    struct qt_tensor **own = checked ? save_state(g) : NULL;
    if (checked && !own) {
        qt_dataset_free(&hold);
        return qt_err(e, "out of memory saving the BatchNorm statistics");
    }
    int rc = qt_calib_quantizers(g, b, train, &c->calib, c->calib_alphas, &r->calib, e);
    if (rc) qt_err_prefix(e, "calibration: ");
    r->bn_reestimated = -1;
    if (!rc && checked) {
        struct qt_eval_result ev[2];
        rc = qt_evaluate(g, b, &hold, c->calib.mean, c->calib.std, c->eval_batch, 0, NULL, NULL,
                         &ev[1], e);
        swap_state(g, own); /* the model's own statistics */
        if (!rc)
            rc = qt_evaluate(g, b, &hold, c->calib.mean, c->calib.std, c->eval_batch, 0, NULL,
                             NULL, &ev[0], e);
        if (!rc) {
            r->bn_top1[0] = ev[0].top1;
            r->bn_top1[1] = ev[1].top1;
            r->bn_reestimated = ev[1].top1 > ev[0].top1;
            if (r->bn_reestimated) swap_state(g, own);
        }
    }
    free_state(g, own);
    if (checked) qt_dataset_free(&hold);
    return rc;
}

int qt_finetune_prepare(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                        const struct qt_dataset *test, const struct qt_prepare_config *c,
                        qt_progress_fn progress, void *ctx, struct qt_prepare_report *r,
                        struct qt_error *e)
{
    memset(r, 0, sizeof *r);
    /* Convs without a BatchNorm after them (folded models) get one back, so that standardized
     * weights have something to absorb their scale (APOT.md section 5). */
    if (c->unfold && c->quant->standardize) {
        int *bn = NULL;
        int rc = qt_pass_unfold_batchnorm(g, &bn, &r->unfolded, e);
        if (rc == 0 && r->unfolded && !c->resume)
            rc = qt_calib_bn_from_data(g, b, train, &c->calib, bn, r->unfolded, e);
        free(bn);
        if (rc) return -1;
    }
    if (qt_pass_quantize(g, c->quant, &r->quant, e)) return -1;
    if (c->resume) return 0;
    if (r->quant.weight + r->quant.act > 0 && calibrate(g, b, train, c, r, e)) return -1;
    if (qt_evaluate(g, b, test, c->calib.mean, c->calib.std, c->eval_batch, c->test_limit, progress,
                    ctx, &r->eval, e))
        return -1;
    r->evaluated = 1;
    return 0;
}
