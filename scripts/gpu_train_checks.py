"""Whole-model checks of a GPU backend against the CPU backend (scripts/gpu-check.sh runs it on
a GPU machine; with --dev ref it runs anywhere, slowly, as a check of this script).

parity    ResNet-20 (`qtune init`, seed 3) on a synthetic CIFAR-10 folder of --parity-images
          images (random pixels and labels), batch 128, no augmentation: one FP32 `train` epoch
          and one W4A4 APoT `finetune` epoch on --base and on --dev; the per-step training
          losses must agree within 1e-3 (FP32) and 1e-2 (W4A4: a value within float rounding
          of a level midpoint takes the neighbouring level on one backend) relative, and the
          final test loss likewise; a checkpoint of one FP32 epoch on either backend resumed on
          the other gives the second epoch's losses of two epochs straight on --base (1e-3).
eval      with --data (CIFAR-10) and --model (a trained ResNet-20): `qtune eval` on both, loss
          within 1e-4 and top-1 within 1e-3 relative.
speed     with --data and --model: one epoch of W4A4 APoT fine-tuning and one of FP32
          training on --dev, images/s as qtune reports them.
accuracy  with --accuracy-epochs E > 0: FP32 fine-tuning and W4A4 -> W3A3 -> W2A2 progressive
          APoT fine-tuning, E epochs each (cosine), top-1 on the test split.
Prints a table; exits 1 when a parity check fails or a command fails.
Usage: python3 scripts/gpu_train_checks.py --qtune BIN [--base cpu] [--dev cuda]
       [--parity-images 1280] [--data CIFAR] [--model ONNX] [--accuracy-epochs E] [--out DIR]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FAIL = []


def run(cmd, log):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.time() - t0
    log("$ %s  (%.1f s, exit %d)" % (" ".join(cmd), dt, p.returncode))
    if p.returncode != 0:
        log(p.stdout[-2000:] + p.stderr[-3000:])
        FAIL.append(" ".join(cmd[:2]))
        return None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def step_losses(out):
    with open(out[:-len(".onnx")] + ".log.jsonl") as f:
        return [s for line in f for s in json.loads(line).get("step_loss", [])]


def epochs(out):
    with open(out[:-len(".onnx")] + ".log.jsonl") as f:
        return [json.loads(line) for line in f if '"epoch"' in line]


def make_cifar(folder, n_train, n_test, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = n_train // 5
    for name, count in [("data_batch_%d.bin" % i, per) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        rec = np.concatenate([rng.integers(0, 10, (count, 1), dtype=np.uint8),
                              rng.integers(0, 256, (count, 3072), dtype=np.uint8)], axis=1)
        rec.tofile(os.path.join(folder, name))
    return folder


def compare(name, a, b, rtol, log):
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.size == 0:
        log("%-28s FAIL: %d vs %d values" % (name, a.size, b.size))
        FAIL.append(name)
        return
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    ok = bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(rel <= rtol))
    log("%-28s %s  max rel diff %.3g over %d values (tolerance %g)"
        % (name, "ok  " if ok else "FAIL", float(np.max(rel)) if rel.size else 0.0, a.size, rtol))
    if not ok:
        for i, (x, y) in enumerate(zip(a, b)):
            log("    %3d  %.9g  %.9g" % (i, x, y))
        FAIL.append(name)


def accuracy(a, q, tmp, common, log):
    """FP32 fine-tuning and W4A4 -> W3A3 -> W2A2 progressive APoT fine-tuning of --model."""
    if a.train_limit:
        common = common + ["--train-limit", str(a.train_limit), "--test-limit", str(a.train_limit)]
    E = str(a.accuracy_epochs)
    acc = {}
    out = os.path.join(tmp, "acc_fp32.onnx")
    j = run([q, "train", a.model, "--data", a.data, "--epochs", E, "--lr", "0.01",
             "--device", a.dev, "-o", out] + common, log)
    if j is not None:
        acc["FP32"] = j["top1"]
        log("FP32: top-1 %.2f%% after %s epochs" % (j["top1"], E))
    src = a.model
    for bits in (4, 3, 2):
        out = os.path.join(tmp, "acc_w%d.onnx" % bits)
        j = run([q, "finetune", src, "--data", a.data, "--wbits", str(bits), "--abits", str(bits),
                 "--epochs", E, "--reset-alphas", "--device", a.dev, "-o", out] + common, log)
        if j is None:
            break
        acc["W%dA%d" % (bits, bits)] = j["top1"]
        log("W%dA%d: top-1 %.2f%% (start %.2f%%) after %s epochs, %.1f s"
            % (bits, bits, j["top1"], j.get("start_top1", float("nan")), E, j["seconds"]))
        src = out
    log("accuracy (%s epochs each, %s): %s" % (E, a.dev, ", ".join("%s %.2f%%" % kv for kv in acc.items())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtune", required=True)
    ap.add_argument("--base", default="cpu")
    ap.add_argument("--dev", default="cuda")
    ap.add_argument("--parity-images", type=int, default=1280)
    ap.add_argument("--data", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--accuracy-epochs", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="speed and accuracy runs: first N images")
    ap.add_argument("--only-accuracy", action="store_true", help="skip the parity and speed runs")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    q = a.qtune
    tmp = a.out or tempfile.mkdtemp(prefix="qt-gpu-")
    os.makedirs(tmp, exist_ok=True)
    common = ["--batch", "128", "--preset", "cifar10", "--quiet", "--json", "--seed", "0"]
    try:
        if a.only_accuracy:
            accuracy(a, q, tmp, common, log)
            return
        # ---- parity ----
        cifar = make_cifar(os.path.join(tmp, "synthetic"), a.parity_images, 256)
        r20 = os.path.join(tmp, "r20.onnx")
        run([q, "init", "resnet20", "--input", "3x32x32", "--classes", "10", "--seed", "3", "-o", r20], log)
        res = {}
        for dev in (a.base, a.dev):
            fp = os.path.join(tmp, "fp32_%s.onnx" % dev)
            qq = os.path.join(tmp, "w4a4_%s.onnx" % dev)
            res[dev] = (run([q, "train", r20, "--data", cifar, "--epochs", "1", "--no-augment",
                             "--device", dev, "-o", fp] + common, log),
                        run([q, "finetune", r20, "--data", cifar, "--wbits", "4", "--abits", "4",
                             "--epochs", "1", "--no-augment", "--device", dev, "-o", qq] + common, log))
            if None in res[dev]:
                return
        fb, fd = (os.path.join(tmp, "fp32_%s.onnx" % d) for d in (a.base, a.dev))
        qb, qd = (os.path.join(tmp, "w4a4_%s.onnx" % d) for d in (a.base, a.dev))
        compare("FP32 step losses", step_losses(fd), step_losses(fb), 1e-3, log)
        compare("FP32 test loss", [res[a.dev][0]["loss"]], [res[a.base][0]["loss"]], 1e-3, log)
        compare("W4A4 step losses", step_losses(qd), step_losses(qb), 1e-2, log)
        compare("W4A4 test loss", [res[a.dev][1]["loss"]], [res[a.base][1]["loss"]], 1e-2, log)
        # ---- checkpoints move between devices: epoch 1 on one, --resume epoch 2 on the other ----
        rs = ["--schedule", "step", "--milestones", "1"]
        straight = os.path.join(tmp, "straight.onnx")
        if run([q, "train", r20, "--data", cifar, "--epochs", "2", "--device", a.base, "-o", straight]
               + rs + common, log) is None:
            return
        for d1, d2 in ((a.base, a.dev), (a.dev, a.base)):
            first = os.path.join(tmp, "first_%s.onnx" % d1)
            resumed = os.path.join(tmp, "resumed_%s.onnx" % d2)
            if run([q, "train", r20, "--data", cifar, "--epochs", "1", "--device", d1, "-o", first]
                   + rs + common, log) is None or \
                    run([q, "train", r20, "--data", cifar, "--epochs", "2", "--device", d2, "--resume",
                         first + ".ckpt", "-o", resumed] + rs + common, log) is None:
                return
            want = step_losses(straight)
            compare("resume %s -> %s" % (d1, d2), step_losses(resumed), want[len(want) // 2:], 1e-3, log)
        for d in (a.base, a.dev):
            log("%-5s FP32 %.0f img/s, W4A4 %.0f img/s (synthetic, %d images, whole command)"
                % (d, res[d][0]["images_per_s"], res[d][1]["images_per_s"], a.parity_images))
        if FAIL or not a.data:
            return
        if a.train_limit:
            common += ["--train-limit", str(a.train_limit), "--test-limit", str(a.train_limit)]
        # ---- evaluation of the trained model on both backends ----
        ev = {}
        for dev in (a.base, a.dev):
            ev[dev] = run([q, "eval", a.model, "--data", a.data, "--device", dev, "--json", "--preset", "cifar10"], log)
            if ev[dev] is None:
                return
            log("%-5s eval: top-1 %.2f%%, loss %.6f, %.1f s" % (dev, ev[dev]["top1"], ev[dev]["loss"],
                                                              ev[dev].get("seconds", float("nan"))))
        compare("eval loss", [ev[a.dev]["loss"]], [ev[a.base]["loss"]], 1e-4, log)
        compare("eval top-1", [ev[a.dev]["top1"]], [ev[a.base]["top1"]], 1e-3, log)
        # ---- speed, on the real data ----
        sp = {}
        for name, cmd in (
                ("W4A4 fine-tune", ["finetune", a.model, "--wbits", "4", "--abits", "4"]),
                ("FP32 train", ["train", a.model])):
            out = os.path.join(tmp, "speed_%s.onnx" % name.split()[0])
            j = run([q] + cmd + ["--data", a.data, "--epochs", "1", "--device", a.dev, "-o", out] + common, log)
            if j is None:
                return
            ep = epochs(out)[-1]
            sp[name] = (j, ep)
            log("%-16s epoch: %.1f s, %.0f img/s (%.1f s assembling batches), test top-1 %.2f%%, "
                "command %.1f s" % (name, ep["seconds"], ep["images_per_s"], ep.get("data_seconds", 0),
                                    ep["top1"], j["seconds"]))
        if a.accuracy_epochs > 0:
            accuracy(a, q, tmp, common, log)
    finally:
        log("gpu_train_checks: %s" % ("FAILED: " + ", ".join(FAIL) if FAIL else "passed"))
        if a.out:
            with open(os.path.join(a.out, "gpu_train_checks.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
    sys.exit(1 if FAIL else 0)
