/* BSQ's bit-plane layers on the host (see bsq.h). */
#include "bsq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int alloc_planes(struct qt_bsq_layer *l, int N)
{
    const size_t bytes = sizeof(float) * (size_t)(N > 0 ? N : 1) * (size_t)(l->count ? l->count : 1);
    float *p = calloc(1, bytes), *n = calloc(1, bytes);
    if (!p || !n) {
        free(p);
        free(n);
        return -1;
    }
    free(l->p);
    free(l->n);
    l->p = p;
    l->n = n;
    l->N = N;
    return 0;
}

/* Writes the N binary digits of qp and qn (MSB first) for weight j. */
static void put_digits(struct qt_bsq_layer *l, int64_t j, unsigned qp, unsigned qn)
{
    for (int b = 0; b < l->N; b++) {
        const unsigned bit = 1u << (l->N - 1 - b);
        l->p[(int64_t)b * l->count + j] = (qp & bit) ? 1.0f : 0.0f;
        l->n[(int64_t)b * l->count + j] = (qn & bit) ? 1.0f : 0.0f;
    }
}

int qt_bsq_encode(struct qt_bsq_layer *l, const float *w, int64_t count, int N)
{
    memset(l, 0, sizeof *l);
    if (N < 1 || N > QT_BSQ_MAX_BITS || count < 0) return -1;
    l->count = count;
    if (alloc_planes(l, N)) return -1;
    float m = 0;
    for (int64_t j = 0; j < count; j++)
        m = fabsf(w[j]) > m ? fabsf(w[j]) : m;
    l->s = m > 0 ? m : 1.0f;
    const float k = qt_bsq_k(N);
    for (int64_t j = 0; j < count; j++) {
        const unsigned q = (unsigned)nearbyintf(fabsf(w[j]) * k / l->s);
        put_digits(l, j, w[j] > 0 ? q : 0, w[j] > 0 ? 0 : q);
    }
    return 0;
}

/* v = sum_b (p_b - n_b) 2^(N-1-b) of weight j, in double. */
static double plane_sum(const struct qt_bsq_layer *l, int64_t j)
{
    double v = 0;
    for (int b = 0; b < l->N; b++)
        v += ((double)l->p[(int64_t)b * l->count + j] - l->n[(int64_t)b * l->count + j]) *
             (double)(1 << (l->N - 1 - b));
    return v;
}

void qt_bsq_weights(const struct qt_bsq_layer *l, float *w)
{
    for (int64_t j = 0; j < l->count; j++)
        w[j] = l->N > 0 ? l->s * qt_bsq_unit((float)plane_sum(l, j), l->N) : 0.0f;
}

int qt_bsq_requant(struct qt_bsq_layer *l, int max_planes)
{
    if (l->N < 1) return 0;
    unsigned *qp = malloc(sizeof(unsigned) * (size_t)(l->count + 1)),
             *qn = malloc(sizeof(unsigned) * (size_t)(l->count + 1));
    if (!qp || !qn) {
        free(qp);
        free(qn);
        return -1;
    }
    unsigned qmax = 0;
    for (int64_t j = 0; j < l->count; j++) {
        const double v = plane_sum(l, j);
        qp[j] = (unsigned)nearbyint(v > 0 ? v : 0);
        qn[j] = (unsigned)nearbyint(v < 0 ? -v : 0);
        qmax = qp[j] > qmax ? qp[j] : qmax;
        qmax = qn[j] > qmax ? qn[j] : qmax;
    }
    int N = l->N;
    if (qmax > (1u << N) - 1) {
        if (N < max_planes) {
            l->s *= qt_bsq_k(N + 1) / qt_bsq_k(N);
            N++;
        } else {
            const unsigned top = (1u << N) - 1;
            for (int64_t j = 0; j < l->count; j++) {
                qp[j] = qp[j] > top ? top : qp[j];
                qn[j] = qn[j] > top ? top : qn[j];
            }
        }
    }
    int rc = 0;
    if (N != l->N) rc = alloc_planes(l, N);
    for (int64_t j = 0; !rc && j < l->count; j++)
        put_digits(l, j, qp[j], qn[j]);
    free(qp);
    free(qn);
    return rc;
}

