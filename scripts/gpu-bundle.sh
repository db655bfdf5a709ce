#!/bin/bash
# Builds qtune with the CUDA backend here and packs into build-gpu/ what a GPU machine needs to
# run it: the binaries, the shared libraries they load that such a machine may lack
# (xz-compressed, unpacked by scripts/gpu-check.sh), the gpu-probe binary, and, when
# ../shared is there, the CIFAR-10 JPEG archive and the pretrained ResNet-20.
#   scripts/gpu-bundle.sh        then: scripts/gpu-check.sh on the GPU machine, carrying build-gpu
set -euo pipefail
cd "$(dirname "$0")/.."
make -j"$(nproc)" BUILD=build-cuda CUDA=1 >/dev/null
out=build-gpu
rm -rf "$out"
mkdir -p "$out/lib" "$out/shared"
cp build-cuda/qtune build-cuda/qtune-tests "$out/"
# Everything but the C runtime, zlib and the CUDA libraries (the GPU machine has those).
ldd build-cuda/qtune build-cuda/qtune-tests | awk '/=> \// {print $3}' | sort -u |
    grep -v -E '/lib(c|m|dl|rt|pthread|stdc\+\+|gcc_s|z|cudnn[a-z_]*|cublas[A-Za-z]*|cuda|cudart)\.so' |
    while read -r lib; do xz -T0 -c "$lib" >"$out/lib/$(basename "$lib").xz"; done
nvcc -O2 -gencode arch=compute_90,code=sm_90 scripts/gpu-probe.cu -lcudnn -lcublas -o "$out/gpu-probe"
if [ -d ../shared ]; then
    cp ../shared/data/cifar10-jpeg.tar.gz ../shared/models/resnet20_cifar10_fp32_bn.onnx "$out/shared/"
fi
du -sh "$out"
ls -la "$out" "$out/lib"
