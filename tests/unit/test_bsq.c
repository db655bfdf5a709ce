/* BSQ's bit planes on the cases of BSQ_PSGD.md section 3, worked by hand: encoding (3.1),
 * re-quantization of continuous planes (3.2), precision growth (3.3), the adjustment (3.4),
 * the regularizer (3.5) and half-to-even rounding (3.9). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/bsq.h"
#include "harness.h"

/* The layer's bits as "MSB..LSB" strings per weight, for p or n. */
static void digits(const struct qt_bsq_layer *l, const float *planes, int64_t j, char *out)
{
    for (int b = 0; b < l->N; b++)
        out[b] = planes[(int64_t)b * l->count + j] != 0 ? '1' : '0';
    out[l->N] = 0;
}

static int check_digits(const struct qt_bsq_layer *l, const char *const *p, const char *const *n)
{
    char buf[16];
    for (int64_t j = 0; j < l->count; j++) {
        digits(l, l->p, j, buf);
        if (strcmp(buf, p[j])) return qt_test_fail("weight %lld: p %s, expected %s", (long long)j, buf, p[j]);
        digits(l, l->n, j, buf);
        if (strcmp(buf, n[j])) return qt_test_fail("weight %lld: n %s, expected %s", (long long)j, buf, n[j]);
    }
    return 0;
}

/* A layer of N planes holding the signed integers q (scale s). */
static int from_ints(struct qt_bsq_layer *l, const int *q, int64_t count, int N, float s)
{
    float zero[8] = {0};
    if (count > 8 || qt_bsq_encode(l, zero, count, N)) return -1;
    l->s = s;
    for (int64_t j = 0; j < count; j++)
        for (int b = 0; b < N; b++) {
            const int bit = (abs(q[j]) >> (N - 1 - b)) & 1;
            (q[j] > 0 ? l->p : l->n)[(int64_t)b * count + j] = (float)bit;
        }
    return 0;
}

QT_TEST(bsq_encode)
{
    const float w[4] = {0.7f, -0.3f, 0.5f, 0.04f};
    struct qt_bsq_layer l;
    QT_CHECK(qt_bsq_encode(&l, w, 4, 3) == 0);
    QT_CHECK(l.N == 3 && l.s == 0.7f);
    const char *p[4] = {"111", "000", "101", "000"}, *n[4] = {"000", "011", "000", "000"};
    int fail = check_digits(&l, p, n);
    float got[4];
    qt_bsq_weights(&l, got);
    const float want[4] = {0.7f, -0.3f, 0.5f, 0.0f};
    for (int j = 0; j < 4 && !fail; j++)
        if (!(fabsf(got[j] - want[j]) <= 1e-6f))
            fail = qt_test_fail("weight %d: %g, expected %g", j, got[j], want[j]);
    qt_bsq_free(&l);
    /* 8 planes, the start BSQ trains from: the weights on the 255-step grid of max |w| */
    const float w8[3] = {1.0f, -0.5f, 0.25f};
    QT_CHECK(qt_bsq_encode(&l, w8, 3, 8) == 0);
    qt_bsq_weights(&l, got);
    QT_CHECK_NEAR(got[0], 1.0, 1e-7);
    QT_CHECK_NEAR(got[1], -128.0 / 255.0, 1e-7); /* round(127.5) = 128: half to even */
    QT_CHECK_NEAR(got[2], 64.0 / 255.0, 1e-7);   /* round(63.75) */
    qt_bsq_free(&l);
    return fail;
}

QT_TEST(bsq_requant_continuous_bits)
{
    /* p = (0.6, 1.2, 0.3), n = 0: v = 5.1, W = 5s/7, Requant gives 101 */
    struct qt_bsq_layer l;
    const float one = 1.0f;
    QT_CHECK(qt_bsq_encode(&l, &one, 1, 3) == 0);
    l.p[0] = 0.6f, l.p[1] = 1.2f, l.p[2] = 0.3f;
    float w;
    qt_bsq_weights(&l, &w);
    QT_CHECK_NEAR(w, 5.0 / 7.0, 1e-6);
    QT_CHECK(qt_bsq_requant(&l, QT_BSQ_MAX_BITS) == 0);
    const char *p[1] = {"101"}, *n[1] = {"000"};
    int fail = check_digits(&l, p, n);
    qt_bsq_weights(&l, &w);
    if (!fail && !(fabsf(w - 5.0f / 7.0f) <= 1e-6f)) fail = qt_test_fail("after requant %g", w);
    qt_bsq_free(&l);
    return fail;
}

