#!/usr/bin/env bash
# The main job on a default that needs nothing else: build qtune, create a ResNet-20 for
# 28x28 grayscale images, train it on Fashion-MNIST (Debian's dataset-fashion-mnist) for one
# epoch on the CPU, evaluate it, check the FP32 model with onnxruntime, then quantize it to
# 4-bit APoT weights and activations (post-training baseline, then one epoch of
# quantization-aware fine-tuning) and list its quantizers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)"
out=${QT_DEMO_DIR:-build/demo}
data=/usr/share/datasets/fashion-mnist
epochs=${QT_DEMO_EPOCHS:-1}
mkdir -p "$out"
build/qtune init resnet20 --input 1x28x28 --classes 10 --seed 0 -o "$out/resnet20.onnx"
build/qtune train "$out/resnet20.onnx" --data "$data" --preset fashion-mnist --epochs "$epochs" \
    --lr 0.1 --schedule cosine --batch 128 --wd 5e-4 -o "$out/resnet20_fmnist.onnx"
build/qtune inspect "$out/resnet20_fmnist.onnx" | tail -n 1
build/qtune eval "$out/resnet20_fmnist.onnx" --data "$data" --json
.venv/bin/python scripts/ort_eval.py "$out/resnet20_fmnist.onnx" --data "$data"
build/qtune finetune "$out/resnet20_fmnist.onnx" --data "$data" --wbits 4 --abits 4 --scheme apot \
    --epochs "$epochs" --lr 0.01 --schedule cosine --batch 128 --wd 1e-4 --alpha-init calib \
    -o "$out/resnet20_fmnist_w4a4.onnx"
build/qtune inspect "$out/resnet20_fmnist_w4a4.onnx" | awk '/^quantizers/ { p = 1 } p && n < 6 { print; n++ }'
build/qtune eval "$out/resnet20_fmnist_w4a4.onnx" --data "$data" --json
