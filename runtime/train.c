/* The training loop. Each epoch draws its permutation and augmentation from the RNG state it
 * starts with; a checkpoint stores that state and the batch position, so a resumed run makes
 * exactly the same updates as an uninterrupted one. */
#include "train.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checkpoint.h"
#include "data/prefetch.h"
#include "exec.h"
#include "../util/rng.h"
#include "../util/clock.h"

struct run {
    struct qt_graph *g;
    struct qt_backend *b;
    const struct qt_train_config *cfg;
    struct qt_exec *x;
    struct qt_params ps;
    float **mom; /* per parameter: momentum buffer (backend memory) */
    float **mom_host; /* per parameter: momentum restored from a checkpoint, until uploaded */
    float **range;      /* per parameter scaled by PSGD: its range state (backend memory) */
    float (*range_host)[2]; /* per parameter: the range state restored from a checkpoint */
    char *range_set;      /* per parameter: the range state holds a value (restored) */
    int epoch;   /* epochs completed */
    int64_t step;
    int batch_pos; /* batches done in the current epoch */
    struct qt_rng epoch_rng;
    double best_top1;
    int best_epoch;
    struct qt_eval_result last; /* test metrics of the last epoch completed */
};

static int state_values(const struct qt_graph *g, int *out, int max)
{
    int n = 0;
    for (int v = 0; v < g->nvalues; v++)
        if ((g->values[v].flags & QT_V_STATE) && g->values[v].init && n < max) out[n++] = v;
    return n;
}

/* Writes the checkpoint: the state is first read back from backend memory (the graph's
 * initializers and host copies of the momentum buffers). */
static int save_checkpoint(struct run *r, struct qt_error *e)
{
    const struct qt_graph *g = r->g;
    struct qt_ckpt c;
    char buf[160];
    if (qt_exec_sync_state(r->x, e)) return -1;
    float **mom = calloc(r->ps.n + 1, sizeof *mom);
    if (!mom) return qt_err(e, "out of memory writing a checkpoint");
    float (*range)[3] = calloc(r->ps.n + 1, sizeof *range);
    if (!range) {
        free(mom);
        return qt_err(e, "out of memory writing a checkpoint");
    }
    for (int i = 0; i < r->ps.n; i++) {
        if (r->range[i] && r->range_set[i] && qt_exec_read(r->x, r->range[i], range[i], 2, e)) {
            free(mom);
            free(range);
            return qt_err(e, "cannot read the PSGD range of '%s' from the %s backend",
                          g->values[r->ps.p[i].value].name, r->b->name);
        }
        if (!r->mom[i]) continue;
        mom[i] = malloc(sizeof(float) * r->ps.p[i].numel);
        if (!mom[i] || qt_exec_read(r->x, r->mom[i], mom[i], r->ps.p[i].numel, e)) {
            for (int j = 0; j <= i; j++) free(mom[j]);
            free(mom);
            free(range);
            return qt_err(e, "cannot read the momentum of '%s' from the %s backend",
                          g->values[r->ps.p[i].value].name, r->b->name);
        }
    }
    qt_ckpt_init(&c);
    snprintf(buf, sizeof buf, "%d", r->epoch);
    qt_ckpt_set(&c, "epoch", buf);
    snprintf(buf, sizeof buf, "%" PRId64, r->step);
    qt_ckpt_set(&c, "step", buf);
    snprintf(buf, sizeof buf, "%d", r->batch_pos);
    qt_ckpt_set(&c, "batch_pos", buf);
    snprintf(buf, sizeof buf, "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64,
             r->epoch_rng.s[0], r->epoch_rng.s[1], r->epoch_rng.s[2], r->epoch_rng.s[3]);
    qt_ckpt_set(&c, "rng", buf);
    snprintf(buf, sizeof buf, "%.17g", r->best_top1);
    qt_ckpt_set(&c, "best_top1", buf);
    snprintf(buf, sizeof buf, "%d", r->best_epoch);
    qt_ckpt_set(&c, "best_epoch", buf);
    snprintf(buf, sizeof buf, "%.17g %.17g %.17g %" PRId64, r->last.top1, r->last.top5,
             r->last.loss, r->last.images);
    qt_ckpt_set(&c, "last_test", buf);
    snprintf(buf, sizeof buf, "%d", r->cfg->batch);
    qt_ckpt_set(&c, "batch", buf);
    snprintf(buf, sizeof buf, "%" PRIu64, r->cfg->seed);
    qt_ckpt_set(&c, "seed", buf);
    for (int i = 0; i < r->ps.n; i++) {
        const struct qt_value *v = &g->values[r->ps.p[i].value];
        char name[300];
        snprintf(name, sizeof name, "param:%s", v->name);
        qt_ckpt_add(&c, name, v->init->data, r->ps.p[i].numel);
        snprintf(name, sizeof name, "momentum:%s", v->name);
        if (mom[i]) qt_ckpt_add(&c, name, mom[i], r->ps.p[i].numel);
        /* PSGD's range (lo, hi) and grid steps; absent before the first step. */
        snprintf(name, sizeof name, "psgd:%s", v->name);
        if (r->range[i] && r->range_set[i]) {
            range[i][2] = (float)qt_psgd_levels(r->cfg->psgd_bits[r->ps.p[i].value]);
            qt_ckpt_add(&c, name, range[i], 3);
        }
    }
    if (r->cfg->psgd_bits) {
        snprintf(buf, sizeof buf, "%.9g", r->cfg->psgd_lambda);
        qt_ckpt_set(&c, "psgd_lambda", buf);
    }
    int sv[4096];
    int ns = state_values(g, sv, 4096);
    for (int i = 0; i < ns; i++) {
        char name[300];
        snprintf(name, sizeof name, "state:%s", g->values[sv[i]].name);
        qt_ckpt_add(&c, name, g->values[sv[i]].init->data, qt_shape_numel(&g->values[sv[i]].init->shape));
    }
    int rc = qt_ckpt_save(&c, r->cfg->checkpoint, e);
    qt_ckpt_free(&c);
    for (int i = 0; i < r->ps.n; i++) free(mom[i]);
    free(mom);
    free(range);
    return rc;
}

