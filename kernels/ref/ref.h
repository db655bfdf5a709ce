/* Reference kernels: plain loops, one file per op family with forward and backward side by
 * side, sums taken in double. The oracle every other backend is compared with (runtime/
 * backend_ref.c); written to be read, not to be fast: no threads, no BLAS, no oneDNN. */
#ifndef QT_KERNELS_REF_H
#define QT_KERNELS_REF_H

#include <stdint.h>

#include "../common/desc.h"

/* Argument order: outputs, then inputs, then sizes. Every backward kernel assigns (=) an
 * output when its acc flag is 0 and accumulates (+=) when 1; NULL outputs are skipped.
 * Tensors are float32, row-major (NCHW for activations). */

/* ---- Convolution (conv.c); geometry in struct qt_conv2d_desc ----
 * y[n,k,oh,ow] = b[k] + sum over ci, r, q of x[n, g*cg+ci, ih, iw] * w[k, ci, r, q], with
 * g = k / kg the group of output channel k (cg = c / group, kg = k / group input and output
 * channels per group), ih = oh*sh - pt + r*dh, iw = ow*sw - pl + q*dw; taps outside the input
 * read zero. b may be NULL. Returns -1 (nothing written) when the group count does not divide
 * c and k. */
int conv2d_forward_ref(float *y, const float *x, const float *w, const float *b,
                       const struct qt_conv2d_desc *d);
/* dx = sum over the outputs that read x of dy * w; dw[k,ci,r,q] = sum of dy * x over the
 * batch and output positions; db[k] = sum of dy[:, k]. Returns -1 as the forward does. */
int conv2d_backward_ref(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const struct qt_conv2d_desc *d, int acc_x, int acc_w,
                        int acc_b);

/* ---- Pooling (pool.c) over [n*c] planes, windows as in the convolution ----
 * Max pool: the largest tap inside the input (padding never wins; NaN wins, and among equal
 * values the first in row-major tap order); a window without a tap inside gives -inf.
 * Average pool: the sum of the taps inside the input divided by the count of taps inside the
 * input, or when count_include_pad inside the padded extent [-pad_begin, size + pad_end)
 * (a ceil-mode window overhanging the end padding counts only the taps up to it); count 0
 * gives 0. */
void maxpool2d_forward_ref(float *y, const float *x, const struct qt_conv2d_desc *d);
/* Each output's gradient goes to the tap the forward picked. */
void maxpool2d_backward_ref(float *dx, const float *dy, const float *x,
                            const struct qt_conv2d_desc *d, int acc);
void avgpool2d_forward_ref(float *y, const float *x, const struct qt_conv2d_desc *d,
                           int count_include_pad);
/* Each output's gradient divided by its count goes to its taps inside the input. */
void avgpool2d_backward_ref(float *dx, const float *dy, const struct qt_conv2d_desc *d,
                            int count_include_pad, int acc);
/* y[p] = mean of x[p, 0:hw] over nc planes; backward dx[p, :] = dy[p] / hw. */
void global_avgpool_forward_ref(float *y, const float *x, int64_t nc, int64_t hw);
void global_avgpool_backward_ref(float *dx, const float *dy, int64_t nc, int64_t hw, int acc);

/* ---- BatchNormalization (batchnorm.c) over [n, c, hw] ----
 * Inference: y = (x - mean) / sqrt(var + eps) * scale + bias per channel. */
void batchnorm_infer_forward_ref(float *y, const float *x, const float *scale, const float *bias,
                                 const float *mean, const float *var, float eps, int64_t n,
                                 int64_t c, int64_t hw);
/* Training, with m = n * hw values per channel: batch mean mu and biased variance v,
 * invstd = 1 / sqrt(v + eps), y = (x - mu) * invstd * scale + bias; save_mean = mu and
 * save_invstd = invstd (for backward); running statistics updated in place (PyTorch's rule):
 * run_mean = (1 - momentum) * run_mean + momentum * mu,
 * run_var = (1 - momentum) * run_var + momentum * v * m / (m - 1) (v itself when m = 1). */
