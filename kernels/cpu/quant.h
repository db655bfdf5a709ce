/* CPU fake-quantizer kernels (APOT.md sections 2-4): APoT / uniform weight and activation
 * quantizers with one learnable alpha per tensor, and the 8-bit first/last layer weights.
 * Argument order: outputs, then inputs, then sizes. Backward kernels assign (=) an output
 * when its acc flag is 0 and accumulate (+=) when 1; NULL outputs are skipped.
 * alpha and dalpha point to one float each. Sums (mean, variance, dalpha) are taken in double
 * over fixed blocks combined in order, so results do not depend on the thread count. */
#ifndef QT_KERNELS_CPU_QUANT_H
#define QT_KERNELS_CPU_QUANT_H

#include <stdint.h>

#include "kernels/common/apot.h"

/* mu = mean(w), sigma = unbiased std(w), both computed in double and rounded to float.
 * A tensor with sigma = 0 (constant) or fewer than 2 elements gets sigma = 1. */
void quant_weight_stats_cpu(float *mu, float *sigma, const float *w, int64_t n);

/* Weight quantizer forward: x = ((w - mu) / sigma) / alpha, q = sign(xc) * nearest(|xc|),
 * xc = clamp(x, -1, 1), wq = alpha * q. Writes mu and sigma (from quant_weight_stats_cpu) to
 * save_mu and save_sigma (one float each) for the backward. qz comes from a successful
 * qt_apot_quantizer_init with is_signed = 1 (weights are always quantized signed). */
void quant_weight_forward_cpu(float *wq, float *save_mu, float *save_sigma, const float *w,
                              const float *alpha, const struct qt_apot_quantizer *qz, int64_t n);

/* Weight quantizer backward for dwq = dL/dwq: dw = dwq / sigma (straight-through, not
 * clipped), dalpha = sum(dwq * (|x| > 1 ? sign(x) : q - x)). */
void quant_weight_backward_cpu(float *dw, float *dalpha, const float *dwq, const float *w,
                               const float *alpha, const float *save_mu, const float *save_sigma,
                               const struct qt_apot_quantizer *qz, int64_t n, int acc_w,
                               int acc_alpha);

/* Activation quantizer forward, x = a / alpha, aq = alpha * q. Unsigned (qz->is_signed = 0):
 * q = nearest(min(x, 1)), negatives give 0. Signed: q = sign(xc) * nearest(|xc|),
 * xc = clamp(x, -1, 1). */
void quant_act_forward_cpu(float *aq, const float *a, const float *alpha,
                           const struct qt_apot_quantizer *qz, int64_t n);

/* Activation quantizer backward. Unsigned: da = daq * (x <= 1),
 * dalpha = sum(daq * (x > 1 ? 1 : q - x)). Signed: da = daq * (|x| <= 1),
 * dalpha = sum(daq * (|x| > 1 ? sign(x) : q - x)). */
void quant_act_backward_cpu(float *da, float *dalpha, const float *daq, const float *a,
                            const float *alpha, const struct qt_apot_quantizer *qz, int64_t n,
                            int acc_a, int acc_alpha);

/* 8-bit weights of the first and last layer: wq = round(w / m * 127) / 127 * m with
 * m = max(w) (abs_max = 0, the reference code's choice) or max|w| (abs_max = 1); m is written
 * to save_m (may be NULL). m = 0 copies w. NaN in w propagates to every output. */
void quant_int8_weight_forward_cpu(float *wq, float *save_m, const float *w, int abs_max,
                                   int64_t n);
/* Straight-through: dw = dwq. */
void quant_int8_weight_backward_cpu(float *dw, const float *dwq, int64_t n, int acc);

#endif
