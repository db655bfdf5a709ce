#!/usr/bin/env bash
# The single test command: builds qtune, runs the C tests (build/qtune-tests) and the
# Python reference and CLI tests (pytest on tests/ref and tests/e2e); with QT_SAN=1 also the
# sanitizer build's C tests and the bad-input CLI tests against build-san/qtune.
# The last line is the sum over all steps: "N passed, N failed, N skipped"; the exit status
# is non-zero when a test failed or a step crashed or could not run.
set -u
cd "$(dirname "$0")/.." || exit 2

PY=${QT_PYTHON:-.venv/bin/python}
JOBS=${QT_JOBS:-$(nproc 2>/dev/null || echo 2)}
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/qtune-tests.XXXXXX")
trap 'rm -rf "$LOG_DIR"' EXIT

passed=0 failed=0 skipped=0
problems=()

note_problem() {
    problems+=("$1")
    failed=$((failed + 1))
    echo "run.sh: $1" >&2
}

elapsed() { echo $(( $(date +%s) - $1 ))s; }

# make [ARGS...]: quiet on success, the tail of the log on failure.
build() {
    local t0 log rc
    t0=$(date +%s)
    log="$LOG_DIR/make$*.log"
    echo "== make${*:+ $*} (jobs $JOBS)"
    make -j"$JOBS" "$@" >"$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -n 40 "$log"
        note_problem "make${*:+ $*} failed (exit $rc)"
        return 1
    fi
    grep -E "warning:" "$log" | head -n 20
    echo "   built in $(elapsed "$t0")"
    return 0
}

# ctests BINARY: runs a C test binary, adds its final "N passed, N failed, N skipped".
ctests() {
    local bin=$1 t0 log rc line p f s
    t0=$(date +%s)
    log="$LOG_DIR/$(echo "$bin" | tr / _).log"
    echo "== $bin"
    if [ ! -x "$bin" ]; then
        note_problem "$bin not found"
        return
    fi
    "$bin" 2>&1 | tee "$log" | grep -vE "^(ok|skip) " || true
    rc=${PIPESTATUS[0]}
    line=$(tail -n 1 "$log")
    if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
        p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
        if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
            note_problem "$bin exited with status $rc after reporting no failures"
        fi
    else
        if [ $rc -gt 128 ]; then
            note_problem "$bin crashed (signal $((rc - 128))) before its summary"
        else
            note_problem "$bin ended (exit $rc) without a summary line"
        fi
    fi
    echo "   $line ($(elapsed "$t0"))"
}

# pytests ARGS...: runs pytest, adds the counts of its summary line.
pytests() {
    local t0 log rc line p f s e
    t0=$(date +%s)
    log="$LOG_DIR/pytest.$RANDOM.log"
    echo "== pytest $* (QT_BIN=${QT_BIN:-build/qtune})"
    if ! "$PY" -c "import pytest, onnx, onnxruntime, torch, numpy" 2>/dev/null; then
        note_problem "$PY cannot import pytest/onnx/onnxruntime/torch/numpy (run scripts/deps.sh)"
        return
    fi
    "$PY" -m pytest -q -rs --tb=short -p no:cacheprovider "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E "(passed|failed|skipped|error|no tests ran).* in [0-9.]+s" "$log" | tail -n 1)
    count() {
        local n
        n=$(echo "$line" | grep -oE "(^|[ =])[0-9]+ $1\b" | head -n 1 | grep -oE "[0-9]+")
        echo "${n:-0}"
    }
    p=$(count passed) f=$(count failed) s=$(count skipped) e=$(count "errors?")
    p=$((p + $(count xpassed))) s=$((s + $(count xfailed)))
    passed=$((passed + p)) failed=$((failed + f + e)) skipped=$((skipped + s))
    case $rc in
        0) ;;
        1) [ $((f + e)) -gt 0 ] || note_problem "pytest exited 1 without failures in its summary" ;;
        5) note_problem "pytest collected no tests for: $*" ;;
        *) note_problem "pytest ended with status $rc (interrupted, internal or usage error)" ;;
    esac
    echo "   pytest: $p passed, $((f + e)) failed, $s skipped ($(elapsed "$t0"))"
}

T0=$(date +%s)

if build; then
    ctests build/qtune-tests
fi
pytests tests/ref tests/e2e

if [ "${QT_SAN:-0}" = "1" ]; then
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    if build SAN=1; then
        ctests build-san/qtune-tests
        saved_bin=${QT_BIN-}
        export QT_BIN=build-san/qtune
        pytests -m badinput tests/e2e
        if [ -n "$saved_bin" ]; then export QT_BIN=$saved_bin; else unset QT_BIN; fi
    fi
fi

echo "== total time $(elapsed "$T0")"
for p in "${problems[@]+"${problems[@]}"}"; do
    echo "   problem: $p"
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
