"""The learning rates of the fine-tuning after BSQ: one set of bit planes (--bsq-epochs of
bit-plane training at --decay from the shared ResNet-20, A4), then one epoch of fine-tuning
from it with each set of rates, top-1 on the whole CIFAR-10 test split before and after.
BSQ's converted layers quantize the weights on their own scale (no standardization), where
the defaults of the standardized layers (lr 0.04, weight alphas 0.02, activation alphas 0.1)
are large; qtune's BSQ default is a tenth of each.

usage: .venv/bin/python bench/bsq_finetune_lr.py [--decay 1] [--bsq-epochs 1] [--qtune BIN]
       [--out FILE]
"""
import argparse
import os
import tempfile

import benchlib
from mixed_vs_uniform import run, shared

REPO = benchlib.REPO

VARIANTS = [
    ("qtune's BSQ default (a tenth)", []),
    ("standardized layers' rates", ["--lr", "0.04", "--alpha-lr-weight", "0.02",
                                    "--alpha-lr-act", "0.1"]),
    ("lr a tenth, alphas' rates not", ["--lr", "0.004", "--alpha-lr-weight", "0.02",
                                       "--alpha-lr-act", "0.1"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=shared("models", "resnet20_cifar10_fp32_bn.onnx"))
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--decay", default="1")
    ap.add_argument("--bsq-epochs", type=int, default=1)
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out")
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "fine-tuning after BSQ: one epoch from the same bit planes with each "
                         "set of learning rates")
    common = ["--data", a.data, "--preset", "cifar10", "--json", "--quiet", "--abits", "4",
              "--seed", "0", "--mixed", "bsq", "--decay", a.decay, "--bsq-epochs",
              str(a.bsq_epochs), "--bsq-interval", str(a.bsq_epochs)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        planes = os.path.join(tmp, "planes.onnx")
        j = run(log, [a.qtune, "finetune", a.model, "-o", planes, "--epochs", "0"] + common)
        log("  bit planes: %s bytes, bits %s, top-1 %.2f%%" % (
            j["bsq"]["bytes"], " ".join(map(str, j["bsq"]["bits"])), j["bsq"]["top1"]))
        for name, args in VARIANTS:
            out = os.path.join(tmp, "ft.onnx")
            j = run(log, [a.qtune, "finetune", os.path.join(tmp, "planes.bsq.onnx"), "-o", out,
                          "--epochs", "1"] + common + args)
            rows.append((name, j["start_top1"], j["top1"]))
            log("  %s: top-1 %.2f%% -> %.2f%%" % (name, j["start_top1"], j["top1"]))
    log("")
    log("%-32s %10s %8s %8s" % ("fine-tuning rates", "before ft", "top-1", "change"))
    for name, start, top1 in rows:
        log("%-32s %10.2f %8.2f %+8.2f" % (name, start, top1, top1 - start))
    log.close()


if __name__ == "__main__":
    main()
