"""Evaluation throughput of `qtune eval` against onnxruntime (CPUExecutionProvider) on the
same ResNet-20 and the same number of images at the same batch size.

qtune's figure is the images_per_s of `qtune eval --json` (batching and normalization of
the decoded images included, as a user sees it); onnxruntime's counts only its session.run
calls on preprocessed batches. The two alternate (one qtune process, then one pass of
onnxruntime over the same number of images, --repeat times) so that load from other jobs on
a shared machine hits both alike. Prints the best and the median of each and the ratios
qtune/ort, and appends the report to bench/results/eval_vs_ort.txt.

usage: .venv/bin/python bench/eval_vs_ort.py [--images N] [--batch 128] [--threads 2]
       [--repeat 5] [--qtune build/qtune] [--model M.onnx] [--data PATH] [--out FILE]
Defaults use the shared ResNet-20 and CIFAR-10 JPEG test split (../shared or QT_SHARED)
when present, otherwise a PyTorch-exported ResNet-20 and a generated PNG image folder.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))

CIFAR_MEAN = (0.491, 0.482, 0.447)
CIFAR_STD = (0.247, 0.243, 0.262)


def shared_dir():
    return os.path.abspath(os.environ.get("QT_SHARED") or os.path.join(REPO, "..", "shared"))


def default_model():
    p = os.path.join(shared_dir(), "models", "resnet20_cifar10_fp32_folded.onnx")
    if os.path.exists(p):
        return p
    import export_models
    v = export_models.Variant("resnet20", 13, "dyn", "eval")
    export_models.export_all(export_models.DEFAULT_OUT, variants=[v])
    return v.path(export_models.DEFAULT_OUT)


def default_data(n_images):
    p = os.path.join(shared_dir(), "data", "cifar10-jpeg.tar.gz")
    if os.path.exists(p):
        return p, True
    import datasets
    root = os.path.join(REPO, "bench", "out", "synthetic_images_%d" % n_images)
    stamp = os.path.join(root, ".complete")
    if not os.path.exists(stamp):
        rng = np.random.default_rng(0)
        per_class = (n_images + 9) // 10
        for c in range(10):
            d = os.path.join(root, "test", "class%d" % c)
            os.makedirs(d, exist_ok=True)
            for k in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                with open(os.path.join(d, "%05d.png" % k), "wb") as fh:
                    fh.write(datasets.encode_png(img))
        open(stamp, "w").close()
    return root, False


def machine():
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "%s, %d logical CPUs, %s" % (model, os.cpu_count() or 0, platform.platform())


def qtune_command(args, data, is_cifar):
    cmd = [args.qtune, "eval", args.model, "--data", data, "--split", "test",
           "--batch", str(args.batch), "--limit", str(args.images), "--json"]
    if is_cifar:
        cmd += ["--preset", "cifar10"]
    else:
        cmd += ["--mean", ",".join(map(str, CIFAR_MEAN)), "--std", ",".join(map(str, CIFAR_STD))]
    return cmd


def run_qtune(args, cmd):
    """One qtune eval process: its JSON summary and the process's wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit("qtune eval failed (exit %d):\n%s\n%s" % (p.returncode, p.stdout[-2000:],
                                                          p.stderr[-2000:]))
    return json.loads(p.stdout.strip().splitlines()[-1]), wall


class Ort:
    """An onnxruntime session and batches of random input covering n_images."""

    def __init__(self, args, n_images):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        inp = self.sess.get_inputs()[0]
        self.name = inp.name
        shape = [d if isinstance(d, int) else args.batch for d in inp.shape]
        rng = np.random.default_rng(0)
        full = rng.standard_normal([args.batch] + shape[1:]).astype(np.float32)
        sizes = [args.batch] * (n_images // args.batch)
        if n_images % args.batch:
            sizes.append(n_images % args.batch)
        self.batches = [np.ascontiguousarray(full[:s]) for s in sizes]
        self.n = n_images
        self.sess.run(None, {self.name: self.batches[0]})

    def images_per_s(self):
        t = time.perf_counter()
        for b in self.batches:
            self.sess.run(None, {self.name: b})
        return self.n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "eval_vs_ort.txt"))
    args = ap.parse_args()

    args.model = args.model or default_model()
    if args.data:
        data, is_cifar = args.data, args.data.endswith("cifar10-jpeg.tar.gz")
    else:
        data, is_cifar = default_data(args.images)
    if not os.path.exists(args.qtune):
        sys.exit("qtune binary not found: %s (run make)" % args.qtune)

    cmd = qtune_command(args, data, is_cifar)
    load = open("/proc/loadavg").read().strip() if os.path.exists("/proc/loadavg") else "?"
    runs, ort_ips, session = [], [], None
    for _ in range(args.repeat):
        j, wall = run_qtune(args, cmd)
        runs.append((j, wall))
        if session is None:
            session = Ort(args, int(j["images"]))
        ort_ips.append(session.images_per_s())
    qt_ips = [j["images_per_s"] for j, _ in runs]
    j, wall = max(runs, key=lambda r: r[0]["images_per_s"])
    n = int(j["images"])
    q_best, o_best = max(qt_ips), max(ort_ips)
    q_med, o_med = float(np.median(qt_ips)), float(np.median(ort_ips))
    lines = [
        "eval throughput: qtune eval vs onnxruntime (CPUExecutionProvider)",
        "date:     %s" % datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine:  %s; loadavg at start %s" % (machine(), load),
        "command:  %s" % " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "qtune:    %s" % " ".join(shlex.quote(str(a)) for a in cmd),
        "model:    %s" % args.model,
        "data:     %s (%d images, batch %d, %d threads, %d alternating runs)" % (
            data, n, args.batch, args.threads, args.repeat),
        "qtune:    best %.1f, median %.1f images/s (eval incl. batching; runs %s; wall %.2fs "
        "for the best process; top1 %.2f)" % (
            q_best, q_med, " ".join("%.0f" % v for v in qt_ips), wall, j["top1"]),
        "ort %s: best %.1f, median %.1f images/s (session.run only, random preprocessed "
        "input; runs %s)" % (session.version, o_best, o_med, " ".join("%.0f" % v for v in ort_ips)),
        "ratio qtune/ort: best/best %.3f, median/median %.3f" % (q_best / o_best, q_med / o_med),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n" + text)


if __name__ == "__main__":
    main()
