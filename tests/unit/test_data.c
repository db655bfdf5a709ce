/* Unit tests for runtime/data: IDX, CIFAR binary and image-folder readers (folders, tar,
 * tar.gz), error reports for damaged inputs, normalization presets and batch assembly. */
#include <dirent.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#include "harness.h"
#include "runtime/data/dataset.h"

/* ---- helpers: temporary folders, files, buffers ---- */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void buf_put(struct buf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) abort();
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static int make_tmpdir(char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");
    if (base && strlen(base) > 900) base = NULL;
    snprintf(out, cap, "%s/qt_data_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(out) ? 0 : -1;
}

static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            char sub[4096];
            while ((de = readdir(d)) != NULL) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
                snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
                remove_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else
        unlink(path);
}

/* Writes data to dir/name (creating parent folders), gzip-compressed when gz is set. */
static int write_file(const char *dir, const char *name, const void *data, size_t n, int gz)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (char *s = path + strlen(dir) + 1; (s = strchr(s, '/')) != NULL; s++) {
        *s = 0;
        mkdir(path, 0755);
        *s = '/';
    }
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (!f) return -1;
        int ok = n == 0 || gzwrite(f, data, (unsigned)n) == (int)n;
        return gzclose(f) == Z_OK && ok ? 0 : -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int make_dir(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return mkdir(path, 0755);
}

static uint32_t rng_next(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static int has(const struct qt_error *e, const char *needle)
{
    return strstr(e->msg, needle) != NULL;
}

/* ---- IDX files ---- */

static void put_be32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    buf_put(b, x, 4);
}

static int write_idx(const char *dir, const char *prefix, int n, int rows, int cols,
                     const uint8_t *px, const uint8_t *labels, int gz)
{
    char name[128];
    struct buf b = {0};
    put_be32(&b, 0x803);
    put_be32(&b, (uint32_t)n);
    put_be32(&b, (uint32_t)rows);
    put_be32(&b, (uint32_t)cols);
    buf_put(&b, px, (size_t)n * rows * cols);
    snprintf(name, sizeof name, "%s-images-idx3-ubyte%s", prefix, gz ? ".gz" : "");
    int rc = write_file(dir, name, b.p, b.n, gz);
    b.n = 0;
    put_be32(&b, 0x801);
    put_be32(&b, (uint32_t)n);
    buf_put(&b, labels, (size_t)n);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte%s", prefix, gz ? ".gz" : "");
    if (rc == 0) rc = write_file(dir, name, b.p, b.n, gz);
    free(b.p);
    return rc;
}

/* ---- tar archives ---- */

static void tar_header(struct buf *t, const char *name, size_t size, char type)
{
    uint8_t h[512];
    memset(h, 0, sizeof h);
    snprintf((char *)h, 100, "%s", name);
    snprintf((char *)h + 100, 8, "%07o", type == '5' ? 0755 : 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    snprintf((char *)h + 136, 12, "%011o", 0);
    h[156] = (uint8_t)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    buf_put(t, h, 512);
}

static void tar_data(struct buf *t, const void *data, size_t size)
{
    static const uint8_t zeros[512];
    buf_put(t, data, size);
    if (size % 512) buf_put(t, zeros, 512 - size % 512);
}

static void tar_add(struct buf *t, const char *name, const void *data, size_t size)
{
    tar_header(t, name, size, '0');
    tar_data(t, data, size);
}

static void tar_dir(struct buf *t, const char *name)
{
    tar_header(t, name, 0, '5');
}

/* An entry whose name goes in a pax extended header (for names longer than 100 bytes). */
static void tar_add_pax(struct buf *t, const char *name, const void *data, size_t size)
{
    char rec[4200];
    size_t body = strlen(" path=\n") + strlen(name);
    size_t len = body + 1;
    while ((size_t)snprintf(NULL, 0, "%zu", len) + body != len) len++;
    snprintf(rec, sizeof rec, "%zu path=%s\n", len, name);
    tar_header(t, "PaxHeader", strlen(rec), 'x');
    tar_data(t, rec, strlen(rec));
    tar_header(t, "placeholder-name", size, '0');
    tar_data(t, data, size);
}

static void tar_end(struct buf *t)
{
    static const uint8_t zeros[1024];
    buf_put(t, zeros, sizeof zeros);
}

/* ---- image encoders ---- */

struct png_out {
    struct buf b;
};

static void png_write_mem(png_structp png, png_bytep data, size_t n)
{
    struct png_out *o = png_get_io_ptr(png);
    buf_put(&o->b, data, n);
}

static void png_flush_mem(png_structp png)
{
    (void)png;
}

/* Encodes an h x w image with c (1 or 3) interleaved channels as PNG. */
static int encode_png(const uint8_t *px, int w, int h, int c, struct buf *out)
{
    struct png_out o = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    png_bytep *rows = malloc(sizeof *rows * h);
    if (!rows || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        free(o.b.p);
        return -1;
    }
    png_set_write_fn(png, &o, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, w, h, 8, c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)px + (size_t)y * w * c;
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *out = o.b;
    return 0;
}

struct jpeg_err {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

static void jpeg_err_exit(j_common_ptr ci)
{
    longjmp(((struct jpeg_err *)ci->err)->jump, 1);
}

static int encode_jpeg(const uint8_t *px, int w, int h, int c, struct buf *out)
{
    struct jpeg_compress_struct ci;
    struct jpeg_err err;
    unsigned char *mem = NULL;
    unsigned long size = 0;
    ci.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_err_exit;
    if (setjmp(err.jump)) {
        jpeg_destroy_compress(&ci);
        free(mem);
        return -1;
    }
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, &mem, &size);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = c;
    ci.in_color_space = c == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 95, TRUE);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)px + (size_t)ci.next_scanline * w * c;
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    out->p = NULL;
    out->n = out->cap = 0;
    buf_put(out, mem, size);
    free(mem);
    return 0;
}

