/* Seconds on the monotonic clock, for timing runs and reporting rates. */
#ifndef QT_CLOCK_H
#define QT_CLOCK_H

#include <time.h>

static inline double qt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
