"""PSGD against plain SGD, same budget: each fine-tunes the FP32 model for --epochs epochs (same
seed, learning rate, schedule, weight decay, data order and augmentation), then both are rounded
to a --wbits uniform weight grid with float activations (W4A32) by the same post-training
quantization, and evaluated on the whole test split.

Two roundings of each model:
- "round": the weights only, to the symmetric grid of 2^(b-1) - 1 steps per side scaled by the
  tensor's max |w| (--ptq weights=minmax, no standardization, per tensor, the first and last
  layers too), BatchNorm statistics kept (bn=own), no bias correction: what PSGD's evaluation
  does.
- "qtune ptq": qtune's defaults for --epochs 0 on top (BatchNorm statistics and bias
  correction chosen on held-out training images).

The gap is the trained FP32 model's top-1 minus its rounded top-1; "closed" is the share of
plain SGD's gap that PSGD's rounded model makes up: (round(PSGD) - round(SGD)) / gap(SGD).

usage: .venv/bin/python bench/psgd_vs_sgd.py [--model M] [--data D] [--epochs 3]
       [--wbits 4] [--lambda-s 150] [--lr 0.01] [--qtune BIN] [--out FILE]
Defaults: the shared ResNet-20 (BatchNorm file) and CIFAR-10 JPEG data (../shared or QT_SHARED).
"""
import argparse
import json
import os
import subprocess
import tempfile

import benchlib

REPO = benchlib.REPO
QTUNE = os.path.join(REPO, "build", "qtune")


def shared(*p):
    return os.path.join(os.path.abspath(os.environ.get("QT_SHARED") or
                                        os.path.join(REPO, "..", "shared")), *p)


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def run(log, cmd):
    log("$ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        log(p.stderr[-2000:])
        raise SystemExit("command failed")
    return last_json(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=shared("models", "resnet20_cifar10_fp32_bn.onnx"))
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--lambda-s", default="150")
    ap.add_argument("--lr", default="0.01")
    ap.add_argument("--wd", default="1e-4")
    ap.add_argument("--qtune", default=QTUNE, help="the qtune binary (default build/qtune)")
    ap.add_argument("--out")
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "PSGD against plain SGD, same budget, then W%dA32 post-training "
                         "rounding" % a.wbits)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    log("qtune:    %s (%s)" % (commit, os.path.relpath(a.qtune, REPO) if a.qtune.startswith(REPO)
                                 else a.qtune))
    common = ["--data", a.data, "--preset", a.preset, "--json", "--quiet"]
    train = ["--epochs", str(a.epochs), "--lr", a.lr, "--wd", a.wd, "--schedule", "cosine",
             "--seed", "0"]
    ptq = ["--epochs", "0", "--wbits", str(a.wbits), "--abits", "0", "--scheme", "uniform",
           "--no-standardize", "--first-last", "same"]
    rounding = {"round": ["--ptq", "weights=minmax,bias=off,bn=own"],
                "qtune ptq": ["--ptq", "weights=minmax"]}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        models = {"FP32 input": (a.model, None)}
        for name, extra in [("SGD", []), ("PSGD", ["--psgd", "--wbits", str(a.wbits),
                                                   "--lambda-s", a.lambda_s])]:
            out = os.path.join(tmp, name + ".onnx")
            j = run(log, [a.qtune, "train", a.model, "-o", out] + common + train + extra)
            log("  %s: %d epochs, %.0f s, FP32 test top-1 %.2f%%" % (name, j["epochs"],
                                                                     j["seconds"], j["top1"]))
            models[name] = (out, j["top1"])
        for name, (path, fp) in models.items():
            if fp is None:
                fp = run(log, [a.qtune, "eval", path, "--data", a.data, "--preset", a.preset,
                               "--json"])["top1"]
            rows[name] = {"fp32": fp}
            for rname, rargs in rounding.items():
                j = run(log, [a.qtune, "finetune", path, "-o", os.path.join(tmp, "q.onnx")] +
                        common + ptq + rargs)
                rows[name][rname] = j["top1"]
    log()
    log("W%dA32, CIFAR-10 test split (10,000 images), top-1 %%:" % a.wbits)
    log("%-11s %7s %7s %6s %10s %6s" % ("model", "FP32", "round", "gap", "qtune ptq", "gap"))
    for name, r in rows.items():
        log("%-11s %7.2f %7.2f %6.2f %10.2f %6.2f" % (
            name, r["fp32"], r["round"], r["fp32"] - r["round"], r["qtune ptq"],
            r["fp32"] - r["qtune ptq"]))
    s, p = rows["SGD"], rows["PSGD"]
    for rname in rounding:
        gap = s["fp32"] - s[rname]
        closed = (p[rname] - s[rname]) / gap if gap > 0 else float("nan")
        log("%s: PSGD closes %.0f%% of plain SGD's gap (%.2f points of %.2f)" % (
            rname, 100 * closed, p[rname] - s[rname], gap))
    log.close()


if __name__ == "__main__":
    main()
