"""`qtune init` against PyTorch and onnxruntime: the written models pass onnx.checker, hold
exactly the parameters (names and shapes) of the PyTorch reference models in models.py and
torchvision, compute what those models compute with the same weights, run in onnxruntime
with the same logits as `qtune run`, and start from He-initialized weights."""
import math

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torchvision

import models
from conftest import assert_close, parse_count

# (arch, input CxHxW, classes): several input shapes per family, non-square included.
CASES = [
    ("resnet20", (3, 32, 32), 10),
    ("resnet20", (1, 28, 28), 10),
    ("resnet20", (3, 40, 24), 7),
    ("resnet32", (3, 32, 32), 100),
    ("resnet56", (3, 32, 32), 10),
    ("resnet18", (3, 64, 64), 10),
    ("resnet18", (3, 32, 32), 10),
    ("resnet18", (1, 28, 28), 5),
    ("resnet18", (3, 96, 80), 12),
]
# qtune run against onnxruntime, relative to the largest |logit|.
RUN_RTOL = 1e-4
# PyTorch with the file's weights against onnxruntime, relative to the largest |logit|.
TORCH_RTOL = 1e-4
# Standard deviation of each conv weight relative to sqrt(2 / fan).
HE_RTOL = 0.15

torch.set_num_threads(4)


def case_id(c):
    return "%s-%s-k%d" % (c[0], "x".join(map(str, c[1])), c[2])


def shape_arg(chw):
    return "x".join(str(v) for v in chw)


def reference_model(arch, chw, classes):
    """The PyTorch model qtune init is meant to build, in eval mode. Pooling is adaptive
    so that any input size works (the same as global average pooling)."""
    c, h, w = chw
    if arch in ("resnet20", "resnet32", "resnet56"):
        m = models.CifarResNet(int(arch[6:]), in_channels=c, num_classes=classes, input_size=h)
        m.avgpool = nn.AdaptiveAvgPool2d(1)
    else:
        m = torchvision.models.resnet18(weights=None, num_classes=classes)
        if h < 64 or w < 64:
            m.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
            m.maxpool = nn.Identity()
        else:
            m.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
    return m.eval()


def reference_tensors(m):
    """state_dict names -> shapes, without BatchNorm's num_batches_tracked counter."""
    return {k: tuple(v.shape) for k, v in m.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def ort_run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    return sess.run(None, {"input": x})[0]


def qtune_run(qtune, model, x, tmp_path):
    xin, yout = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xin, x)
    qtune("run", model, "--input", xin, "--output", yout).check_ok()
    return np.load(yout)


