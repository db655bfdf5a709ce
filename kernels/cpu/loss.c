/* Softmax cross-entropy loss on the CPU, forward and backward in one pass. */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* For logits [n, k] and labels, with the target (1 - smoothing) * onehot + smoothing / k
 * (PyTorch's label_smoothing): returns the summed loss over the n rows and assigns
 * dlogits = (softmax - target) * scale (scale = 1 / n for a mean loss). dlogits may be NULL.
 * hits, when not NULL, receives the number of rows whose largest logit is the label. */
double softmax_xent_cpu(float *dlogits, int64_t *hits, const float *logits, const int32_t *labels,
                        int64_t n, int64_t k, float smoothing, float scale)
{
    double total = 0.0;
    int64_t right = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = logits + i * k;
        double mx = z[0];
        int64_t arg = 0;
        for (int64_t j = 1; j < k; j++)
            if (z[j] > mx) {
                mx = z[j];
                arg = j;
            }
        double se = 0.0, sz = 0.0;
        for (int64_t j = 0; j < k; j++) {
            se += exp(z[j] - mx);
            sz += z[j];
        }
        const double lse = log(se) + mx;
        const int32_t y = labels[i];
        total += (1.0 - smoothing) * (lse - z[y]) + smoothing * (lse - sz / k);
        right += arg == y;
        if (!dlogits) continue;
        for (int64_t j = 0; j < k; j++) {
            const double p = exp(z[j] - lse);
            const double t = (j == y ? 1.0 - smoothing : 0.0) + smoothing / k;
            dlogits[i * k + j] = (float)((p - t) * scale);
        }
    }
    if (hits) *hits = right;
    return total;
}
