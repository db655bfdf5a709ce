/* The CUDA kernels' C interface: launchers (asynchronous, on the stream given), the cuDNN
 * convolution and cuBLAS matrix products, and the check that every CUDA, cuDNN and cuBLAS
 * call goes through. Pointers are device memory unless a comment says host. Gradients follow
 * the backends' rule: assigned (=) when acc is 0, accumulated (+=) when 1. */
#ifndef QT_KERNELS_CUDA_H
#define QT_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "../common/desc.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "../../util/error.h"

/* Errors kernels raise in device memory (struct qt_cuda_ctx.flags), reported at sync: word
 * QT_CUDA_FW_BITS holds QT_CUDA_FLAG_* bits, the others the values the message names. */
enum { QT_CUDA_FLAG_ALPHA = 1, QT_CUDA_FLAG_LABEL = 2 };
enum { QT_CUDA_FW_BITS, QT_CUDA_FW_ALPHA, QT_CUDA_FW_LABEL, QT_CUDA_FW_ROW, QT_CUDA_FW_CLASSES,
       QT_CUDA_FW_WORDS };

/* What every launcher needs: the stream, device scratch (grown on demand by the host side
 * between ops, never during a launch sequence of one op) and the flag word. */
struct qt_cuda_ctx {
    cudaStream_t stream;
    void *scratch;       /* device; scratch_bytes of it */
    size_t scratch_bytes;
    unsigned *flags;     /* device: QT_CUDA_FW_WORDS words */
    int sms;             /* multiprocessors */
    void *dnn, *blas;    /* cudnnHandle_t, cublasHandle_t */
    void *conv_cache;    /* kernels/cuda/conv.c */
    void *work;          /* device workspace of cuDNN, work_bytes */
    size_t work_bytes;
    void *pad;           /* device: padded inputs and their gradients (conv.c), pad_bytes */
    size_t pad_bytes;
};

/* Records a failed CUDA runtime call (its text, file and line) in e; 0 when ok. */
int qt_cuda_check(cudaError_t rc, const char *call, const char *file, int line, struct qt_error *e);
#define QT_CU(e, call) qt_cuda_check((call), #call, __FILE__, __LINE__, (e))
/* The last launch's error, as a failed call named `what`. */
#define QT_CU_LAUNCH(e, what) qt_cuda_check(cudaGetLastError(), (what), __FILE__, __LINE__, (e))

/* Makes the device buffer *buf (of *have bytes) at least bytes: when it must grow, the stream
 * is synchronized and the buffer reallocated (its contents are not kept). */
int qt_cuda_grow(struct qt_cuda_ctx *c, void **buf, size_t *have, size_t bytes, struct qt_error *e);
/* Makes ctx->scratch at least bytes (qt_cuda_grow, in steps of powers of two from 64 KiB). */
int qt_cuda_scratch(struct qt_cuda_ctx *c, size_t bytes, struct qt_error *e);

/* ---- elementwise.cu ---- */
void relu_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t n);
void relu_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                        int64_t n, int acc);
void clip_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, float lo, float hi,
                       int64_t n);
void clip_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *x, float lo,
                        float hi, int64_t n, int acc);
void sigmoid_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t n);
void sigmoid_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                           int64_t n, int acc);
/* dx (+)= dy */
void copy_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, int64_t n, int acc);
void binary_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                         const struct qt_binary_desc *d);
/* Broadcast operands sum in double scratch (d->na + d->nb doubles when both broadcast). */
int binary_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, const float *dy,
                         const float *a, const float *b, const struct qt_binary_desc *d, int acc_a,
                         int acc_b, struct qt_error *e);
/* y[i, j] += beta * C[i * rs + j * cs] over [m, n] (Gemm's C term). */
void gemm_add_c_cuda(struct qt_cuda_ctx *c, float *y, const float *cm, float beta, int64_t m,
                     int64_t n, int64_t rs, int64_t cs);
/* dC[r, cc] (+)= beta * sum of dy over the (i, j) that read C[r, cc]. */
void gemm_dc_cuda(struct qt_cuda_ctx *c, float *dc, const float *dy, float beta, int64_t m,
                  int64_t n, const struct qt_gemm_desc *d, int acc);

/* ---- pool.cu ---- */
void global_avgpool_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t nc,
                                 int64_t hw);
void global_avgpool_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, int64_t nc,
                                  int64_t hw, int acc);
void maxpool2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_conv2d_desc *d);
void maxpool2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *x,
                             const struct qt_conv2d_desc *d, int acc);
void avgpool2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_conv2d_desc *d, int count_include_pad);
void avgpool2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                             const struct qt_conv2d_desc *d, int count_include_pad, int acc);

/* ---- softmax.cu (log_softmax: the log-softmax instead) and transpose.cu ---- */
void softmax_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t outer,
                          int64_t mid, int64_t inner, int log_softmax);
void softmax_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *y,
                           int64_t outer, int64_t mid, int64_t inner, int log_softmax, int acc);
void reduce_mean_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                              const struct qt_reduce_desc *r);
void reduce_mean_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                               const struct qt_reduce_desc *r, int acc);
void transpose_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_transpose_desc *d);
void transpose_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                             const struct qt_transpose_desc *d, int acc);

/* ---- pad.cu: constant Pad ---- */
void pad_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const struct qt_pad_desc *d);
void pad_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                       const struct qt_pad_desc *d, int acc);

/* ---- batchnorm.cu (per-channel sums in double scratch: 4 c doubles) ---- */
int batchnorm_infer_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                                 const float *scale, const float *bias, const float *mean,
                                 const float *var, float eps, int64_t n, int64_t ch, int64_t hw,
                                 struct qt_error *e);
