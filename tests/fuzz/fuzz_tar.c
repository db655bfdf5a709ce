/* libFuzzer target: a tar or tar.gz archive (image-folder tree of JPEG/PNG files, or CIFAR
 * binary files) through the dataset reader. Input: flags (bit 0: read the train split, bit 1:
 * gzip the rest before writing it, bit 2: stream it with a crop of 1 + 9 * bits 3-5 pixels,
 * then decode a batch of its first images through the evaluation and the training
 * transforms), then the archive bytes. */
#include "../../runtime/data/dataset.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *dir = fz_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/data.tar", dir);
    fz_write(dir, "data.tar", data + 1, size - 1, (data[0] & 2) != 0);
    struct qt_dataset ds;
    struct qt_error e;
    const int crop = (data[0] & 4) ? 1 + 9 * ((data[0] >> 3) & 7) : 0;
    if (qt_dataset_load_sized(&ds, path, (data[0] & 1) ? "train" : "test", 0, crop, &e) == 0) {
        if (ds.stream) {
            enum { B = 4 };
            int idx[B];
            uint64_t seed[B];
            const int n = ds.n < B ? ds.n : B;
            for (int i = 0; i < n; i++) {
                idx[i] = i;
                seed[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
            }
            float *x = malloc(sizeof(float) * (size_t)B * 3 * crop * crop);
            const struct qt_augment aug = {NULL, NULL, NULL, seed};
            if (x) {
                (void)qt_dataset_batch(&ds, idx, n, NULL, NULL, QT_IMAGE_NCHW, x, NULL, &e);
                (void)qt_dataset_batch_augmented(&ds, idx, n, NULL, NULL, &aug, QT_IMAGE_NCHW, x,
                                                 NULL, &e);
            }
            free(x);
        }
        qt_dataset_free(&ds);
    }
    unlink(path);
    return 0;
}
