/* The executor: runs a graph forward (inference, with backend layouts and fused ops, or
 * training) and backward on a backend. Shapes are inferred per run and each node is lowered
 * into an op description (runtime/lower.c) when its input shapes change; buffers come from a
 * pool reused by liveness, so repeated runs at one batch size allocate nothing after the
 * first. Float values live in backend memory (initializers uploaded once, updated there by
 * training); other values, and the nodes that compute them, stay on the host. The executor
 * reaches backend memory only through upload and download. */
#include "exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/eval.h"
#include "../graph/schema.h"
#include "lower.h"

struct block {
    void *ptr;
    size_t cap;
    int host; /* allocated with malloc (host evaluator tensors) rather than by the backend */
    int used;
};

struct qt_exec {
    struct qt_graph *g;
    struct qt_backend *b;
    struct qt_tensor *val;  /* per value: current tensor (data NULL when not live) */
    int *blk;               /* per value: block index holding it, -1 for none/constants */
    int *last_use;          /* per value: index of the last node reading it */
    struct block *blocks;
    int nblocks;
    float *ws;
    int64_t ws_cap;
    /* Training state. */
    int trained;            /* a training forward ran since the last backward */
    int dy_ready;           /* the output gradient of this step is in place */
    int logits;             /* the value the loss reads (qt_exec_logits), kept like an output */
    char *need_grad;        /* per value: a gradient flows into it */
    struct qt_tensor *grad; /* per value: its gradient (data NULL when none this step) */
    int *gblk;              /* per value: pool block of the gradient, -1 for none */
    float **pgrad;          /* per value: persistent gradient buffer of a parameter */
    float **aux;            /* per node: what its backward needs from its forward */
    int64_t *aux_cap;
    /* Inference fast path (run_infer). */
    enum qt_exec_mode mode;
    int keep;               /* plain inference keeps every value (qt_exec_keep_values) */
    int *head;              /* per node: the node whose step computes it (itself if unfused) */
    int *npost;             /* per node: how many nodes its step computes after it */
    int (*post)[QT_MAX_POST]; /* per node: those nodes */
    int *last_step;         /* per value: the last step reading it (nnodes: never released) */
    int *layout;            /* per value: backend layout of its data (0: plain) */
    /* Lowering, per node: the description of its last input shapes and where it runs. */
    struct qt_op_desc *desc;
    int *route;             /* QT_LOWER_BACKEND, QT_LOWER_HOST, or -1 before the first run */
    struct qt_shape *key;   /* per node input: the shape it was lowered for (from koff[node]) */
    enum qt_dtype *key_dt;
    int *koff;
    struct qt_op_desc *sdesc; /* per node: the static description used to plan fusion */
};

static int pool_get(struct qt_exec *x, size_t bytes, int host)
{
    int best = -1;
    for (int i = 0; i < x->nblocks; i++) {
        struct block *bl = &x->blocks[i];
        if (bl->used || bl->host != host || bl->cap < bytes) continue;
        if (best < 0 || bl->cap < x->blocks[best].cap) best = i;
    }
    if (best >= 0) {
        x->blocks[best].used = 1;
        return best;
    }
    x->blocks = realloc(x->blocks, sizeof *x->blocks * (x->nblocks + 1));
    struct block *bl = &x->blocks[x->nblocks];
    bl->ptr = host ? malloc(bytes ? bytes : 1) : x->b->alloc(x->b, bytes);
    if (!bl->ptr) return -1;
    bl->cap = bytes;
    bl->host = host;
    bl->used = 1;
    return x->nblocks++;
}

/* Whether value v outlives the run: a graph output or the logits. */
static int kept(const struct qt_exec *x, int v)
{
    return (x->g->values[v].flags & QT_V_OUTPUT) || v == x->logits;
}

/* Graph output 0, or the input of the Softmax or LogSoftmax producing it when that op
 * normalizes the last axis of a rank-2 output [N, classes] (a classifier ending in one). */
static int logits_value(const struct qt_graph *g)
{
    const int out0 = g->noutputs > 0 ? g->outputs[0] : -1;
    if (out0 < 0 || g->values[out0].shape.ndim != 2) return out0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->nout < 1 || n->out[0] != out0) continue;
        if ((n->op != QT_OP_SOFTMAX && n->op != QT_OP_LOGSOFTMAX) || n->nin != 1 || n->in[0] < 0)
            return out0;
        /* rank 2: the default axis is the last from opset 13 on, 1 (also the last) before */
        const int64_t axis = qt_node_int(n, "axis", -1);
        return axis == -1 || axis == 1 ? n->in[0] : out0;
    }
    return out0;
}

/* ---- Inference plan ----
 * A step is a node (the head) plus the nodes the backend computes inside the head's kernel
 * (posts): each post is the only reader of the result before it, and its other inputs are
 * stored values that exist when the head runs. Values between the head and the last post
 * live only inside the kernel. Steps run in head order; a value is released after the last
 * step reading it. Returns 0, or -1 when out of memory. */