static int restore_tensor(const struct qt_ckpt *c, const char *kind, const struct qt_value *v,
                          float *dst, int64_t numel, const char *path, struct qt_error *e)
{
    char name[300];
    snprintf(name, sizeof name, "%s:%s", kind, v->name);
    const struct qt_ckpt_tensor *t = qt_ckpt_find(c, name);
    if (!t)
        return qt_err(e, "checkpoint '%s' has no %s for '%s': it belongs to another model", path,
                      kind, v->name);
    if (t->numel != numel)
        return qt_err(e, "checkpoint '%s': '%s' has %lld values, the model's has %lld", path, v->name,
                      (long long)t->numel, (long long)numel);
    memcpy(dst, t->data, sizeof(float) * numel);
    return 0;
}

static int load_checkpoint(struct run *r, const char *path, struct qt_error *e)
{
    struct qt_ckpt c;
    char buf[256];
    if (qt_ckpt_load(&c, path, e)) return -1;
    int rc = -1;
    struct qt_graph *g = r->g;
    if (qt_ckpt_get(&c, "epoch", buf, sizeof buf)) goto bad;
    r->epoch = atoi(buf);
    if (qt_ckpt_get(&c, "step", buf, sizeof buf)) goto bad;
    r->step = strtoll(buf, NULL, 10);
    if (qt_ckpt_get(&c, "batch_pos", buf, sizeof buf)) goto bad;
    r->batch_pos = atoi(buf);
    if (qt_ckpt_get(&c, "rng", buf, sizeof buf) ||
        sscanf(buf, "%" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64, &r->epoch_rng.s[0],
               &r->epoch_rng.s[1], &r->epoch_rng.s[2], &r->epoch_rng.s[3]) != 4)
        goto bad;
    if (qt_ckpt_get(&c, "best_top1", buf, sizeof buf)) goto bad;
    r->best_top1 = strtod(buf, NULL);
    if (qt_ckpt_get(&c, "best_epoch", buf, sizeof buf)) goto bad;
    r->best_epoch = atoi(buf);
    /* Optional: the last epoch's test metrics, reported when no epoch is left to run. */
    if (qt_ckpt_get(&c, "last_test", buf, sizeof buf) == 0 &&
        sscanf(buf, "%lf %lf %lf %" SCNd64, &r->last.top1, &r->last.top5, &r->last.loss,
               &r->last.images) != 4)
        goto bad;
    if (qt_ckpt_get(&c, "batch", buf, sizeof buf)) goto bad;
    if (atoi(buf) != r->cfg->batch) {
        qt_err(e, "checkpoint '%s' was written with batch %s; resume with --batch %s", path, buf, buf);
        goto out;
    }
    for (int i = 0; i < r->ps.n; i++) {
        const struct qt_value *v = &g->values[r->ps.p[i].value];
        if (restore_tensor(&c, "param", v, v->init->data, r->ps.p[i].numel, path, e)) goto out;
        char name[300];
        snprintf(name, sizeof name, "momentum:%s", v->name);
        if (qt_ckpt_find(&c, name)) {
            if (!r->mom_host[i] && !(r->mom_host[i] = malloc(sizeof(float) * r->ps.p[i].numel))) {
                qt_err(e, "out of memory reading checkpoint '%s'", path);
                goto out;
            }
            if (restore_tensor(&c, "momentum", v, r->mom_host[i], r->ps.p[i].numel, path, e))
                goto out;
        }
    }
    int sv[4096];
    int ns = state_values(g, sv, 4096);
    for (int i = 0; i < ns; i++) {
        const struct qt_value *v = &g->values[sv[i]];
        if (restore_tensor(&c, "state", v, v->init->data, qt_shape_numel(&v->init->shape), path, e)) goto out;
    }
    /* PSGD: the run and the checkpoint must agree on it, tensor by tensor. */
    const int ck_psgd = qt_ckpt_get(&c, "psgd_lambda", buf, sizeof buf) == 0;
    if (ck_psgd != !!r->cfg->psgd_bits ||
        (ck_psgd && strtof(buf, NULL) != r->cfg->psgd_lambda)) {
        if (ck_psgd)
            qt_err(e, "checkpoint '%s' was written by a run with --psgd --lambda-s %s; resume "
                      "with the same options", path, buf);
        else
            qt_err(e, "checkpoint '%s' was written without --psgd; resume without it", path);
        goto out;
    }
    for (int i = 0; ck_psgd && i < r->ps.n; i++) {
        const struct qt_value *v = &g->values[r->ps.p[i].value];
        char name[300];
        snprintf(name, sizeof name, "psgd:%s", v->name);
        const struct qt_ckpt_tensor *t = qt_ckpt_find(&c, name);
        const int L = r->range[i] ? qt_psgd_levels(r->cfg->psgd_bits[r->ps.p[i].value]) : 0;
        if (!t) continue; /* no step yet */
        if (!L || t->numel != 3 || t->data[2] != (float)L) {
            qt_err(e, "checkpoint '%s' scaled '%s' towards another grid than this run's; resume "
                      "with the same --wbits, --first-last and --layer options", path, v->name);
            goto out;
        }
        r->range_host[i][0] = t->data[0];
        r->range_host[i][1] = t->data[1];
        r->range_set[i] = 1;
    }
    rc = 0;
    goto out;
bad:
    qt_err(e, "checkpoint '%s' lacks its training counters", path);
out:
    qt_ckpt_free(&c);
    return rc;
}

