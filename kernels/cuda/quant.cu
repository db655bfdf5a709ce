/* CUDA fake quantizers (APOT.md sections 2-4), forward and backward, with the per-element math
 * of kernels/common/apot.h (the code the CPU and ref backends run), and calibration's
 * reductions (subsample, range maximum, the alpha search). Sums (weight statistics, dalpha,
 * quantization errors) in double. The level grid travels as a __grid_constant__ parameter. */
#include "common.cuh"

#define QZ const __grid_constant__ struct qt_apot_quantizer

__global__ void k_check_alpha(unsigned *flags, const float *alpha, int64_t nalpha)
{
    QT_GRID_LOOP(k, nalpha)
    if (!(alpha[k] > 0.0f) || !isfinite(alpha[k])) {
        atomicExch(&flags[QT_CUDA_FW_ALPHA], __float_as_uint(alpha[k]));
        atomicOr(&flags[QT_CUDA_FW_BITS], QT_CUDA_FLAG_ALPHA);
    }
}

__global__ void k_sum(double *s, const float *x, int64_t n)
{
    double v = 0.0;
    QT_GRID_LOOP(i, n) v += x[i];
    qt_block_add(s, v);
}

__global__ void k_sumsq_dev(double *s2, const double *s1, const float *x, int64_t n)
{
    const double m = n > 0 ? *s1 / n : 0.0;
    double v = 0.0;
    QT_GRID_LOOP(i, n)
    {
        const double d = (double)x[i] - m;
        v += d * d;
    }
    qt_block_add(s2, v);
}

/* stats = (mu, sigma) as quant_weight_stats_ref: sigma = unbiased std, 1 where it is 0. */
__global__ void k_weight_stats(float *stats, const double *s, int64_t n, int standardize)
{
    if (threadIdx.x || blockIdx.x) return;
    if (!standardize) {
        stats[0] = 0.0f;
        stats[1] = 1.0f;
        return;
    }
    const double m = n > 0 ? s[0] / n : 0.0;
    const float sd = (float)sqrt(n > 1 ? s[1] / (n - 1) : 0.0);
    stats[0] = (float)m;
    stats[1] = (sd > 0.0f || isnan(sd)) ? sd : 1.0f;
}

__global__ void k_weight_fwd(float *wq, const float *w, const float *alpha, const float *stats,
                             int64_t cs, int standardize, int64_t n, QZ qz)
{
    const float mu = stats[0], sigma = stats[1];
    QT_GRID_LOOP(i, n)
    {
        const float al = alpha[i / cs];
        const float x = qt_apot_weight_x(w[i], mu, sigma, al);
        wq[i] = qt_apot_weight_out(al * qt_apot_signed_q(x, qz.levels, qz.thr, qz.n), mu, sigma,
                                   standardize);
    }
}

__global__ void k_weight_dw(float *dw, const float *dwq, const float *stats, int standardize,
                            int64_t n, int acc)
{
    const float sigma = stats[1];
    QT_GRID_LOOP(i, n) qt_put(&dw[i], qt_apot_weight_dx(dwq[i], sigma, standardize), acc);
}

/* s[ch] += sum over channel ch's slice of dwq * dalpha factor (blockIdx.y: channel). */
__global__ void k_weight_dalpha(double *s, const float *dwq, const float *w, const float *alpha,
                                const float *stats, int64_t cs, QZ qz)
{
    const int64_t ch = blockIdx.y;
    const float mu = stats[0], sigma = stats[1], al = alpha[ch];
    double v = 0.0;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < cs;
         j += (int64_t)blockDim.x * gridDim.x) {
        const int64_t i = ch * cs + j;
        const float x = qt_apot_weight_x(w[i], mu, sigma, al);
        const float q = qt_apot_signed_q(x, qz.levels, qz.thr, qz.n);
        v += (double)dwq[i] * qt_apot_signed_dalpha(x, q);
    }
    qt_block_add(&s[ch], v);
}

/* dalpha[k] (+)= s[k] * (sigma when mapped back, else 1); stats NULL for activations. */
__global__ void k_put_dalpha(float *dalpha, const double *s, const float *stats, int standardize,
                             int64_t nalpha, int acc)
{
    QT_GRID_LOOP(k, nalpha)
    {
        double v = s[k];
        if (stats) v *= qt_apot_weight_dalpha_scale(stats[1], standardize);
        qt_put(&dalpha[k], (float)v, acc);
    }
}

__global__ void k_act_fwd(float *aq, const float *a, const float *alpha, int64_t n, QZ qz)
{
    const float al = *alpha;
    QT_GRID_LOOP(i, n)
    {
        const float x = a[i] / al;
        const float q = qz.is_signed ? qt_apot_signed_q(x, qz.levels, qz.thr, qz.n)
                                     : qt_apot_unsigned_q(x, qz.levels, qz.thr, qz.n);
        aq[i] = al * q;
    }
}

