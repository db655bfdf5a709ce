/* CUDA elementwise ops, forward and backward: ReLU, Clip, Sigmoid, the copy of Reshape-like
 * ops, the four broadcasting binary ops, and Gemm's C term. Semantics of kernels/ref. */
#include "common.cuh"

__global__ void k_relu_fwd(float *y, const float *x, int64_t n)
{
    QT_GRID_LOOP(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void k_relu_bwd(float *dx, const float *dy, const float *y, int64_t n, int acc)
{
    QT_GRID_LOOP(i, n) qt_put(&dx[i], y[i] > 0.0f ? dy[i] : 0.0f, acc);
}

__global__ void k_clip_fwd(float *y, const float *x, float lo, float hi, int64_t n)
{
    QT_GRID_LOOP(i, n)
    {
        float v = x[i];
        if (v < lo) v = lo;
        if (v > hi) v = hi;
        y[i] = v;
    }
}

__global__ void k_clip_bwd(float *dx, const float *dy, const float *x, float lo, float hi,
                           int64_t n, int acc)
{
    QT_GRID_LOOP(i, n) qt_put(&dx[i], x[i] >= lo && x[i] <= hi ? dy[i] : 0.0f, acc);
}

__global__ void k_sigmoid_fwd(float *y, const float *x, int64_t n)
{
    QT_GRID_LOOP(i, n) y[i] = (float)(1.0 / (1.0 + exp(-(double)x[i])));
}

__global__ void k_sigmoid_bwd(float *dx, const float *dy, const float *y, int64_t n, int acc)
{
    QT_GRID_LOOP(i, n) qt_put(&dx[i], (float)((double)dy[i] * y[i] * (1.0 - y[i])), acc);
}

__global__ void k_copy_bwd(float *dx, const float *dy, int64_t n, int acc)
{
    QT_GRID_LOOP(i, n) qt_put(&dx[i], dy[i], acc);
}

extern "C" {

void relu_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t n)
{
    k_relu_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(y, x, n);
}

void relu_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                        int64_t n, int acc)
{
    k_relu_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, y, n, acc);
}

void clip_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, float lo, float hi,
                       int64_t n)
{
    k_clip_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(y, x, lo, hi, n);
}

void clip_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *x, float lo,
                        float hi, int64_t n, int acc)
{
    k_clip_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, x, lo, hi, n, acc);
}

void sigmoid_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t n)
{
    k_sigmoid_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(y, x, n);
}

void sigmoid_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                           int64_t n, int acc)
{
    k_sigmoid_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, y, n, acc);
}

void copy_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, int64_t n, int acc)
{
    k_copy_bwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, n, acc);
}

} /* extern "C" */

/* ---- binary ops with broadcasting ---- */

__device__ static inline void bin_offsets(const struct qt_binary_desc &d, int64_t i, int64_t *ia,
                                          int64_t *ib)
{
    int64_t oa = 0, ob = 0;
    for (int k = d.ndim - 1; k >= 0; k--) {
        const int64_t j = i % d.shape[k];
        i /= d.shape[k];
        oa += j * d.sa[k];
        ob += j * d.sb[k];
    }
    *ia = oa;
    *ib = ob;
}

__device__ static inline float bin_apply(enum qt_binop op, float u, float v)
{
    switch (op) {
    case QT_BIN_ADD:
        return u + v;
    case QT_BIN_SUB:
        return u - v;
    case QT_BIN_MUL:
        return u * v;
    default:
        return u / v;
    }
}

/* Partial derivatives of u op v, in double as the reference computes them. */
__device__ static inline void bin_partials(enum qt_binop op, double u, double v, double *du,
                                           double *dv)
{
    *du = 1.0;
    *dv = 1.0;
    if (op == QT_BIN_SUB) *dv = -1.0;
    if (op == QT_BIN_MUL) {
        *du = v;
        *dv = u;
    }
    if (op == QT_BIN_DIV) {
        *du = 1.0 / v;
        *dv = -u / (v * v);
    }
}

__global__ void k_binary_fwd(float *y, const float *a, const float *b, struct qt_binary_desc d,
                             int64_t total)
{
    QT_GRID_LOOP(i, total)
    {
        int64_t ia = i, ib = i;
        if (!d.same_shape) bin_offsets(d, i, &ia, &ib);
        y[i] = bin_apply(d.op, a[ia], b[ib]);
    }
}

/* Same shapes: every operand element is read by one output element. */
__global__ void k_binary_bwd_same(float *da, float *db, const float *dy, const float *a,
                                  const float *b, enum qt_binop op, int64_t n, int acc_a,
                                  int acc_b)
{
    QT_GRID_LOOP(i, n)
    {
        double pu, pv;
        bin_partials(op, a[i], b[i], &pu, &pv);
        if (da) qt_put(&da[i], (float)(dy[i] * pu), acc_a);
        if (db) qt_put(&db[i], (float)(dy[i] * pv), acc_b);
    }
}