/* Permutation and augmentation of one epoch, drawn from rng. */
struct epoch_plan {
    int *perm;
    int8_t *oy, *ox;
    uint8_t *flip;
    uint64_t *seed; /* streamed images: RandomResizedCrop's draw, the flip in the top bit */
};

/* A stream's augmentation (RandomResizedCrop) is drawn from one seed per sample; images in
 * memory take padded-crop offsets (`pad`) and flips. */
static void plan_epoch(struct epoch_plan *p, struct qt_rng *rng, int n, int pad, int flip,
                       int stream)
{
    for (int i = 0; i < n; i++) p->perm[i] = i;
    qt_rng_shuffle(rng, p->perm, n);
    for (int i = 0; i < n; i++) {
        if (stream) {
            const uint64_t s = qt_rng_next(rng) & ~(1ull << 63);
            p->seed[i] = s | (flip && qt_rng_below(rng, 2) ? 1ull << 63 : 0);
            continue;
        }
        p->oy[i] = pad ? (int8_t)((int)qt_rng_below(rng, 2 * pad + 1) - pad) : 0;
        p->ox[i] = pad ? (int8_t)((int)qt_rng_below(rng, 2 * pad + 1) - pad) : 0;
        p->flip[i] = flip ? (uint8_t)qt_rng_below(rng, 2) : 0;
    }
}

