/* Shared CLI helpers: error printing, model loading, option parsing, progress. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../onnx/onnx.h"
#include "../passes/passes.h"
#include "../runtime/backend.h"
#include "../runtime/data/dataset.h"
#include "../util/clock.h"

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qtune: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

struct qt_graph *cli_load_model(const char *path, int inference)
{
    struct qt_error e;
    struct qt_graph *g = qt_onnx_load(path, &e);
    if (!g) {
        cli_fail("%s", e.msg);
        return NULL;
    }
    if (qt_pass_canonicalize(g, &e) || (inference && qt_pass_fold_batchnorm(g, &e))) {
        cli_fail("'%s': %s", path, e.msg);
        qt_graph_free(g);
        return NULL;
    }
    return g;
}

int cli_parse_floats(const char *s, float *out, int max)
{
    int n = 0;
    while (*s) {
        char *end;
        float v = strtof(s, &end);
        if (end == s || n == max) return -1;
        out[n++] = v;
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return n;
}

long cli_parse_long(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0) return -1;
    return v;
}

void cli_progress_init(struct cli_progress *p, const char *label, const char *unit, int quiet)
{
    p->label = label;
    p->unit = unit;
    p->quiet = quiet;
    p->tty = isatty(2);
    p->last_print = -1;
}

static void fmt_time(char *buf, size_t n, double s)
{
    if (s < 0 || s > 1e7) snprintf(buf, n, "--:--");
    else if (s >= 3600) snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, ((int)s / 60) % 60, (int)s % 60);
    else snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

void cli_progress_update(void *ctx, int64_t done, int64_t total, double seconds)
{
    struct cli_progress *p = ctx;
    if (p->quiet) return;
    double t = qt_now();
    int final = done >= total;
    if (!final && p->last_print >= 0 && t - p->last_print < (p->tty ? 0.1 : 5.0)) return;
    p->last_print = t;
    double rate = seconds > 0 ? done / seconds : 0;
    double eta = rate > 0 ? (total - done) / rate : -1;
    char el[32], et[32];
    fmt_time(el, sizeof el, seconds);
    fmt_time(et, sizeof et, eta);
    double frac = total ? (double)done / total : 1;
    if (p->tty) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %3.0f%% %lld/%lld %.0f %s/s elapsed %s eta %s ", p->label, bar,
                frac * 100, (long long)done, (long long)total, rate, p->unit, el, et);
        if (final) fprintf(stderr, "\n");
    } else {
        fprintf(stderr, "%s: %lld/%lld (%.0f%%) %.0f %s/s elapsed %s eta %s\n", p->label,
                (long long)done, (long long)total, frac * 100, rate, p->unit, el, et);
    }
    fflush(stderr);
}

void cli_progress_end(struct cli_progress *p)
{
    (void)p;
}

int cli_normalization(const char *cmd, const struct qt_graph *g, const char *model,
                      const char *preset, const char *mean_s, const char *std_s, int channels,
                      float *mean, float *std)
{
    int nm, ns;
    if (channels < 1 || channels > 4)
        return cli_fail("%s: %d-channel images are not supported (1 to 4)", cmd, channels);
    if (preset) {
        if (qt_norm_preset(preset, channels, mean, std))
            return cli_fail("%s: unknown preset '%s' for %d-channel images (cifar10, cifar100, "
                            "fashion-mnist, mnist, imagenet)", cmd, preset, channels);
        return 0;
    }
    if (!mean_s) mean_s = qt_graph_meta(g, "qtune.mean");
    if (!std_s) std_s = qt_graph_meta(g, "qtune.std");
    if (!mean_s || !std_s)
        return cli_fail("%s: no normalization given and none stored in '%s': pass --mean and "
                        "--std, or --preset", cmd, model);
    nm = cli_parse_floats(mean_s, mean, 4);
    ns = cli_parse_floats(std_s, std, 4);
    if ((nm != channels && nm != 1) || (ns != channels && ns != 1))
        return cli_fail("%s: mean and std need 1 or %d comma-separated values", cmd, channels);
    for (int c = 1; c < channels; c++) {
        if (nm == 1) mean[c] = mean[0];
        if (ns == 1) std[c] = std[0];
    }
    for (int c = 0; c < channels; c++)
        if (!(std[c] > 0)) return cli_fail("%s: std values must be positive", cmd);
    return 0;
}

void cli_check_limit(const char *cmd, const char *opt, const struct qt_dataset *ds,
                     const char *split, long limit)
{
    if (limit <= 0 || limit >= ds->n || ds->nclasses <= 0) return;
    unsigned char *seen = calloc((size_t)ds->nclasses, 1);
    if (!seen) return;
    int kept = 0, all = 0;
    for (int i = 0; i < ds->n; i++) { /* bit 1: among the first `limit`; bit 2: anywhere */
        const int c = ds->labels[i];
        if (c < 0 || c >= ds->nclasses) continue;
        const unsigned char bit = i < limit ? 3 : 2;
        kept += (bit & 1) && !(seen[c] & 1);
        all += !(seen[c] & 2);
        seen[c] |= bit;
    }
    free(seen);
    if (kept < all)
        fprintf(stderr, "qtune: warning: %s: %s %ld keeps the first %ld of the %d %s samples, "
                        "which hold %d of its %d classes (%s)\n",
                cmd, opt, limit, limit, ds->n, split, kept, all,
                strcmp(ds->kind, "imagefolder") == 0
                    ? "an image folder lists its images class by class"
                    : "the file lists its samples in that order");
}

int cli_image_size_option(const char *cmd, int argc, char **argv, int *i, long *resize,
                          long *crop)
{
    const char *a = argv[*i];
    long *v = strcmp(a, "--resize") == 0 ? resize : strcmp(a, "--crop") == 0 ? crop : NULL;
    if (!v || *i + 1 >= argc) return 0;
    if ((*v = cli_parse_long(argv[++*i])) <= 0) {
        cli_fail("%s: %s needs a positive integer", cmd, a);
        return -1;
    }
    return 1;
}

struct qt_backend *cli_backend_new(const char *cmd, const char *device, long threads)
{
    struct qt_error e;
    char notice[QT_ERR_MSG];
    struct qt_backend *b = !device || !*device || !strcmp(device, "auto")
                               ? qt_backend_auto((int)threads, notice, sizeof notice, &e)
                               : (notice[0] = 0, qt_backend_new(device, (int)threads, &e));
    if (!b) {
        cli_fail("%s: %s", cmd, e.msg);
        return NULL;
    }
    if (notice[0]) fprintf(stderr, "qtune: note: %s\n", notice);
    return b;
}
