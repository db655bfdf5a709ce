/* Canonicalization: Constant nodes become initializers, Identity and Dropout go, constant
 * subgraphs (shape computations included) are folded, a purely spatial zero Pad merges into
 * the following Conv or pool, per-channel constant Mul and Add after a Conv fold into it, activation quantizers written in standard operators by `qtune
 * export` become ActQuant nodes again (raise_quant.c), ConvInteger becomes a float Conv of
 * its centered codes, and the result is shape-checked. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/eval.h"
#include "../graph/schema.h"
#include "passes.h"

static int is_port(const struct qt_graph *g, int v)
{
    return (g->values[v].flags & (QT_V_INPUT | QT_V_OUTPUT)) != 0;
}

/* Identity and inference-mode Dropout forward their input (an Identity of an initializer is
 * replaced by a copy of it). */
static void drop_passthrough(struct qt_graph *g)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        if (n->dead || (n->op != QT_OP_IDENTITY && n->op != QT_OP_DROPOUT)) continue;
        if (n->op == QT_OP_DROPOUT && n->nout > 1 && n->out[1] >= 0 &&
            qt_graph_use_count(g, n->out[1]) > 0)
            continue; /* the mask is used */
        int x = n->in[0], y = n->out[0];
        if (x < 0 || y < 0) continue; /* a required port left out: verification names it */
        if (is_port(g, y) && (is_port(g, x) || g->values[x].init)) continue;
        if (is_port(g, y)) {
            /* Keep the graph output's name: the producer of x now writes y. */
            int p = g->values[x].producer;
            if (p < 0 || qt_graph_use_count(g, x) != 1) continue;
            struct qt_node *pn = &g->nodes[p];
            for (int k = 0; k < pn->nout; k++)
                if (pn->out[k] == x) pn->out[k] = y;
            g->values[y].producer = p;
            n->dead = 1;
            continue;
        }
        if (g->values[x].init && g->values[x].init->dtype == QT_F32) {
            /* Identity of an initializer: PyTorch's exporter writes one for each parameter or
             * buffer whose values equal another's (a fresh BatchNorm's weight and running
             * variance are both ones). y becomes an initializer of its own, so that training
             * updates them apart, as the exporting framework did. */
            struct qt_tensor *c = qt_tensor_clone(g->values[x].init);
            if (!c) continue; /* out of memory: the Identity stays and is computed */
            g->values[y].init = c;
            g->values[y].dtype = c->dtype;
            g->values[y].shape = c->shape;
            g->values[y].has_shape = 1;
            g->values[y].producer = -1;
            n->dead = 1;
            continue;
        }
        qt_graph_replace_uses(g, y, x);
        n->dead = 1;
    }
}

static int has_sym_values(const struct qt_tensor *t)
{
    if (t->dtype != QT_I64) return 0;
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++)
        if (QT_IS_SYM_VAL(((int64_t *)t->data)[i])) return 1;
    return 0;
}

