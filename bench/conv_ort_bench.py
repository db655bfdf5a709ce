# Times onnxruntime's Conv on the ResNet-20 (CIFAR-10) layer shapes at batch 128, the same
# layers and reporting as bench/conv_cpu_bench.c, for comparison with qtune's CPU kernel.
# Run from the repository root: OMP_NUM_THREADS=2 .venv/bin/python bench/conv_ort_bench.py
# [--batch N] [--reps R] [--threads T]. Each layer is a one-node model (Conv with bias, NCHW
# input and output); onnxruntime's own layout changes happen inside the session and are timed.
# With --model M.onnx it times session.run of that whole model instead, on one fixed random
# [batch, C, H, W] input (C, H, W from the model's input), after warm-up runs, and prints the
# median ms per batch and images/s.
import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# name, uses in ResNet-20, in channels, out channels, input size, kernel, stride, pad
LAYERS = [
    ("conv1 3->16 3x3 32x32", 1, 3, 16, 32, 3, 1, 1),
    ("s1 16->16 3x3 32x32", 6, 16, 16, 32, 3, 1, 1),
    ("s2 16->32 3x3 s2 32x32", 1, 16, 32, 32, 3, 2, 1),
    ("s2 32->32 3x3 16x16", 5, 32, 32, 16, 3, 1, 1),
    ("s3 32->64 3x3 s2 16x16", 1, 32, 64, 16, 3, 2, 1),
    ("s3 64->64 3x3 8x8", 5, 64, 64, 8, 3, 1, 1),
    ("sc 16->32 1x1 s2 32x32", 1, 16, 32, 32, 1, 2, 0),
    ("sc 32->64 1x1 s2 16x16", 1, 32, 64, 16, 1, 2, 0),
]


def conv_model(batch, c, k, hw, ks, stride, pad, rng):
    w = rng.uniform(-0.25, 0.25, size=(k, c, ks, ks)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, size=(k,)).astype(np.float32)
    oh = (hw + 2 * pad - ks) // stride + 1
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[ks, ks],
                            strides=[stride, stride], pads=[pad] * 4)
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, k, oh, oh])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def time_model(args, so, rng):
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [args.batch] + [int(d) for d in inp.shape[1:]]
    x = rng.uniform(-1, 1, size=dims).astype(np.float32)
    feed = {inp.name: x}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(f"onnxruntime {ort.__version__}, {args.model}, input {dims}, threads {args.threads}, "
          f"reps {args.reps}: median {med:.3f} ms per batch (min {min(times):.3f}), "
          f"{args.batch / med * 1e3:.0f} images/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="time this whole model instead of the conv layers")
    args = ap.parse_args()
    rng = np.random.default_rng(12345)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.model:
        time_model(args, so, rng)
        return
    print(f"onnxruntime {ort.__version__}, batch {args.batch}, threads {args.threads}, "
          f"reps {args.reps} (median)")
    print(f"{'layer':<24} {'x':>3} {'ort_ms':>10}")
    total = 0.0
    for name, count, c, k, hw, ks, stride, pad in LAYERS:
        sess = ort.InferenceSession(conv_model(args.batch, c, k, hw, ks, stride, pad, rng), so,
                                    providers=["CPUExecutionProvider"])
        x = rng.uniform(-1, 1, size=(args.batch, c, hw, hw)).astype(np.float32)
        feed = {"x": x}
        for _ in range(3):
            sess.run(None, feed)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(times)
        total += med * count
        print(f"{name:<24} {count:>3} {med:>10.3f}", flush=True)
    print(f"{'ResNet-20 convs total':<24} {'':>3} {total:>10.3f}")


if __name__ == "__main__":
    main()
