/* APoT and uniform fake-quantization math (APOT.md sections 1-4), shared by the CPU and CUDA
 * kernels: level sets and their midpoint thresholds, which magnitude bits a tensor uses, the
 * nearest-level projection and the per-element forward and gradient formulas. Everything is
 * `static inline` and free of global state, so the same code compiles for host and device. */
#ifndef QT_KERNELS_COMMON_APOT_H
#define QT_KERNELS_COMMON_APOT_H

#include <math.h>

/* Marks the functions below as callable from host and device code under nvcc. */
#ifndef QT_HD
#if defined(__CUDACC__)
#define QT_HD __host__ __device__
#else
#define QT_HD
#endif
#endif

/* Specifiers of the per-element functions: static inline, forced inline (the kernels'
 * element loops vectorize only when these are inlined into them), host and device. */
#ifndef QT_APOT_INLINE
#if defined(__CUDACC__)
#define QT_APOT_INLINE __host__ __device__ static __forceinline__
#elif defined(__GNUC__)
#define QT_APOT_INLINE static inline __attribute__((always_inline))
#else
#define QT_APOT_INLINE static inline
#endif
#endif

enum qt_apot_scheme {
    QT_SCHEME_APOT = 0,    /* additive powers of two, APOT.md's table (B = 1..5) */
    QT_SCHEME_UNIFORM = 1, /* k / (2^B - 1), k = 0 .. 2^B - 1 (B = 1..8) */
};

/* Largest magnitude-bit count per scheme, and the largest level set (2^8 levels). */
#define QT_APOT_MAX_B_APOT 5
#define QT_APOT_MAX_B_UNIFORM 8
#define QT_APOT_MAX_LEVELS 256

/* Error returns (always negative). */
#define QT_APOT_ERR_SCHEME (-1)    /* not a qt_apot_scheme */
#define QT_APOT_ERR_BITS_LOW (-2)  /* fewer bits than the tensor kind needs */
#define QT_APOT_ERR_BITS_HIGH (-3) /* more magnitude bits than the scheme's level sets */

QT_HD static inline const char *qt_apot_error_string(int code)
{
    switch (code) {
    case QT_APOT_ERR_SCHEME:
        return "unknown quantization scheme (expected apot or uniform)";
    case QT_APOT_ERR_BITS_LOW:
        return "too few bits (signed tensors need at least 2, unsigned activations at least 1)";
    case QT_APOT_ERR_BITS_HIGH:
        return "too many bits (apot: at most 6 for signed tensors and 5 for unsigned "
               "activations; uniform: at most 9 signed and 8 unsigned)";
    default:
        return code >= 0 ? "no error" : "unknown quantization error";
    }
}

/* Magnitude bits B of a tensor quantized at `bits` bits: signed tensors (weights, and
 * activations that do not follow a ReLU) keep one bit for the sign, B = bits - 1 (so 2 bits
 * is ternary {-1, 0, 1} in both schemes); unsigned activations use B = bits.
 * Accepted: apot signed 2..6, apot unsigned 1..5, uniform signed 2..9, uniform unsigned 1..8.
 * Returns B >= 1, or QT_APOT_ERR_SCHEME / QT_APOT_ERR_BITS_LOW / QT_APOT_ERR_BITS_HIGH. */
QT_HD static inline int qt_apot_magnitude_bits(int scheme, int bits, int is_signed)
{
    if (scheme != QT_SCHEME_APOT && scheme != QT_SCHEME_UNIFORM) return QT_APOT_ERR_SCHEME;
    const int b = is_signed ? bits - 1 : bits;
    if (b < 1) return QT_APOT_ERR_BITS_LOW;
    if (b > (scheme == QT_SCHEME_APOT ? QT_APOT_MAX_B_APOT : QT_APOT_MAX_B_UNIFORM))
        return QT_APOT_ERR_BITS_HIGH;
    return b;
}

/* Threshold between neighbouring levels lo < hi: the largest float not above their exact
 * midpoint. With it, `x > t` holds exactly when x is strictly closer to hi than to lo, so a
 * value exactly at the midpoint goes to lo. The midpoint is exact in double (levels lie in
 * [0, 1] and differ in exponent by far less than 29). */
QT_HD static inline float qt_apot_threshold(float lo, float hi)
{
    const double m = 0.5 * ((double)lo + (double)hi);
    float t = (float)m;
    if ((double)t > m) t = nextafterf(t, lo);
    return t;
}

