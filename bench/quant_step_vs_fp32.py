"""One W4A4 APoT training step of ResNet-20 (batch 128, 3x32x32, 2 threads) in qtune, against
qtune's own FP32 step and against the PyTorch reference quantizers of tests/ref/apot_ref.py
in the same architecture, on the same machine; prints the step times and their ratios.

qtune's step times come from pairs of runs on a synthetic CIFAR-10 folder, of `steps` and of
2 x `steps` batches: the difference of their training times (the per-epoch log's seconds,
which exclude data loading, calibration and evaluation) divided by `steps`, so one-time
costs cancel. FP32: `qtune train`; W4A4: `qtune finetune --bits 4` (APoT, first conv and last
layer 8-bit weights with float inputs, as APOT.md). PyTorch: forward, backward and SGD step
of CifarResNet(20) with every conv/fc quantized the same way by apot_ref.py.
Usage: .venv/bin/python bench/quant_step_vs_fp32.py [--threads 2] [--steps 30]"""
import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
sys.path.insert(0, os.path.join(REPO, "bench"))
import apot_ref  # noqa: E402
import models  # noqa: E402
from train_step_vs_torch import cpu_name, qtune_step, time_steps  # noqa: E402


class QConv(nn.Module):
    """Conv2d or Linear whose weight (and, unless float_input, input) pass through the
    reference quantizers: APoT W4 standardized weights / unsigned A4 activations, or the
    8-bit weights of the first and last layer (APOT.md sections 2-4)."""

    def __init__(self, layer, first_last):
        super().__init__()
        self.layer = layer
        self.first_last = first_last
        self.alpha_w = nn.Parameter(torch.tensor([3.0]))
        self.alpha_a = nn.Parameter(torch.tensor([8.0]))

    def forward(self, x):
        w = self.layer.weight
        if self.first_last:
            wq, _ = apot_ref.int8_weight_quant(w, abs_max=True)
        else:
            wq, _, _ = apot_ref.weight_quant(w, self.alpha_w, "apot", 4)
            x = apot_ref.act_quant(x, self.alpha_a, "apot", 4, False)
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(x, wq, self.layer.bias, self.layer.stride, self.layer.padding)
        return F.linear(x, wq, self.layer.bias)


def quantize(m):
    m.conv1 = QConv(m.conv1, True)
    m.fc = QConv(m.fc, True)
    for stage in (m.layer1, m.layer2, m.layer3):
        for blk in stage:
            blk.conv1 = QConv(blk.conv1, False)
            blk.conv2 = QConv(blk.conv2, False)
            if blk.downsample is not None:
                blk.downsample[0] = QConv(blk.downsample[0], False)
    return m


def torch_step(threads, steps, batch):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = quantize(models.CifarResNet(20))
    alphas = [p for n, p in m.named_parameters() if "alpha" in n]
    rest = [p for n, p in m.named_parameters() if "alpha" not in n]
    opt = torch.optim.SGD([{"params": rest}, {"params": alphas, "lr": 0.1}], lr=0.05, momentum=0.9,
                          weight_decay=1e-4)
    return time_steps(m, opt, steps, batch, warmup=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--torch-steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "quant_step_vs_fp32.txt"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp, _ = qtune_step(a.qtune, a.threads, a.steps, a.batch, tmp)
        q, cmd = qtune_step(a.qtune, a.threads, a.steps, a.batch, tmp,
                            ("finetune", "--bits", "4", "--scheme", "apot", "--calib-batches", "1"), "q")
    t = torch_step(a.threads, a.torch_steps, a.batch)
    lines = [
        "W4A4 APoT training step: ResNet-20, batch %d, 3x32x32, SGD momentum 0.9, %d threads" % (a.batch, a.threads),
        "date:     %s" % time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine:  %s, %d logical CPUs" % (cpu_name(), os.cpu_count()),
        "command:  .venv/bin/python bench/quant_step_vs_fp32.py --threads %d --steps %d --torch-steps %d"
        % (a.threads, a.steps, a.torch_steps),
        "qtune:    %s" % cmd,
        "qtune FP32 step:  %.1f ms (runs of %d and %d steps, difference / %d)" % (fp * 1e3, a.steps, 2 * a.steps, a.steps),
        "qtune W4A4 step:  %.1f ms" % (q * 1e3),
        "pytorch reference W4A4 step (tests/ref/apot_ref.py, torch %s): %.1f ms (%d steps after 2 warm-up)"
        % (torch.__version__, t * 1e3, a.torch_steps),
        "ratio qtune W4A4 / qtune FP32: %.3f (target <= 1.3)" % (q / fp),
        "ratio qtune W4A4 / pytorch reference W4A4: %.3f" % (q / t),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(a.out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
