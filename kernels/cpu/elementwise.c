/* Elementwise kernels on the CPU: ReLU, Sigmoid, Clip, and the four arithmetic binary ops with
 * NumPy-style broadcasting given by per-operand strides. */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* Below this many elements a loop stays on the calling thread. */
#define EW_PAR_MIN 32768

QT_CPU_CLONES void relu_forward_cpu(float *y, const float *x, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* NaN stays NaN (both comparisons are false). */
QT_CPU_CLONES void clip_forward_cpu(float *y, const float *x, float lo, float hi, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        v = v < lo ? lo : v;
        y[i] = v > hi ? hi : v;
    }
}

/* One innermost run: y[0:len] = a[i * sa] op b[i * sb], with sa, sb in {0, 1} on the fast
 * paths and any stride otherwise. */
QT_CPU_CLONES static void binary_run(float *y, const float *a, const float *b, enum qt_binop op,
                                     int64_t len, int64_t sa, int64_t sb)
{
#define BIN_LOOPS(EXPR)                                                                            \
    if (sa == 1 && sb == 1) {                                                                      \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++)                                      \
        {                                                                                          \
            const float u = a[i], v = b[i];                                                        \
            y[i] = EXPR;                                                                           \
        }                                                                                          \
    } else if (sa == 1 && sb == 0) {                                                               \
        const float v = b[0];                                                                      \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++)                                      \
        {                                                                                          \
            const float u = a[i];                                                                  \
            y[i] = EXPR;                                                                           \
        }                                                                                          \
    } else if (sa == 0 && sb == 1) {                                                               \
        const float u = a[0];                                                                      \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++)                                      \
        {                                                                                          \
            const float v = b[i];                                                                  \
            y[i] = EXPR;                                                                           \
        }                                                                                          \
    } else {                                                                                       \
        for (int64_t i = 0; i < len; i++) {                                                        \
            const float u = a[i * sa], v = b[i * sb];                                              \
            y[i] = EXPR;                                                                           \
        }                                                                                          \
    }
    switch (op) {
    case QT_BIN_ADD:
        BIN_LOOPS(u + v) break;
    case QT_BIN_SUB:
        BIN_LOOPS(u - v) break;
    case QT_BIN_MUL:
        BIN_LOOPS(u * v) break;
    case QT_BIN_DIV:
        BIN_LOOPS(u / v) break;
    }
#undef BIN_LOOPS
}

void binary_forward_cpu(float *y, const float *a, const float *b, enum qt_binop op,
                        const int64_t *shape, const int64_t *sa, const int64_t *sb, int ndim)
{
    /* Simplify the iteration space: drop size-1 dimensions and merge a dimension into the
     * next inner one when both operands (and the contiguous output) step through them as
     * one. */
    const int cap = ndim > 0 ? ndim : 1;
    int64_t dim[cap], da[cap], db[cap];
    int nd = 0;
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        total *= shape[i];
        if (shape[i] == 1) continue;
        if (nd > 0 && da[nd - 1] == sa[i] * shape[i] && db[nd - 1] == sb[i] * shape[i]) {
            dim[nd - 1] *= shape[i];
            da[nd - 1] = sa[i];
            db[nd - 1] = sb[i];
            continue;
        }
        dim[nd] = shape[i];
        da[nd] = sa[i];
        db[nd] = sb[i];
        nd++;
    }
    if (total <= 0) return;
    if (nd == 0) {
        binary_run(y, a, b, op, 1, 0, 0);
        return;
    }
    const int64_t len = dim[nd - 1], isa = da[nd - 1], isb = db[nd - 1];
    const int64_t outer = total / len;
    /* Split the outer runs, or the single run itself when there is only one. */
    if (outer == 1) {
        const int64_t chunk = 4096;
        const int64_t nchunks = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (len > EW_PAR_MIN)
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t i0 = c * chunk, n = len - i0 < chunk ? len - i0 : chunk;
            binary_run(y + i0, a + i0 * isa, b + i0 * isb, op, n, isa, isb);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (total > EW_PAR_MIN)
    for (int64_t r = 0; r < outer; r++) {
        /* Offsets of run r from its multi-index over the outer dimensions. */
        int64_t rem = r, oa = 0, ob = 0;
        for (int k = nd - 2; k >= 0; k--) {
            const int64_t idx = rem % dim[k];
            rem /= dim[k];
            oa += idx * da[k];
            ob += idx * db[k];
        }
        binary_run(y + r * len, a + oa, b + ob, op, len, isa, isb);
    }
}