/* Builds the sorted magnitude levels in [0, 1] (levels[0] = 0, levels[n-1] = 1) for `scheme`
 * and B magnitude bits into levels (room for 2^B values) and the n - 1 thresholds between
 * them into thr (room for 2^B - 1; thr[k] separates levels[k] and levels[k+1]).
 * APoT: every sum of one term from each list of APOT.md's table, duplicates removed, divided
 * by the largest sum; B = 1 is the uniform set {0, 1}. Uniform: k / (2^B - 1).
 * Returns the number of levels n = 2^B, or QT_APOT_ERR_SCHEME / QT_APOT_ERR_BITS_LOW /
 * QT_APOT_ERR_BITS_HIGH (nothing written then). */
QT_HD static inline int qt_apot_levels(float *levels, float *thr, int scheme, int B)
{
    if (scheme != QT_SCHEME_APOT && scheme != QT_SCHEME_UNIFORM) return QT_APOT_ERR_SCHEME;
    if (B < 1) return QT_APOT_ERR_BITS_LOW;
    if (B > (scheme == QT_SCHEME_APOT ? QT_APOT_MAX_B_APOT : QT_APOT_MAX_B_UNIFORM))
        return QT_APOT_ERR_BITS_HIGH;
    const int n = 1 << B;
    if (scheme == QT_SCHEME_UNIFORM || B == 1) {
        for (int k = 0; k < n; k++)
            levels[k] = (float)k / (float)(n - 1);
    } else {
        /* Term lists per B (rows B = 2..5), as exponents e of the terms 2^-e; 0 stands for the
         * zero term every list starts with (shorter lists are padded with it). */
        const signed char ex[4][3][4] = {
            {{0, 1, 2, 3}, {0, 0, 0, 0}, {0, 0, 0, 0}}, /* B = 2 */
            {{0, 1, 2, 4}, {0, 3, 0, 0}, {0, 0, 0, 0}}, /* B = 3 */
            {{0, 1, 3, 5}, {0, 2, 4, 6}, {0, 0, 0, 0}}, /* B = 4 */
            {{0, 1, 3, 6}, {0, 2, 4, 7}, {0, 5, 0, 0}}, /* B = 5 */
        };
        int cnt = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                for (int k = 0; k < 4; k++) {
                    const int e[3] = {ex[B - 2][0][i], ex[B - 2][1][j], ex[B - 2][2][k]};
                    float s = 0.0f; /* sums of at most three powers of two >= 2^-7: exact */
                    for (int t = 0; t < 3; t++)
                        if (e[t]) s += ldexpf(1.0f, -e[t]);
                    /* insert into the sorted prefix levels[0..cnt), skipping duplicates */
                    int p = cnt;
                    while (p > 0 && levels[p - 1] > s)
                        p--;
                    if (p > 0 && levels[p - 1] == s) continue;
                    if (cnt == n) return QT_APOT_ERR_BITS_HIGH; /* table inconsistent */
                    for (int q = cnt; q > p; q--)
                        levels[q] = levels[q - 1];
                    levels[p] = s;
                    cnt++;
                }
        if (cnt != n) return QT_APOT_ERR_BITS_HIGH; /* cannot happen with the table above */
        const float mx = levels[n - 1];
        for (int k = 0; k < n; k++)
            levels[k] = levels[k] / mx;
    }
    for (int k = 0; k + 1 < n; k++)
        thr[k] = qt_apot_threshold(levels[k], levels[k + 1]);
    return n;
}

/* Index of the level nearest to x for larger level sets, by binary search over the thresholds: the number of
 * thresholds below x, found in about log2(n) branch-free steps. Ties at an exact midpoint go
 * to the lower level; x below the first threshold (negatives included) gives 0, above the last
 * n - 1; NaN gives 0. thr holds the n - 1 ascending thresholds, 1 <= n <= QT_APOT_MAX_LEVELS.
 * With p the largest power of two <= n - 1, the first step decides whether the count is at
 * least p; if so the search continues on the last p - 1 thresholds (those it skips are below
 * x too), else on the first p - 1; then steps p/2, ..., 1 each add s when x is above the
 * threshold s places on. The steps are written out, without conditional loads, so that with a
 * constant n the element loops that call this vectorize. */
#define QT_APOT_SEARCH_STEP_(s)                                                                    \
    if ((s) < p) idx += (x > thr[idx + (s)-1]) ? (s) : 0;
