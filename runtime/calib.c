/* Calibration: per-channel statistics of BatchNorm inputs, data-driven quantizer alphas and
 * BatchNorm re-estimation, over a few unaugmented batches of training images. */
#include "calib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../graph/schema.h"
#include "../passes/passes.h"
#include "exec.h"
#include "loops.h"
#include "quantizer.h"
#include "../util/rng.h"
#include "../util/clock.h"

/* The calibration images: the first batches * batch of a seeded permutation. */
struct feed {
    int *perm;
    int nb;
    enum qt_image_layout layout;
    struct qt_tensor *x;
    const struct qt_tensor *in[1];
};

static int *calib_permutation(const struct qt_dataset *ds, const struct qt_calib_config *c)
{
    int *perm = malloc(sizeof(int) * (ds->n + 1));
    if (!perm) return NULL;
    for (int i = 0; i < ds->n; i++)
        perm[i] = i;
    struct qt_rng rng;
    qt_rng_seed(&rng, c->seed ^ 0x63616c6962ull);
    qt_rng_shuffle(&rng, perm, ds->n);
    return perm;
}

int qt_calib_holdout(struct qt_dataset *out, const struct qt_dataset *ds,
                     const struct qt_calib_config *c, int n, struct qt_error *e)
{
    memset(out, 0, sizeof *out);
    if ((int64_t)c->batches * c->batch + n > ds->n)
        return qt_err(e, "the training split has %d images, too few for %d calibration and %d "
                         "held-out images", ds->n, c->batches * c->batch, n);
    int *perm = calib_permutation(ds, c);
    if (!perm) return qt_err(e, "out of memory for %d held-out images", n);
    const int rc = qt_dataset_subset(out, ds, perm + ds->n - n, n, e);
    free(perm);
    return rc;
}

static int feed_open(struct feed *f, const struct qt_graph *g, const struct qt_dataset *ds,
                     const struct qt_calib_config *c, struct qt_error *e)
{
    memset(f, 0, sizeof *f);
    if (c->batch <= 0 || c->batches <= 0) return qt_err(e, "calibration needs batches of images");
    if (qt_check_normalization(c->mean, c->std, ds->c, e)) return -1;
    int bsz = c->batch < ds->n ? c->batch : ds->n;
    if (bsz <= 1) return qt_err(e, "calibration needs at least 2 training images");
    const struct qt_value *in = &g->values[g->inputs[0]];
    if (in->shape.d[0] >= 0) bsz = (int)in->shape.d[0];
    f->nb = c->batches;
    if ((int64_t)f->nb * bsz > ds->n) f->nb = ds->n / bsz;
    if (f->nb < 1) return qt_err(e, "the training split has fewer than %d images", bsz);
    if (!(f->perm = calib_permutation(ds, c))) return qt_err(e, "out of memory");
    f->layout = qt_image_layout(g);
    struct qt_shape xs = qt_image_batch_shape(ds, bsz, f->layout);
    f->x = qt_tensor_new(QT_F32, &xs);
    f->in[0] = f->x;
    return 0;
}

static int feed_batch(struct feed *f, const struct qt_dataset *ds, const struct qt_calib_config *c,
                      int k, struct qt_error *e)
{
    int bsz = (int)f->x->shape.d[0];
    return qt_dataset_batch(ds, f->perm + (int64_t)k * bsz, bsz, c->mean, c->std, f->layout,
                            f->x->data, NULL, e);
}

static void feed_close(struct feed *f)
{
    free(f->perm);
    qt_tensor_free(f->x);
}

/* Per-channel mean of values v[0..n) of g (layouts [N, C, ...]) over the calibration batches,
 * in evaluation mode, and the unbiased variance when var is not NULL: mean[j] (and var[j]),
 * host arrays of the value's channel count ch[j] (ch may be NULL), allocated here. The sums
 * run on the backend; the host reads them back once at the end. */
