/* Reference fake quantizers (APOT.md sections 2-4), forward and backward: one element at a time
 * with the per-element formulas of kernels/common/apot.h, sums (statistics, dalpha) in double. */
#include <math.h>
#include <stdlib.h>

#include "kernels/ref/ref.h"

void quant_weight_stats_ref(float *mu, float *sigma, const float *w, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += w[i];
    const double m = n > 0 ? s / n : 0.0;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += ((double)w[i] - m) * ((double)w[i] - m);
    const float sd = (float)sqrt(n > 1 ? ss / (n - 1) : 0.0);
    *mu = (float)m;
    *sigma = (sd > 0.0f || isnan(sd)) ? sd : 1.0f;
}

void quant_weight_forward_ref(float *wq, float *save_mu, float *save_sigma, const float *w,
                              const float *alpha, int64_t nalpha, int standardize,
                              const struct qt_apot_quantizer *qz, int64_t n)
{
    float mu = 0.0f, sigma = 1.0f;
    if (standardize) quant_weight_stats_ref(&mu, &sigma, w, n);
    if (save_mu) *save_mu = mu;
    if (save_sigma) *save_sigma = sigma;
    if (n <= 0) return;
    const int64_t cs = n / nalpha; /* elements per channel */
    for (int64_t i = 0; i < n; i++) {
        const float al = alpha[i / cs];
        const float x = qt_apot_weight_x(w[i], mu, sigma, al);
        wq[i] = qt_apot_weight_out(al * qt_apot_signed_q(x, qz->levels, qz->thr, qz->n), mu, sigma,
                                   standardize);
    }
}

void quant_weight_backward_ref(float *dw, float *dalpha, const float *dwq, const float *w,
                               const float *alpha, int64_t nalpha, int standardize,
                               const float *save_mu, const float *save_sigma,
                               const struct qt_apot_quantizer *qz, int64_t n, int acc_w,
                               int acc_alpha)
{
    const int64_t cs = n > 0 ? n / nalpha : 0;
    const float mu = n > 0 ? *save_mu : 0.0f, sigma = n > 0 ? *save_sigma : 1.0f;
    if (dw)
        for (int64_t i = 0; i < n; i++) {
            const float g = qt_apot_weight_dx(dwq[i], sigma, standardize);
            dw[i] = acc_w ? dw[i] + g : g;
        }
    if (!dalpha) return;
    for (int64_t c = 0; c < nalpha; c++) {
        double s = 0.0;
        for (int64_t i = c * cs; i < (c + 1) * cs; i++) {
            const float x = qt_apot_weight_x(w[i], mu, sigma, alpha[c]);
            const float q = qt_apot_signed_q(x, qz->levels, qz->thr, qz->n);
            s += (double)dwq[i] * qt_apot_signed_dalpha(x, q);
        }
        s *= qt_apot_weight_dalpha_scale(sigma, standardize);
        dalpha[c] = acc_alpha ? dalpha[c] + (float)s : (float)s;
    }
}

void quant_act_forward_ref(float *aq, const float *a, const float *alpha,
                           const struct qt_apot_quantizer *qz, int64_t n)
{
    const float al = *alpha;
    for (int64_t i = 0; i < n; i++) {
        const float x = a[i] / al;
        const float q = qz->is_signed ? qt_apot_signed_q(x, qz->levels, qz->thr, qz->n)
                                      : qt_apot_unsigned_q(x, qz->levels, qz->thr, qz->n);
        aq[i] = al * q;
    }
}

void quant_act_backward_ref(float *da, float *dalpha, const float *daq, const float *a,
                            const float *alpha, const struct qt_apot_quantizer *qz, int64_t n,
                            int acc_a, int acc_alpha)
{
    const float al = *alpha;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float x = a[i] / al;
        float g, f; /* dL/da and the dalpha factor of element i */
        if (qz->is_signed) {
            const float q = qt_apot_signed_q(x, qz->levels, qz->thr, qz->n);
            g = qt_apot_signed_act_dx(daq[i], x);
            f = qt_apot_signed_dalpha(x, q);
        } else {
            const float q = qt_apot_unsigned_q(x, qz->levels, qz->thr, qz->n);
            g = qt_apot_unsigned_dx(daq[i], x);
            f = qt_apot_unsigned_dalpha(x, q);
        }
        if (da) da[i] = acc_a ? da[i] + g : g;
        s += (double)daq[i] * f;
    }
    if (dalpha) *dalpha = acc_alpha ? *dalpha + (float)s : (float)s;
}