static int plan_infer(struct qt_exec *x)
{
    const struct qt_graph *g = x->g;
    const struct qt_backend *b = x->b;
    const int nn = g->nnodes, nv = g->nvalues;
    x->sdesc = calloc(nn + 1, sizeof *x->sdesc);
    for (int i = 0; x->sdesc && i < nn; i++) qt_lower_static(&x->sdesc[i], g, &g->nodes[i]);
    x->head = malloc(sizeof(int) * (nn + 1));
    x->npost = calloc(nn + 1, sizeof(int));
    x->post = malloc(sizeof *x->post * (nn + 1));
    x->last_step = malloc(sizeof(int) * (nv + 1));
    x->layout = calloc(nv + 1, sizeof(int));
    /* Per value: its producer, how many node inputs read it and the last node reading it. */
    int *prod = malloc(sizeof(int) * (nv + 1)), *reads = calloc(nv + 1, sizeof(int));
    int *reader = malloc(sizeof(int) * (nv + 1));
    char *inner = calloc(nv + 1, 1); /* values living only inside a step */
    int rc = -1;
    if (!x->sdesc || !x->head || !x->npost || !x->post || !x->last_step || !x->layout || !prod ||
        !reads || !reader || !inner)
        goto out;
    for (int v = 0; v < nv; v++) prod[v] = reader[v] = -1;
    for (int i = 0; i < nn; i++) {
        const struct qt_node *n = &g->nodes[i];
        x->head[i] = i;
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0) prod[n->out[k]] = i;
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] >= 0) {
                reads[n->in[k]]++;
                reader[n->in[k]] = i;
            }
    }
    for (int i = 0; i < nn && b->can_fuse && b->forward_infer; i++) {
        if (x->head[i] != i || x->sdesc[i].kind == QT_K_NONE) continue;
        const struct qt_op_desc *chain[QT_MAX_POST];
        int last = i;
        while (x->npost[i] < QT_MAX_POST) {
            const struct qt_node *t = &g->nodes[last];
            if (t->nout != 1 || t->out[0] < 0) break;
            const int v = t->out[0];
            if (kept(x, v) || reads[v] != 1) break;
            const int m = reader[v];
            if (m <= last || x->head[m] != m || g->nodes[m].nout != 1 || g->nodes[m].out[0] < 0)
                break;
            const struct qt_node *mn = &g->nodes[m];
            int ready = 1;
            for (int k = 0; k < mn->nin; k++) {
                const int u = mn->in[k];
                if (u >= 0 && u != v && (inner[u] || prod[u] >= i)) ready = 0;
            }
            if (!ready || x->sdesc[m].kind == QT_K_NONE) break;
            chain[x->npost[i]] = &x->sdesc[m];
            if (!b->can_fuse(x->b, &x->sdesc[i], chain, x->npost[i] + 1)) break;
            x->post[i][x->npost[i]++] = m;
            x->head[m] = i;
            inner[v] = 1;
            last = m;
        }
    }
    for (int v = 0; v < nv; v++)
        x->last_step[v] = kept(x, v) ? nn : -1;
    for (int i = 0; i < nn; i++)
        for (int k = 0; k < g->nodes[i].nin; k++) {
            const int v = g->nodes[i].in[k];
            if (v >= 0 && x->last_step[v] < x->head[i]) x->last_step[v] = x->head[i];
        }
    rc = 0;
out:
    free(prod);
    free(reads);
    free(reader);
    free(inner);
    return rc;
}

struct qt_exec *qt_exec_new(struct qt_graph *g, struct qt_backend *b, struct qt_error *e)
{
    struct qt_exec *x = calloc(1, sizeof *x);
    if (!x) {
        qt_err(e, "out of memory");
        return NULL;
    }
    x->g = g;
    x->b = b;
    x->logits = logits_value(g);
    x->val = calloc(g->nvalues + 1, sizeof *x->val);
    x->blk = malloc(sizeof(int) * (g->nvalues + 1));
    x->last_use = malloc(sizeof(int) * (g->nvalues + 1));
    x->desc = calloc(g->nnodes + 1, sizeof *x->desc);
    x->route = malloc(sizeof(int) * (g->nnodes + 1));
    x->koff = malloc(sizeof(int) * (g->nnodes + 1));
    int nk = 0;
    for (int i = 0; x->koff && i < g->nnodes; i++) {
        x->koff[i] = nk;
        nk += g->nodes[i].nin;
    }
    x->key = calloc(nk + 1, sizeof *x->key);
    x->key_dt = calloc(nk + 1, sizeof *x->key_dt);
    if (!x->val || !x->blk || !x->last_use || !x->desc || !x->route || !x->koff || !x->key ||
        !x->key_dt || plan_infer(x)) {
        qt_err(e, "out of memory planning the execution of '%s'", g->name ? g->name : "the graph");
        qt_exec_free(x);
        return NULL;
    }
    for (int i = 0; i < g->nnodes; i++) x->route[i] = -1;
    for (int v = 0; v < g->nvalues; v++) {
        x->blk[v] = -1;
        x->last_use[v] = -1;
        if (kept(x, v)) x->last_use[v] = g->nnodes;
    }
    for (int i = 0; i < g->nnodes; i++)
        for (int k = 0; k < g->nodes[i].nin; k++) {
            int v = g->nodes[i].in[k];
            if (v >= 0 && x->last_use[v] < i && x->last_use[v] != g->nnodes) x->last_use[v] = i;
        }
    /* Constants: float ones uploaded once to the backend (where training updates them);
     * others read on the host from the graph. */
    for (int v = 0; v < g->nvalues; v++) {
        const struct qt_tensor *t = g->values[v].init;
        if (!t) continue;
        x->val[v] = *t;
        if (t->dtype != QT_F32) continue;
        int bi = pool_get(x, t->nbytes, 0);
        if (bi < 0 || b->upload(b, x->blocks[bi].ptr, t->data, t->nbytes)) {
            qt_err(e, "cannot place initializer '%s' on the %s backend", g->values[v].name, b->name);
            qt_exec_free(x);
            return NULL;
        }
        x->val[v].data = x->blocks[bi].ptr;
        x->blk[v] = bi;
    }
    return x;
}

