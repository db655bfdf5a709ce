"""A Conv followed by a per-channel Mul and Add of constants (BatchNorm as converters such as
tf2onnx may write it) folds into the Conv's weight and bias: `inspect` shows a Conv with a
bias and no Mul or Add, and `qtune run` gives onnxruntime's outputs. Constants that are not
per channel (per position, or a non-constant operand) are left as they are."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close

ort = pytest.importorskip("onnxruntime")


def model(path, mul_shape, add_shape, conv_bias):
    rng = np.random.default_rng(4)
    inits = {"W": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3,
             "s": rng.uniform(0.5, 2.0, mul_shape).astype(np.float32),
             "t": rng.standard_normal(add_shape).astype(np.float32),
             "fc": rng.standard_normal((5, 6)).astype(np.float32)}
    conv_in = ["x", "W"]
    if conv_bias:
        inits["b"] = rng.standard_normal(6).astype(np.float32)
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
             helper.make_node("Add", ["t", "m"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "affine",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)


@pytest.mark.parametrize("mul_shape,add_shape,conv_bias,folded", [
    ((1, 6, 1, 1), (6, 1, 1), False, True),   # NCHW-shaped and right-aligned factors
    ((6, 1, 1), (1, 6, 1, 1), True, True),    # onto an existing bias
    ((1,), (6, 1, 1), False, True),           # one factor for every channel
    ((1, 1, 8, 8), (6, 1, 1), False, False),  # per position: the Mul stays (the Add cannot fold past it)
])
def test_channel_affine_folds_into_the_conv(qtune, tmp_path, mul_shape, add_shape, conv_bias,
                                           folded):
    path = str(tmp_path / "m.onnx")
    model(path, mul_shape, add_shape, conv_bias)
    ops = qtune("inspect", path).check_ok().stdout
    assert ("Mul" not in ops and "Add" not in ops) == folded, ops
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), x)
    qtune("run", path, "--input", str(tmp_path / "x.npy"), "--output",
          str(tmp_path / "y.npy")).check_ok()
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = np.load(str(tmp_path / "y.npy"))
    assert got.shape == want.shape == (3, 5)
    assert_close(got, want, 1e-5, "qtune run vs onnxruntime", scale=float(np.abs(want).max()))