void batchnorm_train_forward_ref(float *y, float *save_mean, float *save_invstd, float *run_mean,
                                 float *run_var, const float *x, const float *scale,
                                 const float *bias, float eps, float momentum, int64_t n, int64_t c,
                                 int64_t hw);
/* Backward of the training forward, xhat = (x - save_mean) * save_invstd:
 * dbias = sum dy, dscale = sum dy * xhat,
 * dx = scale * save_invstd * (dy - dbias / m - xhat * dscale / m). */
void batchnorm_backward_ref(float *dx, float *dscale, float *dbias, const float *dy, const float *x,
                            const float *scale, const float *save_mean, const float *save_invstd,
                            int64_t n, int64_t c, int64_t hw, int acc_x, int acc_scale,
                            int acc_bias);

/* ---- Elementwise (elementwise.c) ---- */
/* y = max(x, 0); backward dx = dy where y > 0 (y: the forward's output), else 0. */
void relu_forward_ref(float *y, const float *x, int64_t n);
void relu_backward_ref(float *dx, const float *dy, const float *y, int64_t n, int acc);
/* Sigmoid: y = 1 / (1 + exp(-x)); backward dx = dy y (1 - y) from the output y. */
void sigmoid_forward_ref(float *y, const float *x, int64_t n);
void sigmoid_backward_ref(float *dx, const float *dy, const float *y, int64_t n, int acc);
/* y = min(max(x, lo), hi) (NaN stays NaN); backward dx = dy where lo <= x <= hi, else 0. */
void clip_forward_ref(float *y, const float *x, float lo, float hi, int64_t n);
void clip_backward_ref(float *dx, const float *dy, const float *x, float lo, float hi, int64_t n,
                       int acc);
/* y = a op b over d's output shape, a and b read through d's strides (0: broadcast).
 * Backward: da = dy * d(a op b)/da and db = dy * d(a op b)/db, each summed over the output
 * positions that read the same operand element (da has d->na elements, db d->nb). The
 * backward returns -1 (nothing written) when its scratch memory cannot be allocated. */
void binary_forward_ref(float *y, const float *a, const float *b, const struct qt_binary_desc *d);
int binary_backward_ref(float *da, float *db, const float *dy, const float *a, const float *b,
                        const struct qt_binary_desc *d, int acc_a, int acc_b);
/* y = x (Reshape, Flatten, ...); backward dx = dy. */
void copy_forward_ref(float *y, const float *x, int64_t n);
void copy_backward_ref(float *dx, const float *dy, int64_t n, int acc);

/* ---- Matrix products (gemm.c) ----
 * Gemm: Y[m,n] = alpha * sum_p op(A)[i,p] op(B)[p,j] + beta * C[i,j]; A is stored [m,k]
 * ([k,m] when ta), B [k,n] ([n,k] when tb); C (may be NULL) is a row-major [c_rows, c_cols]
 * matrix read at i * c_rs + j * c_cs (so c_rs is c_cols or 0, c_cs 1 or 0). As in BLAS, a term
 * whose factor alpha or beta is 0 is not evaluated. */
void gemm_forward_ref(float *y, const float *a, const float *b, const float *c,
                      const struct qt_gemm_desc *d);
/* dA = alpha * dY op(B)^T and dB = alpha * op(A)^T dY, each in its operand's stored shape;
 * dC = beta * dY summed over the positions where C broadcasts (c_rows x c_cols elements). */
void gemm_backward_ref(float *da, float *db, float *dc, const float *dy, const float *a,
                       const float *b, const struct qt_gemm_desc *d, int acc_a, int acc_b,
                       int acc_c);
/* MatMul: for each of d->batches products t, Y_t[m,n] = A_t[m,k] B_t[k,n], A_t and B_t the
 * matrices qt_matmul_offsets names (broadcast batches read the same matrix). */
void matmul_forward_ref(float *y, const float *a, const float *b, const struct qt_matmul_desc *d);
/* dA_t += dY_t B_t^T and dB_t += A_t^T dY_t over every product t (a matrix read by several
 * products gets the sum); da has d->na elements, db d->nb. */
void matmul_backward_ref(float *da, float *db, const float *dy, const float *a, const float *b,
                         const struct qt_matmul_desc *d, int acc_a, int acc_b);

