"""qtune's C quantizer kernels against the PyTorch reference in apot_ref.py: writes inputs,
alpha, upstream gradient and the reference's outputs and gradients to .npy files for every
scheme x bits x signedness (and the 8-bit first/last layer weights; and weights with one alpha
per output channel, and without standardization, for a few of them), then runs
`qtune-tests apot_pytorch_reference`, which recomputes them with the C kernels and compares
(forward 1e-6 relative, gradients 1e-5 relative). The inputs include values exactly at, just
below and just beyond the clipping threshold, exact level midpoints and their neighbours,
and negative inputs to unsigned quantizers."""
import os
import re

import numpy as np
import pytest
import torch

import apot_ref as ref
from apot_ref import around, f32


def midpoints(lv):
    """Midpoints between neighbouring levels, rounded to float32 (exact where they are
    float32 values, which makes ties)."""
    lv = lv.double().numpy()
    return [f32(m) for m in (lv[:-1] + lv[1:]) / 2]


def weight_case(rng, scheme, bits, variant):
    """Weights ~ N(0.01, 0.05) with outliers; alpha puts one weight value exactly at x = 1
    (variant 0: ~97th percentile, so a few percent clip) or is the recipe's 3.0 (variant 1).
    Copies of that value and its float neighbours land at, just below and beyond x = 1."""
    n = 3000
    w = (rng.standard_normal(n) * 0.05 + 0.01).astype(np.float32)
    w[:20] = (rng.standard_normal(20) * 0.3).astype(np.float32)        # outliers
    v = np.sort(w)[int(0.97 * n)]
    special = around(v, 3) * 3 + around(-v, 3) * 2
    w[20:20 + len(special)] = special
    rng.shuffle(w)
    wt = torch.tensor(w)
    mu, sigma = ref.weight_stats(wt)
    if variant == 0:
        alpha = ((torch.tensor(v) - mu) / sigma).reshape(1)
    else:
        alpha = torch.tensor([3.0], dtype=torch.float32)
    wt.requires_grad_(True)
    at = alpha.clone().requires_grad_(True)
    y, mu, sigma = ref.weight_quant(wt, at, scheme, bits)
    g = torch.tensor(rng.standard_normal(n).astype(np.float32))
    y.backward(g)
    x = ((wt.detach() - mu) / sigma) / alpha
    # the reference's x is IEEE float32 arithmetic (what the C kernel computes)
    x_np = ((w - mu.numpy()) / sigma.numpy()) / alpha.numpy()
    assert np.array_equal(x.numpy(), x_np)
    if variant == 0:
        assert (x == 1).sum() >= 3 and (x > 1).any() and ((x < 1) & (x > 0.999)).any()
    return dict(x=w, alpha=alpha.numpy(), g=g.numpy(), y=y.detach().numpy(),
                dx=wt.grad.numpy(), dalpha=at.grad.numpy(), mu=mu.reshape(1).numpy(),
                sigma=sigma.reshape(1).numpy())


def weight_channel_case(rng, scheme, bits, variant, shape, nalpha, standardize):
    """A conv weight of `shape` whose output channels differ in scale, with one alpha per
    channel (nalpha = shape[0]) or one for the tensor (nalpha = 1); standardized per tensor or
    not at all. Variant 0: each alpha puts a value v of its channel (~85th percentile) exactly at
    x = 1, with copies of v and its float neighbours in the channel (at, just below and beyond
    x = 1); variant 1: fixed alphas around the recipe's 3.0 (in units of sigma, or of the
    channel's spread without standardization)."""
    c = shape[0]
    w = rng.standard_normal(shape).astype(np.float32)
    scale = np.float32(0.05) * (1 + np.arange(c, dtype=np.float32) % 4)
    w *= scale.reshape([c] + [1] * (len(shape) - 1))
    w += np.float32(0.01)
    flat = w.reshape(c, -1)
    vs = []
    for ch in range(c):
        row = flat[ch]
        v = np.sort(row)[int(0.85 * len(row))]
        special = around(v, 1) + [v]                 # v, its neighbours, another copy of v
        idx = rng.permutation(len(row))[:len(special)]
        row[idx] = special
        vs.append(v)
    wt = torch.tensor(w)
    if standardize:
        mu, sigma = ref.weight_stats(wt)
    else:
        mu, sigma = torch.tensor(0.0), torch.tensor(1.0)
    if variant == 0:
        vsel = vs if nalpha > 1 else [vs[0]]
        # the same float32 operations as the quantizer's, so (v - mu) / sigma / alpha is 1
        alpha = (torch.tensor(vsel) - mu) / sigma
    else:
        base = [3.0, 2.0, 4.0, 1.5] if standardize else [0.15, 0.1, 0.3, 0.2]
        alpha = torch.tensor([base[k % 4] for k in range(nalpha)], dtype=torch.float32)
    assert (alpha > 0).all()
    wt.requires_grad_(True)
    at = alpha.clone().requires_grad_(True)
    y, mu, sigma = ref.weight_quant(wt, at, scheme, bits, standardize)
    g = torch.tensor(rng.standard_normal(shape).astype(np.float32))
    y.backward(g)
    abc = alpha.reshape([-1] + [1] * (len(shape) - 1)) if nalpha > 1 else alpha
    x = ((wt.detach() - mu) / sigma) / abc
    if variant == 0:
        assert (x == 1).sum() >= 2 * nalpha and (x > 1).any()
        if nalpha > 1:
            assert all(((x[ch] == 1).sum() >= 2) for ch in range(c))
    assert at.grad.shape == (nalpha,)
    return dict(x=w, alpha=alpha.numpy(), g=g.numpy(), y=y.detach().numpy(),
                dx=wt.grad.numpy(), dalpha=at.grad.numpy(), mu=mu.reshape(1).numpy(),
                sigma=sigma.reshape(1).numpy())


