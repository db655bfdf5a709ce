"""Training-step parity with PyTorch for a quantized ResNet-20: `qtune finetune --epochs 0`
(post-training quantization: WeightQuant/ActQuant nodes inserted, alphas calibrated) makes
q0.onnx; one SGD step of `qtune finetune q0.onnx` with lr 1, no momentum and no weight decay
(alpha learning rates 1 too) makes q1.onnx, so every parameter's gradient is p0 - p1. PyTorch
recomputes them with a small interpreter of q0.onnx's graph (Conv, BatchNormalization with
batch statistics, Relu, Add, pooling, Flatten/Reshape, Gemm, and the ai.qtune quantizers taken
from apot_ref.py, whose backward is APOT.md's straight-through estimators and alpha
gradients) on the same batch: the loss and every gradient of the Conv/Gemm weights and biases,
BatchNorm scales and shifts and weight and activation alphas agree (REL relative to the
largest |gradient| of each tensor, plus one ulp of the parameter, see grad_close).

Discontinuities. Besides ReLU's kink at 0, a quantizer jumps at every level midpoint and
changes its gradients at the clipping threshold (x = 1). Two correct implementations whose
convolutions round differently can put an activation on different sides of such a point and
then disagree on gradients by far more than REL: moving one ActQuant input across a midpoint
changed gradients by 10% (in layer3) to over 100% (in layer1), as the change shifts the
BatchNorm statistics and other values downstream cross thresholds too. The batch is therefore
chosen, by scanning data seeds with PyTorch only on q0's parameters, so that in its forward
  - no ReLU input lies within KINK of 0 (as in test_train_parity.py), and
  - no ActQuant input lies within ACT_MARGIN * alpha of a level midpoint or of alpha.
ACT_MARGIN is far below the 1e-5 one would like: a batch of two 32x32 images feeds ~4e5
values to the activation quantizers, of which ~100 lie within 1e-5 * alpha and 10 .. 25 within
1e-6 * alpha of a threshold, so no batch is clear by those margins. What qtune and PyTorch
actually disagree by was measured with `qtune run` on intermediate tensors of q0.onnx
(inference mode, same batch): |dx| <= 2e-7 in layer1 and <= 6e-7 deeper (x in units of
alpha), with 99.98% of the values within 5e-7 and most bit-identical. About 1 batch in 300
clears ACT_MARGIN = 5e-7 for APoT W4A4 (more for the others); the scan stops a forward at the
first value too close, so a batch costs a few milliseconds.

Weight quantizers see the same floats in both (weights read from the file): mu and the
unbiased sigma are computed in float64 and rounded to float32 as qtune does
(apot_ref.weight_stats), and x = ((W - mu) / sigma) / alpha in the same float32 operations.
For a tensor whose exact mean and std are farther from a float32 rounding boundary than any
float64 summation order can err (stats_are_order_independent; all but one tensor here), x is
bit-identical and needs no margin. Otherwise mu or sigma may differ by one float32 ulp, which
moves x by a few ulps (< 4e-7 for |x| < 2): such a tensor's x must stay WEIGHT_MARGIN from
every threshold (its alpha comes from the weights alone, so no data scan could change that).
The 8-bit first/last layer weights (round(W / m * 127) / 127 * m) and weights quantized
without standardization (x = W / alpha) are identical float32 operations in both.

Variants: APoT W4A4 (8-bit first/last layer, m = max|W|), uniform W3A3 (m = max W), and APoT
W4A4 with --first-last same (a signed activation quantizer on the normalized image, an
unsigned one on the fc input, and an fc weight quantizer without standardization)."""
import contextlib
import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

import apot_ref
from test_train_parity import initializers, make_cifar, write_cifar

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)
BATCH = 2
REL = 1e-4
KINK = 3e-6
ACT_MARGIN = 5e-7
WEIGHT_MARGIN = 5e-7
SCAN_SEEDS = 3000

