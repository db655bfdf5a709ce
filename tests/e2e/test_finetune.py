"""CLI scenarios of `qtune finetune` and `qtune inspect` on quantized models: post-training
quantization and a short quantization-aware fine-tune on Fashion-MNIST, the quantized ONNX
(ai.qtune ops) reloading to continue, progressive 4 -> 3 -> 2 bits, per-layer overrides,
uniform per-channel alphas, unfolding a BatchNorm-folded export, and bad settings."""
import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import datasets
from conftest import assert_close, fashion_mnist

FMNIST = datasets.FASHION_DIR  # tests/paths.conf; required through need_fmnist()
APOT_SIGNED_4BIT = [-1, -.8, -.6, -.4, -.3, -.2, -.1, 0, .1, .2, .3, .4, .6, .8, 1]


def need_fmnist():
    fashion_mnist()


def last_json(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


def inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def quant_nodes(path):
    return [n for n in onnx.load(path).graph.node if n.domain == "ai.qtune"]


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


COMMON = ["--data", FMNIST, "--preset", "fashion-mnist", "--test-limit", "1000", "--quiet"]


@pytest.fixture(scope="module")
def fp_model(qtune, tmp_path_factory):
    """A ResNet-20 trained in FP32 for three short epochs on Fashion-MNIST."""
    need_fmnist()
    d = tmp_path_factory.mktemp("finetune")
    init = str(d / "init.onnx")
    r = qtune("init", "resnet20", "--input", "1x28x28", "--classes", "10", "-o", init)
    r.check_ok()
    fp = str(d / "fp.onnx")
    r = qtune("train", init, "--epochs", "3", "--train-limit", "4096", "--lr", "0.05", "--json",
              "-o", fp, *COMMON)
    r.check_ok()
    return fp, last_json(r)["top1"], d


def test_ptq_then_finetune(qtune, fp_model, tmp_path):
    fp, fp_top1, _ = fp_model
    assert fp_top1 > 60, fp_top1
    # Post-training quantization at 8 bits keeps the FP32 accuracy; at 2 bits it does not.
    r = qtune("finetune", fp, "--bits", "8", "--scheme", "uniform", "--epochs", "0", "--json",
              "-o", str(tmp_path / "w8.onnx"), *COMMON)
    r.check_ok()
    w8 = last_json(r)
    assert abs(w8["ptq_top1"] - fp_top1) <= 1.5, (w8, fp_top1)
    r = qtune("finetune", fp, "--bits", "2", "--epochs", "0", "--json",
              "-o", str(tmp_path / "w2.onnx"), *COMMON)
    r.check_ok()
    assert last_json(r)["ptq_top1"] < w8["ptq_top1"]

    out = str(tmp_path / "w4a4.onnx")
    r = qtune("finetune", fp, "--wbits", "4", "--abits", "4", "--epochs", "1", "--train-limit", "2048",
              "--lr", "0.01", "--alpha-init", "calib", "--json", "-o", out, *COMMON)
    r.check_ok()
    res = last_json(r)
    assert res["epochs"] == 1 and res["quantizers"] == 42 and "ptq_top1" in res
    assert res["top1"] > 60, res
    m = onnx.load(out)
    assert {(o.domain, o.version) for o in m.opset_import} >= {("ai.qtune", 1)}
    q = [n for n in m.graph.node if n.domain == "ai.qtune"]
    assert sorted({n.op_type for n in q}) == ["ActQuant", "WeightQuant"]
    # 21 convolutions and the classifier: 22 weight quantizers; the first conv and the last
    # layer read float inputs, so 20 activation quantizers, all after a ReLU (unsigned).
    wq = [n for n in q if n.op_type == "WeightQuant"]
    aq = [n for n in q if n.op_type == "ActQuant"]
    assert len(wq) == 22 and len(aq) == 20
    assert all(attr(n, "signed") == 0 and attr(n, "bits") == 4 for n in aq)
    assert sum(attr(n, "scheme") == b"absmax" for n in wq) == 2
    # eval of the written model reproduces the final test accuracy.
    e = qtune("eval", out, "--data", FMNIST, "--limit", "1000", "--json", "--quiet").check_ok()
    assert abs(last_json(e)["top1"] - res["top1"]) < 1e-6


def test_ptq_without_quantizers_leaves_the_model_unchanged(qtune, fp_model, tmp_path):
    """No quantizer at all: nothing is calibrated, and the logits are the input model's bit
    for bit (BatchNorm statistics included)."""
    fp, _, _ = fp_model
    out = str(tmp_path / "float.onnx")
    r = qtune("finetune", fp, "--layer", "*=float", "--first-last", "float", "--epochs", "0",
              "-o", out, *[a for a in COMMON if a != "--quiet"]).check_ok()
    assert "no quantizer: nothing calibrated" in r.stderr, r.stderr
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), x)
    ys = []
    for m in (fp, out):
        y = str(tmp_path / "y.npy")
        qtune("run", m, "--input", str(tmp_path / "x.npy"), "--output", y).check_ok()
        ys.append(np.load(y))
    assert ys[0].shape == ys[1].shape == (16, 10) and np.all(np.isfinite(ys[0]))
    assert np.array_equal(ys[0], ys[1])
    want, got = inits(fp), inits(out)
    for k, v in want.items():
        assert np.array_equal(got[k], v), k


