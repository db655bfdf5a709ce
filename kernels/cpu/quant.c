/* CPU fake-quantizer kernels: APoT / uniform weight quantizers (per-tensor or per-channel
 * alpha) and activation quantizers (forward and backward), the 8-bit first/last layer weights,
 * and the MSE search of an initial alpha, on the scalar formulas of kernels/common/apot.h.
 * Loops are OpenMP-parallel over fixed blocks; reductions keep one double partial per block
 * and add them in block order (thread-count independent). */
#include "kernels/cpu/quant.h"
#include "kernels/cpu/dispatch.h"

#include <float.h>
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

/* Blocks of a weight tensor with nalpha alphas (channels of cs = n / nalpha elements) that
 * never straddle a channel boundary, so that each channel's dalpha is a fixed sequence of
 * block partials: channels of at most bs elements are grouped, `per` = bs / cs whole channels
 * to a block; larger channels are cut into spc = ceil(cs / bs) blocks of at most bs elements.
 * Either way there are at most 2 * QMAX_BLOCKS blocks, since n <= bs * QMAX_BLOCKS (grouped
 * blocks hold more than bs / 2 elements; cut ones number n / bs + nalpha < 2 n / bs). */
struct chan_split {
    int64_t nalpha, cs, bs;
    int64_t per; /* grouped: channels per block; 0 when channels are cut */
    int64_t spc; /* cut: blocks per channel */
    int64_t nb;  /* number of blocks */
};

/* Requires n > 0, nalpha >= 1 and n % nalpha == 0. */
static struct chan_split chan_split(int64_t n, int64_t nalpha)
{
    struct chan_split sp;
    sp.nalpha = nalpha;
    sp.bs = block_size(n);
    sp.cs = n / nalpha;
    if (sp.cs <= sp.bs) {
        sp.per = sp.bs / sp.cs;
        sp.spc = 0;
        sp.nb = (nalpha + sp.per - 1) / sp.per;
    } else {
        sp.per = 0;
        sp.spc = (sp.cs + sp.bs - 1) / sp.bs;
        sp.nb = nalpha * sp.spc;
    }
    return sp;
}

/* Element range [lo, hi) of block b. */
static void chan_block(const struct chan_split *sp, int64_t b, int64_t *lo, int64_t *hi)
{
    if (sp->per) {
        const int64_t c0 = b * sp->per;
        const int64_t c1 = c0 + sp->per < sp->nalpha ? c0 + sp->per : sp->nalpha;
        *lo = c0 * sp->cs;
        *hi = c1 * sp->cs;
    } else {
        const int64_t c = b / sp->spc, end = (c + 1) * sp->cs;
        *lo = c * sp->cs + (b % sp->spc) * sp->bs;
        *hi = *lo + sp->bs < end ? *lo + sp->bs : end;
    }
}

QT_CPU_CLONES void quant_weight_stats_cpu(float *mu, float *sigma, const float *w, int64_t n)
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
                                       float sigma, int st, float alpha, const float *restrict lv,
                                       const float *restrict th, int nl, int64_t lo, int64_t hi)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float x = qt_apot_weight_x(w[i], mu, sigma, alpha);
        wq[i] = qt_apot_weight_out(alpha * qt_apot_signed_q(x, lv, th, nl), mu, sigma, st);
    }
}