static int channel_stats(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                         const struct qt_calib_config *c, const int *v, int n, double **mean,
                         double **var, int64_t *ch, struct qt_error *e)
{
    struct feed f;
    if (feed_open(&f, g, ds, c, e)) return -1;
    struct qt_exec *x = qt_exec_new(g, b, e);
    double **d1 = calloc(n, sizeof *d1), **d2 = calloc(n, sizeof *d2), **s2 = calloc(n, sizeof *s2);
    int64_t *cnt = calloc(n, sizeof *cnt), *cc = calloc(n, sizeof *cc);
    int rc = -1;
    if (!x || !d1 || !d2 || !s2 || !cnt || !cc) {
        if (x) qt_err(e, "out of memory");
        goto out;
    }
    qt_exec_set_mode(x, QT_EXEC_PLAIN);
    qt_exec_keep_values(x, 1);
    for (int k = 0; k < f.nb; k++) {
        if (feed_batch(&f, ds, c, k, e) || qt_exec_forward(x, f.in, e)) goto out;
        for (int j = 0; j < n; j++) {
            const struct qt_tensor *t = qt_exec_value(x, v[j]);
            if (!t || t->shape.ndim < 2) {
                qt_err(e, "value '%s' was not kept or has no channel axis", g->values[v[j]].name);
                goto out;
            }
            const int64_t nb = t->shape.d[0], nc = t->shape.d[1];
            const int64_t hw = (nb * nc) != 0 ? qt_shape_numel(&t->shape) / (nb * nc) : 0;
            if (!d1[j]) {
                cc[j] = nc;
                d1[j] = b->alloc(b, sizeof(double) * nc);
                d2[j] = b->alloc(b, sizeof(double) * nc);
                mean[j] = calloc(nc, sizeof(double));
                s2[j] = calloc(nc, sizeof(double));
                if (!d1[j] || !d2[j] || !mean[j] || !s2[j] ||
                    b->upload(b, d1[j], mean[j], sizeof(double) * nc) ||
                    b->upload(b, d2[j], s2[j], sizeof(double) * nc)) {
                    qt_err(e, "out of memory on the %s backend", b->name);
                    goto out;
                }
            }
            if (nc != cc[j]) {
                qt_err(e, "value '%s' changed its channel count", g->values[v[j]].name);
                goto out;
            }
            if (b->channel_moments(b, d1[j], d2[j], t->data, nb, nc, hw, e)) goto out;
            cnt[j] += nb * hw;
        }
    }
    if (b->sync(b, e)) goto out;
    for (int j = 0; j < n; j++) {
        if (b->download(b, mean[j], d1[j], sizeof(double) * cc[j]) ||
            b->download(b, s2[j], d2[j], sizeof(double) * cc[j])) {
            qt_err(e, "cannot read the statistics back from the %s backend", b->name);
            goto out;
        }
        const double m = (double)(cnt[j] ? cnt[j] : 1);
        for (int64_t q = 0; q < cc[j]; q++) {
            const double s1 = mean[j][q];
            mean[j][q] = s1 / m;
            double vr = cnt[j] > 1 ? (s2[j][q] - mean[j][q] * s1) / (double)(cnt[j] - 1) : 0.0;
            s2[j][q] = vr < 0 ? 0 : vr;
        }
        if (var) {
            var[j] = s2[j];
            s2[j] = NULL;
        }
        if (ch) ch[j] = cc[j];
    }
    rc = 0;
out:
    for (int j = 0; d1 && d2 && s2 && j < n; j++) {
        if (d1[j]) b->release(b, d1[j]);
        if (d2[j]) b->release(b, d2[j]);
        free(s2[j]);
    }
    free(d1);
    free(d2);
    free(s2);
    free(cnt);
    free(cc);
    if (x) qt_exec_free(x);
    feed_close(&f);
    return rc;
}

int qt_calib_bn_from_data(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                          const struct qt_calib_config *c, const int *bn, int n, struct qt_error *e)
{
    if (n == 0) return 0;
    int *v = calloc(n, sizeof(int));
    double **mean = calloc(n, sizeof *mean), **var = calloc(n, sizeof *var);
    int64_t *ch = calloc(n, sizeof *ch);
    int rc = -1;
    if (!v || !mean || !var || !ch) {
        qt_err(e, "calibration: out of memory");
        goto out;
    }
    for (int j = 0; j < n; j++) v[j] = g->nodes[bn[j]].in[0];
    if (channel_stats(g, b, ds, c, v, n, mean, var, ch, e)) {
        qt_err_prefix(e, "calibration: ");
        goto out;
    }
    for (int j = 0; j < n; j++) {
        struct qt_node *nd = &g->nodes[bn[j]];
        float *scale = g->values[nd->in[1]].init->data, *bias = g->values[nd->in[2]].init->data;
        float *bm = g->values[nd->in[3]].init->data, *bv = g->values[nd->in[4]].init->data;
        double eps = qt_node_float(nd, "epsilon", 1e-5f);
        if (qt_shape_numel(&g->values[nd->in[1]].init->shape) != ch[j]) {
            qt_err(e, "calibration: '%s' has a parameter count other than its input's channels",
                   nd->name);
            goto out;
        }
        for (int64_t q = 0; q < ch[j]; q++) {
            const double m = mean[j][q], vr = var[j][q];
            double old = sqrt((double)bv[q] + eps);
            double sc = scale[q];
            scale[q] = (float)(sc * sqrt(vr + eps) / old);
            bias[q] = (float)(bias[q] + sc * (m - bm[q]) / old);
            bm[q] = (float)m;
            bv[q] = (float)vr;
        }
    }
    rc = 0;
out:
    for (int j = 0; mean && var && j < n; j++) {
        free(mean[j]);
        free(var[j]);
    }
    free(mean);
    free(var);
    free(ch);
    free(v);
    return rc;
}

/* Alpha(s) of weight quantizer node nd from its weights, standardized as the node does, on
 * backend b: the least-error search (QT_CALIB_MSE) or the largest magnitude (QT_CALIB_MINMAX)
 * per alpha; the weights' moments and the searches run there; the host reads back two sums
 * and one alpha per channel. */
