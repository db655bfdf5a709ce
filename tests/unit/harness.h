/* A tiny test harness: files register tests with QT_TEST; tests/unit/main.c runs them.
 * A test returns 0 (pass), 1 (fail) or QT_SKIP (skipped, with a reason via qt_test_skip). */
#ifndef QT_TEST_HARNESS_H
#define QT_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>

#define QT_SKIP 77

typedef int (*qt_test_fn)(void);
typedef int (*qt_test_arg_fn)(const void *arg);
void qt_test_register(const char *name, qt_test_fn fn);
/* Registers a test case discovered at start-up (name and arg are kept, not copied). */
void qt_test_register_arg(const char *name, qt_test_arg_fn fn, const void *arg);
/* Records why the running test skips; returns QT_SKIP. */
int qt_test_skip(const char *fmt, ...);
/* Prints a failure message for the running test; returns 1. */
int qt_test_fail(const char *fmt, ...);

#define QT_TEST(name)                                                                   \
    static int name(void);                                                              \
    __attribute__((constructor)) static void name##_register(void)                     \
    {                                                                                   \
        qt_test_register(#name, name);                                                  \
    }                                                                                   \
    static int name(void)

#define QT_CHECK(cond)                                                                  \
    do {                                                                                \
        if (!(cond)) return qt_test_fail("%s:%d: check failed: %s", __FILE__, __LINE__, #cond); \
    } while (0)

#define QT_CHECK_NEAR(a, b, tol)                                                        \
    do {                                                                                \
        double qa_ = (a), qb_ = (b);                                                    \
        if (!(fabs(qa_ - qb_) <= (tol)))                                                \
            return qt_test_fail("%s:%d: %s = %g, expected %g (tol %g)", __FILE__, __LINE__, \
                                #a, qa_, qb_, (double)(tol));                           \
    } while (0)

#endif
