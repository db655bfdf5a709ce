/* A streaming reader for tar archives, plain or gzip-compressed, read in one pass through
 * zlib: ustar and old-style headers, GNU long names and pax path/size records. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define BLOCK 512
#define SCRATCH (1 << 16)
#define MAX_META (1 << 20) /* largest long-name or pax record accepted */

/* Numeric header field: octal text, or base-256 when the high bit of the first byte is set. */
static int parse_number(const uint8_t *f, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (f[0] & 0x80) {
        if (f[0] == 0xff) return -1; /* negative */
        v = f[0] & 0x7f;
        for (size_t i = 1; i < n; i++) {
            if (v >> 55) return -1;
            v = (v << 8) | f[i];
        }
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == 0)) i++;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60) return -1;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    if (i < n && f[i] != ' ' && f[i] != 0) return -1;
    *out = v;
    return 0;
}

static int header_valid(const uint8_t *h)
{
    uint64_t stored;
    if (parse_number(h + 148, 8, &stored) < 0) return 0;
    uint64_t usum = 0;
    int64_t ssum = 0;
    for (int i = 0; i < BLOCK; i++) {
        uint8_t b = (i >= 148 && i < 156) ? ' ' : h[i];
        usum += b;
        ssum += (int8_t)b;
    }
    return stored == usum || (int64_t)stored == ssum;
}

static int all_zero(const uint8_t *b)
{
    for (int i = 0; i < BLOCK; i++)
        if (b[i]) return 0;
    return 1;
}

int qt_tar_probe(const char *path)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) return 0;
    uint8_t h[BLOCK];
    int r = gzread(gz, h, BLOCK);
    gzclose(gz);
    return r == BLOCK && !all_zero(h) && header_valid(h);
}

int qt_tar_open(struct qt_tar *t, const char *path, struct qt_error *e)
{
    memset(t, 0, sizeof *t);
    t->pax_size = -1;
    t->path = strdup(path);
    t->scratch = malloc(SCRATCH);
    if (!t->path || !t->scratch) {
        qt_tar_close(t);
        return qt_err(e, "%s: out of memory", path);
    }
    t->gz = gzopen(path, "rb");
    if (!t->gz) {
        int err = errno;
        qt_tar_close(t);
        return qt_err(e, "%s: cannot open: %s", path, strerror(err));
    }
    gzbuffer(t->gz, 1 << 16); /* 64 KiB: larger buffers did not read faster */
    return 0;
}

void qt_tar_close(struct qt_tar *t)
{
    if (t->gz) gzclose(t->gz);
    free(t->path);
    free(t->name);
    free(t->long_name);
    free(t->scratch);
    memset(t, 0, sizeof *t);
}

static int truncated(struct qt_tar *t, struct qt_error *e)
{
    const char *what = t->name ? t->name : "a header";
    return qt_err(e, "%s: truncated archive (data ends at byte %llu, inside %s)", t->path,
                  (unsigned long long)t->offset, what);
}

static int read_exact(struct qt_tar *t, void *buf, size_t n, struct qt_error *e)
{
    size_t got = 0;
    if (qt_data_gz_read(t->gz, t->path, buf, n, &got, e) < 0) return -1;
    t->offset += got;
    if (got < n) return truncated(t, e);
    return 0;
}

static int skip(struct qt_tar *t, uint64_t n, struct qt_error *e)
{
    while (n > 0) {
        size_t k = n < SCRATCH ? (size_t)n : SCRATCH;
        if (read_exact(t, t->scratch, k, e) < 0) return -1;
        n -= k;
    }
    return 0;
}

static int set_name(struct qt_tar *t, const char *a, size_t na, const char *b, size_t nb,
                    struct qt_error *e)
{
    size_t need = na + (na ? 1 : 0) + nb + 1;
    if (need > t->name_cap) {
        char *nn = realloc(t->name, need);
        if (!nn) return qt_err(e, "%s: out of memory", t->path);
        t->name = nn;
        t->name_cap = need;
    }
    size_t k = 0;
    if (na) {
        memcpy(t->name, a, na);
        k = na;
        t->name[k++] = '/';
    }
    memcpy(t->name + k, b, nb);
    t->name[k + nb] = 0;
    return 0;
}

/* Reads the data of a metadata entry (long name, pax header) into a NUL-terminated buffer. */
static int read_meta(struct qt_tar *t, uint64_t size, char **out, struct qt_error *e)
{
    if (size > MAX_META)
        return qt_err(e, "%s: tar metadata record of %llu bytes at byte %llu is too large", t->path,
                      (unsigned long long)size, (unsigned long long)t->offset);
    uint64_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
    char *m = malloc((size_t)padded + 1);
    if (!m) return qt_err(e, "%s: out of memory", t->path);
    if (read_exact(t, m, (size_t)padded, e) < 0) {
        free(m);
        return -1;
    }
    m[size] = 0;
    *out = m;
    return 0;
}