def test_ptq_batchnorm_decision_is_reported(qtune, fp_model, tmp_path):
    """Re-estimated BatchNorm statistics are kept only when they raise the top-1 on held-out
    training images; the choice and both figures are reported, and --holdout 0 skips the
    check."""
    fp, _, _ = fp_model
    args = [a for a in COMMON if a != "--quiet"]
    r = qtune("finetune", fp, "--bits", "8", "--scheme", "uniform", "--no-standardize",
              "--epochs", "0", "-o", str(tmp_path / "a.onnx"), *args).check_ok()
    line = [l for l in r.stderr.splitlines() if l.startswith("calibration")][0]
    assert re.search(r"BatchNorms (re-estimated|kept as they were(, with bias correction)?) "
                     r"\(held-out top-1 [0-9.]+% re-estimated, [0-9.]+% as they were"
                     r"(, [0-9.]+% bias-corrected)?\)", line), line
    r = qtune("finetune", fp, "--bits", "4", "--epochs", "0", "--holdout", "0",
              "-o", str(tmp_path / "b.onnx"), *args).check_ok()
    assert "re-estimated (unchecked: --holdout 0)" in r.stderr, r.stderr


def test_ptq_choices_are_measured_and_reported(qtune, fp_model, tmp_path):
    """Each activation calibration method runs; bias correction is a third candidate whose
    held-out figure is reported beside the own and re-estimated statistics; AdaRound reports
    what it rounded; the standardized weights are mapped back for the evaluation."""
    fp, _, _ = fp_model
    args = [a for a in COMMON if a != "--quiet"]
    seen = {}
    for ptq in ("calib=mse,bias=off", "calib=minmax,bias=on", "calib=percentile:99.9,bias=off",
                "adaround=on,adaround-iters=20"):
        r = qtune("finetune", fp, "--bits", "4", "--epochs", "0", "--calib-images", "256",
                  "--holdout", "500", "--ptq", ptq, "--json", "-o", str(tmp_path / "q.onnx"),
                  *args).check_ok()
        res = last_json(r)
        seen[ptq] = res
        assert res["calib_images"] == 256 and res["restored"] == 20, res
        assert res["batchnorm"] in ("own", "reestimated", "own+bias-correction"), res
        line = [l for l in r.stderr.splitlines() if l.startswith("calibration")][0]
        method = {"mse": "least squared error", "minmax": "largest value",
                  "percentile:99.9": "99.9-th percentile"}.get(ptq.split(",")[0][6:],
                                                               "largest value")
        assert method in line, line
        if "bias=off" not in ptq:  # on by default with --epochs 0
            assert res["holdout_top1"][2] >= 0 and "% bias-corrected" in line, line
        else:
            assert res["holdout_top1"][2] == -1, res
        if "adaround" in ptq:
            assert re.search(r"AdaRound \([0-9.]+ s\): 20 layers, [1-9][0-9]* of [0-9]+ weights "
                             r"rounded away", r.stderr), r.stderr
        # the reported top-1 is the saved model's
        e = qtune("eval", str(tmp_path / "q.onnx"), "--data", FMNIST, "--limit", "1000",
                  "--json", "--quiet").check_ok()
        assert abs(last_json(e)["top1"] - res["top1"]) < 1e-6, ptq
    # min/max ranges are wider than the least-error ones: different models
    a, b = seen["calib=mse,bias=off"], seen["calib=minmax,bias=on"]
    assert a["top1"] != b["top1"] or a["loss"] != b["loss"]


