/* The graph IR: construction, lookup, attribute access, compaction and topological sort. */
#include "graph.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema.h"

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        /* Out of memory inside the IR is not recoverable in any useful way. */
        abort();
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s ? s : "") + 1;
    char *d = xrealloc(NULL, n);
    memcpy(d, s ? s : "", n);
    return d;
}

size_t qt_dtype_size(enum qt_dtype t)
{
    switch (t) {
    case QT_F32: case QT_I32: case QT_U32: return 4;
    case QT_U8: case QT_I8: case QT_BOOL: return 1;
    case QT_U16: case QT_I16: case QT_F16: return 2;
    case QT_I64: case QT_F64: case QT_U64: return 8;
    default: return 0;
    }
}

const char *qt_dtype_name(enum qt_dtype t)
{
    static const char *names[] = {"undefined", "float32", "uint8", "int8", "uint16", "int16",
                                  "int32", "int64", "string", "bool", "float16", "float64",
                                  "uint32", "uint64"};
    if ((int)t >= 0 && (size_t)t < sizeof names / sizeof names[0]) return names[t];
    return "unsupported";
}

int64_t qt_shape_numel(const struct qt_shape *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) {
        if (s->d[i] < 0) return -1;
        n *= s->d[i];
    }
    return n;
}

int qt_shape_eq(const struct qt_shape *a, const struct qt_shape *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->d[i] != b->d[i]) return 0;
    return 1;
}

const char *qt_shape_str(const struct qt_graph *g, const struct qt_shape *s, char *buf, size_t n)
{
    size_t k = 0;
    k += snprintf(buf + k, n - k, "[");
    for (int i = 0; i < s->ndim && k < n; i++) {
        if (s->d[i] >= 0)
            k += snprintf(buf + k, n - k, "%s%" PRId64, i ? "," : "", s->d[i]);
        else if (g && -s->d[i] - 1 < g->nsyms)
            k += snprintf(buf + k, n - k, "%s%s", i ? "," : "", g->syms[-s->d[i] - 1]);
        else
            k += snprintf(buf + k, n - k, "%s?", i ? "," : "");
    }
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

struct qt_tensor *qt_tensor_new(enum qt_dtype dtype, const struct qt_shape *shape)
{
    struct qt_tensor *t = xrealloc(NULL, sizeof *t);
    t->dtype = dtype;
    t->shape = *shape;
    int64_t n = qt_shape_numel(shape);
    t->nbytes = (size_t)(n < 0 ? 0 : n) * qt_dtype_size(dtype);
    t->data = calloc(1, t->nbytes ? t->nbytes : 1);
    if (!t->data) abort();
    return t;
}

struct qt_tensor *qt_tensor_clone(const struct qt_tensor *t)
{
    struct qt_tensor *c = qt_tensor_new(t->dtype, &t->shape);
    memcpy(c->data, t->data, t->nbytes);
    return c;
}

void qt_tensor_free(struct qt_tensor *t)
{
    if (!t) return;
    free(t->data);
    free(t);
}

double qt_tensor_get_f(const struct qt_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case QT_F32: return ((const float *)t->data)[i];
    case QT_F64: return ((const double *)t->data)[i];
    default: return (double)qt_tensor_get_i(t, i);
    }
}

int64_t qt_tensor_get_i(const struct qt_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case QT_I64: return ((const int64_t *)t->data)[i];
    case QT_I32: return ((const int32_t *)t->data)[i];
    case QT_U32: return ((const uint32_t *)t->data)[i];
    case QT_I16: return ((const int16_t *)t->data)[i];
    case QT_U16: return ((const uint16_t *)t->data)[i];
    case QT_I8: return ((const int8_t *)t->data)[i];
    case QT_U8: case QT_BOOL: return ((const uint8_t *)t->data)[i];
    case QT_U64: return (int64_t)((const uint64_t *)t->data)[i];
    case QT_F32: return (int64_t)((const float *)t->data)[i];
    case QT_F64: return (int64_t)((const double *)t->data)[i];
    default: return 0;
    }
}

