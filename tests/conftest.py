"""pytest fixtures shared by tests/ref and tests/e2e: the qtune binary under test (env
QT_BIN, default build/qtune), the PyTorch exports (tests/ref/out, made on first use), the
shared development files (env QT_SHARED, default ../shared; missing files skip a test, or
fail it when CI=true) and checks on how a failed command ended."""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_DIR = os.path.join(REPO, "tests", "ref")
sys.path.insert(0, REF_DIR)

import export_models  # noqa: E402

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer", "ThreadSanitizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "badinput: a CLI scenario feeding qtune bad input "
                            "(also run against the sanitizer build)")


def _in_ci():
    return os.environ.get("CI", "").lower() == "true"


def shared_dir():
    return os.path.abspath(os.environ.get("QT_SHARED") or os.path.join(REPO, "..", "shared"))


def require_shared(*relpaths):
    """Returns the absolute paths of files under the shared folder; skips the test when
    one is missing, or fails it when CI=true."""
    paths = [os.path.join(shared_dir(), p) for p in relpaths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        msg = "shared file missing: %s (set QT_SHARED)" % ", ".join(missing)
        if _in_ci():
            pytest.fail(msg + " [CI=true: shared data is required]")
        pytest.skip(msg)
    return paths


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


class QTune:
    def __init__(self, path):
        self.path = path

    def __call__(self, *args, timeout=300, env=None):
        argv = [self.path] + [str(a) for a in args]
        if not os.path.exists(self.path):
            pytest.fail("qtune binary not found: %s (run make, or set QT_BIN)" % self.path)
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, env=full_env, cwd=REPO)
        except subprocess.TimeoutExpired:
            pytest.fail("timed out after %ds: %s" % (timeout, " ".join(argv)))
        except OSError as e:
            pytest.fail("cannot execute %s: %s (being rebuilt?)" % (self.path, e))
        return Result(argv, proc)


def qtune_path():
    p = os.environ.get("QT_BIN") or os.path.join("build", "qtune")
    return p if os.path.isabs(p) else os.path.join(REPO, p)


@pytest.fixture(scope="session")
def qtune():
    return QTune(qtune_path())


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
