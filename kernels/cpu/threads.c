/* Thread count shared by the CPU kernels: OpenMP's current maximum team size, which also
 * sizes per-thread workspaces (conv2d_workspace_cpu). */
#include <omp.h>

#include "kernels/cpu/cpu.h"

int qt_cpu_threads(void)
{
    const int t = omp_get_max_threads();
    return t > 0 ? t : 1;
}
