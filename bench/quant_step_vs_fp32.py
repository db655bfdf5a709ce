"""One W4A4 APoT training step of ResNet-20 (batch 128, 3x32x32, 2 threads) in qtune against
qtune's own FP32 step, and in PyTorch (FP32 and W4A4) on the same machine, alternated over
several rounds; prints each round, the median and min-max of every step time and of the
per-round ratios.

qtune: `qtune train` (FP32) and `qtune finetune --bits 4 --scheme apot` (first conv and last
layer 8-bit weights with float inputs, as APOT.md) on a synthetic CIFAR-10 folder,
benchlib.QTUNE_STEP_TIMED. PyTorch W4A4: CifarResNet(20) with every conv/fc replaced by the
QConv2d/QLinear modules below, the quantizer a PyTorch user would write: nearest level by
torch.bucketize against the midpoint thresholds, one autograd Function with APOT.md's
gradients (straight-through input gradient, clipped for activations; the alpha gradient of
kernels/common/apot.h). It is checked against the brute-force reference tests/ref/apot_ref.py
before timing. PyTorch steps run on one fixed random batch (no data pipeline).
Usage: .venv/bin/python bench/quant_step_vs_fp32.py [--threads 2] [--steps 30] [--rounds 5]
       [--torch-steps 10] [--clock wall|cpu] [--qtune build/qtune]
       [--out FILE (appends the printed text)]"""
import argparse
import os
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
sys.path.insert(0, os.path.join(REPO, "bench"))
import apot_ref  # noqa: E402
import benchlib  # noqa: E402
import models  # noqa: E402


def level_grid(bits, signed):
    """APoT magnitude levels (tests/ref/apot_ref.py's table) and the thresholds between them:
    the largest float32 not above each exact midpoint, so that a value exactly halfway goes
    to the lower level."""
    lv = apot_ref.levels("apot", apot_ref.magnitude_bits("apot", bits, signed))
    mid = (lv[:-1].double() + lv[1:].double()) / 2
    thr = mid.float()
    thr = torch.where(thr.double() > mid, torch.nextafter(thr, lv[:-1]), thr)
    return lv, thr


class APoTQuant(torch.autograd.Function):
    """alpha * q with x = input / alpha and q = sign(xc) * level(|xc|), xc = clamp(x, -1, 1)
    (signed) or q = level(clamp(x, 0, 1)) (unsigned), level() by bucketize on the thresholds.
    Backward: input gradient straight through (clip = False, weights) or clipped where the
    forward clamps (clip = True, activations: g * (|x| <= 1) signed, g * (x <= 1) unsigned);
    dalpha = sum(g * (|x| > 1 ? sign(x) : q - x)) signed, sum(g * (x > 1 ? 1 : q - x))
    unsigned."""

    @staticmethod
    def forward(ctx, inp, alpha, lv, thr, signed, clip):
        x = inp / alpha
        if signed:
            xc = x.clamp(-1.0, 1.0)
            q = torch.sign(xc) * lv[torch.bucketize(xc.abs(), thr)]
        else:
            q = lv[torch.bucketize(x.clamp(0.0, 1.0), thr)]
        ctx.save_for_backward(x, q)
        ctx.signed, ctx.clip = signed, clip
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        out = x.abs() > 1 if ctx.signed else x > 1
        factor = torch.where(out, torch.sign(x), q - x)
        dinp = g.masked_fill(out, 0.0) if ctx.clip else g
        return dinp, (g * factor).sum().reshape(1), None, None, None, None


class Int8STE(torch.autograd.Function):
    """round(w / m * 127) / 127 * m with m = max|w|, straight-through gradient."""

    @staticmethod
    def forward(ctx, w):
        m = w.detach().abs().max()
        return torch.round(w / m * 127) / 127 * m

    @staticmethod
    def backward(ctx, g):
        return g


def apot_weight(w, alpha, grid):
    """Standardized weights (mean and unbiased std as constants, summed in float64) through
    the signed quantizer."""
    with torch.no_grad():
        w64 = w.double()
        mu, sigma = w64.mean().float(), w64.std().float()
    return APoTQuant.apply((w - mu) / sigma, alpha, grid[0], grid[1], True, False)


class QConv2d(nn.Conv2d):
    """Conv2d with W4 APoT weights and A4 unsigned APoT inputs, or (first_last) 8-bit weights
    and float inputs."""

    def __init__(self, conv, first_last, bits=4):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, bias=conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.first_last = first_last
        self.alpha_w = nn.Parameter(torch.tensor([3.0]))
        self.alpha_a = nn.Parameter(torch.tensor([8.0]))
        self.wgrid = level_grid(bits, True)
        self.agrid = level_grid(bits, False)

    def forward(self, x):
        if self.first_last:
            return self._conv_forward(x, Int8STE.apply(self.weight), self.bias)
        x = APoTQuant.apply(x, self.alpha_a, self.agrid[0], self.agrid[1], False, True)
        return self._conv_forward(x, apot_weight(self.weight, self.alpha_w, self.wgrid), self.bias)


class QLinear(nn.Linear):
    """The last layer: 8-bit weights, float inputs."""

    def __init__(self, fc):
        super().__init__(fc.in_features, fc.out_features)
        self.load_state_dict(fc.state_dict())

    def forward(self, x):
        return F.linear(x, Int8STE.apply(self.weight), self.bias)


def quantize(m):
    m.conv1 = QConv2d(m.conv1, True)
    m.fc = QLinear(m.fc)
    for stage in (m.layer1, m.layer2, m.layer3):
        for blk in stage:
            blk.conv1 = QConv2d(blk.conv1, False)
            blk.conv2 = QConv2d(blk.conv2, False)
            if blk.downsample is not None:
                blk.downsample[0] = QConv2d(blk.downsample[0], False)
    return m


