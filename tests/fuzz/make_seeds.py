#!/usr/bin/python3
"""Writes the seed inputs of every fuzz target into OUT/<target>/ (small valid files, in the
input layouts the harnesses in tests/fuzz expect). Needs python3-onnx and python3-numpy, the
ONNX node tests of Debian's libonnx-testdata, and a built qtune CLI (--qtune) for the
models, quantized models and checkpoints that qtune itself writes.

    tests/fuzz/make_seeds.py --qtune build-fz/qtune --out /tmp/seeds
then minimize into the committed corpus with scripts/fuzz.sh seeds."""

import argparse
import glob
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NODE_TESTS = "/usr/share/libonnx-testdata/data/node"
# ONNX ops qtune reads (graph/schema.c), as node-test directory prefixes.
NODE_PREFIXES = [
    "conv", "batchnorm", "relu", "clip", "add", "sub", "mul", "div", "maxpool", "averagepool",
    "globalaveragepool", "pad", "constant_pad", "edge_pad", "reflect_pad", "flatten", "reshape",
    "gemm", "matmul", "identity", "dropout", "shape", "gather_0", "gather_1", "unsqueeze",
    "squeeze", "concat", "constant", "cast_float", "cast_DOUBLE", "cast_FLOAT", "softmax",
    "reduce_mean",
]
# A few ops qtune refuses, for the error paths.
NODE_UNSUPPORTED = ["abs", "lstm_defaults", "if", "loop11", "tanh"]
MAX_SEED = 64 * 1024


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- ONNX models


