"""Trains a small residual CNN on Fashion-MNIST for one epoch with PyTorch and exports it
to ONNX (--out), or evaluates an ONNX file with onnxruntime (--ort-eval) for comparison."""
import argparse
import gzip
import os
import sys
import time

import numpy as np

MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(folder, split):
    prefix = "train" if split == "train" else "t10k"
    def find(kind):
        for suffix in (".gz", ""):
            p = os.path.join(folder, f"{prefix}-{kind}{suffix}")
            if os.path.exists(p):
                return p
        sys.exit(f"demo: {prefix}-{kind} not found in {folder}")
    x = read_idx(find("images-idx3-ubyte")).astype(np.float32) / 255.0
    y = read_idx(find("labels-idx1-ubyte")).astype(np.int64)
    return ((x - MEAN) / STD)[:, None], y


def train(folder, out):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.sc = None
            if stride != 1 or cin != cout:
                self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return F.relu(y + (x if self.sc is None else self.sc(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.l1, self.l2, self.l3 = Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.l3(self.l2(self.l1(self.stem(x))))
            x = F.adaptive_avg_pool2d(x, 1)
            return self.fc(x.view(x.size(0), -1))

    x, y = load(folder, "train")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = len(x) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    perm = torch.randperm(len(x))
    t0 = time.time()
    net.train()
    for s in range(steps):
        idx = perm[s * 128:(s + 1) * 128]
        loss = F.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if s % 50 == 0 or s == steps - 1:
            el = time.time() - t0
            print(f"train step {s + 1}/{steps} loss {loss.item():.4f} "
                  f"{(s + 1) * 128 / el:.0f} img/s eta {el / (s + 1) * (steps - s - 1):.0f} s", flush=True)
    net.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(net, dummy, out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=13)
    xe, ye = load(folder, "test")
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(xe[i:i + 500])).argmax(1) for i in range(0, len(xe), 500)])
    print(f"pytorch top-1 on the test split: {100.0 * (pred.numpy() == ye).mean():.2f}%")
    print(f"exported {out}")


def ort_eval(folder, model):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 2
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x, y = load(folder, "test")
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + 128]})[0].argmax(1) for i in range(0, len(x), 128)])
    print(f"onnxruntime top-1 on the test split: {100.0 * (pred == y).mean():.2f}%")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out")
    ap.add_argument("--ort-eval")
    a = ap.parse_args()
    if a.ort_eval:
        ort_eval(a.data, a.ort_eval)
    else:
        train(a.data, a.out)
