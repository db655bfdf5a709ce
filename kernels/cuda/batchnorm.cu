/* CUDA BatchNormalization over [n, c, hw]: inference with running statistics, training with
 * batch statistics (PyTorch's running update, unbiased running variance) and its backward,
 * and calibration's per-channel moments. Per-channel sums in double: a grid of (channel,
 * slice) blocks adds block sums to double scratch, a per-channel step finishes. */
#include "common.cuh"

#define BN_THREADS 256

/* Slices per channel: enough blocks to fill the GPU, each with some work. */
static unsigned bn_slices(const struct qt_cuda_ctx *c, int64_t ch, int64_t m)
{
    int64_t want = (int64_t)(c->sms > 0 ? c->sms : 80) * 8 / (ch > 0 ? ch : 1);
    const int64_t most = (m + BN_THREADS * 4 - 1) / (BN_THREADS * 4);
    if (want > most) want = most;
    if (want > 65535) want = 65535;
    return (unsigned)(want > 0 ? want : 1);
}

/* Element j of channel ch's m = n * hw values. */
__device__ static inline int64_t bn_at(int64_t j, int64_t ch, int64_t c, int64_t hw)
{
    return (j / hw * c + ch) * hw + j % hw;
}

/* s[ch] += sum of x over the channel's slice (blockIdx.y: channel, blockIdx.x: slice). */
__global__ void k_bn_sum(double *s, const float *x, int64_t c, int64_t hw, int64_t m)
{
    const int64_t ch = blockIdx.y;
    double v = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < m;
         j += (int64_t)blockDim.x * gridDim.x)
        v += x[bn_at(j, ch, c, hw)];
    qt_block_add(&s[ch], v);
}

/* s2[ch] += sum of (x - s1[ch] / m)^2. */
__global__ void k_bn_sumsq(double *s2, const double *s1, const float *x, int64_t c, int64_t hw,
                           int64_t m)
{
    const int64_t ch = blockIdx.y;
    const double mu = m ? s1[ch] / m : 0.0;
    double v = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < m;
         j += (int64_t)blockDim.x * gridDim.x) {
        const double d = x[bn_at(j, ch, c, hw)] - mu;
        v += d * d;
    }
    qt_block_add(&s2[ch], v);
}

/* Per channel: batch mean and inverse std (double, and float copies kept for backward), the
 * running statistics' update. */
__global__ void k_bn_stats(double *mu_d, double *inv_d, float *save_mean, float *save_invstd,
                           float *run_mean, float *run_var, const double *s1, const double *s2,
                           float eps, float momentum, int64_t c, int64_t m)
{
    QT_GRID_LOOP(ch, c)
    {
        const double mu = m ? s1[ch] / m : 0.0, v = m ? s2[ch] / m : 0.0;
        const double invstd = 1.0 / sqrt(v + (double)eps);
        mu_d[ch] = mu;
        inv_d[ch] = invstd;
        save_mean[ch] = (float)mu;
        save_invstd[ch] = (float)invstd;
        const double unbiased = m > 1 ? v * m / (m - 1) : v;
        run_mean[ch] = (float)((1.0 - momentum) * run_mean[ch] + momentum * mu);
        run_var[ch] = (float)((1.0 - momentum) * run_var[ch] + momentum * unbiased);
    }
}

__global__ void k_bn_apply(float *y, const float *x, const double *mu_d, const double *inv_d,
                           const float *scale, const float *bias, int64_t total, int64_t c,
                           int64_t hw)
{
    QT_GRID_LOOP(o, total)
    {
        const int64_t ch = o / hw % c;
        y[o] = (float)(((double)x[o] - mu_d[ch]) * inv_d[ch] * scale[ch] + bias[ch]);
    }
}

__global__ void k_bn_infer(float *y, const float *x, const float *scale, const float *bias,
                           const float *mean, const float *var, float eps, int64_t total,
                           int64_t c, int64_t hw)
{
    QT_GRID_LOOP(o, total)
    {
        const int64_t ch = o / hw % c;
        const double invstd = 1.0 / sqrt((double)var[ch] + (double)eps);
        y[o] = (float)(((double)x[o] - mean[ch]) * invstd * scale[ch] + bias[ch]);
    }
}

/* sdy[ch] += sum dy, sdyxh[ch] += sum dy * xhat over the slice. */
__global__ void k_bn_bwd_sums(double *sdy, double *sdyxh, const float *dy, const float *x,
                              const float *save_mean, const float *save_invstd, int64_t c,
                              int64_t hw, int64_t m)
{
    const int64_t ch = blockIdx.y;
    const double mu = save_mean[ch], invstd = save_invstd[ch];
    double a = 0.0, b = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < m;
         j += (int64_t)blockDim.x * gridDim.x) {
        const int64_t o = bn_at(j, ch, c, hw);
        a += dy[o];
        b += dy[o] * ((x[o] - mu) * invstd);
    }
    qt_block_add(&sdy[ch], a);
    qt_block_add(&sdyxh[ch], b);
}

__global__ void k_bn_bwd_params(float *dscale, float *dbias, const double *sdy,
                                const double *sdyxh, int64_t c, int acc_scale, int acc_bias)
{
    QT_GRID_LOOP(ch, c)
    {
        if (dbias) qt_put(&dbias[ch], (float)sdy[ch], acc_bias);
        if (dscale) qt_put(&dscale[ch], (float)sdyxh[ch], acc_scale);
    }
}

