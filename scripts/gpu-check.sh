#!/bin/bash
# Every GPU check in one run, on a fresh GPU machine; results under one folder.
#   here:        scripts/gpu-bundle.sh      (builds qtune with CUDA into build-gpu/)
#   GPU machine: scripts/gpu-check.sh [RESULTS_DIR]   (carrying build-gpu; default $OUT if
#                set, else bench/out/gpu)
# Steps (GPU_CHECK_STEPS, in this order by default; each one's output in RESULTS_DIR/<step>.txt,
# a line per step in RESULTS_DIR/summary.txt):
#   env       the GPU, driver, nvcc, and where cuDNN and cuBLAS are (system or Python packages)
#   probe     scripts/gpu-probe.cu: cuDNN convolutions and cuBLAS Sgemm against direct sums in
#             double, device copy bandwidth (the memory floor)
#   ops       the op harness (qtune-tests backends_): every op description on cuda and cpu
#             against the ref backend, the loss, SGD/PSGD, calibration, alpha and label errors
#   train     scripts/gpu_train_checks.py: ResNet-20 FP32 training and W4A4 fine-tuning step
#             losses on cuda against cpu; with the bundle's CIFAR-10 and pretrained ResNet-20,
#             images/s of an epoch and (GPU_ACCURACY_EPOCHS > 0) the accuracy runs
#   accuracy  (not by default) the accuracy runs alone, GPU_ACCURACY_EPOCHS (3) epochs each
#   sanitize  compute-sanitizer memcheck on op-harness tests and a short cuda training run,
#             racecheck on the kernels with shared memory
#   bench     (not by default) bench/gpu_train_step_vs_torch.py: qtune's W4A4 training step on
#             cuda against PyTorch eager and compiled, alternated in one script
#   torch     bench/gpu_train_step_torch.py: PyTorch's images/s for the same model, eager and
#             torch.compile (the baseline)
# Environment: GPU_CHECK_STEPS, GPU_CHECK_DEADLINE_S (0: none), QT_GPU_BUNDLE (default
# build-gpu), GPU_ACCURACY_EPOCHS (train: 0, accuracy: 3), TORCH_BUDGET_S (270), PYTHON (python3).
set -u
cd "$(dirname "$0")/.."
RES=${1:-${OUT:-bench/out/gpu}}
mkdir -p "$RES"
PY=${PYTHON:-python3}
BUNDLE=${QT_GPU_BUNDLE:-build-gpu}
STEPS=${GPU_CHECK_STEPS:-env probe ops train sanitize torch}
status=0
summary() { echo "$*" | tee -a "$RES/summary.txt"; }

