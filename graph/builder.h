/* Graph builder: helpers that append layers (initializers, Conv, BatchNormalization, Relu,
 * Add, pools, Flatten, Gemm) to an IR graph with generated unique names, and the ResNet
 * models that `qtune init` creates from scratch. */
#ifndef QT_BUILDER_H
#define QT_BUILDER_H

#include <stdint.h>

#include "graph.h"

/* Layer helpers. `name` is the layer's scope: parameters are named "<name>.weight",
 * "<name>.bias", "<name>.running_mean", "<name>.running_var" (PyTorch's state_dict names
 * when the scope is the module path), the node is named `name` and its output
 * "<name>_out"; a suffix "_1", "_2", ... is appended to any name already taken.
 * Each helper reads its input's stored shape, infers the new node's output shape and
 * returns the output value's index, or -1 with a message naming the layer. */

/* Adds a graph input fed at run time. */
int qt_builder_input(struct qt_graph *g, const char *name, enum qt_dtype dtype,
                     const struct qt_shape *shape);
/* Marks value v as a graph output, renaming it to `name` when name is not NULL (fails when
 * another value already has that name). */
int qt_builder_output(struct qt_graph *g, int v, const char *name, struct qt_error *e);
/* Adds a zero-filled initializer whose name starts with `base`; flags are QT_V_PARAM or
 * QT_V_STATE (or 0 for a constant). */
int qt_builder_initializer(struct qt_graph *g, const char *base, enum qt_dtype dtype,
                           const struct qt_shape *shape, int flags);

/* Square k x k convolution, stride s, symmetric padding pad, zero weight [cout, cin, k, k]
 * (and zero bias [cout] when bias is set). */
int qt_builder_conv(struct qt_graph *g, const char *name, int x, int64_t cout, int k, int s,
                    int pad, int bias, struct qt_error *e);
/* BatchNormalization with PyTorch's defaults: scale 1, bias 0, running mean 0, running
 * variance 1, epsilon 1e-5, ONNX momentum 0.9 (PyTorch's 0.1). */
int qt_builder_batchnorm(struct qt_graph *g, const char *name, int x, struct qt_error *e);
int qt_builder_relu(struct qt_graph *g, const char *name, int x, struct qt_error *e);
int qt_builder_add(struct qt_graph *g, const char *name, int a, int b, struct qt_error *e);
/* Square k x k window, stride s, symmetric padding pad. */
int qt_builder_maxpool(struct qt_graph *g, const char *name, int x, int k, int s, int pad,
                       struct qt_error *e);
int qt_builder_avgpool(struct qt_graph *g, const char *name, int x, int k, int s, int pad,
                       struct qt_error *e);
int qt_builder_global_avgpool(struct qt_graph *g, const char *name, int x, struct qt_error *e);
/* Flatten with axis 1: [N, C, H, W] -> [N, C*H*W]. */
int qt_builder_flatten(struct qt_graph *g, const char *name, int x, struct qt_error *e);
/* Fully connected layer y = x W^T + b (Gemm, transB=1): zero weight [nout, nin], bias [nout]. */
int qt_builder_gemm(struct qt_graph *g, const char *name, int x, int64_t nout,
                    struct qt_error *e);

/* Builds an FP32 ResNet for c x h x w inputs and `classes` outputs: graph input "input"
 * [N, c, h, w] with symbolic batch N, output "logits" [N, classes], metadata qtune.arch.
 * arch: "resnet20", "resnet32", "resnet56" (CIFAR ResNets: 3x3 conv 16 stem, three stages
 * of 3/5/9 BasicBlocks with 16/32/64 channels, 1x1 conv + BN shortcut where the shape
 * changes) or "resnet18" (torchvision's layout; for h or w below 64 the stem is a 3x3
 * stride-1 conv without max pooling). h and w must be at least 8.
 * Weights are drawn from a generator seeded by `seed` only:
 *   CIFAR ResNets: conv weights normal(0, sqrt(2 / fan_in)), fan_in = cin*k*k;
 *   resnet18:      conv weights normal(0, sqrt(2 / fan_out)), fan_out = cout*k*k;
 *   both: BatchNorm scale 1, bias 0, running mean 0, variance 1; fc weight and bias
 *   uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
 * Parameters are named as in the PyTorch models (conv1.weight, layer2.0.downsample.0.weight,
 * fc.bias, ...). The graph is compacted, verified and shape-inferred before it is returned. */
int qt_build_resnet(struct qt_graph **out, const char *arch, int c, int h, int w, int classes,
                    uint64_t seed, struct qt_error *e);

/* Names accepted by qt_build_resnet, separated by '|', for help and error messages. */
#define QT_BUILD_RESNET_ARCHS "resnet20|resnet32|resnet56|resnet18"

#endif
