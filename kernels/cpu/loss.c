/* Softmax cross-entropy loss and top-1/top-5 counts on the CPU, forward and backward in one
 * pass (the formulas are in cpu.h). */
#include <math.h>

#include "kernels/cpu/cpu.h"

void softmax_xent_cpu(float *dlogits, double *stats, const float *logits, const int32_t *labels,
                      int64_t n, int64_t k, float smoothing, float scale)
{
    double total = 0.0;
    int64_t top1 = 0, top5 = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = logits + i * k;
        const int32_t y = labels[i];
        double mx = z[0];
        int64_t higher = 0; /* logits ranked before the label's (ties: the lower index first) */
        int finite = 1;
        for (int64_t j = 0; j < k; j++) {
            finite &= isfinite(z[j]) != 0;
            if (z[j] > mx) mx = z[j];
            higher += z[j] > z[y] || (z[j] == z[y] && j < y);
        }
        if (!finite) {
            bad++;
            if (dlogits)
                for (int64_t j = 0; j < k; j++) dlogits[i * k + j] = NAN;
            continue;
        }
        top1 += higher < 1;
        top5 += higher < 5;
        double se = 0.0, sz = 0.0;
        for (int64_t j = 0; j < k; j++) {
            se += exp(z[j] - mx);
            sz += z[j];
        }
        const double lse = log(se) + mx;
        total += (1.0 - smoothing) * (lse - z[y]) + smoothing * (lse - sz / k);
        if (!dlogits) continue;
        for (int64_t j = 0; j < k; j++) {
            const double p = exp(z[j] - lse);
            const double t = (j == y ? 1.0 - smoothing : 0.0) + smoothing / k;
            dlogits[i * k + j] = (float)((p - t) * scale);
        }
    }
    stats[0] = total;
    stats[1] = (double)top1;
    stats[2] = (double)top5;
    stats[3] = (double)bad;
}
