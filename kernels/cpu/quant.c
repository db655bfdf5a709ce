/* CPU fake-quantizer kernels: per-tensor APoT / uniform weight and activation quantizers
 * (forward and backward) and the 8-bit first/last layer weights, on the scalar formulas of
 * kernels/common/apot.h. Loops are OpenMP-parallel over fixed blocks; reductions keep one
 * double partial per block and add them in block order (thread-count independent). */
#include "kernels/cpu/quant.h"

#include <math.h>

/* Blocks: at least QBLOCK elements, at most QMAX_BLOCKS of them (the block size doubles for
 * larger tensors), so the partial-sum array lives on the stack. */
#define QBLOCK 8192
#define QMAX_BLOCKS 1024

static int64_t block_size(int64_t n)
{
    int64_t b = QBLOCK;
    while (b * QMAX_BLOCKS < n)
        b *= 2;
    return b;
}

static int64_t block_count(int64_t n, int64_t bs)
{
    return n > 0 ? (n + bs - 1) / bs : 0;
}

static double sum_blocks(const double *part, int64_t nb)
{
    double s = 0.0;
    for (int64_t b = 0; b < nb; b++)
        s += part[b];
    return s;
}

void quant_weight_stats_cpu(float *mu, float *sigma, const float *w, int64_t n)
{
    const int64_t bs = block_size(n), nb = block_count(n, bs);
    double part[QMAX_BLOCKS];
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++)
            s += (double)w[i];
        part[b] = s;
    }
    const double m = n > 0 ? sum_blocks(part, nb) / (double)n : 0.0;
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) {
            const double d = (double)w[i] - m;
            s += d * d;
        }
        part[b] = s;
    }
    const double var = n > 1 ? sum_blocks(part, nb) / (double)(n - 1) : 0.0;
    const float sd = (float)sqrt(var);
    *mu = (float)m;
    /* NaN stays NaN so that a broken weight tensor shows in the output */
    *sigma = (sd > 0.0f || sd != sd) ? sd : 1.0f;
}

/* Block loops. They are force-inlined into a switch over the level count (see DISPATCH) so
 * that each copy sees a constant count: the binary search then has a fixed number of steps
 * and the element loop vectorizes. */
#define QT_ALWAYS_INLINE __attribute__((always_inline)) static inline

QT_ALWAYS_INLINE void weight_fwd_block(float *restrict wq, const float *restrict w, float mu,
                                       float sigma, float alpha, const float *restrict lv,
                                       const float *restrict th, int nl, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float x = qt_apot_weight_x(w[i], mu, sigma, alpha);
        wq[i] = alpha * qt_apot_signed_q(x, lv, th, nl);
    }
}

QT_ALWAYS_INLINE void act_fwd_block(float *restrict aq, const float *restrict a, float alpha,
                                    const float *restrict lv, const float *restrict th, int nl,
                                    int is_signed, int64_t lo, int64_t hi)
{
    if (is_signed) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            aq[i] = alpha * qt_apot_signed_q(a[i] / alpha, lv, th, nl);
    } else {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            aq[i] = alpha * qt_apot_unsigned_q(a[i] / alpha, lv, th, nl);
    }
}

/* Returns the block's dalpha partial; also writes dw unless it is NULL. */
QT_ALWAYS_INLINE double weight_bwd_block(float *restrict dw, const float *restrict g,
                                         const float *restrict w, float mu, float sigma,
                                         float alpha, const float *restrict lv,
                                         const float *restrict th, int nl, int acc_w, int64_t lo,
                                         int64_t hi)
{
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; i++) {
        const float x = qt_apot_weight_x(w[i], mu, sigma, alpha);
        const float q = qt_apot_signed_q(x, lv, th, nl);
        s += (double)(g[i] * qt_apot_signed_dalpha(x, q));
    }
    if (dw && acc_w) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            dw[i] += qt_apot_weight_dx(g[i], sigma);
    } else if (dw) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            dw[i] = qt_apot_weight_dx(g[i], sigma);
    }
    return s;
}

/* Returns the block's dalpha partial; also writes da unless it is NULL. */
QT_ALWAYS_INLINE double act_bwd_block(float *restrict da, const float *restrict g,
                                      const float *restrict a, float alpha,
                                      const float *restrict lv, const float *restrict th, int nl,
                                      int is_signed, int acc_a, int64_t lo, int64_t hi)
{
    double s = 0.0;
    if (is_signed) {
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) {
            const float x = a[i] / alpha;
            const float q = qt_apot_signed_q(x, lv, th, nl);
            s += (double)(g[i] * qt_apot_signed_dalpha(x, q));
        }
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) {
            const float x = a[i] / alpha;
            const float q = qt_apot_unsigned_q(x, lv, th, nl);
            s += (double)(g[i] * qt_apot_unsigned_dalpha(x, q));
        }
    }
    if (!da) return s;
    if (is_signed && acc_a) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            da[i] += qt_apot_signed_act_dx(g[i], a[i] / alpha);
    } else if (is_signed) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            da[i] = qt_apot_signed_act_dx(g[i], a[i] / alpha);
    } else if (acc_a) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            da[i] += qt_apot_unsigned_dx(g[i], a[i] / alpha);
    } else {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            da[i] = qt_apot_unsigned_dx(g[i], a[i] / alpha);
    }
    return s;
}

/* Runs CALL with `nl` a constant for every level count a quantizer can have (2^B, B = 1..8),
 * and the variable count otherwise; CALL reads the levels and thresholds through `lvs` and
 * `ths`. With two levels these are local copies: the compiler then keeps both levels in
 * registers instead of loading one of them under a condition, which blocks vectorization. */
