"""qtune against PyTorch and onnxruntime on models exported by torch.onnx.export:
`qtune run` logits vs PyTorch's, and `qtune export --format float` round trips checked with
onnx.checker and onnxruntime."""
import os

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

import export_models
from conftest import assert_close, require_shared

VARIANTS = export_models.matrix()
# Tolerance of qtune's logits against PyTorch's, relative to the largest |logit|.
RUN_RTOL = 1e-4
# Round trip through `qtune export`: onnxruntime on both files.
RT_RTOL = 1e-5
RT_ATOL = 1e-5
# Operators a canonical float export may keep (no Identity, Dropout, Constant, Pad or
# shape arithmetic).
CANONICAL_OPS = {"Conv", "BatchNormalization", "Relu", "Add", "AveragePool", "MaxPool",
                 "GlobalAveragePool", "Gemm", "MatMul", "Reshape", "Flatten"}


def _ids(vs):
    return [v.name for v in vs]


def load_ref(ref_out, model):
    d = os.path.join(ref_out, model)
    return np.load(os.path.join(d, "input.npy")), np.load(os.path.join(d, "expected.npy"))


def qtune_logits(qtune, model_path, x, tmp_path, tag="x"):
    xin = tmp_path / ("%s_in.npy" % tag)
    yout = tmp_path / ("%s_out.npy" % tag)
    np.save(xin, np.ascontiguousarray(x, dtype=np.float32))
    qtune("run", model_path, "--input", xin, "--output", yout).check_ok()
    assert yout.exists(), "qtune run wrote no output file"
    y = np.load(yout)
    assert y.dtype == np.float32, "output dtype %s, expected float32" % y.dtype
    return y


def assert_close_to_torch(y, expected, what):
    assert_close(y, expected, RUN_RTOL, what)


def assert_allclose(b, a, what):
    """Round-trip check, elementwise as np.allclose (rtol RT_RTOL, atol RT_ATOL x max|a|), with
    shapes equal and NaN failing."""
    assert b.shape == a.shape, "%s: shape %s vs %s" % (what, b.shape, a.shape)
    assert np.isfinite(a).all() and np.isfinite(b).all(), "%s: non-finite outputs" % what
    scale = float(np.abs(a).max())
    assert np.allclose(b, a, rtol=RT_RTOL, atol=RT_ATOL * scale), (
        "%s: max diff %.3e (scale %.4f)" % (what, float(np.abs(b - a).max()), scale))


def ort_run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def batches(v, x, y):
    """(tag, input, expected) per batch size tried: the export batch, and for a dynamic
    batch axis also a smaller batch."""
    out = [("b%d" % len(x), x, y)]
    if v.batch == "dyn":
        out.append(("b3", x[:3], y[:3]))
        out.append(("b1", x[1:2], y[1:2]))
    return out


@pytest.mark.parametrize("v", VARIANTS, ids=_ids(VARIANTS))
def test_run_matches_torch(qtune, ref_out, v, tmp_path):
    x, y = load_ref(ref_out, v.model)
    for tag, xb, yb in batches(v, x, y):
        got = qtune_logits(qtune, v.path(ref_out), xb, tmp_path, tag)
        assert_close_to_torch(got, yb, "%s batch %d" % (v.name, len(xb)))


@pytest.fixture(scope="module")
def exported(qtune, ref_out, tmp_path_factory):
    """Runs `qtune export --format float` once per variant; returns its path and result."""
    cache = {}
    root = tmp_path_factory.mktemp("export")

    def get(v):
        if v.name not in cache:
            out = root / (v.name + ".onnx")
            res = qtune("export", v.path(ref_out), "--format", "float", "-o", out)
            cache[v.name] = (out, res)
        out, res = cache[v.name]
        res.check_ok()
        assert out.exists() and out.stat().st_size > 0, "qtune export wrote nothing"
        return out
    return get


@pytest.mark.parametrize("v", VARIANTS, ids=_ids(VARIANTS))
def test_export_roundtrip_onnxruntime(exported, ref_out, v):
    out = exported(v)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    orig = onnx.load(v.path(ref_out))
    assert [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}][:1] \
        == [orig.graph.input[0].name], "graph input renamed"
    assert [o.name for o in m.graph.output] == [o.name for o in orig.graph.output], \
        "graph outputs changed"
    x, _ = load_ref(ref_out, v.model)
    for tag, xb, _ in batches(v, x, x):
        a = ort_run(v.path(ref_out), xb)
        b = ort_run(out, xb)
        assert_allclose(b, a, "%s %s: onnxruntime on the export vs the original" % (v.name, tag))