double qt_bsq_plane_percent(const struct qt_bsq_layer *l, int b)
{
    if (l->count == 0) return 0;
    int64_t set = 0;
    for (int64_t j = 0; j < l->count; j++)
        set += l->p[(int64_t)b * l->count + j] != 0 || l->n[(int64_t)b * l->count + j] != 0;
    return 100.0 * (double)set / (double)l->count;
}

/* Removes plane b (moving the later planes up). */
static void drop_plane(struct qt_bsq_layer *l, int b)
{
    const int64_t c = l->count;
    memmove(l->p + (int64_t)b * c, l->p + (int64_t)(b + 1) * c, sizeof(float) * (size_t)((l->N - 1 - b) * c));
    memmove(l->n + (int64_t)b * c, l->n + (int64_t)(b + 1) * c, sizeof(float) * (size_t)((l->N - 1 - b) * c));
    l->N--;
}

void qt_bsq_adjust(struct qt_bsq_layer *l, double thre, int zero_empty)
{
    const int N0 = l->N;
    if (N0 < 1) return;
    const int64_t c = l->count;
    /* from the most significant plane down */
    while (l->N > 1) {
        const double pct = qt_bsq_plane_percent(l, 0);
        if (pct > 0 && !(pct < thre)) break;
        if (pct > 0) /* merged: added into every lower plane, which saturate at 1 */
            for (int b = 1; b < l->N; b++)
                for (int64_t j = 0; j < c; j++) {
                    float *pp = &l->p[(int64_t)b * c + j], *nn = &l->n[(int64_t)b * c + j];
                    *pp = fminf(*pp + l->p[j], 1.0f);
                    *nn = fminf(*nn + l->n[j], 1.0f);
                }
        drop_plane(l, 0);
    }
    /* from the least significant plane up */
    while (l->N > 1 && qt_bsq_plane_percent(l, l->N - 1) <= thre) {
        l->N--; /* the last plane: nothing moves */
        l->s *= 2.0f;
    }
    l->s *= qt_bsq_k(l->N) / qt_bsq_k(N0);
    if (zero_empty && l->N == 1 && qt_bsq_plane_percent(l, 0) == 0) l->N = 0;
}

double qt_bsq_group_lasso(const struct qt_bsq_layer *l)
{
    double sum = 0;
    for (int b = 0; b < l->N; b++) {
        double sq = 0;
        for (int64_t j = 0; j < l->count; j++) {
            const double p = l->p[(int64_t)b * l->count + j], n = l->n[(int64_t)b * l->count + j];
            sq += p * p + n * n;
        }
        sum += sqrt(1e-8 + sq);
    }
    return (double)l->count * l->N * sum;
}

void qt_bsq_free(struct qt_bsq_layer *l)
{
    free(l->p);
    free(l->n);
    memset(l, 0, sizeof *l);
}

/* ---- Models with bit-plane layers ---- */

#include <stdio.h>

#include "../graph/schema.h"
#include "../passes/passes.h"

static int add_init(struct qt_graph *g, const char *name, const struct qt_shape *s,
                    const float *data)
{
    const int v = qt_graph_add_value_unique(g, name, QT_F32, s);
    g->values[v].init = qt_tensor_new(QT_F32, s);
    g->values[v].has_shape = 1;
    if (g->values[v].init && data)
        memcpy(g->values[v].init->data, data, sizeof(float) * (size_t)qt_shape_numel(s));
    return g->values[v].init ? v : -1;
}