static int weight_alpha(struct qt_graph *g, struct qt_backend *b, const struct qt_node *nd,
                        int wmethod, struct qt_error *e)
{
    struct qt_quant_attrs a;
    struct qt_apot_quantizer qz;
    if (qt_quantizer_from_node(&a, &qz, nd, e)) return -1;
    if (a.scheme >= QT_QS_MAX) return 0;
    const struct qt_tensor *w = g->values[nd->in[0]].init;
    struct qt_tensor *al = g->values[nd->in[1]].init;
    if (!w || !al) return qt_err(e, "%s: weight or alpha is not an initializer", nd->name);
    const int64_t n = qt_shape_numel(&w->shape), nal = qt_shape_numel(&al->shape);
    const int64_t per = nal > 0 ? n / nal : 0;
    float *dw = b->alloc(b, sizeof(float) * (n ? n : 1)), *da = b->alloc(b, sizeof(float));
    double *dm = b->alloc(b, 2 * sizeof(double));
    float *buf = malloc(sizeof(float) * (n ? n : 1));
    double m[2] = {0, 0};
    int rc = -1;
    if (!dw || !da || !dm || !buf || b->upload(b, dw, w->data, sizeof(float) * n) ||
        b->upload(b, dm, m, sizeof m)) {
        qt_err(e, "%s: out of memory on the %s backend", nd->name, b->name);
        goto out;
    }
    /* Mean and unbiased standard deviation over the whole tensor (sigma 1 when constant). */
    float mu = 0, sigma = 1;
    if (a.standardize) {
        if (b->channel_moments(b, dm, dm + 1, dw, 1, 1, n, e) || b->sync(b, e) ||
            b->download(b, m, dm, sizeof m))
            goto out;
        const double mean = n > 0 ? m[0] / n : 0.0;
        const double var = n > 1 ? (m[1] - mean * m[0]) / (double)(n - 1) : 0.0;
        mu = (float)mean;
        sigma = var > 0 ? (float)sqrt(var) : 1.0f;
    }
    const float *src = w->data;
    for (int64_t i = 0; i < n; i++)
        buf[i] = (src[i] - mu) / sigma;
    if (b->upload(b, dw, buf, sizeof(float) * n)) goto out;
    for (int64_t ch = 0; ch < nal; ch++) {
        if (wmethod == QT_CALIB_MINMAX) {
            float m = 0.0f;
            if (b->upload(b, da, &m, sizeof m) ||
                b->range_max(b, da, dw + ch * per, per, 1, e) || b->sync(b, e) ||
                b->download(b, &m, da, sizeof m))
                goto out;
            ((float *)al->data)[ch] = m > 0 ? m : 1.0f;
        } else if (b->alpha_search(b, da, dw + ch * per, per, &qz, e) || b->sync(b, e) ||
                   b->download(b, (float *)al->data + ch, da, sizeof(float))) {
            goto out;
        }
    }
    rc = 0;
out:
    if (dw) b->release(b, dw);
    if (da) b->release(b, da);
    if (dm) b->release(b, dm);
    free(buf);
    return rc;
}

const char *qt_calib_method_name(int method)
{
    return method == QT_CALIB_MINMAX ? "minmax" : method == QT_CALIB_PERCENTILE ? "percentile" : "mse";
}

int qt_calib_quantizers(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                        const struct qt_calib_config *c, int set_alphas, struct qt_calib_report *r,
                        struct qt_error *e)
{
    double t0 = qt_now();
    memset(r, 0, sizeof *r);
    int nact = 0, nbn = 0;
    int *act = malloc(sizeof(int) * (g->nnodes + 1)), *bn = malloc(sizeof(int) * (g->nnodes + 1));
    float *saved_mom = malloc(sizeof(float) * (g->nnodes + 1));
    float **samp = calloc(g->nnodes + 1, sizeof *samp);
    int64_t *nsamp = calloc(g->nnodes + 1, sizeof *nsamp);
    struct qt_apot_quantizer *qz = calloc(g->nnodes + 1, sizeof *qz);
    struct qt_exec *x = NULL;
    struct feed f;
    memset(&f, 0, sizeof f);
    int rc = -1;
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *nd = &g->nodes[i];
        if (nd->op == QT_OP_WEIGHTQUANT && set_alphas && nd->nin > 1 && nd->in[1] >= 0) {
            if (weight_alpha(g, b, nd, c->weight_method, e)) goto out;
            r->weight_alphas++;
        } else if (nd->op == QT_OP_ACTQUANT) {
            struct qt_quant_attrs a;
            if (qt_quantizer_from_node(&a, &qz[nact], nd, e)) goto out;
            if (!g->values[nd->in[1]].init) {
                qt_err(e, "%s: alpha is not an initializer", nd->name);
                goto out;
            }
            act[nact++] = i;
        } else if (nd->op == QT_OP_BATCHNORM) {
            saved_mom[nbn] = qt_node_float(nd, "momentum", 0.9f);
            bn[nbn++] = i;
        }
    }
    if (feed_open(&f, g, ds, c, e)) goto out;
    if (!(x = qt_exec_new(g, b, e))) goto out;
    int64_t per_batch = (c->samples > 0 ? c->samples : 65536) / f.nb;
    if (per_batch < 1) per_batch = 1;
    for (int j = 0; j < nact; j++)
        if (!(samp[j] = b->alloc(b, sizeof(float) * per_batch * f.nb))) {
            qt_err(e, "calibration: out of memory on the %s backend", b->name);
            goto out;
        }
    int rounds = set_alphas && nact ? (c->rounds > 0 ? c->rounds : 2) : 0;
    const double pct = c->percentile > 0 ? c->percentile : 99.99;
    /* Evaluation mode, unless standardized weights are not mapped back: their BatchNorms'
     * running statistics belong to other units, and only batch statistics give activations
     * like the model's. */
    int train_mode = 0;
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead && g->nodes[i].op == QT_OP_WEIGHTQUANT &&
            qt_node_int(&g->nodes[i], "standardize", 0) == QT_STD_ON)
            train_mode = 1;
    qt_exec_set_mode(x, QT_EXEC_PLAIN);
    qt_exec_keep_values(x, 1);
    for (int round = 0; round <= rounds; round++) {
        for (int j = 0; j < nact; j++) {
            float *al = qt_exec_param(x, g->nodes[act[j]].in[1]);
            if (!al) {
                qt_err(e, "calibration: '%s' has no alpha on the backend", g->nodes[act[j]].name);
                goto out;
            }
            nsamp[j] = 0;
            /* min/max: the largest value so far, accumulated in the sample buffer */
            if (round < rounds && c->method == QT_CALIB_MINMAX &&
                b->upload(b, samp[j], &(float){0.0f}, sizeof(float)))
                goto out;
        }
        for (int k = 0; k < f.nb; k++) {
            if (feed_batch(&f, ds, c, k, e)) goto out;
            if (round == rounds) {
                /* Running statistics become the average over this round's batches. */
                for (int j = 0; j < nbn; j++)
                    qt_node_set_float(&g->nodes[bn[j]], "momentum", (float)k / (float)(k + 1));
                if (nbn) qt_exec_invalidate(x); /* the momentum attributes changed */
                if (qt_exec_forward_train(x, f.in, e)) goto out;
                continue;
            }
            if ((train_mode ? qt_exec_forward_train : qt_exec_forward)(x, f.in, e)) goto out;
            for (int j = 0; j < nact; j++) {
                const struct qt_tensor *t = qt_exec_value(x, g->nodes[act[j]].in[0]);
                if (!t) {
                    qt_err(e, "calibration: the input of '%s' was not kept", g->nodes[act[j]].name);
                    goto out;
                }
                const int64_t cnt = qt_shape_numel(&t->shape);
                if (c->method == QT_CALIB_MINMAX) {
                    if (b->range_max(b, samp[j], t->data, cnt, qz[j].is_signed, e))
                        goto out;
                    continue;
                }
                /* A strided subsample, taken on the backend. */
                if (b->subsample(b, samp[j] + nsamp[j], per_batch, t->data, cnt, e)) goto out;
                nsamp[j] += qt_subsample_count(per_batch, cnt);
            }
        }
        if (round == rounds) break;
        for (int j = 0; j < nact; j++) {
            /* The alpha is computed on the backend and written there, where the next round
             * reads it. */
            float *al = qt_exec_param(x, g->nodes[act[j]].in[1]);
            if (c->method == QT_CALIB_MINMAX) {
                float m = 0;
                if (b->sync(b, e) || b->download(b, &m, samp[j], sizeof m)) goto out;
                if (!(m > 0)) m = 1.0f;
                if (b->upload(b, al, &m, sizeof m)) goto out;
            } else if (c->method == QT_CALIB_PERCENTILE) {
                if (b->alpha_percentile(b, al, samp[j], nsamp[j], pct, qz[j].is_signed, e))
                    goto out;
            } else if (b->alpha_search(b, al, samp[j], nsamp[j], &qz[j], e)) {
                goto out;
            }
        }
    }
    /* The re-estimated running statistics, from backend memory into the graph. */
    if (qt_exec_sync_state(x, e)) goto out;
    r->act_alphas = rounds ? nact : 0;
    r->bn = nbn;
    rc = 0;