/* ---- Softmax and means (softmax.c) ----
 * Softmax over the middle dimension of [outer, mid, inner]:
 * y_i = exp(x_i - max x) / sum_j exp(x_j - max x). Backward: dx_i = y_i (dy_i - sum_j dy_j y_j). */
void softmax_forward_ref(float *y, const float *x, int64_t outer, int64_t mid, int64_t inner);
void softmax_backward_ref(float *dx, const float *dy, const float *y, int64_t outer, int64_t mid,
                          int64_t inner, int acc);
/* Log-softmax over the same rows: y_i = x_i - log sum_j exp(x_j) (the maximum taken out
 * first). Backward: dx_i = dy_i - exp(y_i) sum_j dy_j. */
void logsoftmax_forward_ref(float *y, const float *x, int64_t outer, int64_t mid, int64_t inner);
void logsoftmax_backward_ref(float *dx, const float *dy, const float *y, int64_t outer, int64_t mid,
                             int64_t inner, int acc);
/* Mean over the axes r->red marks of a tensor of dims r->shape (the output keeps those axes
 * with size 1; no axis marked: y = x). Backward: dx = dy / (elements averaged), broadcast
 * back over the reduced axes. */
void reduce_mean_forward_ref(float *y, const float *x, const struct qt_reduce_desc *r);
void reduce_mean_backward_ref(float *dx, const float *dy, const struct qt_reduce_desc *r, int acc);

/* ---- Transpose (transpose.c) ----
 * y[o_0, ..., o_{r-1}] = x[i] with i_{perm[k]} = o_k: output dim k is input dim perm[k].
 * Backward: dx[i] = dy[o] for the same pairs (the inverse permutation). */
void transpose_forward_ref(float *y, const float *x, const struct qt_transpose_desc *d);
void transpose_backward_ref(float *dx, const float *dy, const struct qt_transpose_desc *d, int acc);

/* ---- Constant Pad (pad.c) ----
 * y[o] = x[qt_pad_source(o)], or d->value where that is -1. Backward: dx[i] =
 * dy[qt_pad_target(i)], 0 for an element cropped away. */
void pad_forward_ref(float *y, const float *x, const struct qt_pad_desc *d);
void pad_backward_ref(float *dx, const float *dy, const struct qt_pad_desc *d, int acc);

/* ---- Fake quantizers (quant.c), per element with kernels/common/apot.h's formulas ---- */
/* mu = mean(w), sigma = unbiased std(w) (double, rounded to float); sigma = 1 when it is 0
 * or n < 2 (NaN stays NaN). */
void quant_weight_stats_ref(float *mu, float *sigma, const float *w, int64_t n);
/* Weight quantizer: x = ((w - mu) / sigma) / alpha[c], wq = alpha[c] * signed_q(x); element i
 * of channel c = i / (n / nalpha); mu, sigma from quant_weight_stats_ref when standardize, else
 * 0 and 1; written to save_mu / save_sigma (may be NULL). */
void quant_weight_forward_ref(float *wq, float *save_mu, float *save_sigma, const float *w,
                              const float *alpha, int64_t nalpha, int standardize,
                              const struct qt_apot_quantizer *qz, int64_t n);
/* dw = dwq / sigma (straight-through; dwq when mapped back); dalpha[c] = sum over channel c of
 * dwq * signed_dalpha(x, q) (times sigma when mapped back). */
void quant_weight_backward_ref(float *dw, float *dalpha, const float *dwq, const float *w,
                               const float *alpha, int64_t nalpha, int standardize,
                               const float *save_mu, const float *save_sigma,
                               const struct qt_apot_quantizer *qz, int64_t n, int acc_w,
                               int acc_alpha);
/* Activation quantizer (one alpha): x = a / alpha, aq = alpha * q with q = unsigned_q(x) or
 * signed_q(x) as qz->is_signed says. */
void quant_act_forward_ref(float *aq, const float *a, const float *alpha,
                           const struct qt_apot_quantizer *qz, int64_t n);
