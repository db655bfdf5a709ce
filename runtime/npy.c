/* NumPy .npy reader and writer: the header's descr, fortran_order and shape are parsed from
 * the Python dict literal; the data follows the header. */
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qt_tensor *qt_npy_parse(const void *buf, size_t len, const char *what, struct qt_error *e)
{
    const unsigned char *b = buf;
    struct qt_tensor *t = NULL;
    char *hdr = NULL;
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0) {
        qt_err(e, "'%s' is not a .npy file", what);
        goto done;
    }
    size_t hlen, pos = 10;
    if (b[6] == 1) {
        hlen = b[8] | (b[9] << 8);
    } else {
        if (len < 12) {
            qt_err(e, "'%s': truncated .npy header", what);
            goto done;
        }
        hlen = b[8] | (b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
        pos = 12;
        if (hlen > (1 << 20)) {
            qt_err(e, "'%s': .npy header too long", what);
            goto done;
        }
    }
    if (hlen > len - pos) {
        qt_err(e, "'%s': truncated .npy header", what);
        goto done;
    }
    hdr = calloc(hlen + 1, 1);
    memcpy(hdr, b + pos, hlen);
    pos += hlen;
    const char *descr = strstr(hdr, "'descr'");
    const char *order = strstr(hdr, "'fortran_order'");
    const char *shape = strstr(hdr, "'shape'");
    if (!descr || !order || !shape) {
        qt_err(e, "'%s': malformed .npy header", what);
        goto done;
    }
    const char *dv = strchr(descr + 7, '\'');
    int f32 = dv && strncmp(dv, "'<f4'", 5) == 0;
    int f64 = dv && strncmp(dv, "'<f8'", 5) == 0;
    if (!f32 && !f64) {
        qt_err(e, "'%s': only little-endian float32 or float64 arrays are supported", what);
        goto done;
    }
    /* Fortran order (column-major, as numpy writes np.asfortranarray): read transposed. */
    const int fortran = strstr(order, "True") && strstr(order, "True") < shape;
    struct qt_shape s = {0, {0}};
    const char *p = strchr(shape, '(');
    if (!p) {
        qt_err(e, "'%s': malformed shape in the .npy header", what);
        goto done;
    }
    p++;
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')') break;
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || s.ndim == QT_MAX_DIMS) {
            qt_err(e, "'%s': malformed shape in the .npy header", what);
            goto done;
        }
        s.d[s.ndim++] = d;
        p = end;
    }
    /* The element count, checked dimension by dimension so that it cannot overflow: the
     * product of the non-zero dimensions is bounded (also for an empty array, whose count
     * qt_shape_numel computes in dimension order). */
    const int64_t max_n = (int64_t)1 << 32;
    int64_t n = 1;
    int too_large = 0, empty = 0;
    for (int i = 0; i < s.ndim; i++) {
        if (s.d[i] == 0)
            empty = 1;
        else if (s.d[i] > max_n / n)
            too_large = 1;
        else
            n *= s.d[i];
    }
    if (empty) n = 0;
    if (too_large) {
        qt_err(e, "'%s': array too large (more than 2^32 elements)", what);
        goto done;
    }
    /* The data must be there before the tensor is allocated. */
    if ((len - pos) / (f32 ? 4 : 8) < (size_t)n) {
        qt_err(e, "'%s': the file holds fewer values than its shape needs", what);
        goto done;
    }
    t = qt_tensor_new(QT_F32, &s);
    if (!t) {
        qt_err(e, "'%s': out of memory", what);
        goto done;
    }
    if (f32 && !fortran) {
        memcpy(t->data, b + pos, 4 * (size_t)n);
    } else {
        int64_t fs[QT_MAX_DIMS]; /* column-major strides */
        for (int k = 0; k < s.ndim; k++) fs[k] = k ? fs[k - 1] * s.d[k - 1] : 1;
        for (int64_t i = 0; i < n; i++) {
            int64_t off = i;
            if (fortran) {
                int64_t rem = i;
                off = 0;
                for (int k = s.ndim - 1; k >= 0; k--) {
                    off += (rem % s.d[k]) * fs[k];
                    rem /= s.d[k];
                }
            }
            if (f32) {
                memcpy((float *)t->data + i, b + pos + 4 * off, 4);
            } else {
                double v;
                memcpy(&v, b + pos + 8 * off, 8);
                ((float *)t->data)[i] = (float)v;
            }
        }
    }
done:
    free(hdr);
    return t;
}

struct qt_tensor *qt_npy_read(const char *path, struct qt_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        qt_err(e, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            unsigned char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        qt_err(e, "cannot read '%s'%s", path, buf ? "" : ": out of memory");
        return NULL;
    }
    struct qt_tensor *t = qt_npy_parse(buf, len, path, e);
    free(buf);
    return t;
}

int qt_npy_write(const char *path, const struct qt_tensor *t, struct qt_error *e)
{
    char shape[256];
    size_t k = 0;
    k += snprintf(shape + k, sizeof shape - k, "(");
    for (int i = 0; i < t->shape.ndim; i++)
        k += snprintf(shape + k, sizeof shape - k, "%lld%s", (long long)t->shape.d[i],
                      t->shape.ndim == 1      ? ","
                      : i + 1 < t->shape.ndim ? ", "
                                              : "");
    snprintf(shape + k, sizeof shape - k, ")");
    char hdr[512];
    int hl =
        snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }", shape);
    int total = 10 + hl + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return qt_err(e, "cannot write '%s': %s", path, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    int len = hl + pad + 1;
    pre[8] = len & 0xff;
    pre[9] = (len >> 8) & 0xff;
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, hl, f) == (size_t)hl;
    for (int i = 0; i < pad && ok; i++)
        ok = fputc(' ', f) != EOF;
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

int qt_npy_check_finite(const struct qt_tensor *t, const char *what, struct qt_error *e)
{
    if (t->dtype != QT_F32) return 0;
    const float *v = t->data;
    int64_t n = qt_shape_numel(&t->shape);
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(v[i])) continue;
        char at[160];
        int k = snprintf(at, sizeof at, "[");
        int64_t rest = i, stride = n;
        for (int d = 0; d < t->shape.ndim && k < (int)sizeof at - 24; d++) {
            stride = t->shape.d[d] ? stride / t->shape.d[d] : 1;
            k += snprintf(at + k, sizeof at - k, "%s%lld", d ? ", " : "",
                          (long long)(stride ? rest / stride : 0));
            rest = stride ? rest % stride : 0;
        }
        snprintf(at + k, sizeof at - k, "]");
        return qt_err(e, "'%s': element %s is %s; inputs must be finite numbers", what, at,
                      isnan(v[i]) ? "NaN"
                      : v[i] > 0  ? "inf"
                                  : "-inf");
    }
    return 0;
}
