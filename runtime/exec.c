/* The executor: runs a graph forward (inference, with backend layouts and fused nodes, or
 * training) and backward on a backend. Shapes are inferred per run; buffers come from a pool
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
    /* Inference fast path (run_infer). */
    enum qt_exec_mode mode;
    int keep;               /* plain inference keeps every value (qt_exec_keep_values) */
    int *head;              /* per node: the node whose step computes it (itself if unfused) */
    int *npost;             /* per node: how many nodes its step computes after it */
    int (*post)[QT_MAX_POST]; /* per node: those nodes */
    int *last_step;         /* per value: the last step reading it (nnodes: never released) */
    int *layout;            /* per value: backend layout of its data (0: plain) */
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
    if (!x->head || !x->npost || !x->post || !x->last_step || !x->layout || !prod || !reads ||
        !reader || !inner)
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
        if (x->head[i] != i) continue;
        const struct qt_node *chain[QT_MAX_POST];
        int last = i;
        while (x->npost[i] < QT_MAX_POST) {
            const struct qt_node *t = &g->nodes[last];
            if (t->nout != 1 || t->out[0] < 0) break;
            const int v = t->out[0];
            if ((g->values[v].flags & QT_V_OUTPUT) || reads[v] != 1) break;
            const int m = reader[v];
            if (m <= last || x->head[m] != m || g->nodes[m].nout != 1 || g->nodes[m].out[0] < 0)
                break;
            const struct qt_node *mn = &g->nodes[m];
            int ready = 1;
            for (int k = 0; k < mn->nin; k++) {
                const int u = mn->in[k];
                if (u >= 0 && u != v && (inner[u] || prod[u] >= i)) ready = 0;
            }
            if (!ready) break;
            chain[x->npost[i]] = mn;
            if (!b->can_fuse(x->b, g, &g->nodes[i], chain, x->npost[i] + 1)) break;
            x->post[i][x->npost[i]++] = m;
            x->head[m] = i;
            inner[v] = 1;
            last = m;
        }
    }
    for (int v = 0; v < nv; v++)
        x->last_step[v] = (g->values[v].flags & QT_V_OUTPUT) ? nn : -1;
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
    if (plan_infer(x)) {
        qt_err(e, "out of memory planning the inference of '%s'", g->name ? g->name : "the graph");
        qt_exec_free(x);
        return NULL;
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
    free(x->head);
    free(x->npost);
    free(x->post);
    free(x->last_step);
    free(x->layout);
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
        int on_backend = x->b->supports(x->b, g, n, in);
        struct qt_tensor *out[3] = {NULL, NULL, NULL};
        for (int k = 0; k < n->nout; k++) {
            int v = n->out[k];
            if (v < 0) continue;
            struct qt_tensor *t = &x->val[v];
            int bi = pool_get(x, t->nbytes, !on_backend && t->dtype != QT_F32);
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
        if (train || x->keep) continue; /* backward (or the caller) reads every value */
        for (int k = 0; k < n->nin; k++) {
            int v = n->in[k];
            if (v >= 0 && x->last_use[v] == i) release_value(x, v);
        }
    }
    x->trained = train;
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
    if (x->b->to_plain(x->b, x->blocks[bi].ptr, t, x->layout[v], e)) {
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
    if (gather_inputs(x, n, -1, in, e)) return -1;
    const int on_backend = b->supports(b, g, n, in);
    const int np = x->npost[i];
    if (np && !on_backend)
        return qt_err(e, "%s node '%s': planned with fused nodes, but the %s backend does not "
                      "compute it", qt_op_name(n->op), n->name, b->name);
    /* Inputs the node does not read in their layout become plain (decided on the layouts as
     * they are, then converted). */
    for (int k = 0; k < n->nin; k++) inl[k] = in[k] ? x->layout[n->in[k]] : 0;
    for (int k = 0; k < n->nin; k++)
        keep[k] = !inl[k] || (on_backend && b->reads_layout(b, g, n, in, inl, k));
    for (int k = 0; k < n->nin; k++)
        if (!keep[k] && make_plain(x, n->in[k], e)) return -1;
    for (int k = 0; k < n->nin; k++) inl[k] = in[k] ? x->layout[n->in[k]] : 0;
    if (infer_outputs(x, n, in, e)) return -1;

    /* The fused nodes: shapes in order; the step's result is the last one's output. */
    struct qt_step st;
    memset(&st, 0, sizeof st);
    const struct qt_node *last = n;
    for (int p = 0; p < np; p++) {
        const struct qt_node *m = &g->nodes[x->post[i][p]];
        const struct qt_tensor *min[64];
        const int prev = last->out[0];
        if (gather_inputs(x, m, prev, min, e) || infer_outputs(x, m, min, e)) return -1;
        st.post[p].node = m;
        for (int k = 0; k < m->nin; k++)
            if (m->in[k] >= 0 && m->in[k] != prev) {
                st.post[p].other = min[k];
                st.post[p].other_layout = x->layout[m->in[k]];
            }
        last = m;
    }
    st.npost = np;

    /* Storage of the results: a fused operand that dies here, or pool blocks. */
    struct qt_tensor *out[3] = {NULL, NULL, NULL};
    int outl[3] = {0, 0, 0}, taken = -1;
    for (int p = 0; p < np && taken < 0; p++) {
        const struct qt_node *m = st.post[p].node;
        for (int k = 0; k < m->nin && taken < 0; k++) {
            const int u = m->in[k];
            if (u < 0 || &x->val[u] != st.post[p].other || x->last_step[u] != i) continue;
            const int bu = x->blk[u];
            if (bu < 0 || g->values[u].init || x->blocks[bu].host ||
                x->blocks[bu].cap < x->val[last->out[0]].nbytes || step_reads(x, i, u) != 1)
                continue;
            taken = u;
        }
    }
    for (int k = 0; k < last->nout; k++) {
        const int v = last->out[k];
        if (v < 0) continue;
        struct qt_tensor *t = &x->val[v];
        int bi;
        if (k == 0 && taken >= 0) {
            bi = x->blk[taken];
            x->blk[taken] = -1;
        } else if ((bi = pool_get(x, t->nbytes, !on_backend && t->dtype != QT_F32)) < 0) {
            return qt_err(e, "%s node '%s': out of memory", qt_op_name(last->op), last->name);
        }
        x->blk[v] = bi;
        t->data = x->blocks[bi].ptr;
        out[k] = t;
    }

    if (on_backend) {
        if (ensure_ws(x, b->workspace(b, g, n, in, out), e)) return -1;
        st.node = n;
        st.in = in;
        st.in_layout = inl;
        st.out = out;
        st.out_layout = outl;
        st.ws = x->ws;
        if (b->forward_infer(b, g, &st, e)) return -1;
    } else if (qt_eval_node(n, in, out, e)) {
        return -1;
    }
    if (taken >= 0) x->val[taken].data = NULL; /* its storage now holds the result */
    for (int k = 0; k < last->nout; k++) {
        const int v = last->out[k];
        if (v < 0) continue;
        x->layout[v] = outl[k];
        if ((g->values[v].flags & QT_V_OUTPUT) && make_plain(x, v, e)) return -1;
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
