/* CUDA Gemm (ONNX: transposes, alpha, beta, broadcast C) and MatMul (broadcast batches) through
 * cuBLAS, forward and backward side by side. Row-major products are computed as the column-major products of the
 * transposes; FP32 arithmetic (cuBLAS's default math: no TF32). */
#include <cublas_v2.h>

#include "cuda.h"

static int blas_check(cublasStatus_t rc, const char *call, int line, struct qt_error *e)
{
    if (rc == CUBLAS_STATUS_SUCCESS) return 0;
    return qt_err(e, "cuBLAS: %s failed at kernels/cuda/gemm.c:%d: status %d", call, line, (int)rc);
}
#define BLAS(e, call) blas_check((call), #call, __LINE__, (e))

/* Row-major C[M,N] = alpha op(X) op(Z) + beta C, X stored [M,K] ([K,M] when tx), Z stored [K,N]
 * ([N,K] when tz): column-major C^T = op(Z)^T op(X)^T. */
static int rm_gemm(struct qt_cuda_ctx *c, int tx, int tz, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *X, const float *Z, float beta, float *C,
                   struct qt_error *e)
{
    if (M > 2147483647 || N > 2147483647 || K > 2147483647)
        return qt_err(e, "a %lldx%lldx%lld matrix product is too large for cuBLAS's 32-bit sizes",
                      (long long)M, (long long)N, (long long)K);
    return BLAS(e, cublasSgemm(c->blas, tz ? CUBLAS_OP_T : CUBLAS_OP_N, tx ? CUBLAS_OP_T : CUBLAS_OP_N,
                               (int)N, (int)M, (int)K, &alpha, Z, (int)(tz ? K : N), X,
                               (int)(tx ? M : K), &beta, C, (int)N));
}

int gemm_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                      const float *cm, const struct qt_gemm_desc *d, struct qt_error *e)
{
    if (d->m < 1 || d->n < 1) return 0;
    if (d->alpha != 0.0f && d->k > 0) {
        if (rm_gemm(c, d->ta, d->tb, d->m, d->n, d->k, d->alpha, a, b, 0.0f, y, e)) return -1;
    } else if (QT_CU(e, cudaMemsetAsync(y, 0, sizeof(float) * (size_t)(d->m * d->n), c->stream))) {
        return -1;
    }
    if (cm && d->beta != 0.0f) {
        gemm_add_c_cuda(c, y, cm, d->beta, d->m, d->n, d->c_rs, d->c_cs);
        return QT_CU_LAUNCH(e, "Gemm's C term");
    }
    return 0;
}

int gemm_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, float *dc, const float *dy,
                       const float *a, const float *b, const struct qt_gemm_desc *d, int acc_a,
                       int acc_b, int acc_c, struct qt_error *e)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    const float al = d->alpha;
    /* dop(A) = alpha dY op(B)^T [m,k]; stored transposed when ta: dA = alpha op(B) dY^T. */
    if (da && k > 0 && m > 0) {
        const int rc = d->ta ? rm_gemm(c, d->tb, 1, k, m, n, al, b, dy, acc_a ? 1.0f : 0.0f, da, e)
                             : rm_gemm(c, 0, !d->tb, m, k, n, al, dy, b, acc_a ? 1.0f : 0.0f, da, e);
        if (rc) return -1;
    }
    /* dop(B) = alpha op(A)^T dY [k,n]; stored transposed when tb: dB = alpha dY^T op(A). */
    if (db && k > 0 && n > 0) {
        const int rc = d->tb ? rm_gemm(c, 1, d->ta, n, k, m, al, dy, a, acc_b ? 1.0f : 0.0f, db, e)
                             : rm_gemm(c, !d->ta, 0, k, n, m, al, a, dy, acc_b ? 1.0f : 0.0f, db, e);
        if (rc) return -1;
    }
    if (dc) {
        gemm_dc_cuda(c, dc, dy, d->beta, m, n, d, acc_c);
        return QT_CU_LAUNCH(e, "Gemm's C gradient");
    }
    return 0;
}

int matmul_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *a, const float *b,
                        const struct qt_matmul_desc *d, struct qt_error *e)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    if (m < 1 || n < 1 || d->batches < 1) return 0;
    if (k < 1)
        return QT_CU(e, cudaMemsetAsync(y, 0, sizeof(float) * (size_t)(d->batches * m * n), c->stream));
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        if (rm_gemm(c, 0, 0, m, n, k, 1.0f, a + oa, b + ob, 0.0f, y + t * m * n, e)) return -1;
    }
    return 0;
}

/* Gradients are cleared first (unless accumulating), then every product adds its share to the
 * matrices it read: several where a batch dimension broadcasts. */
int matmul_backward_cuda(struct qt_cuda_ctx *c, float *da, float *db, const float *dy,
                         const float *a, const float *b, const struct qt_matmul_desc *d, int acc_a,
                         int acc_b, struct qt_error *e)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    if (da && !acc_a && d->na > 0 &&
        QT_CU(e, cudaMemsetAsync(da, 0, sizeof(float) * (size_t)d->na, c->stream)))
        return -1;
    if (db && !acc_b && d->nb > 0 &&
        QT_CU(e, cudaMemsetAsync(db, 0, sizeof(float) * (size_t)d->nb, c->stream)))
        return -1;
    if (m < 1 || n < 1 || k < 1) return 0;
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        const float *g = dy + t * m * n;
        /* dA_t += dY_t B_t^T;  dB_t += A_t^T dY_t */
        if (da && rm_gemm(c, 0, 1, m, k, n, 1.0f, g, b + ob, 1.0f, da + oa, e)) return -1;
        if (db && rm_gemm(c, 1, 0, k, n, m, 1.0f, a + oa, g, 1.0f, db + ob, e)) return -1;
    }
    return 0;
}
