/* The executor: runs a graph forward (inference or training) and backward on a backend.
 * Shapes are inferred per run (so a symbolic batch takes any size); buffers come from a pool
 * reused by liveness, so repeated runs at one batch size allocate nothing after the first. */
#include "exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/eval.h"
#include "../graph/schema.h"

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
    char *need_grad;        /* per value: a gradient flows into it */
    struct qt_tensor *grad; /* per value: its gradient (data NULL when none this step) */
    int *gblk;              /* per value: pool block of the gradient, -1 for none */
    float **pgrad;          /* per value: persistent gradient buffer of a parameter */
    float **aux;            /* per node: what its backward needs from its forward */
    int64_t *aux_cap;
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

struct qt_exec *qt_exec_new(struct qt_graph *g, struct qt_backend *b, struct qt_error *e)
{
    struct qt_exec *x = calloc(1, sizeof *x);
    x->g = g;
    x->b = b;
    x->val = calloc(g->nvalues + 1, sizeof *x->val);
    x->blk = malloc(sizeof(int) * (g->nvalues + 1));
    x->last_use = malloc(sizeof(int) * (g->nvalues + 1));
    for (int v = 0; v < g->nvalues; v++) {
        x->blk[v] = -1;
        x->last_use[v] = -1;
        if (g->values[v].flags & QT_V_OUTPUT) x->last_use[v] = g->nnodes; /* kept */
    }
    for (int i = 0; i < g->nnodes; i++)
        for (int k = 0; k < g->nodes[i].nin; k++) {
            int v = g->nodes[i].in[k];
            if (v >= 0 && x->last_use[v] < i && x->last_use[v] != g->nnodes) x->last_use[v] = i;
        }
    /* Constants: uploaded once. */
    for (int v = 0; v < g->nvalues; v++) {
        const struct qt_tensor *t = g->values[v].init;
        if (!t) continue;
        x->val[v] = *t;
        x->val[v].data = t->data; /* host copy; the CPU backend uses it in place */
        if (strcmp(b->name, "cpu") != 0 && t->dtype == QT_F32) {
            int bi = pool_get(x, t->nbytes, 0);
            if (bi < 0 || b->upload(b, x->blocks[bi].ptr, t->data, t->nbytes)) {
                qt_err(e, "cannot place initializer '%s' on the %s backend", g->values[v].name, b->name);
                qt_exec_free(x);
                return NULL;
            }
            x->val[v].data = x->blocks[bi].ptr;
            x->blk[v] = bi;
        }
    }
    return x;
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
    if (!x->b->forward_train || !x->b->backward)
        return qt_err(e, "the %s backend cannot train", x->b->name);
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

static int run_forward(struct qt_exec *x, const struct qt_tensor **inputs, int train,
                       struct qt_error *e)
{
    struct qt_graph *g = x->g;
    char b1[128], b2[128];
    if (train && train_setup(x, e)) return -1;
    /* Release everything from the previous run. */
    for (int v = 0; v < g->nvalues; v++) release_value(x, v);

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

    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        const struct qt_tensor *in[64];
        struct qt_shape ish[64], osh[3];
        enum qt_dtype idt[64], odt[3];
        for (int k = 0; k < n->nin; k++) {
            in[k] = NULL;
            memset(&ish[k], 0, sizeof ish[k]);
            idt[k] = QT_UNDEF;
            if (n->in[k] < 0) continue;
            in[k] = &x->val[n->in[k]];
            if (!in[k]->data && in[k]->nbytes)
                return qt_err(e, "%s node '%s': input '%s' has no value", qt_op_name(n->op), n->name,
                              g->values[n->in[k]].name);
            ish[k] = in[k]->shape;
            idt[k] = in[k]->dtype;
        }
        struct qt_infer_ctx c = {g, n, ish, idt, in, osh, odt};
        if (qt_schema_infer(&c, e)) return -1;
        int on_backend = x->b->supports(x->b, g, n, in);
        struct qt_tensor *out[3] = {NULL, NULL, NULL};
        for (int k = 0; k < n->nout; k++) {
            int v = n->out[k];
            if (v < 0) continue;
            struct qt_tensor *t = &x->val[v];
            t->dtype = odt[k];
            t->shape = osh[k];
            int64_t cnt = qt_shape_numel(&osh[k]);
            if (cnt < 0)
                return qt_err(e, "%s node '%s': output shape %s is not concrete", qt_op_name(n->op),
                              n->name, qt_shape_str(g, &osh[k], b1, sizeof b1));
            t->nbytes = (size_t)cnt * qt_dtype_size(odt[k]);
            int bi = pool_get(x, t->nbytes, !on_backend && odt[k] != QT_F32);
            if (bi < 0) return qt_err(e, "%s node '%s': out of memory", qt_op_name(n->op), n->name);
            x->blk[v] = bi;
            t->data = x->blocks[bi].ptr;
            out[k] = t;
        }
        if (on_backend) {
            if (ensure_ws(x, x->b->workspace(x->b, g, n, in, out), e)) return -1;
            if (train) {
                int64_t na = x->b->aux_floats(x->b, g, n, in);
                if (na > x->aux_cap[i]) {
                    if (x->aux[i]) x->b->release(x->b, x->aux[i]);
                    x->aux[i] = x->b->alloc(x->b, sizeof(float) * na);
                    if (!x->aux[i]) return qt_err(e, "%s node '%s': out of memory", qt_op_name(n->op), n->name);
                    x->aux_cap[i] = na;
                }
                if (x->b->forward_train(x->b, g, n, in, out, x->aux[i], x->ws, e)) return -1;
            } else if (x->b->forward(x->b, g, n, in, out, x->ws, e)) {
                return -1;
            }
        } else {
            if (qt_eval_node(n, in, out, e)) return -1;
        }
        if (train) continue; /* backward reads every forward value */
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            if (v >= 0 && x->last_use[v] == i) release_value(x, v);
        }
    }
    x->trained = train;
    return x->b->sync(x->b, e);
}

