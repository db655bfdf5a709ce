/* BatchNormalization on the CPU: inference form (one multiply-add per element with factors
 * folded from the running statistics), training forward with batch statistics, backward. */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

QT_CPU_CLONES void batchnorm_infer_forward_cpu(float *y, const float *x, const float *scale,
                                               const float *bias, const float *mean,
                                               const float *var, float eps, int64_t n, int64_t c,
                                               int64_t hw)
{
    const int64_t planes = n * c;
#pragma omp parallel for schedule(static) if (planes * hw > 32768)
    for (int64_t p = 0; p < planes; p++) {
        const int64_t ch = p % c;
        const float a = scale[ch] / sqrtf(var[ch] + eps);
        const float b = bias[ch] - mean[ch] * a;
        const float *xp = x + p * hw;
        float *yp = y + p * hw;
#pragma omp simd
        for (int64_t q = 0; q < hw; q++)
            yp[q] = xp[q] * a + b;
    }
}

/* The batch mean of channel ch of x [n, c, hw]: per-image float sums added in double. */
static double channel_mean(const float *x, int64_t n, int64_t c, int64_t hw, int64_t ch)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *xp = x + (i * c + ch) * hw;
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (int64_t q = 0; q < hw; q++)
            part += xp[q];
        s += part;
    }
    const int64_t m = n * hw;
    return m > 0 ? s / (double)m : 0.0;
}

/* Training forward over [n, c, hw]: batch mean and biased variance per channel (summed in
 * double), y = (x - mean) * invstd * scale + bias. save_mean/save_invstd receive the batch
 * statistics for backward; run_mean/run_var are updated in place with PyTorch's rule:
 * r = (1 - momentum) * r + momentum * stat, the variance unbiased (times m / (m - 1)). */
QT_CPU_CLONES void batchnorm_train_forward_cpu(float *y, float *save_mean, float *save_invstd,
                                               float *run_mean, float *run_var, const float *x,
                                               const float *scale, const float *bias, float eps,
                                               float momentum, int64_t n, int64_t c, int64_t hw)
{
    const int64_t m = n * hw;
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        const double mean = channel_mean(x, n, c, hw, ch);
        double ss = 0.0;
        const float mf = (float)mean;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t q = 0; q < hw; q++)
                part += (xp[q] - mf) * (xp[q] - mf);
            ss += part;
        }
        const double var = m ? ss / m : 0.0;
        const float invstd = (float)(1.0 / sqrt(var + eps));
        save_mean[ch] = (float)mean;
        save_invstd[ch] = invstd;
        run_mean[ch] = (1.0f - momentum) * run_mean[ch] + momentum * (float)mean;
        const double unbiased = m > 1 ? var * m / (m - 1) : var;
        run_var[ch] = (1.0f - momentum) * run_var[ch] + momentum * (float)unbiased;
        /* Subtract before scaling: x * a + (bias - mean * a) cancels catastrophically where
         * |mean| is large against the spread (a channel of nearly equal values in a batch of
         * 1x1 images). The float mean's rounding error dm goes into the offset. */
        const float dm = (float)(mean - (double)mf);
        const float a = scale[ch] * invstd, b = bias[ch] - dm * a;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float *yp = y + (i * c + ch) * hw;
#pragma omp simd
            for (int64_t q = 0; q < hw; q++)
                yp[q] = (xp[q] - mf) * a + b;
        }
    }
}

/* Backward of the training forward: with xhat = (x - mean) * invstd and m = n * hw,
 * dbias = sum dy, dscale = sum dy * xhat, dx = scale * invstd * (dy - dbias/m - xhat * dscale/m).
 * dx, dscale, dbias (any may be NULL): assigned (=) when their acc flag is 0, else (+=). */
QT_CPU_CLONES void batchnorm_backward_cpu(float *dx, float *dscale, float *dbias, const float *dy,
                                          const float *x, const float *scale,
                                          const float *save_mean, const float *save_invstd,
                                          int64_t n, int64_t c, int64_t hw, int acc_x,
                                          int acc_scale, int acc_bias)
{
    const int64_t m = n * hw;
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        const float mean = save_mean[ch], invstd = save_invstd[ch];
        double sdy = 0.0, sdyx = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw, *dyp = dy + (i * c + ch) * hw;
            float p1 = 0.0f, p2 = 0.0f;
#pragma omp simd reduction(+ : p1, p2)
            for (int64_t q = 0; q < hw; q++) {
                p1 += dyp[q];
                p2 += dyp[q] * (xp[q] - mean);
            }
            sdy += p1;
            sdyx += p2;
        }
        const double dsc = sdyx * invstd;
        if (dbias) dbias[ch] = (acc_bias ? dbias[ch] : 0.0f) + (float)sdy;
        if (dscale) dscale[ch] = (acc_scale ? dscale[ch] : 0.0f) + (float)dsc;
        if (!dx) continue;
        const float k = scale[ch] * invstd;
        const float mdy = (float)(sdy / m), mdx = (float)(dsc / m) * invstd;
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw, *dyp = dy + (i * c + ch) * hw;
            float *dxp = dx + (i * c + ch) * hw;
#pragma omp simd
            for (int64_t q = 0; q < hw; q++) {
                const float g = k * (dyp[q] - mdy - (xp[q] - mean) * mdx);
                dxp[q] = acc_x ? dxp[q] + g : g;
            }
        }
    }
}

void channel_moments_cpu(double *s1, double *s2, const float *x, int64_t n, int64_t c, int64_t hw)
{
#pragma omp parallel for schedule(static) if (n * c * hw > 65536)
    for (int64_t ch = 0; ch < c; ch++) {
        double a = 0, q = 0;
        for (int64_t i = 0; i < n; i++) {
            const float *p = x + (i * c + ch) * hw;
            for (int64_t j = 0; j < hw; j++) {
                a += p[j];
                q += (double)p[j] * p[j];
            }
        }
        s1[ch] += a;
        s2[ch] += q;
    }
}