out:
    for (int j = 0; j < nbn; j++)
        qt_node_set_float(&g->nodes[bn[j]], "momentum", saved_mom[j]);
    for (int j = 0; j < nact; j++)
        if (samp[j]) b->release(b, samp[j]);
    free(samp);
    free(nsamp);
    free(qz);
    free(act);
    free(bn);
    free(saved_mom);
    if (x) qt_exec_free(x);
    feed_close(&f);
    r->seconds = qt_now() - t0;
    return rc;
}

/* ---- Bias correction ---- */

/* Where layer node li's mean output is corrected: the inference BatchNormalization that alone
 * reads its output (its bias, input 2), or the layer's own bias (Conv input 2, Gemm C of one
 * value per channel). *z is the value whose mean is matched: the BatchNorm's output, or the
 * layer's. Returns the bias tensor to subtract the shift from, or NULL (no place for one: the
 * layer is left as it is). */
static struct qt_tensor *correction_target(struct qt_graph *g, int li, int *z)
{
    const struct qt_node *L = &g->nodes[li];
    const int y = L->out[0];
    const int64_t C = g->values[y].shape.ndim >= 2 ? g->values[y].shape.d[1] : -1;
    if (C <= 0) return NULL;
    const int bi = qt_graph_use_count(g, y) == 1 ? qt_graph_first_consumer(g, y) : -1;
    if (bi >= 0 && g->nodes[bi].op == QT_OP_BATCHNORM && g->nodes[bi].nin >= 5 &&
        g->nodes[bi].in[0] == y && !(g->values[y].flags & QT_V_OUTPUT)) {
        struct qt_tensor *t = g->values[g->nodes[bi].in[2]].init;
        *z = g->nodes[bi].out[0];
        return t && t->dtype == QT_F32 && qt_shape_numel(&t->shape) == C ? t : NULL;
    }
    *z = y;
    if (L->op == QT_OP_GEMM && qt_node_float(L, "beta", 1.0f) != 1.0f) return NULL;
    if (L->nin > 2 && L->in[2] >= 0) {
        struct qt_tensor *t = g->values[L->in[2]].init;
        return t && t->dtype == QT_F32 && t->shape.ndim == 1 && t->shape.d[0] == C ? t : NULL;
    }
    return NULL;
}

