"""ImageNet's flat val/ folder: the test split's images lie in val/ itself and a labels file in
the dataset's root names their classes (val.txt or val_labels.txt: "FILE LABEL", LABEL a class
folder name of train/ or an index into the sorted class names; Kaggle's LOC_val_solution.csv).
Each image's gray level encodes its class, and a hand-built ONNX classifier (global average
pool, then the nearest of the class levels) recovers it: `qtune eval` reaches 100% top-1 only
when every label was read right (one swapped label costs 1/N), and `qtune run` names every
image. Unlabelled images, unknown labels, duplicates and a missing file are refused by name."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import datasets

CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361"]
LEVELS = [30, 90, 150, 210]  # gray level of each class's images


def level_classifier(path, size):
    """logit_j = 2 v_j m - v_j^2 for the mean pixel m of channel 0: the largest is the v_j
    nearest to m (the pixels are read unnormalized: --mean 0,0,0 --std 1,1,1)."""
    v = np.array(LEVELS, np.float32) / np.float32(255.0)
    B = np.zeros((3, len(v)), np.float32)
    B[0] = 2 * v
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "B", "C"], ["z"])]
    g = helper.make_graph(nodes, "levels",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", len(v)])],
                          [numpy_helper.from_array(B, "B"), numpy_helper.from_array(-v * v, "C")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def png(path, level):
    with open(path, "wb") as f:
        f.write(datasets.encode_png(np.full((8, 8, 3), level, np.uint8)))


def make_tree(root, nval=14, labels="val.txt"):
    """train/<class>/ with one image each, val/ flat with nval images and a labels file;
    returns {val file name: class index}."""
    for k, c in enumerate(CLASSES):
        os.makedirs(os.path.join(root, "train", c), exist_ok=True)
        png(os.path.join(root, "train", c, "t.png"), LEVELS[k])
    os.makedirs(os.path.join(root, "val"))
    rng = np.random.default_rng(3)
    truth = {}
    for i in range(nval):
        k = int(rng.integers(0, len(CLASSES)))
        name = "ILSVRC2012_val_%08d.png" % (i + 1)
        png(os.path.join(root, "val", name), LEVELS[k])
        truth[name] = k
    with open(os.path.join(root, labels), "w") as f:
        if labels.endswith(".csv"):
            f.write("ImageId,PredictionString\n")
            for name, k in reversed(list(truth.items())):
                f.write("%s,%s 12 34 56 78 %s 1 2 3 4\n" % (name[:-4], CLASSES[k], CLASSES[k]))
        else:
            for i, (name, k) in enumerate(truth.items()):
                # class names and 0-based indices, with and without the extension
                lab = CLASSES[k] if i % 2 else str(k)
                f.write("%s %s\n" % (name if i % 3 else name[:-4], lab))
    return truth


def evaluate(qtune, model, root, *extra):
    return qtune("eval", model, "--data", root, "--mean", "0,0,0", "--std", "1,1,1", "--json",
                 "--quiet", *extra)


@pytest.mark.parametrize("labels", ["val.txt", "val_labels.txt", "LOC_val_solution.csv"])
def test_flat_val_labels(qtune, tmp_path, labels):
    root = str(tmp_path / "imagenet")
    truth = make_tree(root, labels=labels)
    model = str(tmp_path / "m.onnx")
    level_classifier(model, 8)
    r = evaluate(qtune, model, root)
    r.check_ok()
    res = r.json()
    assert res["images"] == len(truth) and res["top1"] == 100.0, res
    # the same model on the train split (class folders) agrees
    r = evaluate(qtune, model, root, "--split", "train")
    r.check_ok()
    assert r.json()["images"] == len(CLASSES) and r.json()["top1"] == 100.0, r.json()
    out = str(tmp_path / "y.npy")
    qtune("run", model, "--data", root, "--output", out, "--mean", "0,0,0", "--std", "1,1,1",
          "--quiet").check_ok()
    with open(str(tmp_path / "y.txt")) as f:
        names = [os.path.basename(n) for n in f.read().splitlines()]
    y = np.load(out)
    assert y.shape == (len(truth), len(CLASSES)) and sorted(names) == sorted(truth), names
    assert [int(v) for v in y.argmax(axis=1)] == [truth[n] for n in names]


def test_one_wrong_label_is_seen(qtune, tmp_path):
    """The check can fail: one label changed costs exactly one image."""
    root = str(tmp_path / "imagenet")
    truth = make_tree(root)
    name = sorted(truth)[5]
    lines = open(os.path.join(root, "val.txt")).read().splitlines()
    lines = [(ln.split()[0] + " " + CLASSES[(truth[name] + 1) % len(CLASSES)])
             if ln.split()[0] in (name, name[:-4]) else ln for ln in lines]
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    model = str(tmp_path / "m.onnx")
    level_classifier(model, 8)
    r = evaluate(qtune, model, root)
    r.check_ok()
    assert abs(r.json()["top1"] - 100.0 * (len(truth) - 1) / len(truth)) < 1e-3, r.json()


@pytest.mark.badinput
@pytest.mark.parametrize("edit,needle", [
    (lambda root, lines: lines[:-1], "has no line in"),
    (lambda root, lines: lines + ["ILSVRC2012_val_00000001 n99999999"], "neither one of the"),
    (lambda root, lines: lines + ["ILSVRC2012_val_00000001 7"], "an index below 4"),
    (lambda root, lines: lines + [lines[0]], "labelled twice"),
    (lambda root, lines: lines + ["lonely"], "expected a file name and a label"),
    (lambda root, lines: None, "no labels file"),
])
def test_flat_val_bad_labels(qtune, tmp_path, edit, needle):
    root = str(tmp_path / "imagenet")
    make_tree(root)
    path = os.path.join(root, "val.txt")
    lines = open(path).read().splitlines()
    new = edit(root, lines)
    if new is None:
        os.remove(path)
    else:
        with open(path, "w") as f:
            f.write("\n".join(new) + "\n")
    model = str(tmp_path / "m.onnx")
    level_classifier(model, 8)
    r = evaluate(qtune, model, root)
    r.check_error(needle)


def pack(root, path, top):
    """root's tree as a tar.gz, under a top folder or at the archive's root."""
    import tarfile
    with tarfile.open(path, "w:gz") as tf:
        for name in sorted(os.listdir(root)):
            tf.add(os.path.join(root, name), arcname=os.path.join(top, name) if top else name)


@pytest.mark.parametrize("labels,top,crop", [("val.txt", "", False),
                                             ("LOC_val_solution.csv", "imagenet", False),
                                             ("val_labels.txt", "imagenet", True)])
def test_flat_val_in_an_archive(qtune, tmp_path, labels, top, crop):
    """The same tree packed in a tar.gz (read in one pass, the labels file may come before or
    after the images): 100% top-1 when every label is read right, one changed label costs one
    image, and without the labels file the archive is refused by name."""
    root = str(tmp_path / "imagenet")
    truth = make_tree(root, labels=labels)
    model = str(tmp_path / "m.onnx")
    level_classifier(model, 8)
    arch = str(tmp_path / "imagenet.tar.gz")
    pack(root, arch, top)
    extra = ["--crop", "8", "--resize", "8"] if crop else []
    r = evaluate(qtune, model, arch, *extra)
    r.check_ok()
    assert r.json()["images"] == len(truth) and r.json()["top1"] == 100.0, r.json()
    # one label changed
    path = os.path.join(root, labels)
    name = sorted(truth)[2]
    text = open(path).read()
    wrong = CLASSES[(truth[name] + 1) % len(CLASSES)]
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith(name[:-4]):
            if labels.endswith(".csv"):
                lines[i] = "%s,%s 1 2 3 4" % (name[:-4], wrong)
            else:
                lines[i] = "%s %s" % (ln.split()[0], wrong)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    pack(root, arch, top)
    r = evaluate(qtune, model, arch, *extra)
    r.check_ok()
    assert abs(r.json()["top1"] - 100.0 * (len(truth) - 1) / len(truth)) < 1e-3, r.json()
    os.remove(path)
    pack(root, arch, top)
    evaluate(qtune, model, arch, *extra).check_error("no labels file")
