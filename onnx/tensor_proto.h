/* Internal to onnx/: conversions between TensorProto and qtune tensors. */
#ifndef QT_ONNX_TENSOR_PROTO_H
#define QT_ONNX_TENSOR_PROTO_H

#include <onnx/onnx.pb-c.h>

#include "../graph/graph.h"

struct qt_tensor *qt_tensor_from_proto(const Onnx__TensorProto *tp, const char *base_dir,
                                       struct qt_error *e);
/* Fills tp to point into t's memory (no copy); tp must not outlive t. */
void qt_tensor_to_proto(Onnx__TensorProto *tp, const struct qt_tensor *t, const char *name);

#endif
