/* IDX reader (MNIST, Fashion-MNIST): train-/t10k- image and label files, plain or gzip,
 * streamed through zlib straight into the dataset arrays after the headers are checked. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define IDX_IMAGES 0x00000803u
#define IDX_LABELS 0x00000801u
#define IDX_MAX_SIDE 65535u

static const char *const idx_patterns[2][2] = {
    {"%s-images-idx3-ubyte", "%s-images.idx3-ubyte"},
    {"%s-labels-idx1-ubyte", "%s-labels.idx1-ubyte"},
};

/* Finds the image (what 0) or label (what 1) file of a prefix ("train", "t10k"), plain
 * before .gz; the first candidate name is left in out when none exists. */
static int find_file(const char *dir, const char *prefix, int what, char *out, size_t cap)
{
    char base[64], first[QT_DATA_PATH_MAX] = "";
    for (int p = 0; p < 2; p++)
        for (int gz = 0; gz < 2; gz++) {
            snprintf(base, sizeof base, idx_patterns[what][p], prefix);
            if (gz) strcat(base, ".gz");
            if (qt_data_join(out, cap, dir, base, NULL) < 0) continue;
            if (!first[0]) snprintf(first, sizeof first, "%s", out);
            if (qt_data_is_file(out)) return 1;
        }
    snprintf(out, cap, "%s", first);
    return 0;
}

int qt_data_idx_detect(const char *dir)
{
    char p[QT_DATA_PATH_MAX];
    return find_file(dir, "train", 0, p, sizeof p) || find_file(dir, "t10k", 0, p, sizeof p);
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Upper bound on the bytes a file of fsize bytes can hold: deflate expands at most about
 * 1032:1, a plain file holds exactly its size. */
static unsigned long long capacity(long long fsize, gzFile gz)
{
    if (fsize < 0) return 0;
    if (gzdirect(gz)) return (unsigned long long)fsize;
    return (unsigned long long)fsize * 1040ull + (1ull << 20);
}

/* Opens an IDX file and reads its header: magic, then ndims big-endian dimensions. *fsize is
 * the size of the file opened (not of whatever the path names later, should it be replaced). */
static int open_idx(const char *path, uint32_t magic, int ndims, uint32_t *dims, gzFile *out,
                    long long *fsize, struct qt_error *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qt_err(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qt_err(e, "%s: not a readable file", path);
    }
    *fsize = (long long)st.st_size;
    gzFile gz = gzdopen(fd, "rb");
    if (!gz) {
        close(fd);
        return qt_err(e, "%s: cannot open: out of memory", path);
    }
    gzbuffer(gz, 1 << 18);
    uint8_t h[16];
    size_t need = 4 + 4 * (size_t)ndims, got = 0;
    if (qt_data_gz_read(gz, path, h, need, &got, e) < 0) {
        gzclose(gz);
        return -1;
    }
    if (got < need) {
        gzclose(gz);
        return qt_err(e, "%s: truncated IDX file (%zu of the %zu header bytes)", path, got, need);
    }
    uint32_t m = be32(h);
    if (m != magic) {
        gzclose(gz);
        return qt_err(e, "%s: not an IDX %s file (magic number 0x%08x, expected 0x%08x)", path,
                      magic == IDX_IMAGES ? "image" : "label", m, magic);
    }
    for (int i = 0; i < ndims; i++) dims[i] = be32(h + 4 + 4 * i);
    *out = gz;
    return 0;
}

/* Reads exactly n payload bytes and checks that nothing follows them. */
static int read_payload(gzFile gz, const char *path, uint8_t *dst, size_t n, const char *what,
                        struct qt_error *e)
{
    size_t got = 0;
    if (qt_data_gz_read(gz, path, dst, n, &got, e) < 0) return -1;
    if (got < n)
        return qt_err(e, "%s: truncated IDX file (%zu of the %zu bytes of %s)", path, got, n, what);
    uint8_t extra;
    if (qt_data_gz_read(gz, path, &extra, 1, &got, e) < 0) return -1;
    if (got) return qt_err(e, "%s: unexpected data after the %zu bytes of %s", path, n, what);
    int errnum = 0;
    gzerror(gz, &errnum);
    if (errnum == Z_BUF_ERROR)
        return qt_err(e, "%s: truncated gzip file (unexpected end of the compressed data)", path);
    return 0;
}

int qt_data_idx_load(struct qt_dataset *ds, const char *dir, const char *split, struct qt_error *e)
{
    const char *prefix = strcmp(split, "train") == 0 ? "train" : "t10k";
    char ipath[QT_DATA_PATH_MAX], lpath[QT_DATA_PATH_MAX];
    if (!find_file(dir, prefix, 0, ipath, sizeof ipath))
        return qt_err(e, "%s: IDX folder has no %s-images-idx3-ubyte[.gz] for the %s split", dir,
                      prefix, split);
    if (!find_file(dir, prefix, 1, lpath, sizeof lpath))
        return qt_err(e, "%s: IDX folder has no %s-labels-idx1-ubyte[.gz] for the %s split", dir,
                      prefix, split);

    uint32_t d[3];
    gzFile gz;
    long long fsize;
    if (open_idx(ipath, IDX_IMAGES, 3, d, &gz, &fsize, e) < 0) return -1;
    if (d[0] == 0 || d[0] > 0x7fffffffu || d[1] == 0 || d[2] == 0 || d[1] > IDX_MAX_SIDE ||
        d[2] > IDX_MAX_SIDE) {
        gzclose(gz);
        return qt_err(e, "%s: unsupported IDX image dimensions %u x %u x %u", ipath, d[0], d[1],
                      d[2]);
    }
    unsigned long long bytes = (unsigned long long)d[0] * d[1] * d[2];
    if (bytes > capacity(fsize, gz)) {
        gzclose(gz);
        return qt_err(e,
                      "%s: truncated IDX file (header says %u images of %ux%u, more than the "
                      "file holds)",
                      ipath, d[0], d[1], d[2]);
    }
    ds->pixels = malloc((size_t)bytes);
    if (!ds->pixels) {
        gzclose(gz);
        return qt_err(e, "%s: out of memory for %llu bytes of pixels", ipath, bytes);
    }
    int rc = read_payload(gz, ipath, ds->pixels, (size_t)bytes, "pixels", e);
    gzclose(gz);
    if (rc < 0) return -1;
    ds->n = (int)d[0];
    ds->c = 1;
    ds->h = (int)d[1];
    ds->w = (int)d[2];

    uint32_t nl;
    if (open_idx(lpath, IDX_LABELS, 1, &nl, &gz, &fsize, e) < 0) return -1;
    if (nl != d[0]) {
        gzclose(gz);
        return qt_err(e, "%s: %u labels, but %s holds %u images", lpath, nl, ipath, d[0]);
    }
    uint8_t *raw = malloc(nl);
    ds->labels = malloc(sizeof *ds->labels * nl);
    if (!raw || !ds->labels) {
        free(raw);
        gzclose(gz);
        return qt_err(e, "%s: out of memory", lpath);
    }
    rc = read_payload(gz, lpath, raw, nl, "labels", e);
    gzclose(gz);
    if (rc < 0) {
        free(raw);
        return -1;
    }
    int maxl = 0;
    for (uint32_t i = 0; i < nl; i++) {
        ds->labels[i] = raw[i];
        if (raw[i] > maxl) maxl = raw[i];
    }
    free(raw);
    ds->nclasses = maxl + 1 < 10 ? 10 : maxl + 1;
    snprintf(ds->kind, sizeof ds->kind, "%s", "idx");
    return 0;
}
