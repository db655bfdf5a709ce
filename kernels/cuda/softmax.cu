/* CUDA softmax and log-softmax over the middle axis of [outer, mid, inner], and the mean over
 * several axes, forward and backward (kernels/ref/softmax.c's definitions); one thread per
 * row or output element, sums in double. */
#include "common.cuh"

/* The row's maximum and the sum of exp(x - max). */
__device__ static inline double row_max_sum(const float *xr, int64_t mid, int64_t inner, double *sum)
{
    double mx = xr[0];
    for (int64_t i = 1; i < mid; i++)
        if (xr[i * inner] > mx) mx = xr[i * inner];
    double s = 0.0;
    for (int64_t i = 0; i < mid; i++)
        s += exp(xr[i * inner] - mx);
    *sum = s;
    return mx;
}

__global__ void k_softmax_fwd(float *y, const float *x, int64_t outer, int64_t mid, int64_t inner,
                              int log_softmax)
{
    QT_GRID_LOOP(r, outer * inner)
    {
        const int64_t o = r / inner, j = r % inner;
        const float *xr = x + o * mid * inner + j;
        float *yr = y + o * mid * inner + j;
        double s;
        const double mx = row_max_sum(xr, mid, inner, &s);
        if (log_softmax) {
            const double lse = mx + log(s);
            for (int64_t i = 0; i < mid; i++)
                yr[i * inner] = (float)(xr[i * inner] - lse);
        } else {
            for (int64_t i = 0; i < mid; i++)
                yr[i * inner] = (float)(exp(xr[i * inner] - mx) / s);
        }
    }
}

/* softmax: dx = y (dy - sum dy y); log-softmax: dx = dy - exp(y) sum dy. */
__global__ void k_softmax_bwd(float *dx, const float *dy, const float *y, int64_t outer,
                              int64_t mid, int64_t inner, int log_softmax, int acc)
{
    QT_GRID_LOOP(r, outer * inner)
    {
        const int64_t base = r / inner * mid * inner + r % inner;
        double s = 0.0;
        for (int64_t i = 0; i < mid; i++)
            s += log_softmax ? (double)dy[base + i * inner]
                             : (double)dy[base + i * inner] * y[base + i * inner];
        for (int64_t i = 0; i < mid; i++) {
            const int64_t e = base + i * inner;
            const float g = log_softmax ? (float)(dy[e] - exp((double)y[e]) * s)
                                        : (float)(y[e] * (dy[e] - s));
            qt_put(&dx[e], g, acc);
        }
    }
}

/* Offset in x of output element `out` combined with reduced element `red`. */
__device__ static inline int64_t reduce_offset(const struct qt_reduce_desc &r, int64_t out,
                                               int64_t red)
{
    int64_t off = 0, stride = 1;
    for (int i = r.ndim - 1; i >= 0; i--) {
        int64_t *idx = r.red[i] ? &red : &out;
        off += (*idx % r.shape[i]) * stride;
        *idx /= r.shape[i];
        stride *= r.shape[i];
    }
    return off;
}

static void reduce_sizes(const struct qt_reduce_desc *r, int64_t *nout, int64_t *nred)
{
    *nout = *nred = 1;
    for (int i = 0; i < r->ndim; i++) {
        if (r->red[i])
            *nred *= r->shape[i];
        else
            *nout *= r->shape[i];
    }
}

__global__ void k_reduce_mean_fwd(float *y, const float *x, struct qt_reduce_desc r, int64_t nout,
                                  int64_t nred)
{
    QT_GRID_LOOP(o, nout)
    {
        double s = 0.0;
        for (int64_t q = 0; q < nred; q++)
            s += x[reduce_offset(r, o, q)];
        y[o] = nred > 0 ? (float)(s / nred) : 0.0f;
    }
}

/* Every input element belongs to one output element: one thread per (output, reduced) pair. */
__global__ void k_reduce_mean_bwd(float *dx, const float *dy, struct qt_reduce_desc r, int64_t nout,
                                  int64_t nred, int acc)
{
    QT_GRID_LOOP(t, nout * nred)
    {
        const int64_t o = t / nred, q = t % nred;
        qt_put(&dx[reduce_offset(r, o, q)], (float)((double)dy[o] / nred), acc);
    }
}

extern "C" {

void softmax_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t outer,
                          int64_t mid, int64_t inner, int log_softmax)
{
    if (mid > 0 && outer * inner > 0)
        k_softmax_fwd<<<qt_cuda_blocks(c, outer * inner), QT_CUDA_THREADS, 0, c->stream>>>(
            y, x, outer, mid, inner, log_softmax);
}

void softmax_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                           int64_t outer, int64_t mid, int64_t inner, int log_softmax, int acc)
{
    if (mid > 0 && outer * inner > 0)
        k_softmax_bwd<<<qt_cuda_blocks(c, outer * inner), QT_CUDA_THREADS, 0, c->stream>>>(
            dx, dy, y, outer, mid, inner, log_softmax, acc);
}

void reduce_mean_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                              const struct qt_reduce_desc *r)
{
    int64_t nout, nred;
    reduce_sizes(r, &nout, &nred);
    if (nout > 0)
        k_reduce_mean_fwd<<<qt_cuda_blocks(c, nout), QT_CUDA_THREADS, 0, c->stream>>>(y, x, *r, nout,
                                                                                    nred);
}

void reduce_mean_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                               const struct qt_reduce_desc *r, int acc)
{
    int64_t nout, nred;
    reduce_sizes(r, &nout, &nred);
    if (nout * nred > 0)
        k_reduce_mean_bwd<<<qt_cuda_blocks(c, nout * nred), QT_CUDA_THREADS, 0, c->stream>>>(
            dx, dy, *r, nout, nred, acc);
}

} /* extern "C" */