int qt_calib_bias_correct(struct qt_graph *g, struct qt_graph *fp, struct qt_backend *b,
                          const struct qt_dataset *ds, const struct qt_calib_config *c,
                          int *corrected, struct qt_error *e)
{
    *corrected = 0;
    int n = 0, *li = malloc(sizeof(int) * (g->nnodes + 1)), *vf = malloc(sizeof(int) * (g->nnodes + 1));
    double **mf = calloc(g->nnodes + 1, sizeof *mf);
    int rc = -1;
    if (!li || !vf || !mf) {
        qt_err(e, "out of memory");
        goto out;
    }
    /* The quantized Conv and Gemm layers, and the value of the float model to match. */
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *L = &g->nodes[i];
        if (L->dead || (L->op != QT_OP_CONV && L->op != QT_OP_GEMM) || L->nin < 2) continue;
        const int p = g->values[L->in[1]].producer;
        if (p < 0 || g->nodes[p].op != QT_OP_WEIGHTQUANT) continue;
        const int fi = qt_graph_find_node(fp, L->name);
        if (fi < 0) continue;
        const int y = L->out[0];
        const int bi = qt_graph_use_count(g, y) == 1 ? qt_graph_first_consumer(g, y) : -1;
        int z = fp->nodes[fi].out[0];
        if (bi >= 0 && g->nodes[bi].op == QT_OP_BATCHNORM) {
            const int fb = qt_graph_find_node(fp, g->nodes[bi].name);
            if (fb < 0) continue;
            z = fp->nodes[fb].out[0];
        }
        li[n] = i;
        vf[n++] = z;
    }
    if (n == 0) {
        rc = 0;
        goto out;
    }
    if (channel_stats(fp, b, ds, c, vf, n, mf, NULL, NULL, e)) goto out;
    /* One layer at a time, in graph order: each pass sees the earlier corrections. */
    for (int j = 0; j < n; j++) {
        int z = -1;
        struct qt_tensor *bias = correction_target(g, li[j], &z);
        if (!bias) continue;
        double *mq = NULL;
        if (channel_stats(g, b, ds, c, &z, 1, &mq, NULL, NULL, e)) {
            free(mq);
            goto out;
        }
        const int64_t C = qt_shape_numel(&bias->shape);
        float *bd = bias->data;
        for (int64_t q = 0; q < C; q++) bd[q] = (float)((double)bd[q] - (mq[q] - mf[j][q]));
        free(mq);
        (*corrected)++;
    }
    rc = 0;
out:
    for (int j = 0; mf && j < n; j++) free(mf[j]);
    free(mf);
    free(li);
    free(vf);
    return rc;
}

int qt_calib_value_ranges(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                          const struct qt_calib_config *c, const int *v, int n, float *lo,
                          float *hi, struct qt_error *e)
{
    struct feed f;
    if (feed_open(&f, g, ds, c, e)) return -1;
    struct qt_exec *x = qt_exec_new(g, b, e);
    float *buf = NULL;
    int64_t cap = 0;
    int rc = -1;
    if (!x) goto out;
    qt_exec_set_mode(x, QT_EXEC_PLAIN);
    qt_exec_keep_values(x, 1);
    for (int j = 0; j < n; j++) {
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
    }
    for (int k = 0; k < f.nb; k++) {
        if (feed_batch(&f, ds, c, k, e) || qt_exec_forward(x, f.in, e)) goto out;
        for (int j = 0; j < n; j++) {
            const struct qt_tensor *t = qt_exec_value(x, v[j]);
            if (!t || t->dtype != QT_F32) {
                qt_err(e, "value '%s' was not kept or is not float32", g->values[v[j]].name);
                goto out;
            }
            const int64_t cnt = qt_shape_numel(&t->shape);
            if (cnt > cap) {
                float *nbuf = realloc(buf, sizeof(float) * (size_t)cnt);
                if (!nbuf) {
                    qt_err(e, "out of memory for %lld values of '%s'", (long long)cnt,
                           g->values[v[j]].name);
                    goto out;
                }
                buf = nbuf;
                cap = cnt;
            }
            if (qt_exec_read(x, t->data, buf, cnt, e)) goto out;
            for (int64_t i = 0; i < cnt; i++) {
                if (!isfinite(buf[i])) {
                    qt_err(e, "value '%s' holds %g on calibration batch %d", g->values[v[j]].name,
                           (double)buf[i], k);
                    goto out;
                }
                lo[j] = buf[i] < lo[j] ? buf[i] : lo[j];
                hi[j] = buf[i] > hi[j] ? buf[i] : hi[j];
            }
        }
    }
    rc = 0;
out:
    free(buf);
    if (x) qt_exec_free(x);
    feed_close(&f);
    return rc;
}

/* ---- AdaRound ---- */

/* Bytes of layer inputs and float outputs AdaRound keeps per layer at most (whole batches;
 * at least one). */
#define QT_ADAROUND_CACHE (512.0 * 1024 * 1024)

/* Every value v of g over the calibration batches, in evaluation mode, copied to the host:
 * *out [batches * batch, ...] (malloc'd), its shape in *shape. */
