/* Checkpoint files: "QTCKPT01", u64 header length, header text, u32 tensor count, per
 * tensor (u32 name length, name, u64 element count, float32 data), then the CRC-32 of all
 * preceding bytes. Little-endian, as the hosts qtune runs on. */
#include "checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../util/fileio.h"

static const char MAGIC[8] = {'Q', 'T', 'C', 'K', 'P', 'T', '0', '1'};

void qt_ckpt_init(struct qt_ckpt *c)
{
    memset(c, 0, sizeof *c);
    c->header = calloc(1, 1);
}

void qt_ckpt_free(struct qt_ckpt *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->t[i].name);
        free(c->t[i].data);
    }
    free(c->t);
    free(c->header);
    memset(c, 0, sizeof *c);
}

void qt_ckpt_set(struct qt_ckpt *c, const char *key, const char *value)
{
    size_t old = strlen(c->header), add = strlen(key) + strlen(value) + 2;
    c->header = realloc(c->header, old + add + 1);
    snprintf(c->header + old, add + 1, "%s=%s\n", key, value);
}

int qt_ckpt_get(const struct qt_ckpt *c, const char *key, char *out, int outlen)
{
    size_t kl = strlen(key);
    for (const char *p = c->header; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t ll = nl ? (size_t)(nl - p) : strlen(p);
        if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            snprintf(out, outlen, "%.*s", (int)(ll - kl - 1), p + kl + 1);
            return 0;
        }
        p = nl ? nl + 1 : NULL;
    }
    return -1;
}

void qt_ckpt_add(struct qt_ckpt *c, const char *name, const float *data, int64_t numel)
{
    c->t = realloc(c->t, sizeof *c->t * (c->n + 1));
    struct qt_ckpt_tensor *t = &c->t[c->n++];
    t->name = strdup(name);
    t->numel = numel;
    t->data = malloc(sizeof(float) * (numel ? numel : 1));
    if (numel) memcpy(t->data, data, sizeof(float) * numel);
}

const struct qt_ckpt_tensor *qt_ckpt_find(const struct qt_ckpt *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0) return &c->t[i];
    return NULL;
}

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

int qt_ckpt_save(const struct qt_ckpt *c, const char *path, struct qt_error *e)
{
    struct buf b = {0};
    put(&b, MAGIC, 8);
    uint64_t hl = strlen(c->header);
    put(&b, &hl, 8);
    put(&b, c->header, hl);
    uint32_t n = (uint32_t)c->n;
    put(&b, &n, 4);
    for (int i = 0; i < c->n; i++) {
        uint32_t nl = (uint32_t)strlen(c->t[i].name);
        uint64_t cnt = (uint64_t)c->t[i].numel;
        put(&b, &nl, 4);
        put(&b, c->t[i].name, nl);
        put(&b, &cnt, 8);
        put(&b, c->t[i].data, sizeof(float) * cnt);
    }
    uint32_t crc = (uint32_t)crc32(0L, b.p, (uInt)b.n);
    put(&b, &crc, 4);
    int rc = qt_write_file_atomic(path, b.p, b.n, e);
    free(b.p);
    return rc;
}

int qt_ckpt_load(struct qt_ckpt *c, const char *path, struct qt_error *e)
{
    qt_ckpt_init(c);
    FILE *f = fopen(path, "rb");
    if (!f) {
        qt_ckpt_free(c);
        return qt_err(e, "cannot open checkpoint '%s': %s", path, strerror(errno));
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = len > 0 ? malloc(len) : NULL;
    int ok = d && fread(d, 1, len, f) == (size_t)len;
    fclose(f);
    if (!ok || len < 24 || memcmp(d, MAGIC, 8) != 0) {
        free(d);
        qt_ckpt_free(c);
        return qt_err(e, "'%s' is not a qtune checkpoint", path);
    }
    uint32_t crc;
    memcpy(&crc, d + len - 4, 4);
    if (crc != (uint32_t)crc32(0L, d, (uInt)(len - 4))) {
        free(d);
        qt_ckpt_free(c);
        return qt_err(e, "checkpoint '%s' is damaged (checksum mismatch)", path);
    }
    size_t pos = 8, end = (size_t)len - 4;
    uint64_t hl;
    memcpy(&hl, d + pos, 8);
    pos += 8;
    if (hl > end - pos) goto bad;
    free(c->header);
    c->header = malloc(hl + 1);
    memcpy(c->header, d + pos, hl);
    c->header[hl] = 0;
    pos += hl;
    uint32_t n;
    if (end - pos < 4) goto bad;
    memcpy(&n, d + pos, 4);
    pos += 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nl;
        uint64_t cnt;
        if (end - pos < 4) goto bad;
        memcpy(&nl, d + pos, 4);
        pos += 4;
        if (nl > end - pos || end - pos - nl < 8) goto bad;
        char *name = malloc(nl + 1);
        memcpy(name, d + pos, nl);
        name[nl] = 0;
        pos += nl;
        memcpy(&cnt, d + pos, 8);
        pos += 8;
        if (cnt > (end - pos) / sizeof(float)) {
            free(name);
            goto bad;
        }
        qt_ckpt_add(c, name, (const float *)(d + pos), (int64_t)cnt);
        free(name);
        pos += cnt * sizeof(float);
    }
    if (pos != end) goto bad;
    free(d);
    return 0;
bad:
    free(d);
    qt_ckpt_free(c);
    return qt_err(e, "checkpoint '%s' is malformed", path);
}