/* ---- tests ---- */

QT_TEST(data_norm_presets)
{
    float m[3], s[3];
    QT_CHECK(qt_norm_preset("cifar10", 3, m, s) == 0);
    QT_CHECK_NEAR(m[0], 0.491, 1e-6);
    QT_CHECK_NEAR(m[2], 0.447, 1e-6);
    QT_CHECK_NEAR(s[1], 0.243, 1e-6);
    QT_CHECK(qt_norm_preset("cifar10", 1, m, s) == -1);
    QT_CHECK(qt_norm_preset("imagenet", 3, m, s) == 0);
    QT_CHECK_NEAR(m[1], 0.456, 1e-6);
    QT_CHECK_NEAR(s[2], 0.225, 1e-6);
    QT_CHECK(qt_norm_preset("fashion-mnist", 1, m, s) == 0);
    QT_CHECK_NEAR(m[0], 0.2860, 1e-6);
    QT_CHECK_NEAR(s[0], 0.3530, 1e-6);
    QT_CHECK(qt_norm_preset("mnist", 1, m, s) == 0);
    QT_CHECK_NEAR(m[0], 0.1307, 1e-6);
    QT_CHECK_NEAR(s[0], 0.3081, 1e-6);
    QT_CHECK(qt_norm_preset("mnist", 3, m, s) == -1);
    QT_CHECK(qt_norm_preset("nope", 3, m, s) == -1);
    return 0;
}

QT_TEST(data_batch_normalizes)
{
    const int n = 80, c = 3, h = 32, w = 32;
    const size_t chw = (size_t)c * h * w;
    struct qt_dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.n = n;
    ds.c = c;
    ds.h = h;
    ds.w = w;
    ds.nclasses = 10;
    ds.pixels = malloc(n * chw);
    ds.labels = malloc(sizeof *ds.labels * n);
    int *idx = malloc(sizeof *idx * n);
    float *x = malloc(sizeof *x * n * chw);
    int32_t *y = malloc(sizeof *y * n);
    QT_CHECK(ds.pixels && ds.labels && idx && x && y);
    uint32_t seed = 7;
    for (size_t i = 0; i < n * chw; i++) ds.pixels[i] = (uint8_t)rng_next(&seed);
    for (int i = 0; i < n; i++) {
        ds.labels[i] = i % 10;
        idx[i] = (i * 37 + 11) % n;
    }
    const float mean[3] = {0.491f, 0.482f, 0.447f}, std[3] = {0.247f, 0.243f, 0.262f};
    int bad = 0;
    for (int count = 2; count <= n; count += n - 2) { /* small (serial) and large (parallel) */
        struct qt_error e;
        QT_CHECK(qt_dataset_batch(&ds, idx, count, mean, std, QT_IMAGE_NCHW, x, y, &e) == 0);
        for (int i = 0; i < count; i++) {
            if (y[i] != ds.labels[idx[i]]) bad++;
            for (int ch = 0; ch < c; ch++)
                for (int p = 0; p < h * w; p++) {
                    uint8_t v = ds.pixels[(size_t)idx[i] * chw + (size_t)ch * h * w + p];
                    float want = ((float)v / 255.0f - mean[ch]) / std[ch];
                    if (x[(size_t)i * chw + (size_t)ch * h * w + p] != want) bad++;
                }
        }
    }
    struct qt_error e;
    QT_CHECK(qt_dataset_batch(&ds, idx, 1, mean, std, QT_IMAGE_NCHW, x, NULL, &e) == 0);
    free(idx);
    free(x);
    free(y);
    qt_dataset_free(&ds);
    QT_CHECK(bad == 0);
    return 0;
}

QT_TEST(data_idx_plain_and_gz)
{
    char dir[1024];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    uint8_t px[5 * 3 * 4], lab[5] = {3, 0, 9, 1, 4}, px2[2 * 3 * 4], lab2[2] = {12, 2};
    for (int i = 0; i < 60; i++) px[i] = (uint8_t)(i * 4 + 1);
    for (int i = 0; i < 24; i++) px2[i] = (uint8_t)(255 - i);
    int rc = write_idx(dir, "train", 5, 3, 4, px, lab, 1);
    if (rc == 0) rc = write_idx(dir, "t10k", 2, 3, 4, px2, lab2, 0);
    struct qt_dataset tr, te;
    struct qt_error e = {{0}};
    int r1 = rc == 0 ? qt_dataset_load(&tr, dir, "train", &e) : -1;
    if (r1 < 0) printf("    %s\n", e.msg);
    int r2 = rc == 0 ? qt_dataset_load(&te, dir, "test", &e) : -1;
    if (r2 < 0) printf("    %s\n", e.msg);
    remove_tree(dir);
    QT_CHECK(rc == 0 && r1 == 0 && r2 == 0);
    int ok = tr.n == 5 && tr.c == 1 && tr.h == 3 && tr.w == 4 && tr.nclasses == 10 &&
             !memcmp(tr.pixels, px, sizeof px) && !strcmp(tr.kind, "idx") && !tr.class_names;
    for (int i = 0; i < 5; i++) ok = ok && tr.labels[i] == lab[i];
    ok = ok && te.n == 2 && te.nclasses == 13 && !memcmp(te.pixels, px2, sizeof px2) &&
         te.labels[0] == 12 && te.labels[1] == 2;
    qt_dataset_free(&tr);
    qt_dataset_free(&te);
    QT_CHECK(ok);
    return 0;
}

