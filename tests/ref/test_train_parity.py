"""Training parity with PyTorch on one fixed batch of a ResNet-20 built by `qtune init`:
the loss, every parameter gradient, the BatchNorm running statistics after a step, and the
parameters after 3 SGD steps with momentum and weight decay match PyTorch (rel. 1e-4).
Resuming from a checkpoint reproduces an uninterrupted run bit for bit.

ReLU is not differentiable at 0: an activation within float rounding of 0 may fall on
different sides in two correct implementations and change a gradient by far more than
1e-4. The batch is therefore chosen (by scanning data seeds with PyTorch) so that no ReLU
input of the whole 3-step trajectory lies within KINK of 0."""
import json
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch.nn.utils import stateless

import models
from conftest import assert_close

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)
BATCH = 2
REL = 1e-4
KINK = 3e-6
STEP3 = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
PSGD_BITS, PSGD_LAMBDA = 4, 150.0
BSQ_PLANES, BSQ_ALPHA, BSQ_STEP = 7, 2.0, dict(lr=0.05, momentum=0.9, weight_decay=1e-4)


def make_cifar(rng, n_train, n_test):
    data = {}
    for name, n in [("data_batch_%d.bin" % i, n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[name] = (pixels.reshape(n, 3, 32, 32), labels)
    return data


def write_cifar(folder, data):
    """A CIFAR-10 binary folder: five training files and a test file."""
    os.makedirs(folder, exist_ok=True)
    for name, (pixels, labels) in data.items():
        rec = np.concatenate([labels[:, None], pixels.reshape(len(labels), -1)], axis=1)
        rec.tofile(os.path.join(folder, name))


class Psgd:
    """PSGD's gradient scaling as BSQ_PSGD.md section 2 specifies it, written for PyTorch: per
    weight tensor (conv and fc weights; every one at the same bits here), a range averaged
    over the steps, delta = max(-lo, hi) / L, grad *= lambda * |w - Q(w)|."""

    def __init__(self, model, bits, lam):
        self.weights = [p for p in model.parameters() if p.dim() > 1]
        self.L = 2 ** (bits - 1) - 1
        self.lam = lam
        self.ranges = {}

    @torch.no_grad()
    def scale(self):
        for p in self.weights:
            lo, hi = torch.clamp(p.min(), max=0), torch.clamp(p.max(), min=0)
            if id(p) in self.ranges:
                r = self.ranges[id(p)]
                lo, hi = 0.1 * lo + 0.9 * r[0], 0.1 * hi + 0.9 * r[1]
            self.ranges[id(p)] = (lo, hi)
            delta = torch.maximum(-lo, hi) / self.L
            q = delta * torch.round(torch.clamp(p / delta, -self.L, self.L))
            p.grad.mul_(self.lam * (p - q).abs())


class Bsq:
    """BSQ's bit planes as BSQ_PSGD.md section 1 specifies them, written for PyTorch: every conv
    and fc weight becomes PLANES planes p, n (from s = max |w|, q = round(|w| k / s)) and a
    scale s; W = s sign(c) round(min(|c|, 1) k) / k, c = sum_b (p_b - n_b) 2^(N-1-b) / k, with
    the clamp and the rounding straight through; the loss adds alpha * R / TP; after each step
    the planes are clamped to [0, 2]."""

    def __init__(self, model, planes, alpha):
        self.model, self.N, self.alpha = model, planes, alpha
        self.k = float(2 ** planes - 1)
        self.layers = {}
        for name, prm in model.named_parameters():
            if prm.dim() < 2:
                continue
            w = prm.detach()
            s = w.abs().max()
            q = torch.round(w.abs() * self.k / s).to(torch.int64)
            bits = torch.stack([(q >> (planes - 1 - b)) & 1 for b in range(planes)]).float()
            pos = (w > 0).float()
            self.layers[name] = (
                (bits * pos).requires_grad_(), (bits * (1 - pos)).requires_grad_(),
                s.reshape(1).clone().requires_grad_())
        self.tp = sum(p.shape[1:].numel() for p, _, _ in self.layers.values())

    def params(self):
        rest = [p for n, p in self.model.named_parameters() if n not in self.layers]
        return [t for l in self.layers.values() for t in l] + rest

    def weights(self):
        out = {}
        scale = torch.tensor([2.0 ** (self.N - 1 - b) for b in range(self.N)])
        for name, (p, n, s) in self.layers.items():
            c = ((p - n) * scale.view(-1, *[1] * (p.dim() - 1))).sum(0) / self.k
            unit = torch.sign(c) * torch.round(torch.clamp(c.abs(), max=1) * self.k) / self.k
            out[name] = s * (c + (unit - c).detach())
        return out

    def regularizer(self):
        r = 0
        for p, n, _ in self.layers.values():
            count = p.shape[1:].numel()
            norms = torch.sqrt(1e-8 + (p * p + n * n).flatten(1).sum(1))
            r = r + count * self.N * norms.sum()
        return self.alpha * r / self.tp

    def loss(self, x, y):
        logits = stateless.functional_call(self.model, self.weights(), (x,))
        return F.cross_entropy(logits, y) + self.regularizer()

    @torch.no_grad()
    def clamp(self):
        for p, n, _ in self.layers.values():
            p.clamp_(0, 2)
            n.clamp_(0, 2)


def torch_steps(m, x, y, steps, psgd=None):
    opt = torch.optim.SGD(m.parameters(), **STEP3)
    for _ in range(steps):
        m.train()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        if psgd:
            psgd.scale()
        opt.step()


def closest_kink(inits, pixels, labels):
    """Smallest |ReLU input| over a forward of the batch and 3 SGD steps in PyTorch, plain and
    with PSGD's scaling."""
    closest = [float("inf")]
    relu = F.relu

    def watching(x, *a, **k):
        closest[0] = min(closest[0], float(x.detach().abs().min()))
        return relu(x, *a, **k)

    x, y = normalized(pixels), torch.from_numpy(labels.astype(np.int64))
    F.relu = watching
    try:
        for psgd in (False, True):
            m = torch_model(inits)
            torch_steps(m, x, y, 3, Psgd(m, PSGD_BITS, PSGD_LAMBDA) if psgd else None)
        bsq_steps(torch_model(inits), x, y, 3)
    finally:
        F.relu = relu
    return closest[0]


def bsq_steps(m, x, y, steps):
    bsq = Bsq(m, BSQ_PLANES, BSQ_ALPHA)
    opt = torch.optim.SGD(bsq.params(), **BSQ_STEP)
    for _ in range(steps):
        m.train()
        opt.zero_grad()
        bsq.loss(x, y).backward()
        opt.step()
        bsq.clamp()
    return bsq


def initializers(path):
    return {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(path).graph.initializer}


def torch_model(inits):
    m = models.CifarResNet(20)
    state = {k: torch.from_numpy(v) for k, v in inits.items()}
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return m


def normalized(pixels):
    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.array(MEAN, np.float32)[None, :, None, None]
    std = np.array(STD, np.float32)[None, :, None, None]
    return torch.from_numpy((x - mean) / std)


def rel_close(got, want, what):
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    assert_close(got, want, REL, what, scale=max(scale, 1e-12))


@pytest.fixture(scope="module")
def setup(qtune, tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    model = str(d / "r20.onnx")
    r = qtune("init", "resnet20", "--input", "3x32x32", "--classes", "10", "--seed", "5", "-o", model)
    assert r.returncode == 0, r.describe()
    inits = initializers(model)
    torch.set_num_threads(2)
    for seed in range(1000):
        data = make_cifar(np.random.default_rng(seed), BATCH, BATCH)
        if closest_kink(inits, *data["data_batch_1.bin"]) > KINK:
            break
    else:
        pytest.fail("no batch without ReLU inputs near 0 found")
    write_cifar(str(d / "cifar"), data)
    return d, model, data


def train(qtune, model, d, out, *extra):
    args = ["train", model, "--data", str(d / "cifar"), "--batch", BATCH, "--train-limit", BATCH,
            "--test-limit", BATCH, "--no-augment", "--schedule", "const", "--threads", "2",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--quiet",
            "-o", out] + list(extra)
    r = qtune(*args)
    assert r.returncode == 0, r.describe()
    return r


def test_loss_gradients_and_running_stats(qtune, setup):
    d, model, data = setup
    # lr 1, no momentum or weight decay: p1 = p0 - grad exposes every gradient.
    out = str(d / "step1.onnx")
    train(qtune, model, d, out, "--epochs", "1", "--lr", "1", "--momentum", "0", "--wd", "0")
    p0, p1 = initializers(model), initializers(out)
    with open(str(d / "step1.log.jsonl")) as f:
        qt_loss = json.loads(f.readline())["train_loss"]

    torch.set_num_threads(2)
    m = torch_model(p0)
    m.train()
    pixels, labels = data["data_batch_1.bin"]
    logits = m(normalized(pixels))
    loss = F.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    assert abs(qt_loss - loss.item()) <= REL * abs(loss.item()), (qt_loss, loss.item())

    checked = 0
    for name, p in m.named_parameters():
        grad = (p0[name].astype(np.float64) - p1[name].astype(np.float64))
        rel_close(grad, p.grad.numpy().astype(np.float64), "gradient of " + name)
        checked += 1
    assert checked == 65  # 19 conv + 2 shortcut conv weights, 21 x 2 BatchNorm, fc weight and bias
    for name, buf in m.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        rel_close(p1[name], buf.numpy(), "running statistic " + name)


def test_three_sgd_steps(qtune, setup):
    d, model, data = setup
    out = str(d / "step3.onnx")
    train(qtune, model, d, out, "--epochs", "3", "--lr", str(STEP3["lr"]), "--momentum",
          str(STEP3["momentum"]), "--wd", str(STEP3["weight_decay"]))
    got = initializers(out)

    torch.set_num_threads(2)
    m = torch_model(initializers(model))
    pixels, labels = data["data_batch_1.bin"]
    torch_steps(m, normalized(pixels), torch.from_numpy(labels.astype(np.int64)), 3)
    for name, t in m.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        rel_close(got[name], t.numpy(), "after 3 steps: " + name)


def test_three_psgd_steps(qtune, setup):
    """PSGD: 3 steps with momentum and weight decay match the PyTorch implementation of the
    specification, and the scaling changed the trajectory (the plain run differs)."""
    d, model, data = setup
    out, plain = str(d / "psgd3.onnx"), str(d / "step3.onnx")
    r = train(qtune, model, d, out, "--epochs", "3", "--lr", str(STEP3["lr"]), "--momentum",
              str(STEP3["momentum"]), "--wd", str(STEP3["weight_decay"]), "--psgd", "--wbits",
              str(PSGD_BITS), "--lambda-s", str(PSGD_LAMBDA), "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["psgd"] == {"wbits": 4, "tensors": 22, "min_bits": 4, "max_bits": 4}, summary
    got = initializers(out)

    torch.set_num_threads(2)
    m = torch_model(initializers(model))
    pixels, labels = data["data_batch_1.bin"]
    torch_steps(m, normalized(pixels), torch.from_numpy(labels.astype(np.int64)), 3,
                Psgd(m, PSGD_BITS, PSGD_LAMBDA))
    for name, t in m.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        rel_close(got[name], t.numpy(), "after 3 PSGD steps: " + name)
    if not os.path.exists(plain):
        train(qtune, model, d, plain, "--epochs", "3", "--lr", str(STEP3["lr"]), "--momentum",
              str(STEP3["momentum"]), "--wd", str(STEP3["weight_decay"]))
    base = initializers(plain)
    moved = [k for k in got if got[k].ndim > 1 and not np.allclose(got[k], base[k], rtol=1e-3, atol=0)]
    assert len(moved) == 22, "PSGD changed only %d of 22 weight tensors" % len(moved)


@pytest.mark.parametrize("psgd", [[], ["--psgd", "--wbits", "3"]], ids=["sgd", "psgd"])
def test_resume_is_bit_exact(qtune, setup, tmp_path, psgd):
    """Also with PSGD, whose grid ranges are training state (3 bits: the first and last
    layers' grids are 8-bit, the others 3-bit)."""
    d, model, _ = setup
    common = ["--lr", "0.05", "--momentum", "0.9", "--wd", "5e-4"] + psgd
    # A dataset of two batches with augmentation on, so shuffling and crops matter.
    def run(out, *extra):
        args = ["train", model, "--data", str(d / "cifar"), "--batch", "1", "--train-limit", "2",
                "--test-limit", "2", "--schedule", "step", "--milestones", "1.5", "--threads", "2", "--seed", "9",
                "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--quiet",
                "-o", out] + common + list(extra)
        r = qtune(*args)
        assert r.returncode == 0, r.describe()

    straight = str(tmp_path / "straight.onnx")
    run(straight, "--epochs", "2")
    first = str(tmp_path / "first.onnx")
    run(first, "--epochs", "1")
    resumed = str(tmp_path / "resumed.onnx")
    # Step milestones are absolute (unlike cosine, which spans the planned epochs), so a
    # 1-epoch run continued for a second epoch follows the 2-epoch run's learning rates.
    run(resumed, "--epochs", "2", "--resume", first + ".ckpt")
    a, b = initializers(straight), initializers(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), "resumed run differs in " + k


def test_resume_needs_the_same_psgd_options(qtune, setup, tmp_path):
    d, model, _ = setup
    base = ["train", model, "--data", str(d / "cifar"), "--batch", "1", "--train-limit", "2",
            "--test-limit", "2", "--threads", "2", "--quiet", "--schedule", "const",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    first = str(tmp_path / "first.onnx")
    r = qtune(*base, "--epochs", "1", "--psgd", "-o", first)
    assert r.returncode == 0, r.describe()
    for extra, words in [([], "with --psgd --lambda-s 150"), (["--psgd", "--lambda-s", "10"], "with --psgd --lambda-s 150"),
                         (["--psgd", "--wbits", "3"], "another grid")]:
        r = qtune(*base, "--epochs", "2", "--resume", first + ".ckpt", "-o",
                  str(tmp_path / "again.onnx"), *extra)
        assert r.returncode != 0 and words in r.stderr, (extra, r.describe())
    plain = str(tmp_path / "plain.onnx")
    r = qtune(*base, "--epochs", "1", "-o", plain)
    assert r.returncode == 0, r.describe()
    r = qtune(*base, "--epochs", "2", "--resume", plain + ".ckpt", "--psgd", "-o",
              str(tmp_path / "again.onnx"))
    assert r.returncode != 0 and "without --psgd" in r.stderr, r.describe()


def test_three_bsq_steps(qtune, setup):
    """BSQ: 3 steps of the bit planes (with the regularizer, momentum, weight decay and the
    clamp) match the PyTorch implementation of the specification: planes, scales, BatchNorm."""
    d, model, data = setup
    out = str(d / "bsq.onnx")
    r = qtune("finetune", model, "--data", str(d / "cifar"), "--batch", BATCH, "--train-limit",
              BATCH, "--test-limit", BATCH, "--no-augment", "--schedule", "const", "--threads",
              "2", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
              "--quiet", "--mixed", "bsq", "--abits", "0", "--bsq-epochs", "3",
              "--bsq-interval", "3", "--bsq-lr", str(BSQ_STEP["lr"]), "--decay", str(BSQ_ALPHA),
              "--momentum", str(BSQ_STEP["momentum"]), "--wd", str(BSQ_STEP["weight_decay"]),
              "--epochs", "0", "--json", "-o", out)
    assert r.returncode == 0, r.describe()
    got = initializers(str(d / "bsq.bsq.onnx"))
    torch.set_num_threads(2)
    m = torch_model(initializers(model))
    pixels, labels = data["data_batch_1.bin"]
    bsq = bsq_steps(m, normalized(pixels), torch.from_numpy(labels.astype(np.int64)), 3)
    checked = 0
    for name, (p, n, s) in bsq.layers.items():
        for suffix, t in (("p", p), ("n", n), ("s", s)):
            key = "%s.bsq_%s" % (name, suffix)
            assert got[key].shape == tuple(t.shape), (key, got[key].shape, t.shape)
            rel_close(got[key], t.detach().numpy(), "after 3 BSQ steps: " + key)
            checked += 1
    assert checked == 3 * 22
    for name, t in m.state_dict().items():
        if name in bsq.layers or name.endswith("num_batches_tracked"):
            continue
        rel_close(got[name], t.numpy(), "after 3 BSQ steps: " + name)
    # the planes moved off their bits, within [0, 2]
    moved = sum(int(np.any((got[k] % 1) != 0)) for k in got if k.endswith(".bsq_p"))
    assert moved == 22 and all(got[k].min() >= 0 and got[k].max() <= 2 for k in got if
                               k.endswith((".bsq_p", ".bsq_n")))
