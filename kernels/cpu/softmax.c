/* Softmax and log-softmax on the CPU over the middle dimension of [outer, axis, inner],
 * computed stably (the maximum is subtracted before exponentiation), forward and backward. */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

QT_CPU_CLONES void softmax_forward_cpu(float *y, const float *x, int64_t outer, int64_t axis,
                                       int64_t inner)
{
    if (axis <= 0) return;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer * axis > 32768)
        for (int64_t o = 0; o < outer; o++) {
            const float *xr = x + o * axis;
            float *yr = y + o * axis;
            float m = xr[0];
            for (int64_t i = 1; i < axis; i++)
                m = xr[i] > m ? xr[i] : m;
            double s = 0.0;
            for (int64_t i = 0; i < axis; i++) {
                yr[i] = expf(xr[i] - m);
                s += yr[i];
            }
            const float inv = (float)(1.0 / s);
#pragma omp simd
            for (int64_t i = 0; i < axis; i++)
                yr[i] *= inv;
        }
        return;
    }
    /* Strided axis: work on rows of `inner` contiguous values at a time. */
#pragma omp parallel for schedule(static) if (outer * axis * inner > 32768)
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * axis * inner;
        float *yo = y + o * axis * inner;
        for (int64_t j0 = 0; j0 < inner; j0 += 256) {
            const int64_t nj = inner - j0 < 256 ? inner - j0 : 256;
            float m[256], s[256];
            for (int64_t j = 0; j < nj; j++) {
                m[j] = xo[j0 + j];
                s[j] = 0.0f;
            }
            for (int64_t i = 1; i < axis; i++) {
                const float *xr = xo + i * inner + j0;
#pragma omp simd
                for (int64_t j = 0; j < nj; j++)
                    m[j] = xr[j] > m[j] ? xr[j] : m[j];
            }
            for (int64_t i = 0; i < axis; i++) {
                const float *xr = xo + i * inner + j0;
                float *yr = yo + i * inner + j0;
                for (int64_t j = 0; j < nj; j++) {
                    yr[j] = expf(xr[j] - m[j]);
                    s[j] += yr[j];
                }
            }
            for (int64_t j = 0; j < nj; j++)
                s[j] = 1.0f / s[j];
            for (int64_t i = 0; i < axis; i++) {
                float *yr = yo + i * inner + j0;
#pragma omp simd
                for (int64_t j = 0; j < nj; j++)
                    yr[j] *= s[j];
            }
        }
    }
}

/* dx_i = y_i (dy_i - sum_j dy_j y_j) along the axis, the sum in double. */
QT_CPU_CLONES void softmax_backward_cpu(float *dx, const float *dy, const float *y, int64_t outer,
                                        int64_t axis, int64_t inner, int acc)
{
#pragma omp parallel for schedule(static) if (outer * axis * inner > 32768)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const int64_t base = o * axis * inner + j;
            double dot = 0.0;
            for (int64_t i = 0; i < axis; i++)
                dot += (double)dy[base + i * inner] * y[base + i * inner];
            const float d = (float)dot;
            for (int64_t i = 0; i < axis; i++) {
                const int64_t k = base + i * inner;
                const float g = y[k] * (dy[k] - d);
                dx[k] = acc ? dx[k] + g : g;
            }
        }
}

/* Log-softmax: each row (o, j) of `axis` values `inner` apart, rows spread over the threads;
 * y = x - (max + log sum exp(x - max)). */
QT_CPU_CLONES void logsoftmax_forward_cpu(float *y, const float *x, int64_t outer, int64_t axis,
                                          int64_t inner)
{
    if (axis <= 0) return;
#pragma omp parallel for schedule(static) if (outer * axis * inner > 32768)
    for (int64_t row = 0; row < outer * inner; row++) {
        const int64_t start = (row / inner) * axis * inner + row % inner;
        const float *xr = x + start;
        float *yr = y + start;
        float m = xr[0];
        for (int64_t i = 1; i < axis; i++)
            m = xr[i * inner] > m ? xr[i * inner] : m;
        double s = 0.0;
        for (int64_t i = 0; i < axis; i++)
            s += expf(xr[i * inner] - m);
        const float lse = m + (float)log(s);
        for (int64_t i = 0; i < axis; i++)
            yr[i * inner] = xr[i * inner] - lse;
    }
}

/* dx = dy - exp(y) * (sum of dy over the row). */
QT_CPU_CLONES void logsoftmax_backward_cpu(float *dx, const float *dy, const float *y,
                                           int64_t outer, int64_t axis, int64_t inner, int acc)
{
#pragma omp parallel for schedule(static) if (outer * axis * inner > 32768)
    for (int64_t row = 0; row < outer * inner; row++) {
        const int64_t start = (row / inner) * axis * inner + row % inner;
        double s = 0.0;
        for (int64_t i = 0; i < axis; i++)
            s += dy[start + i * inner];
        const float sf = (float)s;
        for (int64_t i = 0; i < axis; i++) {
            const int64_t k = start + i * inner;
            const float g = dy[k] - expf(y[k]) * sf;
            dx[k] = acc ? dx[k] + g : g;
        }
    }
}
