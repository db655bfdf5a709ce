/* CPU fake-quantizer kernels (APOT.md sections 2-4): APoT / uniform weight quantizers with one
 * learnable alpha per tensor or per output channel, activation quantizers with one alpha per
 * tensor, the 8-bit first/last layer weights, and a data-driven initial alpha (MSE search).
 * Argument order: outputs, then inputs, then sizes. Backward kernels assign (=) an output
 * when its acc flag is 0 and accumulate (+=) when 1; NULL outputs are skipped.
 * Sums (mean, variance, dalpha, search errors) are taken in double over fixed blocks combined
 * in order, so results do not depend on the thread count. */
#ifndef QT_KERNELS_CPU_QUANT_H
#define QT_KERNELS_CPU_QUANT_H

#include <stdint.h>

#include "kernels/common/apot.h"

/* mu = mean(w), sigma = unbiased std(w), both computed in double and rounded to float.
 * A tensor with sigma = 0 (constant) or fewer than 2 elements gets sigma = 1. */
void quant_weight_stats_cpu(float *mu, float *sigma, const float *w, int64_t n);

/* Weight quantizer forward: x = ((w - mu) / sigma) / alpha[c], q = sign(xc) * nearest(|xc|),
 * xc = clamp(x, -1, 1), wq = alpha[c] * q.
 * nalpha: 1 (one alpha for the whole tensor) or the number of output channels C, the leading
 * dimension of the weight (per-channel alphas); n % nalpha == 0 is required, and element i
 * belongs to channel c = i / (n / nalpha). The standardization is per tensor either way:
 * standardize = QT_STD_ON (1) takes mu and sigma from quant_weight_stats_cpu over all n
 * elements; QT_STD_RESTORE (2) as well, and maps the result back: wq = sigma * alpha[c] * q + mu;
 * QT_STD_NONE (0) uses mu = 0, sigma = 1 (x = w / alpha[c]). mu and sigma are written to
 * save_mu and save_sigma (one float each, may be NULL) for the backward. qz comes from a
 * successful qt_apot_quantizer_init with is_signed = 1 (weights are always quantized signed). */
void quant_weight_forward_cpu(float *wq, float *save_mu, float *save_sigma, const float *w,
                              const float *alpha, int64_t nalpha, int standardize,
                              const struct qt_apot_quantizer *qz, int64_t n);

/* Weight quantizer backward for dwq = dL/dwq, with the forward's alpha, nalpha, standardize
 * and saved mu and sigma: dw = dwq / sigma (straight-through, not clipped; dw = dwq without
 * standardization, where sigma = 1, and when mapped back), dalpha[c] = sum over channel c of
 * dwq * (|x| > 1 ? sign(x) : q - x), times sigma when mapped back; dalpha has nalpha entries. */
void quant_weight_backward_cpu(float *dw, float *dalpha, const float *dwq, const float *w,
                               const float *alpha, int64_t nalpha, int standardize,
                               const float *save_mu, const float *save_sigma,
                               const struct qt_apot_quantizer *qz, int64_t n, int acc_w,
                               int acc_alpha);

/* Activation quantizer forward (alpha: one float for the tensor), x = a / alpha,
 * aq = alpha * q. Unsigned (qz->is_signed = 0): q = nearest(min(x, 1)), negatives give 0.
 * Signed: q = sign(xc) * nearest(|xc|), xc = clamp(x, -1, 1). */
void quant_act_forward_cpu(float *aq, const float *a, const float *alpha,
                           const struct qt_apot_quantizer *qz, int64_t n);

/* Activation quantizer backward. Unsigned: da = daq * (x <= 1),
 * dalpha = sum(daq * (x > 1 ? 1 : q - x)). Signed: da = daq * (|x| <= 1),
 * dalpha = sum(daq * (|x| > 1 ? sign(x) : q - x)) (one float). */
void quant_act_backward_cpu(float *da, float *dalpha, const float *daq, const float *a,
                            const float *alpha, const struct qt_apot_quantizer *qz, int64_t n,
                            int acc_a, int acc_alpha);

/* The alpha minimizing sum_i (alpha * q(x_i / alpha) - x_i)^2 over the n samples x (already
 * standardized for weights; raw activations otherwise), q the quantizer qz describes (signed or
 * unsigned per qz->is_signed). Returns a positive alpha; 1.0f when every x is 0 (or for
 * unsigned, every x <= 0); NaN/Inf samples are ignored.
 * Search: alpha = m * k / 100, k = 1..100, with m = max|x| (signed) or max x (unsigned); then
 * the finer grid m * (k_best - 1 + j / 20) / 100, j = 1..39 (j != 20), between the best
 * candidate's neighbours (up to 1.01 m when k_best = 100). The error is summed in double with
 * apot.h's per-element formulas; the lowest error wins, the smaller alpha on a tie.
 * Deterministic (thread-count independent), OpenMP-parallel over candidates. */
float quant_alpha_mse_cpu(const float *x, int64_t n, const struct qt_apot_quantizer *qz);

/* Activation ranges for calibration, over x (unsigned quantizers) or |x| (signed), NaN and Inf
 * counted as 0. range_max: *m = max(*m, the largest of them) (accumulates over calls).
 * alpha_percentile: the p-th percentile of them (nearest rank: the ceil(p / 100 * n)-th
 * smallest, at least the smallest), or 1.0f when that is not positive or n = 0; x is
 * overwritten (scratch). */
void quant_range_max_cpu(float *m, const float *x, int64_t n, int is_signed);
float quant_alpha_percentile_cpu(float *x, int64_t n, double p, int is_signed);

/* Copies up to m samples of x (n elements) into out, evenly strided (every ceil(n/m)-th element
 * starting at 0); returns how many were written (0 when n or m is not positive). */
int64_t quant_subsample_cpu(float *out, int64_t m, const float *x, int64_t n);

/* 8-bit weights of the first and last layer: wq = round(w / m * 127) / 127 * m with
 * m = max(w) (abs_max = 0, the reference code's choice) or max|w| (abs_max = 1); m is written
 * to save_m (may be NULL). m = 0 copies w. NaN in w propagates to every output. */
void quant_int8_weight_forward_cpu(float *wq, float *save_m, const float *w, int abs_max,
                                   int64_t n);
/* Straight-through: dw = dwq. */
void quant_int8_weight_backward_cpu(float *dw, const float *dwq, int64_t n, int acc);

#endif