# name: (qtune options, scheme, trained tensors, signed ActQuants, 8-bit WeightQuant schemes)
VARIANTS = {
    # 19 conv + 2 shortcut + fc weights, fc bias, 21 x 2 BatchNorm, 20 + 20 alphas
    "apot_w4a4": (["--bits", "4"], "apot", 105, 0, ["absmax"] * 2),
    "uniform_w3a3_max": (["--scheme", "uniform", "--bits", "3", "--int8-range", "max"], "uniform",
                         105, 0, ["max"] * 2),
    # first conv and fc quantized like the rest: 22 + 22 alphas
    "apot_w4a4_first_last_same": (["--bits", "4", "--first-last", "same"], "apot", 109, 1, []),
}


def normalized(pixels):
    """(p / 255 - mean) / std in float32, as qtune's lookup table holds it."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.array(MEAN, np.float32)[None, :, None, None]
    std = np.array(STD, np.float32)[None, :, None, None]
    return torch.from_numpy((x - mean) / std)


# ---- A PyTorch interpreter of the quantized graph ----

def node_attrs(node):
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def trained_names(graph):
    """The initializers qtune's optimizer updates (runtime/params.c): Conv/Gemm weight and
    bias, the tensor a WeightQuant reads and its alpha, an ActQuant's alpha, BatchNorm scale
    and shift."""
    inits = {t.name for t in graph.initializer}
    roles = {"Conv": (1, 2), "Gemm": (1, 2), "WeightQuant": (0, 1), "ActQuant": (1,),
             "BatchNormalization": (1, 2)}
    names = set()
    for n in graph.node:
        for k in roles.get(n.op_type, ()):
            if k < len(n.input) and n.input[k] in inits:
                names.add(n.input[k])
    return names


class Rejected(Exception):
    pass


class Watch:
    """What the forward saw near a discontinuity: the smallest |ReLU input| and, per
    quantizer, the smallest distance of x = input / alpha to a threshold. Scanning (stop)
    abandons the forward at the first ReLU or ActQuant input too close; it skips the weight
    quantizers, whose x does not depend on the data."""

    def __init__(self, stop=False):
        self.relu = float("inf")
        self.act = {}
        self.weight = {}
        self.stop = stop

    def saw_relu(self, v):
        self.relu = min(self.relu, v)
        if self.stop and v <= KINK:
            raise Rejected()

    def saw_act(self, name, v):
        self.act[name] = v
        if self.stop and v < ACT_MARGIN:
            raise Rejected()

    def act_margin(self):
        return min(self.act.values()) if self.act else float("inf")


def thresholds(scheme, bits, signed):
    """Level midpoints (exact in float64) and the clipping point 1, ascending."""
    lv = apot_ref.levels(scheme, apot_ref.magnitude_bits(scheme, bits, signed)).double()
    return torch.cat([(lv[1:] + lv[:-1]) / 2, lv[-1:]])


def threshold_distance(x, scheme, bits, signed):
    """Smallest distance of x (float32 values, in units of alpha) to a threshold; signed
    quantizers are symmetric, so |x| is compared."""
    t = thresholds(scheme, bits, signed)
    v = x.detach().reshape(-1)
    v = (v.abs() if signed else v)
    v = v[v != 0].double()  # 0 is far below the lowest midpoint
    i = torch.searchsorted(t, v).clamp(max=len(t) - 1)
    d = torch.minimum((v - t[i]).abs(), (v - t[(i - 1).clamp(min=0)]).abs())
    return float(d.min()) if d.numel() else float("inf")


def _conv(n, a, i, w):
    p = list(a.get("pads", [0, 0, 0, 0]))
    assert p[:2] == p[2:], "asymmetric pads in " + n.name
    assert a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    return F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", [1, 1]), p[:2],
                    a.get("dilations", [1, 1]), a.get("group", 1))


def _batchnorm(n, a, i, w):
    # Training mode: normalized with the batch mean and the biased batch variance.
    return F.batch_norm(i[0], None, None, i[1], i[2], training=True, momentum=0.0,
                        eps=a.get("epsilon", 1e-5))


def _relu(n, a, i, w):
    if w is not None:
        w.saw_relu(float(i[0].detach().abs().min()))
    return F.relu(i[0])


def _avgpool(n, a, i, w):
    p = list(a.get("pads", [0, 0, 0, 0]))
    assert p[:2] == p[2:] and not a.get("ceil_mode", 0), n.name
    k = a["kernel_shape"]
    return F.avg_pool2d(i[0], k, a.get("strides", k), p[:2],
                        count_include_pad=bool(a.get("count_include_pad", 0)))


def _reshape(n, a, i, w):
    shape = [int(s) for s in i[1].tolist()]
    shape = [i[0].shape[k] if s == 0 and not a.get("allowzero", 0) else s
             for k, s in enumerate(shape)]
    return i[0].reshape(shape)


def _flatten(n, a, i, w):
    ax = a.get("axis", 1) % max(i[0].dim(), 1)
    return i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)


def _gemm(n, a, i, w):
    A = i[0].t() if a.get("transA", 0) else i[0]
    B = i[1].t() if a.get("transB", 0) else i[1]
    y = a.get("alpha", 1.0) * (A @ B)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


def _weightquant(n, a, i, w):
    if a["scheme"] in ("absmax", "max"):
        assert len(i) == 1, n.name
        return apot_ref.int8_weight_quant(i[0], abs_max=a["scheme"] == "absmax")[0]
    assert a.get("signed", 1) == 1, n.name
    std = bool(a.get("standardize", 1))
    wq, mu, sigma = apot_ref.weight_quant(i[0], i[1], a["scheme"], a["bits"], std)
    if w is not None and not w.stop:
        # x exactly as the quantizer forms it: ((W - mu) / sigma) / alpha in float32
        x = ((i[0].detach() - mu) / sigma) / i[1].detach() if std else i[0].detach() / i[1].detach()
        exact = not std or stats_are_order_independent(i[0].detach().numpy(), float(mu),
                                                        float(sigma))
        w.weight[n.name] = (threshold_distance(x, a["scheme"], a["bits"], True), exact)
    return wq


def stats_are_order_independent(w, mu, sigma):
    """Whether every float64 evaluation of mean(W) and of the unbiased std(W), in any
    summation order, rounds to the same float32: the exact values (math.fsum) are farther from
    a float32 rounding boundary than the worst-case error of an n-term float64 sum, taken twice
    over: 2 * 2^-53 * sum|W| for the mean and (n + 10) * 2^-53 * sigma for the std (a sum of
    positive terms). Asserts that apot_ref's mu and sigma are then those float32 values."""
    w = w.astype(np.float64).ravel()
    n, u = w.size, 2.0 ** -53
    m = math.fsum(w) / n
    s = math.sqrt(math.fsum((w - m) ** 2) / (n - 1))
    bm, bs = 2 * u * float(np.abs(w).sum()), (n + 10) * u * s
    f = np.float32
    exact = f(m - bm) == f(m + bm) and f(s - bs) == f(s + bs)
    if exact:
        assert (f(mu), f(sigma)) == (f(m), f(s)), (mu, sigma, m, s)
    return exact