__global__ void k_bn_bwd_dx(float *dx, const float *dy, const float *x, const float *scale,
                            const float *save_mean, const float *save_invstd, const double *sdy,
                            const double *sdyxh, int64_t total, int64_t c, int64_t hw, int64_t m,
                            int acc)
{
    QT_GRID_LOOP(o, total)
    {
        const int64_t ch = o / hw % c;
        const double mu = save_mean[ch], invstd = save_invstd[ch];
        const double xhat = (x[o] - mu) * invstd;
        const double g = scale[ch] * invstd * (dy[o] - sdy[ch] / m - xhat * sdyxh[ch] / m);
        qt_put(&dx[o], (float)g, acc);
    }
}

__global__ void k_channel_moments(double *s1, double *s2, const float *x, int64_t c, int64_t hw,
                                  int64_t m)
{
    const int64_t ch = blockIdx.y;
    double a = 0.0, b = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < m;
         j += (int64_t)blockDim.x * gridDim.x) {
        const double v = x[bn_at(j, ch, c, hw)];
        a += v;
        b += v * v;
    }
    qt_block_add(&s1[ch], a);
    qt_block_add(&s2[ch], b);
}

static int bn_grid_ok(int64_t ch, struct qt_error *e)
{
    if (ch > 65535) return qt_err(e, "BatchNorm over %lld channels (at most 65535 on cuda)", (long long)ch);
    return 0;
}

extern "C" {

int batchnorm_infer_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                                 const float *scale, const float *bias, const float *mean,
                                 const float *var, float eps, int64_t n, int64_t ch, int64_t hw,
                                 struct qt_error *e)
{
    const int64_t total = n * ch * hw;
    k_bn_infer<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
        y, x, scale, bias, mean, var, eps, total, ch, hw);
    return QT_CU_LAUNCH(e, "batchnorm inference forward");
}

int batchnorm_train_forward_cuda(struct qt_cuda_ctx *c, float *y, float *save_mean,
                                 float *save_invstd, float *run_mean, float *run_var,
                                 const float *x, const float *scale, const float *bias, float eps,
                                 float momentum, int64_t n, int64_t ch, int64_t hw,
                                 struct qt_error *e)
{
    const int64_t m = n * hw, total = m * ch;
    if (bn_grid_ok(ch, e) || qt_cuda_scratch(c, sizeof(double) * 4 * (size_t)ch, e)) return -1;
    double *s1 = (double *)c->scratch, *s2 = s1 + ch, *mu_d = s2 + ch, *inv_d = mu_d + ch;
    if (QT_CU(e, cudaMemsetAsync(s1, 0, sizeof(double) * 2 * (size_t)ch, c->stream))) return -1;
    const dim3 grid(bn_slices(c, ch, m), (unsigned)ch);
    k_bn_sum<<<grid, BN_THREADS, 0, c->stream>>>(s1, x, ch, hw, m);
    k_bn_sumsq<<<grid, BN_THREADS, 0, c->stream>>>(s2, s1, x, ch, hw, m);
    k_bn_stats<<<qt_cuda_blocks(c, ch), QT_CUDA_THREADS, 0, c->stream>>>(
        mu_d, inv_d, save_mean, save_invstd, run_mean, run_var, s1, s2, eps, momentum, ch, m);
    k_bn_apply<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
        y, x, mu_d, inv_d, scale, bias, total, ch, hw);
    return QT_CU_LAUNCH(e, "batchnorm training forward");
}

int batchnorm_backward_cuda(struct qt_cuda_ctx *c, float *dx, float *dscale, float *dbias,
                            const float *dy, const float *x, const float *scale,
                            const float *save_mean, const float *save_invstd, int64_t n,
                            int64_t ch, int64_t hw, int acc_x, int acc_scale, int acc_bias,
                            struct qt_error *e)
{
    const int64_t m = n * hw, total = m * ch;
    if (bn_grid_ok(ch, e) || qt_cuda_scratch(c, sizeof(double) * 2 * (size_t)ch, e)) return -1;
    double *sdy = (double *)c->scratch, *sdyxh = sdy + ch;
    if (QT_CU(e, cudaMemsetAsync(sdy, 0, sizeof(double) * 2 * (size_t)ch, c->stream))) return -1;
    const dim3 grid(bn_slices(c, ch, m), (unsigned)ch);
    k_bn_bwd_sums<<<grid, BN_THREADS, 0, c->stream>>>(sdy, sdyxh, dy, x, save_mean, save_invstd,
                                                       ch, hw, m);
    if (dscale || dbias)
        k_bn_bwd_params<<<qt_cuda_blocks(c, ch), QT_CUDA_THREADS, 0, c->stream>>>(
            dscale, dbias, sdy, sdyxh, ch, acc_scale, acc_bias);
    if (dx)
        k_bn_bwd_dx<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
            dx, dy, x, scale, save_mean, save_invstd, sdy, sdyxh, total, ch, hw, m, acc_x);
    return QT_CU_LAUNCH(e, "batchnorm backward");
}

int channel_moments_cuda(struct qt_cuda_ctx *c, double *s1, double *s2, const float *x, int64_t n,
                         int64_t ch, int64_t hw, struct qt_error *e)
{
    const int64_t m = n * hw;
    if (ch < 1 || m < 1) return 0;
    if (bn_grid_ok(ch, e)) return -1;
    const dim3 grid(bn_slices(c, ch, m), (unsigned)ch);
    k_channel_moments<<<grid, BN_THREADS, 0, c->stream>>>(s1, s2, x, ch, hw, m);
    return QT_CU_LAUNCH(e, "channel moments");
}

} /* extern "C" */
