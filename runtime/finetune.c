/* Preparation of quantization-aware fine-tuning (finetune.h). */
#include "finetune.h"

#include <stdlib.h>
#include <string.h>

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
    if (qt_calib_quantizers(g, b, train, &c->calib, c->calib_alphas, &r->calib, e))
        return qt_err_prefix(e, "calibration: ");
    if (qt_evaluate(g, b, test, c->calib.mean, c->calib.std, c->eval_batch, c->test_limit, progress,
                    ctx, &r->eval, e))
        return -1;
    r->evaluated = 1;
    return 0;
}