QT_TEST(data_idx_errors)
{
    char dir[1024];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    uint8_t px[4 * 2 * 2] = {0}, lab[4] = {1, 2, 3, 4};
    struct qt_dataset ds;
    struct qt_error e = {{0}};
    int fails = 0;

    /* wrong magic in the image file */
    write_idx(dir, "train", 4, 2, 2, px, lab, 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte", dir);
    FILE *f = fopen(path, "r+b");
    if (f) {
        fputc(0x08, f);
        fclose(f);
    }
    if (qt_dataset_load(&ds, dir, "train", &e) != -1 || !has(&e, "train-images-idx3-ubyte") ||
        !has(&e, "magic")) {
        printf("    wrong magic: %s\n", e.msg);
        fails++;
    }
    /* truncated image file (gzip) */
    remove_tree(path);
    write_idx(dir, "train", 4, 2, 2, px, lab, 1);
    struct buf b = {0};
    put_be32(&b, 0x803);
    put_be32(&b, 4);
    put_be32(&b, 2);
    put_be32(&b, 2);
    buf_put(&b, px, 10);
    write_file(dir, "train-images-idx3-ubyte.gz", b.p, b.n, 1);
    free(b.p);
    if (qt_dataset_load(&ds, dir, "train", &e) != -1 || !has(&e, "train-images-idx3-ubyte.gz") ||
        !has(&e, "truncated")) {
        printf("    truncated: %s\n", e.msg);
        fails++;
    }
    /* label count differs from the image count */
    write_idx(dir, "train", 4, 2, 2, px, lab, 1);
    write_idx(dir, "t10k", 3, 2, 2, px, lab, 1);
    write_idx(dir, "t10k", 4, 2, 2, px, lab, 1);
    b = (struct buf){0};
    put_be32(&b, 0x801);
    put_be32(&b, 3);
    buf_put(&b, lab, 3);
    write_file(dir, "t10k-labels-idx1-ubyte.gz", b.p, b.n, 1);
    free(b.p);
    if (qt_dataset_load(&ds, dir, "test", &e) != -1 || !has(&e, "t10k-labels-idx1-ubyte.gz")) {
        printf("    count mismatch: %s\n", e.msg);
        fails++;
    }
    /* a gzip file cut short */
    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", dir);
    QT_CHECK(truncate(path, 20) == 0);
    if (qt_dataset_load(&ds, dir, "train", &e) != -1 || !has(&e, "train-images-idx3-ubyte.gz")) {
        printf("    cut gzip: %s\n", e.msg);
        fails++;
    }
    /* the requested split is missing */
    remove_tree(path);
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte.gz", dir);
    remove_tree(path);
    if (qt_dataset_load(&ds, dir, "test", &e) != -1 || !has(&e, "t10k-labels")) {
        printf("    missing labels: %s\n", e.msg);
        fails++;
    }
    remove_tree(dir);
    QT_CHECK(fails == 0);
    return 0;
}

/* CIFAR records: label(s) then 3072 pixels; pixel bytes derive from (record, byte) so that
 * every record is distinct. */
static void cifar_records(struct buf *b, int version, int first, int n)
{
    uint8_t rec[3074];
    int lab = version == 10 ? 1 : 2;
    for (int r = first; r < first + n; r++) {
        if (version == 10)
            rec[0] = (uint8_t)(r % 10);
        else {
            rec[0] = (uint8_t)(r % 20);
            rec[1] = (uint8_t)(r * 7 % 100);
        }
        for (int i = 0; i < 3072; i++) rec[lab + i] = (uint8_t)(r * 31 + i);
        buf_put(b, rec, (size_t)lab + 3072);
    }
}

static int check_cifar(const struct qt_dataset *ds, int version, int first, int n)
{
    if (ds->n != n || ds->c != 3 || ds->h != 32 || ds->w != 32) return 0;
    for (int k = 0; k < n; k++) {
        int r = first + k;
        int want = version == 10 ? r % 10 : r * 7 % 100;
        if (ds->labels[k] != want) return 0;
        for (int i = 0; i < 3072; i += 97)
            if (ds->pixels[(size_t)k * 3072 + i] != (uint8_t)(r * 31 + i)) return 0;
    }
    return 1;
}

QT_TEST(data_cifar10_folder)
{
    char dir[1024], name[1200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    int rc = 0;
    for (int b = 1; b <= 5; b++) {
        struct buf d = {0};
        cifar_records(&d, 10, (b - 1) * 2, 2);
        snprintf(name, sizeof name, "cifar-10-batches-bin/data_batch_%d.bin", b);
        rc |= write_file(dir, name, d.p, d.n, 0);
        free(d.p);
    }
    struct buf d = {0};
    cifar_records(&d, 10, 100, 3);
    rc |= write_file(dir, "cifar-10-batches-bin/test_batch.bin", d.p, d.n, 0);
    free(d.p);
    const char *meta = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    rc |= write_file(dir, "cifar-10-batches-bin/batches.meta.txt", meta, strlen(meta), 0);
    QT_CHECK(rc == 0);

    struct qt_dataset tr, te, ds;
    struct qt_error e = {{0}};
    int r1 = qt_dataset_load(&tr, dir, "train", &e);
    if (r1) printf("    %s\n", e.msg);
    snprintf(name, sizeof name, "%s/cifar-10-batches-bin", dir);
    int r2 = qt_dataset_load(&te, name, "test", &e);
    if (r2) printf("    %s\n", e.msg);
    int ok = r1 == 0 && r2 == 0 && check_cifar(&tr, 10, 0, 10) && check_cifar(&te, 10, 100, 3) &&
             tr.nclasses == 10 && !strcmp(tr.kind, "cifar10") && tr.class_names &&
             !strcmp(tr.class_names[0], "airplane") && !strcmp(tr.class_names[9], "truck");
    if (r1 == 0) qt_dataset_free(&tr);
    if (r2 == 0) qt_dataset_free(&te);

    /* a batch whose size is not a whole number of records */
    snprintf(name, sizeof name, "%s/cifar-10-batches-bin/data_batch_3.bin", dir);
    QT_CHECK(truncate(name, 3073 + 100) == 0);
    int r3 = qt_dataset_load(&ds, dir, "train", &e);
    int ok3 = r3 == -1 && has(&e, "data_batch_3.bin") && has(&e, "3073");
    if (!ok3) printf("    bad size: %s\n", e.msg);
    /* a label outside 0..9 */
    d = (struct buf){0};
    cifar_records(&d, 10, 0, 2);
    d.p[3073] = 10;
    write_file(dir, "cifar-10-batches-bin/data_batch_3.bin", d.p, d.n, 0);
    free(d.p);
    int r4 = qt_dataset_load(&ds, dir, "train", &e);
    int ok4 = r4 == -1 && has(&e, "data_batch_3.bin") && has(&e, "label");
    if (!ok4) printf("    bad label: %s\n", e.msg);
    remove_tree(dir);
    QT_CHECK(ok && ok3 && ok4);
    return 0;
}

QT_TEST(data_cifar100_folder)
{
    char dir[1024];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct buf a = {0}, b = {0};
    cifar_records(&a, 100, 0, 4);
    cifar_records(&b, 100, 50, 2);
    int rc = write_file(dir, "cifar-100-binary/train.bin", a.p, a.n, 0) |
             write_file(dir, "cifar-100-binary/test.bin", b.p, b.n, 0);
    free(a.p);
    free(b.p);
    QT_CHECK(rc == 0);
    struct qt_dataset tr, te;
    struct qt_error e = {{0}};
    int r1 = qt_dataset_load(&tr, dir, "train", &e);
    if (r1) printf("    %s\n", e.msg);
    int r2 = qt_dataset_load(&te, dir, "test", &e);
    if (r2) printf("    %s\n", e.msg);
    remove_tree(dir);
    int ok = r1 == 0 && r2 == 0 && check_cifar(&tr, 100, 0, 4) && check_cifar(&te, 100, 50, 2) &&
             tr.nclasses == 100 && !strcmp(tr.kind, "cifar100");
    if (r1 == 0) qt_dataset_free(&tr);
    if (r2 == 0) qt_dataset_free(&te);
    QT_CHECK(ok);
    return 0;
}

QT_TEST(data_cifar10_targz)
{
    char dir[1024], path[4200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct buf t = {0};
    tar_dir(&t, "cifar-10-batches-bin/");
    const int order[6] = {3, 1, 6, 5, 2, 4}; /* batches out of order, test batch as 6 */
    for (int k = 0; k < 6; k++) {
        struct buf d = {0};
        char name[128];
        int bn = order[k];
        if (bn == 6) {
            cifar_records(&d, 10, 200, 4);
            snprintf(name, sizeof name, "cifar-10-batches-bin/test_batch.bin");
        } else {
            cifar_records(&d, 10, (bn - 1) * 3, 3);
            snprintf(name, sizeof name, "cifar-10-batches-bin/data_batch_%d.bin", bn);
        }
        tar_add(&t, name, d.p, d.n);
        free(d.p);
    }
    tar_add(&t, "cifar-10-batches-bin/readme.html", "<html></html>", 13);
    tar_end(&t);
    int rc = write_file(dir, "cifar-10-binary.tar.gz", t.p, t.n, 1);
    free(t.p);
    QT_CHECK(rc == 0);
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", dir);
    struct qt_dataset tr, te;
    struct qt_error e = {{0}};
    int r1 = qt_dataset_load(&tr, path, "train", &e);
    if (r1) printf("    %s\n", e.msg);
    int r2 = qt_dataset_load(&te, path, "test", &e);
    if (r2) printf("    %s\n", e.msg);
    remove_tree(dir);
    int ok = r1 == 0 && r2 == 0 && check_cifar(&tr, 10, 0, 15) && check_cifar(&te, 10, 200, 4) &&
             !strcmp(te.kind, "cifar10") && te.class_names && !strcmp(te.class_names[3], "cat");
    if (r1 == 0) qt_dataset_free(&tr);
    if (r2 == 0) qt_dataset_free(&te);
    QT_CHECK(ok);
    return 0;
}

/* An image tree: train/{cat,dog}, test/{ant,cat}; 4x3 images. cat/0 is an RGB PNG,
 * cat/1 a gray PNG (expanded to RGB), dog/0 a JPEG. Names are prefixed with prefix. */
struct tree {
    uint8_t rgb[3 * 4 * 3], gray[4 * 3], flat[3 * 4 * 3];
    struct buf png_rgb, png_gray, jpg;
};

static int tree_make(struct tree *tr)
{
    memset(tr, 0, sizeof *tr);
    for (int i = 0; i < 36; i++) tr->rgb[i] = (uint8_t)(i * 7 + 3);
    for (int i = 0; i < 12; i++) tr->gray[i] = (uint8_t)(200 - i * 9);
    for (int i = 0; i < 36; i++) tr->flat[i] = i % 3 == 0 ? 200 : i % 3 == 1 ? 60 : 20;
    if (encode_png(tr->rgb, 4, 3, 3, &tr->png_rgb) < 0) return -1;
    if (encode_png(tr->gray, 4, 3, 1, &tr->png_gray) < 0) return -1;
    return encode_jpeg(tr->flat, 4, 3, 3, &tr->jpg);
}

static void tree_free(struct tree *tr)
{
    free(tr->png_rgb.p);
    free(tr->png_gray.p);
    free(tr->jpg.p);
}

static void tree_tar(const struct tree *tr, struct buf *t, const char *prefix)
{
    char n[256];
    snprintf(n, sizeof n, "%strain/", prefix);
    tar_dir(t, n);
    snprintf(n, sizeof n, "%strain/cat/", prefix);
    tar_dir(t, n);
    snprintf(n, sizeof n, "%strain/cat/0.png", prefix);
    tar_add(t, n, tr->png_rgb.p, tr->png_rgb.n);
    snprintf(n, sizeof n, "%strain/cat/1.png", prefix);
    tar_add(t, n, tr->png_gray.p, tr->png_gray.n);
    snprintf(n, sizeof n, "%strain/cat/notes.txt", prefix);
    tar_add(t, n, "x", 1);
    snprintf(n, sizeof n, "%strain/dog/0.JPG", prefix);
    tar_add(t, n, tr->jpg.p, tr->jpg.n);
    snprintf(n, sizeof n, "%stest/ant/0.png", prefix);
    tar_add(t, n, tr->png_gray.p, tr->png_gray.n);
    snprintf(n, sizeof n, "%stest/cat/0.png", prefix);
    tar_add(t, n, tr->png_rgb.p, tr->png_rgb.n);
}

static int tree_files(const struct tree *tr, const char *dir)
{
    return write_file(dir, "train/cat/0.png", tr->png_rgb.p, tr->png_rgb.n, 0) |
           write_file(dir, "train/cat/1.png", tr->png_gray.p, tr->png_gray.n, 0) |
           write_file(dir, "train/cat/notes.txt", "x", 1, 0) |
           write_file(dir, "train/dog/0.JPG", tr->jpg.p, tr->jpg.n, 0) |
           write_file(dir, "test/ant/0.png", tr->png_gray.p, tr->png_gray.n, 0) |
           write_file(dir, "test/cat/0.png", tr->png_rgb.p, tr->png_rgb.n, 0);
}

/* Checks the train split of the tree: CHW pixels, labels in the union {ant, cat, dog}. */
static int tree_check_train(const struct tree *tr, const struct qt_dataset *ds)
{
    if (ds->n != 3 || ds->c != 3 || ds->h != 3 || ds->w != 4 || ds->nclasses != 3) return 0;
    if (strcmp(ds->kind, "imagefolder") || !ds->class_names) return 0;
    if (strcmp(ds->class_names[0], "ant") || strcmp(ds->class_names[1], "cat") ||
        strcmp(ds->class_names[2], "dog"))
        return 0;
    if (ds->labels[0] != 1 || ds->labels[1] != 1 || ds->labels[2] != 2) return 0;
    for (int ch = 0; ch < 3; ch++)
        for (int p = 0; p < 12; p++) {
            if (ds->pixels[ch * 12 + p] != tr->rgb[p * 3 + ch]) return 0;
            if (ds->pixels[36 + ch * 12 + p] != tr->gray[p]) return 0;
            int v = ds->pixels[72 + ch * 12 + p], want = tr->flat[p * 3 + ch];
            if (abs(v - want) > 6) return 0;
        }
    return 1;
}

static int tree_check_test(const struct tree *tr, const struct qt_dataset *ds)
{
    if (ds->n != 2 || ds->c != 3 || ds->nclasses != 3) return 0;
    if (ds->labels[0] != 0 || ds->labels[1] != 1) return 0;
    for (int ch = 0; ch < 3; ch++)
        for (int p = 0; p < 12; p++)
            if (ds->pixels[ch * 12 + p] != tr->gray[p] ||
                ds->pixels[36 + ch * 12 + p] != tr->rgb[p * 3 + ch])
                return 0;
    return 1;
}

QT_TEST(data_imagefolder_archives)
{
    struct tree tr;
    QT_CHECK(tree_make(&tr) == 0);
    char dir[1024], path[4200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    static const char *const prefixes[3] = {"", "./", "./cifar-mini/"};
    int fails = 0;
    for (int k = 0; k < 3; k++)
        for (int gz = 0; gz < 2; gz++) {
            struct buf t = {0};
            tree_tar(&tr, &t, prefixes[k]);
            tar_end(&t);
            snprintf(path, sizeof path, "%s/tree%d.%s", dir, k, gz ? "tgz" : "tar");
            write_file(dir, strrchr(path, '/') + 1, t.p, t.n, gz);
            free(t.p);
            struct qt_dataset a, b;
            struct qt_error e = {{0}};
            int r1 = qt_dataset_load(&a, path, "train", &e);
            if (r1) printf("    %s\n", e.msg);
            int r2 = qt_dataset_load(&b, path, "test", &e);
            if (r2) printf("    %s\n", e.msg);
            if (r1 || r2 || !tree_check_train(&tr, &a) || !tree_check_test(&tr, &b)) {
                printf("    archive with prefix '%s' (%s) read wrong\n", prefixes[k],
                       gz ? "gzip" : "plain");
                fails++;
            }
            if (r1 == 0) qt_dataset_free(&a);
            if (r2 == 0) qt_dataset_free(&b);
        }
    /* a top-level folder whose name needs a pax header */
    {
        char longdir[200], n[300];
        memset(longdir, 'd', 150);
        longdir[150] = 0;
        struct buf t = {0};
        snprintf(n, sizeof n, "%s/test/ant/0.png", longdir);
        tar_add_pax(&t, n, tr.png_gray.p, tr.png_gray.n);
        snprintf(n, sizeof n, "%s/test/cat/0.png", longdir);
        tar_add_pax(&t, n, tr.png_rgb.p, tr.png_rgb.n);
        tar_end(&t);
        write_file(dir, "pax.tar.gz", t.p, t.n, 1);
        free(t.p);
        snprintf(path, sizeof path, "%s/pax.tar.gz", dir);
        struct qt_dataset b;
        struct qt_error e = {{0}};
        int r = qt_dataset_load(&b, path, "test", &e);
        if (r) printf("    %s\n", e.msg);
        if (r || b.nclasses != 2 || b.n != 2 || b.labels[1] != 1) {
            printf("    pax archive read wrong\n");
            fails++;
        }
        if (r == 0) qt_dataset_free(&b);
    }
    remove_tree(dir);
    tree_free(&tr);
    QT_CHECK(fails == 0);
    return 0;
}

QT_TEST(data_imagefolder_dir)
{
    struct tree tr;
    QT_CHECK(tree_make(&tr) == 0);
    char dir[1024];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    int rc = tree_files(&tr, dir);
    struct qt_dataset a, b;
    struct qt_error e = {{0}};
    int r1 = rc == 0 ? qt_dataset_load(&a, dir, "train", &e) : -1;
    if (r1) printf("    %s\n", e.msg);
    int r2 = rc == 0 ? qt_dataset_load(&b, dir, "test", &e) : -1;
    if (r2) printf("    %s\n", e.msg);
    int ok = r1 == 0 && r2 == 0 && tree_check_train(&tr, &a) && tree_check_test(&tr, &b);
    if (r1 == 0) qt_dataset_free(&a);
    if (r2 == 0) qt_dataset_free(&b);

    /* an empty class folder in the requested split */
    make_dir(dir, "test/bee");
    int r3 = qt_dataset_load(&b, dir, "test", &e);
    int ok3 = r3 == -1 && has(&e, "bee") && has(&e, "empty");
    if (!ok3) printf("    empty class: %s\n", e.msg);
    remove_tree(dir);
    tree_free(&tr);
    QT_CHECK(ok && ok3);
    return 0;
}

/* Many gray images, then one RGB image in a later decode batch: the gray ones already stored
 * are expanded to three channels. */
QT_TEST(data_imagefolder_gray_then_rgb)
{
    struct tree tr;
    QT_CHECK(tree_make(&tr) == 0);
    char dir[1024], path[4200], n[64];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct buf t = {0};
    const int ngray = 4200;
    for (int i = 0; i < ngray; i++) {
        snprintf(n, sizeof n, "train/a/%05d.png", i);
        tar_add(&t, n, tr.png_gray.p, tr.png_gray.n);
    }
    tar_add(&t, "train/b/0.png", tr.png_rgb.p, tr.png_rgb.n);
    tar_end(&t);
    int rc = write_file(dir, "g.tar", t.p, t.n, 0);
    free(t.p);
    snprintf(path, sizeof path, "%s/g.tar", dir);
    struct qt_dataset ds;
    struct qt_error e = {{0}};
    int r = rc == 0 ? qt_dataset_load(&ds, path, "train", &e) : -1;
    if (r) printf("    %s\n", e.msg);
    remove_tree(dir);
    int ok = r == 0 && ds.n == ngray + 1 && ds.c == 3 && ds.labels[ngray] == 1;
    for (int i = 0; ok && i < ngray; i += 997)
        for (int ch = 0; ch < 3; ch++)
            if (memcmp(ds.pixels + (size_t)i * 36 + ch * 12, tr.gray, 12)) ok = 0;
    for (int ch = 0; ok && ch < 3; ch++)
        for (int p = 0; p < 12; p++)
            if (ds.pixels[(size_t)ngray * 36 + ch * 12 + p] != tr.rgb[p * 3 + ch]) ok = 0;
    if (r == 0) qt_dataset_free(&ds);
    tree_free(&tr);
    QT_CHECK(ok);
    return 0;
}

QT_TEST(data_imagefolder_errors)
{
    struct tree tr;
    QT_CHECK(tree_make(&tr) == 0);
    char dir[1024], path[4200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct qt_dataset ds;
    struct qt_error e = {{0}};
    int fails = 0;

    /* images of different sizes */
    uint8_t big[5 * 5 * 3] = {0};
    struct buf other = {0};
    QT_CHECK(encode_png(big, 5, 5, 3, &other) == 0);
    struct buf t = {0};
    tar_add(&t, "train/a/0.png", tr.png_rgb.p, tr.png_rgb.n);
    tar_add(&t, "train/a/1.png", other.p, other.n);
    tar_end(&t);
    write_file(dir, "sizes.tar.gz", t.p, t.n, 1);
    free(t.p);
    free(other.p);
    snprintf(path, sizeof path, "%s/sizes.tar.gz", dir);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "train/a/1.png") ||
        !has(&e, "need --crop S")) {
        printf("    size mismatch: %s\n", e.msg);
        fails++;
    }

    /* a JPEG cut in half, and random bytes named .png */
    t = (struct buf){0};
    tar_add(&t, "test/a/0.jpg", tr.jpg.p, tr.jpg.n / 2);
    tar_end(&t);
    write_file(dir, "cutjpeg.tar", t.p, t.n, 0);
    free(t.p);
    snprintf(path, sizeof path, "%s/cutjpeg.tar", dir);
    if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, "test/a/0.jpg") ||
        !has(&e, "JPEG")) {
        printf("    corrupt jpeg: %s\n", e.msg);
        fails++;
    }
    uint8_t junk[300];
    uint32_t seed = 3;
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rng_next(&seed);
    junk[0] = 0xff;
    junk[1] = 0xd8;
    junk[2] = 0xff;
    write_file(dir, "tree/train/x/0.jpg", junk, sizeof junk, 0);
    write_file(dir, "tree/train/y/0.png", junk + 3, sizeof junk - 3, 0);
    snprintf(path, sizeof path, "%s/tree", dir);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "0.jpg")) {
        printf("    junk jpeg: %s\n", e.msg);
        fails++;
    }
    snprintf(path, sizeof path, "%s/tree/train/x/0.jpg", dir);
    remove_tree(path);
    write_file(dir, "tree/train/x/0.jpg", tr.jpg.p, tr.jpg.n, 0);
    snprintf(path, sizeof path, "%s/tree", dir);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "y/0.png") ||
        !has(&e, "not a JPEG or PNG")) {
        printf("    junk png: %s\n", e.msg);
        fails++;
    }
    /* a PNG missing its last bytes */
    write_file(dir, "tree/train/y/0.png", tr.png_rgb.p, tr.png_rgb.n - 20, 0);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "y/0.png") || !has(&e, "PNG")) {
        printf("    cut png: %s\n", e.msg);
        fails++;
    }
    /* the split asked for is absent */
    if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, "test")) {
        printf("    missing split: %s\n", e.msg);
        fails++;
    }
    remove_tree(dir);
    tree_free(&tr);
    QT_CHECK(fails == 0);
    return 0;
}

