"""Exports the reference models with torch.onnx.export in several exporter styles (opset,
static or dynamic batch, inference export with BatchNorm folded or training-preserving
export with BatchNormalization kept) and saves, per model, a fixed input batch and
PyTorch's logits for it.

usage: export_models.py OUTDIR [--force]

Layout: OUTDIR/<model>/{input.npy, expected.npy, <variant>.onnx}. Files are written
atomically; a stamp holding a hash of this script and models.py makes a changed script
re-export everything, otherwise existing files are kept.
"""
import contextlib
import fcntl
import hashlib
import io
import os
import sys
import time
import warnings
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets  # noqa: E402
import models  # noqa: E402

BATCH = 4
TRAIN_STEPS = 150
OPSETS = (11, 13, 17)
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "out")


class Variant:
    """One exported file: model, opset, batch kind ('dyn' or 'static'), mode ('eval' or
    'train')."""

    def __init__(self, model, opset, batch, mode):
        self.model, self.opset, self.batch, self.mode = model, opset, batch, mode
        self.name = "%s_op%d_%s_%s" % (model, opset, batch, mode)

    def path(self, outdir):
        return os.path.join(outdir, self.model, self.name + ".onnx")

    def __repr__(self):
        return self.name


def matrix():
    """The exported variants: every combination for resnet20; for resnet56 every opset and
    mode with a dynamic batch plus a static batch at opset 13; for resnet18 (45 MB a file)
    four variants that still cover every opset, mode and batch kind."""
    out = []
    for model in ("resnet20", "resnet56"):
        for opset in OPSETS:
            for batch in ("dyn", "static"):
                for mode in ("eval", "train"):
                    if model != "resnet20" and batch == "static" and opset != 13:
                        continue
                    out.append(Variant(model, opset, batch, mode))
    out += [Variant("resnet18", 11, "dyn", "train"), Variant("resnet18", 13, "static", "eval"),
            Variant("resnet18", 17, "dyn", "eval"), Variant("resnet18", 17, "static", "train")]
    out.append(Variant("resnet32", 13, "dyn", "train"))
    return out


def extra_variants():
    """Exports used by the CLI scenarios rather than the logits comparison."""
    return [Variant("resnet20_1ch", 13, "dyn", "eval")]


def model_names(variants):
    seen = []
    for v in variants:
        if v.model not in seen:
            seen.append(v.model)
    return seen


def _stamp():
    h = hashlib.sha256()
    for f in ("models.py", "export_models.py", "datasets.py"):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(fh.read())
    h.update(torch.__version__.encode())
    h.update(str(datasets.fashion_available()).encode())
    return h.hexdigest()


def _write_atomic(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _save_npy(path, arr):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    _write_atomic(path, buf.getvalue())


def export_variant(model, shape, v, path):
    x = torch.zeros(BATCH, *shape)
    kw = dict(opset_version=v.opset, input_names=["input"], output_names=["logits"])
    if v.batch == "dyn":
        kw["dynamic_axes"] = {"input": {0: "N"}, "logits": {0: "N"}}
    if v.mode == "eval":
        kw.update(training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    else:
        kw.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, buf, **kw)
    _write_atomic(path, buf.getvalue())


def train_fashion(model, steps=TRAIN_STEPS, batch=128):
    """A short SGD run on Fashion-MNIST's train split so that the 1-channel model's
    predictions depend on its input (evaluation tests compare accuracies with PyTorch)."""
    x, y = datasets.load_fashion("train")
    g = torch.Generator().manual_seed(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g).numpy()
        xb = torch.from_numpy(x[idx].astype(np.float32) / 255.0).unsqueeze(1)
        xb = (xb - datasets.FASHION_MEAN) / datasets.FASHION_STD
        loss = torch.nn.functional.cross_entropy(model(xb), torch.from_numpy(y[idx].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def reference_data(model, shape, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(BATCH, *shape, generator=g)
    with torch.no_grad():
        y = model(x)
    return x.numpy(), y.numpy()


@contextlib.contextmanager
def _locked(outdir):
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_all(outdir=DEFAULT_OUT, force=False, variants=None, verbose=False):
    """Exports what is missing; returns the number of files written."""
    variants = variants if variants is not None else matrix() + extra_variants()
    written = 0
    with _locked(outdir):
        stamp_path = os.path.join(outdir, "stamp")
        stamp = _stamp()
        old = open(stamp_path).read().strip() if os.path.exists(stamp_path) else None
        if old != stamp:
            force = True
        for name in model_names(variants):
            mdir = os.path.join(outdir, name)
            os.makedirs(mdir, exist_ok=True)
            todo = [v for v in variants if v.model == name]
            need = force or not all(os.path.exists(v.path(outdir)) for v in todo) or not all(
                os.path.exists(os.path.join(mdir, f)) for f in ("input.npy", "expected.npy"))
            if not need:
                continue
            model, shape = models.build(name)
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            if name == "resnet20_1ch" and datasets.fashion_available():
                t = time.time()
                train_fashion(model)
                if verbose:
                    print("trained %s on Fashion-MNIST (%.1fs)" % (name, time.time() - t))
            if force or not os.path.exists(os.path.join(mdir, "expected.npy")):
                x, y = reference_data(model, shape, seed=zlib.crc32(name.encode()) % 10000)
                _save_npy(os.path.join(mdir, "input.npy"), x)
                _save_npy(os.path.join(mdir, "expected.npy"), y)
                written += 2
            for v in todo:
                if force or not os.path.exists(v.path(outdir)):
                    t = time.time()
                    export_variant(model, shape, v, v.path(outdir))
                    written += 1
                    if verbose:
                        print("exported %s (%.2fs)" % (v.name, time.time() - t))
        _write_atomic(stamp_path, (stamp + "\n").encode())
    return written


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    force = "--force" in argv
    outdir = args[0] if args else DEFAULT_OUT
    t = time.time()
    n = export_all(outdir, force=force, verbose=True)
    print("%d files written to %s in %.1fs" % (n, outdir, time.time() - t))


if __name__ == "__main__":
    main(sys.argv[1:])
