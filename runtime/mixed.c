/* Mixed precision by per-layer sensitivity (see mixed.h). */
#include "mixed.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../graph/schema.h"
#include "../kernels/cpu/quant.h"
#include "loops.h"
#include "../util/clock.h"

int64_t qt_mixed_bytes(int64_t count, int bits)
{
    if (bits >= 32) return 4 * count;
    return qt_export_code_bytes((1 << bits) - 1, count, NULL);
}

static int layer_bits(const struct qt_mixed_layer *l, const struct qt_mixed_config *c)
{
    return l->fixed_bits > 0 ? l->fixed_bits : c->choices[l->choice];
}

static void totals(struct qt_mixed_report *r, const struct qt_mixed_config *c)
{
    r->bytes = r->bit_count = r->count = 0;
    for (int i = 0; i < r->n; i++) {
        const int bits = layer_bits(&r->layer[i], c);
        r->bytes += qt_mixed_bytes(r->layer[i].count, bits);
        r->bit_count += r->layer[i].count * bits;
        r->count += r->layer[i].count;
    }
}

static int fits_bytes(const struct qt_mixed_report *r, const struct qt_mixed_config *c)
{
    return !c->budget_bytes || r->bytes <= c->budget_bytes;
}

static int fits_bits(const struct qt_mixed_report *r, const struct qt_mixed_config *c)
{
    return !(c->avg_bits > 0) || (double)r->bit_count <= c->avg_bits * (double)r->count + 1e-6;
}

/* What moving layer l from its choice to k saves (> 0) in the measure that is over budget. */
static double saving(const struct qt_mixed_layer *l, int k, const struct qt_mixed_config *c,
                     int by_bytes)
{
    const int from = c->choices[l->choice], to = c->choices[k];
    if (by_bytes) return (double)(qt_mixed_bytes(l->count, from) - qt_mixed_bytes(l->count, to));
    return (double)l->count * (from - to);
}

int qt_mixed_allocate(struct qt_mixed_report *r, const struct qt_mixed_config *c,
                      struct qt_error *e)
{
    for (int i = 0; i < r->n; i++)
        if (r->layer[i].fixed_bits <= 0) r->layer[i].choice = c->nchoices - 1;
    totals(r, c);
    /* Lower: the step with the least loss per unit saved until both limits hold. */
    while (!fits_bytes(r, c) || !fits_bits(r, c)) {
        const int by_bytes = !fits_bytes(r, c);
        int bl = -1, bk = -1;
        double best = INFINITY, bsave = 0;
        for (int i = 0; i < r->n; i++) {
            const struct qt_mixed_layer *l = &r->layer[i];
            if (l->fixed_bits > 0) continue;
            for (int k = 0; k < l->choice; k++) {
                const double s = saving(l, k, c, by_bytes);
                if (!(s > 0)) continue;
                const double cost = (l->loss[k] - l->loss[l->choice]) / s;
                if (cost < best || (cost == best && s > bsave)) best = cost, bsave = s, bl = i, bk = k;
            }
        }
        if (bl < 0) {
            for (int i = 0; i < r->n; i++)
                if (r->layer[i].fixed_bits <= 0) r->layer[i].choice = 0;
            totals(r, c);
            return qt_err(e,
                          "the weights cannot fit: with every layer at %d bits they take %lld "
                          "bytes, %.3f bits on average (budget: %lld bytes, %.3f bits)",
                          c->choices[0], (long long)r->bytes,
                          r->count ? (double)r->bit_count / r->count : 0.0,
                          (long long)c->budget_bytes, c->avg_bits);
        }
        r->layer[bl].choice = bk;
        totals(r, c);
    }
    /* Raise: spend what is left where it lowers the loss most per unit, while both hold. */
    for (;;) {
        int bl = -1, bk = -1;
        double best = 0;
        for (int i = 0; i < r->n; i++) {
            struct qt_mixed_layer *l = &r->layer[i];
            if (l->fixed_bits > 0) continue;
            const int was = l->choice;
            for (int k = was + 1; k < c->nchoices; k++) {
                l->choice = k;
                totals(r, c);
                const int ok = fits_bytes(r, c) && fits_bits(r, c);
                l->choice = was;
                const double cost = c->budget_bytes
                                        ? (double)(qt_mixed_bytes(l->count, c->choices[k]) -
                                                   qt_mixed_bytes(l->count, c->choices[was]))
                                        : (double)l->count * (c->choices[k] - c->choices[was]);
                const double gain = (l->loss[was] - l->loss[k]) / (cost > 0 ? cost : 1e-30);
                if (ok && gain > best) best = gain, bl = i, bk = k;
            }
        }
        totals(r, c);
        if (bl < 0) break;
        r->layer[bl].choice = bk;
        totals(r, c);
    }
    return 0;
}

void qt_mixed_report_free(struct qt_mixed_report *r)
{
    free(r->layer);
    memset(r, 0, sizeof *r);
}

/* w quantized as post-training quantization would at qz: standardized (mapped back) when the
 * configuration standardizes, alphas by least error (per tensor) or largest magnitude (per
 * output channel). */
