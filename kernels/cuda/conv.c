/* CUDA convolution through cuDNN, forward and backward (data, filter, bias) side by side. Each
 * geometry gets its descriptors and algorithms once (cudnnFind*, the fastest that needs at
 * most QT_CONV_MAX_WORK bytes of workspace), kept in a cache owned by the backend; the
 * workspace is one buffer grown to the largest need. FP32 arithmetic (CUDNN_FMA_MATH: no
 * TF32), so results match the ref backend's within float rounding. cuDNN pads both sides of
 * an axis alike: padding that differs between sides is applied explicitly (conv_pad.cu), the
 * convolution then running unpadded on the padded input. */
#include <cudnn.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

#define QT_CONV_MAX_WORK ((size_t)1 << 30)

struct conv_entry {
    struct qt_conv2d_desc g;
    cudnnTensorDescriptor_t x, y, bias;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int have_fwd, have_bwd;
    int padded; /* explicit padding: x describes the padded input, the convolution has none */
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t work_fwd, work_bwd;
    struct conv_entry *next;
};

static int dnn_check(cudnnStatus_t rc, const char *call, int line, struct qt_error *e)
{
    if (rc == CUDNN_STATUS_SUCCESS) return 0;
    return qt_err(e, "cuDNN: %s failed at kernels/cuda/conv.c:%d: %s", call, line,
                  cudnnGetErrorString(rc));
}
#define DNN(e, call) dnn_check((call), #call, __LINE__, (e))

int conv2d_supported_cuda(const struct qt_conv2d_desc *d)
{
    return d->group >= 1 && d->c % d->group == 0 && d->k % d->group == 0 && d->n > 0 && d->k > 0 &&
           d->c > 0 && d->pt >= 0 && d->pb >= 0 && d->pl >= 0 && d->pr >= 0;
}

static int asymmetric(const struct qt_conv2d_desc *g)
{
    return g->pt != g->pb || g->pl != g->pr;
}

