#!/usr/bin/env bash
# Fuzzing the readers (targets in tests/fuzz, built by `make fuzz` into build-fuzz/).
#   scripts/fuzz.sh ci [SECONDS]           replay tests/fuzz/regressions, then fuzz every target
#                                          SECONDS from its committed corpus, one per core; by
#                                          default 60 s, shortened so that the runs take at most
#                                          QT_FUZZ_CI_WALL s (default 90: 30 s each on 2 cores);
#                                          fails on any crash or sanitizer report
#   scripts/fuzz.sh campaign TARGET EXECS  fuzz TARGET in chunks (300 s or a tenth of EXECS,
#                                          whichever ends first) until EXECS executions, corpus
#                                          kept in build-fuzz/campaign/TARGET; prints the coverage
#                                          (cov) at the start and end of every chunk
#   scripts/fuzz.sh summary [EXECS]        per target: executions and cov at the campaign's start,
#                                          at 50% and 90% of EXECS, and at its end
#   scripts/fuzz.sh seeds QTUNE            regenerate the committed seed corpora (minimized)
#   scripts/fuzz.sh replay TARGET FILE...  run inputs once (to reproduce a finding)
# A chunk waits while /tmp/qtune-bench.lock exists (a benchmark is being timed).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(onnx idx cifar tar npy ckpt)
OUT=build-fuzz
CHUNK=${QT_FUZZ_CHUNK:-300}
LOCK=/tmp/qtune-bench.lock
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

die() {
    echo "fuzz.sh: error: $*" >&2
    exit 1
}

maxlen() {
    case $1 in
    onnx | tar) echo 65536 ;;
    *) echo 16384 ;;
    esac
}

# libFuzzer options every run shares: per-input time and memory caps, crash files kept.
opts() {
    echo "-max_len=$(maxlen "$1") -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024" \
        "-print_final_stats=1"
}

build() {
    command -v clang >/dev/null || die "clang not found (scripts/deps.sh installs it)"
    mkdir -p "$OUT"
    local start=$SECONDS
    make -j"$(nproc)" fuzz >"$OUT/build.log" 2>&1 || {
        tail -n 40 "$OUT/build.log" >&2
        die "make fuzz failed (log: $OUT/build.log)"
    }
    echo "fuzz.sh: make fuzz took $((SECONDS - start)) s"
}

wait_lock() {
    local waited=$SECONDS
    [ -e "$LOCK" ] && echo "fuzz.sh: $LOCK exists (a benchmark is being timed); waiting"
    while [ -e "$LOCK" ]; do sleep 10; done
    [ $((SECONDS - waited)) -lt 10 ] || echo "fuzz.sh: waited $((SECONDS - waited)) s for $LOCK"
}

# Replays the committed regression inputs of every target; each must run cleanly.
replay_regressions() {
    local t dir fail=0
    for t in "${TARGETS[@]}"; do
        dir=tests/fuzz/regressions/$t
        [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] || continue
        local n
        n=$(find "$dir" -type f | wc -l)
        if "$OUT/fuzz_$t" $(opts "$t") "$dir"/* >"$OUT/ci/replay_$t.log" 2>&1; then
            echo "fuzz.sh: $t: $n regression inputs replayed cleanly"
        else
            echo "fuzz.sh: $t: a regression input fails again:" >&2
            tail -n 40 "$OUT/ci/replay_$t.log" >&2
            fail=1
        fi
    done
    return $fail
}

# One short run of target $1 for $2 seconds from its committed corpus (new inputs go to a
# scratch corpus, so the committed one stays as it is).
short_run() {
    local t=$1 secs=$2 work=$OUT/ci/$t
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/crash"
    local rc=0
    "$OUT/fuzz_$t" $(opts "$t") -max_total_time="$secs" -artifact_prefix="$work/crash/" \
        "$work/corpus" "tests/fuzz/corpus/$t" >"$work/log" 2>&1 || rc=$?
    echo $rc >"$work/rc"
}

ci() {
    local secs=${1:-} jobs
    jobs=$(nproc)
    [ "$jobs" -gt ${#TARGETS[@]} ] && jobs=${#TARGETS[@]}
    if [ -z "$secs" ]; then
        local rounds=$(((${#TARGETS[@]} + jobs - 1) / jobs))
        secs=$((${QT_FUZZ_CI_WALL:-90} / rounds))
        [ "$secs" -gt 60 ] && secs=60
    fi
    build
    rm -rf "$OUT/ci"
    mkdir -p "$OUT/ci"
    local start=$SECONDS fail=0
    replay_regressions || fail=1
    echo "fuzz.sh: ${#TARGETS[@]} targets, $secs s each, $jobs at a time"
    local t
    for t in "${TARGETS[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
        short_run "$t" "$secs" &
    done
    wait
    for t in "${TARGETS[@]}"; do
        local log=$OUT/ci/$t/log
        if [ "$(cat "$OUT/ci/$t/rc" 2>/dev/null)" = 0 ]; then
            echo "fuzz.sh: $t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
        else
            echo "fuzz.sh: $t: FAILED; the end of its log ($log):" >&2
            tail -n 60 "$log" >&2
            ls "$OUT/ci/$t/crash/" >&2 || true
            fail=1
        fi
    done
    echo "fuzz.sh: ci fuzzing took $((SECONDS - start)) s"
    [ $fail -eq 0 ] || die "fuzzing found a crash or sanitizer report (inputs under $OUT/ci/*/crash/)"
}