QT_TEST(data_truncated_archives)
{
    struct tree tr;
    QT_CHECK(tree_make(&tr) == 0);
    char dir[1024], path[4200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct buf t = {0};
    tree_tar(&tr, &t, "");
    tar_end(&t);
    int fails = 0;
    for (int gz = 0; gz < 2; gz++) {
        const char *name = gz ? "cut.tar.gz" : "cut.tar";
        write_file(dir, name, t.p, t.n, gz);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        long long size = 0;
        struct stat st;
        if (stat(path, &st) == 0) size = st.st_size;
        /* cut inside an entry's data, and just before the end-of-archive blocks */
        long long cuts[3] = {size * 2 / 3, size - 7, gz ? size - 1 : (long long)t.n - 1024};
        for (int c = 0; c < 3; c++) {
            write_file(dir, name, t.p, t.n, gz);
            if (truncate(path, cuts[c]) != 0) fails++;
            struct qt_dataset ds;
            struct qt_error e = {{0}};
            if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, name) ||
                !has(&e, "truncated")) {
                printf("    %s cut at %lld of %lld: %s\n", name, cuts[c], size, e.msg);
                fails++;
            }
        }
    }
    free(t.p);
    remove_tree(dir);
    tree_free(&tr);
    QT_CHECK(fails == 0);
    return 0;
}

