/* The backend factory (the one place that knows which backends exist and picks one by name)
 * and what the backends share. */
#include "backend.h"

#include <math.h>
#include <stdio.h>
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

static struct qt_backend *cpu_new(int threads, struct qt_error *e)
{
    struct qt_backend *b = qt_backend_cpu_new(threads);
    if (!b)
        qt_err(e, "cannot create the CPU backend (oneDNN engine or stream creation failed, or out "
                  "of memory)");
    return b;
}

struct qt_backend *qt_backend_auto(int threads, char *notice, size_t cap, struct qt_error *e)
{
    if (notice && cap) notice[0] = 0;
    if (qt_backend_cuda_built()) {
        struct qt_error ce;
        ce.msg[0] = 0;
        struct qt_backend *b = qt_backend_cuda_new(&ce);
        if (b) return b;
        if (notice && cap) snprintf(notice, cap, "%s; running on the CPU", ce.msg);
    }
    return cpu_new(threads, e);
}

struct qt_backend *qt_backend_new(const char *device, int threads, struct qt_error *e)
{
    if (!device || !*device || !strcmp(device, "auto")) return qt_backend_auto(threads, NULL, 0, e);
    if (!strcmp(device, "cpu")) return cpu_new(threads, e);
    if (!strcmp(device, "ref")) {
        struct qt_backend *b = qt_backend_ref_new();
        if (!b) qt_err(e, "cannot create the ref backend (out of memory)");
        return b;
    }
    if (!strcmp(device, "cuda")) return qt_backend_cuda_new(e);
    qt_err(e, "unknown device '%s' (expected %s)", device, qt_backend_devices());
    return NULL;
}