static int collect_value(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *ds,
                         const struct qt_calib_config *c, int v, float **out,
                         struct qt_shape *shape, struct qt_error *e)
{
    struct feed f;
    *out = NULL;
    if (feed_open(&f, g, ds, c, e)) return -1;
    struct qt_exec *x = qt_exec_new(g, b, e);
    int rc = -1;
    if (!x) goto out;
    qt_exec_set_mode(x, QT_EXEC_PLAIN);
    qt_exec_keep_values(x, 1);
    int64_t per = 0;
    for (int k = 0; k < f.nb; k++) {
        if (feed_batch(&f, ds, c, k, e) || qt_exec_forward(x, f.in, e)) goto out;
        const struct qt_tensor *t = qt_exec_value(x, v);
        if (!t) {
            qt_err(e, "value '%s' was not kept", g->values[v].name);
            goto out;
        }
        if (k == 0) {
            *shape = t->shape;
            per = qt_shape_numel(&t->shape);
            shape->d[0] *= f.nb;
            if (!(*out = malloc(sizeof(float) * (size_t)per * f.nb))) {
                qt_err(e, "out of memory for %lld calibration values of '%s'",
                       (long long)per * f.nb, g->values[v].name);
                goto out;
            }
        }
        if (qt_shape_numel(&t->shape) != per) {
            qt_err(e, "value '%s' changed its shape", g->values[v].name);
            goto out;
        }
        if (qt_exec_read(x, t->data, *out + (size_t)k * per, per, e)) goto out;
    }
    rc = 0;
out:
    if (rc) {
        free(*out);
        *out = NULL;
    }
    if (x) qt_exec_free(x);
    feed_close(&f);
    return rc;
}

/* A graph of layer node li of g alone: input "x" of the layer input's shape with batch
 * `batch`, the weight "w" as a parameter, its bias copied, output "y". */
static struct qt_graph *layer_graph(const struct qt_graph *g, int li, int64_t batch,
                                    struct qt_error *e)
{
    const struct qt_node *L = &g->nodes[li];
    struct qt_graph *s = qt_graph_new();
    if (!s) {
        qt_err(e, "out of memory");
        return NULL;
    }
    struct qt_shape xs = g->values[L->in[0]].shape;
    xs.d[0] = batch;
    int in[3], out;
    in[0] = qt_graph_add_value(s, "x", QT_F32, &xs);
    s->values[in[0]].flags |= QT_V_INPUT;
    s->inputs = malloc(sizeof(int));
    s->inputs[0] = in[0];
    s->ninputs = 1;
    const struct qt_tensor *w = g->values[g->nodes[g->values[L->in[1]].producer].in[0]].init;
    in[1] = qt_graph_add_value(s, "w", QT_F32, &w->shape);
    s->values[in[1]].init = qt_tensor_clone(w);
    s->values[in[1]].flags |= QT_V_PARAM;
    int nin = 2;
    if (L->nin > 2 && L->in[2] >= 0 && g->values[L->in[2]].init) {
        const struct qt_tensor *bt = g->values[L->in[2]].init;
        in[2] = qt_graph_add_value(s, "b", bt->dtype, &bt->shape);
        s->values[in[2]].init = qt_tensor_clone(bt);
        nin = 3;
    }
    out = qt_graph_add_value(s, "y", QT_UNDEF, NULL);
    s->values[out].flags |= QT_V_OUTPUT;
    s->outputs = malloc(sizeof(int));
    s->outputs[0] = out;
    s->noutputs = 1;
    const int ni = qt_graph_add_node(s, L->op, L->name, in, nin, &out, 1);
    struct qt_node *n = &s->nodes[ni];
    for (int k = 0; k < L->nattrs; k++) {
        const struct qt_attr *a = &L->attrs[k];
        if (a->type == QT_ATTR_INT)
            qt_node_set_int(n, a->name, a->i);
        else if (a->type == QT_ATTR_FLOAT)
            qt_node_set_float(n, a->name, a->f);
        else if (a->type == QT_ATTR_INTS)
            qt_node_set_ints(n, a->name, a->ints, a->n);
        else if (a->type == QT_ATTR_STRING)
            qt_node_set_string(n, a->name, a->s);
    }
    s->opset = g->opset;
    if (qt_pass_canonicalize(s, e)) {
        qt_graph_free(s);
        return NULL;
    }
    return s;
}

/* The rectified sigmoid of AdaRound, h(v) = clamp(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1). */
#define AR_ZETA 1.1
#define AR_GAMMA (-0.1)

static double ar_h(double v)
{
    const double h = 1.0 / (1.0 + exp(-v)) * (AR_ZETA - AR_GAMMA) + AR_GAMMA;
    return h < 0 ? 0 : h > 1 ? 1 : h;
}

/* Mean and unbiased standard deviation of the weights as the quantizer standardizes them
 * (sigma 1 when 0), summed in double on the host; a kernel may round them one unit in the last
 * place differently, which the margin the weights are moved by (a tenth of a level gap) makes
 * irrelevant. */
static void weight_stats_host(float *mu, float *sigma, const float *w, int64_t n)
{
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) s += w[i];
    const double m = n > 0 ? s / (double)n : 0.0;
    for (int64_t i = 0; i < n; i++) ss += ((double)w[i] - m) * ((double)w[i] - m);
    const float sd = (float)sqrt(n > 1 ? ss / (double)(n - 1) : 0.0);
    *mu = (float)m;
    *sigma = sd > 0.0f ? sd : 1.0f;
}

/* Rounds weight quantizer node qn (reading layer li) by AdaRound on inputs X and float
 * targets Y (host, cnt rows), then moves the weights so that the quantizer's own rounding
 * gives the chosen levels. */
