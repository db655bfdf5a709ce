/* TensorProto decoding and encoding: every data encoding exporters use (typed fields,
 * raw_data, external data files) into a qtune tensor, and back as raw_data. */
#include "tensor_proto.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_external(struct qt_tensor *t, const Onnx__TensorProto *tp, const char *base_dir,
                         const char *tname, struct qt_error *e)
{
    const char *loc = NULL;
    int64_t offset = 0, length = -1;
    for (size_t i = 0; i < tp->n_external_data; i++) {
        const Onnx__StringStringEntryProto *kv = tp->external_data[i];
        if (!kv->key || !kv->value) continue;
        if (strcmp(kv->key, "location") == 0) loc = kv->value;
        else if (strcmp(kv->key, "offset") == 0) offset = strtoll(kv->value, NULL, 10);
        else if (strcmp(kv->key, "length") == 0) length = strtoll(kv->value, NULL, 10);
    }
    if (!loc || !*loc) return qt_err(e, "tensor '%s': external data without a location", tname);
    if (loc[0] == '/' || strstr(loc, ".."))
        return qt_err(e, "tensor '%s': external data location '%s' must be a relative path inside "
                         "the model's folder", tname, loc);
    if (offset < 0) return qt_err(e, "tensor '%s': negative external data offset", tname);
    if (length >= 0 && (size_t)length != t->nbytes)
        return qt_err(e, "tensor '%s': external data length %" PRId64 " but the shape needs %zu bytes",
                      tname, length, t->nbytes);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", base_dir && *base_dir ? base_dir : ".", loc);
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err(e, "tensor '%s': cannot open external data file '%s'", tname, path);
    int rc = 0;
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0 || fread(t->data, 1, t->nbytes, f) != t->nbytes)
        rc = qt_err(e, "tensor '%s': external data file '%s' is shorter than offset %" PRId64
                       " + %zu bytes", tname, path, offset, t->nbytes);
    fclose(f);
    return rc;
}

struct qt_tensor *qt_tensor_from_proto(const Onnx__TensorProto *tp, const char *base_dir,
                                       struct qt_error *e)
{
    const char *tname = tp->name && *tp->name ? tp->name : "(unnamed)";
    enum qt_dtype dt = (enum qt_dtype)tp->data_type;
    size_t es = qt_dtype_size(dt);
    if (!es) {
        qt_err(e, "tensor '%s': data type %s (%d) is not supported", tname, qt_dtype_name(dt),
               (int)tp->data_type);
        return NULL;
    }
    if (tp->n_dims > QT_MAX_DIMS) {
        qt_err(e, "tensor '%s': rank %zu is more than %d", tname, tp->n_dims, QT_MAX_DIMS);
        return NULL;
    }
    struct qt_shape s = {(int)tp->n_dims, {0}};
    int64_t numel = 1;
    for (size_t i = 0; i < tp->n_dims; i++) {
        if (tp->dims[i] < 0 || (tp->dims[i] > 0 && numel > (INT64_MAX / 16) / tp->dims[i])) {
            qt_err(e, "tensor '%s': invalid dimension %" PRId64, tname, tp->dims[i]);
            return NULL;
        }
        s.d[i] = tp->dims[i];
        numel *= tp->dims[i];
    }
    if ((uint64_t)numel * es > ((uint64_t)1 << 36)) {
        qt_err(e, "tensor '%s': %" PRId64 " elements is implausibly large", tname, numel);
        return NULL;
    }
    size_t declared_external = tp->has_data_location &&
                               tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    if (!declared_external) {
        /* Cheap plausibility check before allocating: the data must be there. */
        size_t have = tp->has_raw_data ? tp->raw_data.len
                      : tp->n_float_data ? tp->n_float_data * es
                      : tp->n_int32_data ? tp->n_int32_data * es
                      : tp->n_int64_data ? tp->n_int64_data * es
                      : tp->n_double_data ? tp->n_double_data * es
                      : tp->n_uint64_data ? tp->n_uint64_data * es : 0;
        if (have != (size_t)numel * es) {
            qt_err(e, "tensor '%s': holds %zu bytes of %s data but its shape needs %zu", tname, have,
                   qt_dtype_name(dt), (size_t)numel * es);
            return NULL;
        }
    }
    struct qt_tensor *t = qt_tensor_new(dt, &s);
    size_t n = (size_t)numel;
    if (declared_external) {
        if (read_external(t, tp, base_dir, tname, e)) goto fail;
    } else if (tp->has_raw_data) {
        if (t->nbytes) memcpy(t->data, tp->raw_data.data, t->nbytes);
    } else if (tp->n_float_data) {
        if (dt != QT_F32) goto mismatch;
        memcpy(t->data, tp->float_data, t->nbytes);
    } else if (tp->n_int32_data) {
        for (size_t i = 0; i < n; i++) {
            int32_t v = tp->int32_data[i];
            switch (dt) {
            case QT_I32: ((int32_t *)t->data)[i] = v; break;
            case QT_I16: ((int16_t *)t->data)[i] = (int16_t)v; break;
            case QT_U16: case QT_F16: ((uint16_t *)t->data)[i] = (uint16_t)v; break;
            case QT_I8: ((int8_t *)t->data)[i] = (int8_t)v; break;
            case QT_U8: case QT_BOOL: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
            default: goto mismatch;
            }
        }
    } else if (tp->n_int64_data) {
        if (dt != QT_I64) goto mismatch;
        memcpy(t->data, tp->int64_data, t->nbytes);
    } else if (tp->n_double_data) {
        if (dt != QT_F64) goto mismatch;
        memcpy(t->data, tp->double_data, t->nbytes);
    } else if (tp->n_uint64_data) {
        if (dt == QT_U64) memcpy(t->data, tp->uint64_data, t->nbytes);
        else if (dt == QT_U32)
            for (size_t i = 0; i < n; i++) ((uint32_t *)t->data)[i] = (uint32_t)tp->uint64_data[i];
        else goto mismatch;
    }
    return t;
mismatch:
    qt_err(e, "tensor '%s': its data field does not match its type %s", tname, qt_dtype_name(dt));
fail:
    qt_tensor_free(t);
    return NULL;
}

void qt_tensor_to_proto(Onnx__TensorProto *tp, const struct qt_tensor *t, const char *name)
{
    onnx__tensor_proto__init(tp);
    tp->name = (char *)name;
    tp->has_data_type = 1;
    tp->data_type = t->dtype;
    tp->n_dims = t->shape.ndim;
    tp->dims = (int64_t *)t->shape.d;
    tp->has_raw_data = 1;
    tp->raw_data.len = t->nbytes;
    tp->raw_data.data = t->data;
}
