"""Small data helpers for the reference scripts and CLI tests: IDX reading and writing,
a minimal PNG encoder (no PIL needed) and the locations of the datasets on this machine
(tests/paths.conf)."""
import gzip
import os
import struct
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data_dirs():
    """{key: folder} from tests/paths.conf (the one place that says where test data lives;
    the C tests read it too): the environment variable named there overrides the default,
    and a relative path is taken from the repository root."""
    dirs = {}
    with open(os.path.join(REPO, "tests", "paths.conf")) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 3 or parts[0].startswith("#"):
                continue
            key, env, default = parts
            value = os.environ.get(env) or default
            dirs[key] = os.path.normpath(os.path.join(REPO, value))
    return dirs


FASHION_DIR = data_dirs()["fashion-mnist"]
FASHION_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
# Normalization used with Fashion-MNIST throughout the tests.
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype not in _IDX_DTYPES:
        raise ValueError("%s: not an IDX file" % path)
    dims = struct.unpack(">%dI" % ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[dtype], offset=4 + 4 * ndim)
    return arr.reshape(dims)


def write_idx(path, arr, magic=None):
    """Writes a uint8 array as IDX (gzip-compressed when path ends in .gz); magic overrides
    the 4-byte header word."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">I", magic) if magic is not None else struct.pack(">HBB", 0, 0x08, arr.ndim)
    data = head + struct.pack(">%dI" % arr.ndim, *arr.shape) + arr.tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(data)


def fashion_available():
    return all(os.path.exists(os.path.join(FASHION_DIR, f)) for f in FASHION_FILES)


def load_fashion(split):
    prefix = "t10k" if split == "test" else "train"
    x = read_idx(os.path.join(FASHION_DIR, prefix + "-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(FASHION_DIR, prefix + "-labels-idx1-ubyte.gz"))
    return x, y


def encode_png(img):
    """img: uint8 array HxW (grayscale) or HxWx3 (RGB); returns PNG file bytes."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    color = 0 if img.ndim == 2 else 2
    rows = img.reshape(h, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(kind, payload):
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


CIFAR_MEAN = (0.491, 0.482, 0.447)
CIFAR_STD = (0.247, 0.243, 0.262)


def load_cifar_jpeg(path, split, n, mean=CIFAR_MEAN, std=CIFAR_STD):
    """The first n // 10 images of each class (sorted by file name) of an image-folder tar
    (split/<class>/*.jpg), decoded with PIL and normalized: (x [N,3,H,W] float32, labels)."""
    import io
    import tarfile

    from PIL import Image
    with tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith(split + "/")]
        classes = sorted({m.name.split("/")[1] for m in members})
        by_class = {c: sorted((m for m in members if m.name.split("/")[1] == c),
                              key=lambda m: m.name) for c in classes}
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for m in by_class[c][:n // len(classes)]:
                img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
                xs.append(np.asarray(img, np.uint8))
                ys.append(ci)
    x = np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    m = np.array(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.array(std, np.float32).reshape(1, -1, 1, 1)
    return ((x - m) / s).astype(np.float32), np.array(ys)
