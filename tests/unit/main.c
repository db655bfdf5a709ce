/* Runs every registered C test (unit tests and ONNX node cases); an optional argument
 * selects tests whose name contains it. Ends with "N passed, N failed, N skipped". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "runtime/data/dataset.h"

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

/* tests/paths.conf, read once: "key ENV default" per line. */
struct data_path {
    char key[32], env[64], value[1024];
};
static struct data_path paths[16];
static int npaths = -1;

static void read_paths(void)
{
    npaths = 0;
    FILE *f = fopen("tests/paths.conf", "r");
    if (!f) return;
    char line[1200];
    while (npaths < (int)(sizeof paths / sizeof paths[0]) && fgets(line, sizeof line, f)) {
        struct data_path *p = &paths[npaths];
        if (line[0] == '#' || sscanf(line, "%31s %63s %1023s", p->key, p->env, p->value) != 3)
            continue;
        const char *env = getenv(p->env);
        if (env && *env) snprintf(p->value, sizeof p->value, "%s", env);
        npaths++;
    }
    fclose(f);
}

const char *qt_test_data_path(const char *key)
{
    if (npaths < 0) read_paths();
    for (int i = 0; i < npaths; i++)
        if (!strcmp(paths[i].key, key)) return paths[i].value;
    return NULL;
}

int qt_test_data_find(char *out, size_t n, const char *key, const char *rel, char *why,
                      size_t nwhy)
{
    const char *dir = qt_test_data_path(key);
    const char *ci = getenv("CI");
    const int required = ci && !strcmp(ci, "true");
    if (!dir) {
        snprintf(why, nwhy, "no entry '%s' in tests/paths.conf (run from the repository root)",
                 key);
        return required ? 1 : QT_SKIP;
    }
    snprintf(out, n, "%s%s%s", dir, rel && *rel ? "/" : "", rel ? rel : "");
    if (access(out, R_OK) == 0) return 0;
    snprintf(why, nwhy, "%s not found (%s data; see tests/paths.conf)%s", out, key,
             required ? " [CI=true: required]" : "");
    return required ? 1 : QT_SKIP;
}

int qt_test_require(char *out, size_t n, const char *key, const char *rel)
{
    char why[1400];
    int r = qt_test_data_find(out, n, key, rel, why, sizeof why);
    if (r == QT_SKIP) return qt_test_skip("%s", why);
    if (r) return qt_test_fail("%s", why);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

/* `qtune-tests --crop-boxes W H N SEED`: N RandomResizedCrop boxes of a W x H image, one
 * "left top width height" line each (sample i drawn from SEED + i), for the statistical
 * comparison with torchvision (tests/ref/test_image_transform.py). */
static int crop_boxes(char **argv)
{
    const int w = atoi(argv[2]), h = atoi(argv[3]), n = atoi(argv[4]);
    const uint64_t seed = strtoull(argv[5], NULL, 10);
    if (w < 1 || h < 1 || n < 1) return 2;
    for (int i = 0; i < n; i++) {
        int box[4];
        qt_random_resized_crop_box(w, h, seed + (uint64_t)i, box);
        printf("%d %d %d %d\n", box[0], box[1], box[2], box[3]);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--crop-boxes") == 0) return crop_boxes(argv);
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
