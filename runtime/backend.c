/* The backend factory: the one place that knows which backends exist and picks one by name. */
#include "backend.h"

#include <string.h>

const char *qt_backend_devices(void)
{
    return "auto|cpu|ref";
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
    qt_err(e, "unknown device '%s' (expected %s)", device, qt_backend_devices());
    return NULL;
}
