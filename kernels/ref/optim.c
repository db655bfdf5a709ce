/* Reference optimizer update: PyTorch's SGD, one parameter at a time, in float as the
 * parameters themselves are stored. */
#include "kernels/ref/ref.h"

void sgd_update_ref(float *p, float *buf, const float *grad, int64_t n, float lr, float momentum,
                    float wd, int nesterov, int first)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] + wd * p[i]; /* weight decay joins the gradient */
        if (momentum != 0.0f) {
            buf[i] = first ? g : momentum * buf[i] + g; /* the momentum buffer */
            g = nesterov ? g + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * g;
    }
}
