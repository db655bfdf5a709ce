/* The CUDA backend: op descriptions computed on one GPU with cuDNN (convolutions), cuBLAS (Gemm)
 * and the kernels of kernels/cuda, on one stream. Memory is device memory; upload and download
 * are the only copies, and download waits for the stream. Errors that kernels detect (an alpha
 * that is not positive and finite, a label outside the classes) are raised in a device flag
 * word and reported, with the offending value, by the next sync. Built only when nvcc is found
 * (the Makefile defines QT_HAVE_CUDA); created through the factory's "cuda" device. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "../kernels/cpu/quant.h"
#include "../kernels/cuda/cuda.h"
#include "backend.h"

#define CUDA_MAX_IO 8

int qt_cuda_check(cudaError_t rc, const char *call, const char *file, int line, struct qt_error *e)
{
    if (rc == cudaSuccess) return 0;
    if (rc == cudaErrorMemoryAllocation)
        return qt_err(e, "out of GPU memory (%s at %s:%d)", call, file, line);
    return qt_err(e, "CUDA: %s failed at %s:%d: %s", call, file, line, cudaGetErrorString(rc));
}

int qt_cuda_grow(struct qt_cuda_ctx *c, void **buf, size_t *have, size_t bytes, struct qt_error *e)
{
    if (bytes <= *have) return 0;
    if (QT_CU(e, cudaStreamSynchronize(c->stream))) return -1;
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *have = 0;
    if (QT_CU(e, cudaMalloc(buf, bytes))) return -1;
    *have = bytes;
    return 0;
}

int qt_cuda_scratch(struct qt_cuda_ctx *c, size_t bytes, struct qt_error *e)
{
    if (bytes <= c->scratch_bytes) return 0;
    size_t want = c->scratch_bytes ? c->scratch_bytes : 1 << 16;
    while (want < bytes) want *= 2;
    return qt_cuda_grow(c, &c->scratch, &c->scratch_bytes, want, e);
}

static struct qt_cuda_ctx *ctx(struct qt_backend *b)
{
    return b->impl;
}

static void *cu_alloc(struct qt_backend *b, size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 4) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free allocation error */
        return NULL;
    }
    return p;
}

static void cu_release(struct qt_backend *b, void *p)
{
    if (p) cudaFree(p);
}

/* Copies in stream order; dst or src may be host or device memory (unified addressing). */
static int cu_upload(struct qt_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!bytes) return 0;
    if (!dst || !src) return -1;
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx(b)->stream) == cudaSuccess ? 0 : -1;
}

static int cu_download(struct qt_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!bytes) return 0;
    if (!dst || !src) return -1;
    if (cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx(b)->stream) != cudaSuccess) return -1;
    return cudaStreamSynchronize(ctx(b)->stream) == cudaSuccess ? 0 : -1;
}

static int cu_supports(struct qt_backend *b, const struct qt_op_desc *d)
{
    switch (d->kind) {
    case QT_K_CONV:
        return conv2d_supported_cuda(&d->u.conv);
    case QT_K_MAXPOOL:
    case QT_K_AVGPOOL:
    case QT_K_GAP:
    case QT_K_RELU:
    case QT_K_CLIP:
    case QT_K_BINARY:
    case QT_K_GEMM:
    case QT_K_COPY:
    case QT_K_SIGMOID:
    case QT_K_BITQUANT:
    case QT_K_MATMUL:
    case QT_K_SOFTMAX:
    case QT_K_LOGSOFTMAX:
    case QT_K_REDUCE_MEAN:
    case QT_K_TRANSPOSE:
    case QT_K_PAD:
        return 1;
    case QT_K_BATCHNORM:
        return d->u.bn.c <= 65535;
    case QT_K_WEIGHTQUANT:
    case QT_K_ACTQUANT:
        return d->u.q.int8 || d->u.q.nalpha <= 65535;
    default:
        return 0;
    }
}

static int64_t cu_workspace(struct qt_backend *b, const struct qt_op_desc *d)
{
    return 0;
}

static int64_t cu_aux_floats(struct qt_backend *b, const struct qt_op_desc *d)
{
    if (d->kind == QT_K_WEIGHTQUANT) return 2;
    return d->kind == QT_K_BATCHNORM ? 2 * d->u.bn.c : 0;
}

static int unsupported(const struct qt_op_desc *d, const char *what, struct qt_error *e)
{
    return qt_err(e, "the cuda backend has no %s for a %s op", what, qt_opk_name(d->kind));
}

