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

/* Test data locations come from tests/paths.conf (one place for C and Python).
 * qt_test_data_path: the folder of key ("fashion-mnist", "onnx-testdata", "shared"), from its
 * environment variable or the default there; NULL for an unknown key.
 * qt_test_data_find: writes folder/rel to out; returns 0 when it exists, QT_SKIP when it
 * does not, or 1 when it does not and CI=true (then the data is required); why gets the
 * reason. qt_test_require does the same and records the skip or prints the failure. */
const char *qt_test_data_path(const char *key);
int qt_test_data_find(char *out, size_t n, const char *key, const char *rel, char *why,
                      size_t nwhy);
int qt_test_require(char *out, size_t n, const char *key, const char *rel);

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
