#!/bin/bash
# Every GPU check in one run, on a fresh GPU machine; results under one folder.
#   scripts/gpu-check.sh [RESULTS_DIR]   (default: $OUT if set, else bench/out/gpu)
# Steps (each one's output in RESULTS_DIR/<step>.txt, a summary in RESULTS_DIR/summary.txt):
#   env    the GPU, driver, nvcc, and where cuDNN and cuBLAS are (system or Python packages)
#   probe  scripts/gpu-probe.cu: cuDNN convolutions (forward, backward data, backward filter)
#          and cuBLAS Sgemm against direct sums in double, device copy bandwidth; uses
#          GPU_PROBE_BIN if given (a binary built elsewhere), else builds it with nvcc here
#   torch  bench/gpu_train_step_torch.py: PyTorch's images/s for ResNet-20 training and
#          evaluation, FP32 and W4A4 APoT, eager and torch.compile (the baseline)
# The CUDA backend itself (kernels/cuda) is not part of qtune yet: nothing here runs qtune.
# Environment: GPU_CHECK_STEPS (default "env probe torch"), TORCH_BUDGET_S (default 270),
# PYTHON (default python3).
set -u
cd "$(dirname "$0")/.."
RES=${1:-${OUT:-bench/out/gpu}}
mkdir -p "$RES"
PY=${PYTHON:-python3}
STEPS=${GPU_CHECK_STEPS:-env probe torch}
status=0
summary() { echo "$*" | tee -a "$RES/summary.txt"; }

# cuDNN and cuBLAS from the machine's Python packages when the system has none.
libdirs=$($PY - <<'EOF' 2>/dev/null
import importlib, os
out = []
for mod in ("nvidia.cudnn", "nvidia.cublas", "nvidia.cu13", "nvidia.cuda_runtime"):
    try:
        m = importlib.import_module(mod)
    except ImportError:
        continue
    for p in m.__path__:
        for sub in ("lib", "lib64"):
            if os.path.isdir(os.path.join(p, sub)):
                out.append(os.path.join(p, sub))
print(":".join(out))
EOF
)
incdirs=$($PY - <<'EOF' 2>/dev/null
import importlib, os
out = []
for mod in ("nvidia.cudnn", "nvidia.cublas", "nvidia.cu13", "nvidia.cuda_runtime"):
    try:
        m = importlib.import_module(mod)
    except ImportError:
        continue
    for p in m.__path__:
        if os.path.isdir(os.path.join(p, "include")):
            out.append(os.path.join(p, "include"))
print(" ".join(out))
EOF
)
if [ -n "$libdirs" ]; then
    export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

run_step() { # name command...
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$RES/$name.txt" 2>&1
    local rc=$?
    cat "$RES/$name.txt"
    summary "step $name: exit $rc in $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || status=1
}

step_env() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    echo "nvcc: $(command -v nvcc) $(nvcc --version 2>/dev/null | tail -1)"
    echo "compute-sanitizer: $(command -v compute-sanitizer || echo absent)"
    echo "python: $($PY -c 'import sys, torch; print(sys.executable, torch.__version__, torch.version.cuda)')"
    echo "library dirs from Python packages: ${libdirs:-none}"
    echo "include dirs from Python packages: ${incdirs:-none}"
    for d in ${libdirs//:/ }; do ls "$d" | grep -E 'cudnn|cublas|cudart' | sed "s|^|  $d/|"; done
    for d in $incdirs; do ls "$d" | grep -E '^cudnn.h|cublas_v2.h|cuda_runtime.h' | sed "s|^|  $d/|"; done
    ldconfig -p | grep -E 'libcudnn.so|libcublas.so|libcuda.so' || true
}

step_probe() {
    local bin=${GPU_PROBE_BIN:-}
    if [ -z "$bin" ]; then
        bin=$RES/gpu-probe
        local inc=""
        for d in $incdirs; do inc="$inc -I$d"; done
        local lib=""
        for d in ${libdirs//:/ }; do lib="$lib -L$d"; done
        # Python packages ship versioned sonames only: link against them by file name.
        local dnn blas
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

step_torch() {
    PYTHONUNBUFFERED=1 $PY bench/gpu_train_step_torch.py --budget-s "${TORCH_BUDGET_S:-270}" \
        --variants fp32-train-eager,w4a4-train-eager,fp32-eval-eager,w4a4-eval-eager,w4a4-train-compile,fp32-train-compile,w4a4-train-compile-ro,w4a4-eval-compile
}

for s in $STEPS; do
    run_step "$s" "step_$s"
done
summary "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
