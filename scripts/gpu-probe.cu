/* What the CUDA backend will stand on, checked on the GPU machine at hand: the runtime, cuDNN
 * and cuBLAS load and agree with plain kernels on ResNet-20's shapes.
 *
 * 1. cuDNN convolution forward, backward data and backward filter (algorithms found once by
 *    cudnnFind*), 128x16x32x32 * 16x16x3x3, pad 1, and the stride-2 16->32 case, against
 *    direct-sum kernels in double precision; TF32 off (CUDNN_FMA_MATH), so float32 arithmetic.
 * 2. cublasSgemm (fc: 128x64 * 64x10 and a square 1024 case) against a direct-sum kernel.
 * 3. Device-to-device copy bandwidth of a 2 GiB buffer (bytes read + written), the memory floor.
 * Prints each relative error ||out - ref|| / ||ref|| and fails (exit 1) above 1e-5, on NaN, or
 * on any CUDA, cuDNN or cuBLAS error. Inputs are random, outputs poisoned with NaN first.
 * Build: nvcc -O2 -arch=sm_90 scripts/gpu-probe.cu -lcudnn -lcublas -o gpu-probe */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(2); } } while (0)
#define DNN(x) do { cudnnStatus_t e_ = (x); if (e_ != CUDNN_STATUS_SUCCESS) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudnnGetErrorString(e_)); exit(2); } } while (0)
#define BLAS(x) do { cublasStatus_t e_ = (x); if (e_ != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, (int)e_); exit(2); } } while (0)

static int failures;