static int entry_init(struct conv_entry *t, const struct qt_conv2d_desc *g, struct qt_error *e)
{
    t->g = *g;
    t->padded = asymmetric(g);
    const int xh = t->padded ? g->h + g->pt + g->pb : g->h, xw = t->padded ? g->w + g->pl + g->pr : g->w;
    const int pt = t->padded ? 0 : g->pt, pl = t->padded ? 0 : g->pl;
    if (DNN(e, cudnnCreateTensorDescriptor(&t->x)) || DNN(e, cudnnCreateTensorDescriptor(&t->y)) ||
        DNN(e, cudnnCreateTensorDescriptor(&t->bias)) || DNN(e, cudnnCreateFilterDescriptor(&t->w)) ||
        DNN(e, cudnnCreateConvolutionDescriptor(&t->conv)))
        return -1;
    if (DNN(e, cudnnSetTensor4dDescriptor(t->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->n, g->c,
                                          xh, xw)) ||
        DNN(e, cudnnSetTensor4dDescriptor(t->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->n, g->k,
                                          g->oh, g->ow)) ||
        DNN(e, cudnnSetTensor4dDescriptor(t->bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, g->k, 1,
                                          1)) ||
        DNN(e, cudnnSetFilter4dDescriptor(t->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g->k,
                                          g->c / g->group, g->kh, g->kw)) ||
        DNN(e, cudnnSetConvolution2dDescriptor(t->conv, pt, pl, g->sh, g->sw, g->dh, g->dw,
                                               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
        DNN(e, cudnnSetConvolutionGroupCount(t->conv, g->group)) ||
        DNN(e, cudnnSetConvolutionMathType(t->conv, CUDNN_FMA_MATH)))
        return -1;
    int n, c, h, w;
    if (DNN(e, cudnnGetConvolution2dForwardOutputDim(t->conv, t->x, t->w, &n, &c, &h, &w)))
        return -1;
    if (n != g->n || c != g->k || h != g->oh || w != g->ow)
        return qt_err(e, "cuDNN computes a %dx%dx%dx%d output for a convolution whose output is "
                         "%dx%dx%dx%d", n, c, h, w, g->n, g->k, g->oh, g->ow);
    return 0;
}

static void entry_free(struct conv_entry *t)
{
    if (t->x) cudnnDestroyTensorDescriptor(t->x);
    if (t->y) cudnnDestroyTensorDescriptor(t->y);
    if (t->bias) cudnnDestroyTensorDescriptor(t->bias);
    if (t->w) cudnnDestroyFilterDescriptor(t->w);
    if (t->conv) cudnnDestroyConvolutionDescriptor(t->conv);
    free(t);
}

static struct conv_entry *lookup(struct qt_cuda_ctx *c, const struct qt_conv2d_desc *g,
                                 struct qt_error *e)
{
    for (struct conv_entry *t = c->conv_cache; t; t = t->next)
        if (!memcmp(&t->g, g, sizeof *g)) return t;
    struct conv_entry *t = calloc(1, sizeof *t);
    if (!t) {
        qt_err(e, "out of host memory for a convolution's cuDNN descriptors");
        return NULL;
    }
    if (entry_init(t, g, e)) {
        entry_free(t);
        return NULL;
    }
    t->next = c->conv_cache;
    c->conv_cache = t;
    return t;
}

/* Grows the shared workspace to bytes. */
static int work(struct qt_cuda_ctx *c, size_t bytes, struct qt_error *e)
{
    return qt_cuda_grow(c, &c->work, &c->work_bytes, bytes, e);
}

/* The padded input (and, for backward, its gradient after it): elements of one. */
static int64_t padded_numel(const struct qt_conv2d_desc *g)
{
    return (int64_t)g->n * g->c * (g->h + g->pt + g->pb) * (g->w + g->pl + g->pr);
}

/* Grows the padding buffer to bytes. */
static int pad_buffer(struct qt_cuda_ctx *c, size_t bytes, struct qt_error *e)
{
    return qt_cuda_grow(c, &c->pad, &c->pad_bytes, bytes, e);
}

#define NALGO 16

static int find_fwd(struct qt_cuda_ctx *c, struct conv_entry *t, struct qt_error *e)
{
    cudnnConvolutionFwdAlgoPerf_t perf[NALGO];
    int got = 0;
    if (DNN(e, cudnnFindConvolutionForwardAlgorithm(c->dnn, t->x, t->w, t->conv, t->y, NALGO,
                                                    &got, perf)))
        return -1;
    for (int i = 0; i < got; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= QT_CONV_MAX_WORK) {
            t->fwd = perf[i].algo;
            t->work_fwd = perf[i].memory;
            t->have_fwd = 1;
            return work(c, t->work_fwd, e);
        }
    return qt_err(e, "cuDNN has no forward algorithm for a %dx%dx%dx%d convolution with %d "
                     "filters of %dx%d", t->g.n, t->g.c, t->g.h, t->g.w, t->g.k, t->g.kh, t->g.kw);
}

static int find_bwd(struct qt_cuda_ctx *c, struct conv_entry *t, struct qt_error *e)
{
    cudnnConvolutionBwdDataAlgoPerf_t pd[NALGO];
    cudnnConvolutionBwdFilterAlgoPerf_t pf[NALGO];
    int gd = 0, gf = 0, okd = 0, okf = 0;
    if (DNN(e, cudnnFindConvolutionBackwardDataAlgorithm(c->dnn, t->w, t->y, t->conv, t->x, NALGO,
                                                         &gd, pd)) ||
        DNN(e, cudnnFindConvolutionBackwardFilterAlgorithm(c->dnn, t->x, t->y, t->conv, t->w,
                                                           NALGO, &gf, pf)))
        return -1;
    size_t need = 0;
    for (int i = 0; i < gd && !okd; i++)
        if (pd[i].status == CUDNN_STATUS_SUCCESS && pd[i].memory <= QT_CONV_MAX_WORK) {
            t->bwd_data = pd[i].algo;
            need = pd[i].memory;
            okd = 1;
        }
    for (int i = 0; i < gf && !okf; i++)
        if (pf[i].status == CUDNN_STATUS_SUCCESS && pf[i].memory <= QT_CONV_MAX_WORK) {
            t->bwd_filter = pf[i].algo;
            if (pf[i].memory > need) need = pf[i].memory;
            okf = 1;
        }
    if (!okd || !okf)
        return qt_err(e, "cuDNN has no backward algorithm for a %dx%dx%dx%d convolution with %d "
                         "filters of %dx%d", t->g.n, t->g.c, t->g.h, t->g.w, t->g.k, t->g.kh,
                      t->g.kw);
    t->work_bwd = need;
    t->have_bwd = 1;
    return work(c, need, e);
}

int conv2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const float *w,
                        const float *bias, const struct qt_conv2d_desc *d, struct qt_error *e)
{
    struct conv_entry *t = lookup(c, d, e);
    if (!t || (!t->have_fwd && find_fwd(c, t, e))) return -1;
    const float one = 1.0f, zero = 0.0f;
    if (t->padded) {
        if (pad_buffer(c, sizeof(float) * (size_t)padded_numel(d), e)) return -1;
        pad2d_cuda(c, c->pad, x, d);
        if (QT_CU_LAUNCH(e, "convolution padding")) return -1;
        x = c->pad;
    }
    if (DNN(e, cudnnConvolutionForward(c->dnn, &one, t->x, x, t->w, w, t->conv, t->fwd, c->work,
                                       t->work_fwd, &zero, t->y, y)))
        return -1;
    if (bias && DNN(e, cudnnAddTensor(c->dnn, &one, t->bias, bias, &one, t->y, y))) return -1;
    return 0;
}

int conv2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, float *dw, float *dbias,
                         const float *dy, const float *x, const float *w,
                         const struct qt_conv2d_desc *d, int acc_x, int acc_w, int acc_b,
                         struct qt_error *e)
{
    struct conv_entry *t = lookup(c, d, e);
    if (!t || ((dx || dw) && !t->have_bwd && find_bwd(c, t, e))) return -1;
    const float one = 1.0f, zero = 0.0f;
    float *dxp = NULL; /* padded: the padded input's gradient, cropped into dx below */
    if (t->padded && (dx || dw)) {
        const int64_t np = padded_numel(d);
        if (pad_buffer(c, sizeof(float) * (size_t)(2 * np), e)) return -1;
        pad2d_cuda(c, c->pad, x, d);
        if (QT_CU_LAUNCH(e, "convolution padding")) return -1;
        x = c->pad;
        dxp = (float *)c->pad + np;
    }
    if (dx && DNN(e, cudnnConvolutionBackwardData(c->dnn, &one, t->w, w, t->y, dy, t->conv,
                                                  t->bwd_data, c->work, t->work_bwd,
                                                  dxp || !acc_x ? &zero : &one, t->x,
                                                  dxp ? dxp : dx)))
        return -1;
    if (dx && dxp) {
        crop2d_cuda(c, dx, dxp, d, acc_x);
        if (QT_CU_LAUNCH(e, "convolution padding gradient")) return -1;
    }
    if (dw && DNN(e, cudnnConvolutionBackwardFilter(c->dnn, &one, t->x, x, t->y, dy, t->conv,
                                                    t->bwd_filter, c->work, t->work_bwd,
                                                    acc_w ? &one : &zero, t->w, dw)))
        return -1;
    if (dbias && DNN(e, cudnnConvolutionBackwardBias(c->dnn, &one, t->y, dy, acc_b ? &one : &zero,
                                                     t->bias, dbias)))
        return -1;
    return 0;
}

void conv2d_cache_free_cuda(struct qt_cuda_ctx *c)
{
    struct conv_entry *t = c->conv_cache;
    while (t) {
        struct conv_entry *next = t->next;
        entry_free(t);
        t = next;
    }
    c->conv_cache = NULL;
    if (c->work) cudaFree(c->work);
    c->work = NULL;
    c->work_bytes = 0;
    if (c->pad) cudaFree(c->pad);
    c->pad = NULL;
    c->pad_bytes = 0;
}
