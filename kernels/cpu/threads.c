/* Thread count shared by the CPU kernels: OpenMP's current maximum team size of the calling
 * thread, which is also the team oneDNN (built on OpenMP) and OpenBLAS use. */
#include <omp.h>

#include "kernels/cpu/cpu.h"

int qt_cpu_threads(void)
{
    const int t = omp_get_max_threads();
    return t > 0 ? t : 1;
}
