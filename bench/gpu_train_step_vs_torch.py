"""W4A4 APoT fine-tuning of ResNet-20 (batch 128, 3x32x32, SGD momentum 0.9) on one GPU: qtune's
cuda backend against PyTorch running the same quantized model (bench/gpu_train_step_torch.py:
bucketize projection, autograd Functions with APOT.md's gradients), eager, torch.compile and
torch.compile(mode="reduce-overhead"), alternated over several rounds; prints each round, the
median and min-max of the step times and of the per-round speedups (PyTorch step / qtune step).

qtune: `qtune finetune --wbits 4 --abits 4 --device cuda` on a synthetic CIFAR-10 folder,
benchlib.QTUNE_STEP_TIMED["wall"] (the training loop's wall time from the per-epoch log,
difference of runs of S and 2S steps / S: forward, backward, SGD update and assembling each
batch on the host; not loading, calibration, evaluation or saving). PyTorch: one fixed random
batch already on the GPU, CUDA events around S steps after warm-up (compilation there).
Usage: python3 bench/gpu_train_step_vs_torch.py --qtune build-gpu/qtune [--rounds 3]
       [--steps 100] [--variants w4a4-train-eager,...] [--out FILE]"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import benchlib  # noqa: E402
import gpu_train_step_torch as gt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtune", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--variants", default="w4a4-train-eager,w4a4-train-compile,w4a4-train-compile-ro")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import torch
    log = benchlib.Log(a.out)
    try:
        p = torch.cuda.get_device_properties(0)
        log("training step, W4A4 APoT ResNet-20, batch 128: qtune --device cuda vs PyTorch, "
            "%d alternated rounds" % a.rounds)
        log("command:  python3 %s" % " ".join(sys.argv))
        log("date:     %s" % time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        log("device:   %s, %d SMs; torch %s, CUDA %s, cuDNN %s; cudnn.benchmark on, "
            "cudnn.allow_tf32=%s; qtune: FP32 arithmetic (no TF32)"
            % (p.name, p.multi_processor_count, torch.__version__, torch.version.cuda,
               torch.backends.cudnn.version(), torch.backends.cudnn.allow_tf32))
        log("timed:    qtune: %s (S = %d); pytorch: CUDA events around %d steps on one batch"
            % (benchlib.QTUNE_STEP_TIMED["wall"], a.steps, a.steps))
        torch.backends.cudnn.benchmark = True
        progs = []
        with tempfile.TemporaryDirectory() as tmp:
            cmd = []

            def qtune():
                s, c = benchlib.qtune_step(a.qtune, 16, a.steps, 128, tmp,
                                           command=("finetune", "--wbits", "4", "--abits", "4",
                                                    "--device", "cuda"), tag="w4a4")
                cmd[:] = [c]
                return s
            progs.append(("qtune-cuda-w4a4", qtune))
            for name in a.variants.split(","):
                v = gt.Variant(name, *gt.VARIANTS[name])
                log("%-24s prepared in %.1f s" % (name, v.prepare()))
                progs.append((name, lambda v=v: v.time(a.steps)))
            t = benchlib.alternate(log, a.rounds, progs)
            log("qtune command (last): %s" % cmd[0])
        log("step ms:")
        for name, _ in progs:
            log("  %-24s %s   %s img/s" % (name, benchlib.spread(t[name], 1e3),
                                          "%.0f" % (128 / statistics.median(t[name]))))
        for name, _ in progs[1:]:
            log("speedup %s / qtune step time: %s" % (name, benchlib.ratio_spread(t[name], t["qtune-cuda-w4a4"])))
    finally:
        log.close()


if __name__ == "__main__":
    main()