static int quantize_host(float *wq, const float *w, int64_t cnt, int64_t channels,
                         const struct qt_mixed_config *c, const struct qt_apot_quantizer *qz)
{
    const int per_ch = c->quant->per_channel && c->quant->scheme == QT_QS_UNIFORM && channels > 1;
    const int stdz = c->quant->standardize ? QT_STD_RESTORE : QT_STD_NONE;
    const int64_t nal = per_ch ? channels : 1, per = cnt / nal;
    float mu = 0, sigma = 1;
    if (stdz) quant_weight_stats_cpu(&mu, &sigma, w, cnt);
    float *x = malloc(sizeof(float) * (cnt ? cnt : 1)), *al = malloc(sizeof(float) * nal);
    if (!x || !al) {
        free(x);
        free(al);
        return -1;
    }
    for (int64_t i = 0; i < cnt; i++)
        x[i] = (w[i] - mu) / sigma;
    for (int64_t ch = 0; ch < nal; ch++) {
        if (!per_ch) {
            al[ch] = quant_alpha_mse_cpu(x, cnt, qz);
            continue;
        }
        float m = 0;
        for (int64_t t = 0; t < per; t++)
            m = fmaxf(m, fabsf(x[ch * per + t]));
        al[ch] = m > 0 ? m : 1.0f;
    }
    quant_weight_forward_cpu(wq, NULL, NULL, w, al, nal, stdz, qz, cnt);
    free(x);
    free(al);
    return 0;
}

int qt_mixed_sensitivity(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                         const struct qt_mixed_config *c, struct qt_mixed_report *r,
                         struct qt_error *e)
{
    memset(r, 0, sizeof *r);
    const double t0 = qt_now();
    if (c->nchoices < 1 || c->nchoices > QT_MIXED_MAX_CHOICES)
        return qt_err(e, "mixed precision needs 1 to %d candidate bit widths", QT_MIXED_MAX_CHOICES);
    for (int k = 0; k < c->nchoices; k++) {
        struct qt_apot_quantizer qz;
        int rc = qt_apot_quantizer_init(&qz, c->quant->scheme == QT_QS_APOT ? QT_SCHEME_APOT
                                                                            : QT_SCHEME_UNIFORM,
                                        c->choices[k], 1);
        if (rc || (k && c->choices[k] <= c->choices[k - 1]))
            return qt_err(e, "mixed precision: %d-bit %s weights %s", c->choices[k],
                          qt_quant_scheme_name(c->quant->scheme),
                          rc ? qt_apot_error_string(rc) : "out of ascending order");
    }
    /* The layers that follow --wbits are the allocated ones: those whose bits change when
     * --wbits does (the 8-bit first and last layers, float layers and --layer settings keep
     * theirs). */
    int *bits = calloc(g->nvalues + 1, sizeof *bits), *other = calloc(g->nvalues + 1, sizeof *other);
    struct qt_quant_config alt = *c->quant;
    alt.wbits = c->choices[0] != c->quant->wbits ? c->choices[0] : c->choices[c->nchoices - 1];
    if (!bits || !other) {
        free(bits);
        free(other);
        return qt_err(e, "out of memory");
    }
    if (qt_quant_weight_bits(g, c->quant, bits, e) || qt_quant_weight_bits(g, &alt, other, e)) {
        free(bits);
        free(other);
        return -1;
    }
    if (!(r->layer = calloc(g->nnodes + 1, sizeof *r->layer))) {
        free(bits);
        return qt_err(e, "out of memory");
    }
    /* every path from here leaves r for the caller to free (qt_mixed_report_free) */
    int allocatable = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (qt_layer_weight(g, n, 0) < 0) continue;
        const struct qt_value *w = &g->values[n->in[1]];
        struct qt_mixed_layer *l = &r->layer[r->n++];
        l->node = i;
        l->count = qt_shape_numel(&w->init->shape);
        const int wb = bits[n->in[1]];
        l->fixed_bits = wb == 0 ? 32 : wb != other[n->in[1]] ? 0 : wb;
        allocatable += l->fixed_bits == 0;
    }
    free(bits);
    free(other);
    if (!allocatable) {
        return qt_err(e, "mixed precision: no layer at --wbits %d to allocate (a float model "
                         "with Conv, Gemm or MatMul weights is needed)", c->quant->wbits);
    }
    struct qt_dataset hold;
    if (qt_calib_holdout(&hold, train, &c->calib, c->images, e))
        return qt_err_prefix(e, "mixed precision: ");
    struct qt_eval_result ev;
    int rc = qt_evaluate(g, b, &hold, c->calib.mean, c->calib.std, c->calib.batch, 0, NULL, NULL,
                         &ev, e);
    r->float_loss = ev.loss;
    for (int i = 0; i < r->n && !rc; i++) {
        struct qt_mixed_layer *l = &r->layer[i];
        if (l->fixed_bits > 0) continue;
        struct qt_tensor *w = g->values[g->nodes[l->node].in[1]].init;
        float *keep = malloc(sizeof(float) * l->count), *wq = malloc(sizeof(float) * l->count);
        if (!keep || !wq) rc = qt_err(e, "out of memory");
        if (!rc) memcpy(keep, w->data, sizeof(float) * l->count);
        for (int k = 0; k < c->nchoices && !rc; k++) {
            struct qt_apot_quantizer qz;
            qt_apot_quantizer_init(&qz, c->quant->scheme == QT_QS_APOT ? QT_SCHEME_APOT
                                                                       : QT_SCHEME_UNIFORM,
                                   c->choices[k], 1);
            const int64_t ch = g->nodes[l->node].op == QT_OP_CONV ? w->shape.d[0] : 1;
            if (quantize_host(wq, keep, l->count, ch, c, &qz)) {
                rc = qt_err(e, "out of memory");
                break;
            }
            memcpy(w->data, wq, sizeof(float) * l->count);
            rc = qt_evaluate(g, b, &hold, c->calib.mean, c->calib.std, c->calib.batch, 0, NULL,
                             NULL, &ev, e);
            memcpy(w->data, keep, sizeof(float) * l->count);
            l->loss[k] = ev.loss;
        }
        free(keep);
        free(wq);
    }
    qt_dataset_free(&hold);
    if (!rc) rc = qt_mixed_allocate(r, c, e);
    r->seconds = qt_now() - t0;
    return rc;
}
