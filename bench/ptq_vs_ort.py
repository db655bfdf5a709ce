"""Post-training quantization: qtune (`finetune --epochs 0`) against onnxruntime's static
quantization (quantize_static, QDQ, int8 weights, uint8 activations, MinMax calibration), both
calibrated on the same training images, both evaluated on the whole test split.

onnxruntime runs per tensor and per channel. qtune runs W8A8 uniform (per tensor and per
channel), W4A8 and W4A4 uniform per channel and W4A4 APoT, with the activation calibration
methods (--ptq calib=mse|minmax|percentile), bias correction (bias=on: a third BatchNorm
candidate on the held-out images) and AdaRound (adaround=on) where they matter, and W8A8 with
the map-back of standardized weights off (restore=off) to show what it does.
The FP32 top-1 comes from onnxruntime on the input model.

The calibration images: qtune takes the first --calib-images of a seeded permutation of the
training split (util/rng.h: xoshiro256** seeded through splitmix64 with seed ^ 0x63616c6962,
Fisher-Yates; the split in archive order); this script draws the same permutation and hands
onnxruntime those images, decoded with PIL (qtune decodes with libjpeg; the test images are
decoded with PIL for onnxruntime too).

usage: .venv-quant/bin/python bench/ptq_vs_ort.py [--models bn,folded] [--data DATA]
       [--calib-images 512] [--quick] [--out FILE]
(.venv-quant comes from `scripts/deps.sh quant`: onnxruntime's quantization tools need PyPI's
onnx.) Defaults: the shared ResNet-20 files and CIFAR-10 JPEG data (../shared or QT_SHARED).
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

import benchlib

REPO = benchlib.REPO
QTUNE = os.path.join(REPO, "build", "qtune")
MEAN = np.array([0.491, 0.482, 0.447], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.247, 0.243, 0.262], np.float32).reshape(1, 3, 1, 1)
M64 = (1 << 64) - 1


def shared(*p):
    return os.path.join(os.path.abspath(os.environ.get("QT_SHARED") or
                                        os.path.join(REPO, "..", "shared")), *p)


class Rng:
    """util/rng.h in Python: xoshiro256** seeded through splitmix64."""

    def __init__(self, seed):
        self.s = []
        x = seed & M64
        for _ in range(4):
            x = (x + 0x9e3779b97f4a7c15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
            z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        x = (s[1] * 5) & M64
        res = ((((x << 7) | (x >> 57)) & M64) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return res

    def below(self, n):
        return ((self.next() >> 32) * n) >> 32


def calib_indices(n, count, seed=0):
    perm = list(range(n))
    r = Rng(seed ^ 0x63616c6962)
    for i in range(n - 1, 0, -1):
        j = r.below(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm[:count]


def split_members(tf, split):
    """The split's images in archive order (qtune's order) and their class ids (sorted union
    of both splits' class folder names)."""
    files = [m for m in tf.getmembers() if m.isfile() and len(m.name.split("/")) == 3]
    classes = sorted({m.name.split("/")[1] for m in files})
    mine = [m for m in files if m.name.split("/")[0] == split]
    return mine, [classes.index(m.name.split("/")[1]) for m in mine]


def decode(tf, members):
    from PIL import Image
    xs = [np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"), np.uint8)
          for m in members]
    x = np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).astype(np.float32)


def ort_top1(ort, path, x, y, batch=500):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    hits = 0
    for i in range(0, len(x), batch):
        out = s.run(None, {name: x[i:i + batch]})[0]
        assert np.all(np.isfinite(out)), path + ": non-finite outputs"
        hits += int((out.argmax(1) == y[i:i + batch]).sum())
    return 100.0 * hits / len(x)


