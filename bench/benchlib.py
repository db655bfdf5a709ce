"""Shared by the step benchmarks: qtune's step time from its training log, PyTorch's step time,
rounds that alternate the programs under test, median and min-max summaries, the benchmark lock
(a fuzzing campaign pauses while it exists) and a results log whose file holds exactly what the
script printed, headed by the command, date, CPU, load and the ISA oneDNN runs with."""
import contextlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = "/tmp/qtune-bench.lock"
FUZZ_PATTERN = "build-fuzz/"


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load1():
    return os.getloadavg()[0]


class Log:
    """Prints lines and, at close, appends exactly the printed text to `path` (if any)."""

    def __init__(self, path):
        self.path = path
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def close(self):
        if self.path:
            with open(self.path, "a") as f:
                f.write("\n".join(self.lines) + "\n\n")


def header(log, title):
    """The run's first lines: what it measures, the exact command, date, machine, load."""
    log(title)
    py = sys.executable
    if os.path.abspath(py).startswith(REPO + os.sep):
        py = os.path.relpath(os.path.abspath(py), REPO)
    log("command:  %s %s" % (py, shlex.join(
        [os.path.relpath(os.path.abspath(sys.argv[0]), REPO)] + sys.argv[1:])))
    log("date:     %s" % time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    log("machine:  %s, %d logical CPUs" % (cpu_name(), os.cpu_count()))


@contextlib.contextmanager
def bench_lock(log, wait_s=360):
    """Creates the benchmark lock, waits up to wait_s for the fuzzers (processes whose command
    line contains build-fuzz/) to pause, logs the outcome and the load, removes the lock after."""
    with open(LOCK, "w") as f:
        f.write("%d\n" % os.getpid())
    try:
        t0 = time.time()
        busy = True
        while True:
            busy = subprocess.run(["pgrep", "-f", FUZZ_PATTERN], capture_output=True).returncode == 0
            if not busy or time.time() - t0 > wait_s:
                break
            time.sleep(5)
        log("lock:     %s held; fuzzers %s after %.0f s; 1-min load average %.2f" % (
            LOCK, "STILL RUNNING" if busy else "not running", time.time() - t0, load1()))
        yield
    finally:
        try:
            os.remove(LOCK)
        except FileNotFoundError:
            pass


def make_cifar(folder, n_train, n_test, seed=0):
    """A synthetic CIFAR-10 binary folder (random labels and pixels)."""
    if os.path.isdir(folder):
        return folder
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    files = [("data_batch_%d.bin" % i, n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]
    for name, count in files:
        rec = np.concatenate([rng.integers(0, 10, (count, 1), dtype=np.uint8),
                              rng.integers(0, 256, (count, 3072), dtype=np.uint8)], axis=1)
        rec.tofile(os.path.join(folder, name))
    return folder


def resnet20(qtune, tmp):
    model = os.path.join(tmp, "r20.onnx")
    if not os.path.exists(model):
        subprocess.run([qtune, "init", "resnet20", "--input", "3x32x32", "--classes", "10",
                        "-o", model], check=True, capture_output=True)
    return model


# Clocks: "wall" (elapsed time) or "cpu" (user + system CPU time of the process, all its
# threads together: on a machine shared with other jobs it does not count the time the process
# waits for a core, but it does count OpenMP threads spinning at barriers).
CLOCKS = ("wall", "cpu")

# What qtune_step's time covers, per clock, for the results text.
QTUNE_STEP_TIMED = {
    "wall": ("wall seconds of the training loop from the per-epoch log (forward, backward, SGD "
             "update and assembling each batch from the in-memory dataset: crop, flip, "
             "normalization; not reading the dataset, calibration, evaluation or saving), "
             "difference of runs of S and 2S steps / S"),
    "cpu": ("CPU seconds (user + system) of the whole qtune process, difference of runs of S and "
            "2S steps / S: per-step work (forward, backward, SGD update, batch assembly); what "
            "both runs do once (start, loading, calibration, evaluation, saving) cancels"),
}


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_timed(cmd, clock):
    """Runs cmd; returns (its CPU seconds if clock is "cpu", else None, stdout)."""
    c0 = children_cpu()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return (children_cpu() - c0 if clock == "cpu" else None), out


def qtune_step(qtune, threads, steps, batch, tmp, command=("train",), tag="trained", clock="wall"):
    """Seconds per training step of `qtune COMMAND` on ResNet-20 (a synthetic CIFAR-10 folder
    in tmp, made on first use): the difference of two runs' times (of `steps` and 2 x `steps`
    batches: the training loop's wall time from the per-epoch log, or the process's CPU time)
    divided by `steps`, so that one-time costs (first-step primitive creation) cancel.
    Returns (seconds, the last command)."""
    data = make_cifar(os.path.join(tmp, "cifar"), 2 * steps * batch, batch)
    model = resnet20(qtune, tmp)
    seconds = {}
    for k in (1, 2):
        out = os.path.join(tmp, "%s%d.onnx" % (tag, k))
        cmd = [qtune, command[0], model, *command[1:], "--data", data, "--epochs", "1",
               "--batch", str(batch), "--train-limit", str(k * steps * batch), "--test-limit",
               str(batch), "--threads", str(threads), "--preset", "cifar10", "--lr", "0.05",
               "--quiet", "-o", out]
        cpu, _ = run_timed(cmd, clock)
        with open(os.path.join(tmp, "%s%d.log.jsonl" % (tag, k))) as f:
            seconds[k] = cpu if clock == "cpu" else json.loads(f.readline())["seconds"]
    return (seconds[2] - seconds[1]) / steps, " ".join(cmd)


def time_steps(model, opt, steps, batch, warmup=3, clock="wall"):
    """Seconds per forward, backward and optimizer step of a PyTorch model on one random
    batch (no data pipeline), after `warmup` untimed steps: elapsed time, or with clock "cpu"
    this process's CPU time (all threads)."""
    import torch
    import torch.nn.functional as F

    model.train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    timer = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        step()
    t0 = timer()
    for _ in range(steps):
        step()
    return (timer() - t0) / steps


def onednn_isa(qtune, tmp):
    """The ISA line oneDNN prints (ONEDNN_VERBOSE=1) for a `qtune run` of ResNet-20."""
    model = resnet20(qtune, tmp)
    x = os.path.join(tmp, "isa_x.npy")
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run([qtune, "run", model, "--input", x, "--output", os.path.join(tmp, "isa_y.npy")],
                         capture_output=True, text=True, env=env).stdout
    for line in out.splitlines():
        if ",isa:" in line:
            return line.split(",isa:", 1)[1].strip()
    return "unknown (no oneDNN verbose isa line)"


def torch_cpu_capability():
    import torch

    for line in torch.__config__.show().splitlines():
        if "CPU capability" in line:
            return line.strip()
    return "CPU capability: not reported"


def alternate(log, rounds, programs):
    """Runs every program once per round, in the listed order in even rounds and reversed in
    odd ones; programs: [(name, fn)], fn() returns seconds. Logs each measurement; returns
    {name: [seconds per round]}."""
    times = {name: [] for name, _ in programs}
    for r in range(rounds):
        order = programs if r % 2 == 0 else programs[::-1]
        for name, fn in order:
            s = fn()
            times[name].append(s)
            log("round %d  %-28s %9.1f ms   (load %.2f)" % (r + 1, name, s * 1e3, load1()))
    return times


def spread(values, scale=1.0, fmt="%.1f"):
    v = [x * scale for x in values]
    return ("median " + fmt + "  (min " + fmt + ", max " + fmt + ", n %d)") % (
        statistics.median(v), min(v), max(v), len(v))


def ratio_spread(num, den):
    """Median and min-max of the per-round ratios num[r] / den[r]."""
    return spread([a / b for a, b in zip(num, den)], fmt="%.3f")
