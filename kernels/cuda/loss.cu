/* CUDA classifier loss: softmax cross-entropy with label smoothing, its gradient and the top-1
 * / top-5 counts (kernels/ref/loss.c's definitions), one warp per row, sums in double. */
#include "common.cuh"

__global__ void k_xent(float *dlogits, double *stats, unsigned *flags, const float *logits,
                       const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    if (row >= n) return; /* whole warps leave together */
    const float *z = logits + row * k;
    float *dz = dlogits ? dlogits + row * k : NULL;
    const int32_t y = labels[row];
    if (y < 0 || y >= k) {
        if (lane == 0) {
            atomicExch(&flags[QT_CUDA_FW_LABEL], (unsigned)y);
            atomicExch(&flags[QT_CUDA_FW_ROW], (unsigned)row);
            atomicExch(&flags[QT_CUDA_FW_CLASSES], (unsigned)k);
            atomicOr(&flags[QT_CUDA_FW_BITS], QT_CUDA_FLAG_LABEL);
        }
        return;
    }
    const float zy = z[y];
    int finite = 1;
    int64_t rank = 0;
    double mx = -INFINITY;
    for (int64_t j = lane; j < k; j += 32) {
        const float v = z[j];
        if (!isfinite(v)) finite = 0;
        if (v > zy || (v == zy && j < y)) rank++;
        if (v > mx) mx = v;
    }
    finite = __all_sync(0xffffffffu, finite);
    for (int o = 16; o > 0; o >>= 1) {
        rank += __shfl_xor_sync(0xffffffffu, rank, o);
        mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if (!finite) {
        if (lane == 0) atomicAdd(&stats[QT_XENT_NONFINITE], 1.0);
        for (int64_t j = lane; dz && j < k; j += 32) dz[j] = NAN;
        return;
    }
    double se = 0.0, sz = 0.0;
    for (int64_t j = lane; j < k; j += 32) {
        se += exp((double)z[j] - mx);
        sz += z[j];
    }
    for (int o = 16; o > 0; o >>= 1) {
        se += __shfl_xor_sync(0xffffffffu, se, o);
        sz += __shfl_xor_sync(0xffffffffu, sz, o);
    }
    const double lse = mx + log(se);
    if (lane == 0) {
        atomicAdd(&stats[QT_XENT_LOSS],
                  (1.0 - smoothing) * (lse - zy) + smoothing * (lse - sz / k));
        if (rank < 1) atomicAdd(&stats[QT_XENT_TOP1], 1.0);
        if (rank < 5) atomicAdd(&stats[QT_XENT_TOP5], 1.0);
    }
    for (int64_t j = lane; dz && j < k; j += 32) {
        const double t = (j == y ? 1.0 - smoothing : 0.0) + (double)smoothing / k;
        dz[j] = (float)((exp(z[j] - lse) - t) * scale);
    }
}

extern "C" int softmax_xent_cuda(struct qt_cuda_ctx *c, float *dlogits, double *stats,
                                 const float *logits, const int32_t *labels, int64_t n, int64_t k,
                                 float smoothing, float scale, struct qt_error *e)
{
    if (QT_CU(e, cudaMemsetAsync(stats, 0, sizeof(double) * QT_XENT_STATS, c->stream))) return -1;
    if (n > 0 && k > 0) {
        const int64_t threads = n * 32;
        k_xent<<<(unsigned)((threads + 255) / 256), 256, 0, c->stream>>>(
            dlogits, stats, c->flags, logits, labels, n, k, smoothing, scale);
    }
    return QT_CU_LAUNCH(e, "softmax cross-entropy");
}
