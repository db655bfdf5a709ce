/* Declarations shared by the dataset readers in runtime/data (not part of the public API):
 * file helpers, the tar reader, image decoding and the decoded-image collector. */
#ifndef QT_DATA_INTERNAL_H
#define QT_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <zlib.h>

#include "dataset.h"

#define QT_DATA_PATH_MAX 4096

/* ---- io.c: paths, files, folders ---- */

/* out = a "/" b; -1 (with a message) when the result does not fit in cap bytes. */
int qt_data_join(char *out, size_t cap, const char *a, const char *b, struct qt_error *e);
int qt_data_is_dir(const char *path);
int qt_data_is_file(const char *path);
/* Size of a regular file in bytes, or -1. */
long long qt_data_file_size(const char *path);

/* Reads a whole file into *buf (malloc'd); gzip-compressed files are inflated. */
int qt_data_read_file(const char *path, uint8_t **buf, size_t *len, struct qt_error *e);

/* Reads up to n bytes from a zlib stream (plain or gzip) into buf; *got receives the count,
 * which is below n only at the end of the data (including a truncated gzip stream).
 * -1 on corrupt compressed data, with a message naming path. */
int qt_data_gz_read(gzFile gz, const char *path, void *buf, size_t n, size_t *got,
                    struct qt_error *e);

/* Sorted names in a folder, without "." and ".." and names starting with '.'.
 * dirs_only: keep only sub-folders. *names must be freed with qt_data_free_names. */
int qt_data_list_dir(const char *path, int dirs_only, char ***names, int *n, struct qt_error *e);
void qt_data_free_names(char **names, int n);

/* Whether name ends in .jpg, .jpeg or .png (any case). */
int qt_data_is_image_name(const char *name);

/* ---- labels.c: labels files for folders without class sub-folders (ImageNet's flat val/) ---- */
struct qt_labels {
    void *entries; /* sorted by key (a file name without its extension) */
    int n;
    char path[QT_DATA_PATH_MAX];
};
/* The labels file in the dataset's root folder root (qt_labels_names() lists the names it is
 * looked for under) into out: 0, or -1 when there is none. */
int qt_labels_find(char *out, size_t cap, const char *root);
const char *qt_labels_names(void);
/* Reads a labels file against the sorted class names; -1 with the file and line on error. */
int qt_labels_load(struct qt_labels *L, const char *path, char *const *classes, int nclasses,
                   struct qt_error *e);
/* The same for a labels file's contents held in memory (path names it in messages). */
int qt_labels_parse(struct qt_labels *L, const char *path, const uint8_t *buf, size_t len,
                    char *const *classes, int nclasses, struct qt_error *e);
/* The rank of file name (no folders) among the labels file names (lower: preferred), or -1. */
int qt_labels_is_name(const char *name);
/* The class of image file name (a path or a bare name), or -1 when the file has no line. */
int qt_labels_get(const struct qt_labels *L, const char *name);
void qt_labels_free(struct qt_labels *L);

/* Splits text into its non-empty lines (whitespace trimmed); returns the count or -1. */
int qt_data_split_lines(const char *text, size_t len, char ***lines);

/* ---- tar.c: a streaming reader for tar and tar.gz archives ---- */

enum { QT_TAR_FILE = 0, QT_TAR_DIR = 1, QT_TAR_OTHER = 2 };

struct qt_tar_entry {
    const char *name; /* path inside the archive, as stored */
    uint64_t size;    /* data bytes */
    int type;         /* QT_TAR_FILE, QT_TAR_DIR or QT_TAR_OTHER */
};

struct qt_tar {
    gzFile gz;
    char *path;
    uint64_t offset; /* uncompressed offset of the next block */
    uint64_t remain; /* data bytes of the current entry not read yet */
    uint64_t pad;    /* padding after the current entry's data */
    char *name;      /* current entry name */
    size_t name_cap;
    char *long_name;  /* name from a GNU 'L' or pax record, for the next header */
    int64_t pax_size; /* size from a pax record, or -1 */
    uint8_t *scratch; /* skip buffer */
};

/* Whether the file at path is a tar archive, plain or gzip-compressed. */
int qt_tar_probe(const char *path);
int qt_tar_open(struct qt_tar *t, const char *path, struct qt_error *e);
/* Advances to the next entry, skipping what is left of the current one:
 * 1 with *ent filled, 0 at the end of the archive, -1 on error. */
int qt_tar_next(struct qt_tar *t, struct qt_tar_entry *ent, struct qt_error *e);
/* Reads exactly n bytes of the current entry's data (n <= what remains). */
int qt_tar_read(struct qt_tar *t, void *buf, size_t n, struct qt_error *e);
void qt_tar_close(struct qt_tar *t);

/* ---- image.c: JPEG and PNG decoding, and a collector that decodes in parallel ---- */

/* A decoded image: h x w x c interleaved (HWC), c = 1 (gray) or 3 (RGB). */
struct qt_image {
    int w, h, c;
    uint8_t *px;
};

/* Per-thread decoding state, reused across images; NULL where a function takes one means
 * "use a temporary one". */
struct qt_image_decoder;
struct qt_image_decoder *qt_image_decoder_new(void);
void qt_image_decoder_free(struct qt_image_decoder *d);