struct qt_graph *qt_graph_new(void)
{
    struct qt_graph *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->name = xstrdup("graph");
    g->opset = 17;
    g->ir_version = 8;
    return g;
}

static void attr_free(struct qt_attr *a)
{
    free(a->name);
    free(a->s);
    free(a->ints);
    free(a->floats);
    for (int i = 0; a->strings && i < a->n; i++) free(a->strings[i]);
    free(a->strings);
    qt_tensor_free(a->t);
}

static void node_free(struct qt_node *n)
{
    free(n->name);
    free(n->domain);
    free(n->in);
    free(n->out);
    for (int i = 0; i < n->nattrs; i++) attr_free(&n->attrs[i]);
    free(n->attrs);
}

void qt_graph_free(struct qt_graph *g)
{
    if (!g) return;
    for (int i = 0; i < g->nvalues; i++) {
        free(g->values[i].name);
        qt_tensor_free(g->values[i].init);
    }
    free(g->values);
    for (int i = 0; i < g->nnodes; i++) node_free(&g->nodes[i]);
    free(g->nodes);
    free(g->inputs);
    free(g->outputs);
    for (int i = 0; i < g->nsyms; i++) free(g->syms[i]);
    free(g->syms);
    for (int i = 0; i < g->nmeta; i++) {
        free(g->meta[i].key);
        free(g->meta[i].value);
    }
    free(g->meta);
    free(g->name);
    free(g->producer);
    free(g);
}

int qt_graph_find_value(const struct qt_graph *g, const char *name)
{
    for (int i = g->nvalues - 1; i >= 0; i--)
        if (!g->values[i].dead && strcmp(g->values[i].name, name) == 0) return i;
    return -1;
}

int qt_graph_add_value(struct qt_graph *g, const char *name, enum qt_dtype dtype,
                       const struct qt_shape *shape)
{
    if (g->nvalues == g->cap_values) {
        g->cap_values = g->cap_values ? 2 * g->cap_values : 64;
        g->values = xrealloc(g->values, sizeof *g->values * g->cap_values);
    }
    struct qt_value *v = &g->values[g->nvalues];
    memset(v, 0, sizeof *v);
    v->name = xstrdup(name);
    v->dtype = dtype;
    v->producer = -1;
    if (shape) {
        v->has_shape = 1;
        v->shape = *shape;
    }
    return g->nvalues++;
}

int qt_graph_add_value_unique(struct qt_graph *g, const char *base, enum qt_dtype dtype,
                              const struct qt_shape *shape)
{
    char name[256];
    snprintf(name, sizeof name, "%s", base);
    for (int k = 1; qt_graph_find_value(g, name) >= 0; k++)
        snprintf(name, sizeof name, "%s_%d", base, k);
    return qt_graph_add_value(g, name, dtype, shape);
}

int64_t qt_graph_sym(struct qt_graph *g, const char *name)
{
    for (int i = 0; i < g->nsyms; i++)
        if (strcmp(g->syms[i], name) == 0) return -1 - i;
    g->syms = xrealloc(g->syms, sizeof *g->syms * (g->nsyms + 1));
    g->syms[g->nsyms] = xstrdup(name);
    return -1 - g->nsyms++;
}

int qt_graph_find_node(const struct qt_graph *g, const char *name)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead && strcmp(g->nodes[i].name, name) == 0) return i;
    return -1;
}