def test_inspect_lists_quantizers(qtune, fp_model, tmp_path):
    fp, _, _ = fp_model
    out = str(tmp_path / "q.onnx")
    r = qtune("finetune", fp, "--bits", "4", "--epochs", "0", "-o", out, *COMMON)
    r.check_ok()
    r = qtune("inspect", out, "--json")
    r.check_ok()
    qs = json.loads(r.stdout)["quantizers"]
    assert len(qs) == 42
    w = [q for q in qs if q["kind"] == "weight" and q["scheme"] == "apot"]
    assert len(w) == 20
    for q in w:
        assert q["bits"] == 4 and q["signed"] and q["alpha"] > 0 and q["standardize"]
        np.testing.assert_allclose(q["levels"], APOT_SIGNED_4BIT, atol=1e-6)
        assert abs(sum(q["share"]) - 1) < 1e-4 and q["levels_used"] >= 3
    # The shares agree with quantizing the stored weights in numpy (APOT.md section 2).
    g = inits(out)
    node = [n for n in quant_nodes(out) if n.op_type == "WeightQuant" and attr(n, "scheme") == b"apot"][0]
    wt, alpha = g[node.input[0]].astype(np.float64), float(g[node.input[1]][0])
    x = (wt - wt.mean()) / wt.std(ddof=1) / alpha
    lv = np.array(APOT_SIGNED_4BIT)
    idx = np.abs(np.clip(x, -1, 1).reshape(-1, 1) - lv.reshape(1, -1)).argmin(axis=1)
    share = np.bincount(idx, minlength=len(lv)) / idx.size
    mine = [q for q in qs if q["name"] == node.name][0]
    np.testing.assert_allclose(mine["share"], share, atol=2.0 / idx.size)
    text = qtune("inspect", out)
    assert text.returncode == 0 and "quantizers" in text.stdout and "unsigned" in text.stdout


def test_reload_continues_and_progressive_bits(qtune, fp_model, tmp_path):
    fp, _, _ = fp_model
    q4 = str(tmp_path / "q4.onnx")
    r = qtune("finetune", fp, "--bits", "4", "--epochs", "1", "--train-limit", "1024", "--lr", "0.01",
              "-o", q4, *COMMON)
    r.check_ok()
    # Same settings on the quantized model: the quantizers and their alphas carry over
    # (lr 0 keeps every parameter, so the written alphas equal the input's).
    same = str(tmp_path / "same.onnx")
    r = qtune("finetune", q4, "--bits", "4", "--epochs", "1", "--train-limit", "256", "--lr", "0",
              "-o", same, *COMMON[:-1])
    r.check_ok()
    assert "alphas kept" in r.stderr, r.stderr
    a, b = inits(q4), inits(same)
    alphas = [k for k in a if ".alpha_" in k]
    assert len(alphas) == 40 and set(alphas) <= set(b)
    for k in alphas:
        assert np.array_equal(a[k], b[k]), k
    # Progressive: 4 -> 3 -> 2 bits, each stage from the last, alphas re-initialized.
    prev = q4
    for bits in (3, 2):
        out = str(tmp_path / ("q%d.onnx" % bits))
        r = qtune("finetune", prev, "--bits", str(bits), "--epochs", "1", "--train-limit", "1024",
                  "--lr", "0.01", "--alpha-init", "calib", "--json", "-o", out, *COMMON[:-1])
        r.check_ok()
        assert "alphas re-initialized" in r.stderr, r.stderr
        qn = quant_nodes(out)
        assert len(qn) == 42
        assert all(attr(n, "bits") == bits for n in qn if attr(n, "scheme") == b"apot")
        assert last_json(r)["top1"] > 30
        prev = out