/* Infers node i's shapes from its inputs; folds it when all its inputs are constant. */
static int infer_and_fold(struct qt_graph *g, int i, struct qt_error *e)
{
    if (qt_infer_node_static(g, i, e)) return -1;
    struct qt_node *n = &g->nodes[i];
    struct qt_shape out[3];
    enum qt_dtype odt[3];
    const struct qt_tensor *vals[64];
    int all_const = 1;
    if (n->out[0] < 0) {
        char d[160];
        return qt_err(e, "%s: its first output is left out", qt_node_desc(g, n, d, sizeof d));
    }
    for (int k = 0; k < n->nout; k++) {
        const struct qt_value *v = &g->values[n->out[k] >= 0 ? n->out[k] : n->out[0]];
        if (!v->has_shape) return 0;
        out[k] = v->shape;
        odt[k] = v->dtype;
    }
    for (int k = 0; k < n->nin; k++) {
        vals[k] = n->in[k] >= 0 ? g->values[n->in[k]].init : NULL;
        if (n->in[k] >= 0 && !vals[k]) all_const = 0;
    }
    enum qt_dtype in0 = n->nin && n->in[0] >= 0 ? g->values[n->in[0]].dtype : QT_UNDEF;
    if (n->op == QT_OP_SHAPE) {
        const struct qt_shape *xs = &g->values[n->in[0]].shape;
        for (int k = 0; k < xs->ndim; k++)
            if (xs->d[k] < 0 && -xs->d[k] - 1 >= g->nsyms) return 0; /* unnamed unknown dim */
    }
    /* Shape only needs its input's shape; symbolic dims fold to placeholder values. */
    int foldable = n->op == QT_OP_SHAPE ||
                   (all_const && qt_eval_handles(n, in0));
    if (!foldable) return 0;
    for (int k = 0; k < n->nout; k++)
        if (n->out[k] >= 0 && (g->values[n->out[k]].flags & QT_V_OUTPUT)) return 0;
    if (n->op == QT_OP_DROPOUT && n->nout > 1) return 0;
    struct qt_tensor *ot[3] = {NULL, NULL, NULL};
    for (int k = 0; k < n->nout; k++) {
        if (qt_shape_numel(&out[k]) < 0) return 0; /* symbolic result: cannot fold */
        if (qt_shape_numel(&out[k]) > (1 << 24)) return 0;
        ot[k] = qt_tensor_new(odt[k], &out[k]);
    }
    /* Arithmetic on placeholder values cannot be folded; leave such nodes alone. */
    int sym_in = 0;
    for (int k = 0; k < n->nin; k++) sym_in |= vals[k] && has_sym_values(vals[k]);
    if (sym_in && (n->op == QT_OP_ADD || n->op == QT_OP_SUB || n->op == QT_OP_MUL ||
                   n->op == QT_OP_DIV || n->op == QT_OP_CAST || n->op == QT_OP_ABS ||
                   n->op == QT_OP_NEG || n->op == QT_OP_GREATER || n->op == QT_OP_LESS ||
                   n->op == QT_OP_REDUCESUM)) {
        for (int k = 0; k < n->nout; k++) qt_tensor_free(ot[k]);
        return 0;
    }
    if (n->op == QT_OP_SHAPE) {
        struct qt_tensor shape_only = {in0, g->values[n->in[0]].shape, NULL, 0};
        const struct qt_tensor *sin[1] = {&shape_only};
        if (qt_eval_node(n, sin, ot, e)) goto fail;
    } else if (qt_eval_node(n, vals, ot, e)) {
        goto fail;
    }
    for (int k = 0; k < n->nout; k++) {
        if (n->out[k] < 0) {
            qt_tensor_free(ot[k]);
            continue;
        }
        struct qt_value *v = &g->values[n->out[k]];
        v->init = ot[k];
        v->producer = -1;
    }
    n->dead = 1;
    return 0;
fail:
    for (int k = 0; k < n->nout; k++) qt_tensor_free(ot[k]);
    return -1;
}

/* A Reshape whose constant shape holds a symbolic dimension copies it from the input
 * (value 0) when the input has the same symbol at the same position. */
static int resolve_symbolic_reshapes(struct qt_graph *g, struct qt_error *e)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        /* Reshape-1 takes its shape from an attribute: no shape input to resolve. */
        if (n->dead || n->op != QT_OP_RESHAPE || n->nin < 2 || n->in[1] < 0) continue;
        struct qt_value *sv = &g->values[n->in[1]];
        if (!sv->init || !has_sym_values(sv->init)) continue;
        const struct qt_shape *xs = &g->values[n->in[0]].shape;
        struct qt_tensor *t = qt_tensor_clone(sv->init);
        int64_t *d = t->data;
        for (int64_t k = 0; k < qt_shape_numel(&t->shape); k++) {
            if (!QT_IS_SYM_VAL(d[k])) continue;
            int sym = QT_SYM_OF_VAL(d[k]);
            if (sym >= g->nsyms) {
                long long bad = (long long)d[k];
                qt_tensor_free(t);
                return qt_err(e, "Reshape node '%s': target shape value %lld is not a dimension",
                              n->name, bad);
            }
            if (k < xs->ndim && xs->d[k] == -1 - sym && !qt_node_int(n, "allowzero", 0)) {
                d[k] = 0;
            } else {
                qt_tensor_free(t);
                return qt_err(e, "Reshape node '%s': its target shape depends on the symbolic "
                                 "dimension '%s' in a way qtune cannot express statically",
                              n->name, g->syms[sym]);
            }
        }
        char base[256];
        snprintf(base, sizeof base, "%s_shape", n->name);
        int nv = qt_graph_add_value_unique(g, base, QT_I64, &t->shape);
        g->values[nv].init = t;
        n = &g->nodes[i];
        n->in[1] = nv;
    }
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++) {
            if (n->in[k] < 0) continue;
            const struct qt_value *v = &g->values[n->in[k]];
            if (v->init && has_sym_values(v->init))
                return qt_err(e, "%s node '%s': input '%s' depends on a symbolic dimension that "
                                 "qtune cannot fold", qt_op_name(n->op), n->name, v->name);
        }
    }
    return 0;
}

