/* Dataset entry points: kind detection from a path's contents, freeing, normalization
 * presets and float batch assembly. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define LAYOUTS                                                                                    \
    "accepted layouts: an IDX folder (train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte, "      \
    ".gz or not), a CIFAR-10/100 binary folder (data_batch_1..5.bin and test_batch.bin, or "       \
    "train.bin and test.bin) or its tar.gz, or an image-folder tree (train/<class>/*.jpg|png "     \
    "and test/<class>/...) as a folder or a .tar/.tar.gz"

static int gzip_magic(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int a = fgetc(f), b = fgetc(f);
    fclose(f);
    return a == 0x1f && b == 0x8b;
}

static int load(struct qt_dataset *ds, const char *path, const char *split, int resize, int crop,
                struct qt_error *e)
{
    if (!split || (strcmp(split, "train") && strcmp(split, "test")))
        return qt_err(e, "%s: unknown split '%s' (expected train or test)", path,
                      split ? split : "(null)");
    struct stat st;
    if (stat(path, &st) != 0)
        return qt_err(e, "%s: cannot open dataset: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char sub[QT_DATA_PATH_MAX];
        const int idx = qt_data_idx_detect(path);
        const int v = idx ? 0 : qt_data_cifar_detect(path, sub, sizeof sub);
        if ((idx || v) && crop)
            return qt_err(e, "%s: resizing and cropping apply to image folders; this is an IDX "
                             "or CIFAR folder of fixed-size images", path);
        if (idx) return qt_data_idx_load(ds, path, split, e);
        if (v) return qt_data_cifar_load_dir(ds, sub, v, split, e);
        if (qt_data_imagefolder_detect(path))
            return qt_data_imagefolder_load_dir(ds, path, split, resize, crop, e);
        return qt_err(e, "%s: folder is not a dataset qtune reads; " LAYOUTS, path);
    }
    if (S_ISREG(st.st_mode)) {
        if (qt_tar_probe(path)) return qt_data_archive_load(ds, path, split, resize, crop, e);
        if (gzip_magic(path))
            return qt_err(e, "%s: gzip file that holds no tar archive (or is corrupt); " LAYOUTS,
                          path);
        return qt_err(e, "%s: file is not a tar or tar.gz archive; " LAYOUTS, path);
    }
    return qt_err(e, "%s: neither a folder nor a file; " LAYOUTS, path);
}

int qt_dataset_load_sized(struct qt_dataset *ds, const char *path, const char *split, int resize,
                          int crop, struct qt_error *e)
{
    memset(ds, 0, sizeof *ds);
    if (!path) return qt_err(e, "no dataset path given");
    if (crop < 0 || crop > 4096 || resize < 0 || resize > 16384 || (resize && !crop))
        return qt_err(e, "resize %d and crop %d: a crop of 1 to 4096 pixels (and a resize of "
                         "at most 16384) is needed", resize, crop);
    if (crop && !resize) resize = (int)((int64_t)crop * 256 / 224);
    if (load(ds, path, split, resize, crop, e) < 0) {
        qt_dataset_free(ds);
        return -1;
    }
    return 0;
}

int qt_dataset_load(struct qt_dataset *ds, const char *path, const char *split, struct qt_error *e)
{
    return qt_dataset_load_sized(ds, path, split, 0, 0, e);
}

void qt_dataset_free(struct qt_dataset *ds)
{
    if (!ds) return;
    if (ds->class_names)
        for (int i = 0; i < ds->nclasses; i++) free(ds->class_names[i]);
    free(ds->class_names);
    if (ds->sample_names)
        for (int i = 0; i < ds->n; i++) free(ds->sample_names[i]);
    free(ds->sample_names);
    free(ds->pixels);
    qt_stream_free(ds->stream);
    free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

struct preset {
    const char *name;
    int channels;
    float mean[3], std[3];
};

static const struct preset presets[] = {
    {"cifar10", 3, {0.491f, 0.482f, 0.447f}, {0.247f, 0.243f, 0.262f}},
    {"cifar100", 3, {0.5071f, 0.4865f, 0.4409f}, {0.2673f, 0.2564f, 0.2762f}},
    {"imagenet", 3, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}},
    {"fashion-mnist", 1, {0.2860f}, {0.3530f}},
    {"mnist", 1, {0.1307f}, {0.3081f}},
};

int qt_norm_preset(const char *name, int channels, float *mean, float *std)
{
    if (!name) return -1;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const struct preset *p = &presets[i];
        if (strcmp(p->name, name)) continue;
        if (channels != p->channels) return -1;
        for (int c = 0; c < channels; c++) {
            mean[c] = p->mean[c];
            std[c] = p->std[c];
        }
        return 0;
    }
    return -1;
}

#define PAR_MIN_VALUES (1 << 21)

/* Each channel maps its 256 byte values through a table holding (v / 255 - mean) / std,
 * evaluated in float exactly as written (the same arithmetic as ToTensor + Normalize).
 * One sample (stored [C, H, W]) goes channel by channel through the tables t (256 entries
 * per channel): shifted by (oy, ox) with zero pixels outside, then mirrored when flip. Pixel p
 * of channel ch lands at dst[ch * hw + p] (NCHW) or dst[p * c + ch] (NHWC). */