/* Decodes a JPEG or PNG held in memory (format from its signature). On failure returns -1
 * and writes the reason into msg (msg may be NULL). out->px is malloc'd on success. */
int qt_image_decode(struct qt_image_decoder *d, const uint8_t *data, size_t len,
                    struct qt_image *out, char *msg, size_t msg_cap);

/* Resizes src to ow x oh with PIL's bilinear filter (antialiased when reducing); dst->px is
 * malloc'd. -1 when out of memory. */
int qt_image_resize(const struct qt_image *src, int ow, int oh, struct qt_image *dst);
/* torchvision's evaluation transform, in place: Resize(resize) (the shorter side to resize)
 * then CenterCrop(crop). -1 when out of memory (im unchanged). */
int qt_image_eval_transform(struct qt_image *im, int resize, int crop);

/* ---- stream.c: images kept encoded and decoded per batch ---- */

/* One image: its bytes (data, len), or data NULL for a file read from disk at `name`. */
struct qt_stream_item {
    char *name;
    uint8_t *data;
    size_t len;
};
struct qt_stream_store;
/* Appends an item (taking name and data, also on failure); *s is made on first use. */
int qt_stream_store_add(struct qt_stream_store **s, char *name, uint8_t *data, size_t len,
                        struct qt_error *e);
void qt_stream_store_free(struct qt_stream_store *s);
const struct qt_stream_item *qt_stream_store_items(const struct qt_stream_store *s, int *n);
/* A stream over n items of s (item index[i], or i when index is NULL); holds a reference. */
struct qt_image_stream *qt_stream_new(struct qt_stream_store *s, const int *index, int n,
                                      int resize, int crop);

struct qt_image_stream *qt_stream_subset(const struct qt_image_stream *st, const int *idx, int n);
void qt_stream_free(struct qt_image_stream *st);
/* Decodes samples idx[0..count) of st into x (3 channels, crop x crop, NCHW or NHWC) through
 * the byte-to-float table lut (3 x 256): RandomResizedCrop + flip from seeds[i], or the
 * evaluation transform when seeds is NULL. -1 with e naming the first file that failed. */
int qt_stream_batch(const struct qt_image_stream *st, const int *idx, int count,
                    const uint64_t *seeds, const float *lut, int layout_nhwc, float *x,
                    struct qt_error *e);

struct qt_imgset_item;

/* Collects encoded images with their class ids, decodes them in parallel batches and stores
 * them CHW; every image must have the same size, and gray images are expanded to RGB as
 * soon as one RGB image is seen. With crop > 0 the images are only listed (a stream). */
struct qt_imgset {
    int n, cap;
    int c, h, w;
    uint8_t *pixels;
    int32_t *labels;
    char **names; /* n: each image's file or archive entry name */
    char *first; /* name of the first image, for size-mismatch messages */
    int resize, crop; /* crop > 0: images listed in store, decoded per batch (a stream) */
    struct qt_stream_store *store;
    struct qt_imgset_item *pend;
    int npend, pend_cap;
    size_t pend_bytes;
};

/* Takes ownership of name and data (malloc'd), also on failure. */
int qt_imgset_add(struct qt_imgset *s, char *name, uint8_t *data, size_t len, int label,
                  struct qt_error *e);
/* Decodes what is still pending. */
int qt_imgset_flush(struct qt_imgset *s, struct qt_error *e);
void qt_imgset_free(struct qt_imgset *s);

/* ---- readers ---- */

/* A CIFAR binary file held in memory. */
struct qt_data_blob {
    char *name;
    uint8_t *data;
    size_t len;
};

int qt_data_idx_detect(const char *dir);
int qt_data_idx_load(struct qt_dataset *ds, const char *dir, const char *split, struct qt_error *e);

/* 10 or 100 when dir (or its cifar-10-batches-bin / cifar-100-binary sub-folder) holds
 * CIFAR binary files, else 0; sub receives the folder that holds them. */
int qt_data_cifar_detect(const char *dir, char *sub, size_t cap);
int qt_data_cifar_load_dir(struct qt_dataset *ds, const char *dir, int version, const char *split,
                           struct qt_error *e);
/* Fills ds from CIFAR records (10: label + 3072 pixels; 100: coarse, fine + 3072 pixels),
 * using the fine labels for CIFAR-100. names (may be NULL) is the label-names text. */
int qt_data_cifar_parse(struct qt_dataset *ds, int version, const struct qt_data_blob *blobs,
                        int nblobs, const char *names, size_t names_len, struct qt_error *e);
/* Which CIFAR file a base name is: returns 10 or 100 and sets *slot (0..4 data batches,
 * 5 test batch for CIFAR-10; 0 train, 1 test for CIFAR-100; -1 for a label-names file),
 * or 0 when the name is none of them. */
int qt_data_cifar_file_kind(const char *base, int *slot);

int qt_data_imagefolder_detect(const char *dir);
/* resize, crop: see qt_dataset_load_sized */
int qt_data_imagefolder_load_dir(struct qt_dataset *ds, const char *dir, const char *split,
                                 int resize, int crop, struct qt_error *e);
/* Loads an image-folder tree or CIFAR binary files from a tar or tar.gz archive. */
int qt_data_archive_load(struct qt_dataset *ds, const char *path, const char *split,
                         int resize, int crop, struct qt_error *e);

#endif
