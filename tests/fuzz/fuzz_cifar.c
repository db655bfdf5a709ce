/* libFuzzer target: a CIFAR-10/100 binary folder through the dataset reader. Input: flags
 * (bit 0: read the train split), then file records (fuzz_common.h). */
#include "../../runtime/data/dataset.h"
#include "fuzz_common.h"

static const char *const names[] = {
    "test_batch.bin",   "batches.meta.txt",     "data_batch_1.bin", "data_batch_2.bin",
    "data_batch_3.bin", "data_batch_4.bin",     "data_batch_5.bin", "test.bin",
    "train.bin",        "fine_label_names.txt",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *dir = fz_tmpdir();
    struct fz_file files[FZ_MAX_FILES];
    int n = fz_folder_write(dir, data, size, names, sizeof names / sizeof names[0], 0, files);
    struct qt_dataset ds;
    struct qt_error e;
    if (qt_dataset_load(&ds, dir, (data[0] & 1) ? "train" : "test", &e) == 0) qt_dataset_free(&ds);
    fz_folder_clear(dir, files, n);
    return 0;
}
