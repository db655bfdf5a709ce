/* Reductions on the CPU: mean over the middle dimension of [outer, r, inner]. */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

QT_CPU_CLONES void reduce_mean_forward_cpu(float *y, const float *x, int64_t outer, int64_t r,
                                           int64_t inner)
{
    const float inv = r > 0 ? 1.0f / (float)r : 0.0f;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer * r > 32768)
        for (int64_t o = 0; o < outer; o++) {
            const float *xr = x + o * r;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < r; i++)
                s += xr[i];
            y[o] = s * inv;
        }
        return;
    }
#pragma omp parallel for schedule(static) if (outer * r * inner > 32768)
    for (int64_t o = 0; o < outer; o++) {
        float *yo = y + o * inner;
        const float *xo = x + o * r * inner;
#pragma omp simd
        for (int64_t j = 0; j < inner; j++)
            yo[j] = 0.0f;
        for (int64_t i = 0; i < r; i++) {
            const float *xr = xo + i * inner;
#pragma omp simd
            for (int64_t j = 0; j < inner; j++)
                yo[j] += xr[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < inner; j++)
            yo[j] *= inv;
    }
}

/* dx = dy / (elements averaged), each dy read at the output element its input belongs to:
 * the output's strides over the input's dims are 0 along reduced axes. Rows of the input's
 * last dim are spread over the threads. */
QT_CPU_CLONES void reduce_mean_backward_cpu(float *dx, const float *dy,
                                            const struct qt_reduce_desc *r, int acc)
{
    int64_t ost[QT_DESC_MAX_DIMS], s = 1, count = 1, total = 1;
    for (int i = r->ndim - 1; i >= 0; i--) {
        ost[i] = r->red[i] ? 0 : s;
        s *= r->red[i] ? 1 : r->shape[i];
        count *= r->red[i] ? r->shape[i] : 1;
        total *= r->shape[i];
    }
    if (total == 0) return;
    const float inv = 1.0f / (float)count;
    const int64_t len = r->ndim ? r->shape[r->ndim - 1] : 1, st = r->ndim ? ost[r->ndim - 1] : 0;
    const int64_t rows = total / len;
#pragma omp parallel for schedule(static) if (total > 32768)
    for (int64_t row = 0; row < rows; row++) {
        int64_t off = 0, rest = row;
        for (int i = r->ndim - 2; i >= 0; i--) {
            off += (rest % r->shape[i]) * ost[i];
            rest /= r->shape[i];
        }
        const float *g = dy + off;
        float *d = dx + row * len;
        for (int64_t j = 0; j < len; j++) {
            const float v = g[j * st] * inv;
            d[j] = acc ? d[j] + v : v;
        }
    }
}
