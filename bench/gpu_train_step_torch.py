"""PyTorch on the GPU, the baseline the CUDA backend is measured against: images/s of ResNet-20
(tests/ref/models.py) on CIFAR-10-sized batches, a training step (forward, backward, SGD with
momentum 0.9 and weight decay) at batch 128 and an evaluation pass at batch 1000, FP32 and W4A4
APoT fake-quantization, PyTorch eager and torch.compile (default mode, and "reduce-overhead",
which replays CUDA graphs).

The W4A4 model is what a PyTorch user would write from APOT.md: every Conv2d but the first
(and the fc) gets an APoT weight quantizer (weights standardized with mean and std as
constants, one learnable alpha) and an APoT activation quantizer on its input (one learnable
alpha); the first conv and the fc get 8-bit weights (round(W / max W * 127)), straight-through.
The projection onto the level set is a torch.bucketize over the midpoints between the sorted
levels (ties go to the lower level), and the quantizers are autograd Functions whose backward
is APOT.md's (clipped input gradient, alpha gradient sum(g * (|x| > 1 ? sign x : q - x))).

Timing: one fixed random batch already on the GPU (no data pipeline), 3 warm-up steps (the
compile happens there and is reported), then rounds that alternate the variants, each round
`steps` steps between CUDA events; median and min-max over rounds. Prints as it goes; with
--out, appends everything printed to that file (also when stopped by --budget-s).
Usage: python3 bench/gpu_train_step_torch.py [--rounds 5] [--steps 50] [--budget-s 330]
       [--variants LIST] [--out FILE]"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
import models  # noqa: E402

TERMS = {  # APOT.md section 1, magnitude bits B -> term lists
    2: [[0.0, 2**-1, 2**-2, 2**-3]],
    3: [[0.0, 2**-1, 2**-2, 2**-4], [0.0, 2**-3]],
    4: [[0.0, 2**-1, 2**-3, 2**-5], [0.0, 2**-2, 2**-4, 2**-6]],
}


def apot_levels(b):
    sums = {0.0}
    for lst in TERMS[b]:
        sums = {s + t for s in sums for t in lst}
    lv = torch.tensor(sorted(sums))
    return lv / lv.max()


class APoTQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, alpha, levels, mids, signed, clip_grad):
        x = inp / alpha
        if signed:
            xc = x.clamp(-1.0, 1.0)
            q = torch.sign(xc) * levels[torch.bucketize(xc.abs(), mids)]
        else:
            q = levels[torch.bucketize(x.clamp(0.0, 1.0), mids)]
        ctx.save_for_backward(x, q)
        ctx.signed, ctx.clip_grad = signed, clip_grad
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        if ctx.signed:
            out = x.abs() > 1
            factor = torch.where(out, torch.sign(x), q - x)
        else:
            out = x > 1
            factor = torch.where(out, torch.ones_like(x), q - x)
        gi = g.masked_fill(out, 0.0) if ctx.clip_grad else g
        return gi, (g * factor).sum().reshape(1), None, None, None, None


class Quant8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        m = w.max()
        return torch.round(w / m * 127) / 127 * m

    @staticmethod
    def backward(ctx, g):
        return g


class QConv2d(nn.Conv2d):
    def __init__(self, conv, wbits, abits):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, bias=conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        for name, b, signed in (("w", wbits - 1, True), ("a", abits, False)):
            lv = apot_levels(b)
            self.register_buffer(name + "_levels", lv)
            self.register_buffer(name + "_mids", (lv[1:] + lv[:-1]) / 2)
        self.w_alpha = nn.Parameter(torch.tensor([3.0]))
        self.a_alpha = nn.Parameter(torch.tensor([8.0]))

    def forward(self, x):
        w = self.weight
        wn = (w - w.detach().mean()) / w.detach().std()
        wq = APoTQuant.apply(wn, self.w_alpha, self.w_levels, self.w_mids, True, False)
        xq = APoTQuant.apply(x, self.a_alpha, self.a_levels, self.a_mids, False, True)
        return F.conv2d(xq, wq, self.bias, self.stride, self.padding)


class Q8Conv2d(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, Quant8.apply(self.weight), self.bias, self.stride, self.padding)


class Q8Linear(nn.Linear):
    def forward(self, x):
        return F.linear(x, Quant8.apply(self.weight), self.bias)


def quantize(m, wbits, abits):
    """ResNet-20 with APoT W{wbits}A{abits} on every conv but the first, 8-bit first conv/fc."""
    first = m.conv1
    q8 = Q8Conv2d(first.in_channels, first.out_channels, 3, padding=1, bias=False)
    q8.load_state_dict(first.state_dict())
    m.conv1 = q8
    fc = Q8Linear(m.fc.in_features, m.fc.out_features)
    fc.load_state_dict(m.fc.state_dict())
    m.fc = fc

    def swap(mod):
        for name, child in mod.named_children():
            if isinstance(child, nn.Conv2d) and not isinstance(child, Q8Conv2d):
                setattr(mod, name, QConv2d(child, wbits, abits))
            else:
                swap(child)
    swap(m.layer1)
    swap(m.layer2)
    swap(m.layer3)
    return m


def build(quant):
    torch.manual_seed(0)
    m = models.CifarResNet(20)
    if quant:
        m = quantize(m, 4, 4)
    return m.cuda()


class Variant:
    def __init__(self, name, quant, train, compile_mode, batch):
        self.name, self.quant, self.train, self.mode, self.batch = name, quant, train, compile_mode, batch
        self.times = []

    def prepare(self):
        t0 = time.perf_counter()
        m = build(self.quant)
        g = torch.Generator(device="cuda").manual_seed(1)
        self.x = torch.randn(self.batch, 3, 32, 32, device="cuda", generator=g)
        self.y = torch.randint(0, 10, (self.batch,), device="cuda", generator=g)
        if self.train:
            m.train()
            self.opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            model = m

            def step():
                self.opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(self.x), self.y)
                loss.backward()
                self.opt.step()
                return loss
            if self.mode:
                fwd_bwd = torch.compile(self._loss_and_backward(m), mode=self.mode)

                def step():  # noqa: F811 - the compiled variant: forward+backward compiled
                    self.opt.zero_grad(set_to_none=True)
                    loss = fwd_bwd(self.x, self.y)
                    self.opt.step()
                    return loss
        else:
            m.eval()
            model = torch.compile(m, mode=self.mode) if self.mode else m

            def step():
                with torch.no_grad():
                    return model(self.x).argmax(1)
        self.step = step
        for _ in range(3):
            out = step()
        torch.cuda.synchronize()
        if self.train and not math.isfinite(float(out.detach())):
            raise RuntimeError("%s: loss is not finite" % self.name)
        return time.perf_counter() - t0

    @staticmethod
    def _loss_and_backward(m):
        def f(x, y):
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss.detach()
        return f

    def time(self, steps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(steps):
            self.step()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / 1e3 / steps


VARIANTS = {
    "fp32-train-eager": (False, True, None, 128),
    "w4a4-train-eager": (True, True, None, 128),
    "fp32-train-compile": (False, True, "default", 128),
    "w4a4-train-compile": (True, True, "default", 128),
    "w4a4-train-compile-ro": (True, True, "reduce-overhead", 128),
    "fp32-eval-eager": (False, False, None, 1000),
    "w4a4-eval-eager": (True, False, None, 1000),
    "w4a4-eval-compile": (True, False, "default", 1000),
}


def spread(v):
    return "median %.1f  (min %.1f, max %.1f, n %d)" % (statistics.median(v), min(v), max(v), len(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="stop preparing further variants after this many seconds")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    t_start = time.perf_counter()
    try:
        p = torch.cuda.get_device_properties(0)
        log("PyTorch GPU baseline: ResNet-20 CIFAR-10 shapes, training batch 128, evaluation batch 1000")
        log("command:  python3 %s" % " ".join(sys.argv))
        log("date:     %s" % time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        log("device:   %s, %d SMs, %.0f GiB; torch %s, CUDA %s, cuDNN %s; cudnn.allow_tf32=%s, "
            "matmul precision %s" % (p.name, p.multi_processor_count, p.total_memory / 2**30,
                                     torch.__version__, torch.version.cuda,
                                     torch.backends.cudnn.version(), torch.backends.cudnn.allow_tf32,
                                     torch.get_float32_matmul_precision()))
        torch.backends.cudnn.benchmark = True
        log("timed:    %d alternated rounds of %d steps between CUDA events, after 3 warm-up "
            "steps; cudnn.benchmark on" % (a.rounds, a.steps))
        vs = []
        for name in a.variants.split(","):
            if time.perf_counter() - t_start > a.budget_s:
                log("%-24s skipped: --budget-s %.0f reached" % (name, a.budget_s))
                continue
            v = Variant(name, *VARIANTS[name])
            s = v.prepare()
            log("%-24s prepared in %.1f s (model, %s3 warm-up steps)"
                % (name, s, "compile, " if v.mode else ""))
            vs.append(v)
        for r in range(a.rounds):
            order = vs if r % 2 == 0 else vs[::-1]
            for v in order:
                t = v.time(a.steps)
                v.times.append(t)
                log("round %d  %-24s %8.3f ms/step  %9.0f img/s" % (r + 1, v.name, t * 1e3, v.batch / t))
        log("summary (images/s over rounds):")
        for v in vs:
            log("  %-24s %s" % (v.name, spread([v.batch / t for t in v.times])))
        log("  %-24s %s" % ("", ""))
        by = {v.name: statistics.median(v.times) for v in vs}
        for q, base in (("w4a4-train-eager", "fp32-train-eager"), ("w4a4-train-compile", "w4a4-train-eager"),
                        ("w4a4-train-compile-ro", "w4a4-train-eager")):
            if q in by and base in by:
                log("  step time %s / %s: %.2f" % (q, base, by[q] / by[base]))
        log("total %.0f s" % (time.perf_counter() - t_start))
    finally:
        if a.out:
            with open(a.out, "a") as f:
                f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
