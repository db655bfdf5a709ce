/* Preparation of quantization-aware fine-tuning (finetune.h). */
#include "finetune.h"

#include <stdlib.h>
#include <string.h>

#include "../kernels/common/apot.h"
#include "../onnx/onnx.h"

static void free_state(const struct qt_graph *g, struct qt_tensor **t)
{
    for (int i = 0; t && i < g->nvalues; i++)
        qt_tensor_free(t[i]);
    free(t);
}

/* What calibration and bias correction change, copied (indexed by value): the BatchNorms'
 * bias and running statistics (inputs 2 to 4) and the biases of Conv and Gemm layers. */
static struct qt_tensor **save_state(const struct qt_graph *g)
{
    struct qt_tensor **t = calloc(g->nvalues + 1, sizeof *t);
    for (int i = 0; t && i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        int lo = 2, hi = 2;
        if (n->op == QT_OP_BATCHNORM && n->nin >= 5)
            hi = 4;
        else if ((n->op != QT_OP_CONV && n->op != QT_OP_GEMM) || n->nin < 3)
            continue;
        for (int k = lo; k <= hi; k++) {
            const int v = n->in[k];
            if (v >= 0 && g->values[v].init && !t[v]) {
                if (!(t[v] = qt_tensor_clone(g->values[v].init))) {
                    free_state(g, t);
                    return NULL;
                }
            }
        }
    }
    return t;
}

/* Copies the saved values into the graph's. */
static void load_state(struct qt_graph *g, struct qt_tensor *const *t)
{
    for (int i = 0; i < g->nvalues; i++)
        if (t[i])
            memcpy(g->values[i].init->data, t[i]->data, t[i]->nbytes);
}

/* Sets standardize = to on the WeightQuant nodes that have from; returns how many. */
static int set_standardize(struct qt_graph *g, int from, int to)
{
    int k = 0;
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        if (n->dead || n->op != QT_OP_WEIGHTQUANT || qt_node_int(n, "standardize", -1) != from)
            continue;
        qt_node_set_int(n, "standardize", to);
        k++;
    }
    return k;
}

/* A copy of g (through its serialized form), canonicalized as loaded models are. */
static struct qt_graph *graph_copy(const struct qt_graph *g, struct qt_error *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (qt_onnx_serialize(g, &buf, &len, e)) return NULL;
    struct qt_graph *c = qt_onnx_load_buffer(buf, len, NULL, "the float model", e);
    free(buf);
    if (c && qt_pass_canonicalize(c, e)) {
        qt_graph_free(c);
        return NULL;
    }
    return c;
}

static int holdout_top1(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *hold,
                        const struct qt_prepare_config *c, double *top1, struct qt_error *e)
{
    struct qt_eval_result ev;
    if (qt_evaluate(g, b, hold, c->calib.mean, c->calib.std, c->eval_batch, 0, NULL, NULL, &ev, e))
        return -1;
    *top1 = ev.top1;
    return 0;
}

/* Calibration, then the choice on held-out training images between the candidates c->bn
 * allows: the model's own BatchNorm statistics, statistics re-estimated with the quantizers
 * in place, and (with fp) the own statistics with bias correction; ties go to the fewest
 * changes. A single candidate is taken without the check. */