QT_APOT_INLINE int qt_apot_nearest_index_bsearch(float x, const float *thr, int n)
{
    const int m = n - 1;
    if (m < 1) return 0;
    const int p = m >= 128  ? 128
                  : m >= 64 ? 64
                  : m >= 32 ? 32
                  : m >= 16 ? 16
                  : m >= 8  ? 8
                  : m >= 4  ? 4
                  : m >= 2  ? 2
                            : 1;
    int idx = (x > thr[p - 1]) ? m - p + 1 : 0;
    QT_APOT_SEARCH_STEP_(64)
    QT_APOT_SEARCH_STEP_(32)
    QT_APOT_SEARCH_STEP_(16)
    QT_APOT_SEARCH_STEP_(8)
    QT_APOT_SEARCH_STEP_(4)
    QT_APOT_SEARCH_STEP_(2)
    QT_APOT_SEARCH_STEP_(1)
    return idx;
}
#undef QT_APOT_SEARCH_STEP_

/* Fully unrolls the loop after it when its trip count is a constant. */
#if defined(__CUDACC__)
#define QT_APOT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define QT_APOT_UNROLL _Pragma("GCC unroll 32")
#elif defined(__clang__)
#define QT_APOT_UNROLL _Pragma("unroll")
#else
#define QT_APOT_UNROLL
#endif

/* Up to this many levels, the index is counted rather than searched. */
#define QT_APOT_COUNT_MAX 32

/* Index of the level nearest to x: the number of thresholds below x. Ties at an exact
 * midpoint go to the lower level; x below the first threshold (negatives included) gives 0,
 * above the last n - 1; NaN gives 0. thr holds the n - 1 ascending thresholds,
 * 1 <= n <= QT_APOT_MAX_LEVELS. Up to QT_APOT_COUNT_MAX levels the thresholds are compared
 * one by one: with a constant n, each is a value broadcast across vector lanes, so the element
 * loops that call this run without indexed loads; larger sets use the binary search above. */
QT_APOT_INLINE int qt_apot_nearest_index(float x, const float *thr, int n)
{
    if (n > QT_APOT_COUNT_MAX) return qt_apot_nearest_index_bsearch(x, thr, n);
    int idx = 0;
    QT_APOT_UNROLL
    for (int k = 0; k + 1 < n; k++)
        idx += x > thr[k] ? 1 : 0;
    return idx;
}

/* nearest(x, L): the level nearest to x (ties to the lower level, see above); NaN stays NaN. */
QT_APOT_INLINE float qt_apot_nearest(float x, const float *levels, const float *thr, int n)
{
    const int idx = qt_apot_nearest_index(x, thr, n);
    /* Two levels: a select between two plain loads instead of an indexed load, which a
     * compiler would otherwise turn into a branch that stops vectorization. */
    const float l0 = levels[0], l1 = levels[n > 1 ? 1 : 0];
    const float l = n == 2 ? (idx ? l1 : l0) : levels[idx];
    return x != x ? x : l;
}

/* ---- Weight quantizer (APOT.md section 2); also the signed activation quantizer ---- */

/* Weight standardization (WeightQuant attribute standardize): none (mu = 0, sigma = 1),
 * standardized per tensor (APoT's training form: the quantized weight alpha * q stays in units
 * of sigma, the following BatchNorm absorbs the scale), or standardized and mapped back
 * (sigma * alpha * q + mu: the weight's own scale and offset, so that the layer computes what
 * the float layer computed up to the quantization error; post-training quantization). */
enum qt_apot_standardize { QT_STD_NONE = 0, QT_STD_ON = 1, QT_STD_RESTORE = 2 };

/* x = ((w - mu) / sigma) / alpha: the standardized weight in units of alpha. */
QT_APOT_INLINE float qt_apot_weight_x(float w, float mu, float sigma, float alpha)
{
    return ((w - mu) / sigma) / alpha;
}

/* q = sign(xc) * nearest(|xc|, L), xc = clamp(x, -1, 1); the quantized value is alpha * q. */
QT_APOT_INLINE float qt_apot_signed_q(float x, const float *levels, const float *thr, int n)
{
    float a = fabsf(x);
    a = a > 1.0f ? 1.0f : a;
    return copysignf(qt_apot_nearest(a, levels, thr, n), x);
}

