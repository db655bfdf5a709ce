/* ONNX export: a qtune graph back into a ModelProto that onnx.checker and onnxruntime accept.
 * Protobuf structures point into the graph's memory; nothing is copied twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.h"
#include "../graph/schema.h"
#include "../util/fileio.h"
#include "../util/version.h"
#include "tensor_proto.h"

/* All allocations made for one save, freed together. */
struct arena {
    void **ptr;
    size_t n, cap;
};

static void *arena_alloc(struct arena *a, size_t size)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->ptr = realloc(a->ptr, sizeof *a->ptr * a->cap);
        if (!a->ptr) abort();
    }
    void *p = calloc(1, size ? size : 1);
    if (!p) abort();
    a->ptr[a->n++] = p;
    return p;
}

static void arena_free(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++) free(a->ptr[i]);
    free(a->ptr);
}

static Onnx__ValueInfoProto *value_info(struct arena *ar, const struct qt_graph *g,
                                        const struct qt_value *v)
{
    Onnx__ValueInfoProto *vi = arena_alloc(ar, sizeof *vi);
    onnx__value_info_proto__init(vi);
    vi->name = v->name;
    if (v->dtype == QT_UNDEF) return vi;
    Onnx__TypeProto *tp = arena_alloc(ar, sizeof *tp);
    onnx__type_proto__init(tp);
    Onnx__TypeProto__Tensor *tt = arena_alloc(ar, sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = v->dtype;
    if (v->has_shape) {
        Onnx__TensorShapeProto *sp = arena_alloc(ar, sizeof *sp);
        onnx__tensor_shape_proto__init(sp);
        sp->n_dim = v->shape.ndim;
        sp->dim = arena_alloc(ar, sizeof *sp->dim * (v->shape.ndim + 1));
        for (int i = 0; i < v->shape.ndim; i++) {
            Onnx__TensorShapeProto__Dimension *d = arena_alloc(ar, sizeof *d);
            onnx__tensor_shape_proto__dimension__init(d);
            int64_t x = v->shape.d[i];
            if (x >= 0) {
                d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
                d->dim_value = x;
            } else if (-x - 1 < g->nsyms) {
                d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
                d->dim_param = g->syms[-x - 1];
            }
            sp->dim[i] = d;
        }
        tt->shape = sp;
    }
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    vi->type = tp;
    return vi;
}

static Onnx__AttributeProto *attr_proto(struct arena *ar, const struct qt_attr *a)
{
    Onnx__AttributeProto *ap = arena_alloc(ar, sizeof *ap);
    onnx__attribute_proto__init(ap);
    ap->name = a->name;
    ap->has_type = 1;
    switch (a->type) {
    case QT_ATTR_FLOAT:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
        ap->has_f = 1;
        ap->f = a->f;
        break;
    case QT_ATTR_INT:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
        ap->has_i = 1;
        ap->i = a->i;
        break;
    case QT_ATTR_STRING:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
        ap->has_s = 1;
        ap->s.data = (uint8_t *)a->s;
        ap->s.len = strlen(a->s);
        break;
    case QT_ATTR_INTS:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
        ap->n_ints = a->n;
        ap->ints = a->ints;
        break;
    case QT_ATTR_FLOATS:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
        ap->n_floats = a->n;
        ap->floats = a->floats;
        break;
    case QT_ATTR_STRINGS:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS;
        ap->n_strings = a->n;
        ap->strings = arena_alloc(ar, sizeof *ap->strings * (a->n + 1));
        for (int i = 0; i < a->n; i++) {
            ap->strings[i].data = (uint8_t *)a->strings[i];
            ap->strings[i].len = strlen(a->strings[i]);
        }
        break;
    case QT_ATTR_TENSOR:
        ap->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
        ap->t = arena_alloc(ar, sizeof *ap->t);
        qt_tensor_to_proto(ap->t, a->t, "");
        break;
    }
    return ap;
}

int qt_onnx_serialize(const struct qt_graph *g, uint8_t **out, size_t *out_len, struct qt_error *e)
{
    struct arena ar = {0};
    Onnx__ModelProto mp;
    onnx__model_proto__init(&mp);
    mp.has_ir_version = 1;
    mp.ir_version = g->ir_version >= 7 ? g->ir_version : 7;
    mp.producer_name = "qtune";
    mp.producer_version = QT_VERSION;

    Onnx__OperatorSetIdProto os;
    onnx__operator_set_id_proto__init(&os);
    os.domain = "";
    os.has_version = 1;
    os.version = g->opset;
    Onnx__OperatorSetIdProto osq;
    onnx__operator_set_id_proto__init(&osq);
    osq.domain = QT_DOMAIN;
    osq.has_version = 1;
    osq.version = QT_DOMAIN_VERSION;
    Onnx__OperatorSetIdProto *osp[2] = {&os, &osq};
    mp.n_opset_import = 1;
    for (int i = 0; i < g->nnodes; i++)
        if (strcmp(g->nodes[i].domain, QT_DOMAIN) == 0) mp.n_opset_import = 2;
    mp.opset_import = osp;

    mp.n_metadata_props = g->nmeta;
    mp.metadata_props = arena_alloc(&ar, sizeof *mp.metadata_props * (g->nmeta + 1));
    for (int i = 0; i < g->nmeta; i++) {
        Onnx__StringStringEntryProto *kv = arena_alloc(&ar, sizeof *kv);
        onnx__string_string_entry_proto__init(kv);
        kv->key = g->meta[i].key;
        kv->value = g->meta[i].value;
        mp.metadata_props[i] = kv;
    }

    Onnx__GraphProto gp;
    onnx__graph_proto__init(&gp);
    gp.name = g->name;
    mp.graph = &gp;

    gp.n_input = g->ninputs;
    gp.input = arena_alloc(&ar, sizeof *gp.input * (g->ninputs + 1));
    for (int i = 0; i < g->ninputs; i++) gp.input[i] = value_info(&ar, g, &g->values[g->inputs[i]]);
    gp.n_output = g->noutputs;
    gp.output = arena_alloc(&ar, sizeof *gp.output * (g->noutputs + 1));
    for (int i = 0; i < g->noutputs; i++)
        gp.output[i] = value_info(&ar, g, &g->values[g->outputs[i]]);

    int ninit = 0;
    for (int i = 0; i < g->nvalues; i++) ninit += g->values[i].init != NULL;
    gp.initializer = arena_alloc(&ar, sizeof *gp.initializer * (ninit + 1));
    for (int i = 0; i < g->nvalues; i++) {
        const struct qt_value *v = &g->values[i];
        if (!v->init) continue;
        Onnx__TensorProto *tp = arena_alloc(&ar, sizeof *tp);
        qt_tensor_to_proto(tp, v->init, v->name);
        gp.initializer[gp.n_initializer++] = tp;
    }

    gp.node = arena_alloc(&ar, sizeof *gp.node * (g->nnodes + 1));
    gp.n_node = g->nnodes;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        Onnx__NodeProto *np = arena_alloc(&ar, sizeof *np);
        onnx__node_proto__init(np);
        np->name = n->name;
        np->op_type = (char *)qt_op_name(n->op);
        np->domain = n->domain;
        np->n_input = n->nin;
        np->input = arena_alloc(&ar, sizeof(char *) * (n->nin + 1));
        for (int k = 0; k < n->nin; k++) np->input[k] = n->in[k] >= 0 ? g->values[n->in[k]].name : "";
        np->n_output = n->nout;
        np->output = arena_alloc(&ar, sizeof(char *) * (n->nout + 1));
        for (int k = 0; k < n->nout; k++)
            np->output[k] = n->out[k] >= 0 ? g->values[n->out[k]].name : "";
        np->n_attribute = n->nattrs;
        np->attribute = arena_alloc(&ar, sizeof *np->attribute * (n->nattrs + 1));
        for (int k = 0; k < n->nattrs; k++) np->attribute[k] = attr_proto(&ar, &n->attrs[k]);
        gp.node[i] = np;
    }

    size_t len = onnx__model_proto__get_packed_size(&mp);
    uint8_t *buf = malloc(len ? len : 1);
    int rc = 0;
    if (!buf) {
        rc = qt_err(e, "out of memory serializing the model (%zu bytes)", len);
        goto done;
    }
    onnx__model_proto__pack(&mp, buf);
    *out = buf;
    *out_len = len;
done:
    arena_free(&ar);
    return rc;
}

int qt_onnx_save(const struct qt_graph *g, const char *path, struct qt_error *e)
{
    uint8_t *buf;
    size_t len;
    if (qt_onnx_serialize(g, &buf, &len, e)) return -1;
    int rc = qt_write_file_atomic(path, buf, len, e);
    free(buf);
    return rc;
}