static int calibrate(struct qt_graph *g, struct qt_graph *fp, struct qt_backend *b,
                     const struct qt_dataset *train, const struct qt_prepare_config *c,
                     struct qt_prepare_report *r, struct qt_error *e)
{
    const int allow[3] = {c->bn != QT_BN_DATA, c->bn != QT_BN_OWN,
                          c->bn != QT_BN_DATA && fp && c->bias_correct};
    struct qt_dataset hold;
    struct qt_error he;
    const int checked = allow[0] + allow[1] + allow[2] > 1 && c->holdout > 0 &&
                        qt_calib_holdout(&hold, train, &c->calib, c->holdout, &he) == 0;
    struct qt_tensor **st[3] = {NULL, NULL, NULL}; /* own, re-estimated, bias-corrected */
    if (allow[0] && (checked || !allow[1]) && !(st[0] = save_state(g))) {
        if (checked) qt_dataset_free(&hold);
        return qt_err(e, "out of memory saving the BatchNorm statistics");
    }
    int rc = qt_calib_quantizers(g, b, train, &c->calib, c->calib_alphas, &r->calib, e);
    if (rc) qt_err_prefix(e, "calibration: ");
    if (!rc && fp && c->adaround) {
        /* learned rounding on the model with its own statistics (when they are a candidate),
         * then the re-estimated candidate again with the new weights */
        if (st[0]) load_state(g, st[0]);
        rc = qt_calib_adaround(g, fp, b, train, &c->calib, &c->ar, &r->ar, e);
        if (rc) qt_err_prefix(e, "AdaRound: ");
        struct qt_calib_report cr;
        if (!rc) {
            rc = qt_calib_quantizers(g, b, train, &c->calib, 0, &cr, e);
            if (rc) qt_err_prefix(e, "calibration: ");
        }
    }
    r->bn_reestimated = -1;
    r->bn_choice = 1;
    r->bn_top1[0] = r->bn_top1[1] = r->bn_top1[2] = -1;
    if (!rc && checked) {
        if (allow[1]) {
            rc = holdout_top1(g, b, &hold, c, &r->bn_top1[1], e);
            if (!rc && !(st[1] = save_state(g))) rc = qt_err(e, "out of memory");
        }
        if (!rc) {
            load_state(g, st[0]);
            rc = holdout_top1(g, b, &hold, c, &r->bn_top1[0], e);
        }
        if (!rc && allow[2]) {
            rc = qt_calib_bias_correct(g, fp, b, train, &c->calib, &r->bias_corrected, e);
            if (rc) qt_err_prefix(e, "bias correction: ");
            if (!rc) rc = holdout_top1(g, b, &hold, c, &r->bn_top1[2], e);
            if (!rc && !(st[2] = save_state(g))) rc = qt_err(e, "out of memory");
        }
        if (!rc) {
            int best = 0;
            if (r->bn_top1[2] > r->bn_top1[best]) best = 2;
            if (r->bn_top1[1] > r->bn_top1[best]) best = 1;
            load_state(g, st[best]);
            r->bn_choice = best;
            r->bn_reestimated = best == 1;
            if (best != 2) r->bias_corrected = 0;
        }
    } else if (!rc && !allow[1]) {
        /* the own statistics, bias-corrected when that is the only other candidate */
        load_state(g, st[0]);
        r->bn_choice = 0;
        r->bn_reestimated = 0;
        if (allow[2]) {
            rc = qt_calib_bias_correct(g, fp, b, train, &c->calib, &r->bias_corrected, e);
            if (rc) qt_err_prefix(e, "bias correction: ");
            r->bn_choice = 2;
        }
    } else if (!rc && !allow[0]) {
        r->bn_reestimated = 1; /* the only candidate */
    }
    for (int k = 0; k < 3; k++) free_state(g, st[k]);
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
    struct qt_graph *fp = NULL;
    if ((c->bias_correct || c->adaround) && !c->resume && !(fp = graph_copy(g, e))) return -1;
    if (qt_pass_quantize(g, c->quant, &r->quant, e)) {
        qt_graph_free(fp);
        return -1;
    }
    if (c->resume) return 0;
    if (c->restore) r->restored = set_standardize(g, QT_STD_ON, QT_STD_RESTORE);
    int rc = 0;
    if (r->quant.weight + r->quant.act > 0) rc = calibrate(g, fp, b, train, c, r, e);
    qt_graph_free(fp);
    if (rc) return -1;
    if (qt_evaluate(g, b, test, c->calib.mean, c->calib.std, c->eval_batch, c->test_limit, progress,
                    ctx, &r->eval, e))
        return -1;
    r->evaluated = 1;
    if (c->restore && c->train && set_standardize(g, QT_STD_RESTORE, QT_STD_ON)) {
        /* Fine-tuning uses the weights standardized, in units their BatchNorms' running
         * statistics do not share: statistics for that form, as training mode would gather. */
        struct qt_calib_report cr;
        if (qt_calib_quantizers(g, b, train, &c->calib, 0, &cr, e)) {
            qt_err_prefix(e, "BatchNorm statistics of the standardized weights: ");
            return -1;
        }
    }
    return 0;
}