int qt_exec_sync_state(struct qt_exec *x, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    if (x->b->sync(x->b, e)) return -1;
    for (int v = 0; v < g->nvalues; v++) {
        struct qt_tensor *t = g->values[v].init;
        if (!t || t->dtype != QT_F32 || x->blk[v] < 0) continue;
        if (x->b->download(x->b, t->data, x->val[v].data, t->nbytes))
            return qt_err(e, "cannot read '%s' back from the %s backend", g->values[v].name,
                          x->b->name);
    }
    return 0;
}

int qt_exec_load_state(struct qt_exec *x, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    for (int v = 0; v < g->nvalues; v++) {
        const struct qt_tensor *t = g->values[v].init;
        if (!t || t->dtype != QT_F32 || x->blk[v] < 0) continue;
        if (x->b->upload(x->b, x->val[v].data, t->data, t->nbytes))
            return qt_err(e, "cannot place '%s' on the %s backend", g->values[v].name, x->b->name);
    }
    return 0;
}

void qt_exec_invalidate(struct qt_exec *x)
{
    for (int i = 0; i < x->g->nnodes; i++) x->route[i] = -1;
}

float *qt_exec_param(const struct qt_exec *x, int v)
{
    if (v < 0 || v >= x->g->nvalues || !x->g->values[v].init || x->blk[v] < 0) return NULL;
    return x->val[v].data;
}

void qt_exec_free(struct qt_exec *x)
{
    if (!x) return;
    for (int i = 0; i < x->nblocks; i++) {
        if (x->blocks[i].host) free(x->blocks[i].ptr);
        else x->b->release(x->b, x->blocks[i].ptr);
    }
    free(x->blocks);
    free(x->val);
    free(x->blk);
    free(x->last_use);
    free(x->ws);
    for (int v = 0; x->pgrad && v < x->g->nvalues; v++)
        if (x->pgrad[v]) x->b->release(x->b, x->pgrad[v]);
    for (int i = 0; x->aux && i < x->g->nnodes; i++)
        if (x->aux[i]) x->b->release(x->b, x->aux[i]);
    free(x->pgrad);
    free(x->aux);
    free(x->aux_cap);
    free(x->need_grad);
    free(x->grad);
    free(x->gblk);
    free(x->head);
    free(x->npost);
    free(x->post);
    free(x->last_step);
    free(x->layout);
    free(x->desc);
    free(x->route);
    free(x->key);
    free(x->key_dt);
    free(x->koff);
    free(x->sdesc);
    free(x);
}

static void release_value(struct qt_exec *x, int v)
{
    if (x->blk[v] >= 0 && !x->g->values[v].init) {
        x->blocks[x->blk[v]].used = 0;
        x->blk[v] = -1;
        x->val[v].data = NULL;
    }
}

static int ensure_ws(struct qt_exec *x, int64_t need, struct qt_error *e)
{
    if (need <= x->ws_cap) return 0;
    free(x->ws);
    x->ws = malloc(sizeof(float) * need);
    if (!x->ws) {
        x->ws_cap = 0;
        return qt_err(e, "out of memory for a %lld-float workspace", (long long)need);
    }
    x->ws_cap = need;
    return 0;
}

/* Sets up the training state on first use: which values take gradients, per-node aux. */
static int train_setup(struct qt_exec *x, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    if (x->need_grad) return 0;
    x->need_grad = calloc(g->nvalues + 1, 1);
    x->grad = calloc(g->nvalues + 1, sizeof *x->grad);
    x->gblk = malloc(sizeof(int) * (g->nvalues + 1));
    x->pgrad = calloc(g->nvalues + 1, sizeof *x->pgrad);
    x->aux = calloc(g->nnodes + 1, sizeof *x->aux);
    x->aux_cap = calloc(g->nnodes + 1, sizeof *x->aux_cap);
    for (int v = 0; v < g->nvalues; v++) {
        x->gblk[v] = -1;
        x->need_grad[v] = (g->values[v].flags & QT_V_PARAM) != 0;
    }
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        int any = 0;
        for (int k = 0; k < n->nin; k++) any |= n->in[k] >= 0 && x->need_grad[n->in[k]];
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0 && g->values[n->out[k]].dtype == QT_F32) x->need_grad[n->out[k]] = (char)any;
    }
    return 0;
}

