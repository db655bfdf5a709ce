"""Streaming an ImageNet-style folder through the evaluation transform: qtune against
torchvision's ImageFolder + DataLoader (PIL, --workers worker processes) with the same
transform (Resize(256), CenterCrop(224), ToTensor, Normalize), images/s over the whole folder,
alternated over --rounds rounds; also qtune's peak resident memory.

qtune's side is `qtune eval --crop 224` of a model that does almost nothing (global average
pool and a 3x10 Gemm), so that its images/s are those of reading, decoding, resizing,
cropping and normalizing; PyTorch's side iterates the DataLoader and touches every batch.
The folder (--images JPEGs of 500x375, quality 90, 10 classes) is generated once under
bench/out/ and reused.

usage: .venv/bin/python bench/data_stream_vs_torchvision.py [--images 20000] [--rounds 3]
       [--workers 2] [--qtune BIN] [--out FILE]
"""
import argparse
import multiprocessing
import os
import subprocess
import time

import numpy as np

import benchlib

REPO = benchlib.REPO


def make_one(args):
    path, seed = args
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    base = [127 + 90 * np.sin(xx / (9 + 5 * k + seed % 7) + yy / (13 + 3 * k)) for k in range(3)]
    px = np.clip(np.stack(base, -1) + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(path, "JPEG", quality=90)


def make_folder(root, n):
    val = os.path.join(root, "val")
    done = os.path.join(root, "complete-%d" % n)
    if os.path.exists(done):
        return
    jobs = []
    for i in range(n):
        d = os.path.join(val, "c%d" % (i % 10))
        os.makedirs(d, exist_ok=True)
        jobs.append((os.path.join(d, "%06d.JPEG" % i), i))
    with multiprocessing.Pool(2) as p:
        p.map(make_one, jobs, chunksize=64)
    open(done, "w").close()


def tiny_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.full((3, 10), 0.1, np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def run_qtune(qtune, model, root, n, peak):
    t = time.perf_counter()
    p = subprocess.Popen([qtune, "eval", model, "--data", root, "--crop", "224", "--resize",
                          "256", "--preset", "imagenet", "--batch", "64", "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    s = time.perf_counter() - t
    err = p.stderr.read().decode()
    if status != 0:
        raise SystemExit("qtune eval failed: " + err[-2000:])
    peak.append(usage.ru_maxrss / 1024.0)  # KiB -> MiB
    return s


def run_torchvision(root, workers):
    import torch
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(os.path.join(root, "val"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    t = time.perf_counter()
    total = 0.0
    for x, _ in loader:
        total += float(x[:, 0, 0, 0].sum())  # touch every batch
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out")
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "streaming %d JPEGs of 500x375 through Resize(256) + CenterCrop(224): "
                         "qtune against torchvision ImageFolder + DataLoader (%d workers)"
                    % (a.images, a.workers))
    root = os.path.join(REPO, "bench", "out", "stream_%d" % a.images)
    t = time.perf_counter()
    make_folder(root, a.images)
    log("folder:   %s (%.0f s to make or find)" % (os.path.relpath(root, REPO),
                                                  time.perf_counter() - t))
    model = os.path.join(root, "tiny.onnx")
    tiny_model(model)
    peak = []
    with benchlib.bench_lock(log):
        times = benchlib.alternate(log, a.rounds, [
            ("qtune eval --crop 224", lambda: run_qtune(a.qtune, model, root, a.images, peak)),
            ("torchvision DataLoader", lambda: run_torchvision(root, a.workers))])
    q, tv = times["qtune eval --crop 224"], times["torchvision DataLoader"]
    log("")
    log("images/s  qtune        " + benchlib.spread([a.images / s for s in q]))
    log("images/s  torchvision  " + benchlib.spread([a.images / s for s in tv]))
    log("speed-up (torchvision time / qtune time) " + benchlib.ratio_spread(tv, q))
    log("qtune peak resident memory: " + benchlib.spread(peak, fmt="%.0f") + " MiB")
    log.close()


if __name__ == "__main__":
    main()