/* The per-output-channel factors of constant c read against a Conv output of rank r with k
 * channels: c broadcasts as one value (numel 1) or one per channel (every dim 1 but the
 * channel axis, right-aligned). Returns the stride between channels' values (0: one value
 * for all), or -1 when c is not of that form. */
static int64_t channel_stride(const struct qt_tensor *c, int r, int64_t k)
{
    if (!c || c->dtype != QT_F32 || c->shape.ndim > r) return -1;
    const int64_t n = qt_shape_numel(&c->shape);
    if (n == 1) return 0;
    const int ax = 1 - (r - c->shape.ndim); /* the channel axis in c's dims */
    if (ax < 0 || n != k || c->shape.d[ax] != k) return -1;
    return 1;
}

/* Conv -> Mul by a per-channel constant and Conv -> Add of one (Keras BatchNorm as tf2onnx
 * may write it: x * (gamma / sigma) + (beta - mu * gamma / sigma)) fold into the Conv's
 * weight and bias, as BatchNormalization folds: the Conv then reads as a layer exported with
 * BatchNorm folded (`finetune --folded`). */
static void fold_channel_affine(struct qt_graph *g)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        if (n->dead || (n->op != QT_OP_MUL && n->op != QT_OP_ADD) || n->nin != 2 || n->nout != 1)
            continue;
        for (int side = 0; side < 2; side++) {
            const int y = n->in[side], cv = n->in[1 - side];
            if (y < 0 || cv < 0 || !g->values[cv].init || g->values[y].init) continue;
            const int ci = g->values[y].producer;
            if (ci < 0 || is_port(g, y) || qt_graph_use_count(g, y) != 1) continue;
            struct qt_node *conv = &g->nodes[ci];
            if (conv->op != QT_OP_CONV || conv->nout != 1 || conv->nin < 2) continue;
            const struct qt_tensor *w = g->values[conv->in[1]].init;
            const int bv = conv->nin > 2 ? conv->in[2] : -1;
            const struct qt_tensor *b = bv >= 0 ? g->values[bv].init : NULL;
            if (!w || w->dtype != QT_F32 || w->shape.ndim < 3 || (bv >= 0 && !b)) continue;
            const int64_t k = w->shape.d[0], per = qt_shape_numel(&w->shape) / (k ? k : 1);
            if (k < 1 || (b && (b->dtype != QT_F32 || qt_shape_numel(&b->shape) != k))) continue;
            /* the Conv output's rank: the weight's (k, c, spatial...) has the same */
            const struct qt_tensor *c = g->values[cv].init;
            const int64_t cs = channel_stride(c, w->shape.ndim, k);
            if (cs < 0) continue;
            if ((bv >= 0 && qt_graph_use_count(g, bv) != 1) ||
                (n->op == QT_OP_MUL && qt_graph_use_count(g, conv->in[1]) != 1))
                continue; /* weights shared with another node stay as they are */
            const struct qt_shape bs = {1, {k}};
            struct qt_tensor *nb = qt_tensor_new(QT_F32, &bs);
            struct qt_tensor *nw = n->op == QT_OP_MUL ? qt_tensor_clone(w) : NULL;
            if (!nb || (n->op == QT_OP_MUL && !nw)) {
                qt_tensor_free(nb);
                qt_tensor_free(nw);
                return; /* out of memory: the graph stays as it is */
            }
            const float *cd = c->data;
            for (int64_t j = 0; j < k; j++) {
                const float f = cd[j * cs], bj = b ? ((const float *)b->data)[j] : 0.0f;
                if (n->op == QT_OP_MUL) {
                    for (int64_t q = 0; q < per; q++) ((float *)nw->data)[j * per + q] *= f;
                    ((float *)nb->data)[j] = bj * f;
                } else {
                    ((float *)nb->data)[j] = bj + f;
                }
            }
            char name[300];
            if (nw) {
                snprintf(name, sizeof name, "%s_scaled_w", conv->name);
                const int wv = qt_graph_add_value_unique(g, name, QT_F32, &nw->shape);
                g->values[wv].init = nw;
                g->nodes[ci].in[1] = wv;
            }
            snprintf(name, sizeof name, "%s_%s_b", g->nodes[ci].name,
                     n->op == QT_OP_MUL ? "scaled" : "shifted");
            const int nbv = qt_graph_add_value_unique(g, name, QT_F32, &bs);
            g->values[nbv].init = nb;
            conv = &g->nodes[ci];
            n = &g->nodes[i];
            if (conv->nin < 3) {
                int *grown = realloc(conv->in, sizeof(int) * 3);
                if (!grown) return;
                conv->in = grown;
                conv->nin = 3;
            }
            conv->in[2] = nbv;
            /* the Conv now writes the Mul's or Add's output */
            conv->out[0] = n->out[0];
            g->values[n->out[0]].producer = ci;
            n->dead = 1;
            break;
        }
    }
}