def act_case(rng, scheme, bits, signed, variant):
    """Variant 0: alpha = 8 (a power of two, so A = m * alpha gives x = m exactly): levels,
    midpoints (exact ones are ties) and their float neighbours, x = +-1 and neighbours, beyond the range, and
    negatives (for unsigned quantizers too). Variant 1: alpha = 3.7, random inputs."""
    lv = ref.levels(scheme, ref.magnitude_bits(scheme, bits, signed))
    alpha = f32(8.0) if variant == 0 else f32(3.7)
    special = []
    if variant == 0:
        pts = []
        for m in list(lv.numpy()) + midpoints(lv):
            pts += around(m, 2)
        pts += around(1.0, 3) + [f32(1.5), f32(2.0), f32(-0.25)]
        pts = [f32(p) * alpha for p in pts]
        special = pts + [-p for p in pts]
    n = 2500 + len(special)
    a = (rng.standard_normal(n) * float(alpha) * 0.6).astype(np.float32)
    a[:len(special)] = special
    rng.shuffle(a)
    at_ = torch.tensor(a, requires_grad=True)
    al = torch.tensor([alpha], requires_grad=True)
    y = ref.act_quant(at_, al, scheme, bits, signed)
    g = torch.tensor(rng.standard_normal(n).astype(np.float32))
    y.backward(g)
    x = a / alpha
    assert (x < 0).any() and (x > 1).any()
    if variant == 0:
        assert (x == 1).any() and (x == -1).any()
    return dict(x=a, alpha=np.array([alpha], np.float32), g=g.numpy(), y=y.detach().numpy(),
                dx=at_.grad.numpy(), dalpha=al.grad.numpy())


def int8_case(rng, abs_max):
    n = 2000
    w = (rng.standard_normal(n) * 0.1).astype(np.float32)
    w[0] = -0.5                                      # beyond -max(W) for the signed maximum
    wt = torch.tensor(w, requires_grad=True)
    y, m = ref.int8_weight_quant(wt, abs_max)
    g = torch.tensor(rng.standard_normal(n).astype(np.float32))
    y.backward(g)
    return dict(x=w, g=g.numpy(), y=y.detach().numpy(), dx=wt.grad.numpy(),
                m=np.array([m.item()], np.float32))