int qt_bsq_convert(struct qt_graph *g, const int *select, int N, int *count, struct qt_error *e)
{
    int done = 0;
    const int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        const int v = qt_layer_weight(g, &g->nodes[i], 0);
        if (v < 0 || !select[v]) continue;
        const struct qt_tensor *w = g->values[v].init;
        struct qt_bsq_layer l;
        if (qt_bsq_encode(&l, w->data, qt_shape_numel(&w->shape), N))
            return qt_err(e, "out of memory converting '%s' to bit planes", g->values[v].name);
        struct qt_shape ps = {w->shape.ndim + 1, {N}}, ss = {1, {1}};
        for (int k = 0; k < w->shape.ndim; k++)
            ps.d[k + 1] = w->shape.d[k];
        char name[600];
        const char *base = g->values[v].name;
        snprintf(name, sizeof name, "%s.bsq_p", base);
        const int vp = add_init(g, name, &ps, l.p);
        snprintf(name, sizeof name, "%s.bsq_n", base);
        const int vn = add_init(g, name, &ps, l.n);
        snprintf(name, sizeof name, "%s.bsq_s", base);
        const int vs = add_init(g, name, &ss, &l.s);
        qt_bsq_free(&l);
        if (vp < 0 || vn < 0 || vs < 0) return qt_err(e, "out of memory converting '%s'", base);
        snprintf(name, sizeof name, "%s.bsq", g->values[v].name);
        const struct qt_shape wshape = w->shape;
        const int out = qt_graph_add_value_unique(g, name, QT_F32, &wshape);
        g->values[out].has_shape = 1;
        qt_graph_replace_uses(g, v, out);
        snprintf(name, sizeof name, "%s.bq", g->nodes[i].name);
        const int in[3] = {vp, vn, vs};
        qt_graph_add_node(g, QT_OP_BITQUANT, name, in, 3, &out, 1);
        g->values[v].dead = 1;
        done++;
    }
    if (count) *count = done;
    if (qt_graph_compact(g, e) || qt_graph_infer_shapes(g, e)) return -1;
    return 0;
}

void qt_bsq_model_free(struct qt_bsq_model *m)
{
    for (int i = 0; i < m->n; i++)
        qt_bsq_free(&m->l[i]);
    free(m->l);
    free(m->node);
    memset(m, 0, sizeof *m);
}

int qt_bsq_model_read(const struct qt_graph *g, struct qt_bsq_model *m, struct qt_error *e)
{
    memset(m, 0, sizeof *m);
    m->l = calloc(g->nnodes + 1, sizeof *m->l);
    m->node = calloc(g->nnodes + 1, sizeof *m->node);
    if (!m->l || !m->node) {
        qt_bsq_model_free(m);
        return qt_err(e, "out of memory");
    }
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead || n->op != QT_OP_BITQUANT) continue;
        const struct qt_tensor *p = g->values[n->in[0]].init, *q = g->values[n->in[1]].init,
                               *s = g->values[n->in[2]].init;
        if (!p || !q || !s || p->dtype != QT_F32 || q->dtype != QT_F32 || s->dtype != QT_F32) {
            qt_bsq_model_free(m);
            return qt_err(e, "BitQuant node '%s': its planes and scale must be float "
                             "initializers", n->name);
        }
        struct qt_bsq_layer *l = &m->l[m->n];
        l->N = (int)p->shape.d[0];
        l->count = qt_shape_numel(&p->shape) / (l->N ? l->N : 1);
        l->s = ((const float *)s->data)[0];
        const size_t bytes = sizeof(float) * (size_t)qt_shape_numel(&p->shape);
        l->p = malloc(bytes ? bytes : 1);
        l->n = malloc(bytes ? bytes : 1);
        if (!l->p || !l->n) {
            m->n++;
            qt_bsq_model_free(m);
            return qt_err(e, "out of memory");
        }
        memcpy(l->p, p->data, bytes);
        memcpy(l->n, q->data, bytes);
        m->node[m->n++] = i;
    }
    return 0;
}