void quant_int8_weight_forward_ref(float *wq, float *save_m, const float *w, int abs_max, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float v = abs_max ? fabsf(w[i]) : w[i];
        if (isnan(v)) {
            m = NAN;
            break;
        }
        if (i == 0 || v > m) m = v;
    }
    if (save_m) *save_m = m;
    for (int64_t i = 0; i < n; i++)
        wq[i] = qt_apot_int8_q(w[i], m);
}

void quant_int8_weight_backward_ref(float *dw, const float *dwq, int64_t n, int acc)
{
    for (int64_t i = 0; i < n; i++)
        dw[i] = acc ? dw[i] + dwq[i] : dwq[i];
}

void quant_subsample_ref(float *out, int64_t m, const float *x, int64_t n)
{
    const int64_t cnt = qt_subsample_count(m, n);
    const int64_t step = cnt ? n / m + (n % m != 0) : 0;
    for (int64_t k = 0; k < cnt; k++)
        out[k] = x[k * step];
}

/* sum over x of (alpha * q(x / alpha) - x)^2, NaN and Inf counted as 0 (q(0) = 0). */
static double quant_error_ref(const float *x, int64_t n, float alpha,
                              const struct qt_apot_quantizer *qz)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float v = isfinite(x[i]) ? x[i] : 0.0f;
        const float q = qz->is_signed ? qt_apot_signed_q(v / alpha, qz->levels, qz->thr, qz->n)
                                      : qt_apot_unsigned_q(v / alpha, qz->levels, qz->thr, qz->n);
        const float d = alpha * q - v;
        s += (double)d * (double)d;
    }
    return s;
}

float quant_alpha_search_ref(const float *x, int64_t n, const struct qt_apot_quantizer *qz)
{
    float m = 0.0f; /* the largest |x| (signed) or x (unsigned) */
    for (int64_t i = 0; i < n; i++) {
        const float v = isfinite(x[i]) ? (qz->is_signed ? fabsf(x[i]) : x[i]) : 0.0f;
        if (v > m) m = v;
    }
    if (!(m > 0.0f)) return 1.0f;
    float best = m;
    double best_err = INFINITY;
    int kbest = QT_ALPHA_COARSE;
    for (int k = 1; k <= QT_ALPHA_COARSE; k++) { /* coarse: m * k / COARSE */
        const float a = (float)((double)m * k / QT_ALPHA_COARSE);
        const double err = a > 0.0f ? quant_error_ref(x, n, a, qz) : INFINITY;
        if (err < best_err) {
            best_err = err;
            best = a;
            kbest = k;
        }
    }
    /* fine: between the best coarse candidate's neighbours, itself excluded */
    const double lo = (double)m * (kbest - 1) / QT_ALPHA_COARSE;
    const double step = (double)m * 2.0 / QT_ALPHA_COARSE / QT_ALPHA_FINE;
    for (int j = 1; j < QT_ALPHA_FINE; j++) {
        if (2 * j == QT_ALPHA_FINE) continue;
        const float a = (float)(lo + step * j);
        if (!(a > 0.0f)) continue;
        const double err = quant_error_ref(x, n, a, qz);
        if (err < best_err || (err == best_err && a < best)) {
            best_err = err;
            best = a;
        }
    }
    return best;
}

static float ref_mag(float v, int is_signed)
{
    return isfinite(v) ? (is_signed ? fabsf(v) : v) : 0.0f;
}

void quant_range_max_ref(float *m, const float *x, int64_t n, int is_signed)
{
    for (int64_t i = 0; i < n; i++) {
        const float v = ref_mag(x[i], is_signed);
        if (v > *m) *m = v;
    }
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

float quant_alpha_percentile_ref(const float *x, int64_t n, double p, int is_signed)
{
    if (n <= 0) return 1.0f;
    float *s = malloc(sizeof(float) * (size_t)n);
    if (!s) return NAN;
    for (int64_t i = 0; i < n; i++) s[i] = ref_mag(x[i], is_signed);
    qsort(s, (size_t)n, sizeof(float), cmp_float);
    int64_t k = (int64_t)ceil(p / 100.0 * (double)n) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    const float a = s[k];
    free(s);
    return a > 0.0f ? a : 1.0f;
}