int qt_exec_forward(struct qt_exec *x, const struct qt_tensor **inputs, struct qt_error *e)
{
    return run_forward(x, inputs, 0, e);
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

/* Backward of ops that only move data: the gradient moves back unchanged. */
static int passthrough_backward(struct qt_exec *x, const struct qt_node *n, const struct qt_tensor *dy,
                                struct qt_tensor *dx, int acc, struct qt_error *e)
{
    switch (n->op) {
    case QT_OP_RESHAPE: case QT_OP_FLATTEN: case QT_OP_SQUEEZE: case QT_OP_UNSQUEEZE:
    case QT_OP_IDENTITY: case QT_OP_DROPOUT:
        break;
    default:
        return qt_err(e, "%s node '%s': training through this op is not supported",
                      qt_op_name(n->op), n->name);
    }
    if (strcmp(x->b->name, "cpu") != 0)
        return qt_err(e, "%s node '%s': data-movement backward runs on the CPU backend only",
                      qt_op_name(n->op), n->name);
    float *d = dx->data;
    const float *s = dy->data;
    int64_t cnt = (int64_t)(dx->nbytes / sizeof(float));
    if (acc)
        for (int64_t i = 0; i < cnt; i++) d[i] += s[i];
    else
        memcpy(d, s, dx->nbytes);
    return 0;
}

int qt_exec_backward(struct qt_exec *x, const struct qt_tensor *dy, struct qt_error *e)
{
    struct qt_graph *g = x->g;
    if (!x->trained) return qt_err(e, "backward needs a training forward pass first");
    x->trained = 0;
    for (int v = 0; v < g->nvalues; v++) release_grad(x, v);
    int out0 = g->outputs[0], acc;
    if (!qt_shape_eq(&dy->shape, &x->val[out0].shape))
        return qt_err(e, "the output gradient's shape does not match output '%s'", g->values[out0].name);
    if (!x->need_grad[out0]) return qt_err(e, "no parameter influences output '%s'", g->values[out0].name);
    struct qt_tensor *g0 = grad_of(x, out0, &acc, e);
    if (!g0 || x->b->upload(x->b, g0->data, dy->data, g0->nbytes)) return -1;

    for (int i = g->nnodes - 1; i >= 0; i--) {
        const struct qt_node *n = &g->nodes[i];
        int live = 0;
        for (int k = 0; k < n->nout; k++) live |= n->out[k] >= 0 && x->grad[n->out[k]].data != NULL;
        if (!live) continue;
        const struct qt_tensor *in[64], *out[3], *dout[3];
        struct qt_tensor *din[64];
        int accs[64], wanted = 0;
        for (int k = 0; k < n->nout; k++) {
            int v = n->out[k];
            out[k] = v >= 0 ? &x->val[v] : NULL;
            dout[k] = v >= 0 && x->grad[v].data ? &x->grad[v] : NULL;
        }
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            in[k] = v >= 0 ? &x->val[v] : NULL;
            din[k] = NULL;
            accs[k] = 0;
            if (v < 0 || !x->need_grad[v]) continue;
            /* One gradient buffer per value, even when a node reads it twice. */
            int seen = 0;
            for (int j = 0; j < k; j++) seen |= n->in[j] == v;
            if (seen) continue;
            if (!(din[k] = grad_of(x, v, &accs[k], e))) return -1;
            wanted = 1;
        }
        if (wanted) {
            if (x->b->supports(x->b, g, n, in)) {
                if (x->b->backward(x->b, g, n, in, out, dout, din, accs, x->aux[i], x->ws, e)) return -1;
            } else if (passthrough_backward(x, n, dout[0], din[0], accs[0], e)) {
                return -1;
            }
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

const struct qt_tensor *qt_exec_output(const struct qt_exec *x, int k)
{
    return &x->val[x->g->outputs[k]];
}