/* Replaces the data of initializer v by count floats of the given shape. */
static int set_init(struct qt_graph *g, int v, const struct qt_shape *s, const float *data)
{
    struct qt_tensor *t = qt_tensor_new(QT_F32, s);
    if (!t) return -1;
    memcpy(t->data, data, sizeof(float) * (size_t)qt_shape_numel(s));
    qt_tensor_free(g->values[v].init);
    g->values[v].init = t;
    g->values[v].shape = *s;
    g->values[v].has_shape = 1;
    return 0;
}

int qt_bsq_model_write(struct qt_graph *g, const struct qt_bsq_model *m, struct qt_error *e)
{
    for (int i = 0; i < m->n; i++) {
        const struct qt_bsq_layer *l = &m->l[i];
        const struct qt_node *n = &g->nodes[m->node[i]];
        if (l->N < 1 || l->N > QT_BSQ_MAX_BITS)
            return qt_err(e, "BitQuant node '%s': %d planes", n->name, l->N);
        struct qt_shape ps = g->values[n->in[0]].init->shape, ss = {1, {1}};
        ps.d[0] = l->N;
        if (set_init(g, n->in[0], &ps, l->p) || set_init(g, n->in[1], &ps, l->n) ||
            set_init(g, n->in[2], &ss, &l->s))
            return qt_err(e, "out of memory");
    }
    return qt_graph_infer_shapes(g, e);
}

int64_t qt_bsq_model_bits(const struct qt_bsq_model *m)
{
    int64_t bits = 0;
    for (int i = 0; i < m->n; i++)
        bits += m->l[i].count * m->l[i].N;
    return bits;
}

int qt_bsq_to_quantizers(struct qt_graph *g, struct qt_error *e)
{
    struct qt_bsq_model m;
    if (qt_bsq_model_read(g, &m, e)) return -1;
    int rc = 0;
    for (int i = 0; i < m.n && !rc; i++) {
        struct qt_bsq_layer *l = &m.l[i];
        const int ni = m.node[i];
        const int out = g->nodes[ni].out[0];
        float *w = malloc(sizeof(float) * (size_t)(l->count ? l->count : 1));
        if (!w) {
            rc = qt_err(e, "out of memory");
            break;
        }
        if (qt_bsq_requant(l, QT_BSQ_PLANES)) {
            free(w);
            rc = qt_err(e, "out of memory");
            break;
        }
        qt_bsq_adjust(l, 0.0, 1);
        qt_bsq_weights(l, w);
        const int bits = l->N > 0 ? l->N + 1 : 2;
        const float alpha = l->N > 0 && l->s > 0 ? l->s : 1.0f;
        char name[600];
        /* the weight keeps the layer's original name (the planes were named after it) */
        const char *pn = g->values[g->nodes[ni].in[0]].name;
        const size_t len = strlen(pn) > 6 ? strlen(pn) - 6 : strlen(pn); /* ".bsq_p" */
        snprintf(name, sizeof name, "%.*s", (int)len, pn);
        const struct qt_shape ws = g->values[out].shape, as = {1, {1}};
        const int vw = add_init(g, name, &ws, w);
        snprintf(name, sizeof name, "%s.alpha_w", g->nodes[ni].name);
        const int va = add_init(g, name, &as, &alpha);
        free(w);
        if (vw < 0 || va < 0) {
            rc = qt_err(e, "out of memory");
            break;
        }
        struct qt_node *n = &g->nodes[ni];
        for (int k = 0; k < 3; k++)
            g->values[n->in[k]].dead = 1;
        n->op = QT_OP_WEIGHTQUANT;
        n->in[0] = vw;
        n->in[1] = va;
        n->nin = 2;
        qt_node_set_string(n, "scheme", "uniform");
        qt_node_set_int(n, "bits", bits);
        qt_node_set_int(n, "signed", 1);
        qt_node_set_int(n, "standardize", 0);
    }
    qt_bsq_model_free(&m);
    if (!rc && (qt_graph_compact(g, e) || qt_graph_infer_shapes(g, e))) rc = -1;
    return rc;
}

/* ---- Training the bit planes ---- */

#include "mixed.h"

