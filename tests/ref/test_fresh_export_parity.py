"""An untrained PyTorch model exported as is: PyTorch's exporter stores parameters and buffers
of equal values once and writes Identity nodes for the others (a fresh BatchNorm's weight and
running variance are both ones, its bias and running mean both zeros, and every BatchNorm of
the same width shares them). qtune gives each its own tensor again, so one SGD step matches
PyTorch's loss and every gradient (rel. 1e-4 of a float64 reference) and the running
statistics move apart from the weights they were stored with."""
import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import parity
from conftest import assert_close
from test_train_parity import make_cifar, normalized, write_cifar

REL = 1e-4
BATCH = 4


class Fresh(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fresh")
    torch.manual_seed(5)
    m = Fresh().eval()
    model = str(d / "fresh.onnx")
    parity.export(m, model, (BATCH, 3, 32, 32), "logits")
    data = parity.kink_free(m, lambda rng: make_cifar(rng, BATCH, BATCH),
                            lambda data: normalized(data["data_batch_1.bin"][0]),
                            lambda t: (t.bn1, t.bn2))
    write_cifar(str(d / "cifar"), data)
    return d, m, model, data


def test_one_sgd_step_keeps_deduplicated_tensors_apart(qtune, setup):
    d, m, model, data = setup
    g = onnx.load(model).graph
    shared = [n for n in g.node if n.op_type == "Identity"]
    assert shared, "the exporter no longer deduplicates equal tensors: this test checks nothing"
    qt_loss, p1 = parity.sgd_step(qtune, model, str(d / "cifar"), str(d / "step1.onnx"), BATCH)
    t = copy.deepcopy(m).double()
    t.train()
    pixels, labels = data["data_batch_1.bin"]
    loss = F.cross_entropy(t(normalized(pixels).double()), torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    assert abs(qt_loss - loss.item()) <= REL * abs(loss.item()), (qt_loss, loss.item())
    p0 = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
    for name, p in t.named_parameters():
        grad = p0[name] - p1[name].astype(np.float64)
        want = p.grad.numpy()
        assert grad.shape == want.shape, (name, grad.shape, want.shape)
        assert_close(grad, want, REL, "gradient of " + name, scale=float(np.abs(want).max()))
    for name, buf in t.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        assert_close(p1[name], buf.numpy(), REL, "running statistic " + name,
                     scale=float(np.abs(buf.numpy()).max()))
