#!/usr/bin/env bash
# Installs what qtune's build and tests need on Debian 12 (run as root; safe to re-run;
# clang with libFuzzer's runtime for scripts/fuzz.sh):
# the Debian packages below (apt-get update only when one is missing), then the project's
# .venv (Debian's python with system site packages, for torch/onnx/numpy) with onnxruntime,
# pytest and timm (pinned: a version that takes Debian's torch) from PyPI, and .venv-tf
# (TensorFlow and tf2onnx, below).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV="$REPO/.venv"
PACKAGES=(
    build-essential make protobuf-c-compiler libprotobuf-c-dev libonnx-dev
    libopenblas-openmp-dev libdnnl-dev libjpeg-dev libpng-dev zlib1g-dev
    python3-venv python3-torch python3-torchvision python3-onnx python3-numpy
    libonnx-testdata dataset-fashion-mnist qemu-user
    clang libclang-rt-dev libomp-dev
)
PIP_PACKAGES=(onnxruntime pytest timm==1.0.31)

die() {
    echo "deps.sh: error: $*" >&2
    exit 1
}

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects Debian 12"

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run this script as root"
    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    if ! apt-get update -qq >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get update failed"
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get install failed for: ${missing[*]}"
    fi
    rm -f "$log"
    for p in "${missing[@]}"; do
        installed "$p" || die "package $p is still not installed after apt-get install"
    done
else
    echo "deps.sh: Debian packages present"
fi

SYSPY=/usr/bin/python3
[ -x "$SYSPY" ] || die "$SYSPY not found"
"$SYSPY" -c "import torch, torchvision, onnx, numpy" 2>/dev/null \
    || die "$SYSPY cannot import torch, torchvision, onnx and numpy"

# venv_with DIR "IMPORTS" VENV_ARGS PACKAGES...: makes the virtual environment DIR (python -m
# venv VENV_ARGS) unless it exists, and pip-installs PACKAGES into it unless it can already
# import the comma-separated modules IMPORTS; fails unless it can import them afterwards.
venv_with() {
    local dir=$1 imports=$2 venv_args=$3 log
    shift 3
    if TF_CPP_MIN_LOG_LEVEL=3 "$dir/bin/python" -c "import $imports" 2>/dev/null; then
        echo "deps.sh: $(basename "$dir") has $*"
        return
    fi
    if [ ! -x "$dir/bin/python" ]; then
        echo "deps.sh: creating $dir"
        # shellcheck disable=SC2086
        "$SYSPY" -m venv $venv_args "$dir" || die "could not create $dir"
    fi
    echo "deps.sh: pip install $* into $dir"
    log=$(mktemp)
    if ! "$dir/bin/pip" install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "pip install $* into $dir failed (PyPI reachable?)"
    fi
    rm -f "$log"
    TF_CPP_MIN_LOG_LEVEL=3 "$dir/bin/python" -c "import $imports" 2>/dev/null \
        || die "$dir/bin/python cannot import $imports"
}

venv_with "$VENV" "torch, torchvision, onnx, numpy, onnxruntime, pytest, timm" \
    --system-site-packages "${PIP_PACKAGES[@]}"

# .venv-tf: TensorFlow's side of the Keras tests (tests/ref/keras_models.py builds Keras
# models and converts them with tf2onnx): PyPI's tensorflow-cpu and tf2onnx in an environment
# of their own, since they need a newer numpy and protobuf than Debian's torch and onnx.
venv_with "$REPO/.venv-tf" "tensorflow, tf2onnx" "" tensorflow-cpu==2.21.0 tf2onnx==1.17.0

# `deps.sh quant`: also .venv-quant, PyPI's onnx and onnxruntime without Debian's packages,
# for onnxruntime's quantization tools (they need a newer onnx than Debian's), which
# bench/ptq_vs_ort.py compares against.
if [ "${1:-}" = quant ]; then
    venv_with "$REPO/.venv-quant" "onnx, onnxruntime.quantization, numpy, PIL" "" \
        onnx onnxruntime numpy pillow ml_dtypes
fi
echo "deps.sh: done"
