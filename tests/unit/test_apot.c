/* Tests of the APoT / uniform quantizer math (kernels/common/apot.h) and the CPU quantizer
 * kernels (kernels/cpu/quant.c): level sets against APOT.md's table, the projection against a
 * brute-force nearest search, hand-checked forward/backward cases, bit-width errors, per-channel
 * alphas and unstandardized weights (formulas, finite differences), the MSE alpha search
 * against a brute-force scan, subsampling, and (apot_pytorch_reference) the kernels against
 * .npy dumps of tests/ref/apot_ref.py. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/common/apot.h"
#include "../../kernels/cpu/quant.h"
#include "harness.h"

static unsigned apot_seed = 20240611;

static float apot_urand(float lo, float hi)
{
    return lo + (hi - lo) * ((float)rand_r(&apot_seed) / (float)RAND_MAX);
}

static float apot_gauss(void)
{
    float u = apot_urand(1e-7f, 1.0f), v = apot_urand(0.0f, 1.0f);
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* ---- Level sets ---- */

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* APOT.md's recipe, done here independently of apot.h: every sum a + b (+ c) over the term
 * lists, sorted, duplicates removed; returns the count and the largest sum. */
static int sums_from_lists(double *out, const double *la, int na, const double *lb, int nb,
                           const double *lc, int nc, double *maxsum)
{
    double all[64];
    int cnt = 0;
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            for (int k = 0; k < nc; k++)
                all[cnt++] = la[i] + lb[j] + lc[k];
    qsort(all, cnt, sizeof(double), cmp_double);
    int u = 0;
    for (int i = 0; i < cnt; i++)
        if (u == 0 || all[i] != out[u - 1]) out[u++] = all[i];
    *maxsum = out[u - 1];
    return u;
}

static int check_levels(int scheme, int B, const float *expect, int nexp)
{
    float lv[QT_APOT_MAX_LEVELS], th[QT_APOT_MAX_LEVELS];
    const int n = qt_apot_levels(lv, th, scheme, B);
    if (n != nexp)
        return qt_test_fail("scheme %d B=%d: %d levels, expected %d", scheme, B, n, nexp);
    for (int k = 0; k < n; k++)
        if (lv[k] != expect[k])
            return qt_test_fail("scheme %d B=%d: level %d = %.9g, expected %.9g", scheme, B, k,
                                lv[k], expect[k]);
    /* thresholds: the largest float not above the exact midpoint */
    for (int k = 0; k + 1 < n; k++) {
        const double mid = 0.5 * ((double)lv[k] + (double)lv[k + 1]);
        if (!((double)th[k] <= mid && (double)nextafterf(th[k], INFINITY) > mid))
            return qt_test_fail("scheme %d B=%d: threshold %d = %.9g, midpoint %.17g", scheme, B, k,
                                th[k], mid);
    }
    return 0;
}

QT_TEST(apot_levels_match_table)
{
    /* B = 1..3 straight from APOT.md's table */
    const float b1[2] = {0.0f, 1.0f};
    const float b2[4] = {0.0f, 0.25f, 0.5f, 1.0f};
    const float b3[8] = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.6f, 0.8f, 1.0f};
    if (check_levels(QT_SCHEME_APOT, 1, b1, 2)) return 1;
    if (check_levels(QT_SCHEME_APOT, 2, b2, 4)) return 1;
    if (check_levels(QT_SCHEME_APOT, 3, b3, 8)) return 1;

    /* B = 4 and 5 from the table's term lists */
    const double zero[1] = {0.0};
    const double a4[4] = {0, 0.5, 0.125, 0.03125}, b4[4] = {0, 0.25, 0.0625, 0.015625};
    const double a5[4] = {0, 0.5, 0.125, 0.015625}, b5[4] = {0, 0.25, 0.0625, 0.0078125};
    const double c5[2] = {0, 0.03125};
    double s[64], mx;
    float e[64];
    int n = sums_from_lists(s, a4, 4, b4, 4, zero, 1, &mx);
    QT_CHECK(n == 16 && mx == 0.75);
    for (int k = 0; k < n; k++)
        e[k] = (float)s[k] / (float)mx;
    if (check_levels(QT_SCHEME_APOT, 4, e, 16)) return 1;
    /* a few B = 4 levels by hand: 1/64 / .75, .1875 / .75 = .25, .515625 / .75 */
    QT_CHECK(e[1] == (float)(0.015625 / 0.75) && e[8] == 0.25f && e[13] == 0.6875f);

    n = sums_from_lists(s, a5, 4, b5, 4, c5, 2, &mx);
    QT_CHECK(n == 32 && mx == 0.78125);
    for (int k = 0; k < n; k++)
        e[k] = (float)s[k] / (float)mx;
    if (check_levels(QT_SCHEME_APOT, 5, e, 32)) return 1;
    QT_CHECK(e[1] == (float)(0.0078125 / 0.78125)); /* 0.01 */

    /* Uniform: k / (2^B - 1) */
    for (int B = 1; B <= 8; B++) {
        const int m = (1 << B) - 1;
        float u[QT_APOT_MAX_LEVELS];
        for (int k = 0; k <= m; k++)
            u[k] = (float)((double)k / m);
        float lv[QT_APOT_MAX_LEVELS], th[QT_APOT_MAX_LEVELS];
        QT_CHECK(qt_apot_levels(lv, th, QT_SCHEME_UNIFORM, B) == m + 1);
        for (int k = 0; k <= m; k++)
            if (!(fabs((double)lv[k] - u[k]) <= 0x1p-23 * u[k]))
                return qt_test_fail("uniform B=%d: level %d = %.9g, expected %.9g", B, k, lv[k],
                                    u[k]);
        if (check_levels(QT_SCHEME_UNIFORM, B, lv, m + 1)) return 1;
    }
    return 0;
}

QT_TEST(apot_bit_widths_and_errors)
{
    /* signed: B = bits - 1; unsigned: B = bits */
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 2, 1) == 1);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 3, 1) == 2);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 4, 1) == 3);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 5, 1) == 4);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 6, 1) == 5);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 7, 1) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 1, 1) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 0, 1) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, -3, 0) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 1, 0) == 1);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 5, 0) == 5);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 6, 0) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_APOT, 0, 0) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 2, 1) == 1);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 9, 1) == 8);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 10, 1) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 1, 1) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 8, 0) == 8);
    QT_CHECK(qt_apot_magnitude_bits(QT_SCHEME_UNIFORM, 9, 0) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_magnitude_bits(7, 4, 1) == QT_APOT_ERR_SCHEME);
    QT_CHECK(qt_apot_magnitude_bits(-1, 4, 0) == QT_APOT_ERR_SCHEME);

    /* level building rejects what it has no table for, and writes nothing */
    float lv[QT_APOT_MAX_LEVELS], th[QT_APOT_MAX_LEVELS];
    for (int k = 0; k < QT_APOT_MAX_LEVELS; k++)
        lv[k] = th[k] = -7.0f;
    QT_CHECK(qt_apot_levels(lv, th, QT_SCHEME_APOT, 6) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_levels(lv, th, QT_SCHEME_APOT, 0) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qt_apot_levels(lv, th, QT_SCHEME_UNIFORM, 9) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qt_apot_levels(lv, th, 3, 2) == QT_APOT_ERR_SCHEME);
    QT_CHECK(lv[0] == -7.0f && th[0] == -7.0f);

    /* quantizer descriptions: 2-bit weights are ternary in both schemes, 3-bit APoT weights
     * are powers of two; errors leave n = 0 (never NaN levels) */
    struct qt_apot_quantizer qz;
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 2, 1) == 0);
    QT_CHECK(qz.B == 1 && qz.n == 2 && qz.levels[0] == 0.0f && qz.levels[1] == 1.0f);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_UNIFORM, 2, 1) == 0 && qz.n == 2);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 3, 1) == 0);
    QT_CHECK(qz.n == 4 && qz.levels[1] == 0.25f && qz.levels[2] == 0.5f);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 4, 0) == 0 && qz.n == 16);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 7, 1) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qz.n == 0);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 6, 0) == QT_APOT_ERR_BITS_HIGH);
    QT_CHECK(qz.n == 0);
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_UNIFORM, 1, 1) == QT_APOT_ERR_BITS_LOW);
    QT_CHECK(qz.n == 0);
    QT_CHECK(qt_apot_quantizer_init(&qz, 5, 4, 1) == QT_APOT_ERR_SCHEME);
    QT_CHECK(strstr(qt_apot_error_string(QT_APOT_ERR_BITS_HIGH), "too many bits"));
    QT_CHECK(strstr(qt_apot_error_string(QT_APOT_ERR_BITS_LOW), "too few bits"));
    QT_CHECK(strstr(qt_apot_error_string(QT_APOT_ERR_SCHEME), "scheme"));
    return 0;
}

