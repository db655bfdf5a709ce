"""`qtune run MODEL --data DATA --output y.npy`: the model's outputs (here after a final
Softmax, kept as the model computes it) for every image of a split, one row per image in the
order of the names written to y.txt, equal to onnxruntime's on the same images normalized in
NumPy: an image folder of PNGs (names: their paths) and a CIFAR binary folder (names: split
and index), batches that do not divide the split, --limit; bad invocations are refused."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import datasets
from conftest import assert_close

ort = pytest.importorskip("onnxruntime")

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)


def classifier(path, size):
    rng = np.random.default_rng(2)
    inits = {"W": (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32),
             "fc": rng.standard_normal((5, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    g = helper.make_graph(nodes, "cls",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def normalize(chw):
    x = chw.astype(np.float32) / np.float32(255.0)
    return ((x - np.array(MEAN, np.float32)[:, None, None]) /
            np.array(STD, np.float32)[:, None, None]).astype(np.float32)


def run_data(qtune, model, data, out, *extra):
    return qtune("run", model, "--data", data, "--output", out, "--mean",
                 ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--quiet", *extra)


def test_image_folder_outputs_follow_the_names(qtune, tmp_path):
    rng = np.random.default_rng(7)
    root = str(tmp_path / "images")
    images = {}
    for split, count in (("train", 2), ("test", 11)):
        for k in range(count):
            cls = "ab"[k % 2]
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            img = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            p = os.path.join(d, "%02d.png" % k)
            with open(p, "wb") as f:
                f.write(datasets.encode_png(img))
            images[p] = img
    model = str(tmp_path / "m.onnx")
    classifier(model, 12)
    out = str(tmp_path / "y.npy")
    run_data(qtune, model, root, out, "--batch", "4").check_ok()
    y = np.load(out)
    with open(str(tmp_path / "y.txt")) as f:
        names = f.read().splitlines()
    assert y.shape == (11, 5) and len(names) == 11, (y.shape, len(names))
    assert sorted(names) == sorted(p for p in images if "/test/" in p), names
    x = np.stack([normalize(images[n].transpose(2, 0, 1)) for n in names])
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(y, want, 1e-5, "run --data vs onnxruntime", scale=1.0)
    assert np.allclose(y.sum(axis=1), 1.0, atol=1e-5), "the Softmax output is kept"


def test_cifar_split_with_limit(qtune, tmp_path):
    from test_train_parity import make_cifar, write_cifar
    data = make_cifar(np.random.default_rng(3), 4, 9)
    write_cifar(str(tmp_path / "cifar"), data)
    model = str(tmp_path / "m.onnx")
    classifier(model, 32)
    out = str(tmp_path / "out")  # no .npy suffix: the names go to out.txt
    run_data(qtune, model, str(tmp_path / "cifar"), out, "--limit", "7", "--batch", "3").check_ok()
    y = np.load(out)
    with open(out + ".txt") as f:
        names = f.read().splitlines()
    assert names == ["test #%d" % k for k in range(7)], names
    pixels = data["test_batch.bin"][0][:7]
    x = np.stack([normalize(p) for p in pixels])
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == want.shape == (7, 5)
    assert_close(y, want, 1e-5, "run --data vs onnxruntime", scale=1.0)


@pytest.mark.parametrize("args,needle", [
    (["--input", "x.npy", "--data", "d"], "usage"),
    (["--data", "d", "--split", "val"], "--split must be train or test"),
    (["--data", "d", "--mean", "0.5,0.5,0.5"], "--mean and --std go together"),
    (["--data", "d", "--limit", "0"], "--limit needs a positive integer"),
])
def test_bad_invocations_refused(qtune, tmp_path, args, needle):
    model = str(tmp_path / "m.onnx")
    classifier(model, 8)
    r = qtune("run", model, "--output", str(tmp_path / "y.npy"), *args)
    assert r.returncode != 0 and needle in r.stderr, r.describe()
    assert not os.path.exists(str(tmp_path / "y.npy"))
