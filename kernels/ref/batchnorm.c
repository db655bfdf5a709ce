/* Reference BatchNormalization over [n, c, hw]: inference with running statistics, training
 * with batch statistics (PyTorch's running-statistics update), and its backward; per-channel
 * sums in double. */
#include <math.h>

#include "kernels/ref/ref.h"

/* Offset of element (i, ch, q) of [n, c, hw]. */
static int64_t at(int64_t i, int64_t ch, int64_t q, int64_t c, int64_t hw)
{
    return (i * c + ch) * hw + q;
}

void batchnorm_infer_forward_ref(float *y, const float *x, const float *scale, const float *bias,
                                 const float *mean, const float *var, float eps, int64_t n,
                                 int64_t c, int64_t hw)
{
    for (int64_t ch = 0; ch < c; ch++) {
        const double invstd = 1.0 / sqrt((double)var[ch] + (double)eps);
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++) {
                const int64_t o = at(i, ch, q, c, hw);
                y[o] = (float)(((double)x[o] - mean[ch]) * invstd * scale[ch] + bias[ch]);
            }
    }
}

void batchnorm_train_forward_ref(float *y, float *save_mean, float *save_invstd, float *run_mean,
                                 float *run_var, const float *x, const float *scale,
                                 const float *bias, float eps, float momentum, int64_t n, int64_t c,
                                 int64_t hw)
{
    const int64_t m = n * hw;
    for (int64_t ch = 0; ch < c; ch++) {
        /* mu = sum x / m;  v = sum (x - mu)^2 / m (biased: the one that normalizes). */
        double s = 0.0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++)
                s += x[at(i, ch, q, c, hw)];
        const double mu = m ? s / m : 0.0;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++) {
                const double dv = x[at(i, ch, q, c, hw)] - mu;
                ss += dv * dv;
            }
        const double v = m ? ss / m : 0.0;
        const double invstd = 1.0 / sqrt(v + (double)eps);
        save_mean[ch] = (float)mu;
        save_invstd[ch] = (float)invstd;
        /* Running statistics: the new batch weighs `momentum`; the variance is unbiased. */
        const double unbiased = m > 1 ? v * m / (m - 1) : v;
        run_mean[ch] = (float)((1.0 - momentum) * run_mean[ch] + momentum * mu);
        run_var[ch] = (float)((1.0 - momentum) * run_var[ch] + momentum * unbiased);
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++) {
                const int64_t o = at(i, ch, q, c, hw);
                y[o] = (float)(((double)x[o] - mu) * invstd * scale[ch] + bias[ch]);
            }
    }
}

void batchnorm_backward_ref(float *dx, float *dscale, float *dbias, const float *dy, const float *x,
                            const float *scale, const float *save_mean, const float *save_invstd,
                            int64_t n, int64_t c, int64_t hw, int acc_x, int acc_scale,
                            int acc_bias)
{
    const int64_t m = n * hw;
    for (int64_t ch = 0; ch < c; ch++) {
        const double mu = save_mean[ch], invstd = save_invstd[ch];
        double sdy = 0.0, sdyxh = 0.0; /* sum dy, sum dy * xhat */
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++) {
                const int64_t o = at(i, ch, q, c, hw);
                sdy += dy[o];
                sdyxh += dy[o] * ((x[o] - mu) * invstd);
            }
        if (dbias) dbias[ch] = acc_bias ? dbias[ch] + (float)sdy : (float)sdy;
        if (dscale) dscale[ch] = acc_scale ? dscale[ch] + (float)sdyxh : (float)sdyxh;
        if (!dx) continue;
        for (int64_t i = 0; i < n; i++)
            for (int64_t q = 0; q < hw; q++) {
                const int64_t o = at(i, ch, q, c, hw);
                const double xhat = (x[o] - mu) * invstd;
                const double g = scale[ch] * invstd * (dy[o] - sdy / m - xhat * sdyxh / m);
                dx[o] = acc_x ? dx[o] + (float)g : (float)g;
            }
    }
}

void channel_moments_ref(double *s1, double *s2, const float *x, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t j = 0; j < hw; j++) {
                const double v = x[(i * c + ch) * hw + j];
                s1[ch] += v;
                s2[ch] += v * v;
            }
}