def test_progressive_in_one_command(qtune, fp_model, tmp_path):
    """--wbits 4,3,2 --abits 4,3,2: three stages in one command, each from the last stage's
    model with re-initialized alphas; the same as the three commands run by hand (bit for
    bit), each stage's model at its bits, and the JSON summary of every stage as the last line,
    whose accuracies `qtune eval` of the written models reproduces."""
    fp, _, _ = fp_model
    opts = ["--epochs", "1", "--train-limit", "1024", "--lr", "0.01"] + COMMON
    out = str(tmp_path / "p.onnx")
    r = qtune("finetune", fp, "--wbits", "4,3,2", "--abits", "4,3,2", "--json", "-o", out,
              *opts[:-1])  # not --quiet: the stages' reports are checked
    r.check_ok()
    assert r.stderr.count("alphas re-initialized") == 2, r.stderr
    summary = last_json(r)
    stages = summary["stages"]
    models = [str(tmp_path / "p.w4a4.onnx"), str(tmp_path / "p.w3a3.onnx"), out]
    assert [(s["wbits"], s["abits"], s["model"]) for s in stages] == \
        [(4, 4, models[0]), (3, 3, models[1]), (2, 2, out)], stages
    assert summary["top1"] == stages[-1]["top1"]
    for s, m in zip(stages, models):
        qn = [n for n in quant_nodes(m) if attr(n, "scheme") == b"apot"]
        assert qn and all(attr(n, "bits") == s["wbits"] for n in qn), m
        ev = qtune("eval", m, "--data", FMNIST, "--preset", "fashion-mnist", "--limit", "1000",
                   "--json", "--quiet")
        ev.check_ok()
        assert abs(last_json(ev)["top1"] - s["top1"]) < 1e-6, (m, last_json(ev), s)
    # By hand: the same stages, each from the last one's output.
    prev = fp
    for bits, extra in ((4, []), (3, ["--reset-alphas", "--alpha-init", "calib"]),
                        (2, ["--reset-alphas", "--alpha-init", "calib"])):
        hand = str(tmp_path / ("h%d.onnx" % bits))
        qtune("finetune", prev, "--bits", str(bits), "-o", hand, *extra, *opts).check_ok()
        prev = hand
    a, b = inits(out), inits(prev)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("args,needle", [
    (["--wbits", "4,3", "--abits", "4,3,2"], "list 2 and 3 stages"),
    (["--wbits", "4,3,"], "--wbits needs"),
    (["--wbits", "4,9"], "--wbits needs"),
    (["--wbits", "4,3", "--resume", "x.ckpt"], "--resume"),
    (["--wbits", "4,3", "--epochs", "0"], "--epochs 0"),
])
def test_progressive_bad_settings(qtune, fp_model, tmp_path, args, needle):
    fp, _, _ = fp_model
    r = qtune("finetune", fp, "-o", str(tmp_path / "x.onnx"), *COMMON, *args)
    r.check_error(needle)
    assert not os.path.exists(str(tmp_path / "x.onnx")), r.describe()


def test_overrides_and_uniform_per_channel(qtune, fp_model, tmp_path):
    fp, _, _ = fp_model
    out = str(tmp_path / "ov.onnx")
    r = qtune("finetune", fp, "--bits", "4", "--scheme", "uniform", "--per-channel", "--epochs", "0",
              "--layer", "*layer3*=float", "--layer", "*layer1.0*=w8a8", "--first-last", "same",
              "-o", out, *COMMON)
    r.check_ok()
    g = inits(out)
    qn = quant_nodes(out)
    layers = {}
    for n in onnx.load(out).graph.node:
        for i in n.input:
            for q in qn:
                if q.output[0] == i:
                    layers.setdefault(n.name, []).append(q)
    assert not any("layer3" in k for k in layers)
    for name, qs in layers.items():
        bits = 8 if "layer1.0" in name else 4
        assert all(attr(q, "bits") == bits for q in qs), name
        for q in qs:
            if q.op_type == "WeightQuant":
                w = g[q.input[0]]
                assert g[q.input[1]].shape == ((w.shape[0],) if w.ndim == 4 else (1,)), name
    # --first-last same: the first conv's input (the normalized image) can be negative.
    first = [q for q in qn if q.op_type == "ActQuant" and attr(q, "signed") == 1]
    assert len(first) == 1


def test_folded_model_is_unfolded_exactly(qtune, ref_out, tmp_path):
    """A BatchNorm-folded export: with every layer left in float, unfolding (a BatchNorm after
    each Conv, statistics from data) leaves the inference function unchanged (synthetic
    CIFAR-format data: no dataset needed)."""
    model = os.path.join(ref_out, "resnet20", "resnet20_op13_dyn_eval.onnx")
    assert "BatchNormalization" not in [n.op_type for n in onnx.load(model).graph.node]
    data = str(tmp_path / "cifar")
    os.makedirs(data)
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_%d.bin" % i, 64) for i in range(1, 6)] + [("test_batch.bin", 64)]:
        rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1)
        rec.astype(np.uint8).tofile(os.path.join(data, name))
    out = str(tmp_path / "unfolded.onnx")
    r = qtune("finetune", model, "--data", data, "--preset", "cifar10", "--epochs", "0", "--batch", "32",
              "--layer", "*=float", "-o", out)
    r.check_ok()
    assert "unfolding" in r.stderr
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("BatchNormalization") == 21 and "WeightQuant" not in ops
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), x)
    ys = []
    for m in (model, out):
        y = str(tmp_path / "y.npy")
        r = qtune("run", m, "--input", str(tmp_path / "x.npy"), "--output", y)
        r.check_ok()
        ys.append(np.load(y))
    assert_close(ys[1], ys[0], 1e-4, "unfolded vs folded model")


