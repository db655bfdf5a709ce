/* The cuda device in a build without nvcc: the factory's "cuda" answers that CUDA was not
 * built (runtime/backend_cuda.c replaces this file when it is). */
#include "backend.h"

struct qt_backend *qt_backend_cuda_new(struct qt_error *e)
{
    qt_err(e, "this qtune was built without CUDA (nvcc was not found at build time; rebuild with "
              "the CUDA toolkit and cuDNN installed)");
    return NULL;
}

int qt_backend_cuda_built(void)
{
    return 0;
}
