"""Keras models exported by tf2onnx, against TensorFlow (tests/ref/keras_models.py builds them
in the TensorFlow environment, conftest.tf_python):

- keras.applications ResNet50 and ResNet50V2 (random weights, 64x64x3 input, 10 classes,
  randomized BatchNorm statistics) at opsets 13 and 17: `qtune run` gives TensorFlow's
  Softmax outputs within 1e-4 of their largest value, and `inspect` names the NHWC input;
- a Keras ResNet-20 for Fashion-MNIST (random weights; tf2onnx folds its BatchNorms into the
  convolutions): the same comparison, then one epoch of W4A4 fine-tuning (BatchNorms put back,
  `--folded unfold`) on Fashion-MNIST images fed in the model's NHWC layout, and
  onnxruntime's top-1 of the exported model on the test split against the top-1 qtune
  reported for it;
- ResNet50V2 fine-tuned one epoch at W4A4 on generated 64x64 images: its pre-activation
  BatchNorms, which tf2onnx writes as Mul and Add of constants, become trainable BatchNorms,
  its stem's Pad trains, and onnxruntime's top-1 of the export equals qtune's."""
import json
import os
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import datasets
from conftest import assert_close, fashion_mnist, tf_python

REL = 1e-4


_BUILT = {}


def keras_model(tmp_path_factory, kind, opset):
    """(model.onnx, x.npy, TensorFlow's outputs on x), built once per kind and opset."""
    if (kind, opset) not in _BUILT:
        _BUILT[(kind, opset)] = _build(tmp_path_factory, kind, opset)
    return _BUILT[(kind, opset)]


def _build(tmp_path_factory, kind, opset):
    out = tmp_path_factory.mktemp("keras_%s_%d" % (kind, opset))
    r = subprocess.run([tf_python(), os.path.join(os.path.dirname(__file__), "keras_models.py"),
                        kind, "--opset", str(opset), "--out", str(out)],
                       capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, "keras_models.py %s failed:\n%s" % (kind, r.stderr[-3000:])
    return str(out / "model.onnx"), str(out / "x.npy"), np.load(str(out / "y.npy"))


def check_run(qtune, model, x, want, tmp_path):
    out = str(tmp_path / "q.npy")
    qtune("run", model, "--input", x, "--output", out).check_ok()
    got = np.load(out)
    assert_close(got, want, REL, "qtune run against TensorFlow")
    info = json.loads(qtune("inspect", model, "--json").check_ok().stdout)
    assert "NHWC" in json.dumps(info), "inspect does not name the NHWC input"


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("kind", ["resnet50", "resnet50v2"])
def test_keras_applications_run_like_tensorflow(qtune, tmp_path_factory, tmp_path, kind, opset):
    model, x, want = keras_model(tmp_path_factory, kind, opset)
    assert want.shape == (4, 10)
    ops = {n.op_type for n in onnx.load(model).graph.node}
    assert "Transpose" in ops and "Softmax" in ops, ops
    check_run(qtune, model, x, want, tmp_path)


def ort_top1(path, x, y):
    m = onnx.load(path)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["qtune.input_layout"] == "NHWC", meta
    mean, std = float(meta["qtune.mean"]), float(meta["qtune.std"])
    xs = ((x.astype(np.float32) / 255.0 - mean) / std)[..., None]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    probs = np.concatenate([s.run(None, {m.graph.input[0].name: xs[i:i + 1000]})[0]
                            for i in range(0, len(xs), 1000)])
    assert probs.shape == (len(y), 10) and np.all(np.isfinite(probs))
    return 100.0 * float((probs.argmax(1) == y).mean())


def last_json(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_keras_resnet20_trains_and_exports(qtune, tmp_path_factory, tmp_path):
    data = fashion_mnist()
    model, x, want = keras_model(tmp_path_factory, "small", 13)
    check_run(qtune, model, x, want, tmp_path)
    common = ["--data", data, "--preset", "fashion-mnist", "--train-limit", "10000", "--json",
              "--quiet"]
    q = str(tmp_path / "q.onnx")
    r = qtune("finetune", model, "--wbits", "4", "--abits", "4", "--epochs", "1", "--export",
              "onnx", "-o", q, *common, timeout=1200).check_ok()
    top1 = last_json(r)["top1"]
    assert top1 > 60, r.stdout
    exported = str(tmp_path / "q.export.onnx")
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    xt, yt = datasets.load_fashion("test")
    got = ort_top1(exported, xt, yt)
    print("Keras ResNet-20 W4A4 on the Fashion-MNIST test split: onnxruntime %.2f%%, qtune "
          "%.2f%%" % (got, top1))
    assert abs(got - top1) <= 0.15, (got, top1)


def test_keras_resnet50v2_finetunes(qtune, tmp_path_factory, tmp_path):
    from PIL import Image
    model, _, _ = keras_model(tmp_path_factory, "resnet50v2", 13)
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, per in (("train", 8), ("val", 4)):
        for c in range(10):
            d = root / split / ("c%d" % c)
            d.mkdir(parents=True)
            for k in range(per):
                px = rng.normal(20 + 20 * c, 30, (64, 64, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(px).save(str(d / ("%02d.png" % k)))
    q = str(tmp_path / "q.onnx")
    r = qtune("finetune", model, "--data", str(root), "--preset", "imagenet", "--wbits", "4",
              "--abits", "4", "--epochs", "1", "--batch", "16", "--calib-batches", "2",
              "--export", "onnx", "--json", "-o", q, timeout=1200).check_ok()
    # 53 Convs whose BatchNorm tf2onnx folded, and 17 pre-activation Mul/Add pairs
    assert "unfolding: 70 BatchNorms" in r.stderr, r.stderr[-3000:]
    m = onnx.load(q)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") == 70 and "Pad" in ops, sorted(set(ops))
    assert not any(n.op_type == "Mul" and all(i in {t.name for t in m.graph.initializer}
                                              for i in n.input[1:]) for n in m.graph.node)
    top1 = last_json(r)["top1"]
    exported = str(tmp_path / "q.export.onnx")
    em = onnx.load(exported)
    onnx.checker.check_model(em, full_check=True)
    meta = {p.key: p.value for p in em.metadata_props}
    mean = np.array([float(v) for v in meta["qtune.mean"].split(",")], np.float32)
    std = np.array([float(v) for v in meta["qtune.std"].split(",")], np.float32)
    xs, ys = [], []
    for c in range(10):
        for k in range(4):
            img = np.asarray(Image.open(str(root / "val" / ("c%d" % c) / ("%02d.png" % k))))
            xs.append((img.astype(np.float32) / 255.0 - mean) / std)
            ys.append(c)
    s = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    probs = s.run(None, {em.graph.input[0].name: np.stack(xs)})[0]
    assert probs.shape == (40, 10) and np.all(np.isfinite(probs))
    got = 100.0 * float((probs.argmax(1) == np.array(ys)).mean())
    assert abs(got - top1) <= 2.5 + 1e-9, (got, top1)  # one image of 40
