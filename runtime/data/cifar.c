/* CIFAR-10 and CIFAR-100 binary readers: records of label byte(s) followed by 3072 pixel
 * bytes already stored CHW (1024 R, 1024 G, 1024 B), from a folder or from memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CIFAR_PIXELS 3072

static const char *const cifar10_names[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                              "dog",      "frog",       "horse", "ship", "truck"};

int qt_data_cifar_file_kind(const char *base, int *slot)
{
    if (!strcmp(base, "test_batch.bin")) {
        *slot = 5;
        return 10;
    }
    if (!strcmp(base, "batches.meta.txt")) {
        *slot = -1;
        return 10;
    }
    if (!strncmp(base, "data_batch_", 11) && base[11] >= '1' && base[11] <= '5' &&
        !strcmp(base + 12, ".bin")) {
        *slot = base[11] - '1';
        return 10;
    }
    if (!strcmp(base, "train.bin") || !strcmp(base, "test.bin")) {
        *slot = base[1] == 'r' ? 0 : 1;
        return 100;
    }
    if (!strcmp(base, "fine_label_names.txt")) {
        *slot = -1;
        return 100;
    }
    return 0;
}

int qt_data_cifar_detect(const char *dir, char *sub, size_t cap)
{
    static const char *const subs[2][2] = {{"", "cifar-10-batches-bin"}, {"", "cifar-100-binary"}};
    static const char *const marks[2][2] = {{"data_batch_1.bin", "test_batch.bin"},
                                            {"train.bin", "test.bin"}};
    char d[QT_DATA_PATH_MAX], f[QT_DATA_PATH_MAX];
    for (int v = 0; v < 2; v++)
        for (int s = 0; s < 2; s++) {
            if (s == 0)
                snprintf(d, sizeof d, "%s", dir);
            else if (qt_data_join(d, sizeof d, dir, subs[v][s], NULL) < 0)
                continue;
            for (int m = 0; m < 2; m++) {
                if (qt_data_join(f, sizeof f, d, marks[v][m], NULL) < 0) continue;
                if (qt_data_is_file(f)) {
                    snprintf(sub, cap, "%s", d);
                    return v ? 100 : 10;
                }
            }
        }
    return 0;
}

static int set_names(struct qt_dataset *ds, int version, const char *text, size_t len)
{
    int want = version == 10 ? 10 : 100;
    char **lines = NULL;
    int n = text ? qt_data_split_lines(text, len, &lines) : 0;
    if (n >= want) {
        for (int i = want; i < n; i++) free(lines[i]);
        ds->class_names = lines;
        return 0;
    }
    qt_data_free_names(lines, n < 0 ? 0 : n);
    if (version != 10) return 0;
    ds->class_names = calloc(10, sizeof *ds->class_names);
    if (!ds->class_names) return -1;
    for (int i = 0; i < 10; i++) {
        ds->class_names[i] = strdup(cifar10_names[i]);
        if (!ds->class_names[i]) return -1;
    }
    return 0;
}

int qt_data_cifar_parse(struct qt_dataset *ds, int version, const struct qt_data_blob *blobs,
                        int nblobs, const char *names, size_t names_len, struct qt_error *e)
{
    size_t rec = version == 10 ? 1 + CIFAR_PIXELS : 2 + CIFAR_PIXELS;
    int ncls = version == 10 ? 10 : 100;
    const char *what = version == 10 ? "CIFAR-10" : "CIFAR-100";
    size_t total = 0;
    for (int b = 0; b < nblobs; b++) {
        if (blobs[b].len == 0) return qt_err(e, "%s: empty file", blobs[b].name);
        if (blobs[b].len % rec)
            return qt_err(e,
                          "%s: size %zu is not a multiple of the %zu-byte %s record (truncated "
                          "or not a %s binary file)",
                          blobs[b].name, blobs[b].len, rec, what, what);
        total += blobs[b].len / rec;
    }
    if (total > 0x7fffffff) return qt_err(e, "%s: too many records", blobs[0].name);
    ds->pixels = malloc(total * CIFAR_PIXELS);
    ds->labels = malloc(sizeof *ds->labels * (total ? total : 1));
    if (!ds->pixels || !ds->labels)
        return qt_err(e, "out of memory for %zu %s images", total, what);
    size_t k = 0;
    for (int b = 0; b < nblobs; b++) {
        size_t n = blobs[b].len / rec;
        const uint8_t *p = blobs[b].data;
        for (size_t i = 0; i < n; i++, k++, p += rec) {
            int label = version == 10 ? p[0] : p[1];
            if (label >= ncls)
                return qt_err(e, "%s: record %zu has label %d, outside 0..%d", blobs[b].name, i,
                              label, ncls - 1);
            ds->labels[k] = label;
            memcpy(ds->pixels + k * CIFAR_PIXELS, p + rec - CIFAR_PIXELS, CIFAR_PIXELS);
        }
    }
    ds->n = (int)total;
    ds->c = 3;
    ds->h = ds->w = 32;
    ds->nclasses = ncls;
    snprintf(ds->kind, sizeof ds->kind, "%s", version == 10 ? "cifar10" : "cifar100");
    if (set_names(ds, version, names, names_len) < 0) return qt_err(e, "out of memory");
    return 0;
}

int qt_data_cifar_load_dir(struct qt_dataset *ds, const char *dir, int version, const char *split,
                           struct qt_error *e)
{
    int train = !strcmp(split, "train");
    const char *files[5];
    int nf;
    if (version == 10) {
        static const char *const batches[5] = {"data_batch_1.bin", "data_batch_2.bin",
                                               "data_batch_3.bin", "data_batch_4.bin",
                                               "data_batch_5.bin"};
        nf = train ? 5 : 1;
        for (int i = 0; i < nf; i++) files[i] = train ? batches[i] : "test_batch.bin";
    } else {
        nf = 1;
        files[0] = train ? "train.bin" : "test.bin";
    }
    struct qt_data_blob blobs[5];
    memset(blobs, 0, sizeof blobs);
    char path[QT_DATA_PATH_MAX];
    int rc = 0;
    for (int i = 0; i < nf && rc == 0; i++) {
        if (qt_data_join(path, sizeof path, dir, files[i], e) < 0) {
            rc = -1;
            break;
        }
        if (!qt_data_is_file(path)) {
            rc = qt_err(e, "%s: CIFAR-%d binary folder has no %s for the %s split", dir, version,
                        files[i], split);
            break;
        }
        blobs[i].name = strdup(path);
        if (!blobs[i].name)
            rc = qt_err(e, "out of memory");
        else
            rc = qt_data_read_file(path, &blobs[i].data, &blobs[i].len, e);
    }
    uint8_t *names = NULL;
    size_t names_len = 0;
    if (rc == 0 &&
        qt_data_join(path, sizeof path, dir,
                     version == 10 ? "batches.meta.txt" : "fine_label_names.txt", NULL) == 0 &&
        qt_data_is_file(path))
        rc = qt_data_read_file(path, &names, &names_len, e);
    if (rc == 0)
        rc = qt_data_cifar_parse(ds, version, blobs, nf, (const char *)names, names_len, e);
    free(names);
    for (int i = 0; i < nf; i++) {
        free(blobs[i].name);
        free(blobs[i].data);
    }
    return rc;
}