def check_against_reference():
    """The fast quantizers compute what tests/ref/apot_ref.py computes (forward and both
    gradients) on random tensors, for 4-bit weights and activations. Returns a summary line."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    # weights: standardized, signed, unclipped input gradient
    w = torch.randn(32, 16, 3, 3, generator=g) * 0.1 + 0.01
    up = torch.randn(w.shape, generator=g)
    outs = []
    for fast in (True, False):
        wl = w.clone().requires_grad_()
        al = torch.tensor([1.7], requires_grad=True)
        y = apot_weight(wl, al, level_grid(4, True)) if fast else apot_ref.weight_quant(wl, al, "apot", 4)[0]
        (y * up).sum().backward()
        outs.append((y.detach(), wl.grad, al.grad))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), "weight quantizer differs from apot_ref"
        worst = max(worst, (a - b).abs().max().item())
    assert torch.equal(outs[0][0], outs[1][0]), "weight levels differ from apot_ref"
    # activations: unsigned, input gradient clipped at x > 1; inputs include exact midpoints
    alpha = 2.0
    lv, thr = level_grid(4, False)
    mids = ((lv[:-1] + lv[1:]) / 2) * alpha
    x = torch.cat([torch.randn(20000, generator=g) * 2.0 + 1.0, mids, lv * alpha])
    up = torch.randn(x.shape, generator=g)
    outs = []
    for fast in (True, False):
        xl = x.clone().requires_grad_()
        al = torch.tensor([alpha], requires_grad=True)
        y = (APoTQuant.apply(xl, al, lv, thr, False, True) if fast
             else apot_ref.act_quant(xl, al, "apot", 4, False))
        (y * up).sum().backward()
        outs.append((y.detach(), xl.grad, al.grad))
    assert torch.equal(outs[0][0], outs[1][0]), "activation levels differ from apot_ref"
    assert torch.equal(outs[0][1], outs[1][1]), "activation input gradient differs from apot_ref"
    assert torch.allclose(outs[0][2], outs[1][2], rtol=1e-4), "activation dalpha differs"
    worst = max(worst, (outs[0][2] - outs[1][2]).abs().item())
    return ("check:    bucketize quantizers = tests/ref/apot_ref.py on random tensors (W4 weights "
            "%d, A4 activations %d incl. midpoints): levels equal, gradients within %.1e"
            % (w.numel(), x.numel(), worst))


def torch_step(threads, steps, batch, quantized, clock):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = models.CifarResNet(20)
    if not quantized:
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return benchlib.time_steps(m, opt, steps, batch, clock=clock)
    m = quantize(m)
    alphas = [p for n, p in m.named_parameters() if "alpha" in n]
    rest = [p for n, p in m.named_parameters() if "alpha" not in n]
    opt = torch.optim.SGD([{"params": rest}, {"params": alphas, "lr": 0.1}], lr=0.04,
                          momentum=0.9, weight_decay=1e-4)
    return benchlib.time_steps(m, opt, steps, batch, clock=clock)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--torch-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=benchlib.CLOCKS, default="wall")
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "quant_step_vs_fp32.txt"))
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "W4A4 APoT training step: ResNet-20, batch %d, 3x32x32, SGD momentum 0.9, "
                    "%d threads, %d alternated rounds, %s clock" % (a.batch, a.threads, a.rounds, a.clock))
    log(check_against_reference())
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        log("qtune:    %s; oneDNN ISA: %s" % (a.qtune, benchlib.onednn_isa(a.qtune, tmp)))
        log("pytorch:  torch %s, %s" % (torch.__version__, benchlib.torch_cpu_capability()))
        log("timed:    qtune: %s (S = %d); pytorch: %s time of %d steps after 3 warm-up on one "
            "fixed batch" % (benchlib.QTUNE_STEP_TIMED[a.clock], a.steps, a.clock, a.torch_steps))
        cmd = []

        def qtune(quantized):
            args = (("finetune", "--bits", "4", "--scheme", "apot", "--calib-batches", "1"), "q") \
                if quantized else (("train",), "fp")
            s, c = benchlib.qtune_step(a.qtune, a.threads, a.steps, a.batch, tmp, *args, clock=a.clock)
            if quantized:
                cmd[:] = [c]
            return s

        t = benchlib.alternate(log, a.rounds, [
            ("qtune FP32", lambda: qtune(False)),
            ("qtune W4A4", lambda: qtune(True)),
            ("pytorch FP32", lambda: torch_step(a.threads, a.torch_steps, a.batch, False, a.clock)),
            ("pytorch W4A4 (bucketize)",
             lambda: torch_step(a.threads, a.torch_steps, a.batch, True, a.clock)),
        ])
        log("qtune command (last W4A4): %s" % cmd[0])
        for name in t:
            log("%-26s step ms: %s" % (name, benchlib.spread(t[name], 1e3)))
        log("ratio qtune W4A4 / qtune FP32:     %s (target <= 1.3)"
            % benchlib.ratio_spread(t["qtune W4A4"], t["qtune FP32"]))
        log("ratio qtune W4A4 / pytorch W4A4:   %s"
            % benchlib.ratio_spread(t["qtune W4A4"], t["pytorch W4A4 (bucketize)"]))
        log("ratio pytorch W4A4 / pytorch FP32: %s"
            % benchlib.ratio_spread(t["pytorch W4A4 (bucketize)"], t["pytorch FP32"]))
        log("1-min load average at the end: %.2f" % benchlib.load1())
    log.close()


if __name__ == "__main__":
    main()