/* ---- Projection ---- */

/* Nearest level by scanning all of them with exact (double) distances; ties keep the lower
 * level, the rule apot.h documents. Inside [0, 1] the double differences are exact. */
static int brute_index(float x, const float *lv, int n)
{
    /* outside [first, last] the end level is nearest (doubles would round 1e30 - 1) */
    if (x >= lv[n - 1]) return n - 1;
    if (x <= lv[0]) return 0;
    int best = 0;
    double bd = fabs((double)x - lv[0]);
    for (int k = 1; k < n; k++) {
        const double d = fabs((double)x - lv[k]);
        if (d < bd) {
            bd = d;
            best = k;
        }
    }
    return best;
}

static int check_projection(const float *lv, const float *th, int n, const float *xs, int nx,
                            const char *what)
{
    for (int i = 0; i < nx; i++) {
        const float x = xs[i];
        const int bi = brute_index(x, lv, n), ci = qt_apot_nearest_index(x, th, n);
        if (bi != ci)
            return qt_test_fail("%s (n=%d): x = %.9g (%a): index %d, brute force %d", what, n, x, x,
                                ci, bi);
        if (qt_apot_nearest(x, lv, th, n) != lv[bi])
            return qt_test_fail("%s: nearest(%a) differs from its index", what, x);
        /* unsigned: nearest(min(x, 1)); signed: sign * nearest(min(|x|, 1)) */
        const float xu = x > 1.0f ? 1.0f : x;
        const float qu = lv[brute_index(xu, lv, n)];
        if (qt_apot_unsigned_q(x, lv, th, n) != qu)
            return qt_test_fail("%s: unsigned_q(%a) = %.9g, expected %.9g", what, x,
                                qt_apot_unsigned_q(x, lv, th, n), qu);
        const float xa = fabsf(x) > 1.0f ? 1.0f : fabsf(x);
        const float qs = (x < 0 ? -1.0f : 1.0f) * lv[brute_index(xa, lv, n)];
        if (qt_apot_signed_q(x, lv, th, n) != qs)
            return qt_test_fail("%s: signed_q(%a) = %.9g, expected %.9g", what, x,
                                qt_apot_signed_q(x, lv, th, n), qs);
    }
    return 0;
}

/* Values that probe every boundary of a level set: each level and its neighbours, each
 * exact midpoint (when it is a float) and the floats around it, the clipping points. */
static int probe_values(float *xs, const float *lv, int n, int nrand)
{
    int c = 0;
    for (int k = 0; k < n; k++) {
        xs[c++] = lv[k];
        xs[c++] = nextafterf(lv[k], -INFINITY);
        xs[c++] = nextafterf(lv[k], INFINITY);
        xs[c++] = -lv[k];
    }
    for (int k = 0; k + 1 < n; k++) {
        const double mid = 0.5 * ((double)lv[k] + lv[k + 1]);
        float m = (float)mid;
        xs[c++] = m;
        xs[c++] = -m;
        for (int s = 0; s < 3; s++) {
            xs[c++] = m = nextafterf(m, INFINITY);
        }
        m = (float)mid;
        for (int s = 0; s < 3; s++) {
            xs[c++] = m = nextafterf(m, -INFINITY);
        }
    }
    const float fixed[] = {0.0f,       -0.0f,      1.0f,        -1.0f,       0x1p-149f,
                           -0x1p-149f, 1.0000001f, 0.99999994f, -1.0000001f, -0.99999994f,
                           1.5f,       -1.5f,      1e30f,       -1e30f,      INFINITY,
                           -INFINITY,  1e-30f,     -2.0f};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        xs[c++] = fixed[i];
    for (int i = 0; i < nrand; i++)
        xs[c++] = apot_urand(-1.5f, 1.5f);
    return c;
}

QT_TEST(apot_projection_matches_bruteforce)
{
    static float xs[20000];
    for (int scheme = 0; scheme < 2; scheme++) {
        const int maxb = scheme == QT_SCHEME_APOT ? QT_APOT_MAX_B_APOT : QT_APOT_MAX_B_UNIFORM;
        for (int B = 1; B <= maxb; B++) {
            float lv[QT_APOT_MAX_LEVELS], th[QT_APOT_MAX_LEVELS];
            const int n = qt_apot_levels(lv, th, scheme, B);
            QT_CHECK(n == 1 << B);
            const int nx = probe_values(xs, lv, n, 5000);
            char what[64];
            snprintf(what, sizeof what, "%s B=%d", scheme ? "uniform" : "apot", B);
            if (check_projection(lv, th, n, xs, nx, what)) return 1;
            /* NaN stays NaN */
            QT_CHECK(isnan(qt_apot_nearest(NAN, lv, th, n)));
            QT_CHECK(isnan(qt_apot_unsigned_q(NAN, lv, th, n)));
            QT_CHECK(isnan(qt_apot_signed_q(NAN, lv, th, n)));
        }
    }
    /* the search itself for level counts that are not powers of two */
    for (int n = 1; n <= 40; n++) {
        float lv[64], th[64];
        lv[0] = 0.0f;
        for (int k = 1; k < n; k++)
            lv[k] = lv[k - 1] + apot_urand(0.001f, 0.1f);
        for (int k = 0; k + 1 < n; k++)
            th[k] = qt_apot_threshold(lv[k], lv[k + 1]);
        const int nx = probe_values(xs, lv, n, 500);
        if (check_projection(lv, th, n, xs, nx, "irregular")) return 1;
    }
    return 0;
}

/* ---- Hand-checked kernels ---- */

QT_TEST(apot_weight_quantizer_by_hand)
{
    /* z has mean 0 and unbiased variance 1, so w = 2 z + 5 has mu = 5, sigma = 2.
     * 4-bit APoT weights (B = 3, levels 0 .1 .2 .3 .4 .6 .8 1), alpha = 1.2:
     * x = z / 1.2 = 1.25, .8333, .41667, 0, 0, -.41667, -.8333, -1.25
     * q = 1, .8, .4, 0, 0, -.4, -.8, -1 */
    const float z[8] = {1.5f, 1.0f, 0.5f, 0.0f, 0.0f, -0.5f, -1.0f, -1.5f};
    const float qe[8] = {1.0f, 0.8f, 0.4f, 0.0f, 0.0f, -0.4f, -0.8f, -1.0f};
    float w[8], wq[8], g[8], dw[8], mu = 0, sigma = 0;
    for (int i = 0; i < 8; i++) {
        w[i] = 2.0f * z[i] + 5.0f;
        g[i] = (float)(i + 1);
    }
    struct qt_apot_quantizer qz;
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 4, 1) == 0);
    const float alpha = 1.2f;
    quant_weight_forward_cpu(wq, &mu, &sigma, w, &alpha, 1, 1, &qz, 8);
    QT_CHECK(mu == 5.0f && sigma == 2.0f);
    for (int i = 0; i < 8; i++)
        QT_CHECK_NEAR(wq[i], 1.2 * qe[i], 1e-6);
    /* dW = g / sigma (not clipped, also where |x| > 1);
     * dalpha = 1*(+1) + 2*(.8 - 5/6) + 3*(.4 - 5/12) + 6*(-.4 + 5/12) + 7*(-.8 + 5/6) + 8*(-1)
     *        = -7 + 13/60 */
    float dalpha = 0;
    quant_weight_backward_cpu(dw, &dalpha, g, w, &alpha, 1, 1, &mu, &sigma, &qz, 8, 0, 0);
    for (int i = 0; i < 8; i++)
        QT_CHECK(dw[i] == g[i] / 2.0f);
    QT_CHECK_NEAR(dalpha, -7.0 + 13.0 / 60.0, 1e-5);
    /* accumulate mode */
    for (int i = 0; i < 8; i++)
        dw[i] = 0.5f;
    dalpha = 10.0f;
    quant_weight_backward_cpu(dw, &dalpha, g, w, &alpha, 1, 1, &mu, &sigma, &qz, 8, 1, 1);
    for (int i = 0; i < 8; i++)
        QT_CHECK(dw[i] == 0.5f + g[i] / 2.0f);
    QT_CHECK_NEAR(dalpha, 10.0 - 7.0 + 13.0 / 60.0, 1e-5);
    /* NULL outputs are skipped */
    quant_weight_backward_cpu(NULL, &dalpha, g, w, &alpha, 1, 1, &mu, &sigma, &qz, 8, 0, 0);
    QT_CHECK_NEAR(dalpha, -7.0 + 13.0 / 60.0, 1e-5);
    quant_weight_backward_cpu(dw, NULL, g, w, &alpha, 1, 1, &mu, &sigma, &qz, 8, 0, 0);
    QT_CHECK(dw[0] == 0.5f);

    /* 2-bit weights: ternary {-1, 0, 1} with thresholds at +-0.5 */
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 2, 1) == 0);
    const float alpha2 = 2.5f; /* x = z / 2.5 = .6, .4, .2, 0, 0, -.2, -.4, -.6 */
    quant_weight_forward_cpu(wq, &mu, &sigma, w, &alpha2, 1, 1, &qz, 8);
    const float t[8] = {1, 0, 0, 0, 0, 0, 0, -1};
    for (int i = 0; i < 8; i++)
        QT_CHECK(wq[i] == 2.5f * t[i]);
    return 0;
}