__global__ void k_act_bwd(float *da, double *s, const float *daq, const float *a,
                          const float *alpha, int64_t n, int acc, QZ qz)
{
    const float al = *alpha;
    double v = 0.0;
    QT_GRID_LOOP(i, n)
    {
        const float x = a[i] / al;
        float g, f;
        if (qz.is_signed) {
            const float q = qt_apot_signed_q(x, qz.levels, qz.thr, qz.n);
            g = qt_apot_signed_act_dx(daq[i], x);
            f = qt_apot_signed_dalpha(x, q);
        } else {
            const float q = qt_apot_unsigned_q(x, qz.levels, qz.thr, qz.n);
            g = qt_apot_unsigned_dx(daq[i], x);
            f = qt_apot_unsigned_dalpha(x, q);
        }
        if (da) qt_put(&da[i], g, acc);
        v += (double)daq[i] * f;
    }
    if (s) qt_block_add(s, v);
}

/* One block: m = max (or max |w|), NaN when any value is NaN. */
__global__ void k_int8_max(float *save_m, const float *w, int abs_max, int64_t n)
{
    __shared__ float best[1024];
    __shared__ int nan_seen;
    if (threadIdx.x == 0) nan_seen = 0;
    __syncthreads();
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = abs_max ? fabsf(w[i]) : w[i];
        if (isnan(v)) nan_seen = 1;
        else if (v > m) m = v;
    }
    best[threadIdx.x] = m;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && best[threadIdx.x + s] > best[threadIdx.x])
            best[threadIdx.x] = best[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *save_m = nan_seen ? NAN : (n > 0 ? best[0] : 0.0f);
}

__global__ void k_int8_apply(float *wq, const float *w, const float *save_m, int64_t n)
{
    const float m = *save_m;
    QT_GRID_LOOP(i, n) wq[i] = qt_apot_int8_q(w[i], m);
}

__global__ void k_subsample(float *out, const float *x, int64_t cnt, int64_t step)
{
    QT_GRID_LOOP(k, cnt) out[k] = x[k * step];
}

__device__ static inline float mag(float v, int is_signed)
{
    return isfinite(v) ? (is_signed ? fabsf(v) : v) : 0.0f;
}

/* *m = max(*m, magnitudes): a block maximum, then one atomic per block. */
__global__ void k_range_max(float *m, const float *x, int64_t n, int is_signed)
{
    __shared__ float best[QT_CUDA_THREADS];
    float v = -INFINITY;
    QT_GRID_LOOP(i, n)
    {
        const float u = mag(x[i], is_signed);
        if (u > v) v = u;
    }
    best[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && best[threadIdx.x + s] > best[threadIdx.x])
            best[threadIdx.x] = best[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0 && best[0] > -INFINITY) qt_atomic_max_float(m, best[0]);
}

/* ---- the alpha search (quant_alpha_search_ref's candidates and rules) ---- */

struct alpha_search {
    double err[QT_ALPHA_COARSE + QT_ALPHA_FINE];
    double best_err;
    float cand[QT_ALPHA_COARSE + QT_ALPHA_FINE]; /* coarse, then fine (NaN: skipped) */
    float m, best;
};

__global__ void k_alpha_coarse(struct alpha_search *s)
{
    const int k = threadIdx.x + 1;
    if (k <= QT_ALPHA_COARSE) s->cand[k - 1] = (float)((double)s->m * k / QT_ALPHA_COARSE);
}

/* err[first + blockIdx.y] += sum of (a q(x / a) - x)^2 over the slice. */
__global__ void k_alpha_err(struct alpha_search *s, int first, const float *x, int64_t n, QZ qz)
{
    const float a = s->cand[first + blockIdx.y];
    if (!(a > 0.0f)) return;
    double v = 0.0;
    QT_GRID_LOOP(i, n)
    {
        const float u = isfinite(x[i]) ? x[i] : 0.0f;
        const float q = qz.is_signed ? qt_apot_signed_q(u / a, qz.levels, qz.thr, qz.n)
                                     : qt_apot_unsigned_q(u / a, qz.levels, qz.thr, qz.n);
        const float d = a * q - u;
        v += (double)d * (double)d;
    }
    qt_block_add(&s->err[first + blockIdx.y], v);
}