/* Copies the run's inputs into pool blocks (checking them against the model's inputs). */
static int feed_inputs(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    char b1[128], b2[128];
    for (int k = 0; k < g->ninputs; k++) {
        int v = g->inputs[k];
        const struct qt_value *gv = &g->values[v];
        const struct qt_tensor *t = inputs[k];
        int ok = t->dtype == gv->dtype && t->shape.ndim == gv->shape.ndim;
        for (int i = 0; ok && i < t->shape.ndim; i++)
            ok = gv->shape.d[i] < 0 || gv->shape.d[i] == t->shape.d[i];
        if (!ok)
            return qt_err(e, "input '%s' is %s %s, the model expects %s %s", gv->name,
                          qt_dtype_name(t->dtype), qt_shape_str(g, &t->shape, b1, sizeof b1),
                          qt_dtype_name(gv->dtype), qt_shape_str(g, &gv->shape, b2, sizeof b2));
        int host = t->dtype != QT_F32;
        int bi = pool_get(x, t->nbytes, host);
        if (bi < 0) return qt_err(e, "out of memory for input '%s'", gv->name);
        x->blk[v] = bi;
        x->val[v] = *t;
        x->val[v].data = x->blocks[bi].ptr;
        if (host) memcpy(x->val[v].data, t->data, t->nbytes);
        else if (x->b->upload(x->b, x->val[v].data, t->data, t->nbytes))
            return qt_err(e, "cannot upload input '%s'", gv->name);
    }
    return 0;
}

/* in[k] = the current tensor of node n's input k (NULL where omitted). Value `inner` (-1 for
 * none) may be without data: it lives inside a fused step. */
static int gather_inputs(struct qt_exec *x, const struct qt_node *n, int inner,
                         const struct qt_tensor **in, struct qt_error *e)
{
    for (int k = 0; k < n->nin; k++) {
        in[k] = NULL;
        if (n->in[k] < 0) continue;
        in[k] = &x->val[n->in[k]];
        if (!in[k]->data && in[k]->nbytes && n->in[k] != inner)
            return qt_err(e, "%s node '%s': input '%s' has no value", qt_op_name(n->op), n->name,
                          x->g->values[n->in[k]].name);
    }
    return 0;
}

/* Infers node n's output dtypes, shapes and sizes into the value tensors (data untouched). */
static int infer_outputs(struct qt_exec *x, const struct qt_node *n, const struct qt_tensor **in,
                         struct qt_error *e)
{
    struct qt_shape ish[64], osh[3];
    enum qt_dtype idt[64], odt[3];
    char b1[128];
    for (int k = 0; k < n->nin; k++) {
        memset(&ish[k], 0, sizeof ish[k]);
        idt[k] = QT_UNDEF;
        if (!in[k]) continue;
        ish[k] = in[k]->shape;
        idt[k] = in[k]->dtype;
    }
    struct qt_infer_ctx c = {x->g, n, ish, idt, in, osh, odt};
    if (qt_schema_infer(&c, e)) return -1;
    for (int k = 0; k < n->nout; k++) {
        int v = n->out[k];
        if (v < 0) continue;
        struct qt_tensor *t = &x->val[v];
        t->dtype = odt[k];
        t->shape = osh[k];
        int64_t cnt = qt_shape_numel(&osh[k]);
        if (cnt < 0)
            return qt_err(e, "%s node '%s': output shape %s is not concrete", qt_op_name(n->op),
                          n->name, qt_shape_str(x->g, &osh[k], b1, sizeof b1));
        t->nbytes = (size_t)cnt * qt_dtype_size(odt[k]);
    }
    return 0;
}

/* Lowers node i for its current inputs unless they have the shapes it was lowered for;
 * returns its route (QT_LOWER_BACKEND or QT_LOWER_HOST) or -1. */
static int lower(struct qt_exec *x, int i, const struct qt_tensor **in, struct qt_tensor **out,
                 struct qt_error *e)
{
    const struct qt_node *n = &x->g->nodes[i];
    struct qt_shape *key = x->key + x->koff[i];
    enum qt_dtype *kdt = x->key_dt + x->koff[i];
    int same = x->route[i] >= 0;
    for (int k = 0; same && k < n->nin; k++) {
        same = in[k] ? kdt[k] == in[k]->dtype && qt_shape_eq(&key[k], &in[k]->shape)
                     : kdt[k] == QT_UNDEF;
        /* Settings read from non-float inputs (axes, shapes) hold only when those are constant. */
        if (same && in[k] && in[k]->dtype != QT_F32 && !x->g->values[n->in[k]].init) same = 0;
    }
    /* Host-routed nodes are lowered again each run: their settings may hang on run-time data. */
    if (same && x->route[i] == QT_LOWER_BACKEND) return x->route[i];
    int r = qt_lower_node(&x->desc[i], x->g, n, (const struct qt_tensor *const *)in,
                          (const struct qt_tensor *const *)out, e);
    if (r < 0) return -1;
    if (r == QT_LOWER_BACKEND && !x->b->supports(x->b, &x->desc[i]))
        return qt_err(e, "%s node '%s': the %s backend does not compute %s ops", qt_op_name(n->op),
                      n->name, x->b->name, qt_opk_name(x->desc[i].kind));
    for (int k = 0; k < n->nin; k++) {
        kdt[k] = in[k] ? in[k]->dtype : QT_UNDEF;
        if (in[k]) key[k] = in[k]->shape;
    }
    return x->route[i] = r;
}

