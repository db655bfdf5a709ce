/* General matrix multiply on the CPU (ONNX Gemm / MatMul forward): cblas_sgemm, with the
 * optional C term broadcast into the output through its strides first. */
#include <cblas.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

QT_CPU_CLONES void gemm_forward_cpu(float *y, const float *a, const float *b, const float *c,
                                    int64_t m, int64_t n, int64_t k, int ta, int tb, float alpha,
                                    float beta, int64_t c_rs, int64_t c_cs)
{
    if (m <= 0 || n <= 0) return;
    const int use_c = c != NULL && beta != 0.0f;
    /* y = beta * C (broadcast), then y += alpha * op(A) op(B). */
    if (use_c) {
#pragma omp parallel for schedule(static) if (m * n > 32768)
        for (int64_t i = 0; i < m; i++) {
            const float *cr = c + i * c_rs;
            float *yr = y + i * n;
            if (c_cs == 1) {
#pragma omp simd
                for (int64_t j = 0; j < n; j++)
                    yr[j] = beta * cr[j];
            } else {
                for (int64_t j = 0; j < n; j++)
                    yr[j] = beta * cr[j * c_cs];
            }
        }
    }
    if (k <= 0 || alpha == 0.0f) {
        if (!use_c) memset(y, 0, sizeof(float) * (size_t)(m * n));
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)k, alpha, a, ta ? (int)m : (int)k, b, tb ? (int)k : (int)n,
                use_c ? 1.0f : 0.0f, y, (int)n);
}

/* Backward of Y = alpha * op(A) op(B) + beta * C with dY [m, n]. da has A's stored shape
 * ([m, k], or [k, m] when ta), db B's ([k, n], or [n, k] when tb); dc is C's broadcast
 * shape, reduced through its strides c_rs/c_cs (0 where broadcast) over c_rows x c_cols
 * elements. Any of da, db, dc may be NULL; each is assigned (=) when its acc flag is 0 and
 * accumulated (+=) when 1. */
void gemm_backward_cpu(float *da, float *db, float *dc, const float *dy, const float *a,
                       const float *b, int64_t m, int64_t n, int64_t k, int ta, int tb, float alpha,
                       float beta, int64_t c_rs, int64_t c_cs, int64_t c_rows, int64_t c_cols,
                       int acc_a, int acc_b, int acc_c)
{
    const int lda = ta ? (int)m : (int)k, ldb = tb ? (int)k : (int)n;
    if (da && m > 0 && k > 0) {
        if (!ta) /* dA[m,k] = alpha * dY op(B)^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasNoTrans : CblasTrans, (int)m, (int)k,
                        (int)n, alpha, dy, (int)n, b, ldb, acc_a ? 1.0f : 0.0f, da, (int)k);
        else /* dA[k,m] = alpha * op(B) dY^T */
            cblas_sgemm(CblasRowMajor, tb ? CblasTrans : CblasNoTrans, CblasTrans, (int)k, (int)m,
                        (int)n, alpha, b, ldb, dy, (int)n, acc_a ? 1.0f : 0.0f, da, (int)m);
    }
    if (db && k > 0 && n > 0) {
        if (!tb) /* dB[k,n] = alpha * op(A)^T dY */
            cblas_sgemm(CblasRowMajor, ta ? CblasNoTrans : CblasTrans, CblasNoTrans, (int)k, (int)n,
                        (int)m, alpha, a, lda, dy, (int)n, acc_b ? 1.0f : 0.0f, db, (int)n);
        else /* dB[n,k] = alpha * dY^T op(A) */
            cblas_sgemm(CblasRowMajor, CblasTrans, ta ? CblasTrans : CblasNoTrans, (int)n, (int)k,
                        (int)m, alpha, dy, (int)n, a, lda, acc_b ? 1.0f : 0.0f, db, (int)k);
    }
    if (dc) {
        if (!acc_c)
            for (int64_t i = 0; i < c_rows * c_cols; i++)
                dc[i] = 0.0f;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                dc[i * c_rs + j * c_cs] += beta * dy[i * n + j];
    }
}