__global__ void k_alpha_pick_coarse(struct alpha_search *s)
{
    if (threadIdx.x || blockIdx.x) return;
    const float m = s->m;
    float best = m;
    double best_err = INFINITY;
    int kbest = QT_ALPHA_COARSE;
    for (int k = 1; k <= QT_ALPHA_COARSE; k++) {
        const float a = s->cand[k - 1];
        const double err = a > 0.0f ? s->err[k - 1] : INFINITY;
        if (err < best_err) {
            best_err = err;
            best = a;
            kbest = k;
        }
    }
    s->best = best;
    s->best_err = best_err;
    const double lo = (double)m * (kbest - 1) / QT_ALPHA_COARSE;
    const double step = (double)m * 2.0 / QT_ALPHA_COARSE / QT_ALPHA_FINE;
    for (int j = 0; j < QT_ALPHA_FINE; j++)
        s->cand[QT_ALPHA_COARSE + j] =
            (j == 0 || 2 * j == QT_ALPHA_FINE) ? NAN : (float)(lo + step * j);
}

__global__ void k_alpha_pick_fine(float *alpha, struct alpha_search *s)
{
    if (threadIdx.x || blockIdx.x) return;
    if (!(s->m > 0.0f)) {
        *alpha = 1.0f;
        return;
    }
    float best = s->best;
    double best_err = s->best_err;
    for (int j = 1; j < QT_ALPHA_FINE; j++) {
        const float a = s->cand[QT_ALPHA_COARSE + j];
        if (!(a > 0.0f)) continue;
        const double err = s->err[QT_ALPHA_COARSE + j];
        if (err < best_err || (err == best_err && a < best)) {
            best_err = err;
            best = a;
        }
    }
    *alpha = best;
}

/* Channels of a per-channel quantity as a grid's y dimension. */
static int grid_y_ok(int64_t k, const char *what, struct qt_error *e)
{
    if (k < 1 || k > 65535) return qt_err(e, "%s over %lld channels (1 to 65535 on cuda)", what, (long long)k);
    return 0;
}

