"""Top-1 of an ONNX classifier on an IDX test split (Fashion-MNIST, MNIST) with onnxruntime,
normalized with the mean and std stored in the model's metadata by qtune train."""
import argparse
import gzip
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(folder, name):
    for suffix in (".gz", ""):
        p = os.path.join(folder, name + suffix)
        if os.path.exists(p):
            return p
    sys.exit("ort_eval: %s not found in %s" % (name, folder))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    meta = {p.key: p.value for p in onnx.load(a.model).metadata_props}
    mean, std = float(meta["qtune.mean"].split(",")[0]), float(meta["qtune.std"].split(",")[0])
    x = read_idx(find(a.data, "t10k-images-idx3-ubyte")).astype(np.float32) / np.float32(255.0)
    y = read_idx(find(a.data, "t10k-labels-idx1-ubyte"))
    x = ((x - np.float32(mean)) / np.float32(std))[:, None]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 2
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + 256]})[0].argmax(1)
                           for i in range(0, len(x), 256)])
    print("onnxruntime top-1 on the test split: %.2f%%" % (100.0 * (pred == y).mean()))


if __name__ == "__main__":
    main()
