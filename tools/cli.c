/* Shared CLI helpers: error printing, model loading, .npy I/O, option parsing, progress. */
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
#include "../runtime/data/dataset.h"

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

struct qt_tensor *cli_npy_read(const char *path, struct qt_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        qt_err(e, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    unsigned char magic[10];
    struct qt_tensor *t = NULL;
    char *hdr = NULL;
    if (fread(magic, 1, 10, f) != 10 || memcmp(magic, "\x93NUMPY", 6) != 0) {
        qt_err(e, "'%s' is not a .npy file", path);
        goto done;
    }
    size_t hlen;
    if (magic[6] == 1) {
        hlen = magic[8] | (magic[9] << 8);
    } else {
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) {
            qt_err(e, "'%s': truncated .npy header", path);
            goto done;
        }
        hlen = magic[8] | (magic[9] << 8) | ((size_t)more[0] << 16) | ((size_t)more[1] << 24);
        if (hlen > (1 << 20)) {
            qt_err(e, "'%s': .npy header too long", path);
            goto done;
        }
    }
    hdr = calloc(hlen + 1, 1);
    if (fread(hdr, 1, hlen, f) != hlen) {
        qt_err(e, "'%s': truncated .npy header", path);
        goto done;
    }
    const char *descr = strstr(hdr, "'descr'");
    const char *order = strstr(hdr, "'fortran_order'");
    const char *shape = strstr(hdr, "'shape'");
    if (!descr || !order || !shape) {
        qt_err(e, "'%s': malformed .npy header", path);
        goto done;
    }
    const char *dv = strchr(descr + 7, '\'');
    int f32 = dv && strncmp(dv, "'<f4'", 5) == 0;
    int f64 = dv && strncmp(dv, "'<f8'", 5) == 0;
    if (!f32 && !f64) {
        qt_err(e, "'%s': only little-endian float32 or float64 arrays are supported", path);
        goto done;
    }
    if (strstr(order, "True") && strstr(order, "True") < shape) {
        qt_err(e, "'%s': Fortran-ordered arrays are not supported", path);
        goto done;
    }
    struct qt_shape s = {0, {0}};
    const char *p = strchr(shape, '(');
    if (!p) {
        qt_err(e, "'%s': malformed shape in the .npy header", path);
        goto done;
    }
    p++;
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || s.ndim == QT_MAX_DIMS) {
            qt_err(e, "'%s': malformed shape in the .npy header", path);
            goto done;
        }
        s.d[s.ndim++] = d;
        p = end;
    }
    int64_t n = qt_shape_numel(&s);
    if (n > ((int64_t)1 << 32)) {
        qt_err(e, "'%s': array too large", path);
        goto done;
    }
    t = qt_tensor_new(QT_F32, &s);
    if (f32) {
        if (fread(t->data, 4, n, f) != (size_t)n) goto short_read;
    } else {
        double *tmp = malloc(8 * (n ? n : 1));
        size_t got = fread(tmp, 8, n, f);
        for (int64_t i = 0; i < n && got == (size_t)n; i++) ((float *)t->data)[i] = (float)tmp[i];
        free(tmp);
        if (got != (size_t)n) goto short_read;
    }
    goto done;
short_read:
    qt_err(e, "'%s': the file holds fewer values than its shape needs", path);
    qt_tensor_free(t);
    t = NULL;
done:
    free(hdr);
    fclose(f);
    return t;
}

int cli_npy_write(const char *path, const struct qt_tensor *t, struct qt_error *e)
{
    char shape[256];
    size_t k = 0;
    k += snprintf(shape + k, sizeof shape - k, "(");
    for (int i = 0; i < t->shape.ndim; i++)
        k += snprintf(shape + k, sizeof shape - k, "%lld%s", (long long)t->shape.d[i],
                      t->shape.ndim == 1 ? "," : i + 1 < t->shape.ndim ? ", " : "");
    snprintf(shape + k, sizeof shape - k, ")");
    char hdr[512];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }", shape);
    int total = 10 + hl + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return qt_err(e, "cannot write '%s': %s", path, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    int len = hl + pad + 1;
    pre[8] = len & 0xff;
    pre[9] = (len >> 8) & 0xff;
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, hl, f) == (size_t)hl;
    for (int i = 0; i < pad && ok; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    int64_t n = qt_shape_numel(&t->shape);
    if (t->dtype == QT_F32) {
        ok = ok && fwrite(t->data, 4, n, f) == (size_t)n;
    } else {
        for (int64_t i = 0; i < n && ok; i++) {
            float v = (float)qt_tensor_get_f(t, i);
            ok = fwrite(&v, 4, 1, f) == 1;
        }
    }
    if (fclose(f) != 0) ok = 0;
    return ok ? 0 : qt_err(e, "cannot write '%s'", path);
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

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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
    double t = wall();
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