def weights_clear(w):
    """Each weight quantizer's x is bit-identical in qtune (stats_are_order_independent), or
    stays WEIGHT_MARGIN from every threshold, more than a one-ulp change of mu or sigma can
    move it."""
    return all(exact or dist > WEIGHT_MARGIN for dist, exact in w.weight.values())


def _actquant(n, a, i, w):
    signed = bool(a["signed"])
    if w is not None:
        w.saw_act(n.name, threshold_distance(i[0].detach() / i[1].detach(), a["scheme"],
                                             a["bits"], signed))
    return apot_ref.act_quant(i[0], i[1], a["scheme"], a["bits"], signed)


OPS = {"Conv": _conv, "BatchNormalization": _batchnorm, "Relu": _relu,
       "Add": lambda n, a, i, w: i[0] + i[1], "AveragePool": _avgpool,
       "GlobalAveragePool": lambda n, a, i, w: i[0].mean(dim=(2, 3), keepdim=True),
       "Reshape": _reshape, "Flatten": _flatten, "Gemm": _gemm,
       "WeightQuant": _weightquant, "ActQuant": _actquant}


def forward(graph, tensors, x, watch=None, weight_cache=None):
    """The graph's output for input x; weight_cache (a dict) keeps the WeightQuant outputs
    from one call to the next (scanning, without gradients)."""
    env = dict(tensors)
    env[graph.input[0].name] = x
    for n in graph.node:
        assert n.op_type in OPS, "the PyTorch interpreter has no %s (node %s)" % (n.op_type, n.name)
        out = n.output[0]
        if weight_cache is not None and out in weight_cache:
            env[out] = weight_cache[out]
            continue
        ins = [env[k] if k else None for k in n.input]
        env[out] = OPS[n.op_type](n, node_attrs(n), ins, watch)
        if weight_cache is not None and n.op_type == "WeightQuant":
            weight_cache[out] = env[out]
    return env[graph.output[0].name]


