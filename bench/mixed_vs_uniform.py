"""Mixed precision against uniform precision at the same weight memory, the same number of
training epochs (--epochs in all), APoT weights and --abits activations (first and last
layers' inputs float), on the whole test split:
- uniform: every layer at 4, 3 and 2 bits (first and last layer weights 8-bit), fine-tuned;
- sensitivity: per-layer bits from 2..4 chosen on held-out training images under
  --size-budget, fine-tuned;
- BSQ: bit planes trained with the regularizer at each --decay for --bsq-epochs, the
  precision found fixed, then fine-tuned for the epochs left.
Each mixed run is compared with the best uniform run whose weights take no more bytes.
Writes the table and an SVG plot of top-1 against weight memory (the bytes the export
stores).

usage: .venv/bin/python bench/mixed_vs_uniform.py [--model M] [--data D] [--epochs 2]
       [--abits 4] [--uniform 4,3,2] [--budgets 100kB avg:3 136kB@2,3,4,6]
       [--mixed-bits 2,3,4] [--decays 0.5,2,6] [--bsq-epochs 1] [--qtune BIN] [--out FILE]
       [--svg FILE]
A budget is a size (--size-budget) or avg:BITS (--avg-bits), with @BITS,BITS,... the widths
to choose from for that budget alone (else --mixed-bits, else qtune's default).
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
        elif r["kind"] == "bsq":
            out.append('<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="#2ca02c"/>'
                       % (x, y - 6, x - 6, y + 5, x + 6, y + 5))
        else:
            out.append('<rect x="%.1f" y="%.1f" width="10" height="10" fill="#d62728"/>'
                       % (x - 5, y - 5))
        out.append('<text x="%.1f" y="%.1f">%s</text>' % (x + 8, y - 8, r["name"]))
    out.append('<circle cx="%d" cy="%d" r="5" fill="#1f77b4"/><text x="%d" y="%d">uniform</text>'
               % (W - 150, T + 10, W - 140, T + 14))
    out.append('<rect x="%d" y="%d" width="10" height="10" fill="#d62728"/><text x="%d" y="%d">'
               'sensitivity</text>' % (W - 155, T + 25, W - 140, T + 34))
    out.append('<polygon points="%d,%d %d,%d %d,%d" fill="#2ca02c"/><text x="%d" y="%d">BSQ'
               '</text>' % (W - 150, T + 39, W - 156, T + 50, W - 144, T + 50, W - 140, T + 50))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=shared("models", "resnet20_cifar10_fp32_bn.onnx"))
    ap.add_argument("--data", default=shared("data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--abits", default="4")
    ap.add_argument("--budgets", nargs="*", default=["100kB"],
                    help="sensitivity runs: --size-budget values, or avg:A for --avg-bits A")
    ap.add_argument("--mixed-bits", default="", help="sensitivity: the widths to choose from")
    ap.add_argument("--uniform", default="4,3,2")
    ap.add_argument("--decays", default="0.5,2,6")
    ap.add_argument("--bsq-epochs", type=int, default=1)
    ap.add_argument("--qtune", default=os.path.join(REPO, "build", "qtune"))
    ap.add_argument("--out")
    ap.add_argument("--svg")
    a = ap.parse_args()
    log = benchlib.Log(a.out)
    benchlib.header(log, "mixed precision (sensitivity allocation, BSQ) against uniform "
                         "precision, %d training epochs each" % a.epochs)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    log("qtune:    %s (%s)" % (commit, os.path.relpath(a.qtune, REPO) if a.qtune.startswith(REPO)
                                 else a.qtune))
    common = ["--data", a.data, "--preset", a.preset, "--json", "--quiet", "--abits", a.abits,
              "--seed", "0"]
    ep = ["--epochs", str(a.epochs)]
    runs = [("uniform W%s" % b, "uniform", ["--wbits", b] + ep) for b in a.uniform.split(",") if b]
    mb = ["--mixed-bits", a.mixed_bits] if a.mixed_bits else []
    for spec in a.budgets:
        v, _, bits = spec.partition("@")
        top = max(int(b) for b in bits.split(",")) if bits else 4
        runs.append(("sensitivity %s" % spec, "mixed",
                     ["--wbits", str(top)] + (["--avg-bits", v[4:]] if v.startswith("avg:") else
                                              ["--size-budget", v]) +
                     (["--mixed-bits", bits] if bits else mb) + ep))
    runs += [("BSQ alpha %s" % v, "bsq", ["--mixed", "bsq", "--decay", v, "--bsq-epochs",
                                          str(a.bsq_epochs), "--bsq-interval",
                                          str(a.bsq_epochs), "--epochs",
                                          str(a.epochs - a.bsq_epochs)])
             for v in a.decays.split(",") if v]
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
            if kind == "bsq":
                row["bits"] = j["bsq"]["bits"]
                row["start"] = j["bsq"]["top1"]
            rows.append(row)
            log("  %s: top-1 %.2f%% (before fine-tuning %.2f%%), %d bytes, %.3f bits%s" % (
                name, row["top1"], row["start"], row["bytes"], row["avg_bits"],
                ", bits " + " ".join(map(str, row["bits"])) if "bits" in row else ""))
    log()
    log("APoT weights, A%s, CIFAR-10 test split (10,000 images), %d training epochs each "
        "(BSQ: %d of them bit-plane epochs):" % (a.abits, a.epochs, a.bsq_epochs))
    log("%-18s %9s %9s %12s %9s" % ("run", "avg bits", "kB", "before ft", "top-1"))
    for r in rows:
        log("%-18s %9.3f %9.1f %12.2f %9.2f" % (r["name"], r["avg_bits"], r["bytes"] / 1e3,
                                               r["start"], r["top1"]))
    for m in (r for r in rows if r["kind"] != "uniform"):
        fit = [u for u in rows if u["kind"] == "uniform" and u["bytes"] <= m["bytes"]]
        best = max(fit, key=lambda u: u["top1"]) if fit else None
        if best:
            log("%s (%.1f kB) against the best uniform run of no more bytes (%s, %.1f kB): "
                "%+.2f points" % (m["name"], m["bytes"] / 1e3, best["name"], best["bytes"] / 1e3,
                                  m["top1"] - best["top1"]))
        else:
            log("%s (%.1f kB): smaller than every uniform run" % (m["name"], m["bytes"] / 1e3))
    log.close()
    if a.svg:
        svg_plot(a.svg, rows, "ResNet-20, CIFAR-10: top-1 against weight memory (A%s)" % a.abits)


if __name__ == "__main__":
    main()
