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
# Per-step loss of quantized training: convolutions summed in another order give activations
# that differ by ~1e-6 relative, and the few that lie that close to a level midpoint take the
# neighbouring level (a whole step) on one backend; a batch of 4-bit activations has tens of
# such flips, which move the loss by up to ~3e-3 (seen on a ResNet-20 batch of 32).
QSTEP_RTOL = 1e-2
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


def check_steps(res, rtol=STEP_RTOL):
    a, b = step_losses(res["cpu"][1]), step_losses(res["ref"][1])
    assert len(a) == len(b) and len(a) > 0, (a, b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.isfinite(x) and np.isfinite(y) and abs(x - y) <= rtol * abs(y), (
            "step %d: loss %.7g on cpu, %.7g on ref" % (i + 1, x, y))


def test_train_same_on_ref(qtune, fmnist, model, tmp_path):
    res = run_both(qtune, tmp_path, "train", model, "--data", fmnist, "--epochs", "1",
                   "--train-limit", "128", "--test-limit", "64", "--lr", "0.05", *COMMON)
    check_steps(res)
    # The test loss (running BatchNorm statistics of four batches) agrees to 1e-2, top-1 to
    # one image of the 64 (a logit pair within rounding of a tie may rank differently).
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


@pytest.fixture(scope="module")
def trained(qtune, fmnist, model, tmp_path_factory):
    """The model after a short FP32 training on cpu (quantizing an untrained network gives
    chance accuracy, which would compare nothing)."""
    p = str(tmp_path_factory.mktemp("devices_fp") / "fp.onnx")
    qtune("train", model, "--data", fmnist, "--epochs", "1", "--train-limit", "1024",
          "--test-limit", "64", "--lr", "0.05", *COMMON, "-o", p).check_ok()
    return p


def test_finetune_same_on_ref(qtune, fmnist, trained, tmp_path):
    # Post-training quantization on each backend: calibration runs there. The first activation
    # quantizer sees the same data up to rounding and gets the same alpha; deeper ones may not:
    # each alpha is the minimum of a flat error curve, searched on a 1% grid, and two nearly
    # equal candidates can swap on a rounding difference (seen: 3% on a middle layer of an
    # untrained model), which then moves every statistic after it. So only the first alpha is
    # compared, and the calibrated model of one backend is what both continue from.
    # (The model was trained briefly in FP32: quantizing an untrained one gives chance
    # accuracy.)
    ptq = tmp_path / "ptq"
    ptq.mkdir()
    res = run_both(qtune, ptq, "finetune", trained, "--data", fmnist, "--bits", "4", "--epochs",
                   "0", "--alpha-init", "calib", "--calib-batches", "2", "--test-limit", "64",
                   *COMMON)
    a, b = inits(res["cpu"][1]), inits(res["ref"][1])
    first = onnx.load(res["cpu"][1]).graph
    act = [n for n in first.node if n.op_type == "ActQuant"][0].input[1]
    assert abs(a[act][0] - b[act][0]) <= 1e-4 * abs(b[act][0]), (act, a[act], b[act])
    q = res["cpu"][1]
    # The quantized model evaluates the same on both.
    ev = {}
    for dev in ("cpu", "ref"):
        ev[dev] = qtune("eval", q, "--data", fmnist, "--limit", "128", "--device", dev,
                        "--batch", "64", "--quiet", "--json", timeout=1200).check_ok().json()
    # (loss to 2e-3: an activation within rounding of a level midpoint may take the
    # neighbouring level, a whole step, on one backend; 3e-4 seen)
    assert ev["cpu"]["top1"] == ev["ref"]["top1"], ev
    assert abs(ev["cpu"]["loss"] - ev["ref"]["loss"]) <= 2e-3 * ev["ref"]["loss"], ev
    # One epoch of quantization-aware fine-tuning from it (alphas kept; BatchNorm statistics
    # re-estimated on each backend): the same loss at every step.
    ft = tmp_path / "ft"
    ft.mkdir()
    res = run_both(qtune, ft, "finetune", q, "--data", fmnist, "--bits", "4", "--epochs", "1",
                   "--alpha-init", "paper", "--calib-batches", "2", "--train-limit", "64",
                   "--test-limit", "64", "--lr", "0.01", *COMMON)
    check_steps(res, QSTEP_RTOL)
    j, k = res["cpu"][0], res["ref"][0]
    assert abs(j["top1"] - k["top1"]) <= 100.0 / 64 + 1e-9, (j, k)


def test_checkpoint_resumes_on_the_other_backend(qtune, fmnist, model, tmp_path):
    """A checkpoint is device-neutral: one epoch on cpu, then --resume on ref for the second
    gives the same second-epoch losses as two epochs straight on cpu (and the reverse)."""
    args = ["--data", fmnist, "--train-limit", "96", "--test-limit", "32", "--lr", "0.05",
            "--schedule", "step", "--milestones", "1", "--seed", "5"] + COMMON
    straight = str(tmp_path / "straight.onnx")
    qtune("train", model, "--epochs", "2", "--device", "cpu", "-o", straight, *args).check_ok()
    want = step_losses(straight)
    assert len(want) == 6, want
    for first_dev, then_dev in (("cpu", "ref"), ("ref", "cpu")):
        first = str(tmp_path / ("first_%s.onnx" % first_dev))
        qtune("train", model, "--epochs", "1", "--device", first_dev, "-o", first, *args,
              timeout=1200).check_ok()
        resumed = str(tmp_path / ("resumed_%s.onnx" % then_dev))
        qtune("train", model, "--epochs", "2", "--device", then_dev, "--resume", first + ".ckpt",
              "-o", resumed, *args, timeout=1200).check_ok()
        got = step_losses(resumed)
        assert len(got) == 3, got
        for i, (x, y) in enumerate(zip(got, want[3:])):
            assert np.isfinite(x) and abs(x - y) <= STEP_RTOL * abs(y), (
                "%s -> %s, epoch 2 step %d: %.7g, straight on cpu %.7g"
                % (first_dev, then_dev, i + 1, x, y))


def test_auto_device_choice(qtune, fmnist, model):
    """--device auto (the default) is cuda where `--device cuda` works; in a CUDA build on a
    machine without a usable GPU it falls back to the CPU with one note giving cuda's reason;
    a build without CUDA uses the CPU silently."""
    args = ["eval", model, "--data", fmnist, "--limit", "64", "--preset", "fashion-mnist",
            "--quiet", "--json"]
    cuda = qtune(*args, "--device", "cuda")
    auto = qtune(*args).check_ok()
    auto_explicit = qtune(*args, "--device", "auto").check_ok()
    notes = [ln for ln in auto.stderr.splitlines() if ln.startswith("qtune: note: ")]
    assert notes == [ln for ln in auto_explicit.stderr.splitlines() if ln.startswith("qtune: note: ")]
    if cuda.returncode == 0:
        assert auto.json()["device"] == "cuda" and not notes, auto.describe()
        return
    cuda.check_no_crash()
    why = cuda.error_lines()[0].split("eval: ", 1)[1]
    assert auto.json()["device"] == "cpu", auto.describe()
    if "built without CUDA" in why:
        assert not notes, auto.describe()
    else:
        assert notes == ["qtune: note: %s; running on the CPU" % why], (notes, why)
