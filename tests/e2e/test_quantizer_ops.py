"""An activation quantizer written in standard ONNX operators, as exported quantized models
carry it: x / alpha compared with K thresholds (Greater against a [K,1,1,1,1] constant, giving
a bool [K,N,C,H,W]), the comparisons counted (Cast, ReduceSum over axis 0, Cast to int32), the
count looked up in a level table (Gather) and scaled back (Mul); the signed form takes the
magnitude (Abs) and picks negative levels where x / alpha < 0 (Less, Where). `qtune run` must
give exactly onnxruntime's output, on inputs at, just beside and away from the thresholds."""
import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

F32 = onnx.TensorProto.FLOAT
LEVELS = np.float32([0, 0.0625, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0])
THRESHOLDS = ((LEVELS[:-1] + LEVELS[1:]) / np.float32(2)).astype(np.float32)
ALPHA = np.float32(1.5)
SHAPE = (2, 3, 4, 5)


def quantizer_model(signed, opset):
    """y = alpha * level(x / alpha); ReduceSum's axes are an int64 Constant input from opset
    13 on, the axes attribute before."""
    k = len(THRESHOLDS)
    inits = [onh.from_array(np.array(ALPHA), "alpha"),
             onh.from_array(THRESHOLDS.reshape(k, 1, 1, 1, 1), "thresholds"),
             onh.from_array(LEVELS, "levels")]
    nodes = [oh.make_node("Div", ["x", "alpha"], ["a"], name="div")]
    mag = "a"
    if signed:
        nodes.append(oh.make_node("Abs", ["a"], ["mag"], name="abs"))
        mag = "mag"
    nodes += [oh.make_node("Greater", [mag, "thresholds"], ["above"], name="greater"),
              oh.make_node("Cast", ["above"], ["above_f"], to=F32, name="cast_float")]
    if opset >= 13:
        nodes += [oh.make_node("Constant", [], ["axes"], name="axes",
                               value=onh.from_array(np.array([0], np.int64))),
                  oh.make_node("ReduceSum", ["above_f", "axes"], ["count"], keepdims=0,
                               name="count")]
    else:
        nodes.append(oh.make_node("ReduceSum", ["above_f"], ["count"], axes=[0], keepdims=0,
                                  name="count"))
    nodes.append(oh.make_node("Cast", ["count"], ["idx"], to=onnx.TensorProto.INT32,
                              name="cast_int"))
    if signed:
        inits += [onh.from_array(-LEVELS, "neg_levels"),
                  onh.from_array(np.array(0, np.float32), "zero")]
        nodes += [oh.make_node("Gather", ["levels", "idx"], ["pos"], name="gather_pos"),
                  oh.make_node("Gather", ["neg_levels", "idx"], ["neg"], name="gather_neg"),
                  oh.make_node("Less", ["a", "zero"], ["negative"], name="less"),
                  oh.make_node("Where", ["negative", "neg", "pos"], ["q"], name="where")]
    else:
        nodes.append(oh.make_node("Gather", ["levels", "idx"], ["q"], name="gather"))
    nodes.append(oh.make_node("Mul", ["q", "alpha"], ["y"], name="scale"))
    shape = ["N"] + list(SHAPE[1:])
    g = oh.make_graph(nodes, "quantizer", [oh.make_tensor_value_info("x", F32, shape)],
                      [oh.make_tensor_value_info("y", F32, shape)], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], producer_name="qtune-tests")
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def inputs(signed, seed=0):
    """For each threshold t: alpha * t rounded to float32 and its float32 neighbours up to two
    steps away (at least one of them divides back to exactly t); zeros, values beyond the last
    level, and random values over the whole range; negated too for the signed quantizer."""
    vals = []
    for t in THRESHOLDS:
        x0 = np.float32(t * ALPHA)
        near = [x0]
        for _ in range(2):
            near = [np.nextafter(near[0], np.float32(-np.inf))] + near + [
                np.nextafter(near[-1], np.float32(np.inf))]
        exact = [x for x in near if np.float32(x) / ALPHA == t]
        assert exact, "no float32 x with x / alpha == %r" % t
        vals += near
    vals += [0.0, 2.0 * ALPHA, 100.0]
    vals = np.float32(vals)
    if signed:
        vals = np.concatenate([vals, -vals])
    n = int(np.prod(SHAPE))
    assert len(vals) <= n
    rng = np.random.default_rng(seed)
    lim = 1.2 * float(ALPHA)
    fill = rng.uniform(-lim if signed else 0.0, lim, n - len(vals)).astype(np.float32)
    return np.concatenate([vals, fill]).reshape(SHAPE)


def ort_run(path, x):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("device", ["cpu", "ref"])
@pytest.mark.parametrize("opset", [13, 11])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_quantizer_ops_match_onnxruntime(qtune, tmp_path, signed, opset, device):
    path = tmp_path / "quantizer.onnx"
    onnx.save(quantizer_model(signed, opset), str(path))
    x = inputs(signed)
    np.save(tmp_path / "x.npy", x)
    want = ort_run(path, x)
    # The comparison is only worth something if every level is reached.
    levels = set(np.unique(want / ALPHA).tolist())
    assert levels == set(LEVELS.tolist()) | (set((-LEVELS).tolist()) if signed else set())
    qtune("run", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
          "--device", device).check_ok()
    got = np.load(tmp_path / "y.npy")
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = np.flatnonzero(got != want)
    assert np.array_equal(got, want), "%d of %d values differ, first at x = %r: %r, expected %r" % (
        len(diff), got.size, x.flat[diff[0]], got.flat[diff[0]], want.flat[diff[0]])


def test_quantizer_ops_inspect(qtune, tmp_path):
    path = tmp_path / "quantizer.onnx"
    onnx.save(quantizer_model(True, 13), str(path))
    qtune("inspect", path).check_ok()
