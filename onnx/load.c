/* ONNX import: a serialized ModelProto into a qtune graph, with every unsupported feature
 * (op, opset, data type, subgraph) reported by name. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../graph/schema.h"
#include "onnx.h"
#include "tensor_proto.h"

static int read_file(const char *path, uint8_t **buf, size_t *len, struct qt_error *e)
{
    struct stat st;
    if (stat(path, &st) != 0) return qt_err(e, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return qt_err(e, "'%s' is a folder, not an ONNX file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err(e, "cannot open '%s': %s", path, strerror(errno));
    size_t n = (size_t)st.st_size;
    *buf = malloc(n ? n : 1);
    if (!*buf) {
        fclose(f);
        return qt_err(e, "'%s': out of memory reading %zu bytes", path, n);
    }
    size_t got = fread(*buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(*buf);
        return qt_err(e, "'%s': read %zu of its %zu bytes (did it change while it was read?)", path,
                      got, n);
    }
    *len = n;
    return 0;
}

/* Index of the first NaN in a floating-point tensor, or -1. Infinities are accepted: ONNX uses
 * them as constants (a Pad of -inf before MaxPool, Clip bounds), while a NaN constant is never
 * meaningful in the graphs qtune reads and would only poison every result downstream. */
static int64_t first_nan(const struct qt_tensor *t)
{
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++) {
        int nan = 0;
        if (t->dtype == QT_F32)
            nan = isnan(((const float *)t->data)[i]);
        else if (t->dtype == QT_F64)
            nan = isnan(((const double *)t->data)[i]);
        else if (t->dtype == QT_F16) {
            uint16_t h = ((const uint16_t *)t->data)[i];
            nan = (h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0;
        }
        if (nan) return i;
    }
    return -1;
}

static int set_shape_from_type(struct qt_graph *g, struct qt_value *v, const Onnx__TypeProto *tp,
                               struct qt_error *e)
{
    if (!tp) return 0;
    if (tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return qt_err(e, "value '%s': only tensor types are supported", v->name);
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    if (tt->has_elem_type) v->dtype = (enum qt_dtype)tt->elem_type;
    if (!tt->shape) return 0;
    if (tt->shape->n_dim > QT_MAX_DIMS)
        return qt_err(e, "value '%s': rank %zu is more than %d", v->name, tt->shape->n_dim, QT_MAX_DIMS);
    v->shape.ndim = (int)tt->shape->n_dim;
    for (size_t i = 0; i < tt->shape->n_dim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE && d->dim_value >= 0)
            v->shape.d[i] = d->dim_value;
        else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                 d->dim_param && *d->dim_param)
            v->shape.d[i] = qt_graph_sym(g, d->dim_param);
        else
            v->shape.d[i] = QT_DIM_ANY;
    }
    v->has_shape = 1;
    return 0;
}

static int convert_attr(struct qt_node *n, const Onnx__AttributeProto *ap, const char *base_dir,
                        struct qt_error *e)
{
    const char *name = ap->name ? ap->name : "";
    if (ap->ref_attr_name && *ap->ref_attr_name)
        return qt_err(e, "node '%s': attribute '%s' refers to a function attribute", n->name, name);
    switch (ap->type) {
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: qt_node_set_float(n, name, ap->f); break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: qt_node_set_int(n, name, ap->i); break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING: {
        struct qt_attr *a = qt_node_add_attr(n, name, QT_ATTR_STRING);
        a->s = malloc(ap->s.len + 1);
        if (ap->s.len) memcpy(a->s, ap->s.data, ap->s.len);
        a->s[ap->s.len] = 0;
        break;
    }
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
        if (ap->n_ints > (1u << 20)) return qt_err(e, "node '%s': attribute '%s' is too long", n->name, name);
        qt_node_set_ints(n, name, ap->ints, (int)ap->n_ints);
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS: {
        if (ap->n_floats > (1u << 20)) return qt_err(e, "node '%s': attribute '%s' is too long", n->name, name);
        struct qt_attr *a = qt_node_add_attr(n, name, QT_ATTR_FLOATS);
        a->floats = malloc(sizeof(float) * (ap->n_floats + 1));
        if (ap->n_floats) memcpy(a->floats, ap->floats, sizeof(float) * ap->n_floats);
        a->n = (int)ap->n_floats;
        break;
    }
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS: {
        struct qt_attr *a = qt_node_add_attr(n, name, QT_ATTR_STRINGS);
        a->strings = calloc(ap->n_strings + 1, sizeof(char *));
        for (size_t i = 0; i < ap->n_strings; i++) {
            a->strings[i] = malloc(ap->strings[i].len + 1);
            if (ap->strings[i].len) memcpy(a->strings[i], ap->strings[i].data, ap->strings[i].len);
            a->strings[i][ap->strings[i].len] = 0;
        }
        a->n = (int)ap->n_strings;
        break;
    }
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR: {
        if (!ap->t) return qt_err(e, "node '%s': tensor attribute '%s' has no tensor", n->name, name);
        struct qt_tensor *t = qt_tensor_from_proto(ap->t, base_dir, e);
        if (!t) return qt_err_prefix(e, "node '%s', attribute '%s': ", n->name, name);
        int64_t bad = first_nan(t);
        if (bad >= 0) {
            qt_tensor_free(t);
            return qt_err(e,
                          "node '%s': tensor attribute '%s' holds NaN (element %" PRId64
                          "); constants must be numbers",
                          n->name, name, bad);
        }
        qt_node_add_attr(n, name, QT_ATTR_TENSOR)->t = t;
        break;
    }
    default:
        return qt_err(e, "node '%s': attribute '%s' has a type qtune does not support (graphs, "
                         "sparse tensors, type protos)", n->name, name);
    }
    return 0;
}

