"""Faults qtune must survive: `qtune train` killed with SIGKILL at random moments (including
in the middle of checkpoint and model writes), a full disk (RLIMIT_FSIZE), NaN and Inf in
models, inputs and normalization, and data or model files truncated or replaced while a command
reads them."""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import datasets
from conftest import Result, check_sanitizers

try:
    from conftest import fashion_mnist
except ImportError:  # older conftest: the Debian package's folder
    def fashion_mnist():
        if not datasets.fashion_available():
            pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
        return datasets.FASHION_DIR


# ---------------------------------------------------------------------------------------------
# Helpers


def small_model(path, c=1, hw=28, hidden=512, seed=0):
    """A small classifier whose files are a few MB (so writes take a while) but whose steps are
    cheap: Conv 3x3/2 + BatchNorm + Relu, then two Gemm layers."""
    rng = np.random.default_rng(seed)
    flat = 8 * (hw // 2) * (hw // 2)

    def he(shape, fan):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32)

    inits = [numpy_helper.from_array(he((8, c, 3, 3), 9 * c), "c1.w"),
             numpy_helper.from_array(np.ones(8, np.float32), "bn1.s"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bn1.b"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bn1.m"),
             numpy_helper.from_array(np.ones(8, np.float32), "bn1.v"),
             numpy_helper.from_array(he((hidden, flat), flat), "fc1.w"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "fc1.b"),
             numpy_helper.from_array(he((10, hidden), hidden), "fc2.w"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc2.b")]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="conv1", pads=[1, 1, 1, 1],
                              strides=[2, 2], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c1", "bn1.s", "bn1.b", "bn1.m", "bn1.v"],
                              ["b1"], name="bn1"),
             helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             helper.make_node("Flatten", ["r1"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["g1"], name="fc1", transB=1),
             helper.make_node("Relu", ["g1"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "small",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return path


def edit_initializer(src, dst, name, index, value):
    m = onnx.load(src)
    for t in m.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            a.flat[index] = value
            t.CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(m, dst)
    return dst


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def assert_same_weights(got_path, want_path):
    """Every initializer of got_path equals want_path's bit for bit (same names, dtypes and
    shapes; NaN never equals)."""
    got, want = initializers(got_path), initializers(want_path)
    assert sorted(got) == sorted(want), (got_path, sorted(set(got) ^ set(want)))
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (k, got_path)
        assert np.all(np.isfinite(want[k])), (k, want_path)
        assert np.array_equal(got[k].view(np.uint8), want[k].view(np.uint8)), (
            "%s differs from %s in %s" % (got_path, want_path, k))


def log_records(path):
    """The per-epoch log without its timings: what a resumed run must reproduce exactly."""
    with open(path) as fh:
        recs = [json.loads(line) for line in fh]
    for r in recs:
        r.pop("seconds")
        r.pop("images_per_s")
        r.pop("data_seconds")
    return recs


def temp_files(folder):
    """Temporary files of atomic writes ("NAME.tmp.PID") in folder."""
    return sorted(f for f in os.listdir(folder) if ".tmp." in f)


def folder_state(folder):
    """{name: (size, mtime, inode)} of the files in folder."""
    state = {}
    for ent in os.scandir(folder):
        try:
            st = ent.stat()
            state[ent.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            pass
    return state


def env_for_runs():
    """The environment Cli gives qtune (sanitizer exit status), for processes started here."""
    import conftest
    env = dict(os.environ)
    fix = getattr(conftest, "_sanitizer_env", None)
    return fix(env) if fix else env


def run_with_limits(qtune, args, fsize=None, timeout=300):
    """Runs qtune with RLIMIT_FSIZE set to fsize bytes and SIGXFSZ ignored (the disposition
    survives exec), so a write past the limit fails with EFBIG as on a full disk."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    argv = [qtune.path] + [str(a) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=env_for_runs(), preexec_fn=preexec)
    return check_sanitizers(Result(argv, proc))


def open_fd(pid, path):
    """The descriptor number under which process pid has path open, or None."""
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path:
                    return fd
            except OSError:
                pass
    except OSError:
        pass
    return None


def fd_pos(pid, fd):
    try:
        with open("/proc/%d/fdinfo/%s" % (pid, fd)) as fh:
            for line in fh:
                if line.startswith("pos:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def stop_while_reading(argv, path, attempts=10):
    """Starts argv and stops it (SIGSTOP) while it has path open and has not read it to the
    end. Returns the stopped Popen, or None when no attempt caught the read."""
    size = os.path.getsize(path)
    for _ in range(attempts):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", env=env_for_runs())
        while p.poll() is None:
            fd = open_fd(p.pid, path)
            if fd is None:
                continue
            p.send_signal(signal.SIGSTOP)
            pos = fd_pos(p.pid, fd)
            if open_fd(p.pid, path) == fd and pos is not None and pos < size:
                return p
            p.send_signal(signal.SIGCONT)
            break
        p.kill()
        p.communicate()
    return None


def finish(p, argv):
    """Waits for a process started here (continuing it if stopped) and checks its end for
    sanitizer reports."""
    try:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("timed out: %s" % " ".join(argv))
    return check_sanitizers(Result(argv, subprocess.CompletedProcess(argv, p.returncode, out, err)))


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def fm_slice(tmp_path_factory):
    """256 training and 128 test images of Fashion-MNIST as plain IDX files."""
    src = fashion_mnist()
    d = str(tmp_path_factory.mktemp("fm_slice"))
    for split, n in (("train", 256), ("t10k", 128)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            a = datasets.read_idx(os.path.join(src, "%s-%s.gz" % (split, kind)))
            datasets.write_idx(os.path.join(d, "%s-%s" % (split, kind)), a[:n])
    return d


@pytest.fixture(scope="module")
def model28(tmp_path_factory):
    return small_model(str(tmp_path_factory.mktemp("m28") / "small.onnx"))


def train_args(model, data, out, epochs, *extra):
    return ["train", model, "--data", data, "--preset", "fashion-mnist", "--epochs", epochs,
            "--batch", "32", "--train-limit", "96", "--test-limit", "64", "--lr", "0.02",
            "--threads", "1", "--quiet", *extra, "-o", out]


# ---------------------------------------------------------------------------------------------
# 1. SIGKILL at random moments

KILL_EPOCHS = 12
KILL_TRIALS = 20


def test_kill9_never_leaves_truncated_files_and_resumes_bit_exact(qtune, fm_slice, model28,
                                                                  tmp_path):
    """20 runs killed with SIGKILL (seeded): half at moments spread over the run, half at the
    n-th change seen in the output folder (a temporary file appearing or growing, a file
    renamed into place: a checkpoint, best-model or final-model write in progress). After each
    kill every file under a final name loads (models with inspect, the checkpoint by resuming
    from it), and the resumed run ends with the same final and best weights, bit for bit, and
    the same per-epoch log (each epoch once) as an uninterrupted run."""
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = str(ref_dir / "out.onnx")
    t0 = time.monotonic()
    qtune(*train_args(model28, fm_slice, ref, KILL_EPOCHS)).check_ok()
    duration = time.monotonic() - t0
    ref_best = str(ref_dir / "out.best.onnx")
    assert os.path.exists(ref_best) and temp_files(str(ref_dir)) == []
    # The reference itself moved away from the initial weights (the comparison can fail).
    assert not np.array_equal(initializers(ref)["fc1.w"], initializers(model28)["fc1.w"])

    ref_log = log_records(str(ref_dir / "out.log.jsonl"))
    assert [r["epoch"] for r in ref_log] == list(range(1, KILL_EPOCHS + 1))
    rng = random.Random(20261129)
    caught_in_write = 0
    no_checkpoint = 0
    for trial in range(KILL_TRIALS):
        d = tmp_path / ("t%02d" % trial)
        d.mkdir()
        out = str(d / "out.onnx")
        ckpt = out + ".ckpt"
        argv = [qtune.path] + [str(a) for a in train_args(model28, fm_slice, out, KILL_EPOCHS)]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env_for_runs())
        if trial % 2 == 0:
            # A moment spread over the run's length.
            deadline = time.monotonic() + rng.uniform(0.02, 1.0) * duration
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            # The n-th change seen in the output folder (a file appearing, growing or being
            # replaced): each write (best model, checkpoint, final model) shows one to a few.
            target = rng.randint(1, 3 * KILL_EPOCHS)
            seen, before = 0, folder_state(str(d))
            while p.poll() is None and seen < target:
                now = folder_state(str(d))
                seen += now != before
                before = now
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        if temp_files(str(d)):
            caught_in_write += 1
        # An epoch's best model is written before its checkpoint (epoch 1 is always the best
        # so far), so a checkpoint never exists without it.
        if os.path.exists(ckpt):
            assert os.path.exists(str(d / "out.best.onnx")), "trial %d" % trial
        # Whatever is under a final name is complete.
        for name in ("out.onnx", "out.best.onnx"):
            path = str(d / name)
            if os.path.exists(path):
                qtune("inspect", path).check_ok()
                onnx.checker.check_model(onnx.load(path))
        if not os.path.exists(ckpt):
            no_checkpoint += 1
            assert not os.path.exists(out), "final model without a checkpoint in trial %d" % trial
            continue
        # The last checkpoint loads, and resuming from it gives the uninterrupted result.
        qtune(*train_args(model28, fm_slice, out, KILL_EPOCHS, "--resume", ckpt)).check_ok()
        assert_same_weights(out, ref)
        assert_same_weights(str(d / "out.best.onnx"), ref_best)
        assert log_records(str(d / "out.log.jsonl")) == ref_log, "trial %d" % trial
    print("kill -9: %d trials, %d killed while a temporary file existed, %d before the first "
          "checkpoint" % (KILL_TRIALS, caught_in_write, no_checkpoint))
    assert no_checkpoint < KILL_TRIALS


def test_kill9_right_after_first_checkpoint(qtune, fm_slice, model28, tmp_path):
    """Killed as soon as the first checkpoint is in place: the epoch's best model is already
    there too (it is written first), and resuming gives the uninterrupted run's best model."""
    ref = str(tmp_path / "ref.onnx")
    qtune(*train_args(model28, fm_slice, ref, 2)).check_ok()
    for trial in range(3):
        d = tmp_path / ("t%d" % trial)
        d.mkdir()
        out = str(d / "out.onnx")
        argv = [qtune.path] + [str(a) for a in train_args(model28, fm_slice, out, 2)]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env_for_runs())
        while p.poll() is None and not os.path.exists(out + ".ckpt"):
            pass
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert os.path.exists(out + ".ckpt") and os.path.exists(str(d / "out.best.onnx"))
        qtune(*train_args(model28, fm_slice, out, 2, "--resume", out + ".ckpt")).check_ok()
        assert_same_weights(out, ref)
        assert_same_weights(str(d / "out.best.onnx"), str(tmp_path / "ref.best.onnx"))


def test_resume_of_finished_run_reports_its_metrics(qtune, fm_slice, model28, tmp_path):
    """A run killed while writing its final model resumes from a checkpoint with no epoch
    left: it writes the model and reports the last epoch's test metrics (kept in the
    checkpoint), not zeros."""
    out = str(tmp_path / "out.onnx")
    first = qtune(*train_args(model28, fm_slice, out, 2, "--json")).check_ok().json()
    assert first["top1"] > 0 and first["loss"] > 0
    os.remove(out)
    again = qtune(*train_args(model28, fm_slice, out, 2, "--json", "--resume",
                              out + ".ckpt")).check_ok().json()
    for k in ("top1", "top5", "loss", "best_top1", "best_epoch", "epochs", "steps"):
        assert again[k] == first[k], (k, again, first)
    if first["best_epoch"] == 2:
        assert_same_weights(out, str(tmp_path / "out.best.onnx"))


# ---------------------------------------------------------------------------------------------
# 2. A full disk


@pytest.mark.badinput
@pytest.mark.parametrize("victim", ["checkpoint", "model", "log"])
def test_full_disk_keeps_previous_checkpoint(qtune, fm_slice, model28, tmp_path, victim):
    """RLIMIT_FSIZE (SIGXFSZ ignored) makes writes past a size fail with EFBIG, as a full disk
    fails them with ENOSPC, without privileges or a special filesystem. The failing write is
    reported naming the file and the cause; the previous checkpoint is intact and still
    resumes; nothing partial is left, under the final name or as a temporary file."""
    out = str(tmp_path / "out.onnx")
    ckpt = out + ".ckpt"
    qtune(*train_args(model28, fm_slice, out, 2)).check_ok()
    os.remove(out)
    before = open(ckpt, "rb").read()
    best_before = open(str(tmp_path / "out.best.onnx"), "rb").read()
    model_size, ckpt_size = len(best_before), len(before)
    assert model_size < ckpt_size
    log = str(tmp_path / "out.log.jsonl")
    if victim == "checkpoint":
        # Epoch 3's best model (if any) fits, its checkpoint does not.
        limit, epochs, target = (model_size + ckpt_size) // 2, 3, ckpt
    elif victim == "log":
        # Not one more byte: epoch 3's log line (written first) fails.
        limit, epochs, target = os.path.getsize(log), 3, log
    else:
        # Resuming a finished run writes only the final model, which does not fit.
        limit, epochs, target = model_size // 2, 2, out
    r = run_with_limits(qtune, train_args(model28, fm_slice, out, epochs, "--resume", ckpt),
                        fsize=limit)
    r.check_error(target, "File too large")
    assert open(ckpt, "rb").read() == before
    assert temp_files(str(tmp_path)) == []
    if victim == "model":
        assert not os.path.exists(out)
        assert open(str(tmp_path / "out.best.onnx"), "rb").read() == best_before
    # The checkpoint left behind resumes, and the result is that of the same resume without
    # the fault.
    qtune(*train_args(model28, fm_slice, out, 3, "--resume", ckpt)).check_ok()
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = str(ref_dir / "out.onnx")
    open(ref + ".ckpt", "wb").write(before)
    qtune(*train_args(model28, fm_slice, ref, 3, "--resume", ref + ".ckpt")).check_ok()
    assert_same_weights(out, ref)
    assert not np.array_equal(initializers(ref)["fc1.w"], initializers(model28)["fc1.w"])


@pytest.mark.badinput
def test_unwritable_output_folder(qtune, fm_slice, model28, tmp_path):
    """An output folder that does not exist: the error names the file and the cause."""
    out = str(tmp_path / "missing" / "out.onnx")
    r = qtune("export", model28, "--format", "float", "-o", out)
    r.check_error(out, "No such file or directory")


# ---------------------------------------------------------------------------------------------
# 3. NaN and Inf


@pytest.mark.badinput
@pytest.mark.parametrize("cmd", ["inspect", "eval", "train"])
def test_nan_initializer_refused_at_load(qtune, fm_slice, model28, tmp_path, cmd):
    bad = edit_initializer(model28, str(tmp_path / "nan.onnx"), "fc1.w", 1234, np.nan)
    args = {"inspect": ["inspect", bad],
            "eval": ["eval", bad, "--data", fm_slice, "--preset", "fashion-mnist"],
            "train": train_args(bad, fm_slice, str(tmp_path / "o.onnx"), 1)}[cmd]
    qtune(*args).check_error("fc1.w", "NaN", bad)
    assert not os.path.exists(str(tmp_path / "o.onnx.ckpt"))


@pytest.mark.badinput
def test_nan_in_constant_node_refused(qtune, model28, tmp_path):
    m = onnx.load(model28)
    c = helper.make_node("Constant", [], ["k"], name="nan_const",
                         value=numpy_helper.from_array(np.array([1.0, np.nan], np.float32)))
    m.graph.node.insert(0, c)
    m.graph.node.append(helper.make_node("Add", ["y", "k"], ["y2"], name="add_k"))
    bad = str(tmp_path / "nanconst.onnx")
    onnx.save(m, bad)
    qtune("inspect", bad).check_error("nan_const", "NaN")


@pytest.mark.badinput
def test_inf_parameter(qtune, fm_slice, model28, tmp_path):
    """Infinite constants are legitimate in ONNX (a -inf Pad before MaxPool), so a model with
    an infinite weight loads; evaluation then reports the non-finite logits instead of a NaN
    accuracy, and training refuses the parameter by name."""
    bad = edit_initializer(model28, str(tmp_path / "inf.onnx"), "fc2.w", 7, np.inf)
    qtune("inspect", bad).check_ok()
    r = qtune("eval", bad, "--data", fm_slice, "--preset", "fashion-mnist", "--json", "--quiet")
    r.check_error("non-finite", bad)
    assert "nan" not in r.stdout.lower()
    out = str(tmp_path / "o.onnx")
    qtune(*train_args(bad, fm_slice, out, 1)).check_error("fc2.w", "inf")
    assert not os.path.exists(out) and not os.path.exists(out + ".ckpt")


@pytest.mark.badinput
def test_minus_inf_pad_before_maxpool_loads(qtune, tmp_path):
    """The legitimate use of an infinite constant: Pad(-inf) merged into MaxPool."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), "pads"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "padval")]
    nodes = [helper.make_node("Pad", ["x", "pads", "padval"], ["p"], name="pad", mode="constant"),
             helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    path = str(tmp_path / "padpool.onnx")
    onnx.save(m, path)
    xa = -np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) - 1  # all negative
    np.save(str(tmp_path / "x.npy"), xa)
    qtune("run", path, "--input", str(tmp_path / "x.npy"), "--output",
          str(tmp_path / "y.npy")).check_ok()
    got = np.load(str(tmp_path / "y.npy"))
    # Padded at the top and left with -inf, the windows that overlap the padding still give
    # their largest real value (a zero padding would give 0: every input is negative).
    p = np.pad(xa, ((0, 0), (0, 0), (1, 0), (1, 0)), constant_values=-np.inf)
    want = p[:, :, :4, :4].reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))
    assert got.shape == want.shape and np.array_equal(got, want), (got, want)


@pytest.mark.badinput
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_npy_input_refused(qtune, model28, tmp_path, value):
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[1, 0, 3, 4] = value
    xp = str(tmp_path / "x.npy")
    np.save(xp, x)
    yp = str(tmp_path / "y.npy")
    qtune("run", model28, "--input", xp, "--output", yp).check_error(
        xp, "[1, 0, 3, 4]", "NaN" if np.isnan(value) else "inf")
    assert not os.path.exists(yp)


@pytest.mark.badinput
@pytest.mark.parametrize("mean,std,needle", [
    ("0.5", "0", "std"), ("0.5", "-1", "std"), ("0.5", "nan", "std"), ("0.5", "inf", "std"),
    ("nan", "0.3", "mean"), ("inf", "0.3", "mean"), ("-inf", "0.3", "mean")])
@pytest.mark.parametrize("cmd", ["eval", "train"])
def test_bad_normalization_refused(qtune, fm_slice, model28, tmp_path, cmd, mean, std, needle):
    out = str(tmp_path / "o.onnx")
    if cmd == "eval":
        args = ["eval", model28, "--data", fm_slice]
    else:
        args = ["train", model28, "--data", fm_slice, "--epochs", "1", "--train-limit", "32",
                "--batch", "32", "-o", out]
    r = qtune(*args, "--mean", mean, "--std", std, "--quiet")
    r.check_error(needle)
    assert "nan" not in r.stdout.lower() and not os.path.exists(out)


@pytest.mark.badinput
def test_bad_normalization_in_model_metadata_refused(qtune, fm_slice, model28, tmp_path):
    m = onnx.load(model28)
    onnx.helper.set_model_props(m, {"qtune.mean": "nan", "qtune.std": "0.35"})
    bad = str(tmp_path / "meta.onnx")
    onnx.save(m, bad)
    r = qtune("eval", bad, "--data", fm_slice, "--quiet")
    r.check_error("mean")
    assert "nan" not in r.stdout.lower()


# ---------------------------------------------------------------------------------------------
# 4. Files that change under a running command


@pytest.fixture(scope="module")
def big_idx(tmp_path_factory):
    """An IDX folder whose test split is Fashion-MNIST's 60,000 training images (gzip), so
    that reading it takes long enough to be caught in the middle; the training split is a
    small plain slice."""
    src = fashion_mnist()
    d = str(tmp_path_factory.mktemp("big_idx"))
    shutil.copy(os.path.join(src, "train-images-idx3-ubyte.gz"),
                os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    shutil.copy(os.path.join(src, "train-labels-idx1-ubyte.gz"),
                os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        a = datasets.read_idx(os.path.join(src, "train-%s.gz" % kind))
        datasets.write_idx(os.path.join(d, "train-%s" % kind), a[:64])
    return d


def fresh_copy(src_dir, dst):
    shutil.copytree(src_dir, dst)
    return dst


@pytest.mark.badinput
@pytest.mark.parametrize("cmd", ["eval", "train"])
def test_dataset_truncated_while_read(qtune, big_idx, model28, tmp_path, cmd):
    """The images file is truncated while the command reads it (the process is stopped with
    the file open and not read to its end, the file truncated, the process continued): a
    clean error naming the file, no crash. (A plain IDX file is read with one read call right
    after its header, too quickly to be stopped in between; the gzip file is inflated in
    pieces over a few hundred milliseconds.)"""
    d = fresh_copy(big_idx, str(tmp_path / "data"))
    images = os.path.join(d, "t10k-images-idx3-ubyte.gz")
    out = str(tmp_path / "o.onnx")
    if cmd == "eval":
        args = ["eval", model28, "--data", d, "--preset", "fashion-mnist", "--limit", "64"]
    else:  # train reads its test split after the training split
        args = train_args(model28, d, out, 1)
    argv = [qtune.path] + [str(a) for a in args]
    p = stop_while_reading(argv, images)
    if p is None:
        pytest.skip("the read of %s was never caught in progress" % images)
    os.truncate(images, os.path.getsize(images) // 3)
    p.send_signal(signal.SIGCONT)
    r = finish(p, argv)
    r.check_error(images, "truncated")
    assert not os.path.exists(out)


@pytest.mark.badinput
def test_dataset_replaced_while_read_uses_the_open_file(qtune, big_idx, model28, tmp_path):
    """Replacing the file (rename over it) while it is read does not disturb the reader: it
    keeps the file it opened and gives the same result as without the replacement."""
    d = fresh_copy(big_idx, str(tmp_path / "data"))
    images = os.path.join(d, "t10k-images-idx3-ubyte.gz")
    args = ["eval", model28, "--data", d, "--preset", "fashion-mnist", "--limit", "256",
            "--json", "--quiet"]
    want = qtune(*args).check_ok().json()
    argv = [qtune.path] + [str(a) for a in args]
    p = stop_while_reading(argv, images)
    if p is None:
        pytest.skip("the read of %s was never caught in progress" % images)
    with open(images + ".new", "wb") as fh:
        fh.write(b"\x1f\x8b garbage")
    os.replace(images + ".new", images)
    p.send_signal(signal.SIGCONT)
    got = finish(p, argv).check_ok().json()
    assert got["images"] == want["images"] == 256
    assert got["top1"] == want["top1"] and got["loss"] == want["loss"], (got, want)
    # The replacement is what the next command sees.
    qtune(*args).check_error(images)


@pytest.mark.badinput
def test_archive_truncated_while_read(qtune, tmp_path):
    """A tar.gz dataset truncated while it is streamed: a clean error naming the archive."""
    from conftest import require_shared
    src, = require_shared("data/cifar10-jpeg.tar.gz")
    arch = str(tmp_path / "cifar.tar.gz")
    shutil.copy(src, arch)
    model = small_model(str(tmp_path / "m32.onnx"), c=3, hw=32)
    argv = [qtune.path, "eval", model, "--data", arch, "--preset", "cifar10", "--limit", "16"]
    p = stop_while_reading(argv, arch)
    if p is None:
        pytest.skip("the read of %s was never caught in progress" % arch)
    os.truncate(arch, os.path.getsize(arch) // 2)
    p.send_signal(signal.SIGCONT)
    finish(p, argv).check_error(arch, ("truncated", "unexpected end"))


@pytest.mark.badinput
@pytest.mark.parametrize("keep", [0, 1, 100, 0.1, 0.5, 0.9, -1])
def test_truncated_model_refused(qtune, fm_slice, model28, tmp_path, keep):
    """A model cut short (as a non-atomic copy or a crash would leave it) is refused with an
    error naming it."""
    data = open(model28, "rb").read()
    n = keep if isinstance(keep, int) and keep >= 0 else (
        len(data) - 1 if keep == -1 else int(len(data) * keep))
    bad = str(tmp_path / "cut.onnx")
    open(bad, "wb").write(data[:n])
    qtune("eval", bad, "--data", fm_slice, "--preset", "fashion-mnist").check_error(bad)


@pytest.mark.badinput
def test_model_truncated_under_eval(qtune, big_idx, model28, tmp_path):
    """The model file is truncated at moments spread over an eval run (before, during and
    after it is read): the run either completes (the model was read whole) or fails with an
    error naming the model; never a crash."""
    rng = random.Random(7)
    outcomes = {"ok": 0, "error": 0}
    args = ["eval", None, "--data", big_idx, "--preset", "fashion-mnist", "--limit", "64",
            "--quiet"]
    data = open(model28, "rb").read()
    for trial in range(6):
        path = str(tmp_path / ("m%d.onnx" % trial))
        open(path, "wb").write(data)
        args[1] = path
        argv = [qtune.path] + [str(a) for a in args]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", env=env_for_runs())
        deadline = time.monotonic() + rng.uniform(0.0, 0.05) * (trial + 1)
        while time.monotonic() < deadline and p.poll() is None:
            pass
        os.truncate(path, rng.randint(0, len(data) - 1))
        r = finish(p, argv)
        r.check_no_crash()
        if r.returncode == 0:
            outcomes["ok"] += 1
        else:
            r.check_error(path)
            outcomes["error"] += 1
    print("model truncated under eval:", outcomes)
