/* Optimizer updates on the CPU. */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* One step of PyTorch's SGD (dampening 0) on n parameters:
 *   g = grad + wd * p;  buf = first ? g : momentum * buf + g;
 *   p -= lr * (nesterov ? g + momentum * buf : buf).
 * With momentum 0, buf is not touched (may be NULL). */
QT_CPU_CLONES void sgd_update_cpu(float *p, float *buf, const float *grad, int64_t n, float lr,
                                  float momentum, float wd, int nesterov, int first)
{
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] + wd * p[i];
        if (momentum != 0.0f) {
            const float bnew = first ? g : momentum * buf[i] + g;
            buf[i] = bnew;
            g = nesterov ? g + momentum * bnew : bnew;
        }
        p[i] -= lr * g;
    }
}
