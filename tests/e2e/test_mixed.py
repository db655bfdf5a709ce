"""Mixed precision under a weight-memory budget (`qtune finetune --size-budget / --avg-bits`):
the budget holds in the allocation qtune reports, in `qtune inspect`'s weight memory and in
the bytes of the level codes the exported model stores; layers get different bits; a budget
no allocation can meet, and malformed budgets, are refused without output. Then a short
fine-tune keeps the allocation."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import datasets
from conftest import fashion_mnist

FMNIST = datasets.FASHION_DIR
COMMON = ["--data", FMNIST, "--preset", "fashion-mnist", "--test-limit", "500", "--quiet",
          "--calib-images", "256", "--holdout", "500"]


def last_json(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fp(qtune, tmp_path_factory):
    fashion_mnist()
    d = tmp_path_factory.mktemp("mixed")
    init = str(d / "init.onnx")
    qtune("init", "resnet20", "--input", "1x28x28", "--classes", "10", "-o", init).check_ok()
    out = str(d / "fp.onnx")
    qtune("train", init, "--epochs", "1", "--train-limit", "2048", "--lr", "0.05", "-o", out,
          "--data", FMNIST, "--preset", "fashion-mnist", "--test-limit", "500",
          "--quiet").check_ok()
    return out


def weight_memory(qtune, path):
    return json.loads(qtune("inspect", path, "--json").check_ok().stdout)["weight_memory"]


def code_bytes(path):
    m = onnx.load(path)
    return sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer
               if t.name.endswith(".codes"))


def uniform_bytes(qtune, fp, tmp_path, bits):
    out = str(tmp_path / ("w%d.onnx" % bits))
    qtune("finetune", fp, "--wbits", str(bits), "--abits", "0", "--epochs", "0", "-o", out,
          *COMMON).check_ok()
    return weight_memory(qtune, out)["bytes"]


def test_size_budget_holds_in_inspect_and_export(qtune, fp, tmp_path):
    b4, b2 = uniform_bytes(qtune, fp, tmp_path, 4), uniform_bytes(qtune, fp, tmp_path, 2)
    assert b2 < b4
    budget = (b2 + b4) // 2
    out = str(tmp_path / "mixed.onnx")
    r = qtune("finetune", fp, "--wbits", "4", "--abits", "0", "--epochs", "0", "--size-budget",
              str(budget), "--mixed-images", "256", "--json", "-o", out, *COMMON)
    r.check_ok()
    mixed = last_json(r)["mixed"]
    assert mixed["method"] == "sensitivity" and mixed["budget_bytes"] == budget
    assert 0 < mixed["bytes"] <= budget, mixed
    wm = weight_memory(qtune, out)
    assert wm["bytes"] == mixed["bytes"] and abs(wm["average_bits"] - mixed["avg_bits"]) < 1e-3
    got = {l["layer"]: l["bits"] for l in wm["layers"]}
    assert got == {l["layer"]: l["bits"] for l in mixed["layers"]}, (got, mixed["layers"])
    allocated = [l["bits"] for l in mixed["layers"] if l["allocated"]]
    assert len(allocated) == 20 and min(allocated) == 2 and max(allocated) == 4, allocated
    exported = str(tmp_path / "mixed.export.onnx")
    qtune("export", out, "--format", "onnx", "-o", exported).check_ok()
    assert code_bytes(exported) == wm["bytes"] <= budget
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    layers = [v for k, v in meta.items() if k.startswith("qtune.quant.")]
    assert any("weight apot2 signed" in v for v in layers) and any(
        "weight apot4 signed" in v for v in layers), layers


def test_average_bits(qtune, fp, tmp_path):
    out = str(tmp_path / "avg.onnx")
    r = qtune("finetune", fp, "--wbits", "4", "--abits", "4", "--epochs", "0", "--avg-bits", "3",
              "--mixed-bits", "2,4", "--mixed-images", "256", "--json", "-o", out, *COMMON)
    r.check_ok()
    mixed = last_json(r)["mixed"]
    wm = weight_memory(qtune, out)
    assert wm["average_bits"] <= 3 + 1e-9 and abs(wm["average_bits"] - mixed["avg_bits"]) < 1e-3
    assert {l["bits"] for l in mixed["layers"] if l["allocated"]} == {2, 4}


def test_finetune_keeps_the_allocation(qtune, fp, tmp_path):
    out = str(tmp_path / "ft.onnx")
    r = qtune("finetune", fp, "--wbits", "3", "--abits", "4", "--epochs", "1", "--train-limit",
              "512", "--avg-bits", "2.5", "--mixed-images", "256", "--json", "-o", out, *COMMON)
    r.check_ok()
    res = last_json(r)
    assert np.isfinite(res["top1"]) and res["mixed"]["avg_bits"] <= 2.5 + 1e-9
    wm = weight_memory(qtune, out)
    assert {l["layer"]: l["bits"] for l in wm["layers"]} == {
        l["layer"]: l["bits"] for l in res["mixed"]["layers"]}


@pytest.mark.parametrize("args, words", [
    (["--size-budget", "1000"], "cannot fit"),
    (["--size-budget", "12parsecs"], "--size-budget needs a size"),
    (["--size-budget", "-5kB"], "--size-budget needs a size"),
    (["--avg-bits", "0.5"], "--avg-bits needs"),
    (["--avg-bits", "3", "--mixed-bits", "4,2"], "ascending"),
    (["--avg-bits", "3", "--mixed-bits", "2,9"], "9-bit apot weights"),
])
def test_bad_budgets_refused(qtune, fp, tmp_path, args, words):
    out = str(tmp_path / "bad.onnx")
    r = qtune("finetune", fp, "--epochs", "0", "--mixed-images", "64", "-o", out, *args, *COMMON)
    assert r.returncode != 0 and words in r.stderr, r.describe()
    assert not os.path.exists(out)


BSQ = ["--mixed", "bsq", "--train-limit", "1024", "--bsq-interval", "1"]


def test_bsq_lowers_precision_and_exports(qtune, fp, tmp_path):
    """A strong regularizer empties bit planes within two short epochs; the result is an
    ordinary quantized model (uniform quantizers of per-layer bits) that inspect, eval and
    export take; the per-epoch log records the planes."""
    out = str(tmp_path / "bsq.onnx")
    r = qtune("finetune", fp, "--decay", "20", "--bsq-epochs", "2", "--epochs", "0", "--json",
              "-o", out, *BSQ, *COMMON)
    r.check_ok()
    res = last_json(r)["bsq"]
    bits = res["bits"]
    assert len(bits) == 22 and max(bits) <= 8 and min(bits) < 8, res
    wm = weight_memory(qtune, out)
    assert [l["bits"] for l in wm["layers"]] == bits and wm["bytes"] == res["bytes"]
    with open(str(tmp_path / "bsq.bsq.log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [e["epoch"] for e in log] == [1, 2] and all(len(e["planes"]) == 22 for e in log)
    assert log[-1]["avg_bits"] <= log[0]["avg_bits"]
    q = [n for n in onnx.load(out).graph.node if n.domain == "ai.qtune"]
    assert sum(n.op_type == "WeightQuant" for n in q) == 22
    assert not any(n.op_type == "BitQuant" for n in q)
    exported = str(tmp_path / "bsq.export.onnx")
    qtune("export", out, "--format", "onnx", "-o", exported).check_ok()
    assert code_bytes(exported) == wm["bytes"]
    # qtune's accuracy of the saved model is the one reported
    ev = json.loads(qtune("eval", out, "--data", FMNIST, "--preset", "fashion-mnist", "--limit",
                          "500", "--json").check_ok().stdout.strip().splitlines()[-1])
    assert abs(ev["top1"] - res["top1"]) < 1e-6, (ev, res)


def test_bsq_continues_a_saved_bit_plane_model(qtune, fp, tmp_path):
    """A run of 1 epoch, continued from its OUT.bsq.onnx to 2, ends where a 2-epoch run does
    up to the data order of the continued epoch: same planes count per layer recorded, the
    log holds both epochs."""
    first = str(tmp_path / "a.onnx")
    qtune("finetune", fp, "--decay", "20", "--bsq-epochs", "1", "--epochs", "0", "-o", first,
          *BSQ, *COMMON).check_ok()
    saved = str(tmp_path / "a.bsq.onnx")
    meta = {p.key: p.value for p in onnx.load(saved).metadata_props}
    assert meta["qtune.bsq.epoch"] == "1"
    again = str(tmp_path / "b.onnx")
    r = qtune("finetune", saved, "--decay", "20", "--bsq-epochs", "2", "--epochs", "0",
              "--json", "-o", again, *BSQ, *COMMON)
    r.check_ok()
    assert last_json(r)["bsq"]["first_epoch"] == 1
    with open(str(tmp_path / "b.bsq.log.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [2]


def test_bsq_budget(qtune, fp, tmp_path):
    """The regularizer stops once the budget holds; a budget the planes never reach is an
    error that names the size reached, and no model is written."""
    out = str(tmp_path / "fit.onnx")
    r = qtune("finetune", fp, "--decay", "20", "--bsq-epochs", "2", "--avg-bits", "7.9",
              "--epochs", "0", "--json", "-o", out, *BSQ, *COMMON)
    r.check_ok()
    res = last_json(r)["bsq"]
    assert res["avg_bits"] <= 7.9 and res["regularizer_off_at"] in (1, 2), res
    out = str(tmp_path / "miss.onnx")
    r = qtune("finetune", fp, "--decay", "0", "--bsq-epochs", "1", "--avg-bits", "3",
              "--epochs", "0", "-o", out, *BSQ, *COMMON)
    assert r.returncode != 0 and "over the budget" in r.stderr, r.describe()
    assert not os.path.exists(out)


@pytest.mark.parametrize("args, words", [
    (["--wbits", "4"], "belong to --psgd"),
    (["--psgd", "--lambda-s", "-1"], "--lambda-s needs"),
    (["--psgd", "--wbits", "1"], "--wbits needs"),
    (["--psgd", "--first-last", "9"], "--first-last must be"),
    (["--psgd", "--layer", "nomatch*=w3"], "matches no"),
])
def test_psgd_bad_options_refused(qtune, fp, tmp_path, args, words):
    out = str(tmp_path / "p.onnx")
    r = qtune("train", fp, "--epochs", "1", "--train-limit", "256", "-o", out, "--data", FMNIST,
              "--preset", "fashion-mnist", "--quiet", *args)
    assert r.returncode != 0 and words in r.stderr, r.describe()
    assert not os.path.exists(out)


def test_psgd_refuses_a_quantized_model(qtune, fp, tmp_path):
    q = str(tmp_path / "q.onnx")
    qtune("finetune", fp, "--epochs", "0", "-o", q, *COMMON).check_ok()
    r = qtune("train", q, "--epochs", "1", "--psgd", "-o", str(tmp_path / "p.onnx"), "--data",
              FMNIST, "--preset", "fashion-mnist", "--quiet")
    assert r.returncode != 0 and "float model" in r.stderr, r.describe()