int qt_graph_add_node(struct qt_graph *g, enum qt_op op, const char *name, const int *in,
                      int nin, const int *out, int nout)
{
    if (g->nnodes == g->cap_nodes) {
        g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 64;
        g->nodes = xrealloc(g->nodes, sizeof *g->nodes * g->cap_nodes);
    }
    struct qt_node *n = &g->nodes[g->nnodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->name = xstrdup(name);
    const struct qt_op_schema *sc = qt_schema_get(op);
    n->domain = xstrdup(sc && sc->domain ? sc->domain : "");
    n->nin = nin;
    n->nout = nout;
    n->in = xrealloc(NULL, sizeof(int) * (nin ? nin : 1));
    n->out = xrealloc(NULL, sizeof(int) * (nout ? nout : 1));
    if (nin) memcpy(n->in, in, sizeof(int) * nin);
    if (nout) memcpy(n->out, out, sizeof(int) * nout);
    for (int i = 0; i < nout; i++)
        if (out[i] >= 0) g->values[out[i]].producer = g->nnodes;
    return g->nnodes++;
}

int qt_graph_add_op(struct qt_graph *g, enum qt_op op, const char *name, const int *in, int nin,
                    int out)
{
    if (out < 0) out = qt_graph_add_value_unique(g, name, QT_UNDEF, NULL);
    qt_graph_add_node(g, op, name, in, nin, &out, 1);
    return out;
}

int qt_graph_add_cast(struct qt_graph *g, const char *name, int x, enum qt_dtype to, int out)
{
    const int o = qt_graph_add_op(g, QT_OP_CAST, name, &x, 1, out);
    qt_node_set_int(&g->nodes[g->nnodes - 1], "to", to);
    return o;
}

struct qt_attr *qt_node_add_attr(struct qt_node *n, const char *name, enum qt_attr_type type)
{
    for (int i = 0; i < n->nattrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0) {
            attr_free(&n->attrs[i]);
            memset(&n->attrs[i], 0, sizeof n->attrs[i]);
            n->attrs[i].name = xstrdup(name);
            n->attrs[i].type = type;
            return &n->attrs[i];
        }
    n->attrs = xrealloc(n->attrs, sizeof *n->attrs * (n->nattrs + 1));
    struct qt_attr *a = &n->attrs[n->nattrs++];
    memset(a, 0, sizeof *a);
    a->name = xstrdup(name);
    a->type = type;
    return a;
}

void qt_node_copy_attrs(struct qt_node *dst, const struct qt_node *src)
{
    for (int i = 0; i < src->nattrs; i++) {
        const struct qt_attr *a = &src->attrs[i];
        struct qt_attr *b = qt_node_add_attr(dst, a->name, a->type);
        b->i = a->i;
        b->f = a->f;
        b->n = a->n;
        if (a->s) b->s = xstrdup(a->s);
        if (a->ints) {
            b->ints = xrealloc(NULL, sizeof(int64_t) * (a->n ? a->n : 1));
            memcpy(b->ints, a->ints, sizeof(int64_t) * a->n);
        }
        if (a->floats) {
            b->floats = xrealloc(NULL, sizeof(float) * (a->n ? a->n : 1));
            memcpy(b->floats, a->floats, sizeof(float) * a->n);
        }
        if (a->strings) {
            b->strings = xrealloc(NULL, sizeof(char *) * (a->n ? a->n : 1));
            for (int k = 0; k < a->n; k++) b->strings[k] = xstrdup(a->strings[k]);
        }
        if (a->t) b->t = qt_tensor_clone(a->t);
    }
}

void qt_node_set_int(struct qt_node *n, const char *name, int64_t v)
{
    qt_node_add_attr(n, name, QT_ATTR_INT)->i = v;
}

void qt_node_set_float(struct qt_node *n, const char *name, float v)
{
    qt_node_add_attr(n, name, QT_ATTR_FLOAT)->f = v;
}

void qt_node_set_ints(struct qt_node *n, const char *name, const int64_t *v, int count)
{
    struct qt_attr *a = qt_node_add_attr(n, name, QT_ATTR_INTS);
    a->ints = xrealloc(NULL, sizeof *v * (count ? count : 1));
    if (count) memcpy(a->ints, v, sizeof *v * count);
    a->n = count;
}

void qt_node_set_string(struct qt_node *n, const char *name, const char *v)
{
    qt_node_add_attr(n, name, QT_ATTR_STRING)->s = xstrdup(v);
}

const struct qt_attr *qt_node_attr(const struct qt_node *n, const char *name)
{
    for (int i = 0; i < n->nattrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0) return &n->attrs[i];
    return NULL;
}

int64_t qt_node_int(const struct qt_node *n, const char *name, int64_t dflt)
{
    const struct qt_attr *a = qt_node_attr(n, name);
    return a && a->type == QT_ATTR_INT ? a->i : dflt;
}

float qt_node_float(const struct qt_node *n, const char *name, float dflt)
{
    const struct qt_attr *a = qt_node_attr(n, name);
    return a && a->type == QT_ATTR_FLOAT ? a->f : dflt;
}

const char *qt_node_string(const struct qt_node *n, const char *name, const char *dflt)
{
    const struct qt_attr *a = qt_node_attr(n, name);
    return a && a->type == QT_ATTR_STRING ? a->s : dflt;
}

int qt_node_ints(const struct qt_node *n, const char *name, int64_t *out, int max)
{
    const struct qt_attr *a = qt_node_attr(n, name);
    if (!a || a->type != QT_ATTR_INTS) return -1;
    for (int i = 0; i < a->n && i < max; i++) out[i] = a->ints[i];
    return a->n;
}

const char *qt_graph_meta(const struct qt_graph *g, const char *key)
{
    for (int i = 0; i < g->nmeta; i++)
        if (strcmp(g->meta[i].key, key) == 0) return g->meta[i].value;
    return NULL;
}

void qt_graph_set_meta(struct qt_graph *g, const char *key, const char *value)
{
    for (int i = 0; i < g->nmeta; i++)
        if (strcmp(g->meta[i].key, key) == 0) {
            free(g->meta[i].value);
            g->meta[i].value = xstrdup(value);
            return;
        }
    g->meta = xrealloc(g->meta, sizeof *g->meta * (g->nmeta + 1));
    g->meta[g->nmeta].key = xstrdup(key);
    g->meta[g->nmeta].value = xstrdup(value);
    g->nmeta++;
}

void qt_graph_replace_uses(struct qt_graph *g, int from, int to)
{
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] == from) n->in[k] = to;
    }
    for (int k = 0; k < g->noutputs; k++)
        if (g->outputs[k] == from) g->outputs[k] = to;
}