static int convert_graph(struct qt_graph *g, const Onnx__GraphProto *gp, const char *base_dir,
                         struct qt_error *e)
{
    free(g->name);
    g->name = strdup(gp->name && *gp->name ? gp->name : "graph");
    for (size_t i = 0; i < gp->n_initializer; i++) {
        const Onnx__TensorProto *tp = gp->initializer[i];
        if (!tp->name || !*tp->name) return qt_err(e, "initializer %zu has no name", i);
        if (qt_graph_find_value(g, tp->name) >= 0)
            return qt_err(e, "initializer '%s' is defined twice", tp->name);
        struct qt_tensor *t = qt_tensor_from_proto(tp, base_dir, e);
        if (!t) return qt_err_prefix(e, "initializer: ");
        int64_t bad = first_nan(t);
        if (bad >= 0) {
            int64_t numel = qt_shape_numel(&t->shape);
            qt_tensor_free(t);
            return qt_err(e,
                          "initializer '%s' holds NaN (element %" PRId64 " of %" PRId64
                          "); a model's weights and constants must be numbers",
                          tp->name, bad, numel);
        }
        int v = qt_graph_add_value(g, tp->name, t->dtype, &t->shape);
        g->values[v].init = t;
    }
    if (gp->n_sparse_initializer)
        return qt_err(e, "sparse initializers are not supported");
    g->inputs = malloc(sizeof(int) * (gp->n_input + 1));
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (!vi->name || !*vi->name) return qt_err(e, "graph input %zu has no name", i);
        int v = qt_graph_find_value(g, vi->name);
        if (v >= 0 && g->values[v].init) continue; /* old-style: initializers listed as inputs */
        if (v >= 0) return qt_err(e, "graph input '%s' is listed twice", vi->name);
        v = qt_graph_add_value(g, vi->name, QT_UNDEF, NULL);
        if (set_shape_from_type(g, &g->values[v], vi->type, e)) return -1;
        if (!g->values[v].has_shape)
            return qt_err(e, "graph input '%s' has no shape; qtune needs the input's rank and sizes",
                          vi->name);
        g->values[v].flags |= QT_V_INPUT;
        g->inputs[g->ninputs++] = v;
    }
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *np = gp->node[i];
        char nname[64];
        const char *name = np->name && *np->name ? np->name : NULL;
        if (!name) {
            snprintf(nname, sizeof nname, "%s_%zu", np->op_type ? np->op_type : "node", i);
            name = nname;
        }
        const char *dom = np->domain ? np->domain : "";
        enum qt_op op = qt_schema_lookup(dom, np->op_type ? np->op_type : "");
        if (op == QT_OP_INVALID)
            return qt_err(e, "unsupported op '%s%s%s' at node '%s' (opset %" PRId64 "); qtune supports "
                             "the ops of convolutional networks (Conv, BatchNormalization, Relu, "
                             "pools, Gemm, ...)",
                          *dom ? dom : "", *dom ? "." : "", np->op_type ? np->op_type : "",
                          name, g->opset);
        if (np->n_input > 64 || np->n_output > 8)
            return qt_err(e, "node '%s' has too many inputs or outputs", name);
        int in[64], out[8];
        int nin = (int)np->n_input, nout = (int)np->n_output;
        for (int k = 0; k < nin; k++) {
            const char *s = np->input[k];
            if (!s || !*s) {
                in[k] = -1;
                continue;
            }
            in[k] = qt_graph_find_value(g, s);
            if (in[k] < 0)
                return qt_err(e, "%s node '%s': input '%s' is not defined before it is used",
                              np->op_type, name, s);
        }
        while (nin > 0 && in[nin - 1] < 0) nin--; /* trailing omitted optionals */
        for (int k = 0; k < nout; k++) {
            const char *s = np->output[k];
            if (!s || !*s) {
                out[k] = -1;
                continue;
            }
            int v = qt_graph_find_value(g, s);
            if (v >= 0)
                return qt_err(e, "%s node '%s': output '%s' is already defined", np->op_type, name, s);
            out[k] = qt_graph_add_value(g, s, QT_UNDEF, NULL);
        }
        while (nout > 1 && out[nout - 1] < 0) nout--;
        int ni = qt_graph_add_node(g, op, name, in, nin, out, nout);
        struct qt_node *n = &g->nodes[ni];
        for (size_t a = 0; a < np->n_attribute; a++)
            if (convert_attr(n, np->attribute[a], base_dir, e)) return -1;
    }
    g->outputs = malloc(sizeof(int) * (gp->n_output + 1));
    for (size_t i = 0; i < gp->n_output; i++) {
        const Onnx__ValueInfoProto *vi = gp->output[i];
        int v = vi->name ? qt_graph_find_value(g, vi->name) : -1;
        if (v < 0) return qt_err(e, "graph output '%s' is never produced", vi->name ? vi->name : "");
        g->values[v].flags |= QT_V_OUTPUT;
        g->outputs[g->noutputs++] = v;
    }
    if (!g->noutputs) return qt_err(e, "the graph has no outputs");
    return 0;
}