def graph_tensors(path):
    """q0's graph, and its initializers as tensors: the trained ones as leaves that require
    a gradient."""
    graph = onnx.load(path).graph
    trained = trained_names(graph)
    tensors = {}
    for name, v in initializers(path).items():
        t = torch.from_numpy(v)
        if name in trained:
            assert v.dtype == np.float32, name
            t.requires_grad_(True)
        tensors[name] = t
    return graph, tensors, trained


@contextlib.contextmanager
def fast_nearest():
    """apot_ref.nearest by binary search over the exact float64 midpoints (searchsorted puts a
    value equal to a midpoint on the lower level, as the brute force does): the same levels,
    ~5x faster, for scanning. The chosen batch is checked again with the brute force."""
    brute = apot_ref.nearest

    def nearest(x, lv):
        mid = (lv[1:].double() + lv[:-1].double()) / 2
        return lv[torch.searchsorted(mid, x.double().contiguous())]

    apot_ref.nearest = nearest
    try:
        yield
    finally:
        apot_ref.nearest = brute


def choose_batch(graph, tensors):
    """The first data seed whose batch keeps its ReLU inputs KINK from 0 and its ActQuant
    inputs ACT_MARGIN * alpha from every threshold: (seed, data)."""
    cache = {}
    with torch.no_grad(), fast_nearest():
        for seed in range(SCAN_SEEDS):
            data = make_cifar(np.random.default_rng(seed), BATCH, BATCH)
            try:
                forward(graph, tensors, normalized(data["data_batch_1.bin"][0]), Watch(stop=True),
                        cache)
            except Rejected:
                continue
            return seed, data
    pytest.fail("no batch among %d keeps ReLU inputs %.g from 0 and ActQuant inputs %.g * alpha "
                "from a threshold" % (SCAN_SEEDS, KINK, ACT_MARGIN))


# ---- qtune runs ----

def finetune(qtune, *args):
    r = qtune("finetune", *[str(a) for a in args], "--batch", BATCH, "--train-limit", BATCH,
              "--test-limit", BATCH, "--threads", "2", "--mean", ",".join(map(str, MEAN)),
              "--std", ",".join(map(str, STD)))
    assert r.returncode == 0, r.describe()
    return r