int batchnorm_train_forward_cuda(struct qt_cuda_ctx *c, float *y, float *save_mean,
                                 float *save_invstd, float *run_mean, float *run_var,
                                 const float *x, const float *scale, const float *bias, float eps,
                                 float momentum, int64_t n, int64_t ch, int64_t hw,
                                 struct qt_error *e);
int batchnorm_backward_cuda(struct qt_cuda_ctx *c, float *dx, float *dscale, float *dbias,
                            const float *dy, const float *x, const float *scale,
                            const float *save_mean, const float *save_invstd, int64_t n,
                            int64_t ch, int64_t hw, int acc_x, int acc_scale, int acc_bias,
                            struct qt_error *e);
int channel_moments_cuda(struct qt_cuda_ctx *c, double *s1, double *s2, const float *x, int64_t n,
                         int64_t ch, int64_t hw, struct qt_error *e);

/* ---- quant.cu (the math of kernels/common/apot.h) ---- */
/* Weight quantizer: stats receives mu, sigma (or the 8-bit scale); NULL keeps them in scratch
 * (inference). Alphas that are not positive and finite raise QT_CUDA_FLAG_ALPHA. */
int quant_weight_forward_cuda(struct qt_cuda_ctx *c, float *wq, float *stats, const float *w,
                              const float *alpha, const struct qt_quant_desc *q,
                              struct qt_error *e);
int quant_weight_backward_cuda(struct qt_cuda_ctx *c, float *dw, float *dalpha, const float *dwq,
                               const float *w, const float *alpha, const float *stats,
                               const struct qt_quant_desc *q, int acc_w, int acc_alpha,
                               struct qt_error *e);
int quant_act_forward_cuda(struct qt_cuda_ctx *c, float *aq, const float *a, const float *alpha,
                           const struct qt_quant_desc *q, struct qt_error *e);
int quant_act_backward_cuda(struct qt_cuda_ctx *c, float *da, float *dalpha, const float *daq,
                            const float *a, const float *alpha, const struct qt_quant_desc *q,
                            int acc_a, int acc_alpha, struct qt_error *e);
void quant_int8_weight_forward_cuda(struct qt_cuda_ctx *c, float *wq, float *save_m,
                                    const float *w, int abs_max, int64_t n);
void quant_subsample_cuda(struct qt_cuda_ctx *c, float *out, int64_t m, const float *x, int64_t n);
void quant_range_max_cuda(struct qt_cuda_ctx *c, float *m, const float *x, int64_t n,
                          int is_signed);
int quant_alpha_search_cuda(struct qt_cuda_ctx *c, float *alpha, const float *x, int64_t n,
                            const struct qt_apot_quantizer *qz, struct qt_error *e);

/* ---- loss.cu ---- */
int softmax_xent_cuda(struct qt_cuda_ctx *c, float *dlogits, double *stats, const float *logits,
                      const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale,
                      struct qt_error *e);

/* ---- optim.cu ---- */
int sgd_update_cuda(struct qt_cuda_ctx *c, const struct qt_sgd_desc *d,
                    const struct qt_sgd_param *p, struct qt_error *e);

/* ---- bsq.cu ---- */
void bitquant_forward_cuda(struct qt_cuda_ctx *c, float *w, const float *p, const float *n,
                           const float *s, int N, int64_t cnt);
int bitquant_backward_cuda(struct qt_cuda_ctx *c, float *dp, float *dn, float *ds, const float *dw,
                           const float *p, const float *n, const float *s, int N, int64_t cnt,
                           int acc_p, int acc_n, int acc_s, struct qt_error *e);
int bitquant_lasso_cuda(struct qt_cuda_ctx *c, float *dp, float *dn, const float *p,
                        const float *n, int N, int64_t cnt, float coef, struct qt_error *e);

/* ---- conv_pad.cu: explicit padding where it differs on opposite sides ---- */
/* y = x zero-padded by d's pads ([n, c, h + pt + pb, w + pl + pr]). */
void pad2d_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const struct qt_conv2d_desc *d);
/* dx (+)= the unpadded window of the padded gradient dxp. */
void crop2d_cuda(struct qt_cuda_ctx *c, float *dx, const float *dxp, const struct qt_conv2d_desc *d,
                 int acc);

/* ---- conv.c (cuDNN; algorithms found once per geometry and cached) ---- */
int conv2d_supported_cuda(const struct qt_conv2d_desc *d);
int conv2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const float *w,
                        const float *bias, const struct qt_conv2d_desc *d, struct qt_error *e);
int conv2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, float *dw, float *dbias,
                         const float *dy, const float *x, const float *w,
                         const struct qt_conv2d_desc *d, int acc_x, int acc_w, int acc_b,
                         struct qt_error *e);
void conv2d_cache_free_cuda(struct qt_cuda_ctx *c);

/* ---- gemm.c (cuBLAS) ---- */
int gemm_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                      const float *cm, const struct qt_gemm_desc *d, struct qt_error *e);
/* MatMul with broadcast batches: one product per batch, in stream order. */
int matmul_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                        const struct qt_matmul_desc *d, struct qt_error *e);
int matmul_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, const float *dy,
                         const float *a, const float *b, const struct qt_matmul_desc *d, int acc_a,
                         int acc_b, struct qt_error *e);
int gemm_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, float *dc, const float *dy,
                       const float *a, const float *b, const struct qt_gemm_desc *d, int acc_a,
                       int acc_b, int acc_c, struct qt_error *e);

#ifdef __cplusplus
}
#endif

#endif