static float *dev_random(size_t n, unsigned seed)
{
    float *h = (float *)malloc(n * sizeof *h), *d;
    srand(seed);
    for (size_t i = 0; i < n; i++) h[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    CK(cudaMalloc(&d, n * sizeof *d));
    CK(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static float *dev_nan(size_t n)
{
    float *d;
    CK(cudaMalloc(&d, n * sizeof *d));
    CK(cudaMemset(d, 0xff, n * sizeof *d)); /* all-ones bits: NaN */
    return d;
}

static void compare(const char *what, const float *d_out, const double *d_ref, size_t n)
{
    float *o = (float *)malloc(n * sizeof *o);
    double *r = (double *)malloc(n * sizeof *r), num = 0, den = 0;
    CK(cudaMemcpy(o, d_out, n * sizeof *o, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r, d_ref, n * sizeof *r, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) {
        double d = (double)o[i] - r[i];
        num += d * d;
        den += r[i] * r[i];
    }
    double rel = sqrt(num / den);
    int ok = rel <= 1e-5; /* false on NaN */
    printf("%-44s rel err %.3g  %s\n", what, rel, ok ? "ok" : "FAIL");
    failures += !ok;
    free(o);
    free(r);
}

/* y[n,k,oh,ow] = sum x[n,c,ih,iw] w[k,c,r,s]; also dx and dw from dy, all in double. */
struct geo { int n, c, h, w, k, r, s, pad, stride, oh, ow; };

__global__ void conv_fwd_ref(struct geo g, const float *x, const float *w, double *y)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x, total = (long)g.n * g.k * g.oh * g.ow;
    if (i >= total) return;
    int ow = i % g.ow, oh = i / g.ow % g.oh, k = i / ((long)g.ow * g.oh) % g.k;
    int n = i / ((long)g.ow * g.oh * g.k);
    double s = 0;
    for (int c = 0; c < g.c; c++)
        for (int r = 0; r < g.r; r++)
            for (int q = 0; q < g.s; q++) {
                int ih = oh * g.stride - g.pad + r, iw = ow * g.stride - g.pad + q;
                if (ih < 0 || iw < 0 || ih >= g.h || iw >= g.w) continue;
                s += (double)x[(((long)n * g.c + c) * g.h + ih) * g.w + iw] *
                     w[(((long)k * g.c + c) * g.r + r) * g.s + q];
            }
    y[i] = s;
}

__global__ void conv_bwd_data_ref(struct geo g, const float *dy, const float *w, double *dx)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x, total = (long)g.n * g.c * g.h * g.w;
    if (i >= total) return;
    int iw = i % g.w, ih = i / g.w % g.h, c = i / ((long)g.w * g.h) % g.c;
    int n = i / ((long)g.w * g.h * g.c);
    double s = 0;
    for (int k = 0; k < g.k; k++)
        for (int r = 0; r < g.r; r++)
            for (int q = 0; q < g.s; q++) {
                int th = ih + g.pad - r, tw = iw + g.pad - q;
                if (th < 0 || tw < 0 || th % g.stride || tw % g.stride) continue;
                int oh = th / g.stride, ow = tw / g.stride;
                if (oh >= g.oh || ow >= g.ow) continue;
                s += (double)dy[(((long)n * g.k + k) * g.oh + oh) * g.ow + ow] *
                     w[(((long)k * g.c + c) * g.r + r) * g.s + q];
            }
    dx[i] = s;
}

__global__ void conv_bwd_filter_ref(struct geo g, const float *x, const float *dy, double *dw)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x, total = (long)g.k * g.c * g.r * g.s;
    if (i >= total) return;
    int q = i % g.s, r = i / g.s % g.r, c = i / ((long)g.s * g.r) % g.c;
    int k = i / ((long)g.s * g.r * g.c);
    double s = 0;
    for (int n = 0; n < g.n; n++)
        for (int oh = 0; oh < g.oh; oh++)
            for (int ow = 0; ow < g.ow; ow++) {
                int ih = oh * g.stride - g.pad + r, iw = ow * g.stride - g.pad + q;
                if (ih < 0 || iw < 0 || ih >= g.h || iw >= g.w) continue;
                s += (double)x[(((long)n * g.c + c) * g.h + ih) * g.w + iw] *
                     dy[(((long)n * g.k + k) * g.oh + oh) * g.ow + ow];
            }
    dw[i] = s;
}

static unsigned blocks(size_t n) { return (unsigned)((n + 255) / 256); }

static void conv_case(cudnnHandle_t h, struct geo g, const char *name)
{
    g.oh = (g.h + 2 * g.pad - g.r) / g.stride + 1;
    g.ow = (g.w + 2 * g.pad - g.s) / g.stride + 1;
    size_t nx = (size_t)g.n * g.c * g.h * g.w, nw = (size_t)g.k * g.c * g.r * g.s;
    size_t ny = (size_t)g.n * g.k * g.oh * g.ow;
    float *x = dev_random(nx, 1), *w = dev_random(nw, 2), *dy = dev_random(ny, 3);
    float *y = dev_nan(ny), *dx = dev_nan(nx), *dw = dev_nan(nw);
    double *ry, *rdx, *rdw;
    CK(cudaMalloc(&ry, ny * sizeof *ry));
    CK(cudaMalloc(&rdx, nx * sizeof *rdx));
    CK(cudaMalloc(&rdw, nw * sizeof *rdw));

    cudnnTensorDescriptor_t tx, ty;
    cudnnFilterDescriptor_t tw;
    cudnnConvolutionDescriptor_t cd;
    DNN(cudnnCreateTensorDescriptor(&tx));
    DNN(cudnnCreateTensorDescriptor(&ty));
    DNN(cudnnCreateFilterDescriptor(&tw));
    DNN(cudnnCreateConvolutionDescriptor(&cd));
    DNN(cudnnSetTensor4dDescriptor(tx, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g.n, g.c, g.h, g.w));
    DNN(cudnnSetTensor4dDescriptor(ty, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g.n, g.k, g.oh, g.ow));
    DNN(cudnnSetFilter4dDescriptor(tw, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g.k, g.c, g.r, g.s));
    DNN(cudnnSetConvolution2dDescriptor(cd, g.pad, g.pad, g.stride, g.stride, 1, 1,
                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN(cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH));

    int got;
    cudnnConvolutionFwdAlgoPerf_t pf;
    cudnnConvolutionBwdDataAlgoPerf_t pd;
    cudnnConvolutionBwdFilterAlgoPerf_t pw;
    DNN(cudnnFindConvolutionForwardAlgorithm(h, tx, tw, cd, ty, 1, &got, &pf));
    DNN(cudnnFindConvolutionBackwardDataAlgorithm(h, tw, ty, cd, tx, 1, &got, &pd));
    DNN(cudnnFindConvolutionBackwardFilterAlgorithm(h, tx, ty, cd, tw, 1, &got, &pw));
    size_t ws = pf.memory;
    if (pd.memory > ws) ws = pd.memory;
    if (pw.memory > ws) ws = pw.memory;
    void *work = NULL;
    if (ws) CK(cudaMalloc(&work, ws));
    float one = 1, zero = 0;
    DNN(cudnnConvolutionForward(h, &one, tx, x, tw, w, cd, pf.algo, work, ws, &zero, ty, y));
    DNN(cudnnConvolutionBackwardData(h, &one, tw, w, ty, dy, cd, pd.algo, work, ws, &zero, tx, dx));
    DNN(cudnnConvolutionBackwardFilter(h, &one, tx, x, ty, dy, cd, pw.algo, work, ws, &zero, tw, dw));
    conv_fwd_ref<<<blocks(ny), 256>>>(g, x, w, ry);
    conv_bwd_data_ref<<<blocks(nx), 256>>>(g, dy, w, rdx);
    conv_bwd_filter_ref<<<blocks(nw), 256>>>(g, x, dy, rdw);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    char what[96];
    snprintf(what, sizeof what, "%s fwd (algo %d, %.3f ms)", name, (int)pf.algo, pf.time);
    compare(what, y, ry, ny);
    snprintf(what, sizeof what, "%s bwd data (algo %d, %.3f ms)", name, (int)pd.algo, pd.time);
    compare(what, dx, rdx, nx);
    snprintf(what, sizeof what, "%s bwd filter (algo %d, %.3f ms)", name, (int)pw.algo, pw.time);
    compare(what, dw, rdw, nw);
    cudaFree(work);
    cudaFree(x); cudaFree(w); cudaFree(dy); cudaFree(y); cudaFree(dx); cudaFree(dw);
    cudaFree(ry); cudaFree(rdx); cudaFree(rdw);
    cudnnDestroyTensorDescriptor(tx);
    cudnnDestroyTensorDescriptor(ty);
    cudnnDestroyFilterDescriptor(tw);
    cudnnDestroyConvolutionDescriptor(cd);
}

/* Row-major C[m,n] = A[m,k] B[k,n] in double. */
__global__ void gemm_ref(int m, int n, int k, const float *a, const float *b, double *c)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)m * n) return;
    int row = i / n, col = i % n;
    double s = 0;
    for (int j = 0; j < k; j++) s += (double)a[(long)row * k + j] * b[(long)j * n + col];
    c[i] = s;
}

