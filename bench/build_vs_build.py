"""Speed of one qtune build against another (a change against the commit before it, or the
baseline build with run-time dispatched kernels against `make ARCH=-march=x86-64-v3`): the
FP32 training step, the W4A4 APoT training step and evaluation of ResNet-20 (batch 128,
3x32x32), alternated over several rounds; prints each round, medians and min-max of every
time and of the per-round ratios A / B.
Usage: .venv/bin/python bench/build_vs_build.py --a BIN --b BIN [--a-name A] [--b-name B]
       [--threads 2] [--steps 20] [--eval-images 2560] [--rounds 5] [--clock wall|cpu]
       [--note TEXT] --out FILE (appends the printed text)"""
import argparse
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import benchlib  # noqa: E402


def eval_seconds(qtune, model, data, images, batch, threads, clock):
    """Seconds per batch of `qtune eval`: wall, the JSON's seconds (batch assembly and
    inference) over `images`; cpu, the process's CPU time for 2 x `images` minus that for
    `images`, per batch of the difference."""
    t = {}
    for k in ((1, 2) if clock == "cpu" else (1,)):
        cpu, out = benchlib.run_timed([qtune, "eval", model, "--data", data, "--split", "test",
                                       "--batch", str(batch), "--limit", str(k * images),
                                       "--threads", str(threads), "--preset", "cifar10", "--json"],
                                      clock)
        t[k] = cpu if clock == "cpu" else json.loads(out.strip().splitlines()[-1])["seconds"]
    return (t[2] - t[1] if clock == "cpu" else t[1]) / (images / batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="qtune binary of build A")
    ap.add_argument("--b", required=True, help="qtune binary of build B")
    ap.add_argument("--a-name", default="A")
    ap.add_argument("--b-name", default="B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-images", type=int, default=2560)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=benchlib.CLOCKS, default="wall")
    ap.add_argument("--note", default="", help="where the two binaries come from (printed)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "build %s vs build %s: ResNet-20, batch %d, %d threads, %d alternated "
                    "rounds, %s clock" % (a.a_name, a.b_name, a.batch, a.threads, a.rounds, a.clock))
    if a.note:
        log("builds:   %s" % a.note)
    builds = {a.a_name: a.a, a.b_name: a.b}
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        for name, path in builds.items():
            log("%-10s %s; oneDNN ISA: %s" % (name + ":", path, benchlib.onednn_isa(path, tmp)))
        log("timed:    train/W4A4: %s (S = %d); eval per batch: %s" % (
            benchlib.QTUNE_STEP_TIMED[a.clock], a.steps,
            "CPU seconds of `qtune eval` on 2N minus N test images, N = %d" % a.eval_images
            if a.clock == "cpu" else "`qtune eval` JSON seconds (batch assembly and inference) "
            "over %d test images" % a.eval_images))
        data = benchlib.make_cifar(os.path.join(tmp, "cifar"), 2 * a.steps * a.batch,
                                   2 * a.eval_images)
        model = benchlib.resnet20(a.a, tmp)
        progs = []
        for name, path in builds.items():
            progs.append(("train %s" % name, lambda p=path, n=name: benchlib.qtune_step(
                p, a.threads, a.steps, a.batch, tmp, tag="fp_" + n, clock=a.clock)[0]))
            progs.append(("W4A4 %s" % name, lambda p=path, n=name: benchlib.qtune_step(
                p, a.threads, a.steps, a.batch, tmp,
                ("finetune", "--bits", "4", "--scheme", "apot", "--calib-batches", "1"), "q_" + n,
                a.clock)[0]))
            progs.append(("eval %s" % name, lambda p=path: eval_seconds(
                p, model, data, a.eval_images, a.batch, a.threads, a.clock)))
        # interleave the builds: train A, train B, W4A4 A, W4A4 B, eval A, eval B
        progs = [progs[i] for i in (0, 3, 1, 4, 2, 5)]
        t = benchlib.alternate(log, a.rounds, progs)
        for name in t:
            log("%-16s ms: %s" % (name, benchlib.spread(t[name], 1e3)))
        for what in ("train", "W4A4", "eval"):
            log("ratio %-5s %s / %s: %s" % (what, a.a_name, a.b_name, benchlib.ratio_spread(
                t["%s %s" % (what, a.a_name)], t["%s %s" % (what, a.b_name)])))
        log("1-min load average at the end: %.2f" % benchlib.load1())
    log.close()


if __name__ == "__main__":
    main()
