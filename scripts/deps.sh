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

if [ ! -x "$VENV/bin/python" ]; then
    echo "deps.sh: creating $VENV"
    "$SYSPY" -m venv --system-site-packages "$VENV" || die "could not create $VENV"
fi

if "$VENV/bin/python" -c "import onnxruntime, pytest, timm" 2>/dev/null; then
    echo "deps.sh: .venv has ${PIP_PACKAGES[*]}"
else
    echo "deps.sh: pip install ${PIP_PACKAGES[*]} into $VENV"
    log=$(mktemp)
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "pip install ${PIP_PACKAGES[*]} failed (PyPI reachable?)"
    fi
    rm -f "$log"
fi

"$VENV/bin/python" -c "import torch, torchvision, onnx, numpy, onnxruntime, pytest, timm" \
    || die "$VENV/bin/python cannot import every test dependency"

# .venv-tf: TensorFlow's side of the Keras tests (tests/ref/keras_models.py builds Keras
# models and converts them with tf2onnx): PyPI's tensorflow-cpu and tf2onnx in an environment
# of their own, since they need a newer numpy and protobuf than Debian's torch and onnx.
TVENV="$REPO/.venv-tf"
TPIP=(tensorflow-cpu==2.21.0 tf2onnx==1.17.0)
if ! TF_CPP_MIN_LOG_LEVEL=3 "$TVENV/bin/python" -c "import tensorflow, tf2onnx" 2>/dev/null; then
    [ -x "$TVENV/bin/python" ] || "$SYSPY" -m venv "$TVENV" || die "could not create $TVENV"
    echo "deps.sh: pip install ${TPIP[*]} into $TVENV"
    log=$(mktemp)
    if ! "$TVENV/bin/pip" install -q --disable-pip-version-check "${TPIP[@]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "pip install ${TPIP[*]} into $TVENV failed (PyPI reachable?)"
    fi
    rm -f "$log"
    TF_CPP_MIN_LOG_LEVEL=3 "$TVENV/bin/python" -c "import tensorflow, tf2onnx" 2>/dev/null \
        || die "$TVENV/bin/python cannot import tensorflow and tf2onnx"
fi

# `deps.sh quant`: also .venv-quant, PyPI's onnx and onnxruntime without Debian's packages,
# for onnxruntime's quantization tools (they need a newer onnx than Debian's), which
# bench/ptq_vs_ort.py compares against.
if [ "${1:-}" = quant ]; then
    QVENV="$REPO/.venv-quant"
    QPIP=(onnx onnxruntime numpy pillow ml_dtypes)
    [ -x "$QVENV/bin/python" ] || "$SYSPY" -m venv "$QVENV" || die "could not create $QVENV"
    if ! "$QVENV/bin/python" -c "import onnx, onnxruntime.quantization, numpy, PIL" 2>/dev/null; then
        echo "deps.sh: pip install ${QPIP[*]} into $QVENV"
        "$QVENV/bin/pip" install -q --disable-pip-version-check "${QPIP[@]}" \
            || die "pip install ${QPIP[*]} into $QVENV failed (PyPI reachable?)"
    fi
    "$QVENV/bin/python" -c "import onnx, onnxruntime.quantization, numpy, PIL" \
        || die "$QVENV/bin/python cannot import onnx, onnxruntime.quantization, numpy and PIL"
fi
echo "deps.sh: done"