/* Pad(constant 0 on spatial dims) -> Conv, or Pad(-inf) -> MaxPool, or Pad(0) -> AveragePool
 * (which then counts the padding, as the Pad did). */
static void merge_pads(struct qt_graph *g)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *p = &g->nodes[i];
        if (p->dead || p->op != QT_OP_PAD) continue;
        int y = p->out[0];
        if (is_port(g, y) || qt_graph_use_count(g, y) != 1) continue;
        int ci = qt_graph_first_consumer(g, y);
        struct qt_node *c = &g->nodes[ci];
        if (c->in[0] != y) continue;
        if (c->op != QT_OP_CONV && c->op != QT_OP_MAXPOOL && c->op != QT_OP_AVGPOOL) continue;
        if (strcmp(qt_node_string(c, "auto_pad", "NOTSET"), "NOTSET") != 0) continue;
        if (strcmp(qt_node_string(p, "mode", "constant"), "constant") != 0) continue;
        const struct qt_value *x = &g->values[p->in[0]];
        int r = x->shape.ndim;
        if (r < 3) continue;
        int64_t pads[2 * QT_MAX_DIMS];
        int np = qt_node_ints(p, "pads", pads, 2 * QT_MAX_DIMS);
        if (np < 0) {
            if (p->nin < 2 || !g->values[p->in[1]].init) continue;
            const struct qt_tensor *t = g->values[p->in[1]].init;
            np = (int)qt_shape_numel(&t->shape);
            if (np > 2 * QT_MAX_DIMS) continue;
            for (int k = 0; k < np; k++) pads[k] = qt_tensor_get_i(t, k);
        }
        if (np != 2 * r) continue;
        double val = qt_node_float(p, "value", 0.f);
        if (p->nin > 2 && p->in[2] >= 0) {
            if (!g->values[p->in[2]].init) continue;
            val = qt_tensor_get_f(g->values[p->in[2]].init, 0);
        }
        if (p->nin > 3 && p->in[3] >= 0) continue;
        int ok = pads[0] == 0 && pads[1] == 0 && pads[r] == 0 && pads[r + 1] == 0;
        for (int k = 0; k < 2 * r; k++) ok &= pads[k] >= 0;
        if (!ok) continue;
        if (c->op == QT_OP_MAXPOOL ? !(isinf(val) && val < 0) : val != 0) continue;
        int nsp = r - 2;
        int64_t cp[6] = {0};
        int ncp = qt_node_ints(c, "pads", cp, 6);
        if (ncp >= 0 && ncp != 2 * nsp) continue;
        if (c->op == QT_OP_AVGPOOL) {
            int any = 0;
            for (int k = 0; k < 2 * nsp; k++) any |= cp[k] != 0;
            if (any && !qt_node_int(c, "count_include_pad", 0)) continue;
            int anypad = 0;
            for (int k = 0; k < 2 * r; k++) anypad |= pads[k] != 0;
            if (anypad) qt_node_set_int(c, "count_include_pad", 1);
        }
        for (int k = 0; k < nsp; k++) {
            cp[k] += pads[2 + k];
            cp[nsp + k] += pads[r + 2 + k];
        }
        qt_node_set_ints(c, "pads", cp, 2 * nsp);
        c->in[0] = p->in[0];
        p->dead = 1;
    }
}

