"""The same commands on the cpu backend and on ref, the plain-loop reference backend whose
memory the host cannot read: `train`, `finetune` (W4A4 APoT, post-training quantization and a
fine-tuning epoch) and `eval` on a Fashion-MNIST subset give the same loss at every step and
the same accuracy. Sizes are small because ref is slow (single-threaded loops)."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import fashion_mnist

STEP_RTOL = 1e-3  # per-step training loss, relative
EVAL_RTOL = 1e-4  # evaluation loss of one model, relative
COMMON = ["--preset", "fashion-mnist", "--batch", "32", "--threads", "2", "--quiet", "--json"]


@pytest.fixture(scope="module")
def fmnist():
    return fashion_mnist()


@pytest.fixture(scope="module")
def model(qtune, tmp_path_factory):
    p = str(tmp_path_factory.mktemp("devices") / "r20.onnx")
    qtune("init", "resnet20", "--input", "1x28x28", "--classes", "10", "--seed", "3",
          "-o", p).check_ok()
    return p


def step_losses(out):
    with open(out[:-len(".onnx")] + ".log.jsonl") as f:
        return [s for line in f for s in json.loads(line)["step_loss"]]


def inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def run_both(qtune, tmp_path, *args):
    """Runs qtune *args -o OUT on cpu and on ref; returns {device: (json, out path)}."""
    res = {}
    for dev in ("cpu", "ref"):
        out = str(tmp_path / ("%s.onnx" % dev))
        r = qtune(*args, "--device", dev, "-o", out, timeout=1200).check_ok()
        res[dev] = (r.json(), out)
    return res


def check_steps(res):
    a, b = step_losses(res["cpu"][1]), step_losses(res["ref"][1])
    assert len(a) == len(b) and len(a) > 0, (a, b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.isfinite(x) and np.isfinite(y) and abs(x - y) <= STEP_RTOL * abs(y), (
            "step %d: loss %.7g on cpu, %.7g on ref" % (i + 1, x, y))


def check_same_weights(res, rtol):
    a, b = inits(res["cpu"][1]), inits(res["ref"][1])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        scale = float(np.max(np.abs(b[k]))) if b[k].size else 0.0
        err = float(np.max(np.abs(a[k] - b[k]))) if b[k].size else 0.0
        assert err <= rtol * max(scale, 1e-6), "%s differs: %.3g (max |ref| %.3g)" % (k, err, scale)


def test_train_same_on_ref(qtune, fmnist, model, tmp_path):
    res = run_both(qtune, tmp_path, "train", model, "--data", fmnist, "--epochs", "1",
                   "--train-limit", "128", "--test-limit", "64", "--lr", "0.05", *COMMON)
    check_steps(res)
    # Four SGD steps from the same start: weights agree closely; the test loss (running
    # BatchNorm statistics of four batches) to 1e-2, and top-1 to one image of the 64 (a
    # logit pair within rounding of a tie may rank differently).
    check_same_weights(res, 2e-3)
    j, k = res["cpu"][0], res["ref"][0]
    assert abs(j["loss"] - k["loss"]) <= 1e-2 * k["loss"], (j, k)
    assert abs(j["top1"] - k["top1"]) <= 100.0 / 64 + 1e-9, (j, k)


def test_eval_same_on_ref(qtune, fmnist, model):
    res = {}
    for dev in ("cpu", "ref"):
        res[dev] = qtune("eval", model, "--data", fmnist, "--limit", "128", "--device", dev,
                         "--preset", "fashion-mnist", "--batch", "64", "--quiet", "--json",
                         timeout=1200).check_ok().json()
    a, b = res["cpu"], res["ref"]
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"], (a, b)
    assert abs(a["loss"] - b["loss"]) <= EVAL_RTOL * b["loss"], (a, b)


def test_finetune_same_on_ref(qtune, fmnist, model, tmp_path):
    # Post-training quantization: calibrated alphas, re-estimated statistics, the accuracy.
    ptq = tmp_path / "ptq"
    ptq.mkdir()
    res = run_both(qtune, ptq, "finetune", model, "--data", fmnist, "--bits", "4", "--epochs",
                   "0", "--alpha-init", "calib", "--calib-batches", "2", "--test-limit", "64",
                   *COMMON)
    check_same_weights(res, 1e-4)
    a, b = res["cpu"][0], res["ref"][0]
    assert abs(a["ptq_top1"] - b["ptq_top1"]) <= 100.0 / 64 + 1e-9, (a, b)
    # One epoch of quantization-aware fine-tuning from there.
    ft = tmp_path / "ft"
    ft.mkdir()
    res = run_both(qtune, ft, "finetune", model, "--data", fmnist, "--bits", "4", "--epochs",
                   "1", "--alpha-init", "calib", "--calib-batches", "2", "--train-limit", "64",
                   "--test-limit", "64", "--lr", "0.01", *COMMON)
    check_steps(res)
