/* BSQ's bit planes to weights on the CPU, forward and backward (kernels/common/bsq.h). */
#include <math.h>

#include "kernels/common/bsq.h"

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* v_j = sum_b (p_b - n_b) 2^(N-1-b), planes most significant first. */
static inline float plane_sum(const float *p, const float *n, int N, int64_t cnt, int64_t j)
{
    float v = 0.0f;
    for (int b = 0; b < N; b++)
        v += (p[b * cnt + j] - n[b * cnt + j]) * (float)(1 << (N - 1 - b));
    return v;
}

QT_CPU_CLONES void bitquant_forward_cpu(float *w, const float *p, const float *n, const float *s,
                                        int N, int64_t cnt)
{
    const float sc = s[0];
#pragma omp parallel for schedule(static) if (cnt > 65536)
    for (int64_t j = 0; j < cnt; j++)
        w[j] = sc * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
}

QT_CPU_CLONES void bitquant_backward_cpu(float *dp, float *dn, float *ds, const float *dw,
                                         const float *p, const float *n, const float *s, int N,
                                         int64_t cnt, int acc_p, int acc_n, int acc_s)
{
    const float sc = s[0];
    for (int b = 0; b < N; b++) {
        const float g = qt_bsq_plane_grad(sc, b, N);
        float *pp = dp ? dp + b * cnt : NULL, *nn = dn ? dn + b * cnt : NULL;
#pragma omp parallel for simd schedule(static) if (cnt > 65536)
        for (int64_t j = 0; j < cnt; j++) {
            if (pp) pp[j] = (acc_p ? pp[j] : 0.0f) + g * dw[j];
            if (nn) nn[j] = (acc_n ? nn[j] : 0.0f) - g * dw[j];
        }
    }
    if (ds) {
        double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (cnt > 65536)
        for (int64_t j = 0; j < cnt; j++)
            sum += (double)dw[j] * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
        ds[0] = (acc_s ? ds[0] : 0.0f) + (float)sum;
    }
}

/* BSQ's group-Lasso regularizer coef * sum_b sqrt(1e-8 + sum_j (p_bj^2 + n_bj^2)) over the
 * planes of one layer: its gradient, coef * x / sqrt(...), is added to dp and dn. */
void bitquant_lasso_cpu(float *dp, float *dn, const float *p, const float *n, int N, int64_t cnt,
                        float coef)
{
    for (int b = 0; b < N; b++) {
        const float *pp = p + b * cnt, *nn = n + b * cnt;
        double sq = 0;
#pragma omp parallel for reduction(+ : sq) schedule(static) if (cnt > 65536)
        for (int64_t j = 0; j < cnt; j++)
            sq += (double)pp[j] * pp[j] + (double)nn[j] * nn[j];
        const float f = (float)(coef / sqrt(1e-8 + sq));
#pragma omp parallel for simd schedule(static) if (cnt > 65536)
        for (int64_t j = 0; j < cnt; j++) {
            dp[b * cnt + j] += f * pp[j];
            dn[b * cnt + j] += f * nn[j];
        }
    }
}