static void gemm_case(cublasHandle_t h, int m, int n, int k)
{
    float *a = dev_random((size_t)m * k, 4), *b = dev_random((size_t)k * n, 5);
    float *c = dev_nan((size_t)m * n);
    double *r;
    CK(cudaMalloc(&r, (size_t)m * n * sizeof *r));
    float one = 1, zero = 0;
    /* Row-major C = A B is column-major C^T = B^T A^T. */
    BLAS(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, b, n, a, k, &zero, c, n));
    gemm_ref<<<blocks((size_t)m * n), 256>>>(m, n, k, a, b, r);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    char what[96];
    snprintf(what, sizeof what, "cublasSgemm %dx%d * %dx%d", m, k, k, n);
    compare(what, c, r, (size_t)m * n);
    cudaFree(a); cudaFree(b); cudaFree(c); cudaFree(r);
}

static void copy_bandwidth(void)
{
    size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int i = 0; i < 12; i++) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2 && ms < best) best = ms;
    }
    printf("device copy of %zu MiB: %.3f ms best of 10 = %.0f GB/s (read + written)\n",
           bytes >> 20, best, 2.0 * bytes / (best * 1e-3) / 1e9);
    cudaFree(a);
    cudaFree(b);
}

int main(void)
{
    int rt, drv, dev;
    cudaDeviceProp p;
    CK(cudaRuntimeGetVersion(&rt));
    CK(cudaDriverGetVersion(&drv));
    CK(cudaGetDevice(&dev));
    CK(cudaGetDeviceProperties(&p, dev));
    printf("device: %s, sm_%d%d, %d SMs, %.1f GiB; runtime %d, driver %d\n", p.name, p.major,
           p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, rt, drv);
    printf("cuDNN %zu (headers %d), cuBLAS ", cudnnGetVersion(), CUDNN_VERSION);
    cudnnHandle_t dnn;
    cublasHandle_t blas;
    DNN(cudnnCreate(&dnn));
    BLAS(cublasCreate(&blas));
    int bv;
    BLAS(cublasGetVersion(blas, &bv));
    printf("%d\n", bv);
    struct geo g1 = {128, 16, 32, 32, 16, 3, 3, 1, 1, 0, 0};
    struct geo g2 = {128, 16, 32, 32, 32, 3, 3, 1, 2, 0, 0};
    struct geo g3 = {128, 32, 16, 16, 64, 1, 1, 0, 2, 0, 0};
    conv_case(dnn, g1, "conv 16->16 3x3 s1 32x32");
    conv_case(dnn, g2, "conv 16->32 3x3 s2 32x32");
    conv_case(dnn, g3, "conv 32->64 1x1 s2 16x16");
    gemm_case(blas, 128, 10, 64);
    gemm_case(blas, 1024, 1024, 1024);
    copy_bandwidth();
    cublasDestroy(blas);
    cudnnDestroy(dnn);
    printf("gpu-probe: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