struct qt_graph *qt_onnx_load_buffer(const void *buf, size_t len, const char *base_dir,
                                     const char *what, struct qt_error *e)
{
    if (len == 0) {
        qt_err(e, "'%s' is empty, not an ONNX model", what);
        return NULL;
    }
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
    if (!mp) {
        qt_err(e, "'%s' is not a valid ONNX model (the protobuf data is truncated or corrupt)", what);
        return NULL;
    }
    struct qt_graph *g = qt_graph_new();
    int rc = 0;
    if (!mp->graph) {
        rc = qt_err(e, "'%s' holds no graph (not an ONNX model?)", what);
        goto done;
    }
    g->ir_version = mp->has_ir_version ? mp->ir_version : 0;
    if (mp->producer_name) g->producer = strdup(mp->producer_name);
    g->opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *os = mp->opset_import[i];
        const char *d = os->domain ? os->domain : "";
        if (!*d || strcmp(d, "ai.onnx") == 0) g->opset = os->version;
        if (strcmp(d, QT_DOMAIN) == 0 && os->version != QT_DOMAIN_VERSION) {
            rc = qt_err(e, "'%s' uses %s opset %" PRId64 "; this qtune reads version %d", what,
                        QT_DOMAIN, (int64_t)os->version, QT_DOMAIN_VERSION);
            goto done;
        }
    }
    if (g->opset < 0) {
        if (mp->n_opset_import) {
            rc = qt_err(e, "'%s' imports no default-domain opset", what);
            goto done;
        }
        g->opset = 1;
    }
    if (g->opset < QT_ONNX_OPSET_MIN || g->opset > QT_ONNX_OPSET_MAX) {
        rc = qt_err(e, "'%s' uses opset %" PRId64 "; qtune reads opsets %d to %d", what, g->opset,
                    QT_ONNX_OPSET_MIN, QT_ONNX_OPSET_MAX);
        goto done;
    }
    for (size_t i = 0; i < mp->n_metadata_props; i++) {
        const Onnx__StringStringEntryProto *kv = mp->metadata_props[i];
        if (kv->key) qt_graph_set_meta(g, kv->key, kv->value ? kv->value : "");
    }
    if (mp->n_functions) {
        rc = qt_err(e, "'%s' defines model-local functions, which qtune does not support", what);
        goto done;
    }
    rc = convert_graph(g, mp->graph, base_dir, e);
    if (rc) {
        qt_err_prefix(e, "'%s': ", what);
        goto done;
    }
    /* value_info shapes for intermediate values (informative; inference recomputes them). */
    for (size_t i = 0; i < mp->graph->n_value_info; i++) {
        const Onnx__ValueInfoProto *vi = mp->graph->value_info[i];
        int v = vi->name ? qt_graph_find_value(g, vi->name) : -1;
        if (v < 0 || g->values[v].init || g->values[v].has_shape) continue;
        struct qt_error ignore;
        set_shape_from_type(g, &g->values[v], vi->type, &ignore);
    }
    if (qt_graph_compact(g, e) || qt_graph_verify(g, e)) {
        qt_err_prefix(e, "'%s': ", what);
        rc = -1;
    }
done:
    onnx__model_proto__free_unpacked(mp, NULL);
    if (rc) {
        qt_graph_free(g);
        return NULL;
    }
    return g;
}

struct qt_graph *qt_onnx_load(const char *path, struct qt_error *e)
{
    uint8_t *buf;
    size_t len;
    if (read_file(path, &buf, &len, e)) return NULL;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    struct qt_graph *g = qt_onnx_load_buffer(buf, len, dir, path, e);
    free(buf);
    return g;
}

struct qt_tensor *qt_onnx_load_tensor(const char *path, char *name, size_t name_len,
                                      struct qt_error *e)
{
    uint8_t *buf;
    size_t len;
    if (read_file(path, &buf, &len, e)) return NULL;
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, len, buf);
    free(buf);
    if (!tp) {
        qt_err(e, "'%s' is not a valid TensorProto", path);
        return NULL;
    }
    if (name && name_len) snprintf(name, name_len, "%s", tp->name ? tp->name : "");
    struct qt_tensor *t = qt_tensor_from_proto(tp, NULL, e);
    onnx__tensor_proto__free_unpacked(tp, NULL);
    if (!t) qt_err_prefix(e, "'%s': ", path);
    return t;
}
