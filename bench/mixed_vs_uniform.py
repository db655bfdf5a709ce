"""Mixed precision against uniform precision at the same weight memory: the sensitivity
allocation (`finetune --avg-bits A`, per-layer bits from 2..4 chosen on held-out training
images) against every layer at 4, 3 and 2 bits, each fine-tuned with the same recipe and
budget (--epochs, the default quantized recipe, APoT weights and --abits activations, first
and last layers 8-bit), on the whole test split. Writes the table and an SVG plot of top-1
against weight memory (the bytes the export stores and the average bits).

The mixed runs take the average bits of a uniform run (its size) and points between.

usage: .venv/bin/python bench/mixed_vs_uniform.py [--model M] [--data D] [--epochs 1]
       [--abits 4] [--avg-bits 2.5,3] [--qtune BIN] [--out FILE] [--svg FILE]
Defaults: the shared ResNet-20 (BatchNorm file) and CIFAR-10 JPEG data (../shared or QT_SHARED).
"""
import argparse
import json
import os
import subprocess
import tempfile

import benchlib

REPO = benchlib.REPO


def shared(*p):
    return os.path.join(os.path.abspath(os.environ.get("QT_SHARED") or
                                        os.path.join(REPO, "..", "shared")), *p)


def run(log, cmd):
    log("$ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        log(p.stderr[-2000:])
        raise SystemExit("command failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def svg_plot(path, rows, title):
    """Top-1 against weight bytes: uniform runs as circles joined by a line, mixed as squares."""
    W, H, L, R, T, B = 640, 420, 70, 20, 40, 50
    xs = [r["bytes"] / 1e3 for r in rows]
    ys = [r["top1"] for r in rows]
    x0, x1 = min(xs) * 0.9, max(xs) * 1.05
    y0, y1 = min(ys) - 1, max(ys) + 1

    def px(x):
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return H - B - (y - y0) / (y1 - y0) * (H - T - B)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14">%s</text>' % (L, title),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B),
           '<text x="%d" y="%d" text-anchor="middle">weight memory (kB, as exported)</text>'
           % ((L + W - R) // 2, H - 12),
           '<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">test top-1 (%%)'
           '</text>' % ((T + H - B) // 2, (T + H - B) // 2)]
    for k in range(6):
        x = x0 + (x1 - x0) * k / 5
        y = y0 + (y1 - y0) * k / 5
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>' % (px(x), H - B + 16, x))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%.1f</text>' % (L - 6, py(y) + 4, y))
    uni = sorted([r for r in rows if r["kind"] == "uniform"], key=lambda r: r["bytes"])
    out.append('<polyline fill="none" stroke="#1f77b4" points="%s"/>' % " ".join(
        "%.1f,%.1f" % (px(r["bytes"] / 1e3), py(r["top1"])) for r in uni))
    for r in rows:
        x, y = px(r["bytes"] / 1e3), py(r["top1"])
        if r["kind"] == "uniform":
            out.append('<circle cx="%.1f" cy="%.1f" r="5" fill="#1f77b4"/>' % (x, y))
        else:
            out.append('<rect x="%.1f" y="%.1f" width="10" height="10" fill="#d62728"/>'
                       % (x - 5, y - 5))
        out.append('<text x="%.1f" y="%.1f">%s</text>' % (x + 8, y - 8, r["name"]))
    out.append('<circle cx="%d" cy="%d" r="5" fill="#1f77b4"/><text x="%d" y="%d">uniform</text>'
               % (W - 150, T + 10, W - 140, T + 14))
    out.append('<rect x="%d" y="%d" width="10" height="10" fill="#d62728"/><text x="%d" y="%d">'
               'mixed (sensitivity)</text>' % (W - 155, T + 25, W - 140, T + 34))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=shared("models", "resnet20_cifar10_fp32_bn.onnx"))
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--abits", default="4")
    ap.add_argument("--avg-bits", default="2.5,3")
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out")
    ap.add_argument("--svg")
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "mixed precision (sensitivity allocation) against uniform precision, "
                         "same weight memory, fine-tuned %d epoch(s)" % a.epochs)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    log("qtune:    %s (%s)" % (commit, os.path.relpath(a.qtune, REPO) if a.qtune.startswith(REPO)
                                 else a.qtune))
    common = ["--data", a.data, "--preset", a.preset, "--json", "--quiet", "--abits", a.abits,
              "--epochs", str(a.epochs), "--seed", "0"]
    runs = [("uniform W%d" % b, "uniform", ["--wbits", str(b)]) for b in (4, 3, 2)]
    runs += [("mixed %s bits" % v, "mixed", ["--wbits", "4", "--avg-bits", v])
             for v in a.avg_bits.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, benchlib.bench_lock(log):
        for name, kind, args in runs:
            out = os.path.join(tmp, "m.onnx")
            j = run(log, [a.qtune, "finetune", a.model, "-o", out] + common + args)
            wm = json.loads(subprocess.run([a.qtune, "inspect", out, "--json"], check=True,
                                           capture_output=True, text=True).stdout)["weight_memory"]
            row = {"name": name, "kind": kind, "top1": j["top1"], "start": j.get("start_top1", -1),
                   "bytes": wm["bytes"], "avg_bits": wm["average_bits"],
                   "seconds": j["seconds"]}
            if kind == "mixed":
                row["bits"] = [l["bits"] for l in j["mixed"]["layers"]]
            rows.append(row)
            log("  %s: top-1 %.2f%% (before fine-tuning %.2f%%), %d bytes, %.3f bits%s" % (
                name, row["top1"], row["start"], row["bytes"], row["avg_bits"],
                ", bits " + " ".join(map(str, row["bits"])) if "bits" in row else ""))
    log()
    log("APoT W?A%s, CIFAR-10 test split (10,000 images), %d epoch(s) of fine-tuning:" % (
        a.abits, a.epochs))
    log("%-18s %9s %9s %12s %9s" % ("run", "avg bits", "kB", "before ft", "top-1"))
    for r in rows:
        log("%-18s %9.3f %9.1f %12.2f %9.2f" % (r["name"], r["avg_bits"], r["bytes"] / 1e3,
                                               r["start"], r["top1"]))
    for m in (r for r in rows if r["kind"] == "mixed"):
        fit = [u for u in rows if u["kind"] == "uniform" and u["avg_bits"] <= m["avg_bits"] + 1e-9]
        best = max(fit, key=lambda u: u["top1"]) if fit else None
        if best:
            log("%s against the best uniform run of no more bits (%s): %+.2f points" % (
                m["name"], best["name"], m["top1"] - best["top1"]))
    log.close()
    if a.svg:
        svg_plot(a.svg, rows, "ResNet-20, CIFAR-10: top-1 against weight memory (A%s)" % a.abits)


if __name__ == "__main__":
    main()