def ort_quantize(model, out, calib, per_channel):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.it = iter([{name: calib[i:i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.it, None)

    import onnx
    name = onnx.load(model).graph.input[0].name
    pre = out + ".pre.onnx"
    quant_pre_process(model, pre, skip_symbolic_shape=True)
    quantize_static(pre, out, Reader(name), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel)


def qtune_ptq(model, data, tmp, calib_images, args):
    out = os.path.join(tmp, "q.onnx")
    cmd = [QTUNE, "finetune", model, "--data", data, "--preset", "cifar10", "--epochs", "0",
           "--calib-images", str(calib_images), "--json", "-o", out] + args
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("qtune failed: %s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall"] = time.time() - t0
    return r


CONFIGS = [  # (label, finetune options, --ptq variants)
    ("W8A8 uniform per-tensor", ["--bits", "8", "--scheme", "uniform"],
     ["calib=mse,weights=mse,bias=off", "calib=minmax,weights=mse,bias=off", "calib=percentile,weights=mse,bias=off",
      "calib=minmax,weights=minmax,bias=off", "calib=minmax,weights=mse,bias=on",
      "calib=minmax,weights=mse,restore=off,bias=off"]),
    ("W8A8 uniform per-channel", ["--bits", "8", "--scheme", "uniform", "--per-channel"],
     ["calib=mse,weights=minmax,bias=off", "calib=minmax,weights=minmax,bias=off",
      "calib=percentile,weights=minmax,bias=off", "calib=minmax,weights=mse,bias=off",
      "calib=minmax,weights=minmax,bias=on", "calib=minmax,weights=minmax,restore=off,bias=off"]),
    ("W4A8 uniform per-channel", ["--wbits", "4", "--abits", "8", "--scheme", "uniform",
                                  "--per-channel"],
     ["calib=mse,weights=minmax,bias=off", "calib=minmax,weights=minmax,bias=off", "calib=minmax,weights=mse,bias=off",
      "calib=minmax,weights=minmax,bias=on", "calib=minmax,weights=minmax,adaround=on,bias=off",
      "calib=minmax,weights=mse,adaround=on,bias=off"]),
    ("W4A4 uniform per-channel", ["--bits", "4", "--scheme", "uniform", "--per-channel"],
     ["calib=mse,weights=minmax,bias=off", "calib=minmax,weights=minmax,bias=off", "calib=minmax,weights=mse,bias=off",
      "calib=minmax,weights=minmax,bias=on", "calib=minmax,weights=minmax,adaround=on,bias=off"]),
    ("W4A4 APoT", ["--bits", "4", "--scheme", "apot"],
     ["calib=mse,weights=mse,bias=off", "calib=minmax,weights=mse,bias=off", "calib=minmax,weights=minmax,bias=off",
      "calib=minmax,weights=mse,bias=on", "calib=minmax,weights=mse,adaround=on,bias=off"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bn,folded")
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--quick", action="store_true",
                    help="W8A8 rows only, for every model; the full table for the first")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "ptq_vs_ort.txt"))
    a = ap.parse_args()
    import onnxruntime as ort

    log = benchlib.Log(a.out)
    benchlib.header(log, "post-training quantization: qtune against onnxruntime's "
                         "quantize_static, top-1 on the CIFAR-10 JPEG test split")
    with tarfile.open(a.data) as tf:
        train, _ = split_members(tf, "train")
        test, ytest = split_members(tf, "test")
        idx = calib_indices(len(train), a.calib_images)
        calib = decode(tf, [train[i] for i in idx])
        xtest, ytest = decode(tf, test), np.array(ytest)
    log("data:     %s: %d training images (calibration: %d of them, the same for both "
        "tools), %d test images" % (a.data, len(train), len(calib), len(xtest)))
    log("onnxruntime %s; qtune at commit %s" % (ort.__version__, subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True).stdout.strip()))
    with tempfile.TemporaryDirectory() as tmp:
        for mi, m in enumerate(a.models.split(",")):
            model = shared("models", "resnet20_cifar10_fp32_%s.onnx" % m)
            log("")
            log("== %s" % os.path.basename(model))
            fp32 = ort_top1(ort, model, xtest, ytest)
            log("FP32 (onnxruntime)                                  %6.2f" % fp32)
            for pc in (False, True):
                q = os.path.join(tmp, "ort%d.onnx" % pc)
                ort_quantize(model, q, calib, pc)
                t = ort_top1(ort, q, xtest, ytest)
                log("onnxruntime quantize_static W8A8 per-%-8s       %6.2f  (%+.2f)" % (
                    "channel" if pc else "tensor", t, t - fp32))
            log("qtune (top-1, difference to FP32; BatchNorm choice on the held-out images; "
                "seconds):")
            rows = CONFIGS[:2] if (a.quick and mi > 0) else CONFIGS
            for label, opts, variants in rows:
                for v in variants:
                    r = qtune_ptq(model, a.data, tmp, a.calib_images, opts + ["--ptq", v])
                    log("  %-26s %-34s %6.2f  (%+.2f)  %-20s %4.0f s" % (
                        label, v, r["top1"], r["top1"] - fp32, r["batchnorm"], r["wall"]))
    log.close()


if __name__ == "__main__":
    sys.exit(main())