QT_TEST(apot_activation_quantizer_by_hand)
{
    struct qt_apot_quantizer qz;
    const float g[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float y[8], d[8], dalpha;

    /* unsigned, 3-bit APoT (B = 3), alpha = 2:
     * x = -.5, 0, .13, .45, .58, .75, 1, 1.5 -> q = 0, 0, .1, .4, .6, .8, 1, 1
     * dA = g where x <= 1 (negatives included), 0 at x = 1.5
     * dalpha = .5 + 0 + 3(-.03) + 4(-.05) + 5(.02) + 6(.05) + 7(0) + 8(1) = 8.61 */
    const float a[8] = {-1.0f, 0.0f, 0.26f, 0.9f, 1.16f, 1.5f, 2.0f, 3.0f};
    const float qu[8] = {0, 0, 0.1f, 0.4f, 0.6f, 0.8f, 1.0f, 1.0f};
    const float alpha = 2.0f;
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 3, 0) == 0);
    quant_act_forward_cpu(y, a, &alpha, &qz, 8);
    for (int i = 0; i < 8; i++)
        QT_CHECK_NEAR(y[i], 2.0 * qu[i], 1e-6);
    quant_act_backward_cpu(d, &dalpha, g, a, &alpha, &qz, 8, 0, 0);
    for (int i = 0; i < 8; i++)
        QT_CHECK(d[i] == (i == 7 ? 0.0f : g[i]));
    QT_CHECK_NEAR(dalpha, 8.61, 1e-5);
    for (int i = 0; i < 8; i++)
        d[i] = 1.0f;
    quant_act_backward_cpu(d, &dalpha, g, a, &alpha, &qz, 8, 1, 1);
    for (int i = 0; i < 8; i++)
        QT_CHECK(d[i] == 1.0f + (i == 7 ? 0.0f : g[i]));
    QT_CHECK_NEAR(dalpha, 2 * 8.61, 2e-5);

    /* signed, 3 bits (B = 2, levels 0 .25 .5 1), alpha = 2:
     * x = -1.5, -1, -.6, -.15, .15, .45, 1, 1.3 -> q = -1, -1, -.5, -.25, .25, .5, 1, 1
     * dA = g where |x| <= 1; dalpha = -1 + 0 + 3(.1) + 4(-.1) + 5(.1) + 6(.05) + 0 + 8 = 7.7 */
    const float as[8] = {-3.0f, -2.0f, -1.2f, -0.3f, 0.3f, 0.9f, 2.0f, 2.6f};
    const float qs[8] = {-1, -1, -0.5f, -0.25f, 0.25f, 0.5f, 1, 1};
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 3, 1) == 0);
    quant_act_forward_cpu(y, as, &alpha, &qz, 8);
    for (int i = 0; i < 8; i++)
        QT_CHECK_NEAR(y[i], 2.0 * qs[i], 1e-6);
    quant_act_backward_cpu(d, &dalpha, g, as, &alpha, &qz, 8, 0, 0);
    for (int i = 0; i < 8; i++)
        QT_CHECK(d[i] == (i == 0 || i == 7 ? 0.0f : g[i]));
    QT_CHECK_NEAR(dalpha, 7.7, 1e-5);

    /* uniform unsigned 2 bits: levels 0, 1/3, 2/3, 1 */
    const float au[4] = {0.3f, 0.8f, 1.4f, 1.9f}; /* alpha 2: x = .15 .4 .7 .95 */
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_UNIFORM, 2, 0) == 0);
    quant_act_forward_cpu(y, au, &alpha, &qz, 4);
    QT_CHECK_NEAR(y[0], 0.0, 1e-7);
    QT_CHECK_NEAR(y[1], 2.0 / 3.0, 1e-6);
    QT_CHECK_NEAR(y[2], 4.0 / 3.0, 1e-6);
    QT_CHECK_NEAR(y[3], 2.0, 1e-6);
    return 0;
}

QT_TEST(apot_int8_weights_by_hand)
{
    /* m = max(W) = 1: W * 127 = -63.5 (half to even: -64), 31.75, 127, -254 (not clipped),
     * 12.7 */
    const float w[5] = {-0.5f, 0.25f, 1.0f, -2.0f, 0.1f};
    const double e1[5] = {-64.0 / 127, 32.0 / 127, 1.0, -2.0, 13.0 / 127};
    float wq[5], m = 0;
    quant_int8_weight_forward_cpu(wq, &m, w, 0, 5);
    QT_CHECK(m == 1.0f);
    for (int i = 0; i < 5; i++)
        QT_CHECK_NEAR(wq[i], e1[i], 1e-7);
    /* m = max|W| = 2: W / 2 * 127 = -31.75, 15.875, 63.5 (-> 64), -127, 6.35 */
    const double e2[5] = {-64.0 / 127, 32.0 / 127, 128.0 / 127, -2.0, 12.0 / 127};
    quant_int8_weight_forward_cpu(wq, &m, w, 1, 5);
    QT_CHECK(m == 2.0f);
    for (int i = 0; i < 5; i++)
        QT_CHECK_NEAR(wq[i], e2[i], 1e-6);
    /* m = 0 (no positive weight, signed maximum) leaves the weights as they are */
    const float wz[3] = {0.0f, -1.0f, -0.25f};
    quant_int8_weight_forward_cpu(wq, &m, wz, 0, 3);
    QT_CHECK(m == 0.0f && wq[0] == 0.0f && wq[1] == -1.0f && wq[2] == -0.25f);
    /* NaN propagates */
    const float wn[3] = {0.5f, NAN, -0.25f};
    quant_int8_weight_forward_cpu(wq, &m, wn, 1, 3);
    QT_CHECK(isnan(m) && isnan(wq[0]) && isnan(wq[2]));
    /* straight-through backward */
    const float g[5] = {1, -2, 3, -4, 5};
    float dw[5] = {1, 1, 1, 1, 1};
    quant_int8_weight_backward_cpu(dw, g, 5, 1);
    for (int i = 0; i < 5; i++)
        QT_CHECK(dw[i] == 1 + g[i]);
    quant_int8_weight_backward_cpu(dw, g, 5, 0);
    for (int i = 0; i < 5; i++)
        QT_CHECK(dw[i] == g[i]);
    return 0;
}

