/* Reference Transpose, forward and backward: each output element's input offset found by
 * splitting its index into coordinates (qt_transpose_offset). */
#include "kernels/ref/ref.h"

static int64_t count(const struct qt_transpose_desc *d)
{
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++)
        n *= d->shape[i];
    return n;
}

void transpose_forward_ref(float *y, const float *x, const struct qt_transpose_desc *d)
{
    const int64_t n = count(d);
    for (int64_t o = 0; o < n; o++)
        y[o] = x[qt_transpose_offset(d, o)];
}

void transpose_backward_ref(float *dx, const float *dy, const struct qt_transpose_desc *d, int acc)
{
    const int64_t n = count(d);
    for (int64_t o = 0; o < n; o++) {
        float *t = &dx[qt_transpose_offset(d, o)];
        *t = acc ? *t + dy[o] : dy[o];
    }
}
