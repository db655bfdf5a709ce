"""A torchvision ResNet-18 (random weights, 64x64 input, exported by PyTorch) fine-tuned at
W4A4 APoT on an ImageNet-layout folder (train/ and val/ of JPEG files of varied sizes) with
`--crop 64` (streamed: RandomResizedCrop for training): the run completes, its progress
lines (no terminal: plain lines) carry a rate and an ETA, the epoch reports the share of
its time spent waiting for batches, the result is exported, and onnxruntime's top-1 of the export on the val images
(torchvision's Resize + CenterCrop, the transform qtune applies) is the top-1 qtune reports."""
import json
import os
import re

import numpy as np
import onnx
import pytest

PIL = pytest.importorskip("PIL.Image")
transforms = pytest.importorskip("torchvision.transforms")
tv_datasets = pytest.importorskip("torchvision.datasets")
ort = pytest.importorskip("onnxruntime")

CLASSES = 4


def write_folder(root, rng):
    sizes = [(96, 80), (80, 120), (150, 100), (70, 70), (128, 90)]
    for split, per_class in (("train", 24), ("val", 6)):
        for c in range(CLASSES):
            d = os.path.join(root, split, "class%d" % c)
            os.makedirs(d)
            for k in range(per_class):
                w, h = sizes[k % len(sizes)]
                # each class its own mean colour, plus noise: learnable in one epoch
                px = rng.normal(60 + 40 * c, 30, (h, w, 3)).clip(0, 255).astype(np.uint8)
                PIL.fromarray(px).save(os.path.join(d, "%02d.JPEG" % k), "JPEG", quality=90)


def test_resnet18_finetunes_on_an_image_folder(qtune, ref_out, tmp_path):
    model = os.path.join(ref_out, "resnet18", "resnet18_op11_dyn_train.onnx")
    root = str(tmp_path / "images")
    write_folder(root, np.random.default_rng(0))
    out = str(tmp_path / "q.onnx")
    r = qtune("finetune", model, "--data", root, "--crop", "64", "--preset", "imagenet",
              "--wbits", "4", "--abits", "4", "--epochs", "1", "--batch", "16",
              "--calib-batches", "2", "--json", "--export", "onnx", "-o", out,
              timeout=1200).check_ok()
    # progress: "epoch 1 ...: 16/96 (16%) 12 img/s elapsed 00:01 eta 00:05"
    lines = [l for l in r.stderr.splitlines() if re.match(r"epoch 1 .*\d+/96 ", l)]
    assert lines, r.stderr[-2000:]
    for l in lines:
        m = re.search(r"(\d+)/96 \(\d+%\) ([\d.]+) img/s elapsed (\d+):(\d+) eta (\d+):(\d+)", l)
        assert m, l
        done, rate = int(m.group(1)), float(m.group(2))
        elapsed = 60 * int(m.group(3)) + int(m.group(4))
        eta = 60 * int(m.group(5)) + int(m.group(6))
        assert rate > 0, l
        # the ETA is the images left at the rate shown (to the second the display rounds to)
        assert abs(eta - (96 - done) / rate) <= 1.5, l
        assert elapsed <= done / rate + 1.5, l
    # the epoch's summary and log say how much of its time went to decoding batches
    assert re.search(r"img/s, \d+% of it waiting for batches", r.stderr), r.stderr[-2000:]
    with open(str(tmp_path / "q.log.jsonl")) as f:
        ep = json.loads(f.readline())
    assert 0 < ep["data_seconds"] <= ep["seconds"], ep
    top1 = json.loads(r.stdout.strip().splitlines()[-1])["top1"]
    exported = str(tmp_path / "q.export.onnx")
    m = onnx.load(exported)
    meta = {p.key: p.value for p in m.metadata_props}
    mean = np.array([float(v) for v in meta["qtune.mean"].split(",")], np.float32)
    std = np.array([float(v) for v in meta["qtune.std"].split(",")], np.float32)
    tf = transforms.Compose([transforms.Resize(int(64 * 256 / 224)), transforms.CenterCrop(64),
                             transforms.ToTensor(),
                             transforms.Normalize(mean.tolist(), std.tolist())])
    val = tv_datasets.ImageFolder(os.path.join(root, "val"), transform=tf)
    x = np.stack([val[i][0].numpy() for i in range(len(val))])
    y = np.array([val[i][1] for i in range(len(val))])
    s = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    logits = s.run(None, {m.graph.input[0].name: x})[0]
    assert logits.shape == (len(val), 10) and np.all(np.isfinite(logits))
    ort_top1 = 100.0 * float((logits.argmax(1) == y).mean())
    print("ResNet-18 W4A4 on the folder: qtune %.2f%%, onnxruntime %.2f%%" % (top1, ort_top1))
    assert abs(ort_top1 - top1) <= 100.0 / len(val) + 1e-9, (ort_top1, top1)


def test_prefetch_gives_the_same_training(qtune, ref_out, tmp_path):
    """The prefetch thread assembles each next batch (streamed: decoded, RandomResizedCrop,
    flipped) during a step: the steps see exactly the batches they see without it
    (--no-prefetch), so the per-step losses of two epochs are identical. (Runs resumed in the
    middle of an epoch, with prefetch, are compared with straight runs in test_train.py.)"""
    model = os.path.join(ref_out, "resnet18", "resnet18_op11_dyn_train.onnx")
    root = str(tmp_path / "images")
    write_folder(root, np.random.default_rng(1))
    losses = {}
    for flag in ("", "--no-prefetch"):
        out = str(tmp_path / ("q%s.onnx" % flag))
        qtune("train", model, "--data", root, "--crop", "64", "--preset", "imagenet",
              "--epochs", "2", "--batch", "16", "--lr", "0.01", "--quiet", "-o", out,
              *([flag] if flag else []), timeout=1200).check_ok()
        with open(out[:-5] + ".log.jsonl") as f:
            losses[flag] = [json.loads(l)["step_loss"] for l in f if "step_loss" in l]
    assert len(losses[""]) == 2 and len(losses[""][0]) == 6, losses
    assert losses[""] == losses["--no-prefetch"], losses
