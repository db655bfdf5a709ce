/* Runs every registered C test (unit tests and ONNX node cases); an optional argument
 * selects tests whose name contains it. Ends with "N passed, N failed, N skipped". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

struct entry {
    const char *name;
    qt_test_fn fn;
    qt_test_arg_fn afn;
    const void *arg;
};

static struct entry *tests;
static int ntests, cap;
static char reason[1024];

void qt_test_register(const char *name, qt_test_fn fn)
{
    if (ntests == cap) {
        cap = cap ? 2 * cap : 256;
        tests = realloc(tests, sizeof *tests * cap);
    }
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    tests[ntests].afn = NULL;
    tests[ntests].arg = NULL;
    ntests++;
}

void qt_test_register_arg(const char *name, qt_test_arg_fn fn, const void *arg)
{
    qt_test_register(name, NULL);
    tests[ntests - 1].afn = fn;
    tests[ntests - 1].arg = arg;
}

int qt_test_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return QT_SKIP;
}

int qt_test_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    ");
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    return 1;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int pass = 0, fail = 0, skip = 0;
    qsort(tests, ntests, sizeof *tests, cmp);
    for (int i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        reason[0] = 0;
        int r = tests[i].fn ? tests[i].fn() : tests[i].afn(tests[i].arg);
        if (r == 0) {
            pass++;
            printf("ok   %s\n", tests[i].name);
        } else if (r == QT_SKIP) {
            skip++;
            printf("skip %s: %s\n", tests[i].name, reason);
        } else {
            fail++;
            printf("FAIL %s\n", tests[i].name);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", pass, fail, skip);
    free(tests);
    return fail ? 1 : 0;
}