/* Pax extended header: records "LEN key=value\n"; keeps path and size. */
static int parse_pax(struct qt_tar *t, const char *m, size_t n, struct qt_error *e)
{
    size_t i = 0;
    while (i < n) {
        size_t len = 0, j = i;
        while (j < n && m[j] >= '0' && m[j] <= '9' && len < MAX_META)
            len = len * 10 + (size_t)(m[j++] - '0');
        if (j >= n || m[j] != ' ' || len == 0 || i + len > n || m[i + len - 1] != '\n')
            return qt_err(e, "%s: malformed pax header before byte %llu", t->path,
                          (unsigned long long)t->offset);
        const char *key = m + j + 1, *end = m + i + len - 1;
        const char *eq = memchr(key, '=', (size_t)(end - key));
        if (eq) {
            size_t klen = (size_t)(eq - key), vlen = (size_t)(end - eq - 1);
            if (klen == 4 && !memcmp(key, "path", 4)) {
                free(t->long_name);
                t->long_name = malloc(vlen + 1);
                if (!t->long_name) return qt_err(e, "%s: out of memory", t->path);
                memcpy(t->long_name, eq + 1, vlen);
                t->long_name[vlen] = 0;
            } else if (klen == 4 && !memcmp(key, "size", 4)) {
                uint64_t v = 0;
                for (size_t k = 0; k < vlen; k++) {
                    char ch = eq[1 + k];
                    if (ch < '0' || ch > '9' || v > (UINT64_MAX - 9) / 10)
                        return qt_err(e, "%s: bad pax size record before byte %llu", t->path,
                                      (unsigned long long)t->offset);
                    v = v * 10 + (uint64_t)(ch - '0');
                }
                if (v > (uint64_t)INT64_MAX) return qt_err(e, "%s: bad pax size record", t->path);
                t->pax_size = (int64_t)v;
            }
        }
        i += len;
    }
    return 0;
}

/* After the end-of-archive blocks: reads what is left so that zlib checks the gzip trailer. */
static int finish(struct qt_tar *t, struct qt_error *e)
{
    for (;;) {
        size_t got = 0;
        if (qt_data_gz_read(t->gz, t->path, t->scratch, SCRATCH, &got, e) < 0) return -1;
        if (got < SCRATCH) break;
    }
    int errnum = 0;
    gzerror(t->gz, &errnum);
    if (errnum == Z_BUF_ERROR)
        return qt_err(e, "%s: truncated gzip stream after the end of the archive", t->path);
    return 0;
}

int qt_tar_next(struct qt_tar *t, struct qt_tar_entry *ent, struct qt_error *e)
{
    uint8_t h[BLOCK];
    if (skip(t, t->remain + t->pad, e) < 0) return -1;
    t->remain = t->pad = 0;
    for (;;) {
        size_t got = 0;
        uint64_t at = t->offset;
        if (qt_data_gz_read(t->gz, t->path, h, BLOCK, &got, e) < 0) return -1;
        t->offset += got;
        if (got == 0)
            return qt_err(e,
                          "%s: truncated archive (ends at byte %llu without the "
                          "end-of-archive blocks)",
                          t->path, (unsigned long long)at);
        if (got < BLOCK) {
            free(t->name);
            t->name = NULL;
            t->name_cap = 0;
            return truncated(t, e);
        }
        if (all_zero(h)) {
            if (qt_data_gz_read(t->gz, t->path, h, BLOCK, &got, e) < 0) return -1;
            t->offset += got;
            if (got > 0 && got < BLOCK) return truncated(t, e);
            if (got == BLOCK && !all_zero(h))
                return qt_err(e,
                              "%s: corrupt archive: data after an end-of-archive block at "
                              "byte %llu",
                              t->path, (unsigned long long)at);
            if (finish(t, e) < 0) return -1;
            return 0;
        }
        if (!header_valid(h))
            return qt_err(e, "%s: corrupt tar header at byte %llu (bad checksum)", t->path,
                          (unsigned long long)at);
        uint64_t size;
        if (parse_number(h + 124, 12, &size) < 0)
            return qt_err(e, "%s: corrupt tar header at byte %llu (bad size field)", t->path,
                          (unsigned long long)at);
        if (t->pax_size >= 0) size = (uint64_t)t->pax_size;
        t->pax_size = -1;
        char type = (char)h[156];

        if (t->long_name) {
            if (set_name(t, NULL, 0, t->long_name, strlen(t->long_name), e) < 0) return -1;
            free(t->long_name);
            t->long_name = NULL;
        } else {
            size_t nn = strnlen((const char *)h, 100), np = 0;
            int ustar = !memcmp(h + 257, "ustar\0", 6);
            if (ustar) np = strnlen((const char *)h + 345, 155);
            if (set_name(t, (const char *)h + 345, np, (const char *)h, nn, e) < 0) return -1;
        }

        if (type == 'L' || type == 'x') {
            char *m = NULL;
            if (read_meta(t, size, &m, e) < 0) return -1;
            int rc = 0;
            if (type == 'L') {
                free(t->long_name);
                t->long_name = m;
                m = NULL;
            } else
                rc = parse_pax(t, m, (size_t)size, e);
            free(m);
            if (rc < 0) return -1;
            continue;
        }
        if (type == 'K' || type == 'g') {
            if (skip(t, (size + BLOCK - 1) / BLOCK * BLOCK, e) < 0) return -1;
            continue;
        }
        size_t nlen = strlen(t->name);
        if (type == 0 && nlen > 0 && t->name[nlen - 1] == '/')
            ent->type = QT_TAR_DIR;
        else if (type == '0' || type == 0 || type == '7')
            ent->type = QT_TAR_FILE;
        else if (type == '5')
            ent->type = QT_TAR_DIR;
        else
            ent->type = QT_TAR_OTHER;
        /* Links and devices carry no data even when a size is recorded. */
        if (type == '1' || type == '2' || type == '3' || type == '4' || type == '6') size = 0;
        if (ent->type == QT_TAR_DIR) size = 0;
        ent->name = t->name;
        ent->size = size;
        t->remain = size;
        t->pad = (BLOCK - size % BLOCK) % BLOCK;
        return 1;
    }
}

int qt_tar_read(struct qt_tar *t, void *buf, size_t n, struct qt_error *e)
{
    if (n > t->remain)
        return qt_err(e, "%s: internal error: reading past the end of entry %s", t->path,
                      t->name ? t->name : "?");
    if (read_exact(t, buf, n, e) < 0) return -1;
    t->remain -= n;
    return 0;
}
