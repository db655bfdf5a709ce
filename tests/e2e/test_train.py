"""CLI scenarios of `qtune train`: a short real run on Fashion-MNIST, Ctrl-C writing a
checkpoint that resumes, a diverging run stopped with a clear message, bad options and
damaged checkpoints."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

FMNIST = "/usr/share/datasets/fashion-mnist"


def need_fmnist():
    if not os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def small_model(qtune, tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    m = str(d / "r20.onnx")
    r = qtune("init", "resnet20", "--input", "1x28x28", "--classes", "10", "-o", m)
    assert r.returncode == 0, r.describe()
    return m


def weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_short_run_learns_and_reloads(qtune, small_model, tmp_path):
    need_fmnist()
    out = str(tmp_path / "out.onnx")
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "2048", "--test-limit", "1000", "--lr", "0.1", "--json", "-o", out)
    assert r.returncode == 0, r.describe()
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["epochs"] == 2 and res["steps"] == 32
    assert res["top1"] > 50, res  # untrained: 10%
    with open(str(tmp_path / "out.log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [e["epoch"] for e in log] == [1, 2] and log[1]["train_loss"] < log[0]["train_loss"]
    assert os.path.exists(str(tmp_path / "out.best.onnx"))
    onnx.checker.check_model(onnx.load(out))
    # The output carries its normalization: eval needs no preset and agrees with training.
    e = qtune("eval", out, "--data", FMNIST, "--limit", "1000", "--json", "--quiet")
    assert e.returncode == 0, e.describe()
    assert abs(json.loads(e.stdout.strip().splitlines()[-1])["top1"] - res["top1"]) < 1e-6


@pytest.mark.badinput
def test_ctrl_c_writes_checkpoint_and_resumes(qtune, small_model, tmp_path):
    need_fmnist()
    out = str(tmp_path / "int.onnx")
    args = [qtune.path, "train", small_model, "--data", FMNIST, "--preset", "fashion-mnist",
            "--epochs", "1", "--train-limit", "12800", "--test-limit", "500", "--quiet", "-o", out]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr and os.path.exists(out + ".ckpt")
    assert not os.path.exists(out)
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "1",
              "--train-limit", "12800", "--test-limit", "500", "--quiet", "--resume", out + ".ckpt",
              "-o", out, timeout=900)
    assert r.returncode == 0, r.describe()
    # Interrupted (mid-epoch) and resumed equals uninterrupted, bit for bit.
    straight = str(tmp_path / "straight.onnx")
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "1",
              "--train-limit", "12800", "--test-limit", "500", "--quiet", "-o", straight, timeout=900)
    assert r.returncode == 0, r.describe()
    a, b = weights(out), weights(straight)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), "resumed run differs in " + k


@pytest.mark.badinput
def test_divergence_stops_with_message(qtune, small_model, tmp_path):
    need_fmnist()
    out = str(tmp_path / "nan.onnx")
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "3",
              "--train-limit", "512", "--test-limit", "128", "--lr", "1e30", "--quiet", "-o", out)
    assert r.returncode == 1, r.describe()
    assert "qtune: error:" in r.stderr and ("NaN" in r.stderr or "infinite" in r.stderr or
                                             "non-finite" in r.stderr), r.stderr
    assert not os.path.exists(out)


@pytest.mark.badinput
@pytest.mark.parametrize("args,needle", [
    (["--epochs", "1"], "usage"),
    (["--epochs", "x", "-o", "o.onnx"], "--epochs"),
    (["--epochs", "1", "--schedule", "warp", "-o", "o.onnx"], "--schedule"),
    (["--epochs", "1", "--lr", "-1", "-o", "o.onnx"], "--lr"),
    (["--epochs", "1", "--label-smoothing", "1.5", "-o", "o.onnx"], "smoothing"),
    (["--epochs", "1", "--mean", "0.5", "-o", "o.onnx"], "--mean and --std"),
])
def test_bad_options(qtune, small_model, tmp_path, args, needle):
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist",
              *[str(tmp_path / a) if a.endswith(".onnx") else a for a in args])
    assert r.returncode == 1, r.describe()
    assert needle in r.stderr, r.stderr


@pytest.mark.badinput
def test_damaged_checkpoint_refused(qtune, small_model, tmp_path):
    need_fmnist()
    out = str(tmp_path / "c.onnx")
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "1",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "-o", out)
    assert r.returncode == 0, r.describe()
    ck = out + ".ckpt"
    data = bytearray(open(ck, "rb").read())
    data[len(data) // 2] ^= 0xFF
    bad = str(tmp_path / "bad.ckpt")
    open(bad, "wb").write(bytes(data))
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", bad, "-o", out)
    assert r.returncode == 1 and "damaged" in r.stderr, r.describe()
    open(bad, "wb").write(bytes(data[:40]))
    r = qtune("train", small_model, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", bad, "-o", out)
    assert r.returncode == 1 and "checkpoint" in r.stderr, r.describe()
    # A checkpoint of another model is refused by name.
    other = str(tmp_path / "r32.onnx")
    assert qtune("init", "resnet32", "--input", "1x28x28", "--classes", "10", "-o", other).returncode == 0
    r = qtune("train", other, "--data", FMNIST, "--preset", "fashion-mnist", "--epochs", "2",
              "--train-limit", "256", "--test-limit", "128", "--quiet", "--resume", ck, "-o", out)
    assert r.returncode == 1 and "another model" in r.stderr, r.describe()