@pytest.mark.badinput
@pytest.mark.parametrize("args,needle", [
    (["--wbits", "7"], "uniform beyond"),
    (["--abits", "6"], "uniform beyond"),
    (["--bits", "9"], "--bits"),
    (["--scheme", "log"], "--scheme"),
    (["--first-last", "16"], "--first-last"),
    (["--per-channel"], "--per-channel"),
    (["--layer", "nothing*=w8"], "matches no"),
    (["--layer", "conv=w"], "SPEC"),
    (["--alpha-init", "guess"], "--alpha-init"),
    (["--folded", "maybe"], "--folded"),
    (["--alpha-w", "-1"], "--alpha-w"),
    (["--ptq", "calib=entropy"], "--ptq calib"),
    (["--ptq", "weights=percentile"], "--ptq weights"),
    (["--ptq", "calib=percentile:0"], "percentile"),
    (["--ptq", "bias=yes"], "--ptq bias"),
    (["--ptq", "rounding=on"], "unknown --ptq item"),
    (["--ptq", "adaround"], "key=value"),
    (["--ptq", "adaround-iters=0"], "adaround-iters"),
    (["--ptq", "adaround=on,restore=off"], "AdaRound needs"),
    (["--calib-images", "0"], "--calib-images"),
])
def test_bad_settings(qtune, fp_model, tmp_path, args, needle):
    fp, _, _ = fp_model
    r = qtune("finetune", fp, "--epochs", "0", "-o", str(tmp_path / "x.onnx"), *COMMON, *args)
    r.check_error(needle)
    assert r.returncode == 1 and not os.path.exists(str(tmp_path / "x.onnx")), r.describe()


def set_attr(node, name, value):
    for a in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.badinput
@pytest.mark.parametrize("change,needle", [
    (lambda n: set_attr(n, "bits", 0), "bits"),
    (lambda n: set_attr(n, "scheme", "log"), "scheme"),
    (lambda n: n.input.pop(), "alpha"),
])
def test_damaged_quantizer_refused(qtune, fp_model, tmp_path, change, needle):
    fp, _, _ = fp_model
    q = str(tmp_path / "q.onnx")
    r = qtune("finetune", fp, "--bits", "4", "--epochs", "0", "-o", q, *COMMON)
    r.check_ok()
    m = onnx.load(q)
    node = [n for n in m.graph.node if n.op_type == "ActQuant"][0]
    change(node)
    bad = str(tmp_path / "bad.onnx")
    onnx.save(m, bad)
    for cmd in (["inspect", bad], ["eval", bad, "--data", FMNIST, "--limit", "64", "--quiet"]):
        r = qtune(*cmd)
        r.check_error(needle, node.name)
        assert r.returncode == 1, r.describe()


@pytest.mark.badinput
def test_future_qtune_opset_refused(qtune, fp_model, tmp_path):
    fp, _, _ = fp_model
    q = str(tmp_path / "q.onnx")
    qtune("finetune", fp, "--bits", "4", "--epochs", "0", "-o", q, *COMMON).check_ok()
    m = onnx.load(q)
    for o in m.opset_import:
        if o.domain == "ai.qtune":
            o.version = 2
    bad = str(tmp_path / "v2.onnx")
    onnx.save(m, bad)
    r = qtune("inspect", bad)
    r.check_error("ai.qtune opset 2")
    assert r.returncode == 1, r.describe()


def test_resume_is_bit_exact(qtune, fp_model, tmp_path):
    """Fine-tuning 2 epochs straight equals 1 epoch then --resume to 2 (step schedule:
    its milestones do not depend on the planned epochs)."""
    fp, _, _ = fp_model
    common = ["--bits", "3", "--train-limit", "512", "--lr", "0.02", "--schedule", "step",
              "--milestones", "1", "--alpha-init", "calib", "--seed", "4", "--threads", "2"] + COMMON
    straight = str(tmp_path / "straight.onnx")
    r = qtune("finetune", fp, "--epochs", "2", "-o", straight, *common)
    r.check_ok()
    first = str(tmp_path / "first.onnx")
    r = qtune("finetune", fp, "--epochs", "1", "-o", first, *common)
    r.check_ok()
    resumed = str(tmp_path / "resumed.onnx")
    r = qtune("finetune", fp, "--epochs", "2", "--resume", first + ".ckpt", "-o", resumed, *common)
    r.check_ok()
    a, b = inits(straight), inits(resumed)
    assert a.keys() == b.keys() and any(".alpha_" in k for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), "resumed run differs in " + k
