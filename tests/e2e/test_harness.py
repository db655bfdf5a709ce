"""Tests of the test helpers in tests/conftest.py: a program run through Cli fails the test on
a sanitizer report even when it also printed an ordinary error; missing test data fails the
test under CI=true; assert_close rejects NaN and shapes that merely broadcast."""
import os
import stat

import numpy as np
import pytest

from conftest import SANITIZER_EXIT, Cli, assert_close, require_data


def fake_program(tmp_path, body):
    p = tmp_path / "fake.sh"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return Cli(str(p))


def test_error_then_leak_report_fails(tmp_path):
    prog = fake_program(tmp_path, 'echo "qtune: error: bad input" >&2\n'
                        'echo "==1==ERROR: LeakSanitizer: detected memory leaks" >&2\nexit 1')
    with pytest.raises(pytest.fail.Exception, match="sanitizer"):
        prog("x")


def test_sanitizer_exit_status_fails(tmp_path):
    prog = fake_program(tmp_path, 'echo "qtune: error: bad input" >&2\nexit %d' % SANITIZER_EXIT)
    with pytest.raises(pytest.fail.Exception, match="sanitizer"):
        prog("x")


def test_started_program_is_checked_too(tmp_path):
    prog = fake_program(tmp_path, 'echo "step 1" >&2\nsleep 0.2\n'
                        'echo "SUMMARY: AddressSanitizer: heap-buffer-overflow" >&2\nexit 1')
    run = prog.start()
    run.wait_for_stderr(lambda line: line.startswith("step"), timeout=30)
    with pytest.raises(pytest.fail.Exception, match="sanitizer"):
        run.finish()


def test_sanitizers_are_told_the_exit_status(tmp_path):
    prog = fake_program(tmp_path, 'echo "$ASAN_OPTIONS|$UBSAN_OPTIONS|$LSAN_OPTIONS"')
    r = prog(env={"ASAN_OPTIONS": "detect_leaks=1:exitcode=3"})
    asan, ubsan, lsan = r.stdout.strip().split("|")
    want = "exitcode=%d" % SANITIZER_EXIT
    assert asan == "detect_leaks=1:" + want and ubsan.endswith(want) and lsan.endswith(want)


def test_clean_failure_passes_through(tmp_path):
    prog = fake_program(tmp_path, 'echo "qtune: error: bad input" >&2\nexit 1')
    prog("x").check_error("bad input")


def test_missing_data_fails_under_ci(monkeypatch):
    monkeypatch.setenv("QT_FASHION", "/nonexistent/fashion")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required"):
        require_data("fashion-mnist", "train-images-idx3-ubyte.gz")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_data("fashion-mnist", "train-images-idx3-ubyte.gz")


def test_ci_script_requires_everything():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(repo, ".ci", "run")).read()
    assert "CI=true" in text and "scripts/test.sh" in text


@pytest.mark.parametrize("got,want", [
    (np.array([1.0, np.nan]), np.array([1.0, 2.0])),
    (np.array([1.0, 2.0]), np.array([1.0, np.nan])),
    (np.array([np.inf, 2.0]), np.array([np.inf, 2.0])),
    (np.ones((1, 10)), np.ones((4, 10))),
    (np.ones((6, 20)), np.ones((2, 60))),
    (np.array([1.0, 2.1]), np.array([1.0, 2.0])),
])
def test_assert_close_rejects(got, want):
    with pytest.raises(AssertionError):
        assert_close(got, want, 1e-3, "case")


def test_assert_close_accepts_close_values():
    assert_close(np.array([1.0, 2.0005]), np.array([1.0, 2.0]), 1e-3, "case")
