/* Optimizer updates on the CPU. */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* One step of PyTorch's SGD (dampening 0) on n parameters:
 *   g = grad (* PSGD factor) + wd * p;  buf = first ? g : momentum * buf + g;
 *   p -= lr * (nesterov ? g + momentum * buf : buf).
 * With momentum 0, buf is not touched (may be NULL); with clamp, p is then clamped to
 * [clamp[0], clamp[1]]. */
QT_CPU_CLONES void sgd_update_cpu(float *p, float *buf, const float *grad, int64_t n, float lr,
                                  float momentum, float wd, int nesterov, int first,
                                  const struct qt_psgd_grid *ps, const float *clamp)
{
    const float delta = ps ? ps->delta : 0.0f, L = ps ? ps->L : 0.0f, lam = ps ? ps->lambda : 0.0f;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (ps) g *= qt_psgd_factor(p[i], delta, L, lam);
        g += wd * p[i];
        if (momentum != 0.0f) {
            const float bnew = first ? g : momentum * buf[i] + g;
            buf[i] = bnew;
            g = nesterov ? g + momentum * bnew : bnew;
        }
        p[i] -= lr * g;
    }
    if (clamp) {
        const float lo = clamp[0], hi = clamp[1];
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            p[i] = p[i] < lo ? lo : p[i] > hi ? hi : p[i];
    }
}

float psgd_range_cpu(float *range, const float *p, int64_t n, int first, int L)
{
    float lo = INFINITY, hi = -INFINITY;
#pragma omp parallel for reduction(min : lo) reduction(max : hi) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        lo = p[i] < lo ? p[i] : lo;
        hi = p[i] > hi ? p[i] : hi;
    }
    return qt_psgd_range_step(range, lo, hi, first, L);
}