QT_TEST(bsq_precision_growth)
{
    /* p = (2, 1, 0): c = 10/7, the forward clamps to 1 (W = s); Requant: N = 4, 1010,
     * s' = 15 s / 7, W = 10 s / 7 */
    struct qt_bsq_layer l;
    const float one = 1.0f;
    QT_CHECK(qt_bsq_encode(&l, &one, 1, 3) == 0);
    l.p[0] = 2.0f, l.p[1] = 1.0f, l.p[2] = 0.0f;
    float w;
    qt_bsq_weights(&l, &w);
    QT_CHECK_NEAR(w, 1.0, 1e-7);
    QT_CHECK(qt_bsq_requant(&l, QT_BSQ_MAX_BITS) == 0);
    QT_CHECK(l.N == 4);
    QT_CHECK_NEAR(l.s, 15.0 / 7.0, 1e-6);
    const char *p[1] = {"1010"}, *n[1] = {"0000"};
    int fail = check_digits(&l, p, n);
    qt_bsq_weights(&l, &w);
    if (!fail && !(fabsf(w - 10.0f / 7.0f) <= 1e-6f)) fail = qt_test_fail("after growth %g", w);
    qt_bsq_free(&l);
    return fail;
}

QT_TEST(bsq_adjust)
{
    /* N = 4, +6 (0110) and -2 (0010), s = 1: N = 2, s = 0.4, bits 11 and -01; the weights
     * 0.4 and -2/15 unchanged */
    struct qt_bsq_layer l;
    const int q0[2] = {6, -2};
    QT_CHECK(from_ints(&l, q0, 2, 4, 1.0f) == 0);
    const char *p0[2] = {"0110", "0000"}, *n0[2] = {"0000", "0010"};
    int fail = check_digits(&l, p0, n0);
    qt_bsq_adjust(&l, 0.0, 0);
    QT_CHECK(l.N == 2);
    QT_CHECK_NEAR(l.s, 0.4, 1e-7);
    const char *p[2] = {"11", "00"}, *n[2] = {"00", "01"};
    if (!fail) fail = check_digits(&l, p, n);
    float w[2];
    qt_bsq_weights(&l, w);
    if (!fail && !(fabsf(w[0] - 0.4f) <= 1e-6f && fabsf(w[1] + 2.0f / 15.0f) <= 1e-6f))
        fail = qt_test_fail("after adjust %g %g", w[0], w[1]);
    /* one plane with no bit set, when asked: N = 0 */
    const float z[2] = {0.0f, 0.0f};
    struct qt_bsq_layer e;
    QT_CHECK(qt_bsq_encode(&e, z, 2, 3) == 0);
    qt_bsq_adjust(&e, 0.0, 1);
    QT_CHECK(e.N == 0);
    qt_bsq_free(&e);
    qt_bsq_free(&l);
    return fail;
}

QT_TEST(bsq_regularizer)
{
    /* A: 2 weights, N = 2, bits 10 and 01; B: 3 weights, N = 1, +1 +1 -1.
     * R = 4 * 2 + 3 * sqrt(3) = 13.19615; TP = 5; alpha 0.01: 0.0263923; Comp = 160 / 7 */
    struct qt_bsq_layer a, b;
    const int qa[2] = {2, 1}, qb[3] = {1, 1, -1};
    QT_CHECK(from_ints(&a, qa, 2, 2, 1.0f) == 0 && from_ints(&b, qb, 3, 1, 1.0f) == 0);
    const char *pa[2] = {"10", "01"}, *na[2] = {"00", "00"};
    int fail = check_digits(&a, pa, na);
    const double r = qt_bsq_group_lasso(&a) + qt_bsq_group_lasso(&b);
    QT_CHECK_NEAR(r, 13.19615, 1e-5);
    QT_CHECK_NEAR(0.01 * r / 5, 0.0263923, 1e-7);
    QT_CHECK_NEAR(32.0 * 5 / (2 * 2 + 3 * 1), 22.857, 1e-3);
    qt_bsq_free(&a);
    qt_bsq_free(&b);
    return fail;
}