QT_TEST(apot_weight_stats_edge_cases)
{
    float mu = -1, sigma = -1;
    const float c[4] = {3.0f, 3.0f, 3.0f, 3.0f};
    quant_weight_stats_cpu(&mu, &sigma, c, 4);
    QT_CHECK(mu == 3.0f && sigma == 1.0f); /* constant tensor: sigma = 1 */
    quant_weight_stats_cpu(&mu, &sigma, c, 1);
    QT_CHECK(mu == 3.0f && sigma == 1.0f);
    quant_weight_stats_cpu(&mu, &sigma, c, 0);
    QT_CHECK(mu == 0.0f && sigma == 1.0f);
    /* a constant weight tensor quantizes to 0, not NaN */
    struct qt_apot_quantizer qz;
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 4, 1) == 0);
    float wq[4], alpha = 3.0f;
    quant_weight_forward_cpu(wq, &mu, &sigma, c, &alpha, 1, 1, &qz, 4);
    for (int i = 0; i < 4; i++)
        QT_CHECK(wq[i] == 0.0f);
    /* NaN weights show */
    const float bad[3] = {1.0f, NAN, 2.0f};
    quant_weight_forward_cpu(wq, &mu, &sigma, bad, &alpha, 1, 1, &qz, 3);
    QT_CHECK(isnan(wq[0]) && isnan(sigma));
    quant_act_forward_cpu(wq, bad, &alpha, &qz, 3);
    QT_CHECK(!isnan(wq[0]) && isnan(wq[1]));
    return 0;
}

/* ---- Large tensors: parallel kernels against the scalar formulas ---- */

QT_TEST(apot_kernels_match_formulas_and_thread_count)
{
    const int64_t n = 300001;
    float *w = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * n);
    float *y = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    float *d1 = malloc(sizeof(float) * n);
    QT_CHECK(w && g && y && d && d1);
    for (int64_t i = 0; i < n; i++) {
        w[i] = 0.05f * apot_gauss() + 0.01f;
        g[i] = apot_gauss();
    }
    int rc = 0;
    /* reference statistics in double, two passes */
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += w[i];
    const double m = s / n;
    double v = 0;
    for (int64_t i = 0; i < n; i++)
        v += ((double)w[i] - m) * ((double)w[i] - m);
    const float mu_ref = (float)m, sigma_ref = (float)sqrt(v / (n - 1));
    const int saved_threads = omp_get_max_threads();
    for (int scheme = 0; scheme < 2 && !rc; scheme++) {
        const int maxbits = scheme == QT_SCHEME_APOT ? 6 : 9;
        for (int bits = 2; bits <= maxbits && !rc; bits++) {
            for (int kind = 0; kind < 3 && !rc; kind++) { /* weight, act unsigned, act signed */
                struct qt_apot_quantizer qz;
                const int sg = kind != 1;
                const int b = kind == 1 ? bits - 1 : bits; /* unsigned: 1..5 / 1..8 bits */
                QT_CHECK(qt_apot_quantizer_init(&qz, scheme, b, sg) == 0);
                const float alpha = kind == 0 ? 2.5f : 0.09f;
                float mu = 0, sigma = 1, da1 = 0, da3 = 0;
                if (kind == 0) {
                    quant_weight_forward_cpu(y, &mu, &sigma, w, &alpha, 1, 1, &qz, n);
                    if (!(fabsf(mu - mu_ref) <= 1e-6f * fabsf(mu_ref)) ||
                        !(fabsf(sigma - sigma_ref) <= 1e-6f * sigma_ref)) {
                        rc = qt_test_fail("mu/sigma %g %g, expected %g %g", mu, sigma, mu_ref,
                                          sigma_ref);
                        break;
                    }
                } else {
                    quant_act_forward_cpu(y, w, &alpha, &qz, n);
                }
                omp_set_num_threads(1);
                if (kind == 0)
                    quant_weight_backward_cpu(d1, &da1, g, w, &alpha, 1, 1, &mu, &sigma, &qz, n, 0, 0);
                else
                    quant_act_backward_cpu(d1, &da1, g, w, &alpha, &qz, n, 0, 0);
                omp_set_num_threads(3);
                if (kind == 0)
                    quant_weight_backward_cpu(d, &da3, g, w, &alpha, 1, 1, &mu, &sigma, &qz, n, 0, 0);
                else
                    quant_act_backward_cpu(d, &da3, g, w, &alpha, &qz, n, 0, 0);
                omp_set_num_threads(saved_threads);
                double sum = 0, abssum = 0;
                for (int64_t i = 0; i < n && !rc; i++) {
                    const float x =
                        kind == 0 ? qt_apot_weight_x(w[i], mu, sigma, alpha) : w[i] / alpha;
                    const float q = sg ? qt_apot_signed_q(x, qz.levels, qz.thr, qz.n)
                                       : qt_apot_unsigned_q(x, qz.levels, qz.thr, qz.n);
                    const float f =
                        sg ? qt_apot_signed_dalpha(x, q) : qt_apot_unsigned_dalpha(x, q);
                    const float dx = kind == 0 ? qt_apot_weight_dx(g[i], sigma, QT_STD_ON)
                                     : sg      ? qt_apot_signed_act_dx(g[i], x)
                                               : qt_apot_unsigned_dx(g[i], x);
                    sum += (double)(g[i] * f);
                    abssum += fabs((double)(g[i] * f));
                    if (y[i] != alpha * q || d[i] != dx || d1[i] != dx)
                        rc = qt_test_fail("scheme %d bits %d kind %d element %lld: y %g (%g), "
                                          "d %g %g (%g)",
                                          scheme, bits, kind, (long long)i, y[i], alpha * q, d[i],
                                          d1[i], dx);
                }
                if (!rc && da1 != da3)
                    rc = qt_test_fail("dalpha depends on the thread count: %.9g vs %.9g", da1, da3);
                if (!rc && !(fabs(da1 - sum) <= 1e-6 * abssum))
                    rc = qt_test_fail("scheme %d bits %d kind %d: dalpha %.9g, expected %.9g",
                                      scheme, bits, kind, da1, sum);
            }
        }
    }
    omp_set_num_threads(saved_threads);
    free(w);
    free(g);
    free(y);
    free(d);
    free(d1);
    return rc;
}

/* ---- Per-channel alphas and weights without standardization ---- */

/* Whole-tensor mean and unbiased std in double, two passes (independent of the kernels). */
static void ref_stats(double *mu, double *sigma, const float *w, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += w[i];
    const double m = s / n;
    double v = 0;
    for (int64_t i = 0; i < n; i++)
        v += ((double)w[i] - m) * ((double)w[i] - m);
    *mu = m;
    *sigma = sqrt(v / (n - 1));
}

/* Signed q of x by brute force over the levels (APOT.md: sign(xc) * nearest(|xc|)). */
static float brute_signed_q(float x, const struct qt_apot_quantizer *qz)
{
    const float a = fabsf(x) > 1.0f ? 1.0f : fabsf(x);
    return copysignf(qz->levels[brute_index(a, qz->levels, qz->n)], x);
}

/* Checks the weight kernels with nalpha alphas (channels of n / nalpha elements) against the
 * element formulas, computed here channel by channel with each channel's alpha and the whole
 * tensor's mu and sigma (standardize = 1) or mu = 0, sigma = 1 (standardize = 0); also that
 * the backward does not depend on the thread count and that acc = 1 adds. */
