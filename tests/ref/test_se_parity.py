"""A squeeze-and-excitation block (timm's SE-ResNets: a spatial mean, two 1x1 convolutions,
Sigmoid, and a broadcast Mul rescaling the channels) in a small classifier ending in
LogSoftmax, exported by PyTorch: `qtune run` gives PyTorch's outputs, and one SGD step gives
PyTorch's cross-entropy (the NLL of the LogSoftmax, computed by qtune from the logits before
it) and every parameter gradient (conftest.assert_grad_close), through ReduceMean,
Sigmoid and the broadcast Mul, on the cpu and ref backends."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from conftest import assert_close, assert_grad_close, torch_grads
from test_train_parity import KINK, MEAN, STD, initializers, make_cifar, normalized, write_cifar

REL = 1e-4
BATCH = 4


class SeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return F.log_softmax(self.logits(x), dim=1)

    def logits(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        x = x * s
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def min_relu_input(m, x):
    """The smallest |ReLU input| of a training-mode forward (see test_train_parity)."""
    seen = []
    mods = (m.bn1, m.se_reduce, m.bn2)
    hooks = [k.register_forward_hook(lambda mod, i, o: seen.append(o.detach().abs().min()))
             for k in mods]
    m.train()
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    return float(min(seen))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("se")
    torch.manual_seed(11)
    m = SeNet()
    models.randomize_batchnorm(m, torch.Generator().manual_seed(12))
    model = str(d / "se.onnx")
    m.eval()
    torch.onnx.export(m, torch.zeros(BATCH, 3, 32, 32), model, opset_version=13,
                      input_names=["input"], output_names=["logprob"],
                      dynamic_axes={"input": {0: "N"}, "logprob": {0: "N"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    for seed in range(1000):
        data = make_cifar(np.random.default_rng(seed), BATCH, BATCH)
        if min_relu_input(copy.deepcopy(m), normalized(data["data_batch_1.bin"][0])) > KINK:
            break
    else:
        pytest.fail("no batch without ReLU inputs near 0 found")
    write_cifar(str(d / "cifar"), data)
    return d, m, model, data


def test_run_gives_pytorch_log_probabilities(qtune, setup, tmp_path):
    d, m, model, data = setup
    ops = qtune("inspect", model).check_ok().stdout
    for op in ("ReduceMean", "Sigmoid", "LogSoftmax"):
        assert op in ops, op
    x = normalized(data["test_batch.bin"][0])
    np.save(str(tmp_path / "x.npy"), x.numpy())
    qtune("run", model, "--input", str(tmp_path / "x.npy"), "--output",
          str(tmp_path / "y.npy")).check_ok()
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    got = np.load(str(tmp_path / "y.npy"))
    assert got.shape == want.shape == (BATCH, 10)
    assert_close(got, want, REL, "qtune run vs PyTorch", scale=float(np.abs(want).max()))


@pytest.mark.parametrize("device", ["cpu", "ref"])
def test_one_sgd_step(qtune, setup, device):
    d, m, model, data = setup
    out = str(d / ("step1.%s.onnx" % device))
    r = qtune("train", model, "--data", str(d / "cifar"), "--batch", BATCH, "--train-limit", BATCH,
              "--test-limit", BATCH, "--no-augment", "--schedule", "const", "--threads", "2",
              "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--quiet",
              "--device", device, "--epochs", "1", "--lr", "1", "--momentum", "0", "--wd", "0",
              "-o", out)
    assert r.returncode == 0, r.describe()
    with open(str(d / ("step1.%s.log.jsonl" % device))) as f:
        qt_loss = json.loads(f.readline())["train_loss"]
    p0, p1 = initializers(model), initializers(out)
    pixels, labels = data["data_batch_1.bin"]
    y = torch.from_numpy(labels.astype(np.int64))
    g64, g32, loss64 = torch_grads(m, lambda t, dt: F.nll_loss(t(normalized(pixels).to(dt)), y))
    assert abs(qt_loss - loss64) <= REL * abs(loss64), (qt_loss, loss64)
    checked = []
    for name, want in g64.items():
        grad = p0[name].astype(np.float64) - p1[name].astype(np.float64)
        assert_grad_close(grad, want, g32[name], REL, "gradient of " + name)
        checked.append(name)
    assert len(checked) == 12, checked