QT_TEST(data_unrecognized_inputs)
{
    char dir[1024], path[4200];
    QT_CHECK(make_tmpdir(dir, sizeof dir) == 0);
    struct qt_dataset ds;
    struct qt_error e = {{0}};
    int fails = 0;
    uint8_t junk[4096];
    uint32_t seed = 11;
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rng_next(&seed);
    write_file(dir, "junk.bin", junk, sizeof junk, 0);
    snprintf(path, sizeof path, "%s/junk.bin", dir);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "junk.bin") ||
        !has(&e, "accepted layouts")) {
        printf("    junk file: %s\n", e.msg);
        fails++;
    }
    junk[0] = 0x1f;
    junk[1] = 0x8b;
    write_file(dir, "junk.gz", junk, sizeof junk, 0);
    snprintf(path, sizeof path, "%s/junk.gz", dir);
    if (qt_dataset_load(&ds, path, "train", &e) != -1 || !has(&e, "junk.gz")) {
        printf("    junk gzip: %s\n", e.msg);
        fails++;
    }
    make_dir(dir, "empty");
    snprintf(path, sizeof path, "%s/empty", dir);
    if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, "empty") ||
        !has(&e, "accepted layouts")) {
        printf("    empty folder: %s\n", e.msg);
        fails++;
    }
    snprintf(path, sizeof path, "%s/missing", dir);
    if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, "missing")) {
        printf("    missing path: %s\n", e.msg);
        fails++;
    }
    if (qt_dataset_load(&ds, dir, "valid", &e) != -1 || !has(&e, "valid")) {
        printf("    bad split: %s\n", e.msg);
        fails++;
    }
    /* a tar that holds something else */
    struct buf t = {0};
    tar_add(&t, "readme.txt", "hello", 5);
    tar_end(&t);
    write_file(dir, "other.tar.gz", t.p, t.n, 1);
    free(t.p);
    snprintf(path, sizeof path, "%s/other.tar.gz", dir);
    if (qt_dataset_load(&ds, path, "test", &e) != -1 || !has(&e, "other.tar.gz")) {
        printf("    foreign tar: %s\n", e.msg);
        fails++;
    }
    QT_CHECK(ds.pixels == NULL && ds.n == 0);
    remove_tree(dir);
    QT_CHECK(fails == 0);
    return 0;
}