/* Float buffers of node n's inputs for the backend (NULL for absent or non-float ones). */
static void backend_inputs(const struct qt_node *n, const struct qt_tensor **in, const float **p)
{
    for (int k = 0; k < 64; k++)
        p[k] = k < n->nin && in[k] && in[k]->dtype == QT_F32 ? in[k]->data : NULL;
}

/* Computes node n on the host: float inputs are downloaded and float outputs uploaded;
 * other values live on the host already. */
static int run_host(struct qt_exec *x, const struct qt_node *n, const struct qt_tensor **in,
                    struct qt_tensor **out, struct qt_error *e)
{
    struct qt_tensor hin[64], hout[3];
    const struct qt_tensor *hp[64];
    struct qt_tensor *ho[3] = {NULL, NULL, NULL};
    int rc = -1, nin = n->nin < 64 ? n->nin : 64;
    memset(hin, 0, sizeof hin);
    memset(hout, 0, sizeof hout);
    for (int k = 0; k < nin; k++) {
        hp[k] = in[k];
        if (!in[k] || in[k]->dtype != QT_F32) continue;
        hin[k] = *in[k];
        if (!(hin[k].data = malloc(in[k]->nbytes ? in[k]->nbytes : 1)) ||
            x->b->download(x->b, hin[k].data, in[k]->data, in[k]->nbytes)) {
            qt_err(e, "%s node '%s': cannot read input %d from the %s backend", qt_op_name(n->op),
                   n->name, k, x->b->name);
            goto out;
        }
        hp[k] = &hin[k];
    }
    for (int k = 0; k < n->nout && k < 3; k++) {
        ho[k] = out[k];
        if (!out[k] || out[k]->dtype != QT_F32) continue;
        hout[k] = *out[k];
        if (!(hout[k].data = malloc(out[k]->nbytes ? out[k]->nbytes : 1))) {
            qt_err(e, "%s node '%s': out of memory", qt_op_name(n->op), n->name);
            goto out;
        }
        ho[k] = &hout[k];
    }
    if (qt_eval_node(n, hp, ho, e)) goto out;
    for (int k = 0; k < n->nout && k < 3; k++)
        if (hout[k].data && x->b->upload(x->b, out[k]->data, hout[k].data, out[k]->nbytes)) {
            qt_err(e, "%s node '%s': cannot write output %d to the %s backend", qt_op_name(n->op),
                   n->name, k, x->b->name);
            goto out;
        }
    rc = 0;
out:
    for (int k = 0; k < nin; k++) free(hin[k].data);
    for (int k = 0; k < 3; k++) free(hout[k].data);
    return rc;
}

/* A backend failure, prefixed with the node it ran for. */
static int node_failed(const struct qt_node *n, struct qt_error *e)
{
    return qt_err_prefix(e, "%s node '%s': ", qt_op_name(n->op), n->name);
}

static int run_forward(struct qt_exec *x, const struct qt_tensor **inputs, int train,
                       struct qt_error *e)
{
    struct qt_graph *g = x->g;
    if (train && train_setup(x, e)) return -1;
    /* Release everything from the previous run. */
    for (int v = 0; v < g->nvalues; v++) release_value(x, v);

    if (feed_inputs(x, inputs, e)) return -1;

    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        const struct qt_tensor *in[64];
        if (gather_inputs(x, n, -1, in, e) || infer_outputs(x, n, in, e)) return -1;
        struct qt_tensor *out[3] = {NULL, NULL, NULL};
        for (int k = 0; k < n->nout; k++) {
            int v = n->out[k];
            if (v < 0) continue;
            struct qt_tensor *t = &x->val[v];
            int bi = pool_get(x, t->nbytes, t->dtype != QT_F32);
            if (bi < 0) return qt_err(e, "%s node '%s': out of memory", qt_op_name(n->op), n->name);
            x->blk[v] = bi;
            t->data = x->blocks[bi].ptr;
            out[k] = t;
        }
        const int route = lower(x, i, in, out, e);
        if (route < 0) return -1;
        if (route == QT_LOWER_BACKEND) {
            const struct qt_op_desc *d = &x->desc[i];
            const float *bin[64];
            float *bout[3] = {out[0] ? out[0]->data : NULL, out[1] ? out[1]->data : NULL,
                              out[2] ? out[2]->data : NULL};
            backend_inputs(n, in, bin);
            if (ensure_ws(x, x->b->workspace(x->b, d), e)) return -1;
            if (train) {
                int64_t na = x->b->aux_floats(x->b, d);
                if (na > x->aux_cap[i]) {
                    if (x->aux[i]) x->b->release(x->b, x->aux[i]);
                    x->aux[i] = x->b->alloc(x->b, sizeof(float) * na);
                    if (!x->aux[i]) return qt_err(e, "%s node '%s': out of memory", qt_op_name(n->op), n->name);
                    x->aux_cap[i] = na;
                }
                if (x->b->forward_train(x->b, d, bin, bout, x->aux[i], x->ws, e)) return node_failed(n, e);
            } else if (x->b->forward(x->b, d, bin, bout, x->ws, e)) {
                return node_failed(n, e);
            }
        } else if (run_host(x, n, in, out, e)) {
            return -1;
        }
        if (train || x->keep) continue; /* backward (or the caller) reads every value */
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            if (v >= 0 && x->last_use[v] == i) release_value(x, v);
        }
    }
    x->trained = train;
    x->dy_ready = 0;
    return x->b->sync(x->b, e);
}