QT_TEST(bsq_round_half_even)
{
    /* round(10.5) = 10 (torch.round), not 11 */
    QT_CHECK(nearbyintf(10.5f) == 10.0f);
    QT_CHECK_NEAR(qt_bsq_unit(10.5f, 4), 10.0 / 15.0, 1e-7);
    QT_CHECK_NEAR(qt_bsq_unit(-11.5f, 4), -12.0 / 15.0, 1e-7);
    QT_CHECK_NEAR(qt_bsq_unit(20.0f, 4), 1.0, 1e-7); /* clamped at k */
    return 0;
}

/* The straight-through gradients of the CPU kernel against finite differences: of the
 * forward itself for the scale (W is linear in s), and of the surrogate that BSQ's
 * straight-through estimator differentiates, s * v / k (clamp and rounding as the identity),
 * for the planes; dL/dW = g fixed, L = sum g W. */
#include "../../kernels/cpu/cpu.h"

QT_TEST(bsq_gradients_finite_differences)
{
    enum { N = 4, CNT = 6 };
    float p[N * CNT], n[N * CNT], g[CNT], w[CNT], dp[N * CNT], dn[N * CNT], ds = 0;
    unsigned seed = 7;
    for (int i = 0; i < N * CNT; i++) {
        p[i] = 0.1f + 1.7f * (float)(rand_r(&seed) % 1000) / 1000.0f;
        n[i] = 0.1f + 1.7f * (float)(rand_r(&seed) % 1000) / 1000.0f;
    }
    for (int j = 0; j < CNT; j++)
        g[j] = (float)(rand_r(&seed) % 2000) / 1000.0f - 1.0f;
    const float s = 0.37f;
    bitquant_forward_cpu(w, p, n, &s, N, CNT);
    bitquant_backward_cpu(dp, dn, &ds, g, p, n, &s, N, CNT, 0, 0, 0);
    /* scale: (L(s + h) - L(s - h)) / 2h of the real forward */
    const double h = 1e-3;
    float wp[CNT], wm[CNT];
    const float sp = (float)(s + h), sm = (float)(s - h);
    bitquant_forward_cpu(wp, p, n, &sp, N, CNT);
    bitquant_forward_cpu(wm, p, n, &sm, N, CNT);
    double fd = 0;
    for (int j = 0; j < CNT; j++)
        fd += (double)g[j] * ((double)wp[j] - wm[j]) / ((double)sp - sm);
    QT_CHECK_NEAR(ds, fd, 1e-4 * (1 + fabs(fd)));
    /* planes: the surrogate s * v / k, in double */
    const double k = (1 << N) - 1;
    for (int b = 0; b < N; b++)
        for (int j = 0; j < CNT; j++) {
            double up = 0, dn_ = 0;
            for (int sign = -1; sign <= 1; sign += 2) {
                double L = 0, Ln = 0;
                for (int jj = 0; jj < CNT; jj++) {
                    double v = 0, vn = 0;
                    for (int bb = 0; bb < N; bb++) {
                        const double pp = p[bb * CNT + jj] + (bb == b && jj == j ? sign * h : 0);
                        const double nn = n[bb * CNT + jj] + (bb == b && jj == j ? sign * h : 0);
                        v += (pp - n[bb * CNT + jj]) * (1 << (N - 1 - bb));
                        vn += (p[bb * CNT + jj] - nn) * (1 << (N - 1 - bb));
                    }
                    L += g[jj] * s * v / k;
                    Ln += g[jj] * s * vn / k;
                }
                up += sign * L / (2 * h);
                dn_ += sign * Ln / (2 * h);
            }
            QT_CHECK_NEAR(dp[b * CNT + j], up, 1e-5);
            QT_CHECK_NEAR(dn[b * CNT + j], dn_, 1e-5);
        }
    /* accumulation adds to what is there */
    float dp2[N * CNT];
    for (int i = 0; i < N * CNT; i++)
        dp2[i] = 1.0f;
    bitquant_backward_cpu(dp2, NULL, NULL, g, p, n, &s, N, CNT, 1, 0, 0);
    for (int i = 0; i < N * CNT; i++)
        QT_CHECK_NEAR(dp2[i], 1.0 + dp[i], 1e-6);
    return 0;
}