/* Forward; stats (NULL outside training) receives a weight quantizer's statistics. */
static int forward_op(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                      float *const *out, float *stats, struct qt_error *e)
{
    struct qt_cuda_ctx *c = ctx(b);
    float *y = out[0];
    const float *x = in[0];
    switch (d->kind) {
    case QT_K_CONV:
        return conv2d_forward_cuda(c, y, x, in[1], d->has_bias ? in[2] : NULL, &d->u.conv, e);
    case QT_K_MAXPOOL:
        maxpool2d_forward_cuda(c, y, x, &d->u.conv);
        break;
    case QT_K_AVGPOOL:
        avgpool2d_forward_cuda(c, y, x, &d->u.conv, d->count_include_pad);
        break;
    case QT_K_GAP:
        global_avgpool_forward_cuda(c, y, x, d->u.ax.outer, d->u.ax.mid);
        break;
    case QT_K_BATCHNORM: {
        const struct qt_bn_desc *bn = &d->u.bn;
        if (batchnorm_infer_forward_cuda(c, y, x, in[1], in[2], in[3], in[4], bn->eps, bn->n, bn->c,
                                         bn->hw, e))
            return -1;
        for (int k = 1; k < d->nout && k < 3; k++)
            if (out[k] && QT_CU(e, cudaMemcpyAsync(out[k], in[k + 2], sizeof(float) * bn->c,
                                                   cudaMemcpyDeviceToDevice, c->stream)))
                return -1;
        return 0;
    }
    case QT_K_RELU:
        relu_forward_cuda(c, y, x, d->numel);
        break;
    case QT_K_CLIP:
        clip_forward_cuda(c, y, x, d->u.clip[0], d->u.clip[1], d->numel);
        break;
    case QT_K_BINARY:
        binary_forward_cuda(c, y, x, in[1], &d->u.bin);
        break;
    case QT_K_GEMM:
        return gemm_forward_cuda(c, y, x, in[1], d->u.gemm.has_c ? in[2] : NULL, &d->u.gemm, e);
    case QT_K_WEIGHTQUANT:
        return quant_weight_forward_cuda(c, y, stats, x, d->u.q.int8 ? NULL : in[1], &d->u.q, e);
    case QT_K_ACTQUANT:
        return quant_act_forward_cuda(c, y, x, in[1], &d->u.q, e);
    case QT_K_COPY:
        if (y != x && d->numel > 0 &&
            QT_CU(e, cudaMemcpyAsync(y, x, sizeof(float) * (size_t)d->numel,
                                     cudaMemcpyDeviceToDevice, c->stream)))
            return -1;
        return 0;
    case QT_K_SIGMOID:
        sigmoid_forward_cuda(c, y, x, d->numel);
        break;
    case QT_K_MATMUL:
        return matmul_forward_cuda(c, y, x, in[1], &d->u.mm, e);
    case QT_K_SOFTMAX:
    case QT_K_LOGSOFTMAX:
        softmax_forward_cuda(c, y, x, d->u.ax.outer, d->u.ax.mid, d->u.ax.inner,
                             d->kind == QT_K_LOGSOFTMAX);
        break;
    case QT_K_REDUCE_MEAN:
        reduce_mean_forward_cuda(c, y, x, &d->u.red);
        break;
    case QT_K_TRANSPOSE:
        transpose_forward_cuda(c, y, x, &d->u.tr);
        break;
    case QT_K_PAD:
        pad_forward_cuda(c, y, x, &d->u.pad);
        break;
    case QT_K_BITQUANT:
        bitquant_forward_cuda(c, y, x, in[1], in[2], d->u.bq.N, d->u.bq.n);
        break;
    default:
        return unsupported(d, "forward", e);
    }
    return QT_CU_LAUNCH(e, qt_opk_name(d->kind));
}

static int cu_forward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                      float *const *out, float *ws, struct qt_error *e)
{
    return forward_op(b, d, in, out, NULL, e);
}

static int cu_forward_train(struct qt_backend *b, const struct qt_op_desc *d,
                            const float *const *in, float *const *out, float *aux, float *ws,
                            struct qt_error *e)
{
    if (d->kind == QT_K_WEIGHTQUANT) return forward_op(b, d, in, out, aux, e);
    if (d->kind != QT_K_BATCHNORM) return forward_op(b, d, in, out, NULL, e);
    const struct qt_bn_desc *bn = &d->u.bn;
    if (d->nout > 1) return qt_err(e, "training with several BatchNorm outputs is not supported");
    return batchnorm_train_forward_cuda(ctx(b), out[0], aux, aux + bn->c, (float *)in[3],
                                        (float *)in[4], in[0], in[1], in[2], bn->eps, bn->momentum,
                                        bn->n, bn->c, bn->hw, e);
}