/* ---- Inference fast path ----
 * Steps of the plan (plan_infer) run on the backend's forward_infer, which may leave a value
 * in a layout of its own (x->layout). A value becomes plain when a reader needs it plain: a
 * node the backend does not compute, or an input the backend does not read in that layout;
 * graph outputs become plain as soon as they are computed. A fused Add may write its result
 * over its other operand when nothing reads that operand afterwards. */

/* Converts value v from its backend layout to plain, into a new pool block. */
static int make_plain(struct qt_exec *x, int v, struct qt_error *e)
{
    struct qt_tensor *t = &x->val[v];
    if (!x->layout[v]) return 0;
    int bi = pool_get(x, t->nbytes, 0);
    if (bi < 0)
        return qt_err(e, "out of memory converting '%s' to plain order", x->g->values[v].name);
    int64_t dims[4];
    if (t->dtype != QT_F32 || !qt_lower_act_dims(dims, &t->shape)) {
        x->blocks[bi].used = 0;
        return qt_err(e, "'%s': layout %d does not apply to a %s tensor of rank %d",
                      x->g->values[v].name, x->layout[v], qt_dtype_name(t->dtype), t->shape.ndim);
    }
    if (x->b->to_plain(x->b, x->blocks[bi].ptr, t->data, dims, x->layout[v], e)) {
        x->blocks[bi].used = 0;
        return qt_err_prefix(e, "converting '%s' to plain order: ", x->g->values[v].name);
    }
    if (x->blk[v] >= 0) x->blocks[x->blk[v]].used = 0;
    x->blk[v] = bi;
    t->data = x->blocks[bi].ptr;
    x->layout[v] = 0;
    return 0;
}

/* How many times step i (node i and its posts) reads value v, not counting the values that
 * pass from one node of the step to the next. */
static int step_reads(const struct qt_exec *x, int i, int v)
{
    const struct qt_graph *g = x->g;
    int count = 0, prev = -1;
    for (int p = -1; p < x->npost[i]; p++) {
        const struct qt_node *n = &g->nodes[p < 0 ? i : x->post[i][p]];
        for (int k = 0; k < n->nin; k++) count += n->in[k] == v && v != prev;
        prev = n->out[0];
    }
    return count;
}

