/* Reference BSQ bit planes: one weight at a time, the formulas of kernels/common/bsq.h. */
#include <math.h>

#include "kernels/common/bsq.h"

#include "kernels/ref/ref.h"

/* The integer the planes of weight j hold: sum_b (p_b - n_b) 2^(N-1-b), MSB first. */
static float plane_sum(const float *p, const float *n, int N, int64_t cnt, int64_t j)
{
    float v = 0.0f;
    for (int b = 0; b < N; b++)
        v += (p[b * cnt + j] - n[b * cnt + j]) * (float)(1 << (N - 1 - b));
    return v;
}

void bitquant_forward_ref(float *w, const float *p, const float *n, const float *s, int N,
                          int64_t cnt)
{
    for (int64_t j = 0; j < cnt; j++)
        w[j] = s[0] * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
}

/* Straight through the clamp and the rounding: dp_b = s 2^(N-1-b) / k dw = -dn_b; the scale's
 * gradient sums dw * W / s (in double). */
void bitquant_backward_ref(float *dp, float *dn, float *ds, const float *dw, const float *p,
                           const float *n, const float *s, int N, int64_t cnt, int acc_p,
                           int acc_n, int acc_s)
{
    for (int b = 0; b < N; b++)
        for (int64_t j = 0; j < cnt; j++) {
            const float g = qt_bsq_plane_grad(s[0], b, N) * dw[j];
            if (dp) dp[b * cnt + j] = (acc_p ? dp[b * cnt + j] : 0.0f) + g;
            if (dn) dn[b * cnt + j] = (acc_n ? dn[b * cnt + j] : 0.0f) - g;
        }
    if (ds) {
        double sum = 0;
        for (int64_t j = 0; j < cnt; j++)
            sum += (double)dw[j] * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
        ds[0] = (acc_s ? ds[0] : 0.0f) + (float)sum;
    }
}

/* The group-Lasso term's gradient: each plane's group norm over both signs (in double), then
 * coef * x / norm added to the plane's gradients. */
void bitquant_lasso_ref(float *dp, float *dn, const float *p, const float *n, int N, int64_t cnt,
                        float coef)
{
    for (int b = 0; b < N; b++) {
        double sq = 0;
        for (int64_t j = 0; j < cnt; j++)
            sq += (double)p[b * cnt + j] * p[b * cnt + j] + (double)n[b * cnt + j] * n[b * cnt + j];
        const float f = (float)(coef / sqrt(1e-8 + sq));
        for (int64_t j = 0; j < cnt; j++) {
            dp[b * cnt + j] += f * p[b * cnt + j];
            dn[b * cnt + j] += f * n[b * cnt + j];
        }
    }
}