QT_TEST(data_fashion_mnist)
{
    char dir[1200], probe[1300];
    int req = qt_test_require(probe, sizeof probe, "fashion-mnist", "train-images-idx3-ubyte.gz");
    if (req) return req;
    snprintf(dir, sizeof dir, "%s", qt_test_data_path("fashion-mnist"));
    struct qt_dataset tr, te;
    struct qt_error e = {{0}};
    int r1 = qt_dataset_load(&tr, dir, "train", &e);
    if (r1) printf("    %s\n", e.msg);
    int r2 = qt_dataset_load(&te, dir, "test", &e);
    if (r2) printf("    %s\n", e.msg);
    int ok = r1 == 0 && r2 == 0 && tr.n == 60000 && te.n == 10000 && tr.c == 1 && tr.h == 28 &&
             tr.w == 28 && te.h == 28 && tr.nclasses == 10 && te.nclasses == 10 &&
             tr.labels[0] == 9 && te.labels[0] == 9;
    if (ok) {
        int hist[10] = {0};
        for (int i = 0; i < tr.n; i++) hist[tr.labels[i]]++;
        for (int k = 0; k < 10; k++) ok = ok && hist[k] == 6000;
        double sum = 0;
        for (size_t i = 0; i < (size_t)tr.n * 784; i++) sum += tr.pixels[i];
        QT_CHECK_NEAR(sum / (tr.n * 784.0) / 255.0, 0.2860, 0.001);
    }
    if (r1 == 0) qt_dataset_free(&tr);
    if (r2 == 0) qt_dataset_free(&te);
    QT_CHECK(ok);
    return 0;
}