/* ConvInteger(x, w, x_zero_point, w_zero_point) becomes Cast(Conv(Cast(x) - x_zero_point,
 * Cast(w) - w_zero_point), int32) in float32, where qtune computes: the integer sums are
 * exact while they stay below 2^24 in magnitude (a 3x3 convolution over 64 channels of 8-bit
 * codes reaches at most 127 * 255 * 576 < 2^24.2). Constant weights are folded afterwards. */
static int lower_convinteger(struct qt_graph *g, struct qt_error *e)
{
    const int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        if (g->nodes[i].dead || g->nodes[i].op != QT_OP_CONVINTEGER) continue;
        char base[256], name[300];
        snprintf(base, sizeof base, "%s", g->nodes[i].name);
        int in[4] = {-1, -1, -1, -1};
        for (int k = 0; k < g->nodes[i].nin && k < 4; k++) in[k] = g->nodes[i].in[k];
        if (in[0] < 0 || in[1] < 0 || g->nodes[i].out[0] < 0)
            return qt_err(e, "ConvInteger node '%s': an input or its output is left out", base);
        int f[2];
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "%s/%s", base, k ? "w" : "x");
            f[k] = qt_graph_add_cast(g, name, in[k], QT_F32, -1);
            if (in[k + 2] < 0) continue;
            snprintf(name, sizeof name, "%s/%s_zero_point", base, k ? "w" : "x");
            int z = qt_graph_add_cast(g, name, in[k + 2], QT_F32, -1);
            const struct qt_value *zv = &g->values[in[k + 2]], *wv = &g->values[in[1]];
            if (k == 1 && (!zv->has_shape || qt_shape_numel(&zv->shape) != 1)) {
                /* one zero point per output channel: shaped [M, 1, ...] against the weight */
                if (!wv->has_shape || wv->shape.ndim < 3)
                    return qt_err(e, "ConvInteger node '%s': per-channel weight zero points need "
                                     "the weight's rank", base);
                const struct qt_shape ss = {.ndim = 1, .d = {wv->shape.ndim}};
                struct qt_tensor *sh = qt_tensor_new(QT_I64, &ss);
                for (int d = 0; d < wv->shape.ndim; d++) ((int64_t *)sh->data)[d] = d ? 1 : -1;
                snprintf(name, sizeof name, "%s/w_zero_point_shape", base);
                const int vs = qt_graph_add_value_unique(g, name, QT_I64, &ss);
                g->values[vs].init = sh;
                const int r2[2] = {z, vs};
                snprintf(name, sizeof name, "%s/w_zero_point_r", base);
                z = qt_graph_add_op(g, QT_OP_RESHAPE, name, r2, 2, -1);
            }
            const int s2[2] = {f[k], z};
            snprintf(name, sizeof name, "%s/%s_centered", base, k ? "w" : "x");
            f[k] = qt_graph_add_op(g, QT_OP_SUB, name, s2, 2, -1);
        }
        snprintf(name, sizeof name, "%s/float", base);
        const int yf = qt_graph_add_value_unique(g, name, QT_UNDEF, NULL);
        struct qt_node *n = &g->nodes[i];
        const int y = n->out[0];
        n->op = QT_OP_CONV;
        n->in[0] = f[0];
        n->in[1] = f[1];
        n->nin = 2;
        n->out[0] = yf;
        g->values[yf].producer = i;
        snprintf(name, sizeof name, "%s/int32", base);
        qt_graph_add_cast(g, name, yf, QT_I32, y);
    }
    return 0;
}

int qt_pass_canonicalize(struct qt_graph *g, struct qt_error *e)
{
    drop_passthrough(g);
    if (lower_convinteger(g, e)) return -1;
    if (qt_graph_compact(g, e)) return -1;
    for (int i = 0; i < g->nnodes; i++) {
        if (g->nodes[i].dead) continue;
        if (infer_and_fold(g, i, e)) return -1;
    }
    if (qt_graph_compact(g, e)) return -1;
    if (resolve_symbolic_reshapes(g, e)) return -1;
    merge_pads(g);
    fold_channel_affine(g);
    if (qt_graph_compact(g, e)) return -1;
    if (qt_pass_raise_quant(g, NULL, e)) return -1;
    if (qt_graph_verify(g, e)) return -1;
    return qt_graph_infer_shapes(g, e);
}