campaign() {
    local t=$1 want=$2
    [ -x "$OUT/fuzz_$t" ] || build
    local dir=$OUT/campaign/$t log=$OUT/campaign/$t.log total=0 chunk=0
    mkdir -p "$dir" "$OUT/campaign/crash-$t"
    [ -f "$OUT/campaign/$t.execs" ] && total=$(cat "$OUT/campaign/$t.execs")
    [ -f "$OUT/campaign/$t.chunks" ] && chunk=$(cat "$OUT/campaign/$t.chunks")
    echo "fuzz.sh: campaign $t: $total of $want executions done before"
    while [ "$total" -lt "$want" ]; do
        wait_lock
        chunk=$((chunk + 1))
        # At most a tenth of the executions per chunk, so that the chunk lines show how
        # coverage grows over the run.
        local left=$((want - total)) tenth=$(((want + 9) / 10)) clog=$OUT/campaign/$t.chunk$chunk.log
        [ "$left" -gt "$tenth" ] && left=$tenth
        set +e
        "$OUT/fuzz_$t" $(opts "$t") -max_total_time="$CHUNK" -runs="$left" \
            -artifact_prefix="$OUT/campaign/crash-$t/" "$dir" "tests/fuzz/corpus/$t" >"$clog" 2>&1
        local rc=$?
        set -e
        local runs inited last
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$clog" | tail -n 1 || true)
        inited=$(grep -E '^#[0-9]+[[:space:]]+INITED' "$clog" | tail -n 1 || true)
        last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse)' "$clog" | tail -n 1 || true)
        total=$((total + ${runs:-0}))
        echo "$total" >"$OUT/campaign/$t.execs"
        echo "$chunk" >"$OUT/campaign/$t.chunks"
        echo "fuzz.sh: $t chunk $chunk: rc=$rc execs=${runs:-0} total=$total" | tee -a "$log"
        echo "  start: $inited" | tee -a "$log"
        echo "  end:   $last" | tee -a "$log"
        if [ $rc -ne 0 ]; then
            grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$clog" | head -n 10 | tee -a "$log"
            die "campaign $t: chunk $chunk stopped with a finding (log: $clog)"
        fi
    done
    echo "fuzz.sh: campaign $t: $total executions in $chunk chunks" | tee -a "$log"
}

# One line per target from the campaign logs: executions, and the coverage (cov) when the
# campaign started, at the chunks that reached 50% and 90% of EXECS, and at the end.
summary() {
    local want=$1 t log
    for t in "${TARGETS[@]}"; do
        log=$OUT/campaign/$t.log
        [ -f "$log" ] || continue
        awk -v t="$t" -v want="$want" '
            function cov(   i) { for (i = 1; i <= NF; i++) if ($i == "cov:") return $(i + 1) }
            / chunk [0-9]+: rc=/ {
                for (i = 1; i <= NF; i++) if ($i ~ /^total=/) total = substr($i, 7) + 0
            }
            /^  start:/ { if (start == "") start = cov() }
            /^  end:/ {
                last = cov()
                if (c50 == "" && total >= want * 0.5) { c50 = last; e50 = total }
                if (c90 == "" && total >= want * 0.9) { c90 = last; e90 = total }
            }
            END {
                printf "%-6s execs %9d  cov: start %5s  50%% %5s (at %d)  90%% %5s (at %d)  end %5s\n",
                    t, total, start, c50 == "" ? "-" : c50, e50, c90 == "" ? "-" : c90, e90, last
            }' "$log"
    done
}

seeds() {
    local qtune=$1 raw
    [ -x "$qtune" ] || die "seeds: $qtune is not an executable qtune"
    build
    raw=$(mktemp -d)
    /usr/bin/python3 tests/fuzz/make_seeds.py --qtune "$qtune" --out "$raw"
    for t in "${TARGETS[@]}"; do
        rm -rf "tests/fuzz/corpus/$t"
        mkdir -p "tests/fuzz/corpus/$t"
        "$OUT/fuzz_$t" $(opts "$t") -merge=1 "tests/fuzz/corpus/$t" "$raw/$t" \
            >"$OUT/merge_$t.log" 2>&1 || {
            tail -n 40 "$OUT/merge_$t.log" >&2
            die "seeds: merging the $t seeds failed (a seed crashes?)"
        }
        echo "fuzz.sh: $t: $(ls "$raw/$t" | wc -l) seeds -> $(ls "tests/fuzz/corpus/$t" | wc -l)" \
            "kept, $(du -sk "tests/fuzz/corpus/$t" | cut -f1) KiB"
    done
    rm -rf "$raw"
}

case ${1:-} in
build) build ;;
ci) ci "${2:-}" ;;
campaign)
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh campaign TARGET EXECS"
    campaign "$2" "$3"
    ;;
summary) summary "${2:-10000000}" ;;
seeds)
    [ $# -eq 2 ] || die "usage: scripts/fuzz.sh seeds QTUNE"
    seeds "$2"
    ;;
replay)
    [ $# -ge 3 ] || die "usage: scripts/fuzz.sh replay TARGET FILE..."
    t=$2
    shift 2
    "$OUT/fuzz_$t" $(opts "$t") "$@"
    ;;
*) die "usage: scripts/fuzz.sh ci [SECONDS] | campaign TARGET EXECS | summary [EXECS] | seeds QTUNE | replay TARGET FILE..." ;;
esac
