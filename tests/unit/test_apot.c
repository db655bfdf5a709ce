/* Tests of the APoT / uniform quantizer math (kernels/common/apot.h) and the CPU quantizer
 * kernels (kernels/cpu/quant.c): level sets against APOT.md's table, the projection against a
 * brute-force nearest search, hand-checked forward/backward cases, bit-width errors, and
 * (apot_pytorch_reference) the kernels against .npy dumps of tests/ref/apot_ref.py. */
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
    quant_weight_forward_cpu(wq, &mu, &sigma, w, &alpha, &qz, 8);
    QT_CHECK(mu == 5.0f && sigma == 2.0f);
    for (int i = 0; i < 8; i++)
        QT_CHECK_NEAR(wq[i], 1.2 * qe[i], 1e-6);
    /* dW = g / sigma (not clipped, also where |x| > 1);
     * dalpha = 1*(+1) + 2*(.8 - 5/6) + 3*(.4 - 5/12) + 6*(-.4 + 5/12) + 7*(-.8 + 5/6) + 8*(-1)
     *        = -7 + 13/60 */
    float dalpha = 0;
    quant_weight_backward_cpu(dw, &dalpha, g, w, &alpha, &mu, &sigma, &qz, 8, 0, 0);
    for (int i = 0; i < 8; i++)
        QT_CHECK(dw[i] == g[i] / 2.0f);
    QT_CHECK_NEAR(dalpha, -7.0 + 13.0 / 60.0, 1e-5);
    /* accumulate mode */
    for (int i = 0; i < 8; i++)
        dw[i] = 0.5f;
    dalpha = 10.0f;
    quant_weight_backward_cpu(dw, &dalpha, g, w, &alpha, &mu, &sigma, &qz, 8, 1, 1);
    for (int i = 0; i < 8; i++)
        QT_CHECK(dw[i] == 0.5f + g[i] / 2.0f);
    QT_CHECK_NEAR(dalpha, 10.0 - 7.0 + 13.0 / 60.0, 1e-5);
    /* NULL outputs are skipped */
    quant_weight_backward_cpu(NULL, &dalpha, g, w, &alpha, &mu, &sigma, &qz, 8, 0, 0);
    QT_CHECK_NEAR(dalpha, -7.0 + 13.0 / 60.0, 1e-5);
    quant_weight_backward_cpu(dw, NULL, g, w, &alpha, &mu, &sigma, &qz, 8, 0, 0);
    QT_CHECK(dw[0] == 0.5f);

    /* 2-bit weights: ternary {-1, 0, 1} with thresholds at +-0.5 */
    QT_CHECK(qt_apot_quantizer_init(&qz, QT_SCHEME_APOT, 2, 1) == 0);
    const float alpha2 = 2.5f; /* x = z / 2.5 = .6, .4, .2, 0, 0, -.2, -.4, -.6 */
    quant_weight_forward_cpu(wq, &mu, &sigma, w, &alpha2, &qz, 8);
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
    quant_weight_forward_cpu(wq, &mu, &sigma, c, &alpha, &qz, 4);
    for (int i = 0; i < 4; i++)
        QT_CHECK(wq[i] == 0.0f);
    /* NaN weights show */
    const float bad[3] = {1.0f, NAN, 2.0f};
    quant_weight_forward_cpu(wq, &mu, &sigma, bad, &alpha, &qz, 3);
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
                    quant_weight_forward_cpu(y, &mu, &sigma, w, &alpha, &qz, n);
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
                    quant_weight_backward_cpu(d1, &da1, g, w, &alpha, &mu, &sigma, &qz, n, 0, 0);
                else
                    quant_act_backward_cpu(d1, &da1, g, w, &alpha, &qz, n, 0, 0);
                omp_set_num_threads(3);
                if (kind == 0)
                    quant_weight_backward_cpu(d, &da3, g, w, &alpha, &mu, &sigma, &qz, n, 0, 0);
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
                    const float dx = kind == 0 ? qt_apot_weight_dx(g[i], sigma)
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

static int run_reference_case(const char *dir, const char *name, const char *kind,
                              const char *scheme, int bits, int is_signed)
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
    for (int k = 0; k < NPY_N && !rc; k++) {
        const int64_t want =
            (k == NPY_ALPHA || k == NPY_DALPHA || k == NPY_MU || k == NPY_SIGMA || k == NPY_M) ? 1
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
        float dalpha = 0, mu = 0, sigma = 0;
        if (!rc && is_weight) {
            quant_weight_forward_cpu(y, &mu, &sigma, v[NPY_X], v[NPY_ALPHA], &qz, n);
            quant_weight_backward_cpu(dx, &dalpha, v[NPY_G], v[NPY_X], v[NPY_ALPHA], &mu, &sigma,
                                      &qz, n, 0, 0);
            if (!(fabs(mu - v[NPY_MU][0]) <= 1e-6 * fabs(v[NPY_MU][0])) ||
                !(fabs(sigma - v[NPY_SIGMA][0]) <= 1e-6 * fabs(v[NPY_SIGMA][0])))
                rc = qt_test_fail("%s: mu, sigma = %.9g, %.9g; reference %.9g, %.9g", name, mu,
                                  sigma, v[NPY_MU][0], v[NPY_SIGMA][0]);
        } else if (!rc) {
            quant_act_forward_cpu(y, v[NPY_X], v[NPY_ALPHA], &qz, n);
            quant_act_backward_cpu(dx, &dalpha, v[NPY_G], v[NPY_X], v[NPY_ALPHA], &qz, n, 0, 0);
        }
        if (!rc) rc = compare(name, "y", y, v[NPY_Y], v[NPY_X], n, 1e-6, 0.0);
        if (!rc) rc = compare(name, "dx", dx, v[NPY_DX], v[NPY_X], n, 1e-5, 0.0);
        if (!rc) {
            /* tolerance: 1e-5 relative, with a floor for a sum that cancels to near 0 */
            double gabs = 0;
            for (int64_t i = 0; i < n; i++)
                gabs += fabs(v[NPY_G][i]);
            const double ref = v[NPY_DALPHA][0];
            if (!(fabs(dalpha - ref) <= 1e-5 * fabs(ref) + 1e-9 * gabs))
                rc = qt_test_fail("%s: dalpha = %.9g, reference %.9g", name, dalpha, ref);
        }
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
    while (!rc && fgets(line, sizeof line, f)) {
        char name[128], kind[32], scheme[32];
        int bits, sg;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "%127s %31s %31s %d %d", name, kind, scheme, &bits, &sg) != 5) {
            rc = qt_test_fail("%s: bad line: %s", path, line);
            break;
        }
        rc = run_reference_case(dir, name, kind, scheme, bits, sg);
        if (rc)
            qt_test_fail("case %s (%s %s bits %d signed %d) failed", name, kind, scheme, bits, sg);
        ncases++;
    }
    fclose(f);
    if (rc) return rc;
    if (ncases == 0) return qt_test_fail("%s lists no cases", path);
    printf("    apot_pytorch_reference: checked %d cases\n", ncases);
    return 0;
}
