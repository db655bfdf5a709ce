/* Reference classifier loss: softmax cross-entropy with label smoothing and its gradient, and
 * the top-1 / top-5 counts, one row at a time in double. */
#include <math.h>
#include <stddef.h>

#include "kernels/ref/ref.h"

void softmax_xent_ref(float *dlogits, double *stats, const float *logits, const int32_t *labels,
                      int64_t n, int64_t k, float smoothing, float scale)
{
    double loss = 0.0, top1 = 0.0, top5 = 0.0, nonfinite = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = logits + i * k;
        float *dz = dlogits ? dlogits + i * k : NULL;
        const int32_t y = labels[i];
        int finite = 1;
        for (int64_t j = 0; j < k; j++)
            if (!isfinite(z[j])) finite = 0;
        if (!finite) {
            nonfinite += 1.0;
            for (int64_t j = 0; dz && j < k; j++)
                dz[j] = NAN;
            continue;
        }
        /* Rank of the label: classes with a larger logit, or an equal one at a lower index. */
        int64_t rank = 0;
        for (int64_t j = 0; j < k; j++)
            if (z[j] > z[y] || (z[j] == z[y] && j < y)) rank++;
        top1 += rank < 1;
        top5 += rank < 5;
        /* lse = log sum_j exp(z_j) (the maximum taken out first); with the target
         * t_j = (1 - smoothing) [j = y] + smoothing / k, loss = sum_j t_j (lse - z_j). */
        double mx = z[0], sz = 0.0, se = 0.0;
        for (int64_t j = 1; j < k; j++)
            if (z[j] > mx) mx = z[j];
        for (int64_t j = 0; j < k; j++) {
            se += exp(z[j] - mx);
            sz += z[j];
        }
        const double lse = mx + log(se);
        loss += (1.0 - smoothing) * (lse - z[y]) + smoothing * (lse - sz / k);
        /* dloss/dz_j = softmax_j - t_j, times scale. */
        for (int64_t j = 0; dz && j < k; j++) {
            const double t = (j == y ? 1.0 - smoothing : 0.0) + (double)smoothing / k;
            dz[j] = (float)((exp(z[j] - lse) - t) * scale);
        }
    }
    stats[QT_XENT_LOSS] = loss;
    stats[QT_XENT_TOP1] = top1;
    stats[QT_XENT_TOP5] = top5;
    stats[QT_XENT_NONFINITE] = nonfinite;
}
