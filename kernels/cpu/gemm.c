/* General matrix multiply on the CPU (ONNX Gemm / MatMul forward): cblas_sgemm, with the
 * optional C term broadcast into the output through its strides first. */
#include <cblas.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

void gemm_forward_cpu(float *y, const float *a, const float *b, const float *c, int64_t m,
                      int64_t n, int64_t k, int ta, int tb, float alpha, float beta, int64_t c_rs,
                      int64_t c_cs)
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
                for (int64_t j = 0; j < n; j++) yr[j] = beta * cr[j];
            } else {
                for (int64_t j = 0; j < n; j++) yr[j] = beta * cr[j * c_cs];
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
