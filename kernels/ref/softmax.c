/* Reference softmax and log-softmax over one axis and mean over several axes, forward and
 * backward; sums in double. */
#include <math.h>

#include "kernels/ref/ref.h"

/* Element i of the softmax row (o, j) of [outer, mid, inner] sits at (o * mid + i) * inner + j.
 * Both forwards go through row_max_sum: the row's maximum (subtracted first so that exp
 * cannot overflow) and the sum of exp(x_i - max). */
static double row_max_sum(const float *xr, int64_t mid, int64_t inner, double *sum)
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

void softmax_forward_ref(float *y, const float *x, int64_t outer, int64_t mid, int64_t inner)
{
    for (int64_t o = 0; o < outer && mid > 0; o++)
        for (int64_t j = 0; j < inner; j++) {
            const float *xr = x + o * mid * inner + j;
            float *yr = y + o * mid * inner + j;
            double s;
            const double mx = row_max_sum(xr, mid, inner, &s);
            for (int64_t i = 0; i < mid; i++)
                yr[i * inner] = (float)(exp(xr[i * inner] - mx) / s);
        }
}

/* dx_i = y_i * (dy_i - sum_j dy_j y_j), the product of dy with softmax's Jacobian
 * diag(y) - y y^T. */
void softmax_backward_ref(float *dx, const float *dy, const float *y, int64_t outer, int64_t mid,
                          int64_t inner, int acc)
{
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const int64_t base = o * mid * inner + j;
            double s = 0.0;
            for (int64_t i = 0; i < mid; i++)
                s += (double)dy[base + i * inner] * y[base + i * inner];
            for (int64_t i = 0; i < mid; i++) {
                const int64_t e = base + i * inner;
                const float g = (float)(y[e] * (dy[e] - s));
                dx[e] = acc ? dx[e] + g : g;
            }
        }
}

/* The reduction splits the dims into kept ones (the output's) and reduced ones; an input
 * element is addressed by one index over each set. Offset in x of output element `out`
 * combined with reduced element `red`, both row-major over their own dims. */
static int64_t input_offset(const struct qt_reduce_desc *r, int64_t out, int64_t red)
{
    int64_t off = 0, stride = 1;
    for (int i = r->ndim - 1; i >= 0; i--) {
        int64_t *idx = r->red[i] ? &red : &out;
        off += (*idx % r->shape[i]) * stride;
        *idx /= r->shape[i];
        stride *= r->shape[i];
    }
    return off;
}

/* Elements of the output (kept dims) and averaged per output (reduced dims). */
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

void reduce_mean_forward_ref(float *y, const float *x, const struct qt_reduce_desc *r)
{
    int64_t nout, nred;
    reduce_sizes(r, &nout, &nred);
    for (int64_t o = 0; o < nout; o++) {
        double s = 0.0;
        for (int64_t q = 0; q < nred; q++)
            s += x[input_offset(r, o, q)];
        y[o] = nred > 0 ? (float)(s / nred) : 0.0f;
    }
}

void reduce_mean_backward_ref(float *dx, const float *dy, const struct qt_reduce_desc *r, int acc)
{
    int64_t nout, nred;
    reduce_sizes(r, &nout, &nred);
    for (int64_t o = 0; o < nout; o++) {
        const float g = (float)((double)dy[o] / nred);
        for (int64_t q = 0; q < nred; q++) {
            float *e = &dx[input_offset(r, o, q)];
            *e = acc ? *e + g : g;
        }
    }
}

/* y_i = x_i - max x - log sum_j exp(x_j - max x). */
void logsoftmax_forward_ref(float *y, const float *x, int64_t outer, int64_t mid, int64_t inner)
{
    for (int64_t o = 0; o < outer && mid > 0; o++)
        for (int64_t j = 0; j < inner; j++) {
            const float *xr = x + o * mid * inner + j;
            float *yr = y + o * mid * inner + j;
            double s;
            const double lse = row_max_sum(xr, mid, inner, &s) + log(s);
            for (int64_t i = 0; i < mid; i++)
                yr[i * inner] = (float)(xr[i * inner] - lse);
        }
}

/* dx_i = dy_i - exp(y_i) * sum_j dy_j (the softmax is exp(y)). */
void logsoftmax_backward_ref(float *dx, const float *dy, const float *y, int64_t outer, int64_t mid,
                             int64_t inner, int acc)
{
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const int64_t base = o * mid * inner + j;
            double s = 0.0;
            for (int64_t i = 0; i < mid; i++)
                s += dy[base + i * inner];
            for (int64_t i = 0; i < mid; i++) {
                const int64_t e = base + i * inner;
                const float g = (float)(dy[e] - exp((double)y[e]) * s);
                dx[e] = acc ? dx[e] + g : g;
            }
        }
}