int qt_graph_use_count(const struct qt_graph *g, int v)
{
    int c = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++) c += n->in[k] == v;
    }
    return c;
}

int qt_graph_first_consumer(const struct qt_graph *g, int v)
{
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] == v) return i;
    }
    return -1;
}

const char *qt_node_desc(const struct qt_graph *g, const struct qt_node *n, char *buf, size_t len)
{
    (void)g;
    snprintf(buf, len, "%s node '%s'", qt_op_name(n->op), n->name);
    return buf;
}

int qt_graph_compact(struct qt_graph *g, struct qt_error *e)
{
    /* 1. Drop dead nodes. */
    int nn = 0;
    for (int i = 0; i < g->nnodes; i++) {
        if (g->nodes[i].dead) {
            node_free(&g->nodes[i]);
            continue;
        }
        g->nodes[nn++] = g->nodes[i];
    }
    g->nnodes = nn;

    /* 2. Remove nodes whose outputs nobody uses (repeat until stable). */
    char *used = calloc(g->nvalues + 1, 1);
    for (int changed = 1; changed;) {
        changed = 0;
        memset(used, 0, g->nvalues);
        for (int k = 0; k < g->noutputs; k++) used[g->outputs[k]] = 1;
        for (int i = 0; i < g->nnodes; i++)
            for (int k = 0; k < g->nodes[i].nin; k++)
                if (g->nodes[i].in[k] >= 0) used[g->nodes[i].in[k]] = 1;
        nn = 0;
        for (int i = 0; i < g->nnodes; i++) {
            struct qt_node *n = &g->nodes[i];
            int any = 0;
            for (int k = 0; k < n->nout; k++) any |= n->out[k] >= 0 && used[n->out[k]];
            if (!any) {
                node_free(n);
                changed = 1;
                continue;
            }
            g->nodes[nn++] = *n;
        }
        g->nnodes = nn;
    }

    /* 3. Renumber values: keep those used, produced, or graph ports. */
    int *map = malloc(sizeof(int) * (g->nvalues + 1));
    memset(used, 0, g->nvalues);
    for (int k = 0; k < g->noutputs; k++) used[g->outputs[k]] = 1;
    for (int k = 0; k < g->ninputs; k++) used[g->inputs[k]] = 1;
    for (int i = 0; i < g->nnodes; i++) {
        for (int k = 0; k < g->nodes[i].nin; k++)
            if (g->nodes[i].in[k] >= 0) used[g->nodes[i].in[k]] = 1;
        for (int k = 0; k < g->nodes[i].nout; k++)
            if (g->nodes[i].out[k] >= 0) used[g->nodes[i].out[k]] = 1;
    }
    int nv = 0;
    for (int i = 0; i < g->nvalues; i++) {
        if (!used[i] || g->values[i].dead) {
            free(g->values[i].name);
            qt_tensor_free(g->values[i].init);
            map[i] = -1;
            continue;
        }
        map[i] = nv;
        g->values[nv++] = g->values[i];
    }
    g->nvalues = nv;
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] >= 0) n->in[k] = map[n->in[k]];
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0) n->out[k] = map[n->out[k]];
    }
    for (int k = 0; k < g->ninputs; k++) g->inputs[k] = map[g->inputs[k]];
    for (int k = 0; k < g->noutputs; k++) g->outputs[k] = map[g->outputs[k]];
    free(map);
    free(used);

    /* 4. Producers, then a topological sort (Kahn's algorithm, stable). */
    for (int i = 0; i < g->nvalues; i++) g->values[i].producer = -1;
    for (int i = 0; i < g->nnodes; i++)
        for (int k = 0; k < g->nodes[i].nout; k++) {
            int v = g->nodes[i].out[k];
            if (v < 0) continue;
            if (g->values[v].producer >= 0)
                return qt_err(e, "value '%s' is produced by two nodes ('%s' and '%s')",
                              g->values[v].name, g->nodes[g->values[v].producer].name,
                              g->nodes[i].name);
            g->values[v].producer = i;
        }
    int *indeg = calloc(g->nnodes + 1, sizeof(int));
    int *order = malloc(sizeof(int) * (g->nnodes + 1));
    char *done = calloc(g->nnodes + 1, 1);
    for (int i = 0; i < g->nnodes; i++)
        for (int k = 0; k < g->nodes[i].nin; k++) {
            int v = g->nodes[i].in[k];
            if (v >= 0 && g->values[v].producer >= 0) indeg[i]++;
        }
    int no = 0;
    for (int progress = 1; progress && no < g->nnodes;) {
        progress = 0;
        for (int i = 0; i < g->nnodes; i++) {
            if (done[i] || indeg[i]) continue;
            done[i] = 1;
            order[no++] = i;
            progress = 1;
            for (int k = 0; k < g->nodes[i].nout; k++) {
                int v = g->nodes[i].out[k];
                if (v < 0) continue;
                for (int j = 0; j < g->nnodes; j++)
                    for (int m = 0; m < g->nodes[j].nin; m++)
                        if (g->nodes[j].in[m] == v) indeg[j]--;
            }
        }
    }
    int rc = 0;
    if (no < g->nnodes) {
        for (int i = 0; i < g->nnodes; i++)
            if (!done[i]) {
                rc = qt_err(e, "the graph has a cycle through node '%s'", g->nodes[i].name);
                break;
            }
    } else {
        struct qt_node *sorted = malloc(sizeof *sorted * (g->nnodes + 1));
        for (int i = 0; i < no; i++) sorted[i] = g->nodes[order[i]];
        if (no) memcpy(g->nodes, sorted, sizeof *sorted * no); /* nodes is NULL when none */
        free(sorted);
        for (int i = 0; i < g->nnodes; i++)
            for (int k = 0; k < g->nodes[i].nout; k++)
                if (g->nodes[i].out[k] >= 0) g->values[g->nodes[i].out[k]].producer = i;
    }
    free(indeg);
    free(order);
    free(done);
    return rc;
}
