"""PyTorch reference of APoT / uniform fake-quantization, written from APOT.md sections 1-4
(not from qtune's C code): level sets from the term lists, brute-force nearest level over all
levels, and the weight (with standardization), activation (unsigned and signed) and 8-bit
weight quantizers as autograd Functions whose backward implements APOT.md's formulas. The
weight quantizer also takes one alpha per output channel (the leading dimension; the
standardization stays per tensor) and can skip the standardization (mu = 0, sigma = 1).

Conventions shared with qtune (APOT.md leaves them open): a value exactly halfway between two
levels goes to the lower one; signed tensors use B = bits - 1 magnitude bits, unsigned
activations B = bits; the signed activation quantizer's input gradient is clipped to
|x| <= 1; mean and unbiased std are computed in float64 and rounded to float32; dalpha is
summed in float64 over float32 products. f32 and around build test inputs at and beside
given float32 values."""
import numpy as np
import torch

APOT = "apot"
UNIFORM = "uniform"

# APOT.md section 1: term lists per magnitude bit count B (B = 1 is the uniform set {0, 1}).
TERM_LISTS = {
    2: [[0.0, 2**-1, 2**-2, 2**-3]],
    3: [[0.0, 2**-1, 2**-2, 2**-4], [0.0, 2**-3]],
    4: [[0.0, 2**-1, 2**-3, 2**-5], [0.0, 2**-2, 2**-4, 2**-6]],
    5: [[0.0, 2**-1, 2**-3, 2**-6], [0.0, 2**-2, 2**-4, 2**-7], [0.0, 2**-5]],
}
MAX_B = {APOT: 5, UNIFORM: 8}


def magnitude_bits(scheme, bits, signed):
    """B for a tensor of `bits` bits: bits - 1 for signed tensors, bits for unsigned ones."""
    b = bits - 1 if signed else bits
    if scheme not in MAX_B:
        raise ValueError("unknown scheme %r" % scheme)
    if b < 1 or b > MAX_B[scheme]:
        raise ValueError("%s has no level set for %d bits (%s)" %
                         (scheme, bits, "signed" if signed else "unsigned"))
    return b


def levels(scheme, b):
    """Sorted float32 level set in [0, 1] for B = b magnitude bits."""
    if scheme == UNIFORM or b == 1:
        n = 2**b
        return torch.arange(n, dtype=torch.float32) / torch.tensor(n - 1, dtype=torch.float32)
    sums = {0.0}
    for lst in TERM_LISTS[b]:
        sums = {s + t for s in sums for t in lst}   # dyadic sums: exact in float64
    vals = torch.tensor(sorted(sums), dtype=torch.float32)
    assert len(vals) == 2**b
    return vals / vals.max()                         # divided in float32, as stored


def nearest(x, lv):
    """Brute force over all levels: the level at the smallest exact distance (float64
    differences of float32 values in [0, 1] are exact), the lowest such level on a tie."""
    d = (x.double().unsqueeze(-1) - lv.double()).abs()
    dmin = d.min(dim=-1, keepdim=True).values
    idx = torch.arange(len(lv)).expand_as(d)
    first = torch.where(d == dmin, idx, torch.full_like(idx, len(lv))).min(dim=-1).values
    return lv[first]


def _sum64(t):
    return t.double().sum().float().reshape(1)


def _sum64_to(t, shape):
    """t summed in float64 over the dimensions that `shape` broadcasts (alpha's gradient)."""
    return t.double().sum_to_size(shape).float()


class _SignedQuant(torch.autograd.Function):
    """x = input / alpha, q = sign(xc) * nearest(|xc|), xc = clamp(x, -1, 1); returns alpha * q.
    Backward: input gradient straight through (clip_input=False, weights) or g * (|x| <= 1)
    (clip_input=True, signed activations); dalpha = sum(g * (|x| > 1 ? sign(x) : q - x))."""

    @staticmethod
    def forward(ctx, inp, alpha, lv, clip_input):
        x = inp / alpha
        xc = x.clamp(-1.0, 1.0)
        q = torch.sign(xc) * nearest(xc.abs(), lv)
        ctx.save_for_backward(x, q)
        ctx.clip_input = clip_input
        ctx.alpha_shape = alpha.shape
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        out = x.abs() > 1
        factor = torch.where(out, torch.sign(x), q - x)
        dinp = torch.where(out, torch.zeros_like(g), g) if ctx.clip_input else g
        return dinp, _sum64_to(g * factor, ctx.alpha_shape), None, None


class _UnsignedQuant(torch.autograd.Function):
    """x = input / alpha, q = nearest(min(x, 1)) (negatives land on 0); returns alpha * q.
    Backward: g * (x <= 1); dalpha = sum(g * (x > 1 ? 1 : q - x))."""

    @staticmethod
    def forward(ctx, inp, alpha, lv):
        x = inp / alpha
        q = nearest(x.clamp(max=1.0), lv)
        ctx.save_for_backward(x, q)
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        out = x > 1
        factor = torch.where(out, torch.ones_like(x), q - x)
        return torch.where(out, torch.zeros_like(g), g), _sum64(g * factor), None


def weight_stats(w):
    """mu = mean(W), sigma = unbiased std(W), as constants (float64, rounded to float32)."""
    w64 = w.detach().double()
    return w64.mean().float(), w64.std(unbiased=True).float()


def weight_quant(w, alpha, scheme, bits, standardize=1):
    """APOT.md section 2. alpha has one element (the whole tensor) or w.shape[0] (one per
    output channel; alpha.grad then has one sum per channel). Returns (Wq, mu, sigma); dW =
    g / sigma comes from autograd through the standardization, the quantizer itself passes g
    straight through. standardize=0: Wn = W (mu = 0, sigma = 1), so x = W / alpha;
    standardize=2: standardized, then mapped back, Wq = sigma * Q + mu."""
    lv = levels(scheme, magnitude_bits(scheme, bits, True))
    if standardize:
        mu, sigma = weight_stats(w)
        wn = (w - mu) / sigma
    else:
        mu, sigma = torch.tensor(0.0), torch.tensor(1.0)
        wn = w
    if alpha.numel() > 1:
        assert alpha.numel() == w.shape[0], "one alpha per output channel"
        alpha = alpha.reshape([-1] + [1] * (w.dim() - 1))
    q = _SignedQuant.apply(wn, alpha, lv, False)
    if standardize == 2:
        q = sigma * q + mu
    return q, mu, sigma


def act_quant(a, alpha, scheme, bits, signed):
    """APOT.md section 3 (unsigned), and its signed variant for inputs not after a ReLU."""
    lv = levels(scheme, magnitude_bits(scheme, bits, signed))
    if signed:
        return _SignedQuant.apply(a, alpha, lv, True)
    return _UnsignedQuant.apply(a, alpha, lv)


class _Int8Quant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, m):
        return torch.round(w / m * 127) / 127 * m

    @staticmethod
    def backward(ctx, g):
        return g, None


def int8_weight_quant(w, abs_max=False):
    """APOT.md section 4: Wq = round(W / m * 127) / 127 * m, m = max(W) (or max|W|),
    straight-through gradient. Returns (Wq, m)."""
    m = (w.detach().abs().max() if abs_max else w.detach().max())
    return _Int8Quant.apply(w, m), m


def f32(v):
    return np.float32(v)


def around(v, k):
    """v and the k floats on each side of it (float32)."""
    out, lo, hi = [f32(v)], f32(v), f32(v)
    for _ in range(k):
        lo = np.nextafter(lo, f32(-np.inf))
        hi = np.nextafter(hi, f32(np.inf))
        out += [lo, hi]
    return out