QT_TEST(data_cifar10_jpeg_shared)
{
    char path[1300];
    int req = qt_test_require(path, sizeof path, "shared", "data/cifar10-jpeg.tar.gz");
    if (req) return req;
    struct qt_dataset ds;
    struct qt_error e = {{0}};
    int r = qt_dataset_load(&ds, path, "test", &e);
    if (r) printf("    %s\n", e.msg);
    QT_CHECK(r == 0);
    int ok = ds.n == 10000 && ds.c == 3 && ds.h == 32 && ds.w == 32 && ds.nclasses == 10 &&
             ds.class_names && !strcmp(ds.class_names[0], "airplane") &&
             !strcmp(ds.class_names[9], "truck") && ds.labels[0] == 0;
    int hist[10] = {0};
    for (int i = 0; ok && i < ds.n; i++) hist[ds.labels[i]]++;
    for (int k = 0; k < 10; k++) ok = ok && hist[k] == 1000;
    /* Normalized with the CIFAR-10 preset, each channel averages close to zero. */
    float mean[3], std[3];
    double acc[3] = {0, 0, 0};
    if (ok && qt_norm_preset("cifar10", 3, mean, std) == 0) {
        int bs = 500;
        int *idx = malloc(sizeof *idx * bs);
        float *x = malloc(sizeof *x * bs * 3072);
        for (int s = 0; s < ds.n && idx && x; s += bs) {
            for (int i = 0; i < bs; i++) idx[i] = s + i;
            struct qt_error e;
            QT_CHECK(qt_dataset_batch(&ds, idx, bs, mean, std, QT_IMAGE_NCHW, x, NULL, &e) == 0);
            for (int i = 0; i < bs; i++)
                for (int ch = 0; ch < 3; ch++)
                    for (int p = 0; p < 1024; p++) acc[ch] += x[(size_t)i * 3072 + ch * 1024 + p];
        }
        free(idx);
        free(x);
        for (int ch = 0; ch < 3; ch++) ok = ok && fabs(acc[ch] / (ds.n * 1024.0)) < 0.1;
    }
    qt_dataset_free(&ds);
    QT_CHECK(ok);
    return 0;
}