/* weight_fwd_block over each channel's part of [lo, hi) with that channel's alpha. */
QT_ALWAYS_INLINE void weight_fwd_range(float *restrict wq, const float *restrict w, float mu,
                                       float sigma, int st, const float *restrict alpha, int64_t cs,
                                       const float *restrict lv, const float *restrict th, int nl,
                                       int64_t lo, int64_t hi)
{
    for (int64_t s = lo; s < hi;) {
        const int64_t c = s / cs, e = (c + 1) * cs < hi ? (c + 1) * cs : hi;
        weight_fwd_block(wq, w, mu, sigma, st, alpha[c], lv, th, nl, s, e);
        s = e;
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
                                         int st, float alpha, const float *restrict lv,
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
            dw[i] += qt_apot_weight_dx(g[i], sigma, st);
    } else if (dw) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            dw[i] = qt_apot_weight_dx(g[i], sigma, st);
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

QT_CPU_CLONES void quant_weight_forward_cpu(float *wq, float *save_mu, float *save_sigma,
                                            const float *w, const float *alpha, int64_t nalpha,
                                            int standardize, const struct qt_apot_quantizer *qz,
                                            int64_t n)
{
    float mu = 0.0f, sigma = 1.0f;
    if (standardize) quant_weight_stats_cpu(&mu, &sigma, w, n);
    if (save_mu) *save_mu = mu;
    if (save_sigma) *save_sigma = sigma;
    if (n <= 0) return;
    const float *lv = qz->levels, *th = qz->thr;
    const struct chan_split sp = chan_split(n, nalpha);
    const int64_t cs = sp.cs;
#pragma omp parallel for schedule(static) if (sp.nb > 2)
    for (int64_t b = 0; b < sp.nb; b++) {
        int64_t lo, hi;
        chan_block(&sp, b, &lo, &hi);
        DISPATCH(qz->n, lv, th,
                 weight_fwd_range(wq, w, mu, sigma, standardize, alpha, cs, lvs, ths, nl, lo, hi))
    }
}

QT_CPU_CLONES void quant_weight_backward_cpu(float *dw, float *dalpha, const float *dwq,
                                             const float *w, const float *alpha, int64_t nalpha,
                                             int standardize, const float *save_mu,
                                             const float *save_sigma,
                                             const struct qt_apot_quantizer *qz, int64_t n,
                                             int acc_w, int acc_alpha)
{
    if (n <= 0) {
        if (dalpha && !acc_alpha)
            for (int64_t c = 0; c < nalpha; c++)
                dalpha[c] = 0.0f;
        return;
    }
    const float mu = *save_mu, sigma = *save_sigma;
    const double ds = qt_apot_weight_dalpha_scale(sigma, standardize);
    const float *lv = qz->levels, *th = qz->thr;
    const struct chan_split sp = chan_split(n, nalpha);
    const int64_t cs = sp.cs;
    /* cut channels: one partial per block, added per channel afterwards; grouped channels are
     * whole inside one block, which writes their dalpha itself */
    double part[2 * QMAX_BLOCKS];
#pragma omp parallel for schedule(static) if (sp.nb > 2)
    for (int64_t b = 0; b < sp.nb; b++) {
        int64_t lo, hi;
        chan_block(&sp, b, &lo, &hi);
        for (int64_t s = lo; s < hi;) {
            const int64_t c = s / cs, e = (c + 1) * cs < hi ? (c + 1) * cs : hi;
            const float al = alpha[c];
            double p = 0.0;
            DISPATCH(qz->n, lv, th,
                     p = weight_bwd_block(dw, dwq, w, mu, sigma, standardize, al, lvs, ths, nl,
                                          acc_w, s, e))
            p *= ds;
            if (!sp.per)
                part[b] = p;
            else if (dalpha)
                dalpha[c] = acc_alpha ? dalpha[c] + (float)p : (float)p;
            s = e;
        }
    }
    if (dalpha && !sp.per) {
        for (int64_t c = 0; c < nalpha; c++) {
            const float p = (float)sum_blocks(part + c * sp.spc, sp.spc);
            dalpha[c] = acc_alpha ? dalpha[c] + p : p;
        }
    }
}

QT_CPU_CLONES void quant_act_forward_cpu(float *aq, const float *a, const float *alpha,
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

QT_CPU_CLONES void quant_act_backward_cpu(float *da, float *dalpha, const float *daq,
                                          const float *a, const float *alpha,
                                          const struct qt_apot_quantizer *qz, int64_t n, int acc_a,
                                          int acc_alpha)
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

/* ---- MSE search of alpha ---- */

/* Candidates: QMSE_COARSE evenly up to the maximum, then QMSE_FINE - 2 between the best
 * coarse candidate's neighbours (steps of 2 / QMSE_FINE coarse steps, itself excluded). */
#define QMSE_COARSE QT_ALPHA_COARSE
#define QMSE_FINE QT_ALPHA_FINE

/* sum((alpha * q(x / alpha) - x)^2) over x[0..n). NaN and Inf samples are replaced by 0, which
 * adds exactly 0 (q(0) = 0 in both quantizers). */
QT_ALWAYS_INLINE double mse_block(const float *restrict x, float alpha, const float *restrict lv,
                                  const float *restrict th, int nl, int is_signed, int64_t n)
{
    double s = 0.0;
    if (is_signed) {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < n; i++) {
            const float v = fabsf(x[i]) <= FLT_MAX ? x[i] : 0.0f;
            const float d = alpha * qt_apot_signed_q(v / alpha, lv, th, nl) - v;
            s += (double)d * (double)d;
        }
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < n; i++) {
            const float v = fabsf(x[i]) <= FLT_MAX ? x[i] : 0.0f;
            const float d = alpha * qt_apot_unsigned_q(v / alpha, lv, th, nl) - v;
            s += (double)d * (double)d;
        }
    }
    return s;
}

/* Fills err[k] with the error of alpha cand[k], k < nc; one candidate per thread at a time, each
 * summed whole in a fixed order (thread-count independent). */