def combinations():
    """(name, kind, scheme, bits, signed, shape, nalpha, standardize): APoT weights 2..6 bits,
    APoT activations 1..5 unsigned and 2..6 signed, uniform weights 2..9, uniform activations
    1..8 unsigned and 2..9 signed; 8-bit weights with both maxima. Weights with per-channel
    alphas ([4, 3, 3, 3] with 4 alphas: APoT 2..5 bits, uniform 2, 4, 8; [16, 8, 3, 3] with 16:
    APoT 4, uniform 3); without standardization (one alpha and per channel); standardized and
    mapped back (standardize 2)."""
    out = []
    for scheme, wmax, umax in ((ref.APOT, 6, 5), (ref.UNIFORM, 9, 8)):
        for bits in range(2, wmax + 1):
            out.append(("w_%s%d" % (scheme, bits), "weight", scheme, bits, 1, None, 1, 1))
            out.append(("as_%s%d" % (scheme, bits), "act", scheme, bits, 1, None, 1, 1))
        for bits in range(1, umax + 1):
            out.append(("au_%s%d" % (scheme, bits), "act", scheme, bits, 0, None, 1, 1))
    small, big = (4, 3, 3, 3), (16, 8, 3, 3)
    for scheme, bitlist in ((ref.APOT, (2, 3, 4, 5)), (ref.UNIFORM, (2, 4, 8))):
        for bits in bitlist:
            out.append(("wc_%s%d" % (scheme, bits), "weight", scheme, bits, 1, small, 4, 1))
    out.append(("wc16_apot4", "weight", ref.APOT, 4, 1, big, 16, 1))
    out.append(("wc16_uniform3", "weight", ref.UNIFORM, 3, 1, big, 16, 1))
    out.append(("wn_apot4", "weight", ref.APOT, 4, 1, big, 1, 0))
    out.append(("wnc_apot3", "weight", ref.APOT, 3, 1, small, 4, 0))
    out.append(("wnc_uniform4", "weight", ref.UNIFORM, 4, 1, small, 4, 0))
    out.append(("wnc16_apot5", "weight", ref.APOT, 5, 1, big, 16, 0))
    out.append(("wr_apot4", "weight", ref.APOT, 4, 1, big, 1, 2))
    out.append(("wrc_uniform4", "weight", ref.UNIFORM, 4, 1, small, 4, 2))
    out.append(("wr_uniform8", "weight", ref.UNIFORM, 8, 1, big, 1, 2))
    out.append(("int8_max", "int8", "max", 8, 1, None, 1, 1))
    out.append(("int8_absmax", "int8", "absmax", 8, 1, None, 1, 1))
    return out


def write_cases(folder, seed=1234):
    rng = np.random.default_rng(seed)
    lines = []
    for name, kind, scheme, bits, signed, shape, nalpha, standardize in combinations():
        variants = [None] if kind == "int8" else [0, 1]
        for v in variants:
            cname = name if v is None else "%s_v%d" % (name, v)
            if kind == "weight" and shape is not None:
                arrays = weight_channel_case(rng, scheme, bits, v, shape, nalpha, standardize)
            elif kind == "weight":
                arrays = weight_case(rng, scheme, bits, v)
            elif kind == "act":
                arrays = act_case(rng, scheme, bits, signed, v)
            else:
                arrays = int8_case(rng, scheme == "absmax")
            for key, arr in arrays.items():
                arr = np.ascontiguousarray(arr, dtype="<f4")
                np.save(os.path.join(folder, "%s_%s.npy" % (cname, key)), arr)
            lines.append("%s %s %s %d %d %d %d" % (cname, kind, scheme, bits, signed, nalpha,
                                                     standardize))
    with open(os.path.join(folder, "cases.txt"), "w") as f:
        f.write("# name kind scheme bits signed nalpha standardize\n" + "\n".join(lines) + "\n")
    return len(lines)


def test_reference_levels_match_table():
    """The reference's own level sets against APOT.md's table."""
    exp = {1: [0, 1], 2: [0, .25, .5, 1], 3: [0, .1, .2, .3, .4, .6, .8, 1]}
    for b, e in exp.items():
        assert torch.equal(ref.levels(ref.APOT, b), torch.tensor(e, dtype=torch.float32))
    for b, count, mx in ((4, 16, .75), (5, 32, .78125)):
        lv = ref.levels(ref.APOT, b)
        assert len(lv) == count and lv[0] == 0 and lv[-1] == 1
        assert torch.all(lv[1:] > lv[:-1])
        assert abs(float(lv[1]) - (2**-7 if b == 5 else 2**-6) / mx) < 1e-7
    assert torch.allclose(ref.levels(ref.UNIFORM, 3), torch.arange(8) / 7.0)
    with pytest.raises(ValueError):
        ref.magnitude_bits(ref.APOT, 7, True)
    with pytest.raises(ValueError):
        ref.magnitude_bits(ref.APOT, 6, False)
    with pytest.raises(ValueError):
        ref.magnitude_bits(ref.UNIFORM, 1, True)


def test_c_kernels_match_pytorch_reference(qtune_tests, tmp_path):
    ncases = write_cases(str(tmp_path))
    proc = qtune_tests("apot_pytorch_reference", env={"QT_APOT_REF": str(tmp_path)}).check_ok()
    out = proc.stdout + proc.stderr
    assert "ok   apot_pytorch_reference" in proc.stdout, out
    m = re.search(r"checked (\d+) cases", proc.stdout)
    assert m and int(m.group(1)) == ncases, out
    assert "1 passed, 0 failed, 0 skipped" in proc.stdout, out