# cuDNN and cuBLAS from the machine's Python packages, and the bundle's own libraries.
pkgdirs() { # lib|include
    $PY - "$1" <<'EOF' 2>/dev/null
import importlib, os, sys
out = []
for mod in ("nvidia.cudnn", "nvidia.cublas", "nvidia.cu13", "nvidia.cuda_runtime"):
    try:
        m = importlib.import_module(mod)
    except ImportError:
        continue
    for p in m.__path__:
        for sub in ((sys.argv[1],) if sys.argv[1] == "include" else ("lib", "lib64")):
            if os.path.isdir(os.path.join(p, sub)):
                out.append(os.path.join(p, sub))
print(":".join(out))
EOF
}
libdirs=$(pkgdirs lib)
incdirs=$(pkgdirs include)
qtlib=/tmp/qtune-gpu-lib
if ls "$BUNDLE"/lib/*.xz >/dev/null 2>&1; then
    mkdir -p "$qtlib"
    for f in "$BUNDLE"/lib/*.xz; do
        $PY -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
            "$f" "$qtlib/$(basename "$f" .xz)"
    done
    libdirs="$libdirs${libdirs:+:}$qtlib"
fi
[ -n "$libdirs" ] && export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Each step runs under what is left of GPU_CHECK_DEADLINE_S (seconds from the start; 0: none).
DEADLINE=${GPU_CHECK_DEADLINE_S:-0}
run_step() { # name
    local name=$1
    local t0=$SECONDS left=0
    if [ "$DEADLINE" -gt 0 ]; then
        left=$((DEADLINE - SECONDS))
        if [ $left -le 5 ]; then
            summary "step $name: skipped, GPU_CHECK_DEADLINE_S=$DEADLINE reached"
            status=1
            return
        fi
    fi
    timeout $left bash -c "step_$name" >"$RES/$name.txt" 2>&1
    local rc=$?
    cat "$RES/$name.txt"
    summary "step $name: exit $rc in $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo ' (out of time)')"
    [ $rc -eq 0 ] || status=1
}

step_env() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    echo "nvcc: $(command -v nvcc) $(nvcc --version 2>/dev/null | tail -1)"
    echo "compute-sanitizer: $(command -v compute-sanitizer || echo absent)"
    echo "python: $($PY -c 'import sys, torch; print(sys.executable, torch.__version__, torch.version.cuda)')"
    echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
    for d in ${libdirs//:/ }; do ls "$d" | grep -E 'cudnn|cublas|cudart' | sed "s|^|  $d/|"; done
    ldconfig -p | grep -E 'libcudnn.so|libcublas.so|libcuda.so' || true
    [ -x "$BUNDLE/qtune" ] && { echo "qtune bundle:"; ldd "$BUNDLE/qtune" | grep -E 'not found|cudnn|cublas|dnnl'; }
    return 0
}

step_probe() {
    local bin=$BUNDLE/gpu-probe
    if [ ! -x "$bin" ]; then
        bin=$RES/gpu-probe
        local inc="" lib="" dnn blas
        for d in ${incdirs//:/ }; do inc="$inc -I$d"; done
        for d in ${libdirs//:/ }; do lib="$lib -L$d"; done
        # Python packages ship versioned sonames only: link against them by file name.
        dnn=$(for d in ${libdirs//:/ }; do ls "$d"/libcudnn.so.[0-9]* 2>/dev/null; done | head -1)
        blas=$(for d in ${libdirs//:/ }; do ls "$d"/libcublas.so.[0-9]* 2>/dev/null; done | head -1)
        dnn=${dnn:+-Xlinker -l:$(basename "$dnn")}
        blas=${blas:+-Xlinker -l:$(basename "$blas")}
        echo "building gpu-probe here: nvcc $inc $lib ${dnn:--lcudnn} ${blas:--lcublas}"
        nvcc -O2 -gencode arch=compute_90,code=[sm_90,compute_90] $inc scripts/gpu-probe.cu \
            $lib ${dnn:--lcudnn} ${blas:--lcublas} -o "$bin" || return 1
    fi
    "$bin"
}

step_ops() {
    local out rc
    out=$("$BUNDLE/qtune-tests" backends_ 2>&1)
    rc=$?
    echo "$out"
    # The harness compares only the backends it could create: cuda must be one of them.
    echo "$out" | grep -q "(cpu,cuda) against ref" || { echo "the cuda backend was not compared"; rc=1; }
    return $rc
}

step_train() {
    local data=() acc=${GPU_ACCURACY_EPOCHS:-0}
    [ -f "$BUNDLE/shared/cifar10-jpeg.tar.gz" ] &&
        data=(--data "$BUNDLE/shared/cifar10-jpeg.tar.gz" --model "$BUNDLE/shared/resnet20_cifar10_fp32_bn.onnx")
    PYTHONUNBUFFERED=1 $PY scripts/gpu_train_checks.py --qtune "$BUNDLE/qtune" ${data[@]+"${data[@]}"} \
        --accuracy-epochs "$acc"
}

step_accuracy() {
    [ -f "$BUNDLE/shared/cifar10-jpeg.tar.gz" ] || { echo "no CIFAR-10 in the bundle"; return 1; }
    PYTHONUNBUFFERED=1 $PY scripts/gpu_train_checks.py --qtune "$BUNDLE/qtune" --only-accuracy \
        --data "$BUNDLE/shared/cifar10-jpeg.tar.gz" --model "$BUNDLE/shared/resnet20_cifar10_fp32_bn.onnx" \
        --accuracy-epochs "${GPU_ACCURACY_EPOCHS:-3}"
}

step_sanitize() {
    set -o pipefail
    command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer absent"; return 1; }
    local cs="compute-sanitizer --error-exitcode 9 --print-limit 20"
    local rc=0 t
    for t in backends_quantizers backends_batchnorm backends_xent backends_sgd backends_calibration backends_binary; do
        timeout 120 $cs --tool memcheck "$BUNDLE/qtune-tests" "$t" | tail -3 || rc=1
    done
    for t in backends_batchnorm backends_quantizers backends_global_avgpool; do
        timeout 120 $cs --tool racecheck "$BUNDLE/qtune-tests" "$t" | tail -3 || rc=1
    done
    local d=/tmp/qtune-sanitize-run
    mkdir -p "$d"
    $PY -c "import sys; sys.path.insert(0, 'scripts'); import gpu_train_checks as g; g.make_cifar('$d/c', 160, 64)"
    "$BUNDLE/qtune" init resnet20 --input 3x32x32 --classes 10 --seed 3 -o "$d/r.onnx" >/dev/null
    timeout 300 $cs --tool memcheck "$BUNDLE/qtune" finetune "$d/r.onnx" --data "$d/c" --wbits 4 --abits 4 \
        --epochs 1 --batch 64 --calib-batches 1 --preset cifar10 --device cuda --quiet --json \
        -o "$d/q.onnx" | tail -4 || rc=1
    return $rc
}

step_bench() {
    PYTHONUNBUFFERED=1 $PY bench/gpu_train_step_vs_torch.py --qtune "$BUNDLE/qtune"
}

step_torch() {
    PYTHONUNBUFFERED=1 $PY bench/gpu_train_step_torch.py --budget-s "${TORCH_BUDGET_S:-270}" \
        --variants fp32-train-eager,w4a4-train-eager,fp32-eval-eager,w4a4-eval-eager,w4a4-train-compile,fp32-train-compile,w4a4-train-compile-ro,w4a4-eval-compile
}

export RES PY BUNDLE libdirs incdirs LD_LIBRARY_PATH
export -f step_env step_probe step_ops step_train step_accuracy step_sanitize step_bench step_torch summary
for s in $STEPS; do
    run_step "$s"
done
summary "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
