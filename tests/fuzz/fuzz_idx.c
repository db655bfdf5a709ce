/* libFuzzer target: an IDX folder (MNIST layout, files plain or gzip) through the dataset
 * reader. Input: flags (bit 0: read the train split), then file records (fuzz_common.h). */
#include "../../runtime/data/dataset.h"
#include "fuzz_common.h"

static const char *const names[] = {
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",  "t10k-images.idx3-ubyte",  "t10k-labels.idx1-ubyte",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *dir = fz_tmpdir();
    struct fz_file files[FZ_MAX_FILES];
    int n = fz_folder_write(dir, data, size, names, sizeof names / sizeof names[0], 1, files);
    struct qt_dataset ds;
    struct qt_error e;
    if (qt_dataset_load(&ds, dir, (data[0] & 1) ? "train" : "test", &e) == 0) qt_dataset_free(&ds);
    fz_folder_clear(dir, files, n);
    return 0;
}
