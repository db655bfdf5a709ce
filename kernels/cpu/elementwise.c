/* Elementwise kernels on the CPU: ReLU, Clip, and the four arithmetic binary ops with
 * NumPy-style broadcasting given by per-operand strides. */
#include "kernels/cpu/cpu.h"

/* Below this many elements a loop stays on the calling thread. */
#define EW_PAR_MIN 32768

void relu_forward_cpu(float *y, const float *x, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* NaN stays NaN (both comparisons are false). */
void clip_forward_cpu(float *y, const float *x, float lo, float hi, int64_t n)
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
static void binary_run(float *y, const float *a, const float *b, enum qt_binop op, int64_t len,
                       int64_t sa, int64_t sb)
{
#define BIN_LOOPS(EXPR)                                                                 \
    if (sa == 1 && sb == 1) {                                                           \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++) {                         \
            const float u = a[i], v = b[i];                                             \
            y[i] = EXPR;                                                                \
        }                                                                               \
    } else if (sa == 1 && sb == 0) {                                                    \
        const float v = b[0];                                                           \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++) {                         \
            const float u = a[i];                                                       \
            y[i] = EXPR;                                                                \
        }                                                                               \
    } else if (sa == 0 && sb == 1) {                                                    \
        const float u = a[0];                                                           \
        _Pragma("omp simd") for (int64_t i = 0; i < len; i++) {                         \
            const float v = b[i];                                                       \
            y[i] = EXPR;                                                                \
        }                                                                               \
    } else {                                                                            \
        for (int64_t i = 0; i < len; i++) {                                             \
            const float u = a[i * sa], v = b[i * sb];                                   \
            y[i] = EXPR;                                                                \
        }                                                                               \
    }
    switch (op) {
    case QT_BIN_ADD: BIN_LOOPS(u + v) break;
    case QT_BIN_SUB: BIN_LOOPS(u - v) break;
    case QT_BIN_MUL: BIN_LOOPS(u * v) break;
    case QT_BIN_DIV: BIN_LOOPS(u / v) break;
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
