/* Reference optimizer update: PyTorch's SGD, one parameter at a time, in float as the
 * parameters themselves are stored; PSGD scales the gradient first. */
#include "kernels/ref/ref.h"

void sgd_update_ref(float *p, float *buf, const float *grad, int64_t n, float lr, float momentum,
                    float wd, int nesterov, int first, const struct qt_psgd_grid *ps,
                    const float *clamp)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (ps) g *= qt_psgd_factor(p[i], ps->delta, ps->L, ps->lambda); /* PSGD's scaling */
        g += wd * p[i]; /* weight decay joins the gradient */
        if (momentum != 0.0f) {
            buf[i] = first ? g : momentum * buf[i] + g; /* the momentum buffer */
            g = nesterov ? g + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * g;
        if (clamp) p[i] = p[i] < clamp[0] ? clamp[0] : p[i] > clamp[1] ? clamp[1] : p[i];
    }
}

/* The tensor's smallest and largest value feed the range state. */
float psgd_range_ref(float *range, const float *p, int64_t n, int first, int L)
{
    float lo = p[0], hi = p[0];
    for (int64_t i = 1; i < n; i++) {
        if (p[i] < lo) lo = p[i];
        if (p[i] > hi) hi = p[i];
    }
    return qt_psgd_range_step(range, lo, hi, first, L);
}
