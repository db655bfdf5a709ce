/* Reference constant Pad, forward and backward, element by element: each output element's
 * source (qt_pad_source) or each input element's image (qt_pad_target). */
#include <stddef.h>

#include "kernels/ref/ref.h"

static int64_t count(const int64_t *shape, const int64_t *begin, const int64_t *end, int nd)
{
    int64_t n = 1;
    for (int k = 0; k < nd; k++) n *= shape[k] + (begin ? begin[k] + end[k] : 0);
    return n;
}

void pad_forward_ref(float *y, const float *x, const struct qt_pad_desc *d)
{
    const int64_t n = count(d->shape, d->begin, d->end, d->ndim);
    for (int64_t o = 0; o < n; o++) {
        const int64_t s = qt_pad_source(d, o);
        y[o] = s >= 0 ? x[s] : d->value;
    }
}

void pad_backward_ref(float *dx, const float *dy, const struct qt_pad_desc *d, int acc)
{
    const int64_t n = count(d->shape, NULL, NULL, d->ndim);
    for (int64_t i = 0; i < n; i++) {
        const int64_t t = qt_pad_target(d, i);
        const float g = t >= 0 ? dy[t] : 0.0f;
        dx[i] = acc ? dx[i] + g : g;
    }
}