/* Samples in batch bi of nb over n samples. */
static int batch_count(int bi, int nb, int n, int batch)
{
    return bi == nb - 1 ? n - bi * batch : batch;
}

/* Batch bi's augmentation: the plan's draws at the batch's positions. */
static struct qt_augment batch_augment(const struct epoch_plan *p, const struct qt_train_config *cfg,
                                       int bi)
{
    const int64_t at = (int64_t)bi * cfg->batch;
    return (struct qt_augment){p->oy + at, p->ox + at, p->flip + at,
                               cfg->no_resized_crop ? NULL : p->seed + at};
}

static void start_batch(struct qt_prefetch *pf, const struct epoch_plan *p,
                        const struct qt_train_config *cfg, int bi, int nb, int n)
{
    const struct qt_augment aug = batch_augment(p, cfg, bi);
    qt_prefetch_start(pf, p->perm + (int64_t)bi * cfg->batch,
                             batch_count(bi, nb, n, cfg->batch), &aug);
}

int qt_train(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
             const struct qt_dataset *test, const struct qt_train_config *cfg,
             const struct qt_train_callbacks *cb, struct qt_train_result *res, struct qt_error *e)
{
    char s1[128];
    memset(res, 0, sizeof *res);
    if (qt_check_image_model(g, train, e) ||
        qt_check_normalization(cfg->mean, cfg->std, train->c, e))
        return -1;
    const struct qt_value *in = &g->values[g->inputs[0]];
    if (in->shape.d[0] >= 0 && in->shape.d[0] != cfg->batch)
        return qt_err(e, "the model has a fixed batch of %lld; train it with --batch %lld",
                      (long long)in->shape.d[0], (long long)in->shape.d[0]);
    if (cfg->crop_pad < 0 || cfg->crop_pad > 127) return qt_err(e, "crop padding must be 0 to 127");
    if (cfg->batch <= 0 || cfg->epochs < 0) return qt_err(e, "batch and epochs must be positive");

    struct run r;
    memset(&r, 0, sizeof r);
    r.g = g;
    r.b = b;
    r.cfg = cfg;
    r.best_top1 = -1;
    if (qt_params_find(g, &r.ps, e)) return -1;
    r.mom = calloc(r.ps.n + 1, sizeof *r.mom);
    r.mom_host = calloc(r.ps.n + 1, sizeof *r.mom_host);
    r.range = calloc(r.ps.n + 1, sizeof *r.range);
    r.range_host = calloc(r.ps.n + 1, sizeof *r.range_host);
    r.range_set = calloc(r.ps.n + 1, 1);
    qt_rng_seed(&r.epoch_rng, cfg->seed);
    int rc = 0;
    struct qt_exec *x = NULL;
    struct qt_tensor *xt = NULL;
    struct qt_prefetch *pf = NULL;
    int32_t *labels = NULL, *labels_dev = NULL; /* host and backend copies */
    double *stats_dev = NULL;                   /* the loss op's result (backend memory) */
    struct qt_sgd_param *sgd = NULL;
    double *step_loss = NULL; /* per step of the current epoch */
    int n = (int)(cfg->train_limit > 0 && cfg->train_limit < train->n ? cfg->train_limit : train->n);
    struct epoch_plan plan = {malloc(sizeof(int) * (n + 1)), malloc(n + 1), malloc(n + 1),
                              malloc(n + 1), malloc(sizeof(uint64_t) * (n + 1))};
    if (!r.mom || !r.mom_host || !r.range || !r.range_host || !r.range_set || !plan.perm ||
        !plan.oy || !plan.ox || !plan.flip || !plan.seed) {
        rc = qt_err(e, "out of memory for the training state");
        goto out;
    }
    /* PSGD's range state, one per scaled parameter, lives in backend memory. */
    for (int i = 0; cfg->psgd_bits && i < r.ps.n; i++) {
        const int bits = cfg->psgd_bits[r.ps.p[i].value];
        if (!bits) continue;
        if (!qt_psgd_levels(bits) || !(cfg->psgd_lambda >= 0) || !isfinite(cfg->psgd_lambda)) {
            rc = qt_err(e, "PSGD needs 2 to 16 bits and a finite lambda >= 0 ('%s': %d bits, "
                           "lambda %g)",
                        g->values[r.ps.p[i].value].name, bits, cfg->psgd_lambda);
            goto out;
        }
        if (!(r.range[i] = b->alloc(b, sizeof(float) * 2))) {
            rc = qt_err(e, "out of memory for the PSGD state");
            goto out;
        }
    }
    if (cfg->resume && load_checkpoint(&r, cfg->resume, e)) {
        rc = -1;
        goto out;
    }
    if (cfg->resume && cb && cb->resumed && cb->resumed(cb->ctx, r.epoch)) {
        rc = qt_err(e, "stopped after loading the checkpoint '%s'", cfg->resume);
        goto out;
    }
    if (!(x = qt_exec_new(g, b, e))) {
        rc = -1;
        goto out;
    }
    r.x = x;
    /* PSGD ranges and momentum restored from a checkpoint go to backend memory. */
    for (int i = 0; i < r.ps.n; i++)
        if (r.range[i] && r.range_set[i] &&
            b->upload(b, r.range[i], r.range_host[i], sizeof r.range_host[i])) {
            rc = qt_err(e, "cannot place the PSGD range of '%s' on the %s backend",
                        g->values[r.ps.p[i].value].name, b->name);
            goto out;
        }
    for (int i = 0; i < r.ps.n; i++) {
        if (!r.mom_host[i]) continue;
        const size_t bytes = sizeof(float) * r.ps.p[i].numel;
        if (!(r.mom[i] = b->alloc(b, bytes)) || b->upload(b, r.mom[i], r.mom_host[i], bytes)) {
            rc = qt_err(e, "cannot place the momentum of '%s' on the %s backend",
                        g->values[r.ps.p[i].value].name, b->name);
            goto out;
        }
    }
    const int nb = (n + cfg->batch - 1) / cfg->batch;
    const enum qt_image_layout layout = qt_image_layout(g);
    struct qt_shape xs = qt_image_batch_shape(train, cfg->batch, layout);
    xt = qt_tensor_new(QT_F32, &xs);
    labels = malloc(sizeof(int32_t) * cfg->batch);
    labels_dev = b->alloc(b, sizeof(int32_t) * cfg->batch);
    stats_dev = b->alloc(b, sizeof(double) * QT_XENT_STATS);
    sgd = calloc(r.ps.n + 1, sizeof *sgd);
    step_loss = malloc(sizeof(double) * (nb + 1));
    if (!xt || !labels || !labels_dev || !stats_dev || !sgd || !step_loss) {
        rc = qt_err(e, "out of memory for a batch of %d", cfg->batch);
        goto out;
    }
    /* The next batch is assembled by the prefetch thread while a step computes; the step
     * waits only when that takes longer than the step itself. */
    struct qt_tensor xv = *xt; /* the batch: xt's buffer, or the prefetch buffer in turn */
    if (!cfg->no_prefetch &&
        !(pf = qt_prefetch_new(train, cfg->batch, cfg->mean, cfg->std, layout, e))) {
        rc = -1;
        goto out;
    }
    double t_start = qt_now();
    while (r.epoch < cfg->epochs) {
        struct qt_rng rng = r.epoch_rng;
        plan_epoch(&plan, &rng, n, cfg->crop_pad, cfg->flip, train->stream != NULL);
        double t0 = qt_now(), loss_sum = 0, data_seconds = 0;
        int64_t hits = 0, seen = 0;
        int nsteps = 0;
        const int first = r.batch_pos;
        for (int bi = first; bi < nb; bi++) {
            const int cnt = batch_count(bi, nb, n, cfg->batch);
            int32_t *lab = labels;
            if (pf) {
                float *px;
                if (bi == first) start_batch(pf, &plan, cfg, bi, nb, n);
                if (qt_prefetch_wait(pf, &px, &lab, &data_seconds, e)) {
                    rc = -1;
                    goto out;
                }
                xv.data = px;
                if (bi + 1 < nb) start_batch(pf, &plan, cfg, bi + 1, nb, n);
            } else {
                const struct qt_augment aug = batch_augment(&plan, cfg, bi);
                const double td = qt_now();
                if (qt_dataset_batch_augmented(train, plan.perm + (int64_t)bi * cfg->batch, cnt,
                                               cfg->mean, cfg->std, &aug, layout, xt->data,
                                               labels, e)) {
                    rc = -1;
                    goto out;
                }
                data_seconds += qt_now() - td;
            }
            xv.shape.d[0] = cnt;
            xv.nbytes = sizeof(float) * qt_shape_numel(&xv.shape);
            const struct qt_tensor *ins[1] = {&xv};
            if (qt_exec_forward_train(x, ins, e)) {
                rc = -1;
                goto out;
            }
            const struct qt_tensor *out = qt_exec_logits(x); /* before a final Softmax */
            if (out->shape.ndim != 2 || out->shape.d[0] != cnt || out->shape.d[1] < train->nclasses) {
                rc = qt_err(e, "the model's output %s is not [N, classes>=%d] logits",
                            qt_shape_str(g, &out->shape, s1, sizeof s1), train->nclasses);
                goto out;
            }
            /* The loss on the backend, its gradient straight into the output's gradient; the
             * host reads back only the loss and the counts, once the whole step is queued (a
             * step is one sequence of backend calls with no host synchronization inside:
             * what a GPU backend can capture and replay). */
            float *dlogits = qt_exec_output_grad(x, e);
            if (!dlogits || b->upload(b, labels_dev, lab, sizeof(int32_t) * cnt) ||
                b->xent(b, dlogits, stats_dev, out->data, labels_dev, cnt, out->shape.d[1],
                        cfg->label_smoothing, 1.0f / cnt, e)) {
                rc = dlogits ? qt_err_prefix(e, "loss at step %" PRId64 ": ", r.step + 1) : -1;
                goto out;
            }
            if (qt_exec_backward(x, NULL, e)) {
                rc = -1;
                goto out;
            }
            /* BSQ's regularizer joins the gradients of the bit planes. */
            for (int i = 0; cfg->bit_lasso > 0 && i < g->nnodes; i++) {
                const struct qt_node *nd = &g->nodes[i];
                if (nd->dead || nd->op != QT_OP_BITQUANT) continue;
                const struct qt_value *pv = &g->values[nd->in[0]];
                const int N = (int)pv->shape.d[0];
                const int64_t cnt = qt_shape_numel(&pv->shape) / N;
                /* the executor's gradient buffers, complete after the backward pass */
                float *dp = (float *)qt_exec_grad(x, nd->in[0]);
                float *dn = (float *)qt_exec_grad(x, nd->in[1]);
                if (dp && dn &&
                    b->bit_lasso(b, dp, dn, qt_exec_param(x, nd->in[0]), qt_exec_param(x, nd->in[1]),
                                 N, cnt, cfg->bit_lasso * (float)cnt * (float)N, e)) {
                    rc = qt_err_prefix(e, "regularizer at step %" PRId64 ": ", r.step + 1);
                    goto out;
                }
            }
            /* One optimizer step over every parameter. */
            float lr = qt_schedule_lr(&cfg->sched, cfg->step_offset + r.step);
            for (int i = 0; i < r.ps.n; i++) {
                const struct qt_param *p = &r.ps.p[i];
                const struct qt_group *grp = &cfg->sgd.group[p->role];
                struct qt_sgd_param *sp = &sgd[i];
                /* No gradient reached it: left alone, as PyTorch does. */
                sp->grad = qt_exec_grad(x, p->value);
                sp->p = qt_exec_param(x, p->value);
                sp->n = p->numel;
                sp->lr = lr * grp->lr_scale;
                sp->wd = grp->wd;
                sp->first = 0;
                if (sp->grad && cfg->sgd.momentum != 0 && !r.mom[i]) {
                    if (!(r.mom[i] = b->alloc(b, sizeof(float) * p->numel))) {
                        rc = qt_err(e, "out of memory for the momentum of '%s'",
                                    g->values[p->value].name);
                        goto out;
                    }
                    sp->first = 1;
                }
                sp->buf = r.mom[i];
                /* BSQ's bit planes stay in [0, 2]; clipping thresholds stay positive (a step
                 * that would take one to 0 or below leaves it at QT_ALPHA_FLOOR instead) */
                const int alpha = p->role == QT_ROLE_ALPHA_W || p->role == QT_ROLE_ALPHA_A;
                sp->clamp = p->role == QT_ROLE_BITS || alpha;
                sp->clamp_lo = alpha ? QT_ALPHA_FLOOR : 0.0f;
                sp->clamp_hi = alpha ? FLT_MAX : 2.0f;
                sp->psgd_range = r.range[i];
                if (r.range[i]) {
                    sp->psgd_levels = qt_psgd_levels(cfg->psgd_bits[p->value]);
                    sp->psgd_lambda = cfg->psgd_lambda;
                    sp->psgd_first = !r.range_set[i];
                    if (sp->grad) r.range_set[i] = 1;
                }
            }
            const struct qt_sgd_desc sd = {cfg->sgd.momentum, cfg->sgd.nesterov};
            if (b->sgd_step(b, &sd, sgd, r.ps.n, e)) {
                rc = qt_err_prefix(e, "optimizer step %" PRId64 ": ", r.step + 1);
                goto out;
            }
            /* The step's one read: its loss and counts. A non-finite loss stops the run; the
             * parameters it updated are not saved (the last checkpoint stays the good one). */
            double stats[QT_XENT_STATS];
            if (b->sync(b, e) || b->download(b, stats, stats_dev, sizeof stats)) {
                rc = qt_err_prefix(e, "step %" PRId64 ": ", r.step + 1);
                goto out;
            }
            const double l = stats[QT_XENT_NONFINITE] > 0 ? NAN : stats[QT_XENT_LOSS];
            const int64_t h = (int64_t)stats[QT_XENT_TOP1];
            if (!isfinite(l)) {
                rc = qt_err(e, "the loss became %s at epoch %d, step %" PRId64 "; training stopped%s%s%s",
                            isnan(l) ? "NaN" : "infinite", r.epoch + 1, r.step + 1,
                            cfg->checkpoint ? " (the last good checkpoint is '" : "",
                            cfg->checkpoint ? cfg->checkpoint : "", cfg->checkpoint ? "')" : "");
                goto out;
            }
            r.step++;
            r.batch_pos = bi + 1;
            loss_sum += l;
            hits += h;
            seen += cnt;
            step_loss[nsteps++] = l / cnt;
            if (cb && cb->batch)
                cb->batch(cb->ctx, r.epoch + 1, (int64_t)bi * cfg->batch + cnt, n, loss_sum / seen,
                          100.0 * hits / seen, qt_now() - t0);
            if (cfg->stop && *cfg->stop) {
                if (cfg->checkpoint && save_checkpoint(&r, e)) {
                    rc = -1;
                    goto out;
                }
                res->interrupted = 1;
                goto done;
            }
        }
        double train_seconds = qt_now() - t0;
        struct qt_epoch_stats st;
        memset(&st, 0, sizeof st);
        /* The epoch's state into the graph: evaluated, and written by the callbacks. */
        if (qt_exec_sync_state(x, e)) {
            rc = -1;
            goto out;
        }
        if (qt_evaluate(g, b, test, cfg->mean, cfg->std, cfg->batch, cfg->test_limit, NULL, NULL,
                        &st.test, e)) {
            rc = -1;
            goto out;
        }
        r.epoch++;
        r.batch_pos = 0;
        r.epoch_rng = rng;
        st.epoch = cfg->epoch_offset + r.epoch;
        st.epochs = cfg->epochs_total > 0 ? cfg->epochs_total : cfg->epochs;
        st.lr = qt_schedule_lr(&cfg->sched, cfg->step_offset + (r.step > 0 ? r.step - 1 : 0));
        st.train_loss = seen ? loss_sum / seen : 0;
        st.train_top1 = seen ? 100.0 * hits / seen : 0;
        st.seconds = train_seconds;
        st.data_seconds = data_seconds;
        st.images_per_s = train_seconds > 0 ? seen / train_seconds : 0;
        st.best = st.test.top1 > r.best_top1;
        st.step_loss = step_loss;
        st.nsteps = nsteps;
        if (st.best) {
            r.best_top1 = st.test.top1;
            r.best_epoch = r.epoch;
        }
        r.last = st.test;
        /* The epoch's outputs (best model, log) come before its checkpoint: a run stopped
         * between the two resumes from the previous checkpoint and writes them again, with
         * the same values, instead of never writing them. */
        if (cb && cb->epoch_end && cb->epoch_end(cb->ctx, &st)) {
            rc = qt_err(e, "training stopped at the end of epoch %d, before its checkpoint",
                        r.epoch);
            goto out;
        }
        if (cfg->checkpoint && save_checkpoint(&r, e)) {
            rc = -1;
            goto out;
        }
    }
done:
    if (qt_exec_sync_state(x, e)) {
        rc = -1;
        goto out;
    }
    res->epochs_done = r.epoch;
    res->steps = r.step;
    res->best_top1 = r.best_top1;
    res->best_epoch = r.best_epoch;
    res->last = r.last;
    res->seconds = qt_now() - t_start;
out:
    for (int i = 0; i < r.ps.n; i++) {
        if (r.mom && r.mom[i]) b->release(b, r.mom[i]);
        if (r.mom_host) free(r.mom_host[i]);
        if (r.range && r.range[i]) b->release(b, r.range[i]);
    }
    free(r.mom);
    free(r.mom_host);
    free(r.range);
    free(r.range_host);
    free(r.range_set);
    qt_params_free(&r.ps);
    free(plan.perm);
    free(plan.oy);
    free(plan.ox);
    free(plan.flip);
    free(plan.seed);
    qt_prefetch_free(pf);
    free(labels);
    if (labels_dev) b->release(b, labels_dev);
    if (stats_dev) b->release(b, stats_dev);
    free(sgd);
    free(step_loss);
    qt_tensor_free(xt);
    qt_exec_free(x);
    return rc;
}