static int cu_backward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                       const float *const *out, const float *const *dout, float *const *din,
                       const int *acc, const float *aux, float *ws, struct qt_error *e)
{
    struct qt_cuda_ctx *c = ctx(b);
    const float *x = in[0], *dy = dout[0];
    float *dx = din[0];
    if (!dy) return 0;
    switch (d->kind) {
    case QT_K_CONV:
        return conv2d_backward_cuda(c, dx, d->nin > 1 ? din[1] : NULL,
                                    d->has_bias ? din[2] : NULL, dy, x, in[1], &d->u.conv, acc[0],
                                    d->nin > 1 ? acc[1] : 0, d->has_bias ? acc[2] : 0, e);
    case QT_K_MAXPOOL:
        if (dx) maxpool2d_backward_cuda(c, dx, dy, x, &d->u.conv, acc[0]);
        break;
    case QT_K_AVGPOOL:
        if (dx) avgpool2d_backward_cuda(c, dx, dy, &d->u.conv, d->count_include_pad, acc[0]);
        break;
    case QT_K_GAP:
        if (dx) global_avgpool_backward_cuda(c, dx, dy, d->u.ax.outer, d->u.ax.mid, acc[0]);
        break;
    case QT_K_BATCHNORM: {
        const struct qt_bn_desc *bn = &d->u.bn;
        return batchnorm_backward_cuda(c, dx, din[1], din[2], dy, x, in[1], aux, aux + bn->c,
                                       bn->n, bn->c, bn->hw, acc[0], acc[1], acc[2], e);
    }
    case QT_K_RELU:
        if (dx) relu_backward_cuda(c, dx, dy, out[0], d->numel, acc[0]);
        break;
    case QT_K_CLIP:
        if (d->nin > 1 && (din[1] || (d->nin > 2 && din[2])))
            return qt_err(e, "gradients of Clip's min and max are not supported");
        if (dx) clip_backward_cuda(c, dx, dy, x, d->u.clip[0], d->u.clip[1], d->numel, acc[0]);
        break;
    case QT_K_BINARY:
        return binary_backward_cuda(c, dx, din[1], dy, x, in[1], &d->u.bin, acc[0], acc[1], e);
    case QT_K_GEMM:
        return gemm_backward_cuda(c, dx, din[1], d->u.gemm.has_c ? din[2] : NULL, dy, x, in[1],
                                  &d->u.gemm, acc[0], acc[1], d->u.gemm.has_c ? acc[2] : 0, e);
    case QT_K_WEIGHTQUANT:
        return quant_weight_backward_cuda(c, dx, d->nin > 1 ? din[1] : NULL, dy, x,
                                          d->u.q.int8 ? NULL : in[1], aux, &d->u.q, acc[0],
                                          d->nin > 1 ? acc[1] : 0, e);
    case QT_K_ACTQUANT:
        return quant_act_backward_cuda(c, dx, d->nin > 1 ? din[1] : NULL, dy, x, in[1], &d->u.q,
                                       acc[0], d->nin > 1 ? acc[1] : 0, e);
    case QT_K_COPY:
        if (dx) copy_backward_cuda(c, dx, dy, d->numel, acc[0]);
        break;
    case QT_K_SIGMOID:
        if (dx) sigmoid_backward_cuda(c, dx, dy, out[0], d->numel, acc[0]);
        break;
    case QT_K_MATMUL:
        return matmul_backward_cuda(c, dx, din[1], dy, x, in[1], &d->u.mm, acc[0], acc[1], e);
    case QT_K_SOFTMAX:
    case QT_K_LOGSOFTMAX:
        if (dx)
            softmax_backward_cuda(c, dx, dy, out[0], d->u.ax.outer, d->u.ax.mid, d->u.ax.inner,
                                  d->kind == QT_K_LOGSOFTMAX, acc[0]);
        break;
    case QT_K_REDUCE_MEAN:
        if (dx) reduce_mean_backward_cuda(c, dx, dy, &d->u.red, acc[0]);
        break;
    case QT_K_TRANSPOSE:
        if (dx) transpose_backward_cuda(c, dx, dy, &d->u.tr, acc[0]);
        break;
    case QT_K_PAD:
        if (dx) pad_backward_cuda(c, dx, dy, &d->u.pad, acc[0]);
        break;
    case QT_K_BITQUANT:
        return bitquant_backward_cuda(c, dx, din[1], din[2], dy, x, in[1], in[2], d->u.bq.N,
                                      d->u.bq.n, acc[0], acc[1], acc[2], e);
    default:
        return unsupported(d, "backward", e);
    }
    return QT_CU_LAUNCH(e, qt_opk_name(d->kind));
}