@pytest.fixture(scope="module")
def made(qtune, tmp_path_factory):
    """Runs qtune init once per case; returns {case: (path, Result)}."""
    d = tmp_path_factory.mktemp("init")
    out = {}
    for arch, chw, k in CASES:
        p = d / ("%s.onnx" % case_id((arch, chw, k)))
        r = qtune("init", arch, "--input", shape_arg(chw), "--classes", k, "--seed", 3, "-o", p)
        out[(arch, chw, k)] = (p, r)
    return out


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_init_matches_reference(qtune, made, case, tmp_path):
    arch, chw, classes = case
    path, res = made[case]
    res.check_ok()
    assert path.exists(), "qtune init wrote no file\n" + res.describe()
    ref = reference_model(arch, chw, classes)

    # The summary line reports the reference's parameter count.
    assert models.count_parameters(ref) in parse_count(res.stdout), res.describe()

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta.get("qtune.arch") == arch
    assert not any(k in meta for k in ("qtune.mean", "qtune.std"))
    (inp,), (outp,) = m.graph.input, m.graph.output
    assert inp.name == "input" and outp.name == "logits"
    idims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    odims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert idims == ["N"] + list(chw) and odims == ["N", classes]

    # Same tensors (PyTorch state_dict names, shapes) as the reference model.
    inits = {t.name: onh.to_array(t) for t in m.graph.initializer}
    got = {k: tuple(v.shape) for k, v in inits.items()}
    want = reference_tensors(ref)
    assert got == want, "tensor mismatch: only in qtune %s; only in torch %s; shapes differ %s" % (
        sorted(set(got) - set(want)), sorted(set(want) - set(got)),
        sorted(k for k in set(got) & set(want) if got[k] != want[k]))
    ops = [n.op_type for n in m.graph.node]
    convs = sum(isinstance(x, nn.Conv2d) for x in ref.modules())
    bns = sum(isinstance(x, nn.BatchNorm2d) for x in ref.modules())
    assert ops.count("Conv") == convs and ops.count("BatchNormalization") == bns
    assert ops.count("Gemm") == 1 and ops.count("GlobalAveragePool") == 1
    assert ops.count("MaxPool") == sum(isinstance(x, nn.MaxPool2d) for x in ref.modules())

    # The reference with the file's weights computes the same logits as onnxruntime,
    # and qtune run agrees with onnxruntime.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3,) + chw).astype(np.float32)
    y_ort = ort_run(path, x)
    assert y_ort.shape == (3, classes)
    state = {k: torch.from_numpy(np.array(v)) for k, v in inits.items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    with torch.no_grad():
        y_torch = ref(torch.from_numpy(x)).numpy()
    assert_close(y_ort, y_torch, TORCH_RTOL, "onnxruntime vs PyTorch")
    y_q = qtune_run(qtune, path, x, tmp_path)
    assert_close(y_q, y_ort, RUN_RTOL, "qtune run vs onnxruntime")
    y_q1 = qtune_run(qtune, path, x[:1], tmp_path)
    assert_close(y_q1, y_ort[:1], RUN_RTOL, "qtune run batch 1 vs onnxruntime")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_init_weight_statistics(made, case):
    """Conv weights ~ N(0, 2/fan) (fan_in for the CIFAR ResNets, fan_out for ResNet-18),
    BatchNorm at scale 1, bias 0, mean 0, variance 1; fc inside +-1/sqrt(fan_in)."""
    arch, chw, classes = case
    path, res = made[case]
    res.check_ok()
    m = onnx.load(str(path))
    inits = {t.name: onh.to_array(t).astype(np.float64) for t in m.graph.initializer}
    fan_out = arch == "resnet18"
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            k = w.shape[2] * w.shape[3]
            fan = (w.shape[0] if fan_out else w.shape[1]) * k
            want = math.sqrt(2.0 / fan)
            sd = float(w.std())
            assert abs(sd - want) <= HE_RTOL * want, "%s: std %.4g, He std %.4g" % (
                n.input[1], sd, want)
            assert abs(float(w.mean())) <= 5 * want / math.sqrt(w.size), n.input[1]
        elif n.op_type == "BatchNormalization":
            sc, b, mu, var = (inits[i] for i in n.input[1:5])
            assert (sc == 1).all() and (b == 0).all() and (mu == 0).all() and (var == 1).all()
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert abs(attrs.get("epsilon", 1e-5) - 1e-5) < 1e-9
        elif n.op_type == "Gemm":
            w, b = inits[n.input[1]], inits[n.input[2]]
            bound = 1 / math.sqrt(w.shape[1])
            for t in (w, b):
                assert np.abs(t).max() <= bound and np.abs(t).max() > 0.5 * bound
            # A uniform(-a, a) sample has std a/sqrt(3).
            assert abs(float(w.std()) - bound / math.sqrt(3)) <= HE_RTOL * bound / math.sqrt(3)


def test_init_seed_determinism(qtune, tmp_path):
    paths = {}
    for tag, seed in (("a", 5), ("b", 5), ("c", 6)):
        paths[tag] = tmp_path / ("%s.onnx" % tag)
        qtune("init", "resnet20", "--input", "3x32x32", "--classes", 10, "--seed", seed,
              "-o", paths[tag]).check_ok()
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    a, c = (({t.name: onh.to_array(t) for t in onnx.load(str(paths[k])).graph.initializer})
            for k in ("a", "c"))
    assert a.keys() == c.keys()
    for k in a:
        if k.endswith("conv1.weight") or k.endswith("conv2.weight") or k.startswith("fc."):
            assert not np.array_equal(a[k], c[k]), "%s does not depend on the seed" % k
    # The default seed is fixed too.
    for tag in ("d", "e"):
        qtune("init", "resnet18", "--input", "1x28x28", "--classes", 3, "-o",
              tmp_path / ("%s.onnx" % tag)).check_ok()
    assert (tmp_path / "d.onnx").read_bytes() == (tmp_path / "e.onnx").read_bytes()


def test_init_help(qtune):
    r = qtune("init", "--help").check_ok()
    for s in ("resnet20", "resnet32", "resnet56", "resnet18", "fan_in", "fan_out", "3x3",
              "--seed"):
        assert s in r.stdout, "help text lacks %r\n%s" % (s, r.stdout)
    r = qtune("--help").check_ok()
    assert "init" in r.stdout


BAD = [
    (["resnet21", "--input", "3x32x32", "--classes", "10", "-o", "{out}"],
     ("unknown architecture", "resnet21")),
    (["--input", "3x32x32", "--classes", "10", "-o", "{out}"], ("architecture",)),
    (["resnet20", "--input", "3x32", "--classes", "10", "-o", "{out}"], ("3x32", "CxHxW")),
    (["resnet20", "--input", "3x32x32x1", "--classes", "10", "-o", "{out}"], ("3x32x32x1",)),
    (["resnet20", "--input", "0x32x32", "--classes", "10", "-o", "{out}"], ("0x32x32",)),
    (["resnet20", "--input", "axbxc", "--classes", "10", "-o", "{out}"], ("axbxc",)),
    (["resnet20", "--input", "3x4x32", "--classes", "10", "-o", "{out}"], ("4x32",)),
    (["resnet20", "--input", "3x32x32", "--classes", "1", "-o", "{out}"], ("classes",)),
    (["resnet20", "--input", "3x32x32", "--classes", "ten", "-o", "{out}"], ("classes",)),
    (["resnet20", "--input", "3x32x32", "-o", "{out}"], ("--classes",)),
    (["resnet20", "--classes", "10", "-o", "{out}"], ("--input",)),
    (["resnet20", "--input", "3x32x32", "--classes", "10"], ("-o",)),
    (["resnet20", "--input", "3x32x32", "--classes", "10", "--seed", "-1", "-o", "{out}"],
     ("seed",)),
    (["resnet20", "--input", "3x32x32", "--classes", "10", "--depth", "3", "-o", "{out}"],
     ("--depth",)),
    (["resnet20", "--input", "3x32x32", "--classes", "10", "-o", "/nonexistent-dir/m.onnx"],
     ("/nonexistent-dir/m.onnx",)),
]


@pytest.mark.badinput
@pytest.mark.parametrize("args,needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_init_bad_arguments(qtune, tmp_path, args, needles):
    out = tmp_path / "m.onnx"
    r = qtune("init", *[a.format(out=out) for a in args])
    r.check_error(*needles)
    assert not out.exists(), "a failed init left a file behind"