static int check_weight_channels(const float *w, const float *g, int64_t n, const float *alpha,
                                 int64_t nalpha, int standardize,
                                 const struct qt_apot_quantizer *qz, float *y, float *d,
                                 float *d1, const char *what)
{
    float mu = -5, sigma = -5;
    quant_weight_forward_cpu(y, &mu, &sigma, w, alpha, nalpha, standardize, qz, n);
    if (standardize) {
        double m, s;
        ref_stats(&m, &s, w, n);
        if (!(fabs(mu - m) <= 1e-6 * fabs(m) + 1e-12) || !(fabs(sigma - s) <= 1e-6 * s))
            return qt_test_fail("%s: mu, sigma = %.9g, %.9g; expected %.9g, %.9g", what, mu, sigma,
                                m, s);
    } else if (mu != 0.0f || sigma != 1.0f || signbit(mu)) {
        return qt_test_fail("%s: without standardization mu, sigma = %g, %g", what, mu, sigma);
    }
    float da1[64], da3[64], dacc[64];
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    quant_weight_backward_cpu(d1, da1, g, w, alpha, nalpha, 1, &mu, &sigma, qz, n, 0, 0);
    omp_set_num_threads(3);
    quant_weight_backward_cpu(d, da3, g, w, alpha, nalpha, 1, &mu, &sigma, qz, n, 0, 0);
    omp_set_num_threads(saved_threads);
    const int64_t cs = n / nalpha;
    const int brute = n <= 20000;
    for (int64_t c = 0; c < nalpha; c++) {
        double sum = 0, abssum = 0;
        for (int64_t i = c * cs; i < (c + 1) * cs; i++) {
            const float wn = standardize ? (w[i] - mu) / sigma : w[i];
            const float x = wn / alpha[c];
            const float q = brute ? brute_signed_q(x, qz)
                                  : qt_apot_signed_q(x, qz->levels, qz->thr, qz->n);
            const float f = fabsf(x) > 1.0f ? copysignf(1.0f, x) : q - x;
            const float dx = standardize ? g[i] / sigma : g[i];
            sum += (double)(g[i] * f);
            abssum += fabs((double)(g[i] * f));
            if (y[i] != alpha[c] * q || d[i] != dx || d1[i] != dx)
                return qt_test_fail("%s: element %lld (channel %lld, x = %.9g): wq %.9g (%.9g), "
                                    "dw %.9g %.9g (%.9g)",
                                    what, (long long)i, (long long)c, x, y[i], alpha[c] * q, d[i],
                                    d1[i], dx);
        }
        if (da1[c] != da3[c])
            return qt_test_fail("%s: dalpha[%lld] depends on the thread count: %.9g vs %.9g", what,
                                (long long)c, da1[c], da3[c]);
        if (!(fabs(da1[c] - sum) <= 1e-6 * abssum + 1e-30))
            return qt_test_fail("%s: dalpha[%lld] = %.9g, expected %.9g", what, (long long)c,
                                da1[c], sum);
    }
    /* accumulate mode adds to what is there */
    for (int64_t c = 0; c < nalpha; c++)
        dacc[c] = 0.25f * (float)c - 1.0f;
    for (int64_t i = 0; i < n; i++)
        d[i] = 0.5f;
    quant_weight_backward_cpu(d, dacc, g, w, alpha, nalpha, 1, &mu, &sigma, qz, n, 1, 1);
    for (int64_t c = 0; c < nalpha; c++)
        if (dacc[c] != (0.25f * (float)c - 1.0f) + da1[c])
            return qt_test_fail("%s: accumulated dalpha[%lld] = %.9g", what, (long long)c, dacc[c]);
    for (int64_t i = 0; i < n; i++)
        if (d[i] != 0.5f + d1[i])
            return qt_test_fail("%s: accumulated dw[%lld] = %.9g", what, (long long)i, d[i]);
    return 0;
}

QT_TEST(apot_weight_per_channel_matches_formulas)
{
    /* channel counts and sizes: tiny channels (one block), many small channels in several
     * blocks (parallel), channels larger than a block (cut), and one alpha for comparison */
    static const int64_t shapes[][2] = {{4, 27}, {64, 576}, {3, 40000}, {1, 9000}, {7, 1}};
    static float w[120000], g[120000], y[120000], d[120000], d1[120000];
    int rc = 0;
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0] && !rc; sh++) {
        const int64_t nalpha = shapes[sh][0], cs = shapes[sh][1], n = nalpha * cs;
        float alpha[64];
        for (int64_t c = 0; c < nalpha; c++) {
            const float scale = 0.02f * (float)(1 + (c * 5) % 9); /* channels differ in range */
            for (int64_t i = c * cs; i < (c + 1) * cs; i++) {
                w[i] = scale * apot_gauss() + 0.003f * (float)c;
                g[i] = apot_gauss();
            }
            alpha[c] = 0.4f + 0.37f * (float)((c * 3) % 8); /* 0.4 .. 3, some clipping */
        }
        for (int scheme = 0; scheme < 2 && !rc; scheme++) {
            const int maxbits = scheme == QT_SCHEME_APOT ? 6 : 9;
            for (int bits = 2; bits <= maxbits && !rc; bits++) {
                struct qt_apot_quantizer qz;
                QT_CHECK(qt_apot_quantizer_init(&qz, scheme, bits, 1) == 0);
                for (int st = 0; st < 2 && !rc; st++) {
                    char what[128];
                    snprintf(what, sizeof what, "%s %d bits, %lld x %lld, standardize %d",
                             scheme ? "uniform" : "apot", bits, (long long)nalpha, (long long)cs,
                             st);
                    rc = check_weight_channels(w, g, n, alpha, nalpha, !st, &qz, y, d, d1, what);
                }
            }
        }
        /* equal alphas in every channel give the per-tensor results (dalpha: their sum) */
        if (!rc) {
            struct qt_apot_quantizer qz;
            QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 4, 1) == 0);
            float same[64], da[64], da_one = 0, mu, sigma;
            for (int64_t c = 0; c < nalpha; c++)
                same[c] = 1.3f;
            quant_weight_forward_cpu(y, &mu, &sigma, w, same, nalpha, 1, &qz, n);
            quant_weight_backward_cpu(d, da, g, w, same, nalpha, 1, &mu, &sigma, &qz, n, 0, 0);
            quant_weight_forward_cpu(d1, &mu, &sigma, w, same, 1, 1, &qz, n);
            double sum = 0;
            for (int64_t c = 0; c < nalpha; c++)
                sum += da[c];
            for (int64_t i = 0; i < n && !rc; i++)
                if (y[i] != d1[i]) rc = qt_test_fail("equal alphas: wq[%lld] differs", (long long)i);
            quant_weight_backward_cpu(d1, &da_one, g, w, same, 1, 1, &mu, &sigma, &qz, n, 0, 0);
            for (int64_t i = 0; i < n && !rc; i++)
                if (d[i] != d1[i]) rc = qt_test_fail("equal alphas: dw[%lld] differs", (long long)i);
            if (!rc && !(fabs(sum - da_one) <= 1e-5 * (fabs(da_one) + 1.0)))
                rc = qt_test_fail("equal alphas: sum of dalpha %.9g, per tensor %.9g", sum, da_one);
        }
    }
    return rc;
}

/* dalpha[c] by central differences in double. The straight-through estimator treats nearest()
 * as the identity in the backward: dalpha is the derivative of
 *   S_c(a) = sum over channel c of g * a * sign(xc) * (|xc(a)| + r),  xc(a) = clamp(wn / a, -1, 1)
 * with r = nearest(|xc|) - |xc| held at the forward's alpha. Elements whose level or clipping
 * would change within a +- h (near a level threshold or |x| = 1) get g = 0. Also the actual
 * forward: d/da sum(g * wq) = sum(g * q) (q does not change within +- h), which is dalpha plus
 * sum(g * x) over |x| <= 1; and changing alpha[c] changes channel c's outputs only. */
