/* CUDA constant Pad, forward and backward: each output element's source (qt_pad_source) and
 * each input element's image (qt_pad_target), as kernels/common/desc.h defines them. */
#include "common.cuh"

__global__ void k_pad_fwd(float *y, const float *x, struct qt_pad_desc d, int64_t n)
{
    QT_GRID_LOOP(o, n)
    {
        const int64_t s = qt_pad_source(&d, o);
        y[o] = s >= 0 ? x[s] : d.value;
    }
}

/* Every input element has at most one image: a gather, no collisions. */
__global__ void k_pad_bwd(float *dx, const float *dy, struct qt_pad_desc d, int64_t n, int acc)
{
    QT_GRID_LOOP(i, n)
    {
        const int64_t t = qt_pad_target(&d, i);
        qt_put(&dx[i], t >= 0 ? dy[t] : 0.0f, acc);
    }
}

extern "C" {

void pad_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const struct qt_pad_desc *d)
{
    int64_t n = 1;
    for (int k = 0; k < d->ndim; k++) n *= d->shape[k] + d->begin[k] + d->end[k];
    if (n > 0) k_pad_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(y, x, *d, n);
}

void pad_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                       const struct qt_pad_desc *d, int acc)
{
    int64_t n = 1;
    for (int k = 0; k < d->ndim; k++) n *= d->shape[k];
    if (n > 0) k_pad_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, *d, n, acc);
}

} /* extern "C" */
