/* Datasets: readers for IDX, CIFAR binary and image-folder trees (plain or in tar/tar.gz),
 * decoded once into an in-memory uint8 cache, and batch assembly with normalization. */
#ifndef QT_DATASET_H
#define QT_DATASET_H

#include <stdint.h>

#include "../../util/error.h"

/* One split of a dataset, decoded: n samples of c x h x w uint8 pixels stored CHW. */
struct qt_image_stream;

struct qt_dataset {
    int n;
    int c, h, w;
    int nclasses;
    uint8_t *pixels;     /* n * c * h * w, or NULL for a stream */
    struct qt_image_stream *stream; /* images decoded per batch (--crop), else NULL */
    int32_t *labels;     /* n, each in [0, nclasses) */
    char **class_names;  /* nclasses names, or NULL when the format has none */
    char **sample_names; /* n file or archive entry names (image folders), or NULL */
    char kind[32];       /* "idx", "cifar10", "cifar100", "imagefolder" */
};

/* Opens split "train" or "test" of the dataset at path (kind detected from the contents:
 * an IDX folder with train-* and t10k-* files, .gz or not; a CIFAR-10/100 binary folder or
 * its tar.gz; an image-folder tree or tar/tar.gz with train/ and test/ holding one folder
 * per class of JPEG/PNG files). Every failure names the file and what is wrong with it. */
int qt_dataset_load(struct qt_dataset *ds, const char *path, const char *split,
                    struct qt_error *e);
/* The same, with images of any size in image folders and archives passed through
 * torchvision's evaluation transform as they are decoded: Resize(resize) (the shorter side
 * to resize, PIL's antialiased bilinear filter) and CenterCrop(crop). crop 0: no transform
 * (all images of a split must have one size); resize 0 with a crop: crop * 256 / 224. */
int qt_dataset_load_sized(struct qt_dataset *ds, const char *path, const char *split, int resize,
                          int crop, struct qt_error *e);
void qt_dataset_free(struct qt_dataset *ds);

/* Normalization presets: "cifar10", "fashion-mnist", "mnist", "imagenet".
 * Fills mean and std (per channel, for values scaled to [0, 1]); -1 for an unknown name. */
int qt_norm_preset(const char *name, int channels, float *mean, float *std);

/* How a batch lays out its images: [N, C, H, W] (PyTorch's) or [N, H, W, C] (TensorFlow's). */
enum qt_image_layout { QT_IMAGE_NCHW, QT_IMAGE_NHWC };

/* Assembles a float batch from samples idx[0..count) in layout l: x = (p / 255 - mean[c]) /
 * std[c]; labels copied to y when y is not NULL. A stream decodes the samples here (its
 * evaluation transform); -1 with e naming the file when one cannot be read or decoded. */
int qt_dataset_batch(const struct qt_dataset *ds, const int *idx, int count, const float *mean,
                     const float *std, enum qt_image_layout l, float *x, int32_t *y,
                     struct qt_error *e);

/* Per-sample augmentation drawn by the caller. Images held in memory: sample i is shifted by
 * (oy[i], ox[i]) pixels with zero pixels filling the border (a random crop of the
 * zero-padded image), then mirrored horizontally when flip[i]. A stream: sample i goes
 * through RandomResizedCrop drawn from seed[i], mirrored when its top bit is set
 * (qt_random_resized_crop_box); seed NULL: the evaluation transform. */
struct qt_augment {
    const int8_t *oy, *ox;
    const uint8_t *flip;
    const uint64_t *seed;
};
int qt_dataset_batch_augmented(const struct qt_dataset *ds, const int *idx, int count,
                               const float *mean, const float *std, const struct qt_augment *aug,
                               enum qt_image_layout l, float *x, int32_t *y, struct qt_error *e);

/* out := the n samples idx[0..n) of ds (pixels copied, or the stream's images shared). */
int qt_dataset_subset(struct qt_dataset *out, const struct qt_dataset *ds, const int *idx, int n,
                      struct qt_error *e);

/* torchvision's RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3)).get_params for a w x h
 * image, drawn from seed: box = {left, top, width, height}. */
void qt_random_resized_crop_box(int w, int h, uint64_t seed, int box[4]);

#endif
