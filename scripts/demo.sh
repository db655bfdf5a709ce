#!/usr/bin/env bash
# The main job on a default that needs nothing else: train a small classifier on
# Fashion-MNIST with PyTorch, export it to ONNX, then inspect and evaluate it with qtune
# beside onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)"
out=${QT_DEMO_DIR:-build/demo}
mkdir -p "$out"
data=/usr/share/datasets/fashion-mnist
.venv/bin/python scripts/demo_train.py --data "$data" --out "$out/fmnist_cnn.onnx"
build/qtune inspect "$out/fmnist_cnn.onnx"
build/qtune eval "$out/fmnist_cnn.onnx" --data "$data" --preset fashion-mnist --json | tee "$out/eval.txt"
.venv/bin/python scripts/demo_train.py --data "$data" --ort-eval "$out/fmnist_cnn.onnx"