@pytest.mark.parametrize("v", VARIANTS, ids=_ids(VARIANTS))
def test_export_is_canonical(exported, ref_out, v):
    m = onnx.load(str(exported(v)))
    ops = sorted({n.op_type for n in m.graph.node})
    extra = [o for o in ops if o not in CANONICAL_OPS]
    assert not extra, "%s: export keeps %s (all ops: %s)" % (v.name, extra, ops)
    orig = onnx.load(v.path(ref_out))
    if v.batch == "dyn":
        d0 = m.graph.input[0].type.tensor_type.shape.dim[0]
        assert not d0.HasField("dim_value"), "%s: dynamic batch axis became %d" % (
            v.name, d0.dim_value)
    n_conv = sum(n.op_type == "Conv" for n in m.graph.node)
    assert n_conv == sum(n.op_type == "Conv" for n in orig.graph.node), "Conv count changed"


@pytest.mark.parametrize("v", VARIANTS, ids=_ids(VARIANTS))
def test_export_reloads_in_qtune(qtune, exported, ref_out, v, tmp_path):
    out = exported(v)
    x, y = load_ref(ref_out, v.model)
    got = qtune_logits(qtune, out, x, tmp_path)
    assert_close_to_torch(got, y, "%s re-exported" % v.name)


def _with_identity_and_dropout(src, dst):
    """Copies a model, inserting an Identity after the first Relu and a Dropout (inference
    form for the model's opset) before the final Gemm."""
    m = onnx.load(src)
    g = m.graph
    opset = m.opset_import[0].version
    nodes = list(g.node)
    relu = next(i for i, n in enumerate(nodes) if n.op_type == "Relu")
    rname = nodes[relu].output[0]
    ident = oh.make_node("Identity", [rname], [rname + "_id"], name="inserted_identity")
    for n in nodes[relu + 1:]:
        for k, name in enumerate(n.input):
            if name == rname:
                n.input[k] = rname + "_id"
    nodes.insert(relu + 1, ident)
    gemm = next(i for i, n in enumerate(nodes) if n.op_type == "Gemm")
    src_name = nodes[gemm].input[0]
    if opset >= 12:
        drop = oh.make_node("Dropout", [src_name], [src_name + "_drop"], name="inserted_dropout")
    else:
        drop = oh.make_node("Dropout", [src_name], [src_name + "_drop"], name="inserted_dropout",
                            ratio=0.3)
    nodes[gemm].input[0] = src_name + "_drop"
    nodes.insert(gemm, drop)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


@pytest.mark.parametrize("name", ["resnet20_op11_dyn_train", "resnet20_op13_dyn_eval"])
def test_identity_and_dropout(qtune, ref_out, name, tmp_path):
    v = next(v for v in VARIANTS if v.name == name)
    src = tmp_path / "with_extras.onnx"
    _with_identity_and_dropout(v.path(ref_out), str(src))
    x, y = load_ref(ref_out, v.model)
    assert_close_to_torch(ort_run(src, x), y, "onnxruntime on the edited model")
    assert_close_to_torch(qtune_logits(qtune, src, x, tmp_path), y, "qtune run")
    out = tmp_path / "exported.onnx"
    qtune("export", src, "--format", "float", "-o", out).check_ok()
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"Identity", "Dropout"}, "export keeps %s" % sorted(ops & {"Identity", "Dropout"})
    a, b = ort_run(src, x), ort_run(out, x)
    assert_allclose(b, a, "onnxruntime on the export vs the original")


@pytest.mark.parametrize("kind", ["bn", "folded"])
def test_shared_model(qtune, kind, tmp_path):
    """The pretrained exports: qtune run vs onnxruntime, and the float export round trip."""
    (path,) = require_shared("models/resnet20_cifar10_fp32_%s.onnx" % kind)
    x = np.random.default_rng(5).standard_normal((8, 3, 32, 32)).astype(np.float32)
    ref = ort_run(path, x)
    assert_close_to_torch(qtune_logits(qtune, path, x, tmp_path), ref, "qtune run vs onnxruntime")
    out = tmp_path / "exported.onnx"
    qtune("export", path, "--format", "float", "-o", out).check_ok()
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    extra = sorted({n.op_type for n in m.graph.node} - CANONICAL_OPS)
    assert not extra, "export keeps %s" % extra
    assert_allclose(ort_run(out, x), ref, "onnxruntime on the export vs the original")
