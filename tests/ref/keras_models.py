"""Keras models exported to ONNX by tf2onnx, with TensorFlow's outputs beside them. Runs under
the TensorFlow environment (scripts/deps.sh makes .venv-tf with PyPI's tensorflow-cpu and
tf2onnx), not under the test suite's own Python:

    keras_models.py KIND --opset N --out DIR [--seed S]

KIND is resnet50 or resnet50v2 (keras.applications, weights=None, 64x64x3 input, 10
classes) or small (a CIFAR-style ResNet-20 in Keras layers for 28x28x1 Fashion-MNIST
images). Writes DIR/model.onnx, DIR/x.npy (a batch of inputs, NHWC float32) and DIR/y.npy
(TensorFlow's inference-mode outputs for x: the Softmax probabilities).

BatchNormalization statistics are made realistic first and then randomized: one training-
mode pass with momentum 0 sets every layer's moving mean and variance to the statistics of
its input on a batch, which are then perturbed (mean shifted by up to a fifth of a standard
deviation, variance scaled by 0.6-1.6) and gamma and beta drawn at random, so that no
layer's statistics are the identity an exporter could drop; the classifier is then scaled so
that the logits spread about 2 (no saturated Softmax hides errors)."""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import tf2onnx  # noqa: E402


def small_resnet(input_shape, classes, n=3):
    """ResNet-20 (n=3) of He et al. for small images: 16-32-64 channels, option B shortcuts."""
    L = keras.layers
    x = inp = keras.Input(input_shape)
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    for stage, ch in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            y = L.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False)(x)
            y = L.ReLU()(L.BatchNormalization()(y))
            y = L.Conv2D(ch, 3, padding="same", use_bias=False)(y)
            y = L.BatchNormalization()(y)
            if stride != 1 or x.shape[-1] != ch:
                x = L.Conv2D(ch, 1, strides=stride, use_bias=False)(x)
                x = L.BatchNormalization()(x)
            x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out)


def build(kind):
    if kind == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    if kind == "resnet50v2":
        return keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3), classes=10)
    if kind == "small":
        return small_resnet((28, 28, 1), 10)
    raise SystemExit("unknown model kind %r" % kind)


def randomize_batchnorm(model, x, rng):
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for l in bns:
        l.momentum = 0.0
    model(x, training=True)  # moving statistics := each input's batch statistics
    for l in bns:
        mean, var = l.moving_mean.numpy(), l.moving_variance.numpy()
        c = mean.shape[0]
        l.moving_mean.assign(mean + 0.2 * np.sqrt(var) * rng.uniform(-1, 1, c))
        l.moving_variance.assign(var * rng.uniform(0.6, 1.6, c))
        l.gamma.assign(rng.uniform(0.5, 1.5, c))
        l.beta.assign(rng.normal(0, 0.2, c))
        l.momentum = 0.99


def moderate_logits(model, x):
    """Scales the last Dense layer so that the logits spread about 2 around their mean."""
    dense = model.layers[-1]
    feats = keras.Model(model.input, dense.input)(x, training=False).numpy()
    kernel, bias = dense.get_weights()
    logits = feats @ kernel + bias
    dense.set_weights([kernel * (2.0 / max(float(np.std(logits)), 1e-6)), bias])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    keras.utils.set_random_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = build(a.kind)
    shape = tuple(model.input.shape[1:])
    calib = rng.normal(0, 1, (32,) + shape).astype(np.float32)
    randomize_batchnorm(model, calib, rng)
    moderate_logits(model, calib)
    x = rng.normal(0, 1, (a.batch,) + shape).astype(np.float32)
    y = model(x, training=False).numpy()
    spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=a.opset,
                               output_path=os.path.join(a.out, "model.onnx"))
    np.save(os.path.join(a.out, "x.npy"), x)
    np.save(os.path.join(a.out, "y.npy"), y.astype(np.float32))


if __name__ == "__main__":
    main()
