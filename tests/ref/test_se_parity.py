"""A squeeze-and-excitation block (timm's SE-ResNets: a spatial mean, two 1x1 convolutions,
Sigmoid, and a broadcast Mul rescaling the channels) in a small classifier ending in
LogSoftmax, exported by PyTorch: `qtune run` gives PyTorch's outputs, and one SGD step gives
PyTorch's cross-entropy (the NLL of the LogSoftmax, computed by qtune from the logits before
it) and every parameter gradient (conftest.assert_grad_close), through ReduceMean,
Sigmoid and the broadcast Mul, on the cpu and ref backends."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
import parity
from conftest import assert_grad_close, torch_grads
from test_train_parity import initializers, make_cifar, normalized, write_cifar

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("se")
    torch.manual_seed(11)
    m = SeNet()
    models.randomize_batchnorm(m, torch.Generator().manual_seed(12))
    model = str(d / "se.onnx")
    parity.export(m, model, (BATCH, 3, 32, 32), "logprob")
    data = parity.kink_free(m, lambda rng: make_cifar(rng, BATCH, BATCH),
                            lambda data: normalized(data["data_batch_1.bin"][0]),
                            lambda t: (t.bn1, t.se_reduce, t.bn2))
    write_cifar(str(d / "cifar"), data)
    return d, m, model, data


def test_run_gives_pytorch_log_probabilities(qtune, setup, tmp_path):
    d, m, model, data = setup
    ops = qtune("inspect", model).check_ok().stdout
    for op in ("ReduceMean", "Sigmoid", "LogSoftmax"):
        assert op in ops, op
    x = normalized(data["test_batch.bin"][0])
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    assert want.shape == (BATCH, 10)
    parity.run_matches(qtune, model, x, want, tmp_path, REL, "qtune run vs PyTorch")


@pytest.mark.parametrize("device", ["cpu", "ref"])
def test_one_sgd_step(qtune, setup, device):
    d, m, model, data = setup
    out = str(d / ("step1.%s.onnx" % device))
    qt_loss, p1 = parity.sgd_step(qtune, model, str(d / "cifar"), out, BATCH, device=device)
    p0 = initializers(model)
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
