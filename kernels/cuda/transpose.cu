/* CUDA Transpose, forward and backward: each output element's input offset from
 * qt_transpose_offset (kernels/common/desc.h), as the ref and CPU backends compute it. */
#include "common.cuh"

__global__ void k_transpose_fwd(float *y, const float *x, struct qt_transpose_desc d, int64_t n)
{
    QT_GRID_LOOP(o, n) y[o] = x[qt_transpose_offset(&d, o)];
}

/* A permutation: every input element receives exactly one output's gradient. */
__global__ void k_transpose_bwd(float *dx, const float *dy, struct qt_transpose_desc d, int64_t n,
                                int acc)
{
    QT_GRID_LOOP(o, n) qt_put(&dx[qt_transpose_offset(&d, o)], dy[o], acc);
}

static int64_t count(const struct qt_transpose_desc *d)
{
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++)
        n *= d->shape[i];
    return n;
}

extern "C" {

void transpose_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_transpose_desc *d)
{
    const int64_t n = count(d);
    if (n > 0) k_transpose_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(y, x, *d, n);
}

void transpose_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                             const struct qt_transpose_desc *d, int acc)
{
    const int64_t n = count(d);
    if (n > 0)
        k_transpose_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, *d, n, acc);
}

} /* extern "C" */