int qt_bsq_state_of(const struct qt_graph *g, struct qt_bsq_model *m, struct qt_bsq_state *s,
                    double decay, struct qt_error *e)
{
    memset(s, 0, sizeof *s);
    if (qt_bsq_model_read(g, m, e)) return -1;
    s->n = m->n;
    s->l = m->l;
    int64_t bits1 = 0;
    double R = 0;
    for (int i = 0; i < m->n; i++) {
        const struct qt_bsq_layer *l = &m->l[i];
        s->weights += l->count;
        s->plane_bits += l->count * l->N;
        bits1 += l->count * (l->N + 1);
        s->bytes += qt_mixed_bytes(l->count, l->N + 1);
        R += qt_bsq_group_lasso(l);
    }
    s->avg_bits = s->weights ? (double)bits1 / (double)s->weights : 0;
    s->compression = s->plane_bits ? 32.0 * (double)s->weights / (double)s->plane_bits : 0;
    s->regularizer = s->weights ? decay * R / (double)s->weights : 0;
    return 0;
}

int qt_bsq_train(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                 const struct qt_dataset *test, const struct qt_bsq_config *c,
                 const struct qt_train_callbacks *cb,
                 int (*requant)(void *ctx, const struct qt_bsq_state *s), void *ctx,
                 int *interrupted, struct qt_error *e)
{
    *interrupted = 0;
    const int E = c->train.epochs, K = c->interval > 0 ? c->interval : E;
    const int64_t n = c->train.train_limit > 0 && c->train.train_limit < train->n
                          ? c->train.train_limit
                          : train->n;
    const int64_t per_epoch = (n + c->train.batch - 1) / c->train.batch;
    int regularize = c->decay > 0;
    for (int epoch = c->first_epoch; epoch < E;) {
        struct qt_bsq_model m;
        struct qt_bsq_state st;
        if (epoch % K == 0) {
            /* Requant, then Adjust(threshold), on every layer */
            if (qt_bsq_model_read(g, &m, e)) return -1;
            for (int i = 0; i < m.n; i++) {
                if (qt_bsq_requant(&m.l[i], QT_BSQ_PLANES)) {
                    qt_bsq_model_free(&m);
                    return qt_err(e, "out of memory re-quantizing the bit planes");
                }
                qt_bsq_adjust(&m.l[i], c->threshold, 0);
            }
            const int rc = qt_bsq_model_write(g, &m, e);
            qt_bsq_model_free(&m);
            if (rc) return -1;
        }
        if (qt_bsq_state_of(g, &m, &st, c->decay, e)) return -1;
        const int fits = (!c->budget_bytes || st.bytes <= c->budget_bytes) &&
                         (!(c->avg_bits > 0) || st.avg_bits <= c->avg_bits + 1e-9);
        if ((c->budget_bytes || c->avg_bits > 0) && fits) regularize = 0;
        st.epoch = epoch;
        st.regularized = regularize;
        const int rc = epoch % K == 0 && requant ? requant(ctx, &st) : 0;
        const int64_t weights = st.weights;
        qt_bsq_model_free(&m);
        if (rc) return qt_err(e, "stopped after the re-quantization at epoch %d", epoch);
        const int until = (epoch / K + 1) * K < E ? (epoch / K + 1) * K : E;
        struct qt_train_config t = c->train;
        t.epochs = until - epoch;
        t.epoch_offset = epoch;
        t.epochs_total = E;
        t.step_offset = (int64_t)epoch * per_epoch;
        t.seed = c->train.seed + (uint64_t)epoch; /* another data order for every epoch */
        t.bit_lasso = regularize && weights ? (float)(c->decay / (double)weights) : 0.0f;
        t.checkpoint = NULL;
        t.resume = NULL;
        struct qt_train_result res;
        if (qt_train(g, b, train, test, &t, cb, &res, e)) return -1;
        epoch += res.epochs_done;
        if (res.interrupted) {
            *interrupted = 1;
            return 0;
        }
    }
    return 0;
}