QT_TEST(apot_weight_per_channel_dalpha_finite_differences)
{
    enum { C = 5, CS = 40, N = C * CS };
    float w[N], g[N], y[N], yp[N], ym[N], alpha[C], da[C], mu, sigma;
    for (int i = 0; i < N; i++) {
        w[i] = 0.1f * apot_gauss() * (float)(1 + (i / CS) % 3);
        g[i] = apot_gauss();
    }
    for (int c = 0; c < C; c++)
        alpha[c] = 0.7f + 0.45f * (float)c;
    const double rel = 0x1p-10; /* h = a * rel */
    for (int scheme = 0; scheme < 2; scheme++) {
        for (int bits = 2; bits <= (scheme == QT_SCHEME_APOT ? 6 : 5); bits++) {
            struct qt_apot_quantizer qz;
            QT_CHECK(qt_apot_quantizer_init(&qz, scheme, bits, 1) == 0);
            for (int st = 0; st < 2; st++) {
                float gz[N];
                quant_weight_forward_cpu(y, &mu, &sigma, w, alpha, C, !st, &qz, N);
                int used = 0;
                for (int i = 0; i < N; i++) {
                    const float x = ((w[i] - mu) / sigma) / alpha[i / CS], ax = fabsf(x);
                    int near = fabs(ax - 1.0) <= 4 * rel * ax;
                    for (int k = 0; k + 1 < qz.n; k++)
                        near |= fabs((double)ax - qz.thr[k]) <= 4 * rel * ax;
                    gz[i] = near ? 0.0f : g[i];
                    used += !near;
                }
                QT_CHECK(used > N / 2);
                quant_weight_backward_cpu(NULL, da, gz, w, alpha, C, 1, &mu, &sigma, &qz, N, 0, 0);
                for (int c = 0; c < C; c++) {
                    /* the straight-through surrogate, in double */
                    const double a = alpha[c], h = a * rel;
                    double sp = 0, sm = 0, gq = 0, gx = 0, gabs = 0;
                    for (int i = c * CS; i < (c + 1) * CS; i++) {
                        const double wn = ((double)w[i] - mu) / sigma;
                        const float x = ((w[i] - mu) / sigma) / alpha[c];
                        const float q = brute_signed_q(x, &qz);
                        const double ax = fabs((double)x) > 1 ? 1 : fabs((double)x);
                        const double r = fabs((double)q) - ax, sg = x < 0 ? -1 : 1;
                        const double xp = fmin(fabs(wn / (a + h)), 1), xm = fmin(fabs(wn / (a - h)), 1);
                        sp += gz[i] * (a + h) * sg * (xp + r);
                        sm += gz[i] * (a - h) * sg * (xm + r);
                        gq += (double)gz[i] * q;
                        if (fabsf(x) <= 1.0f) gx += (double)gz[i] * x;
                        gabs += fabs(gz[i]);
                    }
                    const double fd = (sp - sm) / (2 * h);
                    if (!(fabs(da[c] - fd) <= 1e-5 * gabs))
                        return qt_test_fail("%s %d bits st %d: dalpha[%d] = %.9g, finite "
                                            "difference %.9g",
                                            scheme ? "uniform" : "apot", bits, !st, c, da[c], fd);
                    /* the actual forward, perturbing alpha[c] only */
                    float ap[C], am[C];
                    memcpy(ap, alpha, sizeof ap);
                    memcpy(am, alpha, sizeof am);
                    ap[c] = (float)(a + h);
                    am[c] = (float)(a - h);
                    float mu2, sigma2;
                    quant_weight_forward_cpu(yp, &mu2, &sigma2, w, ap, C, !st, &qz, N);
                    quant_weight_forward_cpu(ym, &mu2, &sigma2, w, am, C, !st, &qz, N);
                    double lp = 0, lm = 0;
                    for (int i = 0; i < N; i++) {
                        const int own = i / CS == c;
                        if (!own && (yp[i] != y[i] || ym[i] != y[i]))
                            return qt_test_fail("alpha[%d] changed element %d of channel %d", c,
                                                i, i / CS);
                        if (own) {
                            lp += (double)gz[i] * yp[i];
                            lm += (double)gz[i] * ym[i];
                        }
                    }
                    const double fd2 = (lp - lm) / ((double)ap[c] - (double)am[c]);
                    if (!(fabs(fd2 - gq) <= 1e-3 * gabs) || !(fabs(da[c] + gx - gq) <= 1e-5 * gabs))
                        return qt_test_fail("%s %d bits st %d channel %d: forward difference "
                                            "%.9g, sum(g q) %.9g, dalpha + sum(g x) %.9g",
                                            scheme ? "uniform" : "apot", bits, !st, c, fd2, gq,
                                            da[c] + gx);
                }
            }
        }
    }
    return 0;
}

QT_TEST(apot_weight_no_standardization_by_hand)
{
    /* 3-bit APoT weights (B = 2, levels 0 .25 .5 1), no standardization, alpha = 2 for the
     * first channel and 0.5 for the second:
     * x = 1.5, -.6, .15, .45 | 1.8, .5, -.3, .9 -> q = 1, -.5, .25, .5 | 1, .5, -.25, 1 */
    const float w[8] = {3.0f, -1.2f, 0.3f, 0.9f, 0.9f, 0.25f, -0.15f, 0.45f};
    const float alpha[2] = {2.0f, 0.5f};
    const float e[8] = {2.0f, -1.0f, 0.5f, 1.0f, 0.5f, 0.25f, -0.125f, 0.5f};
    const float g[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float wq[8], dw[8], da[2], mu = -1, sigma = -1;
    struct qt_apot_quantizer qz;
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 3, 1) == 0);
    quant_weight_forward_cpu(wq, &mu, &sigma, w, alpha, 2, 0, &qz, 8);
    QT_CHECK(mu == 0.0f && sigma == 1.0f);
    for (int i = 0; i < 8; i++)
        QT_CHECK_NEAR(wq[i], e[i], 1e-7);
    /* dw = dwq; dalpha[0] = 1 + 2(-.5 + .6) + 3(.25 - .15) + 4(.5 - .45) = 1.7,
     * dalpha[1] = 5 + 6(.5 - .5) + 7(-.25 + .3) + 8(1 - .9) = 6.15 */
    quant_weight_backward_cpu(dw, da, g, w, alpha, 2, 1, &mu, &sigma, &qz, 8, 0, 0);
    for (int i = 0; i < 8; i++)
        QT_CHECK(dw[i] == g[i]);
    QT_CHECK_NEAR(da[0], 1.7, 1e-5);
    QT_CHECK_NEAR(da[1], 6.15, 1e-5);
    /* NULL outputs are skipped; one alpha for the whole tensor */
    quant_weight_forward_cpu(wq, NULL, NULL, w, alpha, 1, 0, &qz, 8);
    QT_CHECK(wq[4] == 0.5f * 2.0f && wq[0] == 2.0f);
    quant_weight_backward_cpu(NULL, da, g, w, alpha, 1, 1, &mu, &sigma, &qz, 8, 0, 0);
    /* x = w / 2: 1.5 -.6 .15 .45 .45 .125 -.075 .225 -> q = 1 -.5 .25 .5 .5 0 0 .25 (.125 is
     * the tie between 0 and .25: the lower level) */
    QT_CHECK_NEAR(da[0], 1.7 + 5 * .05 + 6 * -.125 + 7 * .075 + 8 * .025, 1e-5);
    /* an empty tensor: dalpha = 0 per channel (assign), unchanged (accumulate) */
    da[0] = da[1] = 3.0f;
    quant_weight_backward_cpu(dw, da, g, w, alpha, 2, 1, &mu, &sigma, &qz, 0, 0, 1);
    QT_CHECK(da[0] == 3.0f && da[1] == 3.0f);
    quant_weight_backward_cpu(dw, da, g, w, alpha, 2, 1, &mu, &sigma, &qz, 0, 0, 0);
    QT_CHECK(da[0] == 0.0f && da[1] == 0.0f);
    return 0;
}

/* ---- MSE search of alpha ---- */

/* sum((alpha * q(x / alpha) - x)^2) over the finite samples, in double, with q by brute force. */
static double mse_ref(const float *x, int64_t n, float alpha, const struct qt_apot_quantizer *qz)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) continue;
        const float v = x[i] / alpha;
        float q;
        if (qz->is_signed) {
            q = brute_signed_q(v, qz);
        } else {
            q = qz->levels[brute_index(v > 1.0f ? 1.0f : v, qz->levels, qz->n)];
        }
        const double e = (double)(alpha * q - x[i]);
        s += e * e;
    }
    return s;
}

