/* CUDA BSQ bit planes (kernels/common/bsq.h): the weights from the planes, their gradients, and
 * the group-Lasso term's gradient; sums in double. */
#include "common.cuh"
#include "../common/bsq.h"

__device__ static inline float plane_sum(const float *p, const float *n, int N, int64_t cnt,
                                         int64_t j)
{
    float v = 0.0f;
    for (int b = 0; b < N; b++)
        v += (p[b * cnt + j] - n[b * cnt + j]) * (float)(1 << (N - 1 - b));
    return v;
}

__global__ void k_bitq_fwd(float *w, const float *p, const float *n, const float *s, int N,
                           int64_t cnt)
{
    const float sc = s[0];
    QT_GRID_LOOP(j, cnt) w[j] = sc * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
}

__global__ void k_bitq_planes(float *dp, float *dn, const float *dw, const float *s, int N,
                              int64_t cnt, int acc_p, int acc_n)
{
    const float sc = s[0];
    QT_GRID_LOOP(t, (int64_t)N * cnt)
    {
        const int b = (int)(t / cnt);
        const float g = qt_bsq_plane_grad(sc, b, N) * dw[t % cnt];
        if (dp) dp[t] = (acc_p ? dp[t] : 0.0f) + g;
        if (dn) dn[t] = (acc_n ? dn[t] : 0.0f) - g;
    }
}

__global__ void k_bitq_ds(double *sum, const float *dw, const float *p, const float *n, int N,
                          int64_t cnt)
{
    double v = 0.0;
    QT_GRID_LOOP(j, cnt) v += (double)dw[j] * qt_bsq_unit(plane_sum(p, n, N, cnt, j), N);
    qt_block_add(sum, v);
}

__global__ void k_put_ds(float *ds, const double *sum, int acc)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) ds[0] = (acc ? ds[0] : 0.0f) + (float)*sum;
}

/* sq[b] += sum over plane b (blockIdx.y) of p^2 + n^2. */
__global__ void k_lasso_sq(double *sq, const float *p, const float *n, int64_t cnt)
{
    const int64_t b = blockIdx.y;
    double v = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cnt;
         j += (int64_t)blockDim.x * gridDim.x)
        v += (double)p[b * cnt + j] * p[b * cnt + j] + (double)n[b * cnt + j] * n[b * cnt + j];
    qt_block_add(&sq[b], v);
}

__global__ void k_lasso_apply(float *dp, float *dn, const float *p, const float *n,
                              const double *sq, float coef, int N, int64_t cnt)
{
    QT_GRID_LOOP(t, (int64_t)N * cnt)
    {
        const float f = (float)(coef / sqrt(1e-8 + sq[t / cnt]));
        dp[t] += f * p[t];
        dn[t] += f * n[t];
    }
}

extern "C" {

void bitquant_forward_cuda(struct qt_cuda_ctx *c, float *w, const float *p, const float *n,
                           const float *s, int N, int64_t cnt)
{
    if (cnt > 0)
        k_bitq_fwd<<<qt_cuda_blocks(c, cnt), QT_CUDA_THREADS, 0, c->stream>>>(w, p, n, s, N, cnt);
}

int bitquant_backward_cuda(struct qt_cuda_ctx *c, float *dp, float *dn, float *ds, const float *dw,
                           const float *p, const float *n, const float *s, int N, int64_t cnt,
                           int acc_p, int acc_n, int acc_s, struct qt_error *e)
{
    if ((dp || dn) && cnt > 0)
        k_bitq_planes<<<qt_cuda_blocks(c, N * cnt), QT_CUDA_THREADS, 0, c->stream>>>(
            dp, dn, dw, s, N, cnt, acc_p, acc_n);
    if (ds) {
        if (qt_cuda_scratch(c, sizeof(double), e)) return -1;
        double *sum = (double *)c->scratch;
        if (QT_CU(e, cudaMemsetAsync(sum, 0, sizeof(double), c->stream))) return -1;
        if (cnt > 0)
            k_bitq_ds<<<qt_cuda_blocks(c, cnt), QT_CUDA_THREADS, 0, c->stream>>>(sum, dw, p, n, N,
                                                                                cnt);
        k_put_ds<<<1, 32, 0, c->stream>>>(ds, sum, acc_s);
    }
    return QT_CU_LAUNCH(e, "bit-quant backward");
}

int bitquant_lasso_cuda(struct qt_cuda_ctx *c, float *dp, float *dn, const float *p,
                        const float *n, int N, int64_t cnt, float coef, struct qt_error *e)
{
    if (N < 1 || cnt < 1) return 0;
    if (qt_cuda_scratch(c, sizeof(double) * (size_t)N, e)) return -1;
    double *sq = (double *)c->scratch;
    if (QT_CU(e, cudaMemsetAsync(sq, 0, sizeof(double) * (size_t)N, c->stream))) return -1;
    k_lasso_sq<<<dim3(qt_cuda_blocks(c, cnt) / 4 + 1, (unsigned)N), QT_CUDA_THREADS, 0, c->stream>>>(
        sq, p, n, cnt);
    k_lasso_apply<<<qt_cuda_blocks(c, N * cnt), QT_CUDA_THREADS, 0, c->stream>>>(dp, dn, p, n, sq,
                                                                                coef, N, cnt);
    return QT_CU_LAUNCH(e, "bit lasso");
}

} /* extern "C" */