static void sample_to_float(float *dst, const uint8_t *src, const float *t, int c, int h, int w,
                            int oy, int ox, int flip, enum qt_image_layout l)
{
    const size_t hw = (size_t)h * w;
    const size_t cs = l == QT_IMAGE_NHWC ? 1 : hw, ps = l == QT_IMAGE_NHWC ? (size_t)c : 1;
    for (int ch = 0; ch < c; ch++) {
        const float *tc = t + ch * 256;
        const uint8_t *sp = src + ch * hw;
        float *dp = dst + ch * cs;
        if (!oy && !ox && !flip) {
            if (ps == 1)
                for (size_t p = 0; p < hw; p++) dp[p] = tc[sp[p]];
            else
                for (size_t p = 0; p < hw; p++) dp[p * ps] = tc[sp[p]];
            continue;
        }
        for (int r = 0; r < h; r++) {
            int sr = r + oy;
            float *row = dp + (size_t)r * w * ps;
            if (sr < 0 || sr >= h) {
                for (int q = 0; q < w; q++) row[q * ps] = tc[0];
                continue;
            }
            const uint8_t *srow = sp + (size_t)sr * w;
            for (int q = 0; q < w; q++) {
                int sq = (flip ? w - 1 - q : q) + ox;
                row[q * ps] = sq >= 0 && sq < w ? tc[srow[sq]] : tc[0];
            }
        }
    }
}

int qt_dataset_batch_augmented(const struct qt_dataset *ds, const int *idx, int count,
                               const float *mean, const float *std, const struct qt_augment *aug,
                               enum qt_image_layout l, float *x, int32_t *y, struct qt_error *e)
{
    if (count <= 0) return 0;
    const int c = ds->c;
    const size_t chw = (size_t)c * ds->h * ds->w;
    const int par = (size_t)count * chw >= PAR_MIN_VALUES;
    float *lut = malloc(sizeof(float) * 256 * (size_t)c);
    if (!lut) return qt_err(e, "out of memory");
    for (int ch = 0; ch < c; ch++) {
        float m = mean ? mean[ch] : 0.0f, sd = std ? std[ch] : 1.0f;
        for (int v = 0; v < 256; v++) lut[ch * 256 + v] = ((float)v / 255.0f - m) / sd;
    }
    int rc = 0;
    if (ds->stream)
        rc = qt_stream_batch(ds->stream, idx, count, aug ? aug->seed : NULL, lut,
                             l == QT_IMAGE_NHWC, x, e);
    else
#pragma omp parallel for schedule(static) if (par)
        for (int i = 0; i < count; i++)
            sample_to_float(x + (size_t)i * chw, ds->pixels + (size_t)idx[i] * chw, lut, c,
                            ds->h, ds->w, aug ? aug->oy[i] : 0, aug ? aug->ox[i] : 0,
                            aug ? aug->flip[i] : 0, l);
    free(lut);
    if (y && !rc)
        for (int i = 0; i < count; i++) y[i] = ds->labels[idx[i]];
    return rc;
}

int qt_dataset_batch(const struct qt_dataset *ds, const int *idx, int count, const float *mean,
                     const float *std, enum qt_image_layout l, float *x, int32_t *y,
                     struct qt_error *e)
{
    return qt_dataset_batch_augmented(ds, idx, count, mean, std, NULL, l, x, y, e);
}

int qt_dataset_subset(struct qt_dataset *out, const struct qt_dataset *ds, const int *idx, int n,
                      struct qt_error *e)
{
    memset(out, 0, sizeof *out);
    const size_t img = (size_t)ds->c * ds->h * ds->w;
    out->labels = malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (ds->stream)
        out->stream = qt_stream_subset(ds->stream, idx, n);
    else
        out->pixels = malloc(img * (size_t)n + 1);
    if (!out->labels || (ds->stream ? !out->stream : !out->pixels)) {
        qt_dataset_free(out);
        return qt_err(e, "out of memory for %d images", n);
    }
    for (int i = 0; i < n; i++) {
        if (!ds->stream) memcpy(out->pixels + img * i, ds->pixels + img * idx[i], img);
        out->labels[i] = ds->labels[idx[i]];
    }
    out->n = n;
    out->c = ds->c;
    out->h = ds->h;
    out->w = ds->w;
    out->nclasses = ds->nclasses;
    snprintf(out->kind, sizeof out->kind, "%s", ds->kind);
    return 0;
}
