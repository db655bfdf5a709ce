/* The backend factory (the one place that knows which backends exist and picks one by name)
 * and what the backends share. */
#include "backend.h"

#include <math.h>
#include <string.h>

int qt_quant_check_alpha(const struct qt_quant_desc *q, const float *alpha, struct qt_error *e)
{
    for (int64_t k = 0; k < q->nalpha; k++)
        if (!(alpha[k] > 0) || !isfinite(alpha[k]))
            return qt_err(e,
                          "clipping threshold alpha = %g; it must be positive and finite (a "
                          "smaller alpha learning rate may help)",
                          alpha[k]);
    return 0;
}

int qt_sgd_psgd_check(const struct qt_sgd_param *p, int index, struct qt_error *e)
{
    if (p->n < 1 || p->psgd_levels < 1 || !isfinite(p->psgd_lambda) || p->psgd_lambda < 0)
        return qt_err(e,
                      "PSGD parameter %d: %lld values, %d grid steps, lambda %g (expected at "
                      "least one value and one step, lambda finite and not negative)",
                      index, (long long)p->n, p->psgd_levels, p->psgd_lambda);
    return 0;
}

const char *qt_backend_devices(void)
{
    return "auto|cpu|ref|cuda";
}

struct qt_backend *qt_backend_new(const char *device, int threads, struct qt_error *e)
{
    if (!device || !*device) device = "auto";
    if (!strcmp(device, "cpu") || !strcmp(device, "auto")) {
        struct qt_backend *b = qt_backend_cpu_new(threads);
        if (!b)
            qt_err(e, "cannot create the CPU backend (oneDNN engine or stream creation failed, "
                      "or out of memory)");
        return b;
    }
    if (!strcmp(device, "ref")) {
        struct qt_backend *b = qt_backend_ref_new();
        if (!b) qt_err(e, "cannot create the ref backend (out of memory)");
        return b;
    }
    if (!strcmp(device, "cuda")) return qt_backend_cuda_new(e);
    qt_err(e, "unknown device '%s' (expected %s)", device, qt_backend_devices());
    return NULL;
}
