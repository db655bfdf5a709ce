"""One training step of ResNet-20 (batch 128, 3x32x32, SGD with momentum) in qtune and in
PyTorch on the same machine and thread count, alternated over several rounds; prints each
round, the median and min-max of both step times and of their per-round ratio.

qtune: `qtune train` on a synthetic CIFAR-10 folder, benchlib.QTUNE_STEP_TIMED. PyTorch:
forward, backward and optimizer step of the same architecture on one fixed random batch (no
data pipeline), `steps` steps after 3 warm-up steps.
Usage: .venv/bin/python bench/train_step_vs_torch.py [--threads 2] [--steps 40] [--rounds 5]
       [--clock wall|cpu (CPU time: for a machine shared with other jobs)]
       [--qtune build/qtune] [--out FILE (appends the printed text; '' for none)]"""
import argparse
import os
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
sys.path.insert(0, os.path.join(REPO, "bench"))
import benchlib  # noqa: E402
import models  # noqa: E402


def torch_step(threads, steps, batch, clock):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = models.CifarResNet(20)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return benchlib.time_steps(m, opt, steps, batch, clock=clock)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=benchlib.CLOCKS, default="wall")
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "train_step_vs_torch.txt"))
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "training step: ResNet-20, batch %d, 3x32x32, SGD momentum 0.9, %d threads, "
                    "%d alternated rounds, %s clock" % (a.batch, a.threads, a.rounds, a.clock))
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        log("qtune:    %s; oneDNN ISA: %s" % (a.qtune, benchlib.onednn_isa(a.qtune, tmp)))
        log("pytorch:  torch %s, %s" % (torch.__version__, benchlib.torch_cpu_capability()))
        log("timed:    qtune: %s (S = %d); pytorch: %s time of %d steps after 3 warm-up on one "
            "fixed batch" % (benchlib.QTUNE_STEP_TIMED[a.clock], a.steps, a.clock, a.steps))
        cmd = []

        def qtune():
            s, c = benchlib.qtune_step(a.qtune, a.threads, a.steps, a.batch, tmp, clock=a.clock)
            cmd[:] = [c]
            return s

        t = benchlib.alternate(log, a.rounds, [
            ("qtune", qtune),
            ("pytorch", lambda: torch_step(a.threads, a.steps, a.batch, a.clock)),
        ])
        log("qtune command (last): %s" % cmd[0])
        log("qtune step ms:    %s" % benchlib.spread(t["qtune"], 1e3))
        log("pytorch step ms:  %s" % benchlib.spread(t["pytorch"], 1e3))
        log("ratio qtune/pytorch step time: %s (target <= 1.0)"
            % benchlib.ratio_spread(t["qtune"], t["pytorch"]))
        log("1-min load average at the end: %.2f" % benchlib.load1())
    log.close()


if __name__ == "__main__":
    main()