/* The quantizer's output for aq = alpha * q: aq, or sigma * aq + mu when mapped back. */
QT_APOT_INLINE float qt_apot_weight_out(float aq, float mu, float sigma, int standardize)
{
    return standardize == QT_STD_RESTORE ? sigma * aq + mu : aq;
}

/* dL/dW for upstream gradient g: straight-through g / sigma, not clipped outside [-1, 1];
 * mapped back, the factor sigma of the output cancels it: g. */
QT_APOT_INLINE float qt_apot_weight_dx(float g, float sigma, int standardize)
{
    return standardize == QT_STD_RESTORE ? g : g / sigma;
}

/* The factor of dL/dalpha beyond the per-element sum (below): sigma when mapped back, else 1. */
QT_APOT_INLINE double qt_apot_weight_dalpha_scale(float sigma, int standardize)
{
    return standardize == QT_STD_RESTORE ? (double)sigma : 1.0;
}

/* Per-element factor of dL/dalpha for signed quantizers, dalpha = sum(g * factor):
 * factor = sign(x) where |x| > 1, else q - x, for q = qt_apot_signed_q(x).
 * Computed as (q - xc) + c with xc = clamp(x, -1, 1) and c = sign(x) where |x| > 1, else 0:
 * where |x| > 1, q = sign(x) = xc exactly and this is sign(x); elsewhere xc = x and c = 0.
 * No floating-point operation depends on a condition, so compilers vectorize the loops. */
QT_APOT_INLINE float qt_apot_signed_dalpha(float x, float q)
{
    const float xc = x > 1.0f ? 1.0f : (x < -1.0f ? -1.0f : x);
    const float c = x > 1.0f ? 1.0f : (x < -1.0f ? -1.0f : 0.0f);
    return (q - xc) + c;
}

/* ---- Activation quantizer (APOT.md section 3) ---- */

/* Unsigned: q = nearest(min(x, 1), L) with x = A / alpha; negative x lands on 0. */
QT_APOT_INLINE float qt_apot_unsigned_q(float x, const float *levels, const float *thr, int n)
{
    const float xc = x > 1.0f ? 1.0f : x;
    return qt_apot_nearest(xc, levels, thr, n);
}

/* Unsigned dL/dA = g * (x <= 1): negative inputs pass the gradient, as APOT.md states. */
QT_APOT_INLINE float qt_apot_unsigned_dx(float g, float x)
{
    return x > 1.0f ? 0.0f : g;
}

/* Unsigned dalpha factor: 1 where x > 1, else q - x, for q = qt_apot_unsigned_q(x).
 * Computed as (q - min(x, 1)) + (x > 1 ? 1 : 0), equal because q = 1 where x > 1 (see
 * qt_apot_signed_dalpha for why this form). */
QT_APOT_INLINE float qt_apot_unsigned_dalpha(float x, float q)
{
    const float xc = x > 1.0f ? 1.0f : x;
    return (q - xc) + (x > 1.0f ? 1.0f : 0.0f);
}

/* Signed activation dL/dA = g * (|x| <= 1), clipped on both sides. On the upper side this is
 * APOT.md's activation rule (g * (x <= 1)); the lower side is treated the same way. It is the
 * derivative of the forward's clamp, and the out-of-range part of the gradient reaches alpha
 * through the factor sign(x) instead. The unclipped straight-through rule is APOT.md's for
 * weights only (standardized, learned parameters), not for activations. */
QT_APOT_INLINE float qt_apot_signed_act_dx(float g, float x)
{
    return fabsf(x) > 1.0f ? 0.0f : g;
}

/* ---- 8-bit first and last layer weights (APOT.md section 4) ---- */

/* Wq = round(w / m * 127) / 127 * m, round half to even (rintf in the default rounding
 * mode), no clamping (with m = max(W) weights below -m go beyond -127 steps, as in the
 * reference code). m = 0 leaves w unchanged. The gradient is straight-through: dW = g. */
QT_APOT_INLINE float qt_apot_int8_q(float w, float m)
{
    return m == 0.0f ? w : rintf(w / m * 127.0f) / 127.0f * m;
}

/* ---- A ready-to-use quantizer description for the kernels ---- */

/* The data-driven alpha (a minimum of the quantization error, kernels' alpha search):
 * QT_ALPHA_COARSE candidates m * k / QT_ALPHA_COARSE, k = 1.., m the largest |x| (signed) or
 * x (unsigned), then QT_ALPHA_FINE - 2 candidates between the best one's neighbours, in
 * steps of 2 / QT_ALPHA_FINE coarse steps, itself excluded; the lowest error wins, the
 * smaller alpha on a tie; 1 when every x is 0 (or, unsigned, <= 0); NaN/Inf samples count
 * as 0. */
