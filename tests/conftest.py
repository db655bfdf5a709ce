"""pytest fixtures shared by tests/ref and tests/e2e: the qtune binary under test (env
QT_BIN, default build/qtune), the PyTorch exports (tests/ref/out, made on first use), the
test data named in tests/paths.conf (missing data skips a test, or fails it when CI=true),
one way to run a program under test (`Cli`: every run fails the test on a sanitizer report,
whatever the test then checks) and one NaN-proof, shape-checking numeric comparison."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_DIR = os.path.join(REPO, "tests", "ref")
sys.path.insert(0, REF_DIR)

import datasets  # noqa: E402
import export_models  # noqa: E402

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer", "ThreadSanitizer")
# Exit status of a process a sanitizer stopped: distinct from qtune's own statuses (0, 1, 2,
# 130), so that a report is caught even when the process printed an ordinary error first.
SANITIZER_EXIT = 86


def pytest_configure(config):
    config.addinivalue_line("markers", "badinput: a CLI scenario feeding qtune bad input "
                            "(also run against the sanitizer build)")


def _in_ci():
    return os.environ.get("CI", "").lower() == "true"


def require_data(key, *relpaths):
    """Absolute paths of files in the data folder named key in tests/paths.conf (the folder
    itself when no relpath is given); skips the test when one is missing, or fails it when
    CI=true (then all test data is required)."""
    base = datasets.data_dirs()[key]
    paths = [os.path.join(base, p) for p in relpaths] or [base]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        msg = "%s data missing: %s (see tests/paths.conf)" % (key, ", ".join(missing))
        if _in_ci():
            pytest.fail(msg + " [CI=true: test data is required]")
        pytest.skip(msg)
    return paths


def require_shared(*relpaths):
    """Absolute paths of files under the shared folder (QT_SHARED, default ../shared)."""
    return require_data("shared", *relpaths)


def fashion_mnist():
    """The Fashion-MNIST folder (Debian's dataset-fashion-mnist), required under CI=true."""
    require_data("fashion-mnist", *datasets.FASHION_FILES)
    return datasets.FASHION_DIR


def tf_python():
    """The Python of the TensorFlow environment (env QT_TF_PYTHON, default .venv-tf, made by
    scripts/deps.sh with PyPI's tensorflow-cpu and tf2onnx); skips the test when it cannot
    import both, or fails it when CI=true."""
    py = os.environ.get("QT_TF_PYTHON") or os.path.join(REPO, ".venv-tf", "bin", "python")
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", "import tensorflow, tf2onnx"], capture_output=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).returncode == 0
    if not ok:
        msg = "no TensorFlow environment at %s (scripts/deps.sh makes it)" % py
        if _in_ci():
            pytest.fail(msg + " [CI=true: it is required]")
        pytest.skip(msg)
    return py


def torch_grads(model, loss_fn):
    """Each parameter's gradient of loss_fn(copy of model) in float64 and in float32 (the
    copies in training mode): ({name: float64 array}, {name: float64 array}, float64 loss)."""
    import copy
    import torch
    out, loss64 = [], None
    for dt in (torch.float64, torch.float32):
        t = copy.deepcopy(model).to(dt)
        t.train()
        loss = loss_fn(t, dt)
        loss.backward()
        out.append({k: p.grad.double().numpy() for k, p in t.named_parameters()})
        loss64 = loss.item() if loss64 is None else loss64
    return out[0], out[1], loss64


def assert_grad_close(got, want64, want32, rtol, what):
    """A gradient against PyTorch's in float64: within rtol of its largest element, or, where
    PyTorch's own float32 gradient is further than that from float64 (sums of many terms that
    cancel), within 4 times PyTorch's float32 error."""
    scale = float(np.max(np.abs(want64))) if want64.size else 0.0
    torch_err = float(np.max(np.abs(want32 - want64))) if want64.size else 0.0
    assert_close(got, want64, 0.0, what, atol=max(rtol * scale, 4 * torch_err))


def assert_close(got, want, rtol, what="", atol=0.0, scale=None):
    """got matches want: the same shape, both finite, and max |got - want| <= atol + rtol *
    scale (scale defaults to max |want|). NaN or Inf anywhere fails; so does a broadcastable
    but different shape."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, "%s: shape %s, expected %s" % (what, got.shape, want.shape)
    assert np.all(np.isfinite(want)), "%s: the reference holds NaN or Inf" % what
    assert np.all(np.isfinite(got)), "%s: %d non-finite values" % (
        what, int(np.sum(~np.isfinite(got))))
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    err = float(np.max(diff)) if diff.size else 0.0
    tol = atol + rtol * scale
    assert err <= tol, "%s: max |got - want| = %.3e > %.3e (rtol %g x scale %.4g + atol %g) at %s" % (
        what, err, tol, rtol, scale, atol, np.unravel_index(int(np.argmax(diff)), diff.shape))


class Result:
    def __init__(self, argv, proc):
        self.argv = argv
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def describe(self):
        return "command: %s\nexit: %s\nstdout (tail):\n%s\nstderr (tail):\n%s" % (
            " ".join(self.argv), self.returncode, self.stdout[-3000:], self.stderr[-3000:])

    def sanitizer_report(self):
        return [m for m in SANITIZER_MARKS if m in self.stderr]

    def check_ok(self):
        assert self.returncode == 0 and not self.sanitizer_report(), (
            "qtune failed\n" + self.describe())
        return self

    def check_no_crash(self, explained=True):
        """The process ended by itself (no signal), without a sanitizer report, and if it
        failed it said why (unless explained is False)."""
        assert self.returncode is not None and self.returncode >= 0, (
            "qtune was killed by signal %d\n%s" % (-self.returncode, self.describe()))
        assert not self.sanitizer_report(), "sanitizer report\n" + self.describe()
        if self.returncode != 0 and explained:
            assert self.error_lines(), (
                "non-zero exit without a 'qtune: error: ' line\n" + self.describe())
        return self

    def error_lines(self):
        return [l for l in self.stderr.splitlines() if l.startswith("qtune: error: ")]

    def check_error(self, *needles):
        """A clean failure: positive exit status, no signal, no sanitizer report, a
        'qtune: error: ' message on stderr that contains every needle (a tuple of strings
        is satisfied by any one of them)."""
        assert self.returncode is not None and self.returncode >= 0, (
            "qtune was killed by signal %d\n%s" % (-self.returncode, self.describe()))
        assert not self.sanitizer_report(), "sanitizer report\n" + self.describe()
        assert self.returncode > 0, "expected a failure, got exit 0\n" + self.describe()
        lines = self.error_lines()
        assert lines, "no line starting with 'qtune: error: ' on stderr\n" + self.describe()
        text = "\n".join(lines)
        for n in needles:
            alts = n if isinstance(n, tuple) else (n,)
            assert any(a in text for a in alts), "error message mentions none of %s\n%s" % (
                " / ".join(repr(a) for a in alts), self.describe())
        return self

    def json(self):
        lines = [l for l in self.stdout.strip().splitlines() if l.strip()]
        assert lines, "no output on stdout\n" + self.describe()
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError("last stdout line is not a JSON object\n" + self.describe())


def _sanitizer_env(env):
    """env with SANITIZER_EXIT as the exit status of every sanitizer report (kept options
    otherwise)."""
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        opts = [o for o in env.get(var, "").split(":") if o and not o.startswith("exitcode=")]
        env[var] = ":".join(opts + ["exitcode=%d" % SANITIZER_EXIT])
    return env


def check_sanitizers(res):
    """Fails the test when the process ended through a sanitizer (by its exit status or a
    report on stderr), whatever else it printed."""
    if res.returncode == SANITIZER_EXIT or res.sanitizer_report():
        pytest.fail("sanitizer report (exit %s)\n%s" % (res.returncode, res.describe()))
    return res


class Running:
    """A program started by Cli.start: lines of its stderr can be awaited before it ends."""

    def __init__(self, argv, proc):
        self.argv, self.proc = argv, proc
        self._err = []

    def wait_for_stderr(self, predicate, timeout):
        """Reads stderr line by line until predicate(line) holds; returns that line, or fails
        the test when the program ends or the timeout passes first."""
        import selectors
        import time
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        buf = ""
        while time.monotonic() < end:
            if not sel.select(timeout=max(0.0, end - time.monotonic())):
                continue
            chunk = os.read(self.proc.stderr.fileno(), 4096).decode("utf-8", "replace")
            if not chunk:
                break
            buf += chunk
            *lines, buf = re.split(r"[\r\n]", buf)
            for line in lines:
                self._err.append(line + "\n")
                if predicate(line):
                    return line
        self.proc.kill()
        self.proc.wait()
        pytest.fail("%s: the awaited output did not come (%ds); stderr so far:\n%s" % (
            " ".join(self.argv), timeout, "".join(self._err)[-3000:]))

    def finish(self, timeout=300):
        """Waits for the end; returns its Result (checked for sanitizer reports)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail("timed out after %ds: %s" % (timeout, " ".join(self.argv)))
        proc = subprocess.CompletedProcess(self.argv, self.proc.returncode,
                                           out.decode("utf-8", "replace"),
                                           "".join(self._err) + err.decode("utf-8", "replace"))
        return check_sanitizers(Result(self.argv, proc))


class Cli:
    """The one way tests run a program under test (qtune, qtune-tests): the sanitizers
    report with SANITIZER_EXIT and every run is checked for a report before the test sees
    the result."""

    def __init__(self, path):
        self.path = path

    def _argv_env(self, args, env):
        if not os.path.exists(self.path):
            pytest.fail("binary not found: %s (run make, or set QT_BIN)" % self.path)
        full_env = dict(os.environ)
        full_env.update(env or {})
        return [self.path] + [str(a) for a in args], _sanitizer_env(full_env)

    def __call__(self, *args, timeout=300, env=None):
        argv, full_env = self._argv_env(args, env)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, env=full_env, cwd=REPO)
        except subprocess.TimeoutExpired:
            pytest.fail("timed out after %ds: %s" % (timeout, " ".join(argv)))
        except OSError as e:
            pytest.fail("cannot execute %s: %s (being rebuilt?)" % (self.path, e))
        return check_sanitizers(Result(argv, proc))

    def start(self, *args, env=None):
        """Starts the program without waiting (stdout and stderr piped); see Running."""
        argv, full_env = self._argv_env(args, env)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=full_env, cwd=REPO)
        return Running(argv, proc)


QTune = Cli


def qtune_path():
    p = os.environ.get("QT_BIN") or os.path.join("build", "qtune")
    return p if os.path.isabs(p) else os.path.join(REPO, p)


@pytest.fixture(scope="session")
def qtune():
    return Cli(qtune_path())


@pytest.fixture(scope="session")
def qtune_tests():
    """The C test binary (env QT_TESTS_BIN, default build/qtune-tests)."""
    p = os.environ.get("QT_TESTS_BIN") or os.path.join("build", "qtune-tests")
    return Cli(p if os.path.isabs(p) else os.path.join(REPO, p))


@pytest.fixture(scope="session")
def ref_out():
    """Folder holding the PyTorch exports; exports what is missing."""
    out = os.environ.get("QT_REF_OUT") or export_models.DEFAULT_OUT
    export_models.export_all(out)
    return out


def parse_count(text):
    """Integers in text, read with ',', '_' or a thin space as thousands separators."""
    return [int(re.sub(r"[,_\u2009']", "", m)) for m in
            re.findall(r"\d{1,3}(?:[,_\u2009']\d{3})+|\d+", text)]