QT_TEST(apot_alpha_mse_search)
{
    enum { N = 6000, NB = 2000 };
    static float xg[N], xl[N], xr[N];
    for (int i = 0; i < N; i++) {
        xg[i] = 0.8f * apot_gauss();                                /* Gaussian */
        const float u = apot_urand(-0.4999f, 0.4999f);              /* Laplace */
        xl[i] = (u < 0 ? 1.0f : -1.0f) * 0.5f * logf(1.0f - 2.0f * fabsf(u));
        xr[i] = 3.0f * apot_gauss() + 1.0f;                         /* pre-ReLU, signs mixed */
    }
    struct cfg {
        const float *x;
        int scheme, bits, sg;
    } cfgs[] = {
        {xg, QT_SCHEME_APOT, 2, 1}, {xg, QT_SCHEME_APOT, 3, 1},    {xg, QT_SCHEME_APOT, 4, 1},
        {xg, QT_SCHEME_APOT, 5, 1}, {xl, QT_SCHEME_APOT, 4, 1},    {xg, QT_SCHEME_UNIFORM, 3, 1},
        {xl, QT_SCHEME_UNIFORM, 8, 1}, {xr, QT_SCHEME_APOT, 2, 0}, {xr, QT_SCHEME_APOT, 4, 0},
        {xr, QT_SCHEME_UNIFORM, 4, 0},
    };
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        struct qt_apot_quantizer qz;
        QT_CHECK(qt_apot_quantizer_init(&qz, cfgs[k].scheme, cfgs[k].bits, cfgs[k].sg) == 0);
        const float *x = cfgs[k].x;
        float m = 0;
        for (int i = 0; i < N; i++)
            m = fmaxf(m, cfgs[k].sg ? fabsf(x[i]) : x[i]);
        const float a = quant_alpha_mse_cpu(x, N, &qz);
        QT_CHECK(a > 0.0f && a <= 1.0101f * m);
        /* brute force over NB alphas m * j / NB */
        static double errs[NB];
#pragma omp parallel for schedule(dynamic, 16)
        for (int j = 1; j <= NB; j++)
            errs[j - 1] = mse_ref(x, N, (float)((double)m * j / NB), &qz);
        double best = INFINITY;
        int jb = 0;
        for (int j = 0; j < NB; j++)
            if (errs[j] < best) {
                best = errs[j];
                jb = j + 1;
            }
        const double e = mse_ref(x, N, a, &qz);
        if (!(e <= best * (1 + 1e-3)))
            return qt_test_fail("%s %d bits signed %d: alpha %.6g (error %.9g), brute force "
                                "alpha %.6g (error %.9g)",
                                cfgs[k].scheme ? "uniform" : "apot", cfgs[k].bits, cfgs[k].sg, a,
                                e, m * jb / (double)NB, best);
        /* the same answer with 1 and 3 threads */
        const int saved = omp_get_max_threads();
        omp_set_num_threads(1);
        const float a1 = quant_alpha_mse_cpu(x, N, &qz);
        omp_set_num_threads(3);
        const float a3 = quant_alpha_mse_cpu(x, N, &qz);
        omp_set_num_threads(saved);
        QT_CHECK(a1 == a && a3 == a);
    }

    struct qt_apot_quantizer qs, qu;
    QT_CHECK(qt_apot_quantizer_init(&qs, QT_SCHEME_APOT, 4, 1) == 0);
    QT_CHECK(qt_apot_quantizer_init(&qu, QT_SCHEME_APOT, 4, 0) == 0);
    /* nothing to fit: all zero, empty, unsigned with no positive sample, only NaN / Inf */
    static float z[1000];
    memset(z, 0, sizeof z);
    QT_CHECK(quant_alpha_mse_cpu(z, 1000, &qs) == 1.0f);
    QT_CHECK(quant_alpha_mse_cpu(z, 1000, &qu) == 1.0f);
    QT_CHECK(quant_alpha_mse_cpu(z, 0, &qs) == 1.0f);
    for (int i = 0; i < 1000; i++)
        z[i] = -0.01f * (float)(i + 1);
    QT_CHECK(quant_alpha_mse_cpu(z, 1000, &qu) == 1.0f);
    z[5] = NAN;
    z[6] = INFINITY;
    QT_CHECK(quant_alpha_mse_cpu(z, 1000, &qu) == 1.0f);
    const float bad[4] = {NAN, INFINITY, -INFINITY, NAN};
    QT_CHECK(quant_alpha_mse_cpu(bad, 4, &qs) == 1.0f);
    QT_CHECK(quant_alpha_mse_cpu(bad, 4, &qu) == 1.0f);
    /* NaN and Inf samples are ignored: they give the answer of zeros in their places (zeros
     * add no error and do not change the maximum) */
    static float a0[4096], an[4096];
    for (int i = 0; i < 4096; i++)
        a0[i] = an[i] = (i % 13 == 0) ? 0.0f : xg[i];
    for (int i = 0; i < 4096; i += 13)
        an[i] = (i % 3 == 0) ? NAN : (i % 3 == 1) ? INFINITY : -INFINITY;
    const float r0 = quant_alpha_mse_cpu(a0, 4096, &qs), rn = quant_alpha_mse_cpu(an, 4096, &qs);
    QT_CHECK(r0 == rn && isfinite(rn) && rn > 0.0f);
    QT_CHECK(quant_alpha_mse_cpu(a0, 4096, &qu) == quant_alpha_mse_cpu(an, 4096, &qu));
    /* a two-level quantizer and one sample value: alpha = that value, error 0 */
    struct qt_apot_quantizer q2;
    QT_CHECK(qt_apot_quantizer_init(&q2, QT_SCHEME_APOT, 2, 1) == 0);
    const float pm[6] = {0.75f, -0.75f, 0.75f, 0.0f, -0.75f, 0.75f};
    QT_CHECK(quant_alpha_mse_cpu(pm, 6, &q2) == 0.75f);
    return 0;
}

QT_TEST(apot_subsample)
{
    float x[10], out[20];
    for (int i = 0; i < 10; i++)
        x[i] = (float)i;
    QT_CHECK(quant_subsample_cpu(out, 3, x, 10) == 3); /* every 4th: 0 4 8 */
    QT_CHECK(out[0] == 0 && out[1] == 4 && out[2] == 8);
    QT_CHECK(quant_subsample_cpu(out, 3, x, 9) == 3); /* every 3rd: 0 3 6 */
    QT_CHECK(out[0] == 0 && out[1] == 3 && out[2] == 6);
    QT_CHECK(quant_subsample_cpu(out, 4, x, 10) == 4); /* every 3rd: 0 3 6 9 */
    QT_CHECK(out[3] == 9);
    QT_CHECK(quant_subsample_cpu(out, 6, x, 10) == 5); /* every 2nd: 0 2 4 6 8 */
    QT_CHECK(out[4] == 8);
    QT_CHECK(quant_subsample_cpu(out, 20, x, 10) == 10); /* all */
    for (int i = 0; i < 10; i++)
        QT_CHECK(out[i] == x[i]);
    QT_CHECK(quant_subsample_cpu(out, 1, x, 10) == 1 && out[0] == 0);
    QT_CHECK(quant_subsample_cpu(out, 0, x, 10) == 0);
    QT_CHECK(quant_subsample_cpu(out, 5, x, 0) == 0);
    return 0;
}

/* ---- Against the PyTorch reference (tests/ref/test_apot.py writes the folder) ---- */

/* Reads a little-endian float32 C-order .npy file; returns the data (malloc) and its element
 * count, or NULL with a message in err. */
static float *npy_read_f32(const char *path, int64_t *count, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char pre[10];
    float *data = NULL;
    char *hdr = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        snprintf(err, errlen, "%s: not a .npy file", path);
        goto out;
    }
    size_t hlen;
    if (pre[6] == 1) {
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else {
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) {
            snprintf(err, errlen, "%s: truncated header", path);
            goto out;
        }
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        snprintf(err, errlen, "%s: truncated header", path);
        goto out;
    }
    hdr[hlen] = 0;
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False")) {
        snprintf(err, errlen, "%s: expected little-endian float32 in C order: %s", path, hdr);
        goto out;
    }
    const char *sh = strstr(hdr, "'shape': (");
    if (!sh) {
        snprintf(err, errlen, "%s: no shape in header", path);
        goto out;
    }
    sh += strlen("'shape': (");
    int64_t n = 1;
    while (*sh && *sh != ')') {
        if (*sh >= '0' && *sh <= '9') {
            n *= strtoll(sh, (char **)&sh, 10);
        } else {
            sh++;
        }
    }
    data = malloc(sizeof(float) * (n > 0 ? n : 1));
    if (!data || fread(data, sizeof(float), n, f) != (size_t)n) {
        snprintf(err, errlen, "%s: truncated data (%lld floats expected)", path, (long long)n);
        free(data);
        data = NULL;
        goto out;
    }
    *count = n;
out:
    free(hdr);
    fclose(f);
    return data;
}

/* Compares got with ref elementwise: |got - ref| <= rel * |ref| + abs (NaN fails). */
static int compare(const char *cname, const char *what, const float *got, const float *ref,
                   const float *x, int64_t n, double rel, double abs_tol)
{
    for (int64_t i = 0; i < n; i++) {
        if (!(fabs((double)got[i] - ref[i]) <= rel * fabs(ref[i]) + abs_tol))
            return qt_test_fail("%s: %s[%lld] = %.9g, reference %.9g (input %.9g)", cname, what,
                                (long long)i, got[i], ref[i], x ? x[i] : 0.0f);
    }
    return 0;
}