QT_CPU_CLONES static void mse_errors(double *err, const float *cand, int nc, const float *x,
                                     int64_t n, const struct qt_apot_quantizer *qz)
{
    const float *lv = qz->levels, *th = qz->thr;
    const int sg = qz->is_signed;
#pragma omp parallel for schedule(dynamic, 1) if (n >= 4096)
    for (int k = 0; k < nc; k++) {
        const float al = cand[k];
        double s = 0.0;
        DISPATCH(qz->n, lv, th, s = mse_block(x, al, lvs, ths, nl, sg, n))
        err[k] = s;
    }
}

QT_CPU_CLONES float quant_alpha_mse_cpu(const float *x, int64_t n,
                                        const struct qt_apot_quantizer *qz)
{
    const int sg = qz->is_signed;
    float m = 0.0f;
    if (sg) {
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < n; i++) {
            const float a = fabsf(x[i]);
            m = fmaxf(m, a <= FLT_MAX ? a : 0.0f);
        }
    } else {
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < n; i++)
            m = fmaxf(m, fabsf(x[i]) <= FLT_MAX ? x[i] : 0.0f);
    }
    if (!(m > 0.0f)) return 1.0f;

    float cand[QMSE_COARSE > QMSE_FINE ? QMSE_COARSE : QMSE_FINE];
    double err[QMSE_COARSE > QMSE_FINE ? QMSE_COARSE : QMSE_FINE];
    /* the best so far: m itself until a candidate has a lower error (m always has a finite one) */
    float best = m;
    double best_err = INFINITY;
    int kbest = QMSE_COARSE;
    for (int k = 1; k <= QMSE_COARSE; k++)
        cand[k - 1] = (float)((double)m * k / QMSE_COARSE);
    mse_errors(err, cand, QMSE_COARSE, x, n, qz);
    for (int k = 1; k <= QMSE_COARSE; k++)
        if (cand[k - 1] > 0.0f && err[k - 1] < best_err) {
            best_err = err[k - 1];
            best = cand[k - 1];
            kbest = k;
        }
    /* refine between the neighbours m (kbest -+ 1) / QMSE_COARSE, kbest itself excluded */
    const double lo = (double)m * (kbest - 1) / QMSE_COARSE;
    const double step = (double)m * 2.0 / QMSE_COARSE / QMSE_FINE;
    int nf = 0;
    for (int j = 1; j < QMSE_FINE; j++)
        if (2 * j != QMSE_FINE) cand[nf++] = (float)(lo + step * j);
    mse_errors(err, cand, nf, x, n, qz);
    for (int j = 0; j < nf; j++)
        if (cand[j] > 0.0f && (err[j] < best_err || (err[j] == best_err && cand[j] < best))) {
            best_err = err[j];
            best = cand[j];
        }
    return best;
}

int64_t quant_subsample_cpu(float *out, int64_t m, const float *x, int64_t n)
{
    if (m <= 0 || n <= 0) return 0;
    const int64_t stride = n / m + (n % m != 0);
    int64_t c = 0;
    for (int64_t i = 0; i < n && c < m; i += stride)
        out[c++] = x[i];
    return c;
}

QT_CPU_CLONES void quant_int8_weight_forward_cpu(float *wq, float *save_m, const float *w,
                                                 int abs_max, int64_t n)
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

QT_CPU_CLONES void quant_int8_weight_backward_cpu(float *dw, const float *dwq, int64_t n, int acc)
{
    if (!dw) return;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        dw[i] = acc ? dw[i] + dwq[i] : dwq[i];
}

/* The magnitude calibration looks at: x (unsigned) or |x| (signed); NaN and Inf count as 0. */
static inline float calib_mag(float v, int is_signed)
{
    return isfinite(v) ? (is_signed ? fabsf(v) : v) : 0.0f;
}

void quant_range_max_cpu(float *m, const float *x, int64_t n, int is_signed)
{
    float r = *m;
#pragma omp parallel for reduction(max : r) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        const float v = calib_mag(x[i], is_signed);
        r = v > r ? v : r;
    }
    *m = r;
}

float quant_alpha_percentile_cpu(float *x, int64_t n, double p, int is_signed)
{
    if (n <= 0) return 1.0f;
    for (int64_t i = 0; i < n; i++) x[i] = calib_mag(x[i], is_signed);
    int64_t k = (int64_t)ceil(p / 100.0 * (double)n) - 1;
    k = k < 0 ? 0 : k >= n ? n - 1 : k;
    /* quickselect (Hoare partition around the middle element) for the k-th smallest */
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const float piv = x[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < piv) i++;
            while (x[j] > piv) j--;
            if (i <= j) {
                const float t = x[i];
                x[i++] = x[j];
                x[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    const float a = x[k];
    return a > 0.0f ? a : 1.0f;
}