static int adaround_layer(struct qt_graph *g, struct qt_backend *b, int li, int qn,
                          const float *X, const struct qt_shape *xs, const float *Y,
                          const struct qt_shape *ys, const struct qt_adaround_config *ac,
                          int *flipped, struct qt_error *e)
{
    struct qt_quant_attrs a;
    struct qt_apot_quantizer qz;
    if (qt_quantizer_from_node(&a, &qz, &g->nodes[qn], e)) return -1;
    struct qt_tensor *wt = g->values[g->nodes[qn].in[0]].init;
    struct qt_tensor *at = g->values[g->nodes[qn].in[1]].init;
    const int64_t n = qt_shape_numel(&wt->shape), nal = qt_shape_numel(&at->shape);
    const int64_t per = n / nal, rows = xs->d[0];
    const int64_t bs = ac->batch < rows ? ac->batch : rows;
    const int64_t xper = qt_shape_numel(xs) / rows, yper = qt_shape_numel(ys) / rows;
    float *w = wt->data, *alpha = at->data, gv[2 * QT_APOT_MAX_LEVELS];
    const int ng = qt_apot_signed_levels(gv, &qz);
    float mu = 0.0f, sigma = 1.0f;
    if (a.standardize) weight_stats_host(&mu, &sigma, w, n);
    const float ss = a.standardize == QT_STD_ON ? 1.0f : sigma, off = a.standardize == QT_STD_ON ? 0.0f : mu;
    struct qt_graph *s = layer_graph(g, li, bs, e);
    if (!s) return -1;
    int *lo = malloc(sizeof(int) * n);
    double *v = malloc(sizeof(double) * n), *m1 = calloc(n, sizeof(double)),
           *m2 = calloc(n, sizeof(double));
    float *wq = malloc(sizeof(float) * n), *dw = malloc(sizeof(float) * n);
    struct qt_shape bxs = *xs, bys = *ys;
    bxs.d[0] = bys.d[0] = bs;
    struct qt_tensor *xb = qt_tensor_new(QT_F32, &bxs), *dy = qt_tensor_new(QT_F32, &bys);
    float *yb = malloc(sizeof(float) * (size_t)(bs * yper));
    struct qt_exec *x = NULL;
    int rc = -1;
    if (!lo || !v || !m1 || !m2 || !wq || !dw || !xb || !dy || !yb) {
        qt_err(e, "out of memory");
        goto out;
    }
    /* Floor level and the soft variable v with h(v) = the fractional part. */
    for (int64_t i = 0; i < n; i++) {
        float xi = qt_apot_weight_x(w[i], mu, sigma, alpha[i / per]);
        xi = xi > 1.0f ? 1.0f : xi < -1.0f ? -1.0f : xi;
        int j = 0;
        while (j < ng - 2 && gv[j + 1] <= xi) j++;
        lo[i] = j;
        double fr = (xi - gv[j]) / (gv[j + 1] - gv[j]);
        fr = fr < 0.01 ? 0.01 : fr > 0.99 ? 0.99 : fr;
        v[i] = -log((AR_ZETA - AR_GAMMA) / (fr - AR_GAMMA) - 1.0);
    }
    const struct qt_tensor *ins[1] = {xb};
    if (!(x = qt_exec_new(s, b, e))) goto out;
    const int wv = qt_graph_find_value(s, "w");
    float *dwp = qt_exec_param(x, wv);
    uint64_t seed = 0x61646172ull ^ (uint64_t)li;
    const int iters = ac->iters, warm = iters / 5;
    const double lr = ac->lr, lambda = ac->lambda;
    for (int it = 0; it < iters; it++) {
        /* soft weights, uploaded into the layer graph's parameter */
        for (int64_t i = 0; i < n; i++) {
            const double h = ar_h(v[i]);
            const float lv = (float)(gv[lo[i]] + h * (gv[lo[i] + 1] - gv[lo[i]]));
            wq[i] = ss * (alpha[i / per] * lv) + off;
        }
        if (b->upload(b, dwp, wq, sizeof(float) * n)) goto out;
        /* a random batch of the cached rows */
        for (int64_t r = 0; r < bs; r++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t k = (int64_t)((seed >> 33) % (uint64_t)rows);
            memcpy((float *)xb->data + r * xper, X + k * xper, sizeof(float) * xper);
            memcpy(yb + r * yper, Y + k * yper, sizeof(float) * yper);
        }
        if (qt_exec_forward_train(x, ins, e)) goto out;
        const struct qt_tensor *yo = qt_exec_output(x, 0);
        if (qt_exec_read(x, yo->data, dy->data, bs * yper, e)) goto out;
        float *d = dy->data;
        const float sc = 2.0f / (float)(bs * yper);
        for (int64_t i = 0; i < bs * yper; i++) d[i] = sc * (d[i] - yb[i]);
        if (qt_exec_backward(x, dy, e)) goto out;
        const float *gw = qt_exec_grad(x, wv);
        if (!gw || qt_exec_read(x, gw, dw, n, e)) {
            if (!gw) qt_err(e, "no weight gradient");
            goto out;
        }
        /* regularizer sum(1 - |2h - 1|^beta), beta from 20 down to 2 after a warm-up */
        const double beta = it < warm ? 0 : 20.0 - 18.0 * (it - warm) / (double)(iters - warm);
        for (int64_t i = 0; i < n; i++) {
            const double sg = 1.0 / (1.0 + exp(-v[i]));
            const double hr = sg * (AR_ZETA - AR_GAMMA) + AR_GAMMA;
            if (hr <= 0 || hr >= 1) continue; /* clamped: no gradient */
            const double dh_dv = sg * (1 - sg) * (AR_ZETA - AR_GAMMA);
            double gh = (double)dw[i] * ss * alpha[i / per] * (gv[lo[i] + 1] - gv[lo[i]]);
            if (beta > 0) {
                const double t = 2 * hr - 1, at2 = fabs(t);
                gh += lambda * -beta * pow(at2, beta - 1) * (t > 0 ? 2 : -2);
            }
            const double gvv = gh * dh_dv;
            /* Adam */
            m1[i] = 0.9 * m1[i] + 0.1 * gvv;
            m2[i] = 0.999 * m2[i] + 0.001 * gvv * gvv;
            const double c1 = 1 - pow(0.9, it + 1), c2 = 1 - pow(0.999, it + 1);
            v[i] -= lr * (m1[i] / c1) / (sqrt(m2[i] / c2) + 1e-8);
        }
    }
    /* The chosen levels; weights moved just past the threshold into them where the nearest
     * rounding differs, until the quantizer's own rounding (with the statistics of the moved
     * weights, alphas rescaled to keep sigma * alpha) gives every chosen level. */
    int *tgt = (int *)wq; /* reuse: same size */
    for (int64_t i = 0; i < n; i++) tgt[i] = lo[i] + (ar_h(v[i]) >= 0.5);
    *flipped = 0;
    const float s0 = sigma;
    float *a0 = (float *)dw; /* reuse: the alphas as calibrated */
    memcpy(a0, alpha, sizeof(float) * nal);
    for (int pass = 0; pass < 20; pass++) {
        if (a.standardize) weight_stats_host(&mu, &sigma, w, n);
        if (pass > 0 && a.standardize)
            for (int64_t c = 0; c < nal; c++) alpha[c] = a0[c] * (s0 / sigma);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
            const float al = alpha[i / per];
            const float q = qt_apot_signed_q(qt_apot_weight_x(w[i], mu, sigma, al), qz.levels,
                                             qz.thr, qz.n);
            if (q == gv[tgt[i]]) continue;
            bad++;
            if (pass == 0) (*flipped)++;
            const int j = lo[i];
            const double mid = 0.5 * ((double)gv[j] + gv[j + 1]);
            const double xt = mid + 0.2 * ((double)gv[tgt[i]] - mid);
            w[i] = (float)((double)mu + (double)sigma * al * xt);
        }
        if (!bad) {
            rc = 0;
            goto out;
        }
        if (!a.standardize) {
            /* without standardization nothing moves but the weights themselves */
            continue;
        }
    }
    qt_err(e, "AdaRound of '%s': the rounding did not settle", g->nodes[li].name);