static int run_step(struct qt_exec *x, int i, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    struct qt_backend *b = x->b;
    const struct qt_node *n = &g->nodes[i];
    const struct qt_tensor *in[64];
    int inl[64], keep[64];
    const int np = x->npost[i];
    if (gather_inputs(x, n, -1, in, e)) return -1;

    /* Shapes of the head's and the fused nodes' outputs, then storage of the results: a
     * fused operand that dies here, or pool blocks. */
    if (infer_outputs(x, n, in, e)) return -1;
    struct qt_step st;
    memset(&st, 0, sizeof st);
    const struct qt_node *last = n;
    const struct qt_tensor *min_other[QT_MAX_POST];
    int other_v[QT_MAX_POST];
    for (int p = 0; p < np; p++) {
        const int mi = x->post[i][p];
        const struct qt_node *m = &g->nodes[mi];
        const struct qt_tensor *min[64];
        const int prev = last->out[0];
        if (gather_inputs(x, m, prev, min, e) || infer_outputs(x, m, min, e)) return -1;
        min_other[p] = NULL;
        other_v[p] = -1;
        for (int k = 0; k < m->nin; k++)
            if (m->in[k] >= 0 && m->in[k] != prev) {
                min_other[p] = min[k];
                other_v[p] = m->in[k];
            }
        /* The fused node's description, for its run-time shapes. */
        struct qt_tensor *mout[3] = {&x->val[m->out[0]], NULL, NULL};
        const int r = lower(x, mi, min, mout, e);
        if (r < 0) return -1;
        if (r != QT_LOWER_BACKEND)
            return qt_err(e, "%s node '%s': planned as fused, but it runs on the host",
                          qt_op_name(m->op), m->name);
        st.post[p].d = &x->desc[mi];
        last = m;
    }
    st.npost = np;

    struct qt_tensor *out[3] = {NULL, NULL, NULL};
    int outl[3] = {0, 0, 0}, taken = -1;
    for (int p = 0; p < np && taken < 0; p++) {
        const int u = other_v[p];
        if (u < 0 || x->last_step[u] != i) continue;
        const int bu = x->blk[u];
        if (bu < 0 || g->values[u].init || x->blocks[bu].host ||
            x->blocks[bu].cap < x->val[last->out[0]].nbytes || step_reads(x, i, u) != 1)
            continue;
        taken = u;
    }
    struct qt_tensor *hout[3] = {NULL, NULL, NULL};
    for (int k = 0; k < n->nout; k++) hout[k] = n->out[k] >= 0 ? &x->val[n->out[k]] : NULL;
    for (int k = 0; k < last->nout; k++) {
        const int v = last->out[k];
        if (v < 0) continue;
        struct qt_tensor *t = &x->val[v];
        int bi;
        if (k == 0 && taken >= 0) {
            bi = x->blk[taken];
            x->blk[taken] = -1;
        } else if ((bi = pool_get(x, t->nbytes, t->dtype != QT_F32)) < 0) {
            return qt_err(e, "%s node '%s': out of memory", qt_op_name(last->op), last->name);
        }
        x->blk[v] = bi;
        t->data = x->blocks[bi].ptr;
        out[k] = t;
    }
    /* The head's description (its outputs carry their inferred shapes even when fused). */
    const int route = lower(x, i, in, np ? hout : out, e);
    if (route < 0) return -1;
    const int on_backend = route == QT_LOWER_BACKEND;
    if (np && !on_backend)
        return qt_err(e, "%s node '%s': planned with fused nodes, but it runs on the host",
                      qt_op_name(n->op), n->name);
    const struct qt_op_desc *d = &x->desc[i];
    /* Inputs the op does not read in their layout become plain (decided on the layouts as
     * they are, then converted). */
    for (int k = 0; k < n->nin; k++) inl[k] = in[k] ? x->layout[n->in[k]] : 0;
    for (int k = 0; k < n->nin; k++)
        keep[k] = !inl[k] || (on_backend && b->reads_layout(b, d, inl, k));
    for (int k = 0; k < n->nin; k++)
        if (!keep[k] && make_plain(x, n->in[k], e)) return -1;
    for (int k = 0; k < n->nin; k++) inl[k] = in[k] ? x->layout[n->in[k]] : 0;
    for (int p = 0; p < np; p++) {
        st.post[p].other = min_other[p] ? min_other[p]->data : NULL;
        st.post[p].other_layout = other_v[p] >= 0 ? x->layout[other_v[p]] : 0;
    }

    if (on_backend) {
        const float *bin[64];
        float *bout[3] = {out[0] ? out[0]->data : NULL, out[1] ? out[1]->data : NULL,
                          out[2] ? out[2]->data : NULL};
        backend_inputs(n, in, bin);
        if (ensure_ws(x, b->workspace(b, d), e)) return -1;
        st.d = d;
        st.in = bin;
        st.in_layout = inl;
        st.out = bout;
        st.out_layout = outl;
        st.ws = x->ws;
        if (b->forward_infer(b, &st, e)) return node_failed(n, e);
    } else if (run_host(x, n, in, out, e)) {
        return -1;
    }
    if (taken >= 0) x->val[taken].data = NULL; /* its storage now holds the result */
    for (int k = 0; k < last->nout; k++) {
        const int v = last->out[k];
        if (v < 0) continue;
        x->layout[v] = outl[k];
        if (kept(x, v) && make_plain(x, v, e)) return -1;
    }
    /* Values whose last reader was in this step. */
    for (int p = -1; p < np; p++) {
        const struct qt_node *m = &g->nodes[p < 0 ? i : x->post[i][p]];
        for (int k = 0; k < m->nin; k++) {
            const int v = m->in[k];
            if (v >= 0 && x->last_step[v] == i) release_value(x, v);
        }
    }
    return 0;
}

static int run_infer(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    for (int v = 0; v < g->nvalues; v++) {
        release_value(x, v);
        x->layout[v] = 0;
    }
    if (feed_inputs(x, inputs, e)) return -1;
    for (int i = 0; i < g->nnodes; i++)
        if (x->head[i] == i && run_step(x, i, e)) return -1;
    x->trained = 0;
    return x->b->sync(x->b, e);
}

int qt_exec_forward(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e)
{
    const struct qt_backend *b = x->b;
    if (x->mode == QT_EXEC_PLAIN || !b->forward_infer || !b->reads_layout || !b->to_plain)
        return run_forward(x, inputs, 0, e);
    return run_infer(x, inputs, e);
}

void qt_exec_set_mode(struct qt_exec *x, enum qt_exec_mode mode)
{
    x->mode = mode;
}

int qt_exec_forward_train(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e)
{
    return run_forward(x, inputs, 1, e);
}

/* Gradient tensor for value v, allocated on first use in this step; *acc tells whether it
 * already holds a contribution. */