static int cu_xent(struct qt_backend *b, float *dlogits, double *stats, const float *logits,
                   const int32_t *labels, int64_t n, int64_t k, float smoothing, float scale,
                   struct qt_error *e)
{
    return softmax_xent_cuda(ctx(b), dlogits, stats, logits, labels, n, k, smoothing, scale, e);
}

static int cu_sgd_step(struct qt_backend *b, const struct qt_sgd_desc *d,
                       const struct qt_sgd_param *p, int np, struct qt_error *e)
{
    for (int i = 0; i < np; i++) {
        if (!p[i].grad) continue;
        if (p[i].psgd_range && qt_sgd_psgd_check(&p[i], i, e)) return -1;
        if (sgd_update_cuda(ctx(b), d, &p[i], e)) return -1;
    }
    return 0;
}

static int cu_bit_lasso(struct qt_backend *b, float *dp, float *dn, const float *p, const float *n,
                        int N, int64_t cnt, float coef, struct qt_error *e)
{
    return bitquant_lasso_cuda(ctx(b), dp, dn, p, n, N, cnt, coef, e);
}

static int cu_subsample(struct qt_backend *b, float *out, int64_t m, const float *x, int64_t n,
                        struct qt_error *e)
{
    quant_subsample_cuda(ctx(b), out, m, x, n);
    return QT_CU_LAUNCH(e, "subsample");
}

static int cu_alpha_search(struct qt_backend *b, float *alpha, const float *x, int64_t n,
                           const struct qt_apot_quantizer *qz, struct qt_error *e)
{
    return quant_alpha_search_cuda(ctx(b), alpha, x, n, qz, e);
}

static int cu_channel_moments(struct qt_backend *b, double *s1, double *s2, const float *x,
                              int64_t n, int64_t c, int64_t hw, struct qt_error *e)
{
    return channel_moments_cuda(ctx(b), s1, s2, x, n, c, hw, e);
}

static int cu_range_max(struct qt_backend *b, float *m, const float *x, int64_t n, int is_signed,
                        struct qt_error *e)
{
    quant_range_max_cuda(ctx(b), m, x, n, is_signed);
    return QT_CU_LAUNCH(e, "range maximum");
}

/* The percentile needs a sort: the values come to the host, the CPU kernel ranks them, the
 * alpha goes back (calibration runs this once per quantizer on a subsample). */
static int cu_alpha_percentile(struct qt_backend *b, float *alpha, float *x, int64_t n, double p,
                               int is_signed, struct qt_error *e)
{
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!h) return qt_err(e, "alpha percentile: out of memory for %lld values", (long long)n);
    if (n > 0 && cu_download(b, h, x, sizeof(float) * (size_t)n)) {
        free(h);
        return qt_err(e, "alpha percentile: cannot read %lld values from the GPU", (long long)n);
    }
    const float a = quant_alpha_percentile_cpu(h, n, p, is_signed);
    free(h);
    if (a != a) return qt_err(e, "alpha percentile: out of memory for %lld values", (long long)n);
    if (cu_upload(b, alpha, &a, sizeof a) || QT_CU(e, cudaStreamSynchronize(ctx(b)->stream)))
        return qt_err(e, "alpha percentile: cannot write alpha to the GPU");
    return 0;
}

