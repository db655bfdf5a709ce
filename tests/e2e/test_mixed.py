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