/* Broadcast: each output element adds its share to the operands' double sums. */
__global__ void k_binary_bwd_sum(double *sa, double *sb, const float *dy, const float *a,
                                 const float *b, struct qt_binary_desc d, int64_t total)
{
    QT_GRID_LOOP(i, total)
    {
        int64_t ia, ib;
        bin_offsets(d, i, &ia, &ib);
        double pu, pv;
        bin_partials(d.op, a[ia], b[ib], &pu, &pv);
        if (sa) atomicAdd(&sa[ia], dy[i] * pu);
        if (sb) atomicAdd(&sb[ib], dy[i] * pv);
    }
}

__global__ void k_put_sums(float *dst, const double *s, int64_t n, int acc)
{
    QT_GRID_LOOP(i, n) qt_put(&dst[i], (float)s[i], acc);
}

__global__ void k_gemm_add_c(float *y, const float *cm, float beta, int64_t m, int64_t n,
                             int64_t rs, int64_t cs)
{
    QT_GRID_LOOP(t, m * n)
    {
        const int64_t i = t / n, j = t % n;
        y[t] += beta * cm[i * rs + j * cs];
    }
}

/* One thread per element of C: the rows and columns of dy that read it (all of them along a
 * broadcast axis). */
__global__ void k_gemm_dc(float *dc, const float *dy, float beta, int64_t m, int64_t n,
                          struct qt_gemm_desc d, int acc)
{
    QT_GRID_LOOP(t, d.c_rows * d.c_cols)
    {
        const int64_t r = t / d.c_cols, cc = t % d.c_cols;
        const int64_t i0 = d.c_rs ? r : 0, i1 = d.c_rs ? r + 1 : m;
        const int64_t j0 = d.c_cs ? cc : 0, j1 = d.c_cs ? cc + 1 : n;
        double s = 0.0;
        for (int64_t i = i0; i < i1; i++)
            for (int64_t j = j0; j < j1; j++)
                s += dy[i * n + j];
        qt_put(&dc[r * d.c_cols + cc], (float)(beta * s), acc);
    }
}

extern "C" {

void binary_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                         const struct qt_binary_desc *d)
{
    int64_t total = 1;
    for (int k = 0; k < d->ndim; k++)
        total *= d->shape[k];
    k_binary_fwd<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(y, a, b, *d, total);
}

int binary_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, const float *dy,
                         const float *a, const float *b, const struct qt_binary_desc *d, int acc_a,
                         int acc_b, struct qt_error *e)
{
    int64_t total = 1;
    for (int k = 0; k < d->ndim; k++)
        total *= d->shape[k];
    if (!da && !db) return 0;
    if (d->same_shape) {
        k_binary_bwd_same<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
            da, db, dy, a, b, d->op, total, acc_a, acc_b);
        return QT_CU_LAUNCH(e, "binary backward");
    }
    const int64_t na = da ? d->na : 0, nb = db ? d->nb : 0;
    if (qt_cuda_scratch(c, sizeof(double) * (size_t)(na + nb + 1), e)) return -1;
    double *sa = da ? (double *)c->scratch : NULL, *sb = db ? (double *)c->scratch + na : NULL;
    if (QT_CU(e, cudaMemsetAsync(c->scratch, 0, sizeof(double) * (size_t)(na + nb), c->stream)))
        return -1;
    k_binary_bwd_sum<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(sa, sb, dy, a, b,
                                                                                 *d, total);
    if (da) k_put_sums<<<qt_cuda_blocks(c, na), QT_CUDA_THREADS, 0, c->stream>>>(da, sa, na, acc_a);
    if (db) k_put_sums<<<qt_cuda_blocks(c, nb), QT_CUDA_THREADS, 0, c->stream>>>(db, sb, nb, acc_b);
    return QT_CU_LAUNCH(e, "binary backward (broadcast)");
}

void gemm_add_c_cuda(struct qt_cuda_ctx *c, float *y, const float *cm, float beta, int64_t m,
                     int64_t n, int64_t rs, int64_t cs)
{
    k_gemm_add_c<<<qt_cuda_blocks(c, m * n), QT_CUDA_THREADS, 0, c->stream>>>(y, cm, beta, m, n, rs,
                                                                             cs);
}

void gemm_dc_cuda(struct qt_cuda_ctx *c, float *dc, const float *dy, float beta, int64_t m,
                  int64_t n, const struct qt_gemm_desc *d, int acc)
{
    k_gemm_dc<<<qt_cuda_blocks(c, d->c_rows * d->c_cols), QT_CUDA_THREADS, 0, c->stream>>>(
        dc, dy, beta, m, n, *d, acc);
}

} /* extern "C" */