out:
    free(lo);
    free(v);
    free(m1);
    free(m2);
    free(wq);
    free(dw);
    free(yb);
    qt_tensor_free(xb);
    qt_tensor_free(dy);
    if (x) qt_exec_free(x);
    qt_graph_free(s);
    return rc;
}

int qt_calib_adaround(struct qt_graph *g, struct qt_graph *fp, struct qt_backend *b,
                      const struct qt_dataset *ds, const struct qt_calib_config *c,
                      const struct qt_adaround_config *ac, struct qt_adaround_report *r,
                      struct qt_error *e)
{
    memset(r, 0, sizeof *r);
    double t0 = qt_now();
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *L = &g->nodes[i];
        if (L->dead || (L->op != QT_OP_CONV && L->op != QT_OP_GEMM) || L->nin < 2) continue;
        const int qn = g->values[L->in[1]].producer;
        if (qn < 0 || g->nodes[qn].op != QT_OP_WEIGHTQUANT) continue;
        struct qt_quant_attrs a;
        if (qt_quant_attrs_get(&g->nodes[qn], &a, e)) return -1;
        if (a.scheme >= QT_QS_MAX || !g->values[g->nodes[qn].in[0]].init) continue;
        if (a.standardize == QT_STD_ON)
            return qt_err(e, "AdaRound needs standardized weights mapped back (layer '%s')",
                          L->name);
        const int fi = qt_graph_find_node(fp, L->name);
        if (fi < 0) continue;
        float *X = NULL, *Y = NULL;
        struct qt_shape xs, ys;
        int flipped = 0;
        /* the cached inputs and targets stay within QT_ADAROUND_CACHE bytes: fewer
         * calibration batches for layers with large activations */
        struct qt_calib_config cc = *c;
        const struct qt_shape *s1 = &g->values[L->in[0]].shape, *s2 = &g->values[L->out[0]].shape;
        double img = 0;
        if (s1->ndim >= 1 && s2->ndim >= 1) {
            double p1 = 1, p2 = 1;
            for (int k = 1; k < s1->ndim; k++) p1 *= s1->d[k] > 0 ? (double)s1->d[k] : 1;
            for (int k = 1; k < s2->ndim; k++) p2 *= s2->d[k] > 0 ? (double)s2->d[k] : 1;
            img = 4.0 * (p1 + p2);
        }
        if (img > 0 && cc.batch > 0 && img * cc.batch * cc.batches > QT_ADAROUND_CACHE) {
            cc.batches = (int)(QT_ADAROUND_CACHE / (img * cc.batch));
            if (cc.batches < 1) cc.batches = 1;
        }
        int rc = collect_value(g, b, ds, &cc, L->in[0], &X, &xs, e);
        if (!rc) rc = collect_value(fp, b, ds, &cc, fp->nodes[fi].out[0], &Y, &ys, e);
        if (!rc) rc = adaround_layer(g, b, i, qn, X, &xs, Y, &ys, ac, &flipped, e);
        free(X);
        free(Y);
        if (rc) return -1;
        r->layers++;
        r->flipped += flipped;
        r->weights += qt_shape_numel(&g->values[g->nodes[qn].in[0]].init->shape);
    }
    r->seconds = qt_now() - t0;
    return 0;
}
