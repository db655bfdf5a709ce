/* Reference elementwise ops, forward and backward: ReLU, Sigmoid, Clip, the four broadcasting
 * binary arithmetic ops, and the copy of Reshape-like ops. */
#include <math.h>
#include <stdlib.h>

#include "kernels/ref/ref.h"

/* Writes g to *o, or adds it when acc. */
static void put(float *o, float g, int acc)
{
    *o = acc ? *o + g : g;
}

void relu_forward_ref(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward_ref(float *dx, const float *dy, const float *y, int64_t n, int acc)
{
    for (int64_t i = 0; i < n; i++)
        put(&dx[i], y[i] > 0.0f ? dy[i] : 0.0f, acc);
}

void clip_forward_ref(float *y, const float *x, float lo, float hi, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (v < lo) v = lo;
        if (v > hi) v = hi;
        y[i] = v;
    }
}

/* The gradient passes where the input lies inside [lo, hi], bounds included. */
void clip_backward_ref(float *dx, const float *dy, const float *x, float lo, float hi, int64_t n,
                       int acc)
{
    for (int64_t i = 0; i < n; i++)
        put(&dx[i], x[i] >= lo && x[i] <= hi ? dy[i] : 0.0f, acc);
}

/* Offsets in a and b of output element i (row-major over d->shape). */
static void operand_offsets(const struct qt_binary_desc *d, int64_t i, int64_t *ia, int64_t *ib)
{
    int64_t oa = 0, ob = 0;
    for (int k = d->ndim - 1; k >= 0; k--) {
        const int64_t j = i % d->shape[k];
        i /= d->shape[k];
        oa += j * d->sa[k];
        ob += j * d->sb[k];
    }
    *ia = oa;
    *ib = ob;
}

static int64_t output_numel(const struct qt_binary_desc *d)
{
    int64_t t = 1;
    for (int k = 0; k < d->ndim; k++)
        t *= d->shape[k];
    return t;
}

void binary_forward_ref(float *y, const float *a, const float *b, const struct qt_binary_desc *d)
{
    const int64_t total = output_numel(d);
    for (int64_t i = 0; i < total; i++) {
        int64_t ia, ib;
        operand_offsets(d, i, &ia, &ib);
        const float u = a[ia], v = b[ib];
        switch (d->op) {
        case QT_BIN_ADD:
            y[i] = u + v;
            break;
        case QT_BIN_SUB:
            y[i] = u - v;
            break;
        case QT_BIN_MUL:
            y[i] = u * v;
            break;
        case QT_BIN_DIV:
            y[i] = u / v;
            break;
        }
    }
}

/* Partial derivatives of y = u op v:
 *   add: (1, 1)   sub: (1, -1)   mul: (v, u)   div: (1 / v, -u / v^2). */
static void partials(enum qt_binop op, double u, double v, double *du, double *dv)
{
    *du = 1.0;
    *dv = 1.0;
    switch (op) {
    case QT_BIN_ADD:
        break;
    case QT_BIN_SUB:
        *du = 1.0;
        *dv = -1.0;
        break;
    case QT_BIN_MUL:
        *du = v;
        *dv = u;
        break;
    case QT_BIN_DIV:
        *du = 1.0 / v;
        *dv = -u / (v * v);
        break;
    }
}

/* Every output element reads one element of each operand; an operand element receives the
 * sum over the output elements that read it (several where it broadcasts), summed in double in
 * scratch memory. Returns -1 (nothing written) when that memory cannot be had. */
int binary_backward_ref(float *da, float *db, const float *dy, const float *a, const float *b,
                        const struct qt_binary_desc *d, int acc_a, int acc_b)
{
    const int64_t total = output_numel(d);
    double *sa = da ? calloc((size_t)(d->na > 0 ? d->na : 1), sizeof(double)) : NULL;
    double *sb = db ? calloc((size_t)(d->nb > 0 ? d->nb : 1), sizeof(double)) : NULL;
    if ((da && !sa) || (db && !sb)) {
        free(sa);
        free(sb);
        return -1;
    }
    for (int64_t i = 0; i < total; i++) {
        int64_t ia, ib;
        operand_offsets(d, i, &ia, &ib);
        double pu, pv;
        partials(d->op, a[ia], b[ib], &pu, &pv);
        if (sa) sa[ia] += dy[i] * pu;
        if (sb) sb[ib] += dy[i] * pv;
    }
    for (int64_t e = 0; sa && e < d->na; e++)
        put(&da[e], (float)sa[e], acc_a);
    for (int64_t e = 0; sb && e < d->nb; e++)
        put(&db[e], (float)sb[e], acc_b);
    free(sa);
    free(sb);
    return 0;
}

void copy_forward_ref(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
}

void copy_backward_ref(float *dx, const float *dy, int64_t n, int acc)
{
    for (int64_t i = 0; i < n; i++)
        put(&dx[i], dy[i], acc);
}

/* y = 1 / (1 + exp(-x)), in double. */
void sigmoid_forward_ref(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(1.0 / (1.0 + exp(-(double)x[i])));
}

/* dx = dy * y * (1 - y). */
void sigmoid_backward_ref(float *dx, const float *dy, const float *y, int64_t n, int acc)
{
    for (int64_t i = 0; i < n; i++)
        put(&dx[i], (float)((double)dy[i] * y[i] * (1.0 - y[i])), acc);
}