def node_tests(out):
    n = 0
    for d in sorted(glob.glob(os.path.join(NODE_TESTS, "test_*"))):
        name = os.path.basename(d)[5:]
        ok = any(name.startswith(p) for p in NODE_PREFIXES) or name in NODE_UNSUPPORTED
        model = os.path.join(d, "model.onnx")
        if not ok or not os.path.exists(model) or os.path.getsize(model) > MAX_SEED:
            continue
        with open(model, "rb") as f:
            write(os.path.join(out, "onnx", "node_" + name + ".onnx"), f.read())
        n += 1
    return n


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def small_net(opset, style, rng):
    """x[N,1,8,8] -> Conv -> BatchNorm -> Relu/Clip -> MaxPool -> Conv -> BN -> Relu ->
    GlobalAveragePool -> Flatten or Reshape -> Gemm(10), in several exporter styles."""
    nodes, inits = [], []
    c1, c2 = 4, 8

    def conv(x, y, cin, cout, k, pads, bias=True):
        w = "w_" + y
        inits.append(init(w, rng.standard_normal((cout, cin, k, k)) * 0.3))
        ins = [x, w]
        if bias:
            inits.append(init("b_" + y, rng.standard_normal(cout) * 0.1))
            ins.append("b_" + y)
        nodes.append(helper.make_node("Conv", ins, [y], name=y, kernel_shape=[k, k], pads=pads))

    def bn(x, y, c):
        for p, v in (("s", rng.uniform(0.5, 1.5, c)), ("b", rng.standard_normal(c) * 0.1),
                     ("m", rng.standard_normal(c) * 0.1), ("v", rng.uniform(0.5, 1.5, c))):
            inits.append(init(p + "_" + y, v))
        nodes.append(helper.make_node("BatchNormalization",
                                      [x, "s_" + y, "b_" + y, "m_" + y, "v_" + y], [y], name=y))

    folded = style == "folded"
    x0 = "x"
    if style == "pad":
        inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad0"))
        conv("xp", "conv1", 1, c1, 3, [0, 0, 0, 0], bias=folded)
    else:
        conv(x0, "conv1", 1, c1, 3, [1, 1, 1, 1], bias=folded)
    h = "conv1"
    if not folded:
        bn(h, "bn1", c1)
        h = "bn1"
    if style == "clip":
        if opset >= 11:
            inits.append(init("lo", 0.0))
            inits.append(init("hi", 6.0))
            nodes.append(helper.make_node("Clip", [h, "lo", "hi"], ["act1"], name="act1"))
        else:
            nodes.append(helper.make_node("Clip", [h], ["act1"], name="act1", min=0.0, max=6.0))
    else:
        nodes.append(helper.make_node("Relu", [h], ["act1"], name="act1"))
    nodes.append(helper.make_node("MaxPool", ["act1"], ["pool1"], name="pool1",
                                  kernel_shape=[2, 2], strides=[2, 2]))
    conv("pool1", "conv2", c1, c2, 3, [1, 1, 1, 1], bias=folded)
    h = "conv2"
    if not folded:
        bn(h, "bn2", c2)
        h = "bn2"
    if style == "residual":
        conv("pool1", "proj", c1, c2, 1, [0, 0, 0, 0])
        nodes.append(helper.make_node("Add", [h, "proj"], ["sum2"], name="add2"))
        h = "sum2"
    nodes.append(helper.make_node("Relu", [h], ["act2"], name="act2"))
    if style == "avgpool":
        nodes.append(helper.make_node("AveragePool", ["act2"], ["gap"], name="gap",
                                      kernel_shape=[4, 4]))
    else:
        nodes.append(helper.make_node("GlobalAveragePool", ["act2"], ["gap"], name="gap"))
    if style == "torch":
        # torch.onnx style: the batch size read back through Shape/Gather/Unsqueeze/Concat.
        nodes.append(helper.make_node("Shape", ["gap"], ["shp"], name="shape"))
        nodes.append(helper.make_node("Constant", [], ["zero"], name="c0",
                                      value=numpy_helper.from_array(np.array(0, np.int64))))
        nodes.append(helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather"))
        if opset >= 13:
            inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
            nodes.append(helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"))
        else:
            nodes.append(helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsq", axes=[0]))
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
        nodes.append(helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat",
                                      axis=0))
        nodes.append(helper.make_node("Reshape", ["gap", "newshape"], ["flat"], name="reshape"))
        nodes.append(helper.make_node("Identity", ["flat"], ["flat_id"], name="ident"))
        flat = "flat_id"
    else:
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
        flat = "flat"
    if style == "dropout":
        nodes.append(helper.make_node("Dropout", [flat], ["drop"], name="drop"))
        flat = "drop"
    inits.append(init("fc_w", rng.standard_normal((10, c2)) * 0.3))
    inits.append(init("fc_b", rng.standard_normal(10) * 0.1))
    if style == "matmul":
        inits[-2] = init("fc_w", rng.standard_normal((c2, 10)) * 0.3)
        nodes.append(helper.make_node("MatMul", [flat, "fc_w"], ["mm"], name="fc"))
        nodes.append(helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"))
    else:
        nodes.append(helper.make_node("Gemm", [flat, "fc_w", "fc_b"], ["logits"], name="fc",
                                      transB=1))
    out = "logits"
    if style == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1))
        out = "prob"
    g = helper.make_graph(nodes, "small_" + style,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="make_seeds")
    m.ir_version = 6 if opset <= 11 else 7 if opset <= 13 else 8
    return m.SerializeToString()


STYLES = ["plain", "folded", "pad", "clip", "residual", "avgpool", "torch", "dropout", "matmul",
          "softmax"]


def models(out, rng):
    paths = []
    for opset in (11, 13, 17):
        for style in STYLES:
            p = os.path.join(out, "onnx", "small_%s_op%d.onnx" % (style, opset))
            write(p, small_net(opset, style, rng))
            paths.append(p)
    return paths


# ---------------------------------------------------------------- datasets


def idx_files(n, h, w, rng):
    img = struct.pack(">IIII", 0x803, n, h, w) + rng.integers(0, 256, n * h * w, np.uint8).tobytes()
    lab = struct.pack(">II", 0x801, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()
    return img, lab


def records(flags, files):
    """The folder-input layout of tests/fuzz/fuzz_common.h: (selector, bytes) pairs."""
    b = bytes([flags])
    for sel, data in files:
        b += struct.pack("<BH", sel, len(data)) + data
    return b


IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte", "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"]
CIFAR_NAMES = ["test_batch.bin", "batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin",
               "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test.bin",
               "train.bin", "fine_label_names.txt"]


def idx_seeds(out, rng):
    img, lab = idx_files(6, 4, 4, rng)
    img2, lab2 = idx_files(3, 8, 8, rng)
    s = {
        "test_plain": records(0, [(2, img), (3, lab)]),
        "train_plain": records(1, [(0, img2), (1, lab2)]),
        "test_gz": records(0, [(0x82, img), (0x83, lab)]),
        "train_gz_mixed": records(1, [(0x80, img), (1, lab)]),
        "test_dotnames": records(0, [(4, img2), (5, lab2)]),
        "both_splits": records(0, [(0, img), (1, lab), (2, img2), (3, lab2)]),
    }
    for k, v in s.items():
        write(os.path.join(out, "idx", k), v)


def cifar_record(version, label, rng):
    px = rng.integers(0, 256, 3072, np.uint8).tobytes()
    return (bytes([label]) if version == 10 else bytes([label // 5, label])) + px


def cifar_seeds(out, rng):
    meta10 = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
    meta100 = "".join("class%d\n" % i for i in range(100)).encode()
    t10 = b"".join(cifar_record(10, i, rng) for i in (3, 7))
    t100 = b"".join(cifar_record(100, i, rng) for i in (42,))
    s = {
        "c10_test": records(0, [(0, t10), (1, meta10)]),
        "c10_test_nometa": records(0, [(0, cifar_record(10, 1, rng))]),
        "c10_train": records(1, [(2 + i, cifar_record(10, i, rng)) for i in range(5)] +
                             [(0, cifar_record(10, 9, rng))]),
        "c100_test": records(0, [(7, t100), (9, meta100)]),
        "c100_train": records(1, [(8, cifar_record(100, 99, rng)), (7, t100)]),
    }
    for k, v in s.items():
        write(os.path.join(out, "cifar", k), v)
    return t10, meta10


def png(w, h, c, rng):
    color = {1: 0, 3: 2}[c]
    raw = b"".join(b"\x00" + rng.integers(0, 256, w * c, np.uint8).tobytes() for _ in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpegs(n):
    """The first n JPEG files of the shared CIFAR-10 JPEG archive, when it is there."""
    path = "/work/shared/data/cifar10-jpeg.tar.gz"
    got = []
    if os.path.exists(path):
        with tarfile.open(path) as t:
            for m in t:
                if m.isfile() and m.name.endswith(".jpg"):
                    got.append(t.extractfile(m).read())
                    if len(got) == n:
                        break
    return got


def tar_bytes(entries, fmt=tarfile.USTAR_FORMAT):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=fmt) as t:
        for name, data in entries:
            if data is None:
                ti = tarfile.TarInfo(name)
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            else:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    b = bio.getvalue()
    end = len(b.rstrip(b"\0"))
    end = (end + 511) // 512 * 512
    return b[:end + 1024]  # the two zero blocks that end an archive, without tarfile's padding


def tar_seeds(out, rng, cifar10, meta10):
    j = jpegs(2)
    p3 = png(8, 8, 3, rng)
    p1 = png(8, 8, 1, rng)
    folder = [("train/", None), ("train/cat/", None), ("train/cat/0.png", p3),
              ("train/dog/1.png", png(8, 8, 3, rng)), ("test/cat/2.png", p1),
              ("test/dog/3.png", png(8, 8, 3, rng))]
    s = {
        "png_tar": bytes([0]) + tar_bytes(folder),
        "png_tar_train_gz": bytes([3]) + tar_bytes(folder),
        "png_gnu_longname": bytes([0]) + tar_bytes(
            [("test/" + "c" * 120 + "/x.png", p3), ("test/b/y.png", p3)], tarfile.GNU_FORMAT),
        "png_pax": bytes([0]) + tar_bytes([("test/a/" + "p" * 90 + ".png", p1),
                                           ("test/b/y.png", p1)], tarfile.PAX_FORMAT),
        "cifar10_tar": bytes([0]) + tar_bytes([("cifar-10-batches-bin/test_batch.bin", cifar10),
                                               ("cifar-10-batches-bin/batches.meta.txt", meta10)]),
        "cifar10_tar_gz": bytes([2]) + tar_bytes([("cifar-10-batches-bin/test_batch.bin",
                                                   cifar10)]),
    }
    # streamed with a crop of 28 (bit 2, bits 3-5 = 3), the train split through the training
    # transform as well
    s["png_tar_stream"] = bytes([4 | 3 << 3]) + tar_bytes(folder)
    s["png_tar_stream_train_gz"] = bytes([7 | 1 << 3]) + tar_bytes(folder)
    if len(j) == 2:
        s["jpeg_tar_stream"] = bytes([5 | 7 << 3]) + tar_bytes([("train/a/0.jpg", j[0]),
                                                                 ("train/b/1.jpg", j[1])])
        s["jpeg_tar"] = bytes([0]) + tar_bytes([("test/airplane/0.jpg", j[0]),
                                                ("test/ship/1.jpg", j[1]),
                                                ("train/ship/2.jpg", j[1])])
        s["jpeg_png_tar_gz"] = bytes([2]) + tar_bytes([("test/a/0.jpg", j[0]),
                                                       ("test/b/1.png", png(32, 32, 3, rng))])
    for k, v in s.items():
        write(os.path.join(out, "tar", k), v)


def npy_seeds(out, rng):
    def save(name, arr, version=None):
        bio = io.BytesIO()
        if version:
            np.lib.format.write_array(bio, arr, version=version)
        else:
            np.save(bio, arr)
        write(os.path.join(out, "npy", name + ".npy"), bio.getvalue())

    save("f4_2x3", rng.standard_normal((2, 3)).astype("<f4"))
    save("f4_nchw", rng.standard_normal((1, 1, 8, 8)).astype("<f4"))
    save("f8_1x3x4x4", rng.standard_normal((1, 3, 4, 4)).astype("<f8"))
    save("f4_scalar", np.float32(1.5).reshape(()))
    save("f4_vec", np.arange(5, dtype="<f4"))
    save("f4_empty", np.zeros((0, 3), "<f4"))
    save("f4_v2", np.arange(6, dtype="<f4").reshape(2, 3), version=(2, 0))
    save("f4_fortran", np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)))
    save("i4_refused", np.arange(4, dtype="<i4"))
    save("f4_big_endian", np.arange(4, dtype=">f4"))


# ---------------------------------------------------------------- qtune-written files


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("make_seeds: %s failed:\n%s%s" % (" ".join(map(str, cmd)), r.stdout, r.stderr))


def qtune_files(out, qtune, model_paths, rng, tmp):
    data = os.path.join(tmp, "idx")
    os.makedirs(data)
    for split, n in (("train", 40), ("t10k", 20)):
        img, lab = idx_files(n, 8, 8, rng)
        write(os.path.join(data, split + "-images-idx3-ubyte"), img)
        write(os.path.join(data, split + "-labels-idx1-ubyte"), lab)
    base = {os.path.basename(p): p for p in model_paths}
    src = base["small_plain_op13.onnx"]
    folded = base["small_folded_op13.onnx"]
    common = ["--data", data, "--batch", "8", "--mean", "0.5", "--std", "0.25", "--quiet"]
    o = lambda n: os.path.join(tmp, n)
    run([qtune, "export", src, "--format", "float", "-o", o("export_float.onnx")])
    run([qtune, "train", src, "--epochs", "1", "-o", o("trained.onnx")] + common)
    run([qtune, "finetune", o("trained.onnx"), "--wbits", "4", "--abits", "4", "--epochs", "0",
         "-o", o("q_apot_w4a4.onnx")] + common)
    run([qtune, "finetune", o("trained.onnx"), "--wbits", "3", "--abits", "3", "--epochs", "1",
         "--scheme", "uniform", "--per-channel", "-o", o("q_uniform_pc_w3a3.onnx")] + common)
    run([qtune, "finetune", folded, "--wbits", "2", "--abits", "4", "--epochs", "0",
         "--first-last", "same", "-o", o("q_folded_w2a4.onnx")] + common)
    run([qtune, "finetune", o("q_apot_w4a4.onnx"), "--wbits", "3", "--abits", "3", "--epochs", "0",
         "--layer", "conv2=w5a5:uniform", "-o", o("q_requant_w3a3.onnx")] + common)
    for n in ("export_float.onnx", "trained.onnx", "q_apot_w4a4.onnx", "q_uniform_pc_w3a3.onnx",
              "q_folded_w2a4.onnx", "q_requant_w3a3.onnx"):
        with open(o(n), "rb") as f:
            write(os.path.join(out, "onnx", "qtune_" + n), f.read())
    for n in ("trained.onnx.ckpt", "q_uniform_pc_w3a3.onnx.ckpt"):
        with open(o(n), "rb") as f:
            body = f.read()[:-4]  # the harness appends the CRC
        write(os.path.join(out, "ckpt", n), body)


def ckpt_seeds(out):
    def ck(header, tensors):
        b = b"QTCKPT01" + struct.pack("<Q", len(header)) + header + struct.pack("<I", len(tensors))
        for name, vals in tensors:
            b += struct.pack("<I", len(name)) + name + struct.pack("<Q", len(vals))
            b += np.asarray(vals, "<f4").tobytes()
        return b

    write(os.path.join(out, "ckpt", "small"), ck(b"epoch=1\nstep=3\nseed=7\n",
                                                 [(b"w", [1, 2, 3]), (b"m/w", [0.5])]))
    write(os.path.join(out, "ckpt", "empty"), ck(b"", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtune", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    n = node_tests(a.out)
    paths = models(a.out, rng)
    idx_seeds(a.out, rng)
    c10, meta10 = cifar_seeds(a.out, rng)
    tar_seeds(a.out, rng, c10, meta10)
    npy_seeds(a.out, rng)
    ckpt_seeds(a.out)
    with tempfile.TemporaryDirectory() as tmp:
        qtune_files(a.out, a.qtune, paths, rng, tmp)
    for t in sorted(os.listdir(a.out)):
        files = os.listdir(os.path.join(a.out, t))
        size = sum(os.path.getsize(os.path.join(a.out, t, f)) for f in files)
        print("make_seeds: %-6s %4d files, %7d bytes" % (t, len(files), size))
    print("make_seeds: %d ONNX node-test models" % n)


if __name__ == "__main__":
    main()