#define DISPATCH(nlv, lvp, thp, CALL)                                                              \
    switch (nlv) {                                                                                 \
    case 2: {                                                                                      \
        const int nl = 2;                                                                          \
        const float lvs[2] = {(lvp)[0], (lvp)[1]}, ths[1] = {(thp)[0]};                            \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 4: {                                                                                      \
        const int nl = 4;                                                                          \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 8: {                                                                                      \
        const int nl = 8;                                                                          \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 16: {                                                                                     \
        const int nl = 16;                                                                         \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 32: {                                                                                     \
        const int nl = 32;                                                                         \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 64: {                                                                                     \
        const int nl = 64;                                                                         \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 128: {                                                                                    \
        const int nl = 128;                                                                        \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    case 256: {                                                                                    \
        const int nl = 256;                                                                        \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    default: {                                                                                     \
        const int nl = nlv;                                                                        \
        const float *lvs = lvp, *ths = thp;                                                        \
        CALL;                                                                                      \
    } break;                                                                                       \
    }

void quant_weight_forward_cpu(float *wq, float *save_mu, float *save_sigma, const float *w,
                              const float *alpha, const struct qt_apot_quantizer *qz, int64_t n)
{
    float mu, sigma;
    quant_weight_stats_cpu(&mu, &sigma, w, n);
    if (save_mu) *save_mu = mu;
    if (save_sigma) *save_sigma = sigma;
    const float al = *alpha;
    const float *lv = qz->levels, *th = qz->thr;
    const int64_t bs = block_size(n), nb = block_count(n, bs);
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        DISPATCH(qz->n, lv, th, weight_fwd_block(wq, w, mu, sigma, al, lvs, ths, nl, lo, hi))
    }
}

void quant_weight_backward_cpu(float *dw, float *dalpha, const float *dwq, const float *w,
                               const float *alpha, const float *save_mu, const float *save_sigma,
                               const struct qt_apot_quantizer *qz, int64_t n, int acc_w,
                               int acc_alpha)
{
    const float al = *alpha, mu = *save_mu, sigma = *save_sigma;
    const float *lv = qz->levels, *th = qz->thr;
    const int64_t bs = block_size(n), nb = block_count(n, bs);
    double part[QMAX_BLOCKS];
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        double s = 0.0;
        DISPATCH(qz->n, lv, th,
                 s = weight_bwd_block(dw, dwq, w, mu, sigma, al, lvs, ths, nl, acc_w, lo, hi))
        part[b] = s;
    }
    if (dalpha) {
        const float s = (float)sum_blocks(part, nb);
        *dalpha = acc_alpha ? *dalpha + s : s;
    }
}

void quant_act_forward_cpu(float *aq, const float *a, const float *alpha,
                           const struct qt_apot_quantizer *qz, int64_t n)
{
    const float al = *alpha;
    const float *lv = qz->levels, *th = qz->thr;
    const int sg = qz->is_signed;
    const int64_t bs = block_size(n), nb = block_count(n, bs);
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        DISPATCH(qz->n, lv, th, act_fwd_block(aq, a, al, lvs, ths, nl, sg, lo, hi))
    }
}

void quant_act_backward_cpu(float *da, float *dalpha, const float *daq, const float *a,
                            const float *alpha, const struct qt_apot_quantizer *qz, int64_t n,
                            int acc_a, int acc_alpha)
{
    const float al = *alpha;
    const float *lv = qz->levels, *th = qz->thr;
    const int sg = qz->is_signed;
    const int64_t bs = block_size(n), nb = block_count(n, bs);
    double part[QMAX_BLOCKS];
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        double s = 0.0;
        DISPATCH(qz->n, lv, th, s = act_bwd_block(da, daq, a, al, lvs, ths, nl, sg, acc_a, lo, hi))
        part[b] = s;
    }
    if (dalpha) {
        const float s = (float)sum_blocks(part, nb);
        *dalpha = acc_alpha ? *dalpha + s : s;
    }
}

void quant_int8_weight_forward_cpu(float *wq, float *save_m, const float *w, int abs_max, int64_t n)
{
    const int64_t bs = block_size(n), nb = block_count(n, bs);
    float part[QMAX_BLOCKS];
    int bad[QMAX_BLOCKS];
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        float m = -INFINITY;
        int nan = 0;
        if (abs_max) {
#pragma omp simd reduction(max : m) reduction(| : nan)
            for (int64_t i = lo; i < hi; i++) {
                m = fmaxf(m, fabsf(w[i]));
                nan |= w[i] != w[i];
            }
        } else {
#pragma omp simd reduction(max : m) reduction(| : nan)
            for (int64_t i = lo; i < hi; i++) {
                m = fmaxf(m, w[i]);
                nan |= w[i] != w[i];
            }
        }
        part[b] = m;
        bad[b] = nan;
    }
    float m = n > 0 ? -INFINITY : 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        m = part[b] > m ? part[b] : m;
        if (bad[b]) m = NAN;
        if (m != m) break;
    }
    if (save_m) *save_m = m;
#pragma omp parallel for schedule(static) if (nb > 2)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            wq[i] = qt_apot_int8_q(w[i], m);
    }
}

void quant_int8_weight_backward_cpu(float *dw, const float *dwq, int64_t n, int acc)
{
    if (!dw) return;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        dw[i] = acc ? dw[i] + dwq[i] : dwq[i];
}
