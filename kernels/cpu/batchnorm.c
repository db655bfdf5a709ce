/* BatchNormalization on the CPU in inference form: one multiply-add per element with the
 * per-channel factors folded from the running statistics. */
#include <math.h>

#include "kernels/cpu/cpu.h"

void batchnorm_infer_forward_cpu(float *y, const float *x, const float *scale, const float *bias,
                                 const float *mean, const float *var, float eps, int64_t n,
                                 int64_t c, int64_t hw)
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
        for (int64_t q = 0; q < hw; q++) yp[q] = xp[q] * a + b;
    }
}