/* Augmented batches against a direct reading of the definition: crop of the zero-padded
 * image at offset (oy, ox), then a horizontal mirror. */
QT_TEST(data_batch_augmented_crop_flip)
{
    struct qt_dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.n = 2;
    ds.c = 2;
    ds.h = 5;
    ds.w = 4;
    ds.nclasses = 2;
    uint8_t pix[2 * 2 * 5 * 4];
    for (int i = 0; i < (int)sizeof pix; i++) pix[i] = (uint8_t)(i * 7 + 3);
    int32_t labels[2] = {1, 0};
    ds.pixels = pix;
    ds.labels = labels;
    const float mean[2] = {0.25f, 0.5f}, std[2] = {0.5f, 0.25f};
    const int idx[2] = {1, 0};
    const int8_t oy[2] = {-2, 1}, ox[2] = {3, -1};
    const uint8_t flip[2] = {1, 0};
    struct qt_augment aug = {oy, ox, flip, NULL};
    float x[2 * 2 * 5 * 4];
    int32_t y[2];
    struct qt_error e;
    QT_CHECK(qt_dataset_batch_augmented(&ds, idx, 2, mean, std, &aug, QT_IMAGE_NCHW, x, y, &e) == 0);
    QT_CHECK(y[0] == 0 && y[1] == 1);
    for (int i = 0; i < 2; i++)
        for (int c = 0; c < 2; c++)
            for (int r = 0; r < 5; r++)
                for (int q = 0; q < 4; q++) {
                    int cq = flip[i] ? 3 - q : q; /* column of the cropped image */
                    int sr = r + oy[i], sq = cq + ox[i];
                    int v = (sr >= 0 && sr < 5 && sq >= 0 && sq < 4) ? pix[((idx[i] * 2 + c) * 5 + sr) * 4 + sq] : 0;
                    float want = ((float)v / 255.0f - mean[c]) / std[c];
                    QT_CHECK_NEAR(x[((i * 2 + c) * 5 + r) * 4 + q], want, 1e-6);
                }
    return 0;
}