extern "C" {

int quant_weight_forward_cuda(struct qt_cuda_ctx *c, float *wq, float *stats, const float *w,
                              const float *alpha, const struct qt_quant_desc *q,
                              struct qt_error *e)
{
    const int64_t n = q->n;
    /* scratch: the two sums in double, then the statistics when the caller keeps none */
    if (qt_cuda_scratch(c, sizeof(double) * 2 + sizeof(float) * 2, e)) return -1;
    double *s = (double *)c->scratch;
    if (!stats) stats = (float *)(s + 2);
    if (q->int8) {
        quant_int8_weight_forward_cuda(c, wq, stats, w, q->int8 == 2, n);
        return QT_CU_LAUNCH(e, "8-bit weight quantizer");
    }
    k_check_alpha<<<1, QT_CUDA_THREADS, 0, c->stream>>>(c->flags, alpha, q->nalpha);
    if (q->standardize) {
        if (QT_CU(e, cudaMemsetAsync(s, 0, 2 * sizeof(double), c->stream))) return -1;
        k_sum<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(s, w, n);
        k_sumsq_dev<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(s + 1, s, w, n);
    }
    k_weight_stats<<<1, 32, 0, c->stream>>>(stats, s, n, q->standardize);
    if (n > 0)
        k_weight_fwd<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(
            wq, w, alpha, stats, n / q->nalpha, q->standardize, n, q->qz);
    return QT_CU_LAUNCH(e, "weight quantizer forward");
}

int quant_weight_backward_cuda(struct qt_cuda_ctx *c, float *dw, float *dalpha, const float *dwq,
                               const float *w, const float *alpha, const float *stats,
                               const struct qt_quant_desc *q, int acc_w, int acc_alpha,
                               struct qt_error *e)
{
    const int64_t n = q->n;
    if (q->int8) {
        if (dw) copy_backward_cuda(c, dw, dwq, n, acc_w);
        return QT_CU_LAUNCH(e, "8-bit weight quantizer backward");
    }
    k_check_alpha<<<1, QT_CUDA_THREADS, 0, c->stream>>>(c->flags, alpha, q->nalpha);
    if (dw && n > 0)
        k_weight_dw<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(
            dw, dwq, stats, q->standardize, n, acc_w);
    if (dalpha) {
        const int64_t cs = n / q->nalpha;
        if (grid_y_ok(q->nalpha, "a weight quantizer", e) ||
            qt_cuda_scratch(c, sizeof(double) * (size_t)q->nalpha, e))
            return -1;
        double *s = (double *)c->scratch;
        if (QT_CU(e, cudaMemsetAsync(s, 0, sizeof(double) * (size_t)q->nalpha, c->stream))) return -1;
        if (cs > 0) {
            const dim3 grid(qt_cuda_blocks(c, cs) / 4 + 1, (unsigned)q->nalpha);
            k_weight_dalpha<<<grid, QT_CUDA_THREADS, 0, c->stream>>>(s, dwq, w, alpha, stats, cs, q->qz);
        }
        k_put_dalpha<<<1, QT_CUDA_THREADS, 0, c->stream>>>(dalpha, s, stats, q->standardize,
                                                            q->nalpha, acc_alpha);
    }
    return QT_CU_LAUNCH(e, "weight quantizer backward");
}

int quant_act_forward_cuda(struct qt_cuda_ctx *c, float *aq, const float *a, const float *alpha,
                           const struct qt_quant_desc *q, struct qt_error *e)
{
    k_check_alpha<<<1, 32, 0, c->stream>>>(c->flags, alpha, 1);
    if (q->n > 0)
        k_act_fwd<<<qt_cuda_blocks(c, q->n), QT_CUDA_THREADS, 0, c->stream>>>(aq, a, alpha, q->n,
                                                                              q->qz);
    return QT_CU_LAUNCH(e, "activation quantizer forward");
}

int quant_act_backward_cuda(struct qt_cuda_ctx *c, float *da, float *dalpha, const float *daq,
                            const float *a, const float *alpha, const struct qt_quant_desc *q,
                            int acc_a, int acc_alpha, struct qt_error *e)
{
    k_check_alpha<<<1, 32, 0, c->stream>>>(c->flags, alpha, 1);
    double *s = NULL;
    if (dalpha) {
        if (qt_cuda_scratch(c, sizeof(double), e)) return -1;
        s = (double *)c->scratch;
        if (QT_CU(e, cudaMemsetAsync(s, 0, sizeof(double), c->stream))) return -1;
    }
    if (q->n > 0 && (da || dalpha))
        k_act_bwd<<<qt_cuda_blocks(c, q->n), QT_CUDA_THREADS, 0, c->stream>>>(da, s, daq, a, alpha,
                                                                              q->n, acc_a, q->qz);
    if (dalpha) k_put_dalpha<<<1, 32, 0, c->stream>>>(dalpha, s, NULL, 0, 1, acc_alpha);
    return QT_CU_LAUNCH(e, "activation quantizer backward");
}

void quant_int8_weight_forward_cuda(struct qt_cuda_ctx *c, float *wq, float *save_m,
                                    const float *w, int abs_max, int64_t n)
{
    k_int8_max<<<1, 1024, 0, c->stream>>>(save_m, w, abs_max, n);
    if (n > 0)
        k_int8_apply<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(wq, w, save_m, n);
}

void quant_subsample_cuda(struct qt_cuda_ctx *c, float *out, int64_t m, const float *x, int64_t n)
{
    const int64_t cnt = qt_subsample_count(m, n);
    if (!cnt) return;
    const int64_t step = n / m + (n % m != 0);
    k_subsample<<<qt_cuda_blocks(c, cnt), QT_CUDA_THREADS, 0, c->stream>>>(out, x, cnt, step);
}

void quant_range_max_cuda(struct qt_cuda_ctx *c, float *m, const float *x, int64_t n,
                          int is_signed)
{
    if (n > 0)
        k_range_max<<<qt_cuda_blocks(c, n), QT_CUDA_THREADS, 0, c->stream>>>(m, x, n, is_signed);
}

int quant_alpha_search_cuda(struct qt_cuda_ctx *c, float *alpha, const float *x, int64_t n,
                            const struct qt_apot_quantizer *qz, struct qt_error *e)
{
    if (qt_cuda_scratch(c, sizeof(struct alpha_search), e)) return -1;
    struct alpha_search *s = (struct alpha_search *)c->scratch;
    if (QT_CU(e, cudaMemsetAsync(s, 0, sizeof *s, c->stream))) return -1;
    quant_range_max_cuda(c, &s->m, x, n, qz->is_signed);
    k_alpha_coarse<<<1, 128, 0, c->stream>>>(s);
    const unsigned slices = qt_cuda_blocks(c, n) / 8 + 1;
    if (n > 0)
        k_alpha_err<<<dim3(slices, QT_ALPHA_COARSE), QT_CUDA_THREADS, 0, c->stream>>>(s, 0, x, n,
                                                                                     *qz);
    k_alpha_pick_coarse<<<1, 32, 0, c->stream>>>(s);
    if (n > 0)
        k_alpha_err<<<dim3(slices, QT_ALPHA_FINE), QT_CUDA_THREADS, 0, c->stream>>>(
            s, QT_ALPHA_COARSE, x, n, *qz);
    k_alpha_pick_fine<<<1, 32, 0, c->stream>>>(alpha, s);
    return QT_CU_LAUNCH(e, "alpha search");
}

} /* extern "C" */
