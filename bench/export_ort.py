"""onnxruntime (CPUExecutionProvider, 2 threads) on qtune's exports against the FP32 model they
come from: file size, top-1 on the whole test split, session creation time, latency at batch
1 and 128, and which kernels onnxruntime's optimized graph holds (QLinearConv, ConvInteger or
float Conv).

The quantized model is a post-training quantization of the FP32 model (`qtune finetune
--epochs 0`), exported with `qtune export --format onnx|qdq|float|integer|qlinear` (qlinear's
output ranges from 512 training images); its own top-1 is qtune's (`qtune eval`), each
file's is onnxruntime's on the test split as PIL decodes it. Every round creates a
session of each model in turn (FP32 first, then the exports) and times it, so that load from
other jobs hits all alike; the report gives the median and min-max over rounds and the
per-round ratios to FP32. Appends the report to bench/results/export_ort.txt.

usage: .venv/bin/python bench/export_ort.py [--fp32 M.onnx] [--data DATA] [--bits 4]
       [--scheme apot] [--rounds 5] [--threads 2] [--out FILE]
Defaults: the shared ResNet-20 and CIFAR-10 JPEG data (../shared or QT_SHARED).
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import benchlib

REPO = benchlib.REPO
QTUNE = os.path.join(REPO, "build", "qtune")


def shared(*p):
    return os.path.join(os.path.abspath(os.environ.get("QT_SHARED") or
                                        os.path.join(REPO, "..", "shared")), *p)


def session(ort, path, threads, optimized=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def latency(sess, x, reps):
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", default=shared("models", "resnet20_cifar10_fp32_bn.onnx"))
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--scheme", default="apot")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "export_ort.txt"))
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort
    log = benchlib.Log(a.out)
    benchlib.header(log, "onnxruntime on qtune's exports (%s W%dA%d PTQ of %s) against the "
                    "FP32 model" % (a.scheme, a.bits, a.bits, os.path.basename(a.fp32)))
    log("onnxruntime %s, CPUExecutionProvider, %d threads, sequential execution" % (
        ort.__version__, a.threads))
    tmp = tempfile.mkdtemp(prefix="qtune-export-bench.")
    q = os.path.join(tmp, "q.onnx")
    subprocess.run([QTUNE, "finetune", a.fp32, "--data", a.data, "--preset", a.preset,
                    "--bits", str(a.bits), "--scheme", a.scheme, "--epochs", "0", "--quiet",
                    "--test-limit", "1000", "-o", q], check=True, stdout=subprocess.DEVNULL)
    # post-training quantization maps standardized weights back to their mean, which QLinearConv
    # cannot hold: qlinear is measured on a PTQ of unstandardized weights (q0)
    q0 = os.path.join(tmp, "q0.onnx")
    subprocess.run([QTUNE, "finetune", a.fp32, "--data", a.data, "--preset", a.preset,
                    "--bits", str(a.bits), "--scheme", a.scheme, "--epochs", "0", "--quiet",
                    "--no-standardize", "--test-limit", "1000", "-o", q0], check=True,
                   stdout=subprocess.DEVNULL)
    models = collections.OrderedDict([("fp32", a.fp32)])
    for fmt in ("onnx", "qdq", "float", "integer", "qlinear"):
        out = os.path.join(tmp, "%s.onnx" % fmt)
        extra = ["--data", a.data, "--preset", a.preset] if fmt == "qlinear" else []
        subprocess.run([QTUNE, "export", q0 if fmt == "qlinear" else q, "--format", fmt,
                        "-o", out] + extra, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        models[fmt] = out
    for name, m in (("the quantized model", q), ("the unstandardized one (for qlinear)", q0)):
        r = subprocess.run([QTUNE, "eval", m, "--data", a.data, "--preset", a.preset,
                            "--quiet", "--json"], check=True, capture_output=True, text=True)
        log("qtune's top-1 of %s (ai.qtune) on the test split: %.2f%%" % (
            name, json.loads(r.stdout.strip().splitlines()[-1])["top1"]))
    import datasets
    x, y = datasets.load_cifar_jpeg(a.data, "test", 10000)
    fp_size = os.path.getsize(a.fp32)
    log("")
    log("%-8s %10s %8s %8s   optimized graph (ORT_ENABLE_ALL): convolution kernels" % (
        "model", "bytes", "vs fp32", "top-1"))
    for k, p in models.items():
        opt = os.path.join(tmp, "%s.opt.onnx" % k)
        s = session(ort, p, a.threads, opt)
        name = s.get_inputs()[0].name
        logits = np.concatenate([s.run(None, {name: x[i:i + 500]})[0]
                                 for i in range(0, len(x), 500)])
        top1 = 100.0 * float((logits.argmax(1) == y).mean())
        ops = collections.Counter(n.op_type for n in onnx.load(opt).graph.node)
        convs = {o: c for o, c in ops.items() if "Conv" in o}
        log("%-8s %10d %8.3f %7.2f%%   %s" % (
            k, os.path.getsize(p), os.path.getsize(p) / fp_size, top1,
            ", ".join("%s %d" % kv for kv in sorted(convs.items()))))
    rng = np.random.default_rng(0)
    x128 = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)
    x1 = np.ascontiguousarray(x128[:1])
    res = {k: {"create": [], "b1": [], "b128": []} for k in models}
    with benchlib.bench_lock(log):
        for r in range(a.rounds):
            for k, p in models.items():
                t0 = time.perf_counter()
                s = session(ort, p, a.threads)
                res[k]["create"].append(time.perf_counter() - t0)
                res[k]["b1"].append(latency(s, x1, 100))
                res[k]["b128"].append(latency(s, x128, 5))
    log("")
    for what, label, scale in (("create", "session creation (ms)", 1e3),
                               ("b1", "latency batch 1 (ms)", 1e3),
                               ("b128", "latency batch 128 (ms)", 1e3)):
        log(label + ":")
        for k in models:
            line = "  %-8s %s" % (k, benchlib.spread(res[k][what], scale, "%.2f"))
            if k != "fp32":
                line += "   ratio to fp32 %s" % benchlib.ratio_spread(res[k][what], res["fp32"][what])
            log(line)
    log.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
    main()
