/* Reference matrix products: ONNX Gemm (transposes, alpha, beta, broadcast C) and MatMul
 * (broadcast batches), forward and backward, each dot product summed in double. */
#include "kernels/ref/ref.h"

/* op(A)[i,p] for A stored [m,k], or [k,m] when transposed. */
static double a_at(const float *a, int ta, int64_t m, int64_t k, int64_t i, int64_t p)
{
    return ta ? a[p * m + i] : a[i * k + p];
}

/* op(B)[p,j] for B stored [k,n], or [n,k] when transposed. */
static double b_at(const float *b, int tb, int64_t k, int64_t n, int64_t p, int64_t j)
{
    return tb ? b[j * k + p] : b[p * n + j];
}

void gemm_forward_ref(float *y, const float *a, const float *b, const float *c,
                      const struct qt_gemm_desc *d)
{
    for (int64_t i = 0; i < d->m; i++)
        for (int64_t j = 0; j < d->n; j++) {
            double s = 0.0;
            if (d->alpha != 0.0f) {
                for (int64_t p = 0; p < d->k; p++)
                    s += a_at(a, d->ta, d->m, d->k, i, p) * b_at(b, d->tb, d->k, d->n, p, j);
                s *= d->alpha;
            }
            if (c && d->beta != 0.0f) s += (double)d->beta * c[i * d->c_rs + j * d->c_cs];
            y[i * d->n + j] = (float)s;
        }
}

void gemm_backward_ref(float *da, float *db, float *dc, const float *dy, const float *a,
                       const float *b, const struct qt_gemm_desc *d, int acc_a, int acc_b,
                       int acc_c)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    /* dop(A)[i,p] = alpha * sum_j dY[i,j] op(B)[p,j], stored where A[i,p] of op(A) lives. */
    if (da)
        for (int64_t i = 0; i < m; i++)
            for (int64_t p = 0; p < k; p++) {
                double s = 0.0;
                for (int64_t j = 0; j < n; j++)
                    s += (double)dy[i * n + j] * b_at(b, d->tb, k, n, p, j);
                const float g = (float)(d->alpha * s);
                float *o = d->ta ? &da[p * m + i] : &da[i * k + p];
                *o = acc_a ? *o + g : g;
            }
    /* dop(B)[p,j] = alpha * sum_i op(A)[i,p] dY[i,j]. */
    if (db)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0.0;
                for (int64_t i = 0; i < m; i++)
                    s += a_at(a, d->ta, m, k, i, p) * dy[i * n + j];
                const float g = (float)(d->alpha * s);
                float *o = d->tb ? &db[j * k + p] : &db[p * n + j];
                *o = acc_b ? *o + g : g;
            }
    /* dC[r,s] = beta * sum of dY[i,j] over the (i, j) that read C[r,s]: i = r unless rows
     * broadcast (c_rs = 0: every i), j = s unless columns broadcast (c_cs = 0: every j). */
    if (dc)
        for (int64_t r = 0; r < d->c_rows; r++)
            for (int64_t q = 0; q < d->c_cols; q++) {
                const int64_t i0 = d->c_rs ? r : 0, i1 = d->c_rs ? r + 1 : m;
                const int64_t j0 = d->c_cs ? q : 0, j1 = d->c_cs ? q + 1 : n;
                double s = 0.0;
                for (int64_t i = i0; i < i1; i++)
                    for (int64_t j = j0; j < j1; j++)
                        s += dy[i * n + j];
                const float g = (float)(d->beta * s);
                float *o = &dc[r * d->c_cols + q];
                *o = acc_c ? *o + g : g;
            }
}

void matmul_forward_ref(float *y, const float *a, const float *b, const struct qt_matmul_desc *d)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0.0;
                for (int64_t p = 0; p < k; p++)
                    s += (double)a[oa + i * k + p] * b[ob + p * n + j];
                y[t * m * n + i * n + j] = (float)s;
            }
    }
}

/* Each product's contribution is summed in double and added in float to the matrix it read
 * (in batch order) after the gradients are cleared (unless accumulating). */
void matmul_backward_ref(float *da, float *db, const float *dy, const float *a, const float *b,
                         const struct qt_matmul_desc *d, int acc_a, int acc_b)
{
    const int64_t m = d->m, n = d->n, k = d->k;
    if (da && !acc_a)
        for (int64_t i = 0; i < d->na; i++)
            da[i] = 0.0f;
    if (db && !acc_b)
        for (int64_t i = 0; i < d->nb; i++)
            db[i] = 0.0f;
    for (int64_t t = 0; t < d->batches; t++) {
        int64_t oa, ob;
        qt_matmul_offsets(d, t, &oa, &ob);
        const float *g = dy + t * m * n;
        /* dA_t[i,p] += sum_j dY_t[i,j] B_t[p,j] */
        if (da)
            for (int64_t i = 0; i < m; i++)
                for (int64_t p = 0; p < k; p++) {
                    double s = 0.0;
                    for (int64_t j = 0; j < n; j++)
                        s += (double)g[i * n + j] * b[ob + p * n + j];
                    da[oa + i * k + p] += (float)s;
                }
        /* dB_t[p,j] += sum_i A_t[i,p] dY_t[i,j] */
        if (db)
            for (int64_t p = 0; p < k; p++)
                for (int64_t j = 0; j < n; j++) {
                    double s = 0.0;
                    for (int64_t i = 0; i < m; i++)
                        s += (double)a[oa + i * k + p] * g[i * n + j];
                    db[ob + p * n + j] += (float)s;
                }
    }
}
