/* BSQ's bit-plane layers on the host (see bsq.h). */
#include "bsq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int alloc_planes(struct qt_bsq_layer *l, int N)
{
    const size_t bytes = sizeof(float) * (size_t)(N > 0 ? N : 1) * (size_t)(l->count ? l->count : 1);
    float *p = calloc(1, bytes), *n = calloc(1, bytes);
    if (!p || !n) {
        free(p);
        free(n);
        return -1;
    }
    free(l->p);
    free(l->n);
    l->p = p;
    l->n = n;
    l->N = N;
    return 0;
}

/* Writes the N binary digits of qp and qn (MSB first) for weight j. */
static void put_digits(struct qt_bsq_layer *l, int64_t j, unsigned qp, unsigned qn)
{
    for (int b = 0; b < l->N; b++) {
        const unsigned bit = 1u << (l->N - 1 - b);
        l->p[(int64_t)b * l->count + j] = (qp & bit) ? 1.0f : 0.0f;
        l->n[(int64_t)b * l->count + j] = (qn & bit) ? 1.0f : 0.0f;
    }
}

int qt_bsq_encode(struct qt_bsq_layer *l, const float *w, int64_t count, int N)
{
    memset(l, 0, sizeof *l);
    if (N < 1 || N > QT_BSQ_MAX_BITS || count < 0) return -1;
    l->count = count;
    if (alloc_planes(l, N)) return -1;
    float m = 0;
    for (int64_t j = 0; j < count; j++)
        m = fabsf(w[j]) > m ? fabsf(w[j]) : m;
    l->s = m > 0 ? m : 1.0f;
    const float k = qt_bsq_k(N);
    for (int64_t j = 0; j < count; j++) {
        const unsigned q = (unsigned)nearbyintf(fabsf(w[j]) * k / l->s);
        put_digits(l, j, w[j] > 0 ? q : 0, w[j] > 0 ? 0 : q);
    }
    return 0;
}

/* v = sum_b (p_b - n_b) 2^(N-1-b) of weight j, in double. */
static double plane_sum(const struct qt_bsq_layer *l, int64_t j)
{
    double v = 0;
    for (int b = 0; b < l->N; b++)
        v += ((double)l->p[(int64_t)b * l->count + j] - l->n[(int64_t)b * l->count + j]) *
             (double)(1 << (l->N - 1 - b));
    return v;
}

void qt_bsq_weights(const struct qt_bsq_layer *l, float *w)
{
    for (int64_t j = 0; j < l->count; j++)
        w[j] = l->N > 0 ? l->s * qt_bsq_unit((float)plane_sum(l, j), l->N) : 0.0f;
}

int qt_bsq_requant(struct qt_bsq_layer *l)
{
    if (l->N < 1) return 0;
    unsigned *qp = malloc(sizeof(unsigned) * (size_t)(l->count + 1)),
             *qn = malloc(sizeof(unsigned) * (size_t)(l->count + 1));
    if (!qp || !qn) {
        free(qp);
        free(qn);
        return -1;
    }
    unsigned qmax = 0;
    for (int64_t j = 0; j < l->count; j++) {
        const double v = plane_sum(l, j);
        qp[j] = (unsigned)nearbyint(v > 0 ? v : 0);
        qn[j] = (unsigned)nearbyint(v < 0 ? -v : 0);
        qmax = qp[j] > qmax ? qp[j] : qmax;
        qmax = qn[j] > qmax ? qn[j] : qmax;
    }
    int N = l->N;
    if (qmax > (1u << N) - 1) {
        if (N < QT_BSQ_MAX_BITS) {
            l->s *= qt_bsq_k(N + 1) / qt_bsq_k(N);
            N++;
        } else {
            for (int64_t j = 0; j < l->count; j++) {
                qp[j] = qp[j] > 255 ? 255 : qp[j];
                qn[j] = qn[j] > 255 ? 255 : qn[j];
            }
        }
    }
    int rc = 0;
    if (N != l->N) rc = alloc_planes(l, N);
    for (int64_t j = 0; !rc && j < l->count; j++)
        put_digits(l, j, qp[j], qn[j]);
    free(qp);
    free(qn);
    return rc;
}

double qt_bsq_plane_percent(const struct qt_bsq_layer *l, int b)
{
    if (l->count == 0) return 0;
    int64_t set = 0;
    for (int64_t j = 0; j < l->count; j++)
        set += l->p[(int64_t)b * l->count + j] != 0 || l->n[(int64_t)b * l->count + j] != 0;
    return 100.0 * (double)set / (double)l->count;
}

/* Removes plane b (moving the later planes up). */
static void drop_plane(struct qt_bsq_layer *l, int b)
{
    const int64_t c = l->count;
    memmove(l->p + (int64_t)b * c, l->p + (int64_t)(b + 1) * c, sizeof(float) * (size_t)((l->N - 1 - b) * c));
    memmove(l->n + (int64_t)b * c, l->n + (int64_t)(b + 1) * c, sizeof(float) * (size_t)((l->N - 1 - b) * c));
    l->N--;
}

void qt_bsq_adjust(struct qt_bsq_layer *l, double thre, int zero_empty)
{
    const int N0 = l->N;
    if (N0 < 1) return;
    const int64_t c = l->count;
    /* from the most significant plane down */
    while (l->N > 1) {
        const double pct = qt_bsq_plane_percent(l, 0);
        if (pct > 0 && !(pct < thre)) break;
        if (pct > 0) /* merged: added into every lower plane, which saturate at 1 */
            for (int b = 1; b < l->N; b++)
                for (int64_t j = 0; j < c; j++) {
                    float *pp = &l->p[(int64_t)b * c + j], *nn = &l->n[(int64_t)b * c + j];
                    *pp = fminf(*pp + l->p[j], 1.0f);
                    *nn = fminf(*nn + l->n[j], 1.0f);
                }
        drop_plane(l, 0);
    }
    /* from the least significant plane up */
    while (l->N > 1 && qt_bsq_plane_percent(l, l->N - 1) <= thre) {
        l->N--; /* the last plane: nothing moves */
        l->s *= 2.0f;
    }
    l->s *= qt_bsq_k(l->N) / qt_bsq_k(N0);
    if (zero_empty && l->N == 1 && qt_bsq_plane_percent(l, 0) == 0) l->N = 0;
}

double qt_bsq_group_lasso(const struct qt_bsq_layer *l)
{
    double sum = 0;
    for (int b = 0; b < l->N; b++) {
        double sq = 0;
        for (int64_t j = 0; j < l->count; j++) {
            const double p = l->p[(int64_t)b * l->count + j], n = l->n[(int64_t)b * l->count + j];
            sq += p * p + n * n;
        }
        sum += sqrt(1e-8 + sq);
    }
    return (double)l->count * l->N * sum;
}

void qt_bsq_free(struct qt_bsq_layer *l)
{
    free(l->p);
    free(l->n);
    memset(l, 0, sizeof *l);
}