enum { NPY_X, NPY_ALPHA, NPY_G, NPY_Y, NPY_DX, NPY_DALPHA, NPY_MU, NPY_SIGMA, NPY_M, NPY_N };

/* One case of cases.txt: weight cases have nalpha alphas (1, or one per channel of the leading
 * dimension) and standardize (1: mu, sigma from the tensor; 0: mu = 0, sigma = 1; 2: from the
 * tensor, mapped back). */
static int run_reference_case(const char *dir, const char *name, const char *kind,
                              const char *scheme, int bits, int is_signed, int64_t nalpha,
                              int standardize)
{
    static const char *const suffix[NPY_N] = {"x",      "alpha", "g",     "y", "dx",
                                              "dalpha", "mu",    "sigma", "m"};
    const int is_weight = !strcmp(kind, "weight"), is_act = !strcmp(kind, "act");
    const int is_int8 = !strcmp(kind, "int8");
    if (!is_weight && !is_act && !is_int8) return qt_test_fail("%s: unknown kind '%s'", name, kind);
    int need[NPY_N] = {1, !is_int8, 1, 1, 1, !is_int8, is_weight, is_weight, is_int8};
    float *v[NPY_N] = {0};
    int64_t cnt[NPY_N] = {0};
    int rc = 0;
    char path[1024], err[2048];
    for (int k = 0; k < NPY_N && !rc; k++) {
        if (!need[k]) continue;
        snprintf(path, sizeof path, "%s/%s_%s.npy", dir, name, suffix[k]);
        v[k] = npy_read_f32(path, &cnt[k], err, sizeof err);
        if (!v[k]) rc = qt_test_fail("%s", err);
    }
    const int64_t n = cnt[NPY_X];
    if (!rc && (nalpha < 1 || (!is_weight && nalpha != 1) || n % nalpha != 0))
        rc = qt_test_fail("%s: %lld alphas for %lld elements (%s)", name, (long long)nalpha,
                          (long long)n, kind);
    for (int k = 0; k < NPY_N && !rc; k++) {
        const int64_t want = (k == NPY_ALPHA || k == NPY_DALPHA)                 ? nalpha
                             : (k == NPY_MU || k == NPY_SIGMA || k == NPY_M) ? 1
                                                                              : n;
        if (need[k] && cnt[k] != want)
            rc = qt_test_fail("%s: %s has %lld elements, expected %lld", name, suffix[k],
                              (long long)cnt[k], (long long)want);
    }
    float *y = malloc(sizeof(float) * (n ? n : 1)), *dx = malloc(sizeof(float) * (n ? n : 1));
    if (!rc && (!y || !dx)) rc = qt_test_fail("out of memory");
    if (!rc && is_int8) {
        float m = 0;
        const int absmax = !strcmp(scheme, "absmax");
        if (!absmax && strcmp(scheme, "max"))
            rc = qt_test_fail("%s: int8 mode '%s' is neither max nor absmax", name, scheme);
        if (!rc) {
            quant_int8_weight_forward_cpu(y, &m, v[NPY_X], absmax, n);
            quant_int8_weight_backward_cpu(dx, v[NPY_G], n, 0);
            if (!(m == v[NPY_M][0]))
                rc = qt_test_fail("%s: m = %.9g, reference %.9g", name, m, v[NPY_M][0]);
        }
    } else if (!rc) {
        const int sch = !strcmp(scheme, "apot")      ? QT_SCHEME_APOT
                        : !strcmp(scheme, "uniform") ? QT_SCHEME_UNIFORM
                                                     : -1;
        struct qt_apot_quantizer qz;
        const int e = qt_apot_quantizer_init(&qz, sch, bits, is_signed);
        if (e < 0) rc = qt_test_fail("%s: %s", name, qt_apot_error_string(e));
        float *dalpha = calloc(nalpha, sizeof(float)), mu = 0, sigma = 0;
        if (!rc && !dalpha) rc = qt_test_fail("out of memory");
        if (!rc && is_weight) {
            quant_weight_forward_cpu(y, &mu, &sigma, v[NPY_X], v[NPY_ALPHA], nalpha, standardize,
                                     &qz, n);
            quant_weight_backward_cpu(dx, dalpha, v[NPY_G], v[NPY_X], v[NPY_ALPHA], nalpha,
                                      standardize, &mu, &sigma, &qz, n, 0, 0);
            if (!(fabs(mu - v[NPY_MU][0]) <= 1e-6 * fabs(v[NPY_MU][0])) ||
                !(fabs(sigma - v[NPY_SIGMA][0]) <= 1e-6 * fabs(v[NPY_SIGMA][0])))
                rc = qt_test_fail("%s: mu, sigma = %.9g, %.9g; reference %.9g, %.9g", name, mu,
                                  sigma, v[NPY_MU][0], v[NPY_SIGMA][0]);
        } else if (!rc) {
            quant_act_forward_cpu(y, v[NPY_X], v[NPY_ALPHA], &qz, n);
            quant_act_backward_cpu(dx, dalpha, v[NPY_G], v[NPY_X], v[NPY_ALPHA], &qz, n, 0, 0);
        }
        if (!rc) rc = compare(name, "y", y, v[NPY_Y], v[NPY_X], n, 1e-6, 0.0);
        if (!rc) rc = compare(name, "dx", dx, v[NPY_DX], v[NPY_X], n, 1e-5, 0.0);
        /* dalpha per channel; tolerance: 1e-5 relative, with a floor for a sum that cancels
         * to near 0 */
        const int64_t cs = n / nalpha;
        for (int64_t c = 0; c < nalpha && !rc; c++) {
            double gabs = 0;
            for (int64_t i = c * cs; i < (c + 1) * cs; i++)
                gabs += fabs(v[NPY_G][i]);
            const double ref = v[NPY_DALPHA][c];
            if (!(fabs(dalpha[c] - ref) <= 1e-5 * fabs(ref) + 1e-9 * gabs))
                rc = qt_test_fail("%s: dalpha[%lld] = %.9g, reference %.9g", name, (long long)c,
                                  dalpha[c], ref);
        }
        free(dalpha);
    }
    if (!rc && is_int8) rc = compare(name, "y", y, v[NPY_Y], v[NPY_X], n, 1e-6, 0.0);
    if (!rc && is_int8) rc = compare(name, "dx", dx, v[NPY_DX], v[NPY_X], n, 1e-5, 0.0);
    free(y);
    free(dx);
    for (int k = 0; k < NPY_N; k++)
        free(v[k]);
    return rc;
}

QT_TEST(apot_pytorch_reference)
{
    const char *dir = getenv("QT_APOT_REF");
    if (!dir || !*dir)
        return qt_test_skip("QT_APOT_REF is not set (tests/ref/test_apot.py sets it)");
    char path[4096];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return qt_test_fail("%s: %s", path, strerror(errno));
    char line[512];
    int ncases = 0, rc = 0;
    /* name kind scheme bits signed [nalpha standardize] (default 1 1) */
    while (!rc && fgets(line, sizeof line, f)) {
        char name[128], kind[32], scheme[32];
        int bits, sg, st = 1;
        long long nalpha = 1;
        if (line[0] == '#' || line[0] == '\n') continue;
        const int nf = sscanf(line, "%127s %31s %31s %d %d %lld %d", name, kind, scheme, &bits,
                              &sg, &nalpha, &st);
        if (nf != 5 && nf != 7) {
            rc = qt_test_fail("%s: bad line: %s", path, line);
            break;
        }
        rc = run_reference_case(dir, name, kind, scheme, bits, sg, nalpha, st);
        if (rc)
            qt_test_fail("case %s (%s %s bits %d signed %d, %lld alphas, standardize %d) failed",
                         name, kind, scheme, bits, sg, nalpha, st);
        ncases++;
    }
    fclose(f);
    if (rc) return rc;
    if (ncases == 0) return qt_test_fail("%s lists no cases", path);
    printf("    apot_pytorch_reference: checked %d cases\n", ncases);
    return 0;
}
