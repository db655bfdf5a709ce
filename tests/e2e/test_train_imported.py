"""Training imported PyTorch exports: the BatchNorm-folded form (Conv with bias, no
BatchNormalization) and the training-preserving form both train, and the written models
run in onnxruntime with the logits qtune computes."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import assert_close


def write_cifar(folder, n):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    # Learnable labels: the class is the brightest of ten fixed pixel patterns.
    patterns = rng.integers(0, 2, (10, 3072)).astype(np.float32)
    for name, count in [("data_batch_%d.bin" % i, n) for i in range(1, 6)] + [("test_batch.bin", n)]:
        pixels = rng.integers(0, 200, (count, 3072)).astype(np.float32)
        labels = rng.integers(0, 10, count)
        pixels += 55 * patterns[labels]
        rec = np.concatenate([labels[:, None].astype(np.uint8), pixels.astype(np.uint8)], axis=1)
        rec.tofile(os.path.join(folder, name))


@pytest.mark.parametrize("form", ["eval", "train"])
def test_imported_resnet20_trains(qtune, ref_out, tmp_path, form):
    model = os.path.join(ref_out, "resnet20", "resnet20_op13_dyn_%s.onnx" % form)
    ops = [n.op_type for n in onnx.load(model).graph.node]
    assert ("BatchNormalization" in ops) == (form == "train")
    data = str(tmp_path / "cifar")
    write_cifar(data, 256)
    out = str(tmp_path / "out.onnx")
    r = qtune("train", model, "--data", data, "--epochs", "3", "--batch", "32", "--lr", "0.02",
              "--preset", "cifar10", "--train-limit", "256", "--no-augment", "--json", "--quiet",
              "-o", out)
    assert r.returncode == 0, r.describe()
    with open(str(tmp_path / "out.log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert log[-1]["train_loss"] < log[0]["train_loss"], log
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    changed = [k for k in after if k in before and before[k].dtype == np.float32
               and before[k].shape == after[k].shape and not np.array_equal(before[k], after[k])]
    assert len(changed) >= 20, changed
    # onnxruntime runs the written model and agrees with qtune.
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.save(str(tmp_path / "x.npy"), x)
    qtune("run", out, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")).check_ok()
    assert_close(np.load(str(tmp_path / "y.npy")), y_ort, 1e-4, "qtune run vs onnxruntime")
