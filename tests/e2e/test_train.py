"""CLI scenarios of `qtune train`: a short real run on Fashion-MNIST, Ctrl-C writing a
checkpoint that resumes, a diverging run stopped with a clear message, bad options and
damaged checkpoints."""
import json
import os
import re
import signal

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import fashion_mnist


@pytest.fixture(scope="module")
def fmnist():
    """Fashion-MNIST's folder (required under CI=true)."""
    return fashion_mnist()


@pytest.fixture(scope="module")
def small_model(qtune, tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    m = str(d / "r20.onnx")
    r = qtune("init", "resnet20", "--input", "1x28x28", "--classes", "10", "-o", m)
    assert r.returncode == 0, r.describe()
    return m


def weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_short_run_learns_and_reloads(qtune, small_model, fmnist, tmp_path):
    out = str(tmp_path / "out.onnx")
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "2048", "--test-limit", "1000", "--lr", "0.1", "--json", "-o", out)
    res = r.check_ok().json()
    assert res["epochs"] == 2 and res["steps"] == 32
    with open(str(tmp_path / "out.log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [e["epoch"] for e in log] == [1, 2]
    # Learning, asserted with wide margins (32 steps give top-1 49-56% and a test loss of
    # 1.1-1.3 depending on the machine's numerics; chance is 10% and ln 10 = 2.30): the train
    # loss falls by a quarter at least, the test loss is well under chance, top-1 over 30%.
    assert log[1]["train_loss"] < 0.75 * log[0]["train_loss"], log
    assert res["loss"] < 1.7 and res["top1"] > 30, res
    assert os.path.exists(str(tmp_path / "out.best.onnx"))
    onnx.checker.check_model(onnx.load(out))
    # The output carries its normalization: eval needs no preset and agrees with training.
    e = qtune("eval", out, "--data", fmnist, "--limit", "1000", "--json", "--quiet").check_ok()
    assert abs(e.json()["top1"] - res["top1"]) < 1e-6


@pytest.mark.badinput
def test_ctrl_c_writes_checkpoint_and_resumes(qtune, small_model, fmnist, tmp_path):
    out = str(tmp_path / "int.onnx")
    common = ["train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "1",
              "--train-limit", "12800", "--test-limit", "500"]
    # SIGINT once the run reports its first batches (progress lines "epoch 1 ...: done/total"),
    # so the signal lands mid-epoch however fast or slow this build runs.
    run = qtune.start(*common, "-o", out)
    line = run.wait_for_stderr(lambda l: re.search(r"epoch 1 .*: (\d+)/12800", l), timeout=600)
    done = int(re.search(r": (\d+)/12800", line).group(1))
    assert 0 < done < 12800, line
    run.proc.send_signal(signal.SIGINT)
    r = run.finish(timeout=300)
    assert r.returncode == 130, r.describe()
    assert "interrupted" in r.stderr and os.path.exists(out + ".ckpt"), r.describe()
    assert not os.path.exists(out)
    qtune(*common, "--quiet", "--resume", out + ".ckpt", "-o", out, timeout=900).check_ok()
    # Interrupted (mid-epoch) and resumed equals uninterrupted, bit for bit.
    straight = str(tmp_path / "straight.onnx")
    qtune(*common, "--quiet", "-o", straight, timeout=900).check_ok()
    a, b = weights(out), weights(straight)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), "resumed run differs in " + k


@pytest.mark.badinput
def test_divergence_stops_with_message(qtune, small_model, fmnist, tmp_path):
    out = str(tmp_path / "nan.onnx")
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "3",
              "--train-limit", "512", "--test-limit", "128", "--lr", "1e30", "--quiet", "-o", out)
    r.check_error(("NaN", "infinite", "non-finite"))
    assert r.returncode == 1 and not os.path.exists(out), r.describe()


@pytest.mark.badinput
@pytest.mark.parametrize("args,needle", [
    (["--epochs", "1"], "usage"),
    (["--epochs", "x", "-o", "o.onnx"], "--epochs"),
    (["--epochs", "1", "--schedule", "warp", "-o", "o.onnx"], "--schedule"),
    (["--epochs", "1", "--lr", "-1", "-o", "o.onnx"], "--lr"),
    (["--epochs", "1", "--label-smoothing", "1.5", "-o", "o.onnx"], "smoothing"),
    (["--epochs", "1", "--mean", "0.5", "-o", "o.onnx"], "--mean and --std"),
])
def test_bad_options(qtune, small_model, fmnist, tmp_path, args, needle):
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist",
              *[str(tmp_path / a) if a.endswith(".onnx") else a for a in args])
    r.check_error(needle)
    assert r.returncode == 1, r.describe()


@pytest.mark.badinput
def test_damaged_checkpoint_refused(qtune, small_model, fmnist, tmp_path):
    out = str(tmp_path / "c.onnx")
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "1",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "-o", out)
    assert r.returncode == 0, r.describe()
    ck = out + ".ckpt"
    data = bytearray(open(ck, "rb").read())
    data[len(data) // 2] ^= 0xFF
    bad = str(tmp_path / "bad.ckpt")
    open(bad, "wb").write(bytes(data))
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", bad, "-o", out)
    r.check_error("damaged", bad)
    open(bad, "wb").write(bytes(data[:40]))
    r = qtune("train", small_model, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", bad, "-o", out)
    r.check_error("checkpoint", bad)
    # A checkpoint of another model is refused by name.
    other = str(tmp_path / "r32.onnx")
    qtune("init", "resnet32", "--input", "1x28x28", "--classes", "10", "-o", other).check_ok()
    r = qtune("train", other, "--data", fmnist, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", ck, "-o", out)
    r.check_error("another model")