/* dx (= when acc is 0, += when 1) = dy where y > 0 (y is ReLU's output). */
QT_CPU_CLONES void relu_backward_cpu(float *dx, const float *dy, const float *y, int64_t n, int acc)
{
    if (acc) {
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
    } else {
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

/* dx (= or += when acc) = dy where lo <= x <= hi (torch.clamp's convention). */
QT_CPU_CLONES void clip_backward_cpu(float *dx, const float *dy, const float *x, float lo, float hi,
                                     int64_t n, int acc)
{
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = x[i] >= lo && x[i] <= hi ? dy[i] : 0.0f;
        dx[i] = acc ? dx[i] + g : g;
    }
}

/* Partial derivatives of u op v with respect to u and v. */
static inline void binary_partials(enum qt_binop op, float u, float v, float *du, float *dv)
{
    *du = 1.0f;
    *dv = 1.0f;
    switch (op) {
    case QT_BIN_ADD:
        break;
    case QT_BIN_SUB:
        *dv = -1.0f;
        break;
    case QT_BIN_MUL:
        *du = v;
        *dv = u;
        break;
    case QT_BIN_DIV:
        *du = 1.0f / v;
        *dv = -u / (v * v);
        break;
    }
}

/* Elements an operand spans given its strides over the output's dimensions. */
static int64_t operand_span(const int64_t *shape, const int64_t *s, int ndim)
{
    int64_t last = 0;
    for (int i = 0; i < ndim; i++)
        last += (shape[i] - 1) * s[i];
    return last + 1;
}

static int contiguous(const int64_t *shape, const int64_t *s, int ndim)
{
    int64_t acc = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] != 1 && s[i] != acc) return 0;
        acc *= shape[i];
    }
    return 1;
}

/* Gradients of y = a op b: da and db (either may be NULL) receive dy times the partial
 * derivative, summed over the dimensions where the operand was broadcast. Each is assigned
 * (=) when its acc flag is 0 and accumulated (+=) when 1. */
QT_CPU_CLONES void binary_backward_cpu(float *da, float *db, const float *dy, const float *a,
                                       const float *b, enum qt_binop op, const int64_t *shape,
                                       const int64_t *sa, const int64_t *sb, int ndim, int acc_a,
                                       int acc_b)
{
    int64_t total = 1;
    for (int i = 0; i < ndim; i++)
        total *= shape[i];
    if (total <= 0) return;
    if (contiguous(shape, sa, ndim) && contiguous(shape, sb, ndim)) {
#pragma omp parallel for schedule(static) if (total > EW_PAR_MIN)
        for (int64_t i = 0; i < total; i++) {
            float pu, pv;
            binary_partials(op, a[i], b[i], &pu, &pv);
            if (da) da[i] = (acc_a ? da[i] : 0.0f) + dy[i] * pu;
            if (db) db[i] = (acc_b ? db[i] : 0.0f) + dy[i] * pv;
        }
        return;
    }
    /* Broadcast: one pass in output order, reducing into the operands. */
    if (da && !acc_a)
        for (int64_t i = 0, n = operand_span(shape, sa, ndim); i < n; i++)
            da[i] = 0.0f;
    if (db && !acc_b)
        for (int64_t i = 0, n = operand_span(shape, sb, ndim); i < n; i++)
            db[i] = 0.0f;
    int64_t idx[16] = {0};
    for (int64_t i = 0; i < total; i++) {
        int64_t ia = 0, ib = 0;
        for (int k = 0; k < ndim; k++) {
            ia += idx[k] * sa[k];
            ib += idx[k] * sb[k];
        }
        float pu, pv;
        binary_partials(op, a[ia], b[ib], &pu, &pv);
        if (da) da[ia] += dy[i] * pu;
        if (db) db[ib] += dy[i] * pv;
        for (int k = ndim - 1; k >= 0; k--) {
            if (++idx[k] < shape[k]) break;
            idx[k] = 0;
        }
    }
}

QT_CPU_CLONES void sigmoid_forward_cpu(float *y, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

QT_CPU_CLONES void sigmoid_backward_cpu(float *dx, const float *dy, const float *y, int64_t n,
                                        int acc)
{
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = dy[i] * y[i] * (1.0f - y[i]);
        dx[i] = acc ? dx[i] + g : g;
    }
}
