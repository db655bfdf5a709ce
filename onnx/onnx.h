/* ONNX ModelProto <-> qtune IR. The only module that sees protobuf types. */
#ifndef QT_ONNX_H
#define QT_ONNX_H

#include <stddef.h>
#include <stdint.h>

#include "../graph/graph.h"

/* Lowest and highest default-domain opset qtune reads. */
#define QT_ONNX_OPSET_MIN 1
#define QT_ONNX_OPSET_MAX 21

/* Loads a model file; external data is read relative to the file's folder. */
struct qt_graph *qt_onnx_load(const char *path, struct qt_error *e);
/* Loads from memory; base_dir (may be NULL) resolves external data; `what` names the source
 * in messages. */
struct qt_graph *qt_onnx_load_buffer(const void *buf, size_t len, const char *base_dir,
                                     const char *what, struct qt_error *e);
/* Writes the graph as a ModelProto (initializers as raw_data). Writes to a temporary file
 * and renames it, so a failed save never leaves a truncated model behind. */
int qt_onnx_save(const struct qt_graph *g, const char *path, struct qt_error *e);
/* Serializes the graph as a ModelProto into a malloc'd buffer. */
int qt_onnx_serialize(const struct qt_graph *g, uint8_t **buf, size_t *len, struct qt_error *e);
/* Reads a serialized TensorProto (ONNX test data's input_N.pb / output_N.pb). */
struct qt_tensor *qt_onnx_load_tensor(const char *path, char *name, size_t name_len,
                                      struct qt_error *e);

#endif
