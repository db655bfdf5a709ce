"""One training step of ResNet-20 (batch 128, 3x32x32, SGD with momentum) in qtune and in
PyTorch on the same machine and thread count; prints both step times and their ratio.

qtune's step time comes from two `qtune train` runs on a synthetic CIFAR-10 folder, of
`steps` and of 2 x `steps` batches: the difference of their training times (the per-epoch
log's seconds, which exclude data loading and evaluation) divided by `steps`, so the first
steps' one-time costs cancel as PyTorch's warm-up steps are excluded. PyTorch's time is
forward, backward and optimizer step of the same architecture.
Usage: .venv/bin/python bench/train_step_vs_torch.py [--threads 2] [--steps 40]"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
import models  # noqa: E402


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def qtune_step(qtune, threads, steps, batch, tmp, command=("train",), tag="trained"):
    """Seconds per training step of `qtune COMMAND` on ResNet-20 (a synthetic CIFAR-10 folder
    in tmp, made on first use): the difference of two runs' training times (of `steps` and
    2 x `steps` batches, from the per-epoch log) divided by `steps`. Returns (seconds, the
    last command)."""
    data = os.path.join(tmp, "cifar")
    if not os.path.isdir(data):
        os.makedirs(data)
        rng = np.random.default_rng(0)
        n = 2 * steps * batch
        for name, count in [("data_batch_%d.bin" % i, n) for i in range(1, 6)] + [("test_batch.bin", batch)]:
            rec = np.concatenate([rng.integers(0, 10, (count, 1), dtype=np.uint8),
                                  rng.integers(0, 256, (count, 3072), dtype=np.uint8)], axis=1)
            rec.tofile(os.path.join(data, name))
    model = os.path.join(tmp, "r20.onnx")
    if not os.path.exists(model):
        subprocess.run([qtune, "init", "resnet20", "--input", "3x32x32", "--classes", "10", "-o", model],
                       check=True, capture_output=True)
    seconds = {}
    for k in (1, 2):
        out = os.path.join(tmp, "%s%d.onnx" % (tag, k))
        cmd = [qtune, command[0], model, *command[1:], "--data", data, "--epochs", "1",
               "--batch", str(batch), "--train-limit", str(k * steps * batch), "--test-limit", str(batch),
               "--threads", str(threads), "--preset", "cifar10", "--lr", "0.05", "--quiet", "-o", out]
        subprocess.run(cmd, check=True, capture_output=True)
        with open(os.path.join(tmp, "%s%d.log.jsonl" % (tag, k))) as f:
            seconds[k] = json.loads(f.readline())["seconds"]
    return (seconds[2] - seconds[1]) / steps, " ".join(cmd)


def time_steps(model, opt, steps, batch, warmup=3):
    """Seconds per forward, backward and optimizer step of model on a random batch."""
    model.train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def torch_step(threads, steps, batch):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = models.CifarResNet(20)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return time_steps(m, opt, steps, batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "train_step_vs_torch.txt"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        q, cmd = qtune_step(a.qtune, a.threads, a.steps, a.batch, tmp)
    t = torch_step(a.threads, a.steps, a.batch)
    lines = [
        "training step: ResNet-20, batch %d, 3x32x32, SGD momentum 0.9, %d threads" % (a.batch, a.threads),
        "date:     %s" % time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine:  %s, %d logical CPUs" % (cpu_name(), os.cpu_count()),
        "command:  .venv/bin/python bench/train_step_vs_torch.py --threads %d --steps %d" % (a.threads, a.steps),
        "qtune:    %s" % cmd,
        "qtune:    %.1f ms per step (runs of %d and %d steps, difference / %d)" % (q * 1e3, a.steps, 2 * a.steps, a.steps),
        "pytorch:  %.1f ms per step (torch %s, %d steps after 3 warm-up)" % (t * 1e3, torch.__version__, a.steps),
        "ratio qtune/pytorch step time: %.3f (target <= 1.0)" % (q / t),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(a.out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
