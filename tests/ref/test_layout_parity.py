"""A model shaped like a Keras model exported by tf2onnx: NHWC images read through a leading
Transpose to NCHW, activations permuted inside (a channel-mixing Linear applied in NHWC), and
a Softmax at the end; exported by PyTorch. `qtune inspect` reports the NHWC input, qtune feeds
the dataset's images in that layout, `qtune run` gives PyTorch's probabilities, and one SGD
step gives PyTorch's cross-entropy of the logits before the Softmax and every parameter
gradient (conftest.assert_grad_close: 1e-4 of float64, or 4 times PyTorch's own float32
error where sums cancel), the gradients flowing back through the Transposes. `qtune eval` gives onnxruntime's top-1 and cross-entropy on the same images."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
import parity
from conftest import assert_grad_close, torch_grads, fashion_mnist
from test_train_parity import MEAN, STD, initializers, make_cifar, normalized, write_cifar

REL = 1e-4
BATCH = 4


class NhwcNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.mix = nn.Linear(8, 8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)

    def logits(self, x):
        x = x.permute(0, 3, 1, 2)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def nhwc(pixels):
    return normalized(pixels).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    torch.manual_seed(7)
    m = NhwcNet()
    models.randomize_batchnorm(m, torch.Generator().manual_seed(8))
    model = str(d / "nhwc.onnx")
    parity.export(m, model, (BATCH, 32, 32, 3), "logits")

    def make(rng):
        data = make_cifar(rng, BATCH, BATCH)
        data["test_batch.bin"] = make_cifar(rng, 1, 64)["test_batch.bin"]
        return data

    data = parity.kink_free(m, make, lambda data: nhwc(data["data_batch_1.bin"][0]),
                            lambda t: (t.bn1, t.bn2))
    write_cifar(str(d / "cifar"), data)
    return d, m, model, data


def test_nhwc_input_is_recognized_and_runs_as_pytorch(qtune, setup, tmp_path):
    d, m, model, data = setup
    info = json.loads(qtune("inspect", model, "--json").check_ok().stdout)
    assert info["input_layout"] == "NHWC", info.get("input_layout")
    x = nhwc(data["test_batch.bin"][0][:16])
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    assert want.shape == (16, 10)
    got = parity.run_matches(qtune, model, x, want, tmp_path, REL, "qtune run vs PyTorch")
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5), "run keeps the Softmax output"


def test_one_sgd_step_through_the_transposes(qtune, setup):
    d, m, model, data = setup
    qt_loss, p1 = parity.sgd_step(qtune, model, str(d / "cifar"), str(d / "step1.onnx"), BATCH)
    p0 = initializers(model)
    pixels, labels = data["data_batch_1.bin"]
    y = torch.from_numpy(labels.astype(np.int64))
    g64, g32, loss64 = torch_grads(m, lambda t, dt: F.cross_entropy(t.logits(nhwc(pixels).to(dt)), y))
    assert abs(qt_loss - loss64) <= REL * abs(loss64), (qt_loss, loss64)
    # qtune folds the Transpose PyTorch writes for the Linear's weight (MatMul reads W^T):
    # the folded tensor is what trains and what the written model holds
    assert "mix.weight" not in p1
    p1["mix.weight"] = p1.pop("/mix/Transpose_output_0").T
    checked = []
    for name, want in g64.items():
        grad = p0[name].astype(np.float64) - p1[name].astype(np.float64)
        assert_grad_close(grad, want, g32[name], REL, "gradient of " + name)
        checked.append(name)
    assert len(checked) == 10, checked


@pytest.mark.parametrize("device", ["cpu", "ref"])
def test_eval_feeds_nhwc_batches(qtune, setup, device):
    """`qtune eval` of the NHWC model over the 64 test images gives onnxruntime's top-1 and
    cross-entropy (-log of the probability of the label; qtune computes it from the logits
    before the Softmax) on the same images fed NHWC, on both backends; batches of 24 leave a
    last one of 16."""
    ort = pytest.importorskip("onnxruntime")
    d, m, model, data = setup
    r = qtune("eval", model, "--data", str(d / "cifar"), "--batch", "24", "--device", device,
              "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--json",
              "--quiet")
    r.check_ok()
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pixels, labels = data["test_batch.bin"]
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    prob = s.run(None, {"input": nhwc(pixels).numpy()})[0].astype(np.float64)
    xent = -np.log(prob[np.arange(len(labels)), labels])
    top1 = 100.0 * np.mean(prob.argmax(axis=1) == labels)
    assert got["images"] == 64, got
    assert abs(got["top1"] - top1) < 1e-9, (got["top1"], top1)
    assert abs(got["loss"] - xent.mean()) <= 1e-4 * xent.mean(), (got["loss"], xent.mean())


def test_nhwc_model_refuses_other_images(qtune, setup):
    d, m, model, data = setup
    r = qtune("eval", model, "--data", fashion_mnist(), "--preset", "fashion-mnist", "--quiet")
    assert r.returncode == 1, r.describe()
    assert "[N,32,32,3] (NHWC)" in r.stderr and "1x28x28" in r.stderr, r.stderr
