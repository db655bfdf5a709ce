"""What the PyTorch parity tests of small exported models share: the export that keeps
training-mode BatchNorms, the search for a batch whose ReLU inputs all stay clear of 0, one
plain SGD step run by `qtune train`, and `qtune run` against PyTorch's forward."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import assert_close
from test_train_parity import KINK, MEAN, STD, initializers


def export(m, path, input_shape, output_name):
    """m (in evaluation mode) to ONNX at opset 13, batch size dynamic, BatchNorms kept as
    they are (no folding), so that qtune trains the same parameters PyTorch does."""
    m.eval()
    torch.onnx.export(m, torch.zeros(*input_shape), path, opset_version=13,
                      input_names=["input"], output_names=[output_name],
                      dynamic_axes={"input": {0: "N"}, output_name: {0: "N"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)


def min_relu_input(m, x, outputs_of=None):
    """The smallest |ReLU input| of a training-mode forward of m on x: the outputs of the
    modules outputs_of (those the functional ReLUs read), or else the inputs of every
    nn.ReLU module (read before an in-place ReLU runs)."""
    seen = []
    if outputs_of is None:
        hooks = [r.register_forward_pre_hook(lambda mod, i: seen.append(i[0].detach().abs().min()))
                 for r in m.modules() if isinstance(r, nn.ReLU)]
    else:
        hooks = [k.register_forward_hook(lambda mod, i, o: seen.append(o.detach().abs().min()))
                 for k in outputs_of]
    m.train()
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    assert seen, "no ReLU input seen"
    return float(min(seen))


def kink_free(m, make, to_input, relu_inputs_of=None, tries=1000, kink=KINK):
    """The data make(rng) of the first seed whose training-mode forward (to_input(data))
    has no ReLU input within kink of 0: such an input may take either side in another
    correct implementation (test_train_parity). relu_inputs_of(copy) names the modules of a
    copy of m whose outputs the ReLUs read (None: the nn.ReLU modules)."""
    for seed in range(tries):
        data = make(np.random.default_rng(seed))
        t = copy.deepcopy(m)
        mods = relu_inputs_of(t) if relu_inputs_of else None
        if min_relu_input(t, to_input(data), mods) > kink:
            return data
    pytest.fail("no batch without ReLU inputs near 0 found")


def sgd_step(qtune, model, data, out, batch, lr=1.0, device=None):
    """One step of plain SGD (no momentum, weight decay, augmentation or schedule) by `qtune
    train` on the first `batch` training images of data, normalized with MEAN and STD:
    (the step's loss, the initializers of the model it writes to out)."""
    args = ["train", model, "--data", data, "--batch", batch, "--train-limit", batch,
            "--test-limit", batch, "--no-augment", "--schedule", "const", "--threads", "2",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--quiet",
            "--epochs", "1", "--lr", str(lr), "--momentum", "0", "--wd", "0", "-o", out]
    if device:
        args += ["--device", device]
    qtune(*args).check_ok()
    with open(os.path.splitext(out)[0] + ".log.jsonl") as f:
        return json.loads(f.readline())["train_loss"], initializers(out)


def run_matches(qtune, model, x, want, tmp_path, rel, what):
    """`qtune run` of model on x (a tensor) gives want within rel of max |want|; returns the
    output."""
    np.save(str(tmp_path / "x.npy"), x.numpy())
    qtune("run", model, "--input", str(tmp_path / "x.npy"), "--output",
          str(tmp_path / "y.npy")).check_ok()
    got = np.load(str(tmp_path / "y.npy"))
    assert_close(got, want, rel, what, scale=float(np.abs(want).max()))
    return got
