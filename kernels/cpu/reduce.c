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