def grad_close(name, p0, p1, ref):
    """p1 = fl(p0 - g): p0 - p1 (exact in float64) is g up to half an ulp of p1, which for an
    alpha (~3..8) can exceed REL times its gradient; one ulp of max(|p0|, |p1|) per element is
    allowed on top of REL * max|ref|."""
    assert p0.shape == p1.shape == ref.shape, "%s: shapes %s, %s, reference %s" % (
        name, p0.shape, p1.shape, ref.shape)
    assert np.isfinite(p1).all() and np.isfinite(ref).all(), "%s: NaN or Inf" % name
    got = p0.astype(np.float64) - p1.astype(np.float64)
    ulp = np.spacing(np.maximum(np.abs(p0), np.abs(p1))).astype(np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    excess = np.abs(got - ref) - ulp - REL * scale
    assert np.all(excess <= 0), (
        "gradient of %s: max abs diff %.3g vs max |ref| %.3g (at %d of %d elements over "
        "REL * max|ref| + 1 ulp)" % (name, float(np.max(np.abs(got - ref))), scale,
                                     int(np.sum(~(excess <= 0))), ref.size))


@pytest.fixture(scope="module")
def base_model(qtune, tmp_path_factory):
    d = tmp_path_factory.mktemp("quant_parity")
    model = str(d / "r20.onnx")
    r = qtune("init", "resnet20", "--input", "3x32x32", "--classes", "10", "--seed", "5",
              "-o", model)
    assert r.returncode == 0, r.describe()
    return d, model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_quantized_training_step(qtune, base_model, variant):
    opts, scheme, n_trained, n_signed_act, int8 = VARIANTS[variant]
    d0, model = base_model
    d = d0 / variant
    d.mkdir()
    torch.set_num_threads(2)

    # Post-training quantization, calibrated on data of its own (the training batch is then
    # chosen with q0's alphas).
    calib = str(d / "calib")
    write_cifar(calib, make_cifar(np.random.default_rng(1000), BATCH, BATCH))
    q0 = str(d / "q0.onnx")
    # (least-error activation alphas: the largest-value ones put the calibration batch's
    # largest input exactly on the clipping threshold, where the step's parity is undefined)
    finetune(qtune, model, "--data", calib, *opts, "--epochs", "0", "--ptq", "calib=mse,bias=off",
             "--quiet", "-o", q0)
    graph, tensors, trained = graph_tensors(q0)

    ops = [(n.op_type, node_attrs(n)) for n in graph.node]
    assert sum(op == "ActQuant" and a["signed"] for op, a in ops) == n_signed_act
    assert [a["scheme"] for op, a in ops if op == "WeightQuant" and len(a) == 1] == int8
    assert {a["scheme"] for op, a in ops if op.endswith("Quant") and len(a) > 1} == {scheme}
    assert len(trained) == n_trained, sorted(trained)
    assert {t for t in tensors if ".alpha_" in t} <= trained

    seed, data = choose_batch(graph, tensors)
    write_cifar(str(d / "cifar"), data)

    # One SGD step with lr 1 for every parameter group; the alphas of q0 are kept.
    q1 = str(d / "q1.onnx")
    r = finetune(qtune, q0, "--data", d / "cifar", *opts, "--epochs", "1", "--no-augment",
                 "--schedule", "const", "--lr", "1", "--momentum", "0", "--wd", "0",
                 "--alpha-wd", "0", "--alpha-lr-act", "1", "--alpha-lr-weight", "1", "-o", q1)
    assert "alphas kept from the input model" in r.stderr, r.describe()
    assert "re-initialized" not in r.stderr, r.describe()
    with open(str(d / "q1.log.jsonl")) as f:
        qt_loss = json.loads(f.readline())["train_loss"]

    # The reference: forward with the brute-force nearest level, backward.
    pixels, labels = data["data_batch_1.bin"]
    w = Watch()
    logits = forward(graph, tensors, normalized(pixels), w)
    assert w.relu > KINK and w.act_margin() >= ACT_MARGIN, (w.relu, w.act)
    assert weights_clear(w), w.weight
    print("%s: batch seed %d, ActQuant inputs >= %.3g * alpha from a threshold; weight "
          "quantizers whose x may differ by an ulp: %s" % (variant, seed, w.act_margin(),
          {k: v[0] for k, v in w.weight.items() if not v[1]}))
    loss = F.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    assert abs(qt_loss - loss.item()) <= REL * abs(loss.item()), (qt_loss, loss.item())

    p0, p1 = initializers(q0), initializers(q1)
    assert trained <= set(p1)
    for name in sorted(trained):
        g = tensors[name].grad
        assert g is not None, "no gradient reaches " + name
        grad_close(name, p0[name], p1[name], g.numpy().astype(np.float64))