static int cu_sync(struct qt_backend *b, struct qt_error *e)
{
    struct qt_cuda_ctx *c = ctx(b);
    unsigned f[QT_CUDA_FW_WORDS];
    if (QT_CU(e, cudaMemcpyAsync(f, c->flags, sizeof f, cudaMemcpyDeviceToHost, c->stream)) ||
        QT_CU(e, cudaStreamSynchronize(c->stream)))
        return -1;
    if (!f[QT_CUDA_FW_BITS]) return 0;
    if (QT_CU(e, cudaMemsetAsync(c->flags, 0, sizeof f, c->stream))) return -1;
    if (f[QT_CUDA_FW_BITS] & QT_CUDA_FLAG_ALPHA) {
        float a;
        memcpy(&a, &f[QT_CUDA_FW_ALPHA], sizeof a);
        return qt_err(e,
                      "clipping threshold alpha = %g; it must be positive and finite (a "
                      "smaller alpha learning rate may help)",
                      a);
    }
    return qt_err(e, "label %d of row %u is outside the %u classes", (int)f[QT_CUDA_FW_LABEL],
                  f[QT_CUDA_FW_ROW], f[QT_CUDA_FW_CLASSES]);
}

static void cu_destroy(struct qt_backend *b)
{
    if (!b) return;
    struct qt_cuda_ctx *c = b->impl;
    if (c) {
        if (c->stream) cudaStreamSynchronize(c->stream);
        conv2d_cache_free_cuda(c);
        if (c->scratch) cudaFree(c->scratch);
        if (c->flags) cudaFree(c->flags);
        if (c->dnn) cudnnDestroy(c->dnn);
        if (c->blas) cublasDestroy(c->blas);
        if (c->stream) cudaStreamDestroy(c->stream);
        free(c);
    }
    free(b);
}

struct qt_backend *qt_backend_cuda_new(struct qt_error *e)
{
    int count = 0;
    const cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count < 1) {
        cudaGetLastError();
        qt_err(e, "no usable CUDA device (%s)",
               rc == cudaSuccess || rc == cudaErrorNoDevice ? "no CUDA GPU found"
               : rc == cudaErrorInsufficientDriver
                   ? "no NVIDIA driver, or one older than this build's CUDA runtime"
                   : cudaGetErrorString(rc));
        return NULL;
    }
    struct qt_backend *b = calloc(1, sizeof *b);
    struct qt_cuda_ctx *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        qt_err(e, "out of host memory for the cuda backend");
        return NULL;
    }
    b->impl = c;
    int dev = 0;
    cudnnHandle_t dnn = NULL;
    cublasHandle_t blas = NULL;
    cudnnStatus_t drc;
    cublasStatus_t brc;
    if (QT_CU(e, cudaGetDevice(&dev)) ||
        QT_CU(e, cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev)) ||
        QT_CU(e, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) ||
        QT_CU(e, cudaMalloc((void **)&c->flags, sizeof(unsigned) * QT_CUDA_FW_WORDS)) ||
        QT_CU(e, cudaMemset(c->flags, 0, sizeof(unsigned) * QT_CUDA_FW_WORDS)))
        goto fail;
    if ((drc = cudnnCreate(&dnn)) != CUDNN_STATUS_SUCCESS) {
        qt_err(e, "cuDNN: cudnnCreate failed: %s", cudnnGetErrorString(drc));
        goto fail;
    }
    c->dnn = dnn;
    if ((brc = cublasCreate(&blas)) != CUBLAS_STATUS_SUCCESS) {
        qt_err(e, "cuBLAS: cublasCreate failed: status %d", (int)brc);
        goto fail;
    }
    c->blas = blas;
    if (cudnnSetStream(dnn, c->stream) != CUDNN_STATUS_SUCCESS ||
        cublasSetStream(blas, c->stream) != CUBLAS_STATUS_SUCCESS) {
        qt_err(e, "cannot put cuDNN and cuBLAS on the backend's stream");
        goto fail;
    }
    b->name = "cuda";
    b->alloc = cu_alloc;
    b->release = cu_release;
    b->upload = cu_upload;
    b->download = cu_download;
    b->supports = cu_supports;
    b->workspace = cu_workspace;
    b->forward = cu_forward;
    b->aux_floats = cu_aux_floats;
    b->forward_train = cu_forward_train;
    b->backward = cu_backward;
    b->xent = cu_xent;
    b->sgd_step = cu_sgd_step;
    b->bit_lasso = cu_bit_lasso;
    b->subsample = cu_subsample;
    b->alpha_search = cu_alpha_search;
    b->channel_moments = cu_channel_moments;
    b->range_max = cu_range_max;
    b->alpha_percentile = cu_alpha_percentile;
    /* No inference fast path yet: can_fuse, reads_layout, forward_infer, to_plain stay NULL. */
    b->sync = cu_sync;
    b->destroy = cu_destroy;
    return b;
fail:
    cu_destroy(b);
    return NULL;
}

int qt_backend_cuda_built(void)
{
    return 1;
}