#define QT_ALPHA_COARSE 100
#define QT_ALPHA_FINE 40

struct qt_apot_quantizer {
    int scheme, bits, is_signed;
    int B; /* magnitude bits */
    int n; /* magnitude levels, 2^B */
    float levels[QT_APOT_MAX_LEVELS];
    float thr[QT_APOT_MAX_LEVELS]; /* n - 1 used */
};

/* Fills qz for a tensor of `bits` bits (is_signed: weights and signed activations).
 * Returns 0, or a negative QT_APOT_ERR_* (then qz->n = 0). */
QT_HD static inline int qt_apot_quantizer_init(struct qt_apot_quantizer *qz, int scheme, int bits,
                                               int is_signed)
{
    qz->scheme = scheme;
    qz->bits = bits;
    qz->is_signed = is_signed ? 1 : 0;
    qz->n = 0;
    const int b = qt_apot_magnitude_bits(scheme, bits, is_signed);
    if (b < 0) return b;
    qz->B = b;
    const int n = qt_apot_levels(qz->levels, qz->thr, scheme, b);
    if (n < 0) return n;
    qz->n = n;
    return 0;
}

/* The signed level grid of qz in ascending order, out[0 .. 2n - 1): -levels[n-1] .. -levels[1],
 * 0 (never -0), levels[1] .. levels[n-1]; index n - 1 + k is level k, n - 1 - k its negative.
 * Returns 2n - 1. */
QT_HD static inline int qt_apot_signed_levels(float *out, const struct qt_apot_quantizer *qz)
{
    const int n = qz->n;
    for (int k = 0; k < n; k++) {
        out[n - 1 + k] = qz->levels[k];
        out[n - 1 - k] = -qz->levels[k];
    }
    out[n - 1] = 0.0f;
    return 2 * n - 1;
}

/* ---- PSGD: position-based scaled gradients (BSQ_PSGD.md section 2) ----
 * A float weight tensor is trained towards the symmetric uniform grid of 2 L + 1 levels,
 * L = 2^(b-1) - 1 (the grid of the uniform signed b-bit weight quantizer with alpha = max |w|):
 * each gradient element is multiplied by lambda * |w - Q(w)|, Q(w) = delta * round(clip(w /
 * delta, -L, L)), delta = m / L, so weights near a level move slowly and weights between levels
 * fast. m follows the tensor's range through an exponential average kept per tensor. */

/* Steps of the grid on each side of 0 for b bits: 2^(b-1) - 1 (0 when b < 2). */
QT_HD static inline int qt_psgd_levels(int bits)
{
    return bits >= 2 && bits <= 16 ? (1 << (bits - 1)) - 1 : 0;
}

/* Range state r = (lo, hi) after a step whose weights span [wmin, wmax]: the first step sets
 * lo = min(0, wmin), hi = max(0, wmax); later ones average, lo = 0.1 lo_now + 0.9 lo (hi alike).
 * Returns delta = max(-lo, hi) / L, the grid step. */
QT_HD static inline float qt_psgd_range_step(float r[2], float wmin, float wmax, int first, int L)
{
    const float lo = wmin < 0.0f ? wmin : 0.0f, hi = wmax > 0.0f ? wmax : 0.0f;
    if (first) {
        r[0] = lo;
        r[1] = hi;
    } else {
        r[0] = 0.1f * lo + 0.9f * r[0];
        r[1] = 0.1f * hi + 0.9f * r[1];
    }
    const float m = -r[0] > r[1] ? -r[0] : r[1];
    return m / (float)L;
}

/* What scales one tensor's gradients in a step: its grid step, steps per side and lambda. */
struct qt_psgd_grid {
    float delta, L, lambda;
};

/* lambda * |w - Q(w)| for grid step delta and L steps each side; round is half-to-even
 * (nearbyintf in the default rounding mode). A grid of step 0 (an all-zero tensor) gives 0. */
QT_APOT_INLINE float qt_psgd_factor(float w, float delta, float L, float lambda)
{
    if (!(delta > 0.0f)) return 0.0f;
    float t = w / delta;
    t = t < -L ? -L : t > L ? L : t;
    return lambda * fabsf(w - delta * nearbyintf(t));
}

#endif