static struct qt_tensor *grad_of(struct qt_exec *x, int v, int *acc, struct qt_error *e)
{
    struct qt_tensor *gt = &x->grad[v];
    if (gt->data) {
        *acc = 1;
        return gt;
    }
    *acc = 0;
    *gt = x->val[v];
    if (x->g->values[v].flags & QT_V_PARAM) {
        if (!x->pgrad[v]) x->pgrad[v] = x->b->alloc(x->b, gt->nbytes);
        gt->data = x->pgrad[v];
    } else {
        int bi = pool_get(x, gt->nbytes, 0);
        if (bi >= 0) {
            x->gblk[v] = bi;
            gt->data = x->blocks[bi].ptr;
        }
    }
    if (!gt->data) {
        qt_err(e, "out of memory for the gradient of '%s'", x->g->values[v].name);
        return NULL;
    }
    return gt;
}

static void release_grad(struct qt_exec *x, int v)
{
    if (x->gblk[v] >= 0) {
        x->blocks[x->gblk[v]].used = 0;
        x->gblk[v] = -1;
    }
    x->grad[v].data = NULL;
}

float *qt_exec_output_grad(struct qt_exec *x, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    const int out0 = x->logits;
    int acc;
    if (!x->trained) {
        qt_err(e, "the output gradient needs a training forward pass first");
        return NULL;
    }
    if (!x->need_grad[out0]) {
        qt_err(e, "no parameter influences output '%s'", g->values[out0].name);
        return NULL;
    }
    for (int v = 0; v < g->nvalues; v++) release_grad(x, v);
    struct qt_tensor *g0 = grad_of(x, out0, &acc, e);
    if (!g0) return NULL;
    x->dy_ready = 1;
    return g0->data;
}

int qt_exec_backward(struct qt_exec *x, const struct qt_tensor *dy, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    if (!x->trained) return qt_err(e, "backward needs a training forward pass first");
    const int out0 = x->logits;
    if (dy) {
        if (!qt_shape_eq(&dy->shape, &x->val[out0].shape))
            return qt_err(e, "the output gradient's shape does not match output '%s'",
                          g->values[out0].name);
        float *g0 = qt_exec_output_grad(x, e);
        if (!g0 || x->b->upload(x->b, g0, dy->data, dy->nbytes)) return -1;
    } else if (!x->dy_ready) {
        return qt_err(e, "backward without an output gradient (qt_exec_output_grad)");
    }
    x->trained = 0;
    x->dy_ready = 0;

    for (int i = g->nnodes - 1; i >= 0; i--) {
        const struct qt_node *n = &g->nodes[i];
        int live = 0;
        for (int k = 0; k < n->nout; k++) live |= n->out[k] >= 0 && x->grad[n->out[k]].data != NULL;
        if (!live) continue;
        const float *in[64], *out[3] = {NULL, NULL, NULL}, *dout[3] = {NULL, NULL, NULL};
        float *din[64];
        int accs[64], wanted = 0;
        for (int k = 0; k < 64; k++) {
            in[k] = NULL;
            din[k] = NULL;
            accs[k] = 0;
        }
        for (int k = 0; k < n->nout; k++) {
            int v = n->out[k];
            out[k] = v >= 0 ? x->val[v].data : NULL;
            dout[k] = v >= 0 ? x->grad[v].data : NULL;
        }
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            in[k] = v >= 0 && x->val[v].dtype == QT_F32 ? x->val[v].data : NULL;
            if (v < 0 || !x->need_grad[v]) continue;
            /* One gradient buffer per value, even when a node reads it twice. */
            int seen = 0;
            for (int j = 0; j < k; j++) seen |= n->in[j] == v;
            if (seen) continue;
            struct qt_tensor *gt = grad_of(x, v, &accs[k], e);
            if (!gt) return -1;
            din[k] = gt->data;
            wanted = 1;
        }
        if (wanted) {
            if (x->route[i] != QT_LOWER_BACKEND)
                return qt_err(e, "%s node '%s': training through this op is not supported",
                              qt_op_name(n->op), n->name);
            if (x->b->backward(x->b, &x->desc[i], in, out, dout, din, accs, x->aux[i], x->ws, e))
                return node_failed(n, e);
        }
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0 && !(g->values[n->out[k]].flags & QT_V_PARAM)) release_grad(x, n->out[k]);
    }
    return x->b->sync(x->b, e);
}

const float *qt_exec_grad(const struct qt_exec *x, int v)
{
    return x->grad ? x->grad[v].data : NULL;
}

int qt_exec_read(const struct qt_exec *x, const float *src, float *dst, int64_t n,
                 struct qt_error *e)
{
    if (x->b->sync(x->b, e)) return -1;
    if (x->b->download(x->b, dst, src, sizeof(float) * n))
        return qt_err(e, "cannot read %lld floats from the %s backend", (long long)n, x->b->name);
    return 0;
}

void qt_exec_keep_values(struct qt_exec *x, int keep)
{
    x->keep = keep;
}

const struct qt_tensor *qt_exec_value(const struct qt_exec *x, int v)
{
    if (v < 0 || v >= x->g->nvalues) return NULL;
    const struct qt_tensor *t = &x->val[v];
    return t->data ? t : NULL;
}

const struct qt_tensor *qt_exec_output(const struct qt_exec *x, int k)
{
    return &x->val[x->g->outputs[k]];
}

const struct qt_tensor *qt_exec_logits(const struct qt_exec *x)
{
    return x->logits >= 0 ? &x->val[x->logits] : NULL;
}