/* da = unsigned_dx / signed_act_dx of daq; dalpha = sum daq * (unsigned|signed)_dalpha(x, q). */
void quant_act_backward_ref(float *da, float *dalpha, const float *daq, const float *a,
                            const float *alpha, const struct qt_apot_quantizer *qz, int64_t n,
                            int acc_a, int acc_alpha);
/* 8-bit weights: m = max(w) (abs_max = 0) or max|w| (1), NaN anywhere makes m NaN, n = 0 gives
 * m = 0; wq = int8_q(w, m); m is written to save_m (may be NULL). Backward: dw = dwq. */
void quant_int8_weight_forward_ref(float *wq, float *save_m, const float *w, int abs_max,
                                   int64_t n);
void quant_int8_weight_backward_ref(float *dw, const float *dwq, int64_t n, int acc);

/* ---- Loss (loss.c) ----
 * Softmax cross-entropy of logits [n, k] against labels (each in [0, k)) with the target
 * t = (1 - smoothing) * onehot(label) + smoothing / k: per row, lse = log sum_j exp(z_j) and
 * loss = sum_j t_j (lse - z_j). stats[QT_XENT_STATS] receives the loss summed over the rows
 * whose logits are all finite, the rows whose label ranks first and those where it ranks among
 * the first 5 (rank: classes with a larger logit, or an equal one at a lower index), and the
 * rows holding a non-finite logit (counted nowhere else). dlogits (may be NULL) =
 * (softmax(z) - t) * scale, NaN on rows with a non-finite logit. */
void softmax_xent_ref(float *dlogits, double *stats, const float *logits, const int32_t *labels,
                      int64_t n, int64_t k, float smoothing, float scale);

/* ---- Optimizer (optim.c) ----
 * PyTorch's SGD (dampening 0): g = grad + wd * p; buf = first ? g : momentum * buf + g;
 * p -= lr * (nesterov ? g + momentum * buf : buf); with momentum 0, p -= lr * g and buf is
 * not touched (may be NULL). */
/* Calibration: up to m values of x (n), every ceil(n/m)-th from 0 (qt_subsample_count of
 * them); the alpha minimizing the quantization error of x under qz (apot.h's QT_ALPHA_*
 * search); per-channel sums s1[c] += sum x, s2[c] += sum x^2 over [n, c, hw]. */
void quant_subsample_ref(float *out, int64_t m, const float *x, int64_t n);
float quant_alpha_search_ref(const float *x, int64_t n, const struct qt_apot_quantizer *qz);
/* Calibration ranges of x (unsigned) or |x| (signed), NaN/Inf as 0: *m = max(*m, largest);
 * the nearest-rank p-th percentile (sorted copy), 1.0f when not positive (NaN: no memory). */
void quant_range_max_ref(float *m, const float *x, int64_t n, int is_signed);
float quant_alpha_percentile_ref(const float *x, int64_t n, double p, int is_signed);
void channel_moments_ref(double *s1, double *s2, const float *x, int64_t n, int64_t c,
                         int64_t hw);

/* One SGD step; with ps non-NULL the gradient is scaled by PSGD's factor first. The range
 * step of PSGD over p (its min and max), returning the grid step. */
void sgd_update_ref(float *p, float *buf, const float *grad, int64_t n, float lr, float momentum,
                    float wd, int nesterov, int first, const struct qt_psgd_grid *ps,
                    const float *clamp);
float psgd_range_ref(float *range, const float *p, int64_t n, int first, int L);

/* BSQ bit planes (bsq.c): w = s * unit(sum of planes) and its straight-through gradients;
 * p, n are [N, cnt], s one float; dp, dn, ds (may be NULL) assigned or accumulated (acc_*). */
void bitquant_forward_ref(float *w, const float *p, const float *n, const float *s, int N,
                          int64_t cnt);
void bitquant_backward_ref(float *dp, float *dn, float *ds, const float *dw, const float *p,
                           const float *n, const float *s, int N, int64_t cnt, int acc_p,
                           int acc_n, int acc_s);
/* Adds the gradient of coef * sum_b sqrt(1e-8 + sum_j (p_bj^2 + n_bj^2)) to dp and dn. */
void bitquant_lasso_ref(float *dp, float *dn, const float *p, const float *n, int N, int64_t cnt,
                        float coef);

#endif
