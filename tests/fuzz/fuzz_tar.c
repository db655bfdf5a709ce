/* libFuzzer target: a tar or tar.gz archive (image-folder tree of JPEG/PNG files, or CIFAR
 * binary files) through the dataset reader. Input: flags (bit 0: read the train split, bit 1:
 * gzip the rest before writing it), then the archive bytes. */
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
    if (qt_dataset_load(&ds, path, (data[0] & 1) ? "train" : "test", &e) == 0) qt_dataset_free(&ds);
    unlink(path);
    return 0;
}
